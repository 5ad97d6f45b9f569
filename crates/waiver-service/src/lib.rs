//! The use cases of waiver.
//!
//! Every operation reads the clock once, loads what it needs, lets the core decide the
//! transition (roles, separation of duties, state, time, rules) and commits the event with
//! the projections in one transaction. A refused operation stores nothing.

mod error;
mod events;
mod evidence;
pub mod gitops;
pub mod import;
mod more;
pub mod notify;
pub mod people;
pub mod records;
pub mod review;
mod scheduler;
mod views;
pub mod webhooks;

pub use error::ServiceError;
pub use more::{BaselineDiff, DEFAULT_PAGE, MAX_PAGE, Page};
pub use views::{
    AUDIT_SCAN, AuditFilter, Browse, Dashboard, MyWork, Permitted, PolicyUse, SortKey, WorkItem, WorkKind,
};

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use jiff::Timestamp;
use sha2::{Digest, Sha256};
use waiver_core::{
    Actor, Clock, EntityRef, Exception, ExceptionId, FieldError, Identity, IdentityStatus, Kind, LifecycleError,
    Principal, Risk, Role, Rules, State, ValidationError, Waived,
    audit::{BrokenLink, ChainHead, EventDraft, EventRecord},
    lifecycle::{self, Filing, Transition},
};
use waiver_engine::Baseline;
use waiver_store::{Commit, ExceptionFilter, Store, StoreError, TokenRecord, Write};

/// How many times an operation is retried when another writer changed what it read.
const CONFLICT_RETRIES: usize = 5;

/// A lifecycle action on one exception, by id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Approve,
    Reject,
    Withdraw,
    Revoke,
    Attest,
    EndBreakGlass,
    PostUseReview,
}

/// Filters for listing exceptions (CONTRACT.md §3).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListQuery {
    /// The effective state at the time of the query.
    pub state: Option<State>,
    pub kind: Option<Kind>,
    pub subject: Option<EntityRef>,
    pub owner: Option<String>,
    pub risk: Option<Risk>,
    pub waives: Option<Waived>,
    pub expires_before: Option<Timestamp>,
    /// Open (requested, approved, active or suspended) at the time of the query, or not.
    pub open: Option<bool>,
    /// Its periodic review overdue at the time of the query, or not.
    pub review_overdue: Option<bool>,
    /// Case-insensitive text search over id, subject, justification, owner and requester.
    pub q: Option<String>,
    pub after: Option<ExceptionId>,
    pub limit: Option<usize>,
}

/// One decision a break-glass exception granted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakGlassUse {
    pub exception: ExceptionId,
    pub at: Timestamp,
    pub subject: String,
    pub action: String,
    pub resource: String,
    pub request_id: Option<String>,
}

/// A freshly issued token: the secret is shown once and never stored.
#[derive(Debug, Clone)]
pub struct IssuedToken {
    pub secret: String,
    pub record: TokenRecord,
}

/// What `audit verify` found: the chain, and the records that do not match it (checked only
/// when the chain holds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    pub chain: Result<ChainHead, BrokenLink>,
    pub records: Vec<waiver_store::seal::Tampered>,
}

impl Verification {
    pub fn is_ok(&self) -> bool {
        self.chain.is_ok() && self.records.is_empty()
    }
}

/// A baseline as stored in the log: its sources as canonical JSON
/// (`{"entities":…,"policies":…,"schema":…}`, absent parts `null`).
pub fn baseline_artifact(baseline: &Baseline) -> String {
    let (policies, schema, entities) = baseline.sources();
    waiver_core::canonical::to_string(&serde_json::json!({
        "policies": policies, "schema": schema, "entities": entities,
    }))
}

/// Parses a stored baseline, checked exactly as `baseline set` checks one.
pub fn baseline_from_artifact(body: &str) -> Result<Baseline, String> {
    let value: serde_json::Value = serde_json::from_str(body).map_err(|e| e.to_string())?;
    let text = |key: &str| value.get(key).and_then(serde_json::Value::as_str);
    let policies = text("policies").ok_or("it has no `policies`")?;
    Baseline::parse(policies, text("schema"), text("entities")).map_err(|e| e.to_string())
}

/// Lines removed (`-`) and added (`+`), in order: enough for an auditor to read a rules
/// change in the event without a diff library (rules files are short).
fn line_diff(before: &str, after: &str) -> Vec<String> {
    let old: std::collections::HashSet<&str> = before.lines().collect();
    let new: std::collections::HashSet<&str> = after.lines().collect();
    before
        .lines()
        .filter(|l| !new.contains(l))
        .map(|l| format!("-{l}"))
        .chain(after.lines().filter(|l| !old.contains(l)).map(|l| format!("+{l}")))
        .collect()
}

/// The service: the store, the governance rules, the clock and the current baseline.
#[derive(Clone)]
pub struct Service {
    store: Arc<dyn Store>,
    /// The governance rules in force: replaced when a `rules.set` lands (here or, through
    /// the log follower, on another node), shared by every clone.
    rules: Arc<ArcSwap<Rules>>,
    clock: Arc<dyn Clock>,
    /// The baseline requests are checked against: `waives` must name its policies and the
    /// condition must compile. `Err` holds why the configured baseline could not load, and
    /// then nothing is filed (never unchecked).
    /// Shared by every clone, so a replacement through one is seen by all.
    baseline: Arc<ArcSwap<BaselineSlot>>,
    /// The register in memory, where a serving node keeps it (reports read it).
    records: records::Records,
    /// The chain as last verified for a report, and when: reports check only what was
    /// appended since, and the whole chain again after [`evidence::FULL_VERIFY_EVERY`].
    chain_checked: Arc<std::sync::Mutex<Option<(waiver_core::audit::ChainHead, Timestamp)>>>,
    /// Held for the whole of an import (check, then commit): a retry that arrives while the
    /// first attempt still runs waits for it, then finds its rows already filed.
    importing: Arc<tokio::sync::Mutex<()>>,
    /// Tokens this node authenticated since the last flush, and when last (the REST API and
    /// the UI; the decision path keeps its own atomics). Flushed like usage counts.
    token_uses: Arc<std::sync::Mutex<HashMap<String, Timestamp>>>,
}

type BaselineSlot = Option<Result<Arc<Baseline>, String>>;

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service").finish_non_exhaustive()
    }
}

/// Roles that may read the register.
const READERS: &[Role] = &[Role::Requester, Role::Approver, Role::Responder, Role::Admin, Role::Auditor, Role::Agent];

/// Refuses one more request for `subject` when `waiting` already reach the rules' cap.
/// (Two filings at the same instant may both pass: the cap bounds a flood, not a race.)
pub(crate) fn check_open_requests(rules: &Rules, subject: &EntityRef, waiting: usize) -> Result<(), ServiceError> {
    let cap = rules.max_open_requests_per_subject;
    if waiting >= cap as usize {
        return Err(ValidationError::one(waiver_core::FieldError::rule(
            "subject",
            "max_open_requests_per_subject",
            format!(
                "`{subject}` already has {waiting} requests waiting for a decision; at most {cap} may wait at once"
            ),
        ))
        .into());
    }
    Ok(())
}

/// Refuses an actor that holds none of `roles` (what the edges call before reading a body).
/// The catalog's say on what a filing waives (see [`Service::check_governed`]).
pub(crate) fn check_controls(rules: &Rules, waives: &[waiver_core::Waived]) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let controls = waives.iter().filter(|w| w.is_control()).count();
    if controls > 0 && controls < waives.len() {
        errors.push(FieldError::new(
            "waives",
            "a control outside Cedar and a baseline rule are waived by separate exceptions (a control exception never grants a decision)",
        ));
    }
    for (idx, waived) in waives.iter().enumerate() {
        if let waiver_core::Waived::Control(name) = waived
            && !rules.control_catalog.contains_key(name.as_str())
        {
            let known: Vec<&str> = rules.control_catalog.keys().map(String::as_str).collect();
            errors.push(FieldError::new(
                format!("waives[{idx}]"),
                if known.is_empty() {
                    format!("`{waived}` is not in the rules' control catalog, which is empty")
                } else {
                    format!(
                        "`{waived}` is not in the rules' control catalog (`control:{}`)",
                        known.join("`, `control:")
                    )
                },
            ));
        }
    }
    errors
}

pub fn require(actor: &Actor, action: &'static str, roles: &[Role]) -> Result<(), ServiceError> {
    if actor.roles.any(roles) {
        Ok(())
    } else {
        Err(LifecycleError::Forbidden { principal: actor.principal.to_string(), action, needs: roles.to_vec() }.into())
    }
}

/// The lowercase hex SHA-256 of a token secret, as stored.
/// Whether a token's expiry has passed at `now` (checked at every use; an expiry that does
/// not parse fails closed).
pub fn token_expired(token: &TokenRecord, now: Timestamp) -> bool {
    token.expires_at.as_deref().is_some_and(|t| t.parse::<Timestamp>().map_or(true, |t| now >= t))
}

/// What an API token may be limited to, within its roles (none named: all its roles allow).
pub const TOKEN_SCOPES: [&str; 5] = ["admin", "approve", "decide", "read", "request"];

pub fn token_hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

impl Service {
    pub fn new(store: Arc<dyn Store>, rules: Rules, clock: Arc<dyn Clock>) -> Self {
        Self {
            store,
            rules: Arc::new(ArcSwap::from_pointee(rules)),
            clock,
            baseline: Arc::new(ArcSwap::from_pointee(None)),
            records: records::Records::default(),
            chain_checked: Arc::default(),
            importing: Arc::default(),
            token_uses: Arc::default(),
        }
    }

    /// The same service reading another clock (the demo replays history with one).
    pub fn with_clock(&self, clock: Arc<dyn Clock>) -> Self {
        Self { clock, ..self.clone() }
    }

    /// Checks requests against `baseline` (or refuses them all with the load error).
    pub fn with_baseline(self, baseline: Result<Arc<Baseline>, String>) -> Self {
        self.baseline.store(Arc::new(Some(baseline)));
        self
    }

    /// Swaps in a new baseline (after [`Service::check_baseline`] and the files are written).
    pub fn set_baseline(&self, baseline: Arc<Baseline>) {
        self.baseline.store(Arc::new(Some(Ok(baseline))));
    }

    /// The in-memory register this service reads reports from once it is loaded (a serving
    /// node loads it with the snapshot and keeps it with every change it applies).
    pub fn records(&self) -> &records::Records {
        &self.records
    }

    /// The baseline requests are checked against, if one loaded.
    pub fn baseline(&self) -> Option<Arc<Baseline>> {
        match &**self.baseline.load() {
            Some(Ok(b)) => Some(b.clone()),
            _ => None,
        }
    }

    /// Checks a draft's `waives` and condition against the baseline.
    fn check_against_baseline(&self, draft: &waiver_core::ExceptionDraft) -> Result<(), ServiceError> {
        let now = self.clock.now();
        let slot = self.baseline.load();
        let baseline = match &**slot {
            None => return Ok(()),
            Some(Err(why)) => {
                return Err(ServiceError::InvalidState(format!(
                    "the baseline cannot be loaded, so nothing is filed: {why}"
                )));
            }
            Some(Ok(baseline)) => baseline,
        };
        let mut errors = Vec::new();
        for (idx, waived) in draft.waives.iter().enumerate() {
            if waived.is_control() {
                continue; // checked against the rules' catalog, never the baseline
            }
            let id = waived.to_string();
            if let Some(why) = baseline.why_not_waivable(&id) {
                errors.push(FieldError::new(format!("waives[{idx}]"), why));
            }
            // The rule being waived sets floors the request cannot go under.
            let Some(floors) = baseline.floors(&id) else { continue };
            if let Some(floor) = floors.risk.filter(|floor| draft.risk < *floor) {
                errors.push(FieldError::rule(
                    "risk",
                    "@risk",
                    format!("`{id}` is waived at risk `{}` or above, not `{}`", floor.as_str(), draft.risk.as_str()),
                ));
            }
            let start = draft.starts_at.unwrap_or(now).max(now);
            if let Some(cap) = floors.max_duration.filter(|cap| draft.expires_at.duration_since(start) > cap.duration())
            {
                errors.push(FieldError::rule(
                    "expires_at",
                    "@max_duration",
                    format!("an exception to `{id}` runs at most {cap}"),
                ));
            }
            for kind in &floors.controls {
                if !draft.compensating_controls.iter().any(|c| c.kind == *kind) {
                    errors.push(FieldError::rule(
                        "compensating_controls",
                        "@controls",
                        format!("an exception to `{id}` needs the control `{}`", kind.as_str()),
                    ));
                }
            }
        }
        if let Some(condition) = &draft.condition
            && let Err(e) = baseline.compile_condition(condition)
        {
            errors.push(FieldError::new("condition", e.to_string()));
        }
        ValidationError::into_result(errors).map_err(Into::into)
    }

    /// Checks that replacing the baseline with `next` leaves every live exception valid:
    /// each `waives` names a policy of `next` and each condition compiles against it.
    /// Returns what the change does (see [`Service::diff_baseline`]).
    pub async fn check_baseline(&self, actor: &Actor, next: &Baseline) -> Result<BaselineDiff, ServiceError> {
        require(actor, "replace the baseline", waiver_core::actor::may::REPLACE_BASELINE)?;
        let diff = self.baseline_diff(next).await?;
        if !diff.refusals.is_empty() {
            return Err(ServiceError::InvalidState(format!(
                "the baseline change is refused: {}",
                diff.refusals.join("; ")
            )));
        }
        Ok(diff)
    }

    /// Puts a baseline in force: its sources stored as an artifact of the log (by SHA-256),
    /// in the same commit as the `baseline.set` event that seals it, so every node loads the
    /// same text and what was in force at any event can be shown. Returns the event's `seq`.
    pub async fn record_baseline(
        &self,
        actor: &Actor,
        next: &Baseline,
        change: &BaselineDiff,
    ) -> Result<u64, ServiceError> {
        require(actor, "replace the baseline", waiver_core::actor::may::REPLACE_BASELINE)?;
        let data = serde_json::json!({
            "policy_ids": next.policy_ids(),
            "added": change.added,
            "removed": change.removed,
            "changed": change.changed,
        });
        self.record_artifact(&actor.principal, "baseline", baseline_artifact(next), data).await
    }

    /// Puts rules in force: the TOML text, checked exactly as at start, stored as an artifact
    /// of the log with the `rules.set` event that seals it; in force on this node at once and
    /// on every other when its log follower reaches the event. Returns the event's `seq`.
    pub async fn record_rules(&self, actor: &Actor, text: &str) -> Result<u64, ServiceError> {
        require(actor, "replace the governance rules", waiver_core::actor::may::REPLACE_BASELINE)?;
        if text.trim().is_empty() {
            return Err(ServiceError::Invalid(ValidationError::one(waiver_core::FieldError::new(
                "rules",
                "the rules file is empty; write out what should be in force (start from `waiver rules show`)",
            ))));
        }
        let next = Rules::from_toml(text).map_err(|e| {
            ServiceError::Invalid(ValidationError::one(waiver_core::FieldError::new("rules", e.to_string())))
        })?;
        let seq = self.record_artifact(&actor.principal, "rules", text.to_owned(), serde_json::json!({})).await?;
        self.set_rules(next);
        Ok(seq)
    }

    /// Imports the data dir's files into a store that holds no baseline or rules yet (a data
    /// dir made by an earlier version, or `init`), recorded as the system.
    pub async fn import_artifact(&self, kind: &str, body: String, origin: &str) -> Result<u64, ServiceError> {
        let data = serde_json::json!({ "imported_from": origin });
        self.record_artifact(&Principal::system(), kind, body, data).await
    }

    async fn record_artifact(
        &self,
        by: &Principal,
        kind: &str,
        body: String,
        mut data: serde_json::Value,
    ) -> Result<u64, ServiceError> {
        let digest = waiver_store::seal::digest(&body);
        let previous = self.store.artifact_at(kind, None).await?;
        if let serde_json::Value::Object(map) = &mut data {
            map.insert("artifact".into(), serde_json::json!(digest));
            map.insert("previous".into(), serde_json::json!(previous.as_ref().map(|p| &p.digest)));
            // Rules are small: the change is recorded as a line diff an auditor can read.
            if kind == "rules" {
                let before = previous.as_ref().map_or("", |p| p.body.as_str());
                map.insert("diff".into(), serde_json::json!(line_diff(before, &body)));
            }
        }
        let event = EventDraft {
            at: self.clock.now(),
            actor: by.clone(),
            event_type: format!("{kind}.set"),
            exception_id: None,
            data,
        };
        let artifact = waiver_store::Artifact { kind: kind.to_owned(), body, replaces: None };
        let sealed = self
            .store
            .commit(Box::new(move |_| Commit { events: vec![event], artifacts: vec![artifact], ..Commit::default() }))
            .await?;
        Ok(sealed.first().map_or(0, |e| e.seq))
    }

    /// The baseline or rules text in force at event `at` (now, if `None`), for anyone who
    /// may read the baseline.
    pub async fn artifact_at(
        &self,
        actor: &Actor,
        kind: &str,
        at: Option<u64>,
    ) -> Result<Option<waiver_store::InForce>, ServiceError> {
        require(actor, "read the baseline", waiver_core::actor::may::READ_BASELINE)?;
        Ok(self.store.artifact_at(kind, at).await?)
    }

    /// The baseline the store holds in force, parsed (for a node starting or following).
    pub async fn stored_baseline(&self) -> Result<Option<(u64, Baseline)>, ServiceError> {
        let Some(held) = self.store.artifact_at("baseline", None).await? else { return Ok(None) };
        let baseline = baseline_from_artifact(&held.body).map_err(|e| {
            ServiceError::Store(StoreError::Corrupt(format!("the baseline put in force by event {}: {e}", held.seq)))
        })?;
        Ok(Some((held.seq, baseline)))
    }

    /// The rules the store holds in force, parsed exactly as at start.
    pub async fn stored_rules(&self) -> Result<Option<(u64, Rules)>, ServiceError> {
        let Some(held) = self.store.artifact_at("rules", None).await? else { return Ok(None) };
        let rules = Rules::from_toml(&held.body).map_err(|e| {
            ServiceError::Store(StoreError::Corrupt(format!("the rules put in force by event {}: {e}", held.seq)))
        })?;
        Ok(Some((held.seq, rules)))
    }

    /// The rules in force now.
    pub fn rules(&self) -> Arc<Rules> {
        self.rules.load_full()
    }

    /// Puts `rules` in force on this node (after they were recorded, here or elsewhere).
    pub fn set_rules(&self, rules: Rules) {
        self.rules.store(Arc::new(rules));
    }

    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    async fn load(&self, id: ExceptionId) -> Result<Exception, ServiceError> {
        self.store.exception(id).await?.ok_or_else(|| ServiceError::NotFound(format!("exception `{id}`")))
    }

    async fn load_identity(&self, entity: &EntityRef) -> Result<Identity, ServiceError> {
        self.store.identity(entity).await?.ok_or_else(|| ServiceError::NotFound(format!("identity `{entity}`")))
    }

    /// Files a planned exception request.
    pub async fn request(
        &self,
        actor: &Actor,
        request: waiver_proto::ExceptionRequest,
    ) -> Result<Exception, ServiceError> {
        self.file(actor, request, Kind::Planned).await
    }

    /// Activates a break-glass: active at once, reviewed after.
    pub async fn activate_break_glass(
        &self,
        actor: &Actor,
        request: waiver_proto::ExceptionRequest,
    ) -> Result<Exception, ServiceError> {
        self.step_up(actor, "break_glass")?;
        self.file(actor, request, Kind::BreakGlass).await
    }

    /// Refuses `action` unless `actor`'s sign-in is as recent and strong as the rules'
    /// `[step_up]` asks.
    pub fn step_up(&self, actor: &Actor, action: &str) -> Result<(), ServiceError> {
        match self.rules().step_up.refuses(action, actor, self.clock.now()) {
            Some(why) => Err(ServiceError::StepUp(why)),
            None => Ok(()),
        }
    }

    /// Every reason a filing would be refused for its content, in one pass: the fields, the
    /// directory and catalog, the baseline and the governance rules, each checked even when
    /// an earlier one failed (so a form shows everything at once). A refusal that is not
    /// about the content (a role, the store) comes back as it is.
    pub async fn filing_errors(
        &self,
        actor: &Actor,
        request: waiver_proto::ExceptionRequest,
        kind: Kind,
    ) -> Result<Vec<FieldError>, ServiceError> {
        let mut errors = Vec::new();
        let draft = match request.clone().into_draft(kind) {
            Ok(d) => d,
            Err(v) => {
                // Stand-ins for the free-text fields that failed, so the rules can still be
                // checked; the stand-ins' own findings are dropped.
                let failed: Vec<String> = v.errors.iter().map(|e| e.field.clone()).collect();
                let mut patched = request;
                let stand_in = "stand-in".to_owned();
                for field in &failed {
                    match field.split(['.', '[']).next().unwrap_or_default() {
                        "justification" => patched.justification.clone_from(&stand_in),
                        "normal_path_unavailable" => patched.normal_path_unavailable.clone_from(&stand_in),
                        "condition" => patched.condition = None,
                        "affected_systems" => patched.affected_systems.clear(),
                        "references" => patched.references.clear(),
                        "frameworks" => patched.frameworks.clear(),
                        _ => return Ok(v.errors),
                    }
                }
                errors = v.errors;
                match patched.into_draft(kind) {
                    Ok(d) => d,
                    Err(_) => return Ok(errors),
                }
            }
        };
        let mut take = |r: Result<(), ServiceError>| -> Result<(), ServiceError> {
            match r {
                Err(ServiceError::Invalid(v)) => {
                    errors.extend(v.errors);
                    Ok(())
                }
                other => other,
            }
        };
        take(self.check_governed(&draft).await)?;
        take(self.check_against_baseline(&draft))?;
        let identity = self.store.identity(&draft.subject).await?;
        let rules = self.rules();
        let now = self.clock.now();
        let filing = Filing { draft: &draft, actor, rules: &rules, identity: identity.as_ref(), now };
        let checked = match kind {
            Kind::Planned => lifecycle::request(filing).map(|_| ()),
            Kind::BreakGlass => lifecycle::activate_break_glass(filing).map(|_| ()),
        };
        take(checked.map_err(ServiceError::from))?;
        let mut seen = std::collections::HashSet::new();
        errors.retain(|e| seen.insert((e.field.clone(), e.message.clone())));
        Ok(errors)
    }

    async fn file(
        &self,
        actor: &Actor,
        request: waiver_proto::ExceptionRequest,
        kind: Kind,
    ) -> Result<Exception, ServiceError> {
        let now = self.clock.now();
        // Everything wrong with it at once, not one round per check.
        // (It ran the directory, catalog and baseline checks: they are not repeated here.)
        let errors = self.filing_errors(actor, request.clone(), kind).await?;
        ValidationError::into_result(errors)?;
        let draft = request.into_draft(kind)?;
        if kind == Kind::Planned {
            let waiting = self.requests_waiting(&draft.subject, now).await?;
            check_open_requests(&self.rules(), &draft.subject, waiting)?;
        }
        let identity = self.store.identity(&draft.subject).await?;
        let rules = self.rules();
        let filing = Filing { draft: &draft, actor, rules: &rules, identity: identity.as_ref(), now };
        let transition = match kind {
            Kind::Planned => lifecycle::request(filing)?,
            Kind::BreakGlass => lifecycle::activate_break_glass(filing)?,
        };
        let actor = actor.principal.clone();
        let events = self
            .store
            .commit(Box::new(move |alloc| {
                let Transition { mut exception, change } = transition;
                exception.id = alloc.exception_id();
                let event = events::exception_event(&actor, now, &exception, &change);
                Commit { events: vec![event], exceptions: vec![Write::insert(exception)], ..Commit::default() }
            }))
            .await?;
        let id = events
            .first()
            .and_then(|e| e.exception_id.as_deref())
            .and_then(|id| id.parse().ok())
            .ok_or_else(|| ServiceError::Store(StoreError::Other("the filing was not recorded".into())))?;
        self.load(id).await
    }

    /// What the directory and the rules' catalog decide about a filing: the owner is a
    /// current person; a control waived is one the catalog names, and a control exception
    /// waives controls only (it never touches a decision, so it cannot also waive a rule).
    pub(crate) async fn check_governed(&self, draft: &waiver_core::ExceptionDraft) -> Result<(), ServiceError> {
        let mut errors = Vec::new();
        let directory = self.directory().await?;
        if let Err(e) = directory.check_owner("owner", &draft.owner) {
            errors.push(e);
        }
        errors.extend(check_controls(&self.rules(), &draft.waives));
        ValidationError::into_result(errors).map_err(Into::into)
    }

    /// Who may approve `e`, when a rule it waives routes it (`@approvers("dba")`): the
    /// members of the named groups in the rules, for every such rule. `None` when no waived
    /// rule routes it (any approver may).
    pub fn eligible_approvers(&self, e: &Exception) -> Option<Vec<Principal>> {
        let baseline = self.baseline()?;
        let mut eligible: Option<Vec<Principal>> = None;
        for waived in &e.waives {
            let Some(floors) = baseline.floors(&waived.to_string()).filter(|f| !f.approvers.is_empty()) else {
                continue;
            };
            let members: Vec<Principal> = floors
                .approvers
                .iter()
                .flat_map(|group| {
                    self.rules().approver_groups.get(group).into_iter().flatten().cloned().collect::<Vec<_>>()
                })
                .collect();
            eligible = Some(match eligible {
                None => members,
                Some(held) => held.into_iter().filter(|p| members.contains(p)).collect(),
            });
        }
        eligible
    }

    /// Refuses an approver the routing of `e` does not name.
    pub(crate) fn check_routing(&self, actor: &Actor, e: &Exception) -> Result<(), ServiceError> {
        match self.eligible_approvers(e) {
            Some(eligible) if !eligible.contains(&actor.principal) => Err(ServiceError::Forbidden(format!(
                "`{}` may not approve `{}`: the rules it waives route it to {}",
                actor.principal,
                e.id,
                if eligible.is_empty() {
                    "approver groups the rules do not define".to_owned()
                } else {
                    eligible.iter().map(|p| format!("`{p}`")).collect::<Vec<_>>().join(", ")
                }
            ))),
            _ => Ok(()),
        }
    }

    /// How many requests for `subject` wait for a decision at `now` (at most one more than
    /// the rules allow are read).
    pub(crate) async fn requests_waiting(&self, subject: &EntityRef, now: Timestamp) -> Result<usize, ServiceError> {
        let filter = ExceptionFilter {
            subject: Some(subject.clone()),
            states: Some(vec![State::Requested]),
            limit: Some(self.rules().max_open_requests_per_subject.saturating_add(1)),
            ..ExceptionFilter::default()
        };
        let waiting = self.store.exceptions(&filter).await?;
        Ok(waiting.iter().filter(|e| e.effective_state(now) == State::Requested).count())
    }

    /// Applies a lifecycle action to one exception.
    pub async fn act(
        &self,
        actor: &Actor,
        id: ExceptionId,
        action: Action,
        comment: Option<String>,
    ) -> Result<Exception, ServiceError> {
        match action {
            Action::Approve => self.step_up(actor, "approve")?,
            Action::Revoke => self.step_up(actor, "revoke")?,
            _ => {}
        }
        if action == Action::Approve {
            // `waives` never changes after filing, so the routing read here still holds at commit.
            self.check_routing(actor, &self.load(id).await?)?;
        }
        self.transition(actor, id, |exception, now| match action {
            Action::Approve => exception.approve(actor, comment.clone(), now),
            Action::Reject => exception.reject(actor, comment.clone(), now),
            Action::Withdraw => exception.withdraw(actor, comment.clone(), now),
            Action::Revoke => exception.revoke(actor, comment.clone(), now),
            Action::Attest => exception.attest(actor, comment.clone(), now),
            Action::EndBreakGlass => exception.end_break_glass(actor, comment.clone(), now),
            Action::PostUseReview => exception.review_post_use(actor, comment.clone(), now),
        })
        .await
    }

    /// Approves, narrowing the request first when `narrowing` is given: the narrowing and the
    /// approval are two events of one commit, so the record never holds a narrowed request
    /// nobody approved. A condition added is compiled against the baseline like a filed one.
    pub async fn approve(
        &self,
        actor: &Actor,
        id: ExceptionId,
        comment: Option<String>,
        narrowing: Option<lifecycle::Narrowing>,
    ) -> Result<Exception, ServiceError> {
        let Some(narrowing) = narrowing else { return self.act(actor, id, Action::Approve, comment).await };
        self.step_up(actor, "approve")?;
        self.check_routing(actor, &self.load(id).await?)?;
        let (narrowing, comment) = (&narrowing, &comment);
        self.retrying(move || async move {
            let now = self.clock.now();
            let exception = self.load(id).await?;
            let narrowed = exception.narrow(actor, narrowing, now)?;
            if narrowing.add_condition.is_some()
                && let (Some(baseline), Some(condition)) = (self.baseline(), &narrowed.exception.condition)
                && let Err(e) = baseline.compile_condition(condition)
            {
                return Err(ValidationError::one(FieldError::new("narrow.add_condition", e.to_string())).into());
            }
            let approved = narrowed.exception.approve(actor, comment.clone(), now)?;
            let commit = Commit {
                events: vec![
                    events::exception_event(&actor.principal, now, &narrowed.exception, &narrowed.change),
                    events::exception_event(&actor.principal, now, &approved.exception, &approved.change),
                ],
                exceptions: vec![Write::update(approved.exception.clone(), exception.version)],
                ..Commit::default()
            };
            Ok((Some(commit), approved.exception))
        })
        .await
    }

    /// The owner (or an admin) proposes a new owner, who must be a current person; nothing
    /// changes until they accept.
    pub async fn propose_transfer(
        &self,
        actor: &Actor,
        id: ExceptionId,
        to: &str,
        comment: Option<String>,
    ) -> Result<Exception, ServiceError> {
        let to = Principal::parse("to", to).map_err(ValidationError::one)?;
        self.directory().await?.check_owner("to", &to).map_err(ValidationError::one)?;
        self.transition(actor, id, |e, now| e.propose_transfer(actor, to.clone(), comment.clone(), now)).await
    }

    /// The proposed owner accepts an ownership transfer.
    pub async fn accept_transfer(
        &self,
        actor: &Actor,
        id: ExceptionId,
        comment: Option<String>,
    ) -> Result<Exception, ServiceError> {
        // Someone who has left since the proposal cannot take it on.
        self.directory().await?.check_owner("to", &actor.principal).map_err(ValidationError::one)?;
        self.transition(actor, id, |e, now| e.accept_transfer(actor, comment.clone(), now)).await
    }

    /// The owner asks to extend an exception; approvers must approve the renewal.
    pub async fn renew(
        &self,
        actor: &Actor,
        id: ExceptionId,
        expires_at: Timestamp,
        comment: Option<String>,
    ) -> Result<Exception, ServiceError> {
        let rules = self.rules();
        self.transition(actor, id, |exception, now| exception.renew(actor, expires_at, comment.clone(), &rules, now))
            .await
    }

    /// Runs `plan` (read, decide, build a commit) and commits what it returns, from a fresh
    /// read each time another writer got there first. A plan that returns no commit has
    /// nothing to write.
    async fn retrying<T, F>(&self, mut plan: impl FnMut() -> F) -> Result<T, ServiceError>
    where
        F: Future<Output = Result<(Option<Commit>, T), ServiceError>>,
    {
        let mut attempt = 0;
        loop {
            let (commit, outcome) = plan().await?;
            let Some(commit) = commit else { return Ok(outcome) };
            match self.store.commit(Box::new(move |_| commit)).await {
                Ok(_) => return Ok(outcome),
                Err(StoreError::Conflict(_)) if attempt < CONFLICT_RETRIES => attempt += 1,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Loads, transitions and commits, retrying if another writer got there first.
    async fn transition(
        &self,
        actor: &Actor,
        id: ExceptionId,
        step: impl Fn(&Exception, Timestamp) -> Result<Transition, LifecycleError>,
    ) -> Result<Exception, ServiceError> {
        let step = &step;
        self.retrying(move || async move {
            let now = self.clock.now();
            let exception = self.load(id).await?;
            let Transition { exception: next, change } = step(&exception, now)?;
            let commit = Commit {
                events: vec![events::exception_event(&actor.principal, now, &next, &change)],
                exceptions: vec![Write::update(next.clone(), exception.version)],
                ..Commit::default()
            };
            Ok((Some(commit), next))
        })
        .await
    }

    /// Replaces an exception's framework mapping (the owner or an admin).
    pub async fn set_frameworks(
        &self,
        actor: &Actor,
        id: ExceptionId,
        keys: Vec<String>,
        comment: Option<String>,
    ) -> Result<Exception, ServiceError> {
        self.transition(actor, id, |exception, now| exception.set_frameworks(actor, &keys, comment.clone(), now)).await
    }

    /// One exception, for any reader.
    pub async fn get(&self, actor: &Actor, id: ExceptionId) -> Result<Exception, ServiceError> {
        require(actor, "read exceptions", READERS)?;
        self.load(id).await
    }

    /// The events of one exception, oldest first.
    pub async fn history(&self, actor: &Actor, id: ExceptionId) -> Result<Vec<EventRecord>, ServiceError> {
        require(actor, "read exceptions", READERS)?;
        self.load(id).await?;
        Ok(self.store.events_of(id).await?)
    }

    /// Exceptions matching `query`, in id order, at `now`.
    pub async fn list(&self, actor: &Actor, query: &ListQuery) -> Result<Vec<Exception>, ServiceError> {
        require(actor, "read exceptions", READERS)?;
        let now = self.clock.now();
        // Without filters the store cannot apply (effective state is a function of `now`),
        // the page limit goes to the store too, so a page does not read the whole register.
        let store_limits = query.state.is_none()
            && query.kind.is_none()
            && query.risk.is_none()
            && query.waives.is_none()
            && query.expires_before.is_none()
            && query.open.is_none()
            && query.review_overdue.is_none()
            && query.q.is_none();
        let filter = ExceptionFilter {
            subject: query.subject.clone(),
            owner: query.owner.clone(),
            after: query.after,
            limit: query.limit.filter(|_| store_limits).and_then(|l| u32::try_from(l).ok()),
            ..ExceptionFilter::default()
        };
        let needle = query.q.as_ref().map(|q| q.to_lowercase());
        let matches = |e: &Exception| query.matches_with(e, now, needle.as_deref());
        let limit = query.limit.unwrap_or(usize::MAX);
        Ok(self.store.exceptions(&filter).await?.into_iter().filter(matches).take(limit).collect())
    }

    /// Adds a non-human identity to the inventory.
    pub async fn identity_add(
        &self,
        actor: &Actor,
        input: waiver_proto::IdentityInput,
    ) -> Result<Identity, ServiceError> {
        require(actor, "add identities", &[Role::Admin])?;
        let now = self.clock.now();
        let identity = &input.into_identity(now)?;
        // Retried when another writer got there first: if that was this identity, the next
        // read says it exists; if it was the people directory, the owner is looked up again.
        self.retrying(move || async move {
            if self.store.identity(&identity.entity).await?.is_some() {
                return Err(ServiceError::Conflict(format!("identity `{}` already exists", identity.entity)));
            }
            let event =
                events::identity_event(&actor.principal, now, "identity.added", identity, serde_json::json!({}));
            let mut commit =
                Commit { events: vec![event], identities: vec![Write::insert(identity.clone())], ..Commit::default() };
            // The admin names the owner: a person from now on, if waiver did not know them.
            if let Some((added, directory)) =
                self.people_to_add(&actor.principal, std::slice::from_ref(&identity.owner), "identity_owner").await?
            {
                commit.events.push(added);
                commit.artifacts.push(directory);
            }
            Ok((Some(commit), identity.clone()))
        })
        .await
    }

    /// Changes an identity. An owner, code or vendor change suspends the exceptions that
    /// name that revalidation trigger until their owners attest.
    pub async fn identity_update(
        &self,
        actor: &Actor,
        entity: &EntityRef,
        patch: waiver_proto::IdentityPatchInput,
    ) -> Result<Identity, ServiceError> {
        let patch = &patch.into_patch()?;
        self.retrying(move || async move {
            let now = self.clock.now();
            let current = self.load_identity(entity).await?;
            if !(actor.roles.contains(Role::Admin) || actor.acts_as(&current.owner)) {
                require(actor, "update an identity they do not own", &[Role::Admin])?;
            }
            if current.status == IdentityStatus::Offboarded {
                return Err(ServiceError::InvalidState(format!("identity `{entity}` is offboarded")));
            }
            let (next, changed, triggers) = current.apply(patch.clone(), now);
            if changed.is_empty() {
                return Ok((None, current));
            }
            let mut next = next;
            next.version += 1;
            let mut commit = Commit::default();
            commit.events.push(events::identity_event(
                &actor.principal,
                now,
                "identity.updated",
                &next,
                serde_json::json!({ "changed": changed, "triggers": triggers.iter().map(|t| t.as_str()).collect::<Vec<_>>() }),
            ));
            commit.identities.push(Write::update(next.clone(), current.version));
            if next.owner != current.owner
                && let Some((added, directory)) =
                    self.people_to_add(&actor.principal, std::slice::from_ref(&next.owner), "identity_owner").await?
            {
                commit.events.push(added);
                commit.artifacts.push(directory);
            }
            if !triggers.is_empty() {
                let filter = ExceptionFilter { subject: Some(entity.clone()), ..Default::default() };
                for exception in self.store.exceptions(&filter).await? {
                    if let Some(t) =
                        triggers.iter().find_map(|trigger| exception.revalidate(*trigger, &self.rules(), now))
                    {
                        commit.events.push(events::exception_event(&Principal::system(), now, &t.exception, &t.change));
                        commit.exceptions.push(Write::update(t.exception, exception.version));
                    }
                }
            }
            Ok((Some(commit), next))
        })
        .await
    }

    /// Offboards an identity and revokes every exception it still holds, in one commit.
    pub async fn identity_offboard(
        &self,
        actor: &Actor,
        entity: &EntityRef,
        comment: Option<String>,
    ) -> Result<(Identity, Vec<ExceptionId>), ServiceError> {
        require(actor, "offboard identities", &[Role::Admin])?;
        let comment = &comment;
        self.retrying(move || async move {
            let now = self.clock.now();
            let current = self.load_identity(entity).await?;
            if current.status == IdentityStatus::Offboarded {
                return Err(ServiceError::InvalidState(format!("identity `{entity}` is already offboarded")));
            }
            let mut next = current.clone();
            next.status = IdentityStatus::Offboarded;
            next.updated_at = now;
            next.version += 1;
            let mut commit = Commit::default();
            commit.events.push(events::identity_event(
                &actor.principal,
                now,
                "identity.offboarded",
                &next,
                serde_json::json!({ "comment": comment }),
            ));
            commit.identities.push(Write::update(next.clone(), current.version));
            let reason = Some(comment.clone().unwrap_or_else(|| format!("identity `{entity}` offboarded")));
            let mut revoked = Vec::new();
            let filter = ExceptionFilter { subject: Some(entity.clone()), ..Default::default() };
            for exception in self.store.exceptions(&filter).await? {
                if !exception.is_open(now) {
                    continue;
                }
                let t = exception.revoke(actor, reason.clone(), now)?;
                revoked.push(exception.id);
                commit.events.push(events::exception_event(&actor.principal, now, &t.exception, &t.change));
                commit.exceptions.push(Write::update(t.exception, exception.version));
            }
            Ok((Some(commit), (next, revoked)))
        })
        .await
    }

    pub async fn identity_get(&self, actor: &Actor, entity: &EntityRef) -> Result<Identity, ServiceError> {
        require(actor, "read identities", READERS)?;
        self.load_identity(entity).await
    }

    pub async fn identities(&self, actor: &Actor) -> Result<Vec<Identity>, ServiceError> {
        require(actor, "read identities", READERS)?;
        Ok(self.store.identities().await?)
    }

    /// Issues an API token bound to a principal and roles. The secret is returned once;
    /// only its hash is stored.
    pub async fn issue_token(
        &self,
        actor: &Actor,
        principal: Principal,
        roles: &[Role],
        label: &str,
    ) -> Result<IssuedToken, ServiceError> {
        self.issue_token_for(actor, principal, roles, label, None, &[]).await
    }

    /// [`Service::issue_token`] with a lifetime (the rules' `tokens.max_lifetime` when
    /// `None`, and never longer).
    pub async fn issue_token_for(
        &self,
        actor: &Actor,
        principal: Principal,
        roles: &[Role],
        label: &str,
        lifetime: Option<waiver_core::Period>,
        scopes: &[String],
    ) -> Result<IssuedToken, ServiceError> {
        require(actor, "issue tokens", &[Role::Admin])?;
        waiver_core::text::check_name("label", label).map_err(ValidationError::one)?;
        let errors: Vec<waiver_core::FieldError> = scopes
            .iter()
            .enumerate()
            .filter(|(_, s)| !TOKEN_SCOPES.contains(&s.as_str()))
            .map(|(i, s)| {
                waiver_core::FieldError::new(
                    format!("scopes[{i}]"),
                    format!("`{}` is not one of `{}`", waiver_core::id::clip(s), TOKEN_SCOPES.join("`, `")),
                )
            })
            .collect();
        ValidationError::into_result(errors)?;
        let mut scopes = scopes.to_vec();
        scopes.sort();
        scopes.dedup();
        if roles.is_empty() {
            return Err(ValidationError::one(waiver_core::FieldError::new("roles", "must not be empty")).into());
        }
        let now = self.clock.now();
        let max = self.rules().token_max_lifetime;
        let lifetime = lifetime.unwrap_or(max);
        if lifetime > max || lifetime.duration().is_zero() {
            return Err(ValidationError::one(waiver_core::FieldError::rule(
                "expires_in",
                "tokens.max_lifetime",
                format!("a token lives more than nothing and at most {max}; {lifetime} asked"),
            ))
            .into());
        }
        let expires_at = now.checked_add(lifetime.duration()).unwrap_or(now);
        let secret = format!("wvr_{}", hex::encode(rand::random::<[u8; 32]>()));
        let record = TokenRecord {
            id: format!("tok_{}", hex::encode(rand::random::<[u8; 8]>())),
            secret_hash: token_hash(&secret),
            principal: principal.to_string(),
            roles: roles.iter().map(|r| r.as_str().to_owned()).collect(),
            label: label.to_owned(),
            created_at: waiver_core::canonical::timestamp(now),
            revoked_at: None,
            issued_by: Some(actor.principal.to_string()),
            expires_at: Some(waiver_core::canonical::timestamp(expires_at)),
            scopes,
            last_used_at: None,
        };
        let event = EventDraft {
            at: now,
            actor: actor.principal.clone(),
            event_type: "token.issued".into(),
            exception_id: None,
            // The id names the token; neither the secret nor its hash enters the log.
            data: serde_json::json!({
                "token_id": record.id, "principal": record.principal, "roles": record.roles, "label": record.label,
                "expires_at": record.expires_at, "scopes": record.scopes,
            }),
        };
        // A person's token puts them in the directory (a workload's or a pep's does not).
        let person = roles.iter().any(|r| waiver_core::actor::may::ACT_AS_PERSON.contains(r) || *r == Role::Auditor);
        let (principal, event, record) = (&principal, &event, &record);
        self.retrying(move || async move {
            let mut commit = Commit { events: vec![event.clone()], tokens: vec![record.clone()], ..Commit::default() };
            if person
                && let Some((added, directory)) =
                    self.people_to_add(&actor.principal, std::slice::from_ref(principal), "token").await?
            {
                commit.events.push(added);
                commit.artifacts.push(directory);
            }
            Ok((Some(commit), ()))
        })
        .await?;
        Ok(IssuedToken { secret, record: record.clone() })
    }

    /// Resolves a bearer token to the actor it stands for; `None` for unknown or revoked.
    pub async fn authenticate(&self, secret: &str) -> Result<Option<Actor>, ServiceError> {
        Ok(self.authenticate_scoped(&token_hash(secret)).await?.map(|(actor, _)| actor))
    }

    /// As [`Service::authenticate`], by the stored hash (a UI session keeps the hash only).
    pub async fn authenticate_hash(&self, secret_hash: &str) -> Result<Option<Actor>, ServiceError> {
        Ok(self.authenticate_scoped(secret_hash).await?.map(|(actor, _)| actor))
    }

    /// The actor a token (by its hash) stands for, and the scopes it is limited to (empty:
    /// everything its roles allow).
    pub async fn authenticate_scoped(&self, secret_hash: &str) -> Result<Option<(Actor, Vec<String>)>, ServiceError> {
        let record = match self.store.token_by_hash(secret_hash).await {
            Ok(Some(record)) => record,
            // A token whose row does not match the log authenticates nobody (it is reported
            // by `audit verify` and `/readyz`).
            Ok(None) | Err(StoreError::Tampered(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        if record.revoked_at.is_some() || token_expired(&record, self.clock.now()) {
            return Ok(None);
        }
        let Ok(principal) = Principal::parse("principal", &record.principal) else { return Ok(None) };
        self.token_used(&record.id, self.clock.now());
        let roles: Vec<Role> = record.roles.iter().filter_map(|r| Role::parse(r)).collect();
        let actor = Actor::new(principal, &roles);
        let actor = match record.issued_by.as_deref().map(|i| Principal::parse("issued_by", i)) {
            Some(Ok(issuer)) => actor.issued_by(issuer),
            _ => actor,
        };
        Ok(Some((actor, record.scopes)))
    }

    /// Recomputes the audit chain and, when it holds, checks every record against the event
    /// that sealed it (at most 100 mismatches are named).
    pub async fn audit_verify(&self, actor: &Actor) -> Result<Verification, ServiceError> {
        require(actor, "verify the audit log", &[Role::Admin, Role::Auditor, Role::Approver, Role::Requester])?;
        let chain = self.store.verify_chain().await?;
        // A broken chain vouches for no seal: the records are checked only against an intact one.
        let mut records = if chain.is_ok() { self.store.verify_records(100).await? } else { Vec::new() };
        if chain.is_ok()
            && let Some(mismatch) = waiver_store::checkpoint::verify(self.store.as_ref()).await?
        {
            records.push(mismatch);
        }
        Ok(Verification { chain, records })
    }

    /// Checkpoints the register ([`waiver_store::checkpoint`]) if one is due for a register
    /// of about `count` exceptions: the terms of every record, each checked against its seal,
    /// as of the log's head now. Not while any record fails its check (it would be left out
    /// of the checkpoint). Returns how many exceptions it holds (0: none was due).
    pub async fn checkpoint_register(&self, count: usize) -> Result<usize, ServiceError> {
        self.write_checkpoint(Some(count)).await
    }

    /// Checkpoints the register now, due or not (`waiver audit checkpoint`; admin).
    pub async fn checkpoint_now(&self, actor: &Actor) -> Result<usize, ServiceError> {
        require(actor, "checkpoint the register", &[Role::Admin])?;
        self.write_checkpoint(None).await
    }

    async fn write_checkpoint(&self, due_for: Option<usize>) -> Result<usize, ServiceError> {
        use waiver_store::checkpoint;
        let newest = match checkpoint::newest(self.store.as_ref()).await {
            Ok(newest) => newest,
            // One that does not match its seal is replaced; `audit verify` names it until then.
            Err(StoreError::Tampered(_)) => None,
            Err(e) => return Err(e.into()),
        };
        let changed = match &newest {
            Some((_, manifest)) => Some(self.store.exceptions_sealed_after(manifest.as_of).await?.len()),
            None => None,
        };
        if due_for.is_some_and(|count| !checkpoint::due(count, changed)) {
            return Ok(0);
        }
        let as_of = self.store.last_seq().await?;
        let terms = self.store.exception_terms().await?;
        if let Some(t) = self.store.quarantined().iter().find(|t| t.key.starts_with("exception:")) {
            return Err(ServiceError::InvalidState(format!("no register checkpoint while {t}")));
        }
        let n = terms.len();
        let at = self.clock.now();
        let previous = newest.map(|(_, manifest)| manifest);
        let commit = tokio::task::spawn_blocking(move || checkpoint::commit(&terms, as_of, previous.as_ref(), at))
            .await
            .map_err(|e| ServiceError::Store(StoreError::Other(format!("building the register checkpoint: {e}"))))?;
        self.store.commit(Box::new(move |_| commit)).await?;
        tracing::info!(exceptions = n, as_of, "checkpointed the register");
        Ok(n)
    }

    /// Records this node's reads found not matching the log (they grant nothing).
    pub fn quarantined(&self) -> Vec<waiver_store::seal::Tampered> {
        self.store.quarantined()
    }

    /// Seals, once, the records of a store made before records were sealed (trusted as
    /// found; see `waiver_store::seal::legacy_commit`). Returns how many it sealed.
    pub async fn seal_legacy_records(&self) -> Result<usize, ServiceError> {
        let Some(unsealed) = self.store.unsealed().await? else { return Ok(0) };
        if unsealed.is_empty() {
            return Ok(0);
        }
        let count = unsealed.exceptions.len() + unsealed.identities.len() + unsealed.tokens.len();
        let now = self.clock.now();
        self.store.commit(Box::new(move |_| waiver_store::seal::legacy_commit(unsealed, now))).await?;
        tracing::info!(records = count, "sealed the records of an earlier version against the audit log");
        Ok(count)
    }

    /// Audit events after `after`, at most `limit`.
    pub async fn audit_events(&self, actor: &Actor, after: u64, limit: u32) -> Result<Vec<EventRecord>, ServiceError> {
        require(actor, "read the audit log", READERS)?;
        Ok(self.store.events(after, limit).await?)
    }

    /// Adds decision counts to the exceptions' `usage` (flushed from the decision engine's
    /// counters in the background). A count is not a state change, so no event; the version
    /// is unchanged and a concurrent writer's change wins (the next flush retries).
    pub async fn record_usage(
        &self,
        id: ExceptionId,
        uses: u64,
        last_used_at: Timestamp,
        scope_used: u64,
    ) -> Result<(), ServiceError> {
        let mut flushed = self.load(id).await?;
        flushed.usage.count += uses;
        flushed.usage.last_used_at = flushed.usage.last_used_at.max(Some(last_used_at));
        flushed.usage.scope_used |= scope_used;
        // Added to the stored count in place (usage is not sealed: it is not governance state).
        let delta = waiver_store::UsageDelta { exception: id, uses, last_used_at, scope_used };
        self.store.commit(Box::new(move |_| Commit { usage: vec![delta], ..Commit::default() })).await?;
        // Usage is not an event, so no follower brings it back: this node's copy takes it here.
        self.records.apply(&[flushed]);
        Ok(())
    }

    /// Notes that token `id` authenticated at `at` (flushed by [`Service::flush_token_uses`]).
    pub fn token_used(&self, id: &str, at: Timestamp) {
        let mut uses = self.token_uses.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let last = uses.entry(id.to_owned()).or_insert(at);
        *last = (*last).max(at);
    }

    /// Writes when tokens were last used (this node's, plus `more` from the decision path):
    /// telemetry beside the sealed records, so no event. A failed write keeps them for the
    /// next flush.
    pub async fn flush_token_uses(&self, more: Vec<(String, Timestamp)>) -> Result<(), ServiceError> {
        let mut uses: Vec<(String, Timestamp)> = {
            let mut held = self.token_uses.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            held.drain().collect()
        };
        uses.extend(more);
        if uses.is_empty() {
            return Ok(());
        }
        let written = uses.clone();
        let result = self.store.commit(Box::new(move |_| Commit { token_usage: written, ..Commit::default() })).await;
        if let Err(e) = result {
            for (id, at) in uses {
                self.token_used(&id, at);
            }
            return Err(e.into());
        }
        Ok(())
    }

    /// Records uses of break-glass exceptions in the audit log: emergency access leaves a
    /// full trail. Identical uses (same exception, subject, action and resource) within the
    /// same second are one event with their `count`, so a flood of uses costs the log one
    /// event a second per distinct access, and loses none.
    pub async fn record_break_glass_uses(&self, uses: Vec<BreakGlassUse>) -> Result<(), ServiceError> {
        if uses.is_empty() {
            return Ok(());
        }
        // In order of first use; counted per (second, exception, subject, action, resource).
        let mut groups: Vec<(BreakGlassUse, u64)> = Vec::new();
        let mut index: HashMap<(i64, ExceptionId, String, String, String), usize> = HashMap::new();
        for used in uses {
            let key =
                (used.at.as_second(), used.exception, used.subject.clone(), used.action.clone(), used.resource.clone());
            match index.get(&key).and_then(|&i| groups.get_mut(i)) {
                Some((_, count)) => *count += 1,
                None => {
                    index.insert(key, groups.len());
                    groups.push((used, 1));
                }
            }
        }
        let events = groups
            .into_iter()
            .map(|(u, count)| EventDraft {
                at: u.at,
                actor: Principal::system(),
                event_type: "break_glass.used".into(),
                exception_id: Some(u.exception),
                data: serde_json::json!({
                    "subject": u.subject, "action": u.action, "resource": u.resource,
                    "request_id": u.request_id, "count": count,
                }),
            })
            .collect();
        self.store.commit(Box::new(move |_| Commit { events, ..Commit::default() })).await?;
        Ok(())
    }
}

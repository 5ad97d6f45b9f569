//! Reads the web UI asks for, answered by the same rules as every other use case: which
//! actions a viewer may take (each transition tried on a copy, nothing stored), the register
//! sorted and paged from memory, the approvals inbox, the dashboard's reports and how many
//! exceptions waive each baseline policy.

use std::{cmp::Ordering, sync::Arc};

use jiff::Timestamp;
use waiver_core::{Actor, Exception, LifecycleError, State};
use waiver_evidence::reports::{Options, Report};
use waiver_store::ExceptionFilter;

use crate::{Action, ListQuery, READERS, Service, ServiceError, require};

/// What a viewer may do to one exception now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Permitted {
    pub actions: Vec<Action>,
    /// Whether a renewal may be asked for (its new expiry is checked when it is).
    pub renew: bool,
    /// Why the viewer may not approve something that awaits approval (roles or separation
    /// of duties), so a page can say so instead of hiding it.
    pub approve_refused: Option<String>,
}

/// A kind of work waiting for someone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum WorkKind {
    Approve,
    PostUseReview,
    Attest,
    AcceptTransfer,
    MyRequest,
}

impl WorkKind {
    pub const ALL: [WorkKind; 5] =
        [WorkKind::Approve, WorkKind::PostUseReview, WorkKind::Attest, WorkKind::AcceptTransfer, WorkKind::MyRequest];

    pub fn as_str(self) -> &'static str {
        match self {
            WorkKind::Approve => "approve",
            WorkKind::PostUseReview => "post_use_review",
            WorkKind::Attest => "attest",
            WorkKind::AcceptTransfer => "accept_transfer",
            WorkKind::MyRequest => "my_request",
        }
    }
}

/// One thing waiting: which exception, since when, and when it times out or falls due.
#[derive(Debug, Clone)]
pub struct WorkItem {
    pub kind: WorkKind,
    pub exception: Arc<Exception>,
    pub waiting_since: Timestamp,
    pub due_at: Option<Timestamp>,
}

/// What waits for one person, by kind (see [`Service::my_work`]).
#[derive(Debug, Clone, Default)]
pub struct MyWork {
    pub items: std::collections::BTreeMap<WorkKind, Vec<WorkItem>>,
    pub totals: std::collections::BTreeMap<WorkKind, usize>,
}

impl MyWork {
    fn push(&mut self, kind: WorkKind, item: WorkItem, limit: usize) {
        *self.totals.entry(kind).or_default() += 1;
        let items = self.items.entry(kind).or_default();
        // Keep the oldest `limit`: a full list drops its newest for an older item.
        if items.len() < limit {
            items.push(item);
        } else if let Some(newest) = items.iter_mut().max_by_key(|i| i.waiting_since)
            && newest.waiting_since > item.waiting_since
        {
            *newest = item;
        }
    }

    /// Everything waiting, of every kind.
    pub fn total(&self) -> usize {
        self.totals.values().sum()
    }

    /// The wire form, states as of `now`.
    pub fn view(&self, now: Timestamp) -> waiver_proto::Inbox {
        let items = self
            .items
            .values()
            .flatten()
            .map(|i| waiver_proto::WorkItem {
                kind: i.kind.as_str().to_owned(),
                id: i.exception.id.to_string(),
                state: i.exception.effective_state(now).to_string(),
                risk: i.exception.risk.to_string(),
                subject: i.exception.subject.to_string(),
                waives: i.exception.waives.iter().map(ToString::to_string).collect(),
                owner: i.exception.owner.to_string(),
                requester: i.exception.requester.to_string(),
                waiting_since: i.waiting_since.to_string(),
                due_at: i.due_at.map(|t| t.to_string()),
            })
            .collect();
        let totals = self.totals.iter().map(|(k, n)| (k.as_str().to_owned(), *n)).collect();
        waiver_proto::Inbox { items, totals }
    }
}

/// How the register is ordered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SortKey {
    #[default]
    Id,
    ExpiresAt,
    Risk,
    State,
    Owner,
    Subject,
}

impl SortKey {
    pub fn parse(s: &str) -> Result<Self, String> {
        Ok(match s {
            "id" => Self::Id,
            "expires_at" => Self::ExpiresAt,
            "risk" => Self::Risk,
            "state" => Self::State,
            "owner" => Self::Owner,
            "subject" => Self::Subject,
            _ => return Err(format!("`{s}` is not a sort key: use id, expires_at, risk, state, owner or subject")),
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Id => "id",
            Self::ExpiresAt => "expires_at",
            Self::Risk => "risk",
            Self::State => "state",
            Self::Owner => "owner",
            Self::Subject => "subject",
        }
    }
}

/// One page of the register, and how many match in all.
#[derive(Debug, Clone)]
pub struct Browse {
    pub items: Vec<Arc<Exception>>,
    pub total: usize,
}

/// One baseline policy and how many open exceptions waive it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyUse {
    pub id: String,
    pub effect: &'static str,
    pub waived_by: usize,
}

/// The reports a dashboard draws (each capped at a few rows per list).
#[derive(Debug, Clone)]
pub struct Dashboard {
    pub sprawl: serde_json::Value,
    pub hygiene: serde_json::Value,
    pub break_glass: serde_json::Value,
}

/// Whether `hay` contains `needle_lower` (already lowercase), ignoring case, without
/// allocating when the needle is ASCII (the register is searched a record at a time).
fn contains_ci(hay: &str, needle_lower: &str) -> bool {
    if needle_lower.is_ascii() {
        let n = needle_lower.as_bytes();
        n.is_empty() || hay.as_bytes().windows(n.len()).any(|w| w.eq_ignore_ascii_case(n))
    } else {
        hay.to_lowercase().contains(needle_lower)
    }
}

impl ListQuery {
    /// Whether `e` passes every filter but the cursor and the limit, at `now`; `needle` is
    /// the search text, lowercased once by the caller.
    pub(crate) fn matches_with(&self, e: &Exception, now: Timestamp, needle: Option<&str>) -> bool {
        self.subject.as_ref().is_none_or(|s| &e.subject == s)
            && self.owner.as_ref().is_none_or(|o| e.owner.as_str() == o)
            && self.state.is_none_or(|s| e.effective_state(now) == s)
            && self.kind.is_none_or(|k| e.kind == k)
            && self.risk.is_none_or(|r| e.risk == r)
            && self.waives.as_ref().is_none_or(|w| e.waives.contains(w))
            && self.expires_before.is_none_or(|t| e.expires_at < t)
            && self.open.is_none_or(|o| e.is_open(now) == o)
            && self.review_overdue.is_none_or(|o| e.review_overdue(now) == o)
            && needle.is_none_or(|q| {
                contains_ci(&e.id.to_string(), q)
                    || contains_ci(&e.subject.to_string(), q)
                    || contains_ci(&e.justification, q)
                    || contains_ci(e.owner.as_str(), q)
                    || contains_ci(e.requester.as_str(), q)
            })
    }
}

impl Service {
    /// Which lifecycle actions `actor` may take on `e` at this instant: each transition is
    /// tried on the record (a pure function; nothing is stored), so the answer is exactly
    /// what the action itself would say.
    pub fn permitted(&self, actor: &Actor, e: &Exception) -> Permitted {
        let now = self.now();
        // A placeholder comment, so an action that requires one is judged on who and when.
        let note = || Some("(dry run)".to_owned());
        let tries: [(Action, Result<_, LifecycleError>); 7] = [
            (Action::Approve, e.approve(actor, note(), now)),
            (Action::Reject, e.reject(actor, note(), now)),
            (Action::Withdraw, e.withdraw(actor, note(), now)),
            (Action::Revoke, e.revoke(actor, note(), now)),
            (Action::Attest, e.attest(actor, note(), now)),
            (Action::EndBreakGlass, e.end_break_glass(actor, note(), now)),
            (Action::PostUseReview, e.review_post_use(actor, note(), now)),
        ];
        let awaiting = e.effective_state(now) == State::Requested || e.pending_renewal.is_some();
        let approve_refused = tries.iter().find_map(|(action, t)| match t {
            Err(error @ (LifecycleError::Forbidden { .. } | LifecycleError::SeparationOfDuties(_)))
                if *action == Action::Approve && awaiting =>
            {
                Some(error.to_string())
            }
            _ => None,
        });
        // Routing: an approver the waived rules do not name is refused as the action would be.
        let routed = self.check_routing(actor, e).err().map(|e| e.to_string());
        let approve_refused = approve_refused.or_else(|| routed.clone().filter(|_| awaiting));
        let actions = tries
            .into_iter()
            .filter(|(a, t)| t.is_ok() && !(*a == Action::Approve && routed.is_some()))
            .map(|(a, _)| a)
            .collect();
        // The smallest extension: refused only for who the actor is or the state it is in;
        // a rule the new expiry breaks is shown beside the field when it is asked for.
        let renew = match e.renew(actor, e.expires_at + jiff::SignedDuration::from_secs(1), note(), &self.rules(), now)
        {
            Ok(_) | Err(LifecycleError::Invalid(_)) => true,
            Err(_) => false,
        };
        Permitted { actions, renew, approve_refused }
    }

    /// The serving node's register in memory, or every record from the store elsewhere.
    async fn all_records(&self) -> Result<Vec<Arc<Exception>>, ServiceError> {
        match self.records.all() {
            Some(held) => Ok(held),
            None => Ok(self.store.exceptions(&ExceptionFilter::default()).await?.into_iter().map(Arc::new).collect()),
        }
    }

    /// A page of the register matching `query`, ordered by `sort` (ties by id), starting at
    /// `offset`. Reads the in-memory register on a serving node.
    pub async fn browse(
        &self,
        actor: &Actor,
        query: &ListQuery,
        sort: SortKey,
        descending: bool,
        offset: usize,
        limit: usize,
    ) -> Result<Browse, ServiceError> {
        require(actor, "read exceptions", READERS)?;
        let now = self.now();
        let needle = query.q.as_ref().map(|q| q.to_lowercase());
        let mut rows: Vec<Arc<Exception>> =
            self.all_records().await?.into_iter().filter(|e| query.matches_with(e, now, needle.as_deref())).collect();
        let order = |a: &Arc<Exception>, b: &Arc<Exception>| -> Ordering {
            let by = match sort {
                SortKey::Id => Ordering::Equal,
                // Soonest first among what has not ended; what has ended comes after, the most
                // recently ended first (the long-expired last, not first).
                SortKey::ExpiresAt => {
                    let past = |e: &Exception| e.expires_at <= now;
                    match (past(a), past(b)) {
                        (false, false) => a.expires_at.cmp(&b.expires_at),
                        (true, true) => b.expires_at.cmp(&a.expires_at),
                        (x, y) => x.cmp(&y),
                    }
                }
                SortKey::Risk => a.risk.cmp(&b.risk),
                SortKey::State => a.effective_state(now).as_str().cmp(b.effective_state(now).as_str()),
                SortKey::Owner => a.owner.as_str().cmp(b.owner.as_str()),
                SortKey::Subject => a.subject.cmp(&b.subject),
            };
            by.then_with(|| a.id.cmp(&b.id))
        };
        rows.sort_unstable_by(|a, b| if descending { order(b, a) } else { order(a, b) });
        let total = rows.len();
        let items = rows.into_iter().skip(offset).take(limit.clamp(1, crate::MAX_PAGE)).collect();
        Ok(Browse { items, total })
    }

    /// What waits for `actor`'s approval: the first `limit` requests and renewals they may
    /// approve now (oldest first), and how many requests and renewals await approval in all.
    pub async fn inbox(&self, actor: &Actor, limit: usize) -> Result<(Vec<Arc<Exception>>, usize), ServiceError> {
        require(actor, "read exceptions", READERS)?;
        let now = self.now();
        let mut waiting = 0;
        let mut mine = Vec::new();
        for e in self.all_records().await? {
            if e.effective_state(now) != State::Requested && e.pending_renewal.is_none() {
                continue;
            }
            waiting += 1;
            // The dry run clones the record: only as many as the page shows.
            if mine.len() < limit && e.approve(actor, None, now).is_ok() && self.check_routing(actor, &e).is_ok() {
                mine.push(e);
            }
        }
        Ok((mine, waiting))
    }

    /// What waits for `actor` (issue 19's "my work"): requests and renewals they may approve
    /// (the waived rules' routing included), break-glass uses they may review, exceptions
    /// they own that are overdue for review or suspended, transfers offered to them, and
    /// their own requests still undecided. Each kind oldest first, at most `limit` each,
    /// with how many there are in all.
    pub async fn my_work(&self, actor: &Actor, limit: usize) -> Result<MyWork, ServiceError> {
        require(actor, "read exceptions", READERS)?;
        let now = self.now();
        let mut work = MyWork::default();
        for e in self.all_records().await? {
            let state = e.effective_state(now);
            let mut add = |kind: WorkKind, since: Timestamp, due: Option<Timestamp>| {
                work.push(kind, WorkItem { kind, exception: Arc::clone(&e), waiting_since: since, due_at: due }, limit);
            };
            let awaiting = state == State::Requested || e.pending_renewal.is_some();
            if awaiting && e.approve(actor, None, now).is_ok() && self.check_routing(actor, &e).is_ok() {
                match &e.pending_renewal {
                    Some(p) => add(WorkKind::Approve, p.requested_at, Some(e.expires_at)),
                    None => add(WorkKind::Approve, e.created_at, e.request_expires_at.map(|t| t.min(e.expires_at))),
                }
            }
            if state == State::AwaitingPostUseReview && e.review_post_use(actor, Some("(dry run)".into()), now).is_ok()
            {
                add(WorkKind::PostUseReview, e.expires_at, e.post_use_review_due());
            }
            if actor.acts_as(&e.owner) {
                if state == State::Suspended {
                    add(WorkKind::Attest, e.updated_at, Some(e.expires_at));
                } else if e.review_overdue(now) {
                    add(WorkKind::Attest, e.review.next_due, Some(e.expires_at));
                }
            }
            if let Some(t) = &e.pending_transfer
                && e.is_open(now)
                && actor.acts_as(&t.to)
            {
                add(WorkKind::AcceptTransfer, t.proposed_at, None);
            }
            if state == State::Requested && actor.is(&e.requester) {
                add(WorkKind::MyRequest, e.created_at, e.request_expires_at.map(|t| t.min(e.expires_at)));
            }
        }
        for items in work.items.values_mut() {
            items.sort_by_key(|i| (i.waiting_since, i.exception.id));
        }
        Ok(work)
    }

    /// The sprawl, hygiene and break-glass reports, with lists cut to `limit` rows: what a
    /// dashboard shows any reader of the register (counts, not evidence exports).
    pub async fn dashboard(&self, actor: &Actor, limit: usize) -> Result<Dashboard, ServiceError> {
        require(actor, "read exceptions", READERS)?;
        let register = self.register_records(true).await?;
        let options = Options { limit, ..Options::default() };
        let run = |report| waiver_evidence::reports::run(report, &register, options);
        // Two passes side by side: the dashboard waits for the longer, not for the sum.
        let (sprawl, (hygiene, break_glass)) = std::thread::scope(|scope| {
            let others = scope.spawn(|| (run(Report::Hygiene), run(Report::BreakGlass)));
            let sprawl = run(Report::Sprawl);
            let others = others.join().unwrap_or_else(|_| {
                let error = serde_json::json!({"error": "the report could not be computed"});
                (error.clone(), error)
            });
            (sprawl, others)
        });
        Ok(Dashboard { sprawl, hygiene, break_glass })
    }

    /// Every policy of the baseline in force, with how many open exceptions waive it.
    pub async fn policy_uses(&self, actor: &Actor) -> Result<Vec<PolicyUse>, ServiceError> {
        require(actor, "read the baseline", READERS)?;
        let Some(baseline) = self.baseline() else { return Ok(Vec::new()) };
        let now = self.now();
        let records = self.all_records().await?;
        let mut waived: std::collections::HashMap<&waiver_core::Waived, usize> = std::collections::HashMap::new();
        for e in records.iter().filter(|e| e.is_open(now)) {
            for w in &e.waives {
                *waived.entry(w).or_default() += 1;
            }
        }
        let mut uses: Vec<PolicyUse> = baseline
            .policies()
            .into_iter()
            .map(|(id, effect)| {
                let waived_by = waiver_core::Waived::parse(&id).ok().and_then(|w| waived.get(&w).copied()).unwrap_or(0);
                PolicyUse { waived_by, id, effect }
            })
            .collect();
        // What no permit allows is denied too, and can be waived as `default-deny`.
        let default_deny = waived.get(&waiver_core::Waived::DefaultDeny).copied().unwrap_or(0);
        uses.push(PolicyUse {
            waived_by: default_deny,
            id: waiver_core::Waived::DEFAULT_DENY.to_owned(),
            effect: "default",
        });
        Ok(uses)
    }

    /// Events matching `filter`, newest first, at or below `upto`: at most `limit`, reading
    /// back at most [`AUDIT_SCAN`] events per call. Returns them, where to go on from (the
    /// event before the last one read, if any is left) and the log's last sequence number.
    pub async fn audit_search(
        &self,
        actor: &Actor,
        upto: Option<u64>,
        limit: usize,
        filter: &AuditFilter,
    ) -> Result<(Vec<waiver_core::audit::EventRecord>, Option<u64>, u64), ServiceError> {
        require(actor, "read the audit log", READERS)?;
        let last = self.store.last_seq().await?;
        let mut upto = upto.unwrap_or(last).min(last);
        let mut found = Vec::new();
        let mut read = 0usize;
        while upto > 0 && found.len() < limit && read < AUDIT_SCAN {
            let chunk = 1000u64.min(upto);
            let mut events = self.store.events(upto - chunk, u32::try_from(chunk).unwrap_or(1000)).await?;
            events.retain(|e| e.seq <= upto);
            read += events.len();
            events.reverse();
            for e in events {
                upto = e.seq.saturating_sub(1);
                if filter.matches(&e) {
                    found.push(e);
                    if found.len() >= limit {
                        break;
                    }
                }
            }
            if chunk == 0 {
                break;
            }
        }
        Ok((found, (upto > 0).then_some(upto), last))
    }

    /// Up to `limit` audit events ending at `upto` (default: the newest), newest first, and
    /// the log's last sequence number.
    pub async fn audit_latest(
        &self,
        actor: &Actor,
        upto: Option<u64>,
        limit: u32,
    ) -> Result<(Vec<waiver_core::audit::EventRecord>, u64), ServiceError> {
        require(actor, "read the audit log", READERS)?;
        let last = self.store.last_seq().await?;
        let upto = upto.unwrap_or(last).min(last);
        let mut events = self.store.events(upto.saturating_sub(u64::from(limit)), limit).await?;
        events.retain(|e| e.seq <= upto);
        events.reverse();
        Ok((events, last))
    }
}

/// Most events one audit search reads back.
pub const AUDIT_SCAN: usize = 20_000;

/// What the audit page filters on; empty parts match everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    /// An event type or its prefix (`exception.`, `token.issued`).
    pub event_type: String,
    /// Who did it, exactly.
    pub actor: String,
    /// The exception concerned, exactly.
    pub exception: String,
}

impl AuditFilter {
    pub fn is_empty(&self) -> bool {
        self.event_type.is_empty() && self.actor.is_empty() && self.exception.is_empty()
    }

    pub fn matches(&self, e: &waiver_core::audit::EventRecord) -> bool {
        e.event_type.starts_with(&self.event_type)
            && (self.actor.is_empty() || e.actor == self.actor)
            && (self.exception.is_empty() || e.exception_id.as_deref() == Some(self.exception.as_str()))
    }
}

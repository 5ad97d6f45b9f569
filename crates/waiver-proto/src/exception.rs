//! Exceptions on the wire: the request a requester files and the exception a client reads.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use waiver_core::{
    self as core, ControlKind, CredentialType, EntityRef, ExceptionDraft, ExceptionId, FieldError, Kind, Period,
    Principal, RevalidationTrigger, Risk, State, ValidationError, Waived, text,
};

/// A Cedar entity: `{"type": "ServiceAccount", "id": "ci-deployer"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Entity {
    /// The entity type, possibly namespaced.
    #[serde(rename = "type")]
    pub entity_type: String,
    /// The entity id.
    pub id: String,
}

impl From<&EntityRef> for Entity {
    fn from(r: &EntityRef) -> Self {
        Self { entity_type: r.entity_type().to_string(), id: r.id().to_owned() }
    }
}

impl From<&core::Scope> for Scope {
    fn from(scope: &core::Scope) -> Self {
        Self {
            actions: scope.actions.clone(),
            resources: scope
                .resources
                .iter()
                .map(|r| ResourceScope {
                    entity_type: r.entity.entity_type().to_string(),
                    id: r.entity.id().to_owned(),
                    descendants: r.descendants,
                })
                .collect(),
        }
    }
}

impl From<&core::CompensatingControl> for CompensatingControl {
    fn from(c: &core::CompensatingControl) -> Self {
        Self { kind: c.kind.to_string(), description: c.description.clone(), enforced: c.enforced }
    }
}

impl From<&core::Remediation> for Remediation {
    fn from(r: &core::Remediation) -> Self {
        Self { plan: r.plan.clone(), retire_by: r.retire_by, ticket: r.ticket.clone() }
    }
}

/// A resource in scope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResourceScope {
    /// The entity type.
    #[serde(rename = "type")]
    pub entity_type: String,
    /// The entity id.
    pub id: String,
    /// Whether every entity `in` this one is in scope too.
    #[serde(default)]
    pub descendants: bool,
}

/// What an exception covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Scope {
    /// Action ids.
    pub actions: Vec<String>,
    /// Resources, each exact or with its descendants.
    pub resources: Vec<ResourceScope>,
}

/// A compensating control.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CompensatingControl {
    /// One of `extra_logging`, `ip_restriction`, `read_only`, `network_restriction`,
    /// `monitoring`, `rate_limit`, `mfa`, `other`.
    pub kind: String,
    /// What the control does here.
    pub description: String,
    /// Enforced by a system (true) or attested by the owner (false).
    #[serde(default = "crate::yes")]
    pub enforced: bool,
}

/// The review cadence a requester asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReviewInput {
    /// ISO 8601 period; defaults to the rules' cadence for the risk and may only be shorter.
    #[serde(default)]
    pub every: Option<String>,
    /// Changes to the subject that force revalidation.
    #[serde(default)]
    pub revalidate_on: Vec<String>,
}

/// The way back to the baseline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Remediation {
    /// How the need goes away.
    pub plan: String,
    /// When the exception should no longer be needed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub retire_by: Option<Timestamp>,
    /// The tracking ticket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket: Option<String>,
}

/// What a requester supplies (`waiver exception request --file F`, `POST /api/v1/exceptions`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExceptionRequest {
    /// `planned` for a request; `break_glass` only when activating a break-glass.
    #[serde(default)]
    pub kind: Option<String>,
    /// The identity the exception is for.
    pub subject: Entity,
    /// Baseline policy ids (or `default-deny`) the exception overrides.
    pub waives: Vec<String>,
    /// What it covers.
    pub scope: Scope,
    /// A Cedar expression over the request that must hold at decision time.
    #[serde(default)]
    pub condition: Option<String>,
    /// What keeps the deviation safe.
    #[serde(default)]
    pub compensating_controls: Vec<CompensatingControl>,
    /// Why the exception is needed.
    pub justification: String,
    /// Why the normal path cannot be used.
    pub normal_path_unavailable: String,
    /// Systems affected.
    #[serde(default)]
    pub affected_systems: Vec<String>,
    /// Vendor or ticket references.
    #[serde(default)]
    pub references: Vec<String>,
    /// `low`, `medium`, `high` or `critical`.
    pub risk: String,
    /// Defaults to the identity's credential type.
    #[serde(default)]
    pub credential_type: Option<String>,
    /// Who is accountable for the exception.
    pub owner: String,
    /// Defaults to now.
    #[serde(default)]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub starts_at: Option<Timestamp>,
    /// Always required: every exception ends.
    #[schema(value_type = String, format = DateTime)]
    pub expires_at: Timestamp,
    /// Review cadence and revalidation triggers.
    #[serde(default)]
    pub review: ReviewInput,
    /// The way back to the baseline.
    #[serde(default)]
    pub remediation: Option<Remediation>,
    /// Framework controls, e.g. `owasp-nhi-2025:NHI5`.
    #[serde(default)]
    pub frameworks: Vec<String>,
}

fn collect<T>(errors: &mut Vec<FieldError>, result: Result<T, FieldError>) -> Option<T> {
    result.map_err(|e| errors.push(e)).ok()
}

fn check_names(errors: &mut Vec<FieldError>, field: &str, items: &[String]) {
    collect(errors, text::check_list(field, items, false));
    for (idx, item) in items.iter().enumerate() {
        collect(errors, text::check_name(&format!("{field}[{idx}]"), item));
    }
}

impl ExceptionRequest {
    /// Checks the shape of every field, reporting all problems at once.
    pub fn into_draft(self, kind: Kind) -> Result<ExceptionDraft, ValidationError> {
        let mut errors = Vec::new();
        match (self.kind.as_deref(), kind) {
            (None, _) | (Some("planned"), Kind::Planned) | (Some("break_glass"), Kind::BreakGlass) => {}
            (Some(other), _) => errors.push(FieldError::new(
                "kind",
                format!("`{other}` does not match this command, which files a `{kind}` exception; leave `kind` out"),
            )),
        }
        let subject = EntityRef::parse_parts("subject", &self.subject.entity_type, &self.subject.id)
            .map_err(|e| errors.extend(e))
            .ok();

        collect(&mut errors, text::check_list("waives", &self.waives, true));
        let mut waives = Vec::new();
        for (idx, w) in self.waives.iter().enumerate() {
            match Waived::parse(w) {
                Ok(w) if waives.contains(&w) => {
                    errors.push(FieldError::new(format!("waives[{idx}]"), format!("`{w}` is listed twice")))
                }
                Ok(w) => waives.push(w),
                Err(e) => errors.push(FieldError::new(format!("waives[{idx}]"), e)),
            }
        }

        collect(&mut errors, text::check_list("scope.actions", &self.scope.actions, true));
        for (idx, action) in self.scope.actions.iter().enumerate() {
            collect(&mut errors, text::check_name(&format!("scope.actions[{idx}]"), action));
        }
        collect(&mut errors, text::check_list("scope.resources", &self.scope.resources, true));
        let mut resources = Vec::new();
        for (idx, r) in self.scope.resources.iter().enumerate() {
            match EntityRef::parse_parts(&format!("scope.resources[{idx}]"), &r.entity_type, &r.id) {
                Ok(entity) => resources.push(core::ResourceScope { entity, descendants: r.descendants }),
                Err(e) => errors.extend(e),
            }
        }

        if let Some(condition) = &self.condition {
            collect(&mut errors, text::check_text("condition", condition, text::MAX_CONDITION_BYTES));
        }

        collect(&mut errors, text::check_list("compensating_controls", &self.compensating_controls, false));
        let mut controls = Vec::new();
        for (idx, c) in self.compensating_controls.iter().enumerate() {
            let field = format!("compensating_controls[{idx}]");
            let kind =
                ControlKind::parse(&c.kind).map_err(|e| errors.push(FieldError::new(format!("{field}.kind"), e)));
            let description = text::check_text(&format!("{field}.description"), &c.description, text::MAX_TEXT_BYTES)
                .map_err(|e| errors.push(e));
            if let (Ok(kind), Ok(())) = (kind, description) {
                controls.push(core::CompensatingControl {
                    kind,
                    description: c.description.clone(),
                    enforced: c.enforced,
                });
            }
        }

        collect(&mut errors, text::check_text("justification", &self.justification, text::MAX_TEXT_BYTES));
        collect(
            &mut errors,
            text::check_text("normal_path_unavailable", &self.normal_path_unavailable, text::MAX_TEXT_BYTES),
        );
        check_names(&mut errors, "affected_systems", &self.affected_systems);
        check_names(&mut errors, "references", &self.references);
        collect(&mut errors, text::check_list("frameworks", &self.frameworks, false));
        let frameworks: Vec<String> = self
            .frameworks
            .iter()
            .enumerate()
            .filter_map(|(idx, key)| match waiver_core::frameworks::parse(key) {
                Ok(control) => Some(control.key.to_owned()),
                Err(e) => {
                    errors.push(FieldError::new(format!("frameworks[{idx}]"), e));
                    None
                }
            })
            .collect();

        let risk = Risk::parse(&self.risk).map_err(|e| errors.push(FieldError::new("risk", e))).ok();
        let credential_type = match &self.credential_type {
            None => Some(None),
            Some(c) => {
                CredentialType::parse(c).map(Some).map_err(|e| errors.push(FieldError::new("credential_type", e))).ok()
            }
        };
        let owner = collect(&mut errors, Principal::parse("owner", &self.owner));

        let review_every = match &self.review.every {
            None => Some(None),
            Some(every) => every
                .parse::<Period>()
                .map(Some)
                .map_err(|e| errors.push(FieldError::new("review.every", e.to_string())))
                .ok(),
        };
        collect(&mut errors, text::check_list("review.revalidate_on", &self.review.revalidate_on, false));
        let mut revalidate_on = Vec::new();
        for (idx, t) in self.review.revalidate_on.iter().enumerate() {
            match RevalidationTrigger::parse(t) {
                Ok(t) if !revalidate_on.contains(&t) => revalidate_on.push(t),
                Ok(_) => {}
                Err(e) => errors.push(FieldError::new(format!("review.revalidate_on[{idx}]"), e)),
            }
        }

        if let Some(r) = &self.remediation {
            collect(&mut errors, text::check_text("remediation.plan", &r.plan, text::MAX_TEXT_BYTES));
            if let Some(ticket) = &r.ticket {
                collect(&mut errors, text::check_name("remediation.ticket", ticket));
            }
        }

        match (subject, risk, credential_type, owner, review_every) {
            (Some(subject), Some(risk), Some(credential_type), Some(owner), Some(review_every))
                if errors.is_empty() =>
            {
                Ok(ExceptionDraft {
                    subject,
                    waives,
                    scope: core::Scope { actions: self.scope.actions, resources },
                    condition: self.condition,
                    compensating_controls: controls,
                    justification: self.justification,
                    normal_path_unavailable: self.normal_path_unavailable,
                    affected_systems: self.affected_systems,
                    references: self.references,
                    risk,
                    credential_type,
                    owner,
                    starts_at: self.starts_at,
                    expires_at: self.expires_at,
                    review_every,
                    revalidate_on,
                    remediation: self.remediation.map(|r| core::Remediation {
                        plan: r.plan,
                        retire_by: r.retire_by,
                        ticket: r.ticket,
                    }),
                    frameworks,
                })
            }
            _ => Err(ValidationError::new(errors)),
        }
    }
}

/// One approval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Approval {
    /// The approver.
    pub by: String,
    /// When.
    #[schema(value_type = String, format = DateTime)]
    pub at: Timestamp,
    /// Why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// 0 for the request, n for the n-th renewal.
    #[serde(default)]
    pub round: u32,
}

/// The review state of an exception.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Review {
    /// The cadence.
    pub every: String,
    /// When the owner must next attest.
    #[schema(value_type = String, format = DateTime)]
    pub next_due: Timestamp,
    /// Changes to the subject that force revalidation.
    pub revalidate_on: Vec<String>,
    /// Whether the review is late (computed at read time).
    #[serde(default)]
    pub overdue: bool,
    /// Who last attested.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_attested_by: Option<String>,
    /// When they did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_attested_at: Option<Timestamp>,
}

/// A renewal waiting for approval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PendingRenewal {
    /// The asked-for expiry.
    #[schema(value_type = String, format = DateTime)]
    pub expires_at: Timestamp,
    /// Who asked.
    pub requested_by: String,
    /// When.
    #[schema(value_type = String, format = DateTime)]
    pub requested_at: Timestamp,
    /// Why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// Approvals so far.
    pub approvals: Vec<Approval>,
}

/// An ownership transfer waiting for the new owner to accept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PendingTransfer {
    /// The proposed owner.
    pub to: String,
    /// Who proposed it (the owner or an admin).
    pub proposed_by: String,
    /// When.
    #[schema(value_type = String, format = DateTime)]
    pub proposed_at: Timestamp,
    /// Why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

/// What an approver takes out of a request as they approve it: never widens.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Narrowing {
    /// An earlier expiry (RFC 3339 with an offset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<Timestamp>,
    /// Actions of the request's scope to leave out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drop_actions: Vec<String>,
    /// Resources of the request's scope to leave out, as `TYPE:ID`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drop_resources: Vec<String>,
    /// A Cedar condition that must hold as well as the request's own (joined with `&&`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub add_condition: Option<String>,
    /// Compensating controls to add.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add_controls: Vec<CompensatingControl>,
}

impl Narrowing {
    /// Checks the shape of every field, reporting all problems at once.
    pub fn into_core(self) -> Result<core::lifecycle::Narrowing, ValidationError> {
        let mut errors = Vec::new();
        collect(&mut errors, text::check_list("narrow.drop_actions", &self.drop_actions, false));
        for (idx, action) in self.drop_actions.iter().enumerate() {
            collect(&mut errors, text::check_name(&format!("narrow.drop_actions[{idx}]"), action));
        }
        collect(&mut errors, text::check_list("narrow.drop_resources", &self.drop_resources, false));
        let mut drop_resources = Vec::new();
        for (idx, r) in self.drop_resources.iter().enumerate() {
            match r.parse::<EntityRef>() {
                Ok(entity) => drop_resources.push(entity),
                Err(e) => errors.push(FieldError::new(format!("narrow.drop_resources[{idx}]"), e.to_string())),
            }
        }
        if let Some(condition) = &self.add_condition {
            collect(&mut errors, text::check_text("narrow.add_condition", condition, text::MAX_CONDITION_BYTES));
        }
        collect(&mut errors, text::check_list("narrow.add_controls", &self.add_controls, false));
        let mut add_controls = Vec::new();
        for (idx, c) in self.add_controls.iter().enumerate() {
            let field = format!("narrow.add_controls[{idx}]");
            match (
                ControlKind::parse(&c.kind),
                text::check_text(&format!("{field}.description"), &c.description, text::MAX_TEXT_BYTES),
            ) {
                (Ok(kind), Ok(())) => add_controls.push(core::CompensatingControl {
                    kind,
                    description: c.description.clone(),
                    enforced: c.enforced,
                }),
                (Err(e), _) => errors.push(FieldError::new(format!("{field}.kind"), e)),
                (_, Err(e)) => errors.push(e),
            }
        }
        ValidationError::into_result(errors)?;
        Ok(core::lifecycle::Narrowing {
            expires_at: self.expires_at,
            drop_actions: self.drop_actions,
            drop_resources,
            add_condition: self.add_condition,
            add_controls,
        })
    }

    /// The wire form of a recorded narrowing (for its event).
    pub fn from_core(n: &core::lifecycle::Narrowing) -> Self {
        Self {
            expires_at: n.expires_at,
            drop_actions: n.drop_actions.clone(),
            drop_resources: strings(&n.drop_resources),
            add_condition: n.add_condition.clone(),
            add_controls: n.add_controls.iter().map(CompensatingControl::from).collect(),
        }
    }
}

/// The post-use review a break-glass owes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PostUseReview {
    /// How long after the end it is due.
    pub within: String,
    /// When it is due (the end plus `within`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub due: Option<Timestamp>,
    /// Whether it is late (computed at read time).
    #[serde(default)]
    pub overdue: bool,
    /// The reviewer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reviewed_by: Option<String>,
    /// When.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub reviewed_at: Option<Timestamp>,
    /// What the reviewer found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

/// Who closed an exception early and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Resolution {
    /// Who.
    pub by: String,
    /// When.
    #[schema(value_type = String, format = DateTime)]
    pub at: Timestamp,
    /// Why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

/// How often the exception granted a decision.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Usage {
    /// Decisions granted.
    pub count: u64,
    /// The last one.
    #[serde(default)]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_used_at: Option<Timestamp>,
    /// The actions of its scope that granted (what a narrower scope would keep).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub used_actions: Vec<String>,
    /// The resources of its scope that granted, `TYPE:ID`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub used_resources: Vec<String>,
    /// The bitmap both are read from (one bit per (action, resource) pair of a scope of at
    /// most 64 pairs; otherwise per action and per resource).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub scope_used: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Usage {
    fn of(e: &core::Exception) -> Self {
        let used = e.scope.used(e.usage.scope_used);
        Self {
            count: e.usage.count,
            last_used_at: e.usage.last_used_at,
            used_actions: used.actions.iter().map(|a| (*a).to_owned()).collect(),
            used_resources: used.resources.iter().map(|r| r.entity.to_string()).collect(),
            scope_used: e.usage.scope_used,
        }
    }
}

/// An exception as clients read it (CONTRACT.md §3). `state` is the effective state at read
/// time; the store keeps the same shape with the recorded state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Exception {
    /// `EXC-000042`.
    pub id: String,
    /// `planned` or `break_glass`.
    pub kind: String,
    /// The lifecycle state.
    pub state: String,
    /// The identity it is for.
    pub subject: Entity,
    /// Baseline policy ids (or `default-deny`) it overrides.
    pub waives: Vec<String>,
    /// What it covers.
    pub scope: Scope,
    /// The Cedar condition that must hold.
    pub condition: Option<String>,
    /// What keeps it safe.
    pub compensating_controls: Vec<CompensatingControl>,
    /// Why it is needed.
    pub justification: String,
    /// Why the normal path cannot be used.
    pub normal_path_unavailable: String,
    /// Systems affected.
    pub affected_systems: Vec<String>,
    /// Vendor or ticket references.
    pub references: Vec<String>,
    /// The risk rating.
    pub risk: String,
    /// The subject's credential type.
    pub credential_type: String,
    /// Who filed it (for a break-glass, who activated it).
    pub requester: String,
    /// Who is accountable for it.
    pub owner: String,
    /// Approvals, every round.
    pub approvals: Vec<Approval>,
    /// Distinct approvals needed per round.
    pub approvals_required: u32,
    /// When it starts granting.
    #[schema(value_type = String, format = DateTime)]
    pub starts_at: Timestamp,
    /// When it stops granting.
    #[schema(value_type = String, format = DateTime)]
    pub expires_at: Timestamp,
    /// Review cadence and state.
    pub review: Review,
    /// The way back to the baseline.
    pub remediation: Option<Remediation>,
    /// Framework controls.
    pub frameworks: Vec<String>,
    /// Renewals approved so far.
    pub renewals: u32,
    /// A renewal waiting for approval.
    #[serde(default)]
    pub pending_renewal: Option<PendingRenewal>,
    /// When an undecided request times out.
    #[serde(default)]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub request_expires_at: Option<Timestamp>,
    /// For a break-glass, its post-use review.
    #[serde(default)]
    pub post_use_review: Option<PostUseReview>,
    /// The trigger holding it suspended.
    #[serde(default)]
    pub suspended_by: Option<String>,
    /// Who rejected, withdrew or revoked it.
    #[serde(default)]
    pub resolution: Option<Resolution>,
    /// An ownership transfer waiting for the new owner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_transfer: Option<PendingTransfer>,
    /// Who may approve it, when a rule it waives routes it (`@approvers`); absent when any
    /// approver may. Shown to readers, never stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eligible_approvers: Option<Vec<String>>,
    /// Decisions it granted.
    pub usage: Usage,
    /// Scheduler notices already recorded (reminders, flags), so each is sent once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notices: Vec<String>,
    /// When it was filed.
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    /// When it last changed.
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Timestamp,
    /// How many changes it has had.
    pub version: u64,
}

fn strings<T: ToString>(items: &[T]) -> Vec<String> {
    items.iter().map(ToString::to_string).collect()
}

fn approval(a: &core::Approval) -> Approval {
    Approval { by: a.by.to_string(), at: a.at, comment: a.comment.clone(), round: a.round }
}

impl Exception {
    /// The exception as a client sees it at `now`: effective state and overdue flags.
    pub fn view(e: &core::Exception, now: Timestamp) -> Self {
        let mut view = Self::record(e);
        view.state = e.effective_state(now).to_string();
        view.review.overdue = e.review_overdue(now);
        if let Some(review) = view.post_use_review.as_mut() {
            review.overdue = e.post_use_review_overdue(now);
        }
        view
    }

    /// The exception as the store keeps it: the recorded state, no read-time flags.
    pub fn record(e: &core::Exception) -> Self {
        Self {
            id: e.id.to_string(),
            kind: e.kind.to_string(),
            state: e.state.to_string(),
            subject: Entity::from(&e.subject),
            waives: strings(&e.waives),
            scope: Scope::from(&e.scope),
            condition: e.condition.clone(),
            compensating_controls: e.compensating_controls.iter().map(CompensatingControl::from).collect(),
            justification: e.justification.clone(),
            normal_path_unavailable: e.normal_path_unavailable.clone(),
            affected_systems: e.affected_systems.clone(),
            references: e.references.clone(),
            risk: e.risk.to_string(),
            credential_type: e.credential_type.to_string(),
            requester: e.requester.to_string(),
            owner: e.owner.to_string(),
            approvals: e.approvals.iter().map(approval).collect(),
            approvals_required: e.approvals_required,
            starts_at: e.starts_at,
            expires_at: e.expires_at,
            review: Review {
                every: e.review.every.to_string(),
                next_due: e.review.next_due,
                revalidate_on: strings(&e.review.revalidate_on),
                overdue: false,
                last_attested_by: e.review.last_attested.as_ref().map(|(by, _)| by.to_string()),
                last_attested_at: e.review.last_attested.as_ref().map(|(_, at)| *at),
            },
            remediation: e.remediation.as_ref().map(Remediation::from),
            frameworks: e.frameworks.clone(),
            renewals: e.renewals,
            pending_renewal: e.pending_renewal.as_ref().map(|p| PendingRenewal {
                expires_at: p.expires_at,
                requested_by: p.requested_by.to_string(),
                requested_at: p.requested_at,
                comment: p.comment.clone(),
                approvals: p.approvals.iter().map(approval).collect(),
            }),
            request_expires_at: e.request_expires_at,
            post_use_review: e.post_use_review.as_ref().map(|r| PostUseReview {
                within: r.within.to_string(),
                due: if e.kind == Kind::BreakGlass && matches!(e.state, State::AwaitingPostUseReview | State::Closed) {
                    e.post_use_review_due()
                } else {
                    None
                },
                overdue: false,
                reviewed_by: r.reviewed_by.as_ref().map(ToString::to_string),
                reviewed_at: r.reviewed_at,
                comment: r.comment.clone(),
            }),
            suspended_by: e.suspended_by.map(|t| t.to_string()),
            resolution: e.resolution.as_ref().map(|r| Resolution {
                by: r.by.to_string(),
                at: r.at,
                comment: r.comment.clone(),
            }),
            pending_transfer: e.pending_transfer.as_ref().map(|t| PendingTransfer {
                to: t.to.to_string(),
                proposed_by: t.proposed_by.to_string(),
                proposed_at: t.proposed_at,
                comment: t.comment.clone(),
            }),
            eligible_approvers: None,
            usage: Usage::of(e),
            notices: e.notices.clone(),
            created_at: e.created_at,
            updated_at: e.updated_at,
            version: e.version,
        }
    }
}

/// A stored record that no longer parses: the store maps this to a corruption error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("stored exception `{id}` is unreadable: {why}")]
pub struct RecordError {
    id: String,
    why: String,
}

fn principal(id: &str, field: &str, s: &str) -> Result<Principal, RecordError> {
    Principal::parse(field, s).map_err(|e| RecordError { id: id.to_owned(), why: e.to_string() })
}

fn core_approval(id: &str, a: Approval) -> Result<core::Approval, RecordError> {
    Ok(core::Approval { by: principal(id, "approvals.by", &a.by)?, at: a.at, comment: a.comment, round: a.round })
}

impl TryFrom<Exception> for core::Exception {
    type Error = RecordError;

    /// Reads a stored record back into the domain, with its recorded state.
    fn try_from(r: Exception) -> Result<Self, Self::Error> {
        let id_text = r.id.clone();
        let bad = |why: String| RecordError { id: id_text.clone(), why };
        let request = ExceptionRequest {
            kind: None,
            subject: r.subject,
            waives: r.waives,
            scope: r.scope,
            condition: r.condition,
            compensating_controls: r.compensating_controls,
            justification: r.justification,
            normal_path_unavailable: r.normal_path_unavailable,
            affected_systems: r.affected_systems,
            references: r.references,
            risk: r.risk,
            credential_type: Some(r.credential_type),
            owner: r.owner,
            starts_at: Some(r.starts_at),
            expires_at: r.expires_at,
            review: ReviewInput { every: Some(r.review.every), revalidate_on: r.review.revalidate_on },
            remediation: r.remediation,
            frameworks: r.frameworks,
        };
        let kind = Kind::parse(&r.kind).map_err(&bad)?;
        let draft = request.into_draft(kind).map_err(|e| bad(e.to_string()))?;
        let every = draft.review_every.ok_or_else(|| bad("review.every is missing".into()))?;
        let last_attested = match (r.review.last_attested_by, r.review.last_attested_at) {
            (Some(by), Some(at)) => Some((principal(&id_text, "review.last_attested_by", &by)?, at)),
            _ => None,
        };
        Ok(core::Exception {
            id: r.id.parse::<ExceptionId>().map_err(|e| bad(e.to_string()))?,
            kind,
            state: State::parse(&r.state).map_err(&bad)?,
            subject: draft.subject,
            waives: draft.waives,
            scope: draft.scope,
            condition: draft.condition,
            compensating_controls: draft.compensating_controls,
            justification: draft.justification,
            normal_path_unavailable: draft.normal_path_unavailable,
            affected_systems: draft.affected_systems,
            references: draft.references,
            risk: draft.risk,
            credential_type: draft.credential_type.unwrap_or(CredentialType::Other),
            requester: principal(&id_text, "requester", &r.requester)?,
            owner: draft.owner,
            approvals: r.approvals.into_iter().map(|a| core_approval(&id_text, a)).collect::<Result<_, _>>()?,
            approvals_required: r.approvals_required,
            starts_at: r.starts_at,
            expires_at: r.expires_at,
            review: core::Review {
                every,
                next_due: r.review.next_due,
                revalidate_on: draft.revalidate_on,
                last_attested,
            },
            remediation: draft.remediation,
            frameworks: draft.frameworks,
            renewals: r.renewals,
            pending_renewal: match r.pending_renewal {
                None => None,
                Some(p) => Some(core::PendingRenewal {
                    expires_at: p.expires_at,
                    requested_by: principal(&id_text, "pending_renewal.requested_by", &p.requested_by)?,
                    requested_at: p.requested_at,
                    comment: p.comment,
                    approvals: p.approvals.into_iter().map(|a| core_approval(&id_text, a)).collect::<Result<_, _>>()?,
                }),
            },
            request_expires_at: r.request_expires_at,
            post_use_review: match r.post_use_review {
                None => None,
                Some(p) => Some(core::PostUseReview {
                    within: p.within.parse().map_err(|e: waiver_core::period::PeriodError| bad(e.to_string()))?,
                    reviewed_by: p
                        .reviewed_by
                        .map(|b| principal(&id_text, "post_use_review.reviewed_by", &b))
                        .transpose()?,
                    reviewed_at: p.reviewed_at,
                    comment: p.comment,
                }),
            },
            suspended_by: r.suspended_by.map(|t| RevalidationTrigger::parse(&t)).transpose().map_err(&bad)?,
            resolution: match r.resolution {
                None => None,
                Some(res) => Some(core::exception::Resolution {
                    by: principal(&id_text, "resolution.by", &res.by)?,
                    at: res.at,
                    comment: res.comment,
                }),
            },
            pending_transfer: match r.pending_transfer {
                None => None,
                Some(t) => Some(core::PendingTransfer {
                    to: principal(&id_text, "pending_transfer.to", &t.to)?,
                    proposed_by: principal(&id_text, "pending_transfer.proposed_by", &t.proposed_by)?,
                    proposed_at: t.proposed_at,
                    comment: t.comment,
                }),
            },
            // The bitmap lives beside the record, in the store's columns.
            usage: core::exception::Usage { count: r.usage.count, last_used_at: r.usage.last_used_at, scope_used: 0 },
            notices: r.notices,
            created_at: r.created_at,
            updated_at: r.updated_at,
            version: r.version,
        })
    }
}

//! The exception: a named, governed deviation from the baseline for one subject.

use std::fmt;

use jiff::Timestamp;

use crate::{EntityRef, ExceptionId, Period, PolicyId, Principal};

string_enum!(
    /// How the exception came to be: through review, or in an emergency.
    Kind, "kind" { Planned => "planned", BreakGlass => "break_glass" }
);

string_enum!(
    /// A lifecycle state. Stored states are what the log recorded; the effective state at an
    /// instant is [`Exception::effective_state`], which applies time (expiry, start, timeouts).
    State, "state" {
        Requested => "requested",
        Approved => "approved",
        Active => "active",
        Rejected => "rejected",
        Withdrawn => "withdrawn",
        Expired => "expired",
        Revoked => "revoked",
        Suspended => "suspended",
        AwaitingPostUseReview => "awaiting_post_use_review",
        Closed => "closed",
    }
);

impl State {
    /// Whether nothing more can happen to an exception in this state.
    pub fn is_closed(self) -> bool {
        matches!(self, State::Rejected | State::Withdrawn | State::Expired | State::Revoked | State::Closed)
    }
}

string_enum!(
    /// The risk rating; governance rules scale with it.
    Risk, "risk" { Low => "low", Medium => "medium", High => "high", Critical => "critical" }
);

string_enum!(
    /// The kind of credential the subject uses; long-lived secrets get shorter exceptions.
    CredentialType, "credential type" {
        LongLivedSecret => "long_lived_secret",
        ApiKey => "api_key",
        JitCredential => "jit_credential",
        WorkloadToken => "workload_token",
        Certificate => "certificate",
        AgentToken => "agent_token",
        Other => "other",
    }
);

string_enum!(
    /// A compensating control's kind.
    ControlKind, "control kind" {
        ExtraLogging => "extra_logging",
        IpRestriction => "ip_restriction",
        ReadOnly => "read_only",
        NetworkRestriction => "network_restriction",
        Monitoring => "monitoring",
        RateLimit => "rate_limit",
        Mfa => "mfa",
        Other => "other",
    }
);

string_enum!(
    /// A change to the subject that forces its exceptions to be revalidated.
    RevalidationTrigger, "revalidation trigger" {
        OwnerChange => "owner_change",
        CodeChange => "code_change",
        VendorChange => "vendor_change",
        Offboarded => "offboarded",
        OwnerLeft => "owner_left",
    }
);

/// What an exception waives: a baseline `forbid` by its `@id`, the default deny, or a
/// control no decision point enforces (`control:secret-rotation`, named in the rules'
/// catalog), which is governed the same way and never touches a decision.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Waived {
    DefaultDeny,
    Policy(PolicyId),
    Control(PolicyId),
}

impl Waived {
    pub const DEFAULT_DENY: &'static str = "default-deny";
    pub const CONTROL_PREFIX: &'static str = "control:";

    pub fn parse(s: &str) -> Result<Self, String> {
        if s == Self::DEFAULT_DENY {
            return Ok(Self::DefaultDeny);
        }
        if let Some(name) = s.strip_prefix(Self::CONTROL_PREFIX) {
            return name.parse().map(Self::Control).map_err(|e: crate::id::IdError| e.to_string());
        }
        s.parse().map(Self::Policy).map_err(|e: crate::id::IdError| e.to_string())
    }

    /// Whether this is a control outside Cedar rather than a baseline rule.
    pub fn is_control(&self) -> bool {
        matches!(self, Waived::Control(_))
    }
}

impl fmt::Display for Waived {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Waived::DefaultDeny => f.write_str(Self::DEFAULT_DENY),
            Waived::Policy(id) => id.fmt(f),
            Waived::Control(name) => write!(f, "{}{name}", Self::CONTROL_PREFIX),
        }
    }
}

/// A resource in scope: one entity, or with `descendants` every entity `in` it (Cedar `in`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ResourceScope {
    pub entity: EntityRef,
    pub descendants: bool,
}

/// The actions and resources an exception covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    /// Action ids; `*` means every action, and only where the rules allow it.
    pub actions: Vec<String>,
    pub resources: Vec<ResourceScope>,
}

impl Scope {
    pub const ANY_ACTION: &'static str = "*";
}

/// A compensating control: what keeps the deviation safe while it lasts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompensatingControl {
    pub kind: ControlKind,
    pub description: String,
    /// Enforced by a system (true) or only attested by the owner (false).
    pub enforced: bool,
}

/// One approver's approval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Approval {
    pub by: Principal,
    pub at: Timestamp,
    pub comment: Option<String>,
    /// 0 for the original request, n for the n-th renewal.
    pub round: u32,
}

/// How often the owner must attest that the exception is still needed, and what forces it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Review {
    pub every: Period,
    pub next_due: Timestamp,
    pub revalidate_on: Vec<RevalidationTrigger>,
    pub last_attested: Option<(Principal, Timestamp)>,
}

/// The way back to the baseline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remediation {
    pub plan: String,
    pub retire_by: Option<Timestamp>,
    pub ticket: Option<String>,
}

/// A renewal asked by the owner, waiting for its approvals. The exception keeps its current
/// expiry until the quorum is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingRenewal {
    pub expires_at: Timestamp,
    pub requested_by: Principal,
    pub requested_at: Timestamp,
    pub comment: Option<String>,
    pub approvals: Vec<Approval>,
}

/// The review every break-glass owes after it ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostUseReview {
    /// How long after the end the review is due.
    pub within: Period,
    pub reviewed_by: Option<Principal>,
    pub reviewed_at: Option<Timestamp>,
    pub comment: Option<String>,
}

/// Who closed an exception early and why: rejection, withdrawal or revocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolution {
    pub by: Principal,
    pub at: Timestamp,
    pub comment: Option<String>,
}

/// A change of owner the current owner (or an admin) proposed, waiting for the new owner to
/// accept: nobody becomes accountable for an exception without saying so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingTransfer {
    pub to: Principal,
    pub proposed_by: Principal,
    pub proposed_at: Timestamp,
    pub comment: Option<String>,
}

/// How often and when an exception last granted a decision, and which parts of its scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub count: u64,
    pub last_used_at: Option<Timestamp>,
    /// Which parts of the scope granted, as a bitmap ([`Scope::used_bit`]): bounded at 64
    /// bits whatever the traffic, so a node records it with one atomic OR per grant.
    pub scope_used: u64,
}

/// What an exception's grants used of its scope (decoded from [`Usage::scope_used`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UsedScope<'a> {
    pub actions: Vec<&'a str>,
    pub resources: Vec<&'a ResourceScope>,
    /// The (action, resource) pairs granted, when the scope is small enough to record each
    /// pair (at most 64 pairs); `None` when only actions and resources were recorded apart.
    pub pairs: Option<Vec<(&'a str, &'a ResourceScope)>>,
}

impl Scope {
    /// The bit recording a grant of action `a` on resource `r` (indices into the scope). A
    /// scope of at most 64 (action, resource) pairs gets a bit per pair; a larger one a bit
    /// per action (low 32) and per resource (high 32), the 32nd standing for "this one or a
    /// later one", so nothing used is ever reported unused.
    pub fn used_bit(n_actions: usize, n_resources: usize, a: usize, r: usize) -> u64 {
        if n_actions.saturating_mul(n_resources) <= 64 {
            1u64.checked_shl(u32::try_from(a * n_resources + r).unwrap_or(63)).unwrap_or(0)
        } else {
            let (a, r) = (u32::try_from(a.min(31)).unwrap_or(31), u32::try_from(r.min(31)).unwrap_or(31));
            (1u64 << a) | (1u64 << (32 + r))
        }
    }

    /// Decodes a [`Usage::scope_used`] bitmap against this scope.
    pub fn used(&self, bits: u64) -> UsedScope<'_> {
        let (na, nr) = (self.actions.len(), self.resources.len());
        let mut used = UsedScope::default();
        if na.saturating_mul(nr) <= 64 {
            let mut pairs = Vec::new();
            for (a, action) in self.actions.iter().enumerate() {
                for (r, resource) in self.resources.iter().enumerate() {
                    if bits & Self::used_bit(na, nr, a, r) != 0 {
                        pairs.push((action.as_str(), resource));
                        if !used.actions.contains(&action.as_str()) {
                            used.actions.push(action.as_str());
                        }
                        if !used.resources.contains(&resource) {
                            used.resources.push(resource);
                        }
                    }
                }
            }
            used.resources.sort_by_key(|r| self.resources.iter().position(|x| x == *r));
            used.pairs = Some(pairs);
        } else {
            let bit = |i: usize| 1u64 << i.min(31);
            used.actions =
                self.actions.iter().enumerate().filter(|(a, _)| bits & bit(*a) != 0).map(|(_, x)| x.as_str()).collect();
            used.resources = self
                .resources
                .iter()
                .enumerate()
                .filter(|(r, _)| (bits >> 32) & bit(*r) != 0)
                .map(|(_, x)| x)
                .collect();
        }
        used
    }
}

/// What a requester (or responder) supplies, checked for shape but not yet for the rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExceptionDraft {
    pub subject: EntityRef,
    pub waives: Vec<Waived>,
    pub scope: Scope,
    pub condition: Option<String>,
    pub compensating_controls: Vec<CompensatingControl>,
    pub justification: String,
    pub normal_path_unavailable: String,
    pub affected_systems: Vec<String>,
    pub references: Vec<String>,
    pub risk: Risk,
    /// Defaults to the identity's credential type from the inventory.
    pub credential_type: Option<CredentialType>,
    pub owner: Principal,
    /// Defaults to now.
    pub starts_at: Option<Timestamp>,
    pub expires_at: Timestamp,
    /// Defaults to the rules' cadence for the risk; may only be shorter.
    pub review_every: Option<Period>,
    pub revalidate_on: Vec<RevalidationTrigger>,
    pub remediation: Option<Remediation>,
    pub frameworks: Vec<String>,
}

/// An exception as the log has recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exception {
    pub id: ExceptionId,
    pub kind: Kind,
    /// The recorded state; see [`Exception::effective_state`] for the state at an instant.
    pub state: State,
    pub subject: EntityRef,
    pub waives: Vec<Waived>,
    pub scope: Scope,
    pub condition: Option<String>,
    pub compensating_controls: Vec<CompensatingControl>,
    pub justification: String,
    pub normal_path_unavailable: String,
    pub affected_systems: Vec<String>,
    pub references: Vec<String>,
    pub risk: Risk,
    pub credential_type: CredentialType,
    pub requester: Principal,
    pub owner: Principal,
    pub approvals: Vec<Approval>,
    /// Distinct approvals needed, fixed by the rules when the request was filed.
    pub approvals_required: u32,
    pub starts_at: Timestamp,
    pub expires_at: Timestamp,
    pub review: Review,
    pub remediation: Option<Remediation>,
    pub frameworks: Vec<String>,
    pub renewals: u32,
    pub pending_renewal: Option<PendingRenewal>,
    /// A request not decided by then times out.
    pub request_expires_at: Option<Timestamp>,
    pub post_use_review: Option<PostUseReview>,
    pub suspended_by: Option<RevalidationTrigger>,
    pub resolution: Option<Resolution>,
    /// An ownership transfer waiting for the new owner's acceptance.
    pub pending_transfer: Option<PendingTransfer>,
    pub usage: Usage,
    /// Keys of the scheduler notices already recorded (see [`crate::schedule`]).
    pub notices: Vec<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    /// How many changes the log holds for this exception; guards concurrent writers.
    pub version: u64,
}

/// What a decision reads of an exception: the terms it grants on, and nothing of its
/// governance (justification, approvals, reviews…). A serving node compiles these at start
/// from the sealed records, so it is ready to decide before it has parsed every field of a
/// million records; the whole records follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Terms {
    pub id: ExceptionId,
    pub version: u64,
    pub kind: Kind,
    pub state: State,
    pub subject: EntityRef,
    pub waives: Vec<Waived>,
    pub scope: Scope,
    pub condition: Option<String>,
    /// The kinds of the compensating controls a system enforces (`other` is never enforced
    /// by waiver), in order: the obligations a grant carries.
    pub obligations: Vec<ControlKind>,
    pub owner: Principal,
    pub starts_at: Timestamp,
    pub expires_at: Timestamp,
}

impl Terms {
    /// Whether this exception, as recorded, can ever grant (time aside).
    pub fn can_grant(&self) -> bool {
        can_grant(self.kind, self.state)
    }
}

/// Planned exceptions grant once approved (or active); break-glass ones only while active.
pub fn can_grant(kind: Kind, state: State) -> bool {
    matches!((kind, state), (Kind::Planned, State::Approved | State::Active) | (Kind::BreakGlass, State::Active))
}

impl Exception {
    /// The terms a decision reads (see [`Terms`]).
    pub fn terms(&self) -> Terms {
        Terms {
            id: self.id,
            version: self.version,
            kind: self.kind,
            state: self.state,
            subject: self.subject.clone(),
            waives: self.waives.clone(),
            scope: self.scope.clone(),
            condition: self.condition.clone(),
            obligations: obligations(&self.compensating_controls).collect(),
            owner: self.owner.clone(),
            starts_at: self.starts_at,
            expires_at: self.expires_at,
        }
    }
}

/// The controls a grant carries as obligations: enforced, and of a kind a system enforces.
pub fn obligations(controls: &[CompensatingControl]) -> impl Iterator<Item = ControlKind> + '_ {
    controls.iter().filter(|c| c.enforced && c.kind != ControlKind::Other).map(|c| c.kind)
}

impl Exception {
    /// The next instant time acts on the recorded state: a request's time-out (or its
    /// expiry, if sooner); otherwise its expiry. Stored beside the record, so the expiry job
    /// reads only what is due instead of every pending request.
    pub fn due_at(&self) -> Timestamp {
        match (self.state, self.request_expires_at) {
            (State::Requested, Some(timeout)) => timeout.min(self.expires_at),
            _ => self.expires_at,
        }
    }

    /// The state at `now`. Time is applied here, not by a background job: an approved
    /// exception past `expires_at` *is* expired before anything records it.
    pub fn effective_state(&self, now: Timestamp) -> State {
        let ended = now >= self.expires_at;
        match (self.kind, self.state) {
            (_, State::Requested) => {
                let timed_out = self.request_expires_at.is_some_and(|t| now >= t);
                if ended || timed_out { State::Expired } else { State::Requested }
            }
            (Kind::Planned, State::Approved | State::Active) => {
                if ended {
                    State::Expired
                } else if now >= self.starts_at {
                    State::Active
                } else {
                    State::Approved
                }
            }
            (Kind::BreakGlass, State::Approved | State::Active) => {
                if ended {
                    State::AwaitingPostUseReview
                } else {
                    State::Active
                }
            }
            (Kind::Planned, State::Suspended) if ended => State::Expired,
            (Kind::BreakGlass, State::Suspended) if ended => State::AwaitingPostUseReview,
            (_, state) => state,
        }
    }

    /// Whether the exception is still open at `now`: requested, approved, active or
    /// suspended — what offboarding revokes and a baseline change must keep valid.
    pub fn is_open(&self, now: Timestamp) -> bool {
        matches!(self.effective_state(now), State::Requested | State::Approved | State::Active | State::Suspended)
    }

    /// Whether the exception may grant a decision at `now`.
    pub fn grants(&self, now: Timestamp) -> bool {
        self.effective_state(now) == State::Active
    }

    /// Whether a periodic review is due and not done, for an exception that still matters.
    pub fn review_overdue(&self, now: Timestamp) -> bool {
        matches!(self.effective_state(now), State::Active | State::Approved | State::Suspended)
            && now >= self.review.next_due
    }

    /// When the post-use review of a break-glass is due, once it has ended.
    pub fn post_use_review_due(&self) -> Option<Timestamp> {
        let review = self.post_use_review.as_ref()?;
        self.expires_at.checked_add(review.within.duration()).ok()
    }

    /// Whether a break-glass's post-use review is late.
    pub fn post_use_review_overdue(&self, now: Timestamp) -> bool {
        self.effective_state(now) == State::AwaitingPostUseReview
            && self.post_use_review_due().is_some_and(|due| now >= due)
    }

    /// Whether `principal` has approved the current round (the request, or the pending renewal).
    pub fn approved_by(&self, principal: &Principal) -> bool {
        match &self.pending_renewal {
            Some(renewal) => renewal.approvals.iter().any(|a| &a.by == principal),
            None => self.approvals.iter().any(|a| &a.by == principal && a.round == self.renewals),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enums_parse_their_wire_names_and_list_them_on_error() {
        for kind in ControlKind::ALL {
            assert_eq!(ControlKind::parse(kind.as_str()), Ok(*kind));
        }
        let err = ControlKind::parse("firewall").unwrap_err();
        assert!(err.starts_with("`firewall` is not a control kind; expected one of `extra_logging`"), "{err}");
        assert_eq!(State::parse("awaiting_post_use_review"), Ok(State::AwaitingPostUseReview));
    }

    #[test]
    fn scope_usage_is_a_bounded_bitmap_that_names_what_was_used() {
        let scope = |na: usize, nr: usize| Scope {
            actions: (0..na).map(|a| format!("a{a}")).collect(),
            resources: (0..nr)
                .map(|r| ResourceScope { entity: format!("T:r{r}").parse().unwrap(), descendants: false })
                .collect(),
        };
        // Pairs: 3 actions × 2 resources.
        let small = scope(3, 2);
        let bits = Scope::used_bit(3, 2, 2, 1) | Scope::used_bit(3, 2, 0, 1);
        let used = small.used(bits);
        assert_eq!(used.actions, ["a0", "a2"]);
        assert_eq!(used.resources.len(), 1);
        assert_eq!(used.pairs.as_ref().map(Vec::len), Some(2));
        // Apart: 40 actions × 2 resources; action 35 folds into the 32nd bit, never lost.
        let big = scope(40, 2);
        let bits = Scope::used_bit(40, 2, 1, 0) | Scope::used_bit(40, 2, 35, 1);
        let used = big.used(bits);
        assert!(used.pairs.is_none());
        assert_eq!(used.actions.len(), 10, "the 32nd bit stands for itself and every later one");
        assert!(used.actions.contains(&"a35") && used.actions.contains(&"a1") && !used.actions.contains(&"a2"));
        assert_eq!(used.resources.len(), 2);
        assert_eq!(scope(3, 2).used(0), UsedScope { pairs: Some(vec![]), ..UsedScope::default() });
    }

    #[test]
    fn waived_parses_default_deny_and_policy_ids() {
        assert_eq!(Waived::parse("default-deny"), Ok(Waived::DefaultDeny));
        let control = Waived::parse("control:secret-rotation").unwrap();
        assert!(control.is_control());
        assert_eq!(control.to_string(), "control:secret-rotation");
        assert!(Waived::parse("control:").is_err());
        assert_eq!(Waived::parse("forbid-prod").unwrap().to_string(), "forbid-prod");
        assert!(Waived::parse("has space").is_err());
    }
}

//! The lifecycle state machine (DESIGN.md §3).
//!
//! ```text
//! planned:     requested -> approved -> active -> expired | revoked        (closed)
//!                       \-> rejected | withdrawn
//! break_glass: activated (active at once) -> ended (expired | revoked)
//!              -> awaiting_post_use_review -> closed
//! any active:  review due -> revalidated (attested) | revoked;  renewed -> new expiry
//! ```
//!
//! Each transition checks who may do it (roles and separation of duties), the effective
//! state at `now`, and the time; it yields the next exception and the [`Change`] to record.
//! Transitions never mutate in place: a refused one leaves nothing behind.

use jiff::Timestamp;

use crate::{
    Actor, Approval, CompensatingControl, CredentialType, EntityRef, Exception, ExceptionDraft, ExceptionId,
    FieldError, Identity, IdentityStatus, Kind, LifecycleError, PendingRenewal, PendingTransfer, PostUseReview,
    Principal, RevalidationTrigger, Review, Role, Rules, State, ValidationError, exception::Resolution,
    exception::Usage, text,
};

/// What a transition changed, to be recorded as an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Requested,
    BreakGlassActivated,
    Approved {
        by: Principal,
        comment: Option<String>,
        renewal: bool,
        quorum_reached: bool,
    },
    Rejected {
        by: Principal,
        comment: Option<String>,
        renewal: bool,
    },
    Withdrawn {
        by: Principal,
        comment: Option<String>,
    },
    Revoked {
        by: Principal,
        comment: Option<String>,
    },
    RenewalRequested {
        by: Principal,
        expires_at: Timestamp,
        comment: Option<String>,
    },
    Attested {
        by: Principal,
        comment: Option<String>,
        next_due: Timestamp,
        lifted: Option<RevalidationTrigger>,
    },
    BreakGlassEnded {
        by: Principal,
        comment: Option<String>,
    },
    PostUseReviewed {
        by: Principal,
        comment: Option<String>,
    },
    Suspended {
        trigger: RevalidationTrigger,
    },
    Expired,
    /// A scheduler finding: a reminder or a flag. Changes no state.
    Noticed(crate::schedule::Notice),
    /// An approver took something out of the request before approving it.
    Narrowed {
        by: Principal,
        narrowing: Narrowing,
    },
    /// The owner (or an admin) proposed a new owner, who must accept.
    TransferProposed {
        by: Principal,
        to: Principal,
        comment: Option<String>,
    },
    /// The new owner accepted: they answer for the exception from now on.
    OwnerTransferred {
        from: Principal,
        to: Principal,
        comment: Option<String>,
    },
    /// Its framework mapping was edited (evidence only; changes no state).
    FrameworksChanged {
        by: Principal,
        added: Vec<String>,
        removed: Vec<String>,
        comment: Option<String>,
    },
}

impl Change {
    /// The event type recorded in the audit log.
    pub fn event_type(&self) -> &'static str {
        match self {
            Change::Requested => "exception.requested",
            Change::BreakGlassActivated => "break_glass.activated",
            Change::Approved { renewal: false, .. } => "exception.approved",
            Change::Approved { renewal: true, .. } => "exception.renewal_approved",
            Change::Rejected { renewal: false, .. } => "exception.rejected",
            Change::Rejected { renewal: true, .. } => "exception.renewal_rejected",
            Change::Withdrawn { .. } => "exception.withdrawn",
            Change::Revoked { .. } => "exception.revoked",
            Change::RenewalRequested { .. } => "exception.renewal_requested",
            Change::Attested { .. } => "exception.attested",
            Change::BreakGlassEnded { .. } => "break_glass.ended",
            Change::PostUseReviewed { .. } => "break_glass.reviewed",
            Change::Suspended { .. } => "exception.suspended",
            Change::Expired => "exception.expired",
            Change::Noticed(notice) => notice.kind.event_type(),
            Change::FrameworksChanged { .. } => "exception.frameworks_changed",
            Change::Narrowed { .. } => "exception.narrowed",
            Change::TransferProposed { .. } => "exception.transfer_proposed",
            Change::OwnerTransferred { .. } => "exception.owner_transferred",
        }
    }
}

/// What an approver takes out of a request as they approve it. Narrowing only ever takes
/// away: a shorter expiry, fewer actions or resources, a further condition (joined with
/// `&&`), more compensating controls. Never widens.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Narrowing {
    pub expires_at: Option<Timestamp>,
    pub drop_actions: Vec<String>,
    pub drop_resources: Vec<EntityRef>,
    pub add_condition: Option<String>,
    pub add_controls: Vec<CompensatingControl>,
}

impl Narrowing {
    pub fn is_empty(&self) -> bool {
        self.expires_at.is_none()
            && self.drop_actions.is_empty()
            && self.drop_resources.is_empty()
            && self.add_condition.is_none()
            && self.add_controls.is_empty()
    }
}

/// The outcome of a transition: the exception after it, and what changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub exception: Exception,
    pub change: Change,
}

fn require(actor: &Actor, action: &'static str, roles: &[Role]) -> Result<(), LifecycleError> {
    if actor.roles.any(roles) {
        Ok(())
    } else {
        Err(LifecycleError::Forbidden { principal: actor.principal.to_string(), action, needs: roles.to_vec() })
    }
}

fn check_comment(comment: &Option<String>, required: bool) -> Result<(), LifecycleError> {
    match comment {
        Some(c) => text::check_text("comment", c, text::MAX_TEXT_BYTES).map_err(|e| ValidationError::one(e).into()),
        None if required => Err(ValidationError::one(FieldError::new("comment", "is required for this action")).into()),
        None => Ok(()),
    }
}

/// Who is filing a new exception, with what, for which identity.
#[derive(Debug, Clone, Copy)]
pub struct Filing<'a> {
    pub draft: &'a ExceptionDraft,
    pub actor: &'a Actor,
    pub rules: &'a Rules,
    /// The subject's inventory record, if it has one.
    pub identity: Option<&'a Identity>,
    pub now: Timestamp,
}

impl Filing<'_> {
    /// Checks everything a new exception needs, for either kind.
    fn check(&self, kind: Kind) -> Result<CredentialType, LifecycleError> {
        let Filing { draft, actor, rules, identity, now, .. } = *self;
        // An agent acts for itself only: its principal is the subject's `TYPE:ID`.
        let by_agent = !actor.roles.any(&[Role::Requester, Role::Responder, Role::Admin]);
        if by_agent && actor.principal.as_entity().as_ref() != Some(&draft.subject) {
            return Err(LifecycleError::Forbidden {
                principal: actor.principal.to_string(),
                action: "request an exception for another subject",
                needs: vec![Role::Requester],
            });
        }
        let mut errors = Vec::new();
        // The triad holds for people: the owner answers for it, the requester asks, and
        // neither is the other; a workload (`TYPE:ID`, an agent) is never an owner.
        if draft.owner == actor.principal {
            errors.push(FieldError::new(
                "owner",
                format!(
                    "`{}` files this request and may not also own it; name the person who answers for it",
                    draft.owner
                ),
            ));
        } else if draft.owner.as_entity().is_some() {
            errors.push(FieldError::new(
                "owner",
                format!("`{}` is a workload; an owner is a person who answers for the exception", draft.owner),
            ));
        }
        let identity = match identity {
            None => {
                errors.push(FieldError::new(
                    "subject",
                    format!("`{}` is not in the identity inventory; add it first", draft.subject),
                ));
                None
            }
            Some(identity) if identity.status == IdentityStatus::Offboarded => {
                errors.push(FieldError::new("subject", format!("`{}` is offboarded", draft.subject)));
                None
            }
            Some(identity) => Some(identity),
        };
        // The inventory decides identity facts: a request may repeat the identity's credential
        // type, never contradict it (filing an `api_key` as `jit_credential` would dodge the
        // API-key cap).
        let credential_type = match (draft.credential_type, identity) {
            (Some(asked), Some(held)) if asked != held.credential_type => {
                errors.push(FieldError::new(
                    "credential_type",
                    format!(
                        "`{}` holds a `{}` in the identity inventory, not a `{}`; leave it out, or update the identity",
                        draft.subject,
                        held.credential_type.as_str(),
                        asked.as_str()
                    ),
                ));
                held.credential_type
            }
            (_, Some(held)) => held.credential_type,
            (asked, None) => asked.unwrap_or(CredentialType::Other),
        };
        if let Err(e) = rules.check_request(draft, kind, credential_type, by_agent, now) {
            errors.extend(e.errors);
        }
        ValidationError::into_result(errors)?;
        Ok(credential_type)
    }

    fn build(&self, kind: Kind, state: State, credential_type: CredentialType) -> Exception {
        let mut exception = self.build_unmapped(kind, state, credential_type);
        // Recorded with the filing (the defaults for what it is, plus the requester's own),
        // so the mapping an approver saw is the one evidence shows later.
        let mut keys = crate::frameworks::default_mapping(&exception, self.identity);
        keys.extend(self.draft.frameworks.iter().filter_map(|k| crate::frameworks::control(k)).map(|c| c.key));
        exception.frameworks = crate::frameworks::sorted(keys).into_iter().map(str::to_owned).collect();
        exception
    }

    fn build_unmapped(&self, kind: Kind, state: State, credential_type: CredentialType) -> Exception {
        let Filing { draft, actor, rules, now, .. } = *self;
        let starts_at = match kind {
            Kind::Planned => draft.starts_at.unwrap_or(now),
            Kind::BreakGlass => now,
        };
        let every = draft.review_every.unwrap_or(*rules.review_every.get(draft.risk));
        Exception {
            // The store assigns the id when it records the filing.
            id: ExceptionId::UNASSIGNED,
            kind,
            state,
            subject: draft.subject.clone(),
            waives: draft.waives.clone(),
            scope: draft.scope.clone(),
            condition: draft.condition.clone(),
            compensating_controls: draft.compensating_controls.clone(),
            justification: draft.justification.clone(),
            normal_path_unavailable: draft.normal_path_unavailable.clone(),
            affected_systems: draft.affected_systems.clone(),
            references: draft.references.clone(),
            risk: draft.risk,
            credential_type,
            requester: actor.principal.clone(),
            owner: draft.owner.clone(),
            approvals: Vec::new(),
            approvals_required: match kind {
                Kind::Planned => *rules.approvals.get(draft.risk),
                Kind::BreakGlass => 0,
            },
            starts_at,
            expires_at: draft.expires_at,
            review: Review {
                every,
                next_due: starts_at.checked_add(every.duration()).unwrap_or(draft.expires_at),
                revalidate_on: draft.revalidate_on.clone(),
                last_attested: None,
            },
            remediation: draft.remediation.clone(),
            frameworks: draft.frameworks.clone(),
            renewals: 0,
            pending_renewal: None,
            request_expires_at: match kind {
                Kind::Planned => now.checked_add(rules.pending_timeout.duration()).ok(),
                Kind::BreakGlass => None,
            },
            post_use_review: match kind {
                Kind::Planned => None,
                Kind::BreakGlass => Some(PostUseReview {
                    within: rules.post_use_review_within,
                    reviewed_by: None,
                    reviewed_at: None,
                    comment: None,
                }),
            },
            suspended_by: None,
            resolution: None,
            pending_transfer: None,
            usage: Usage::default(),
            notices: Vec::new(),
            created_at: now,
            updated_at: now,
            version: 1,
        }
    }
}

/// Files a planned exception request.
pub fn request(filing: Filing<'_>) -> Result<Transition, LifecycleError> {
    require(filing.actor, "request an exception", crate::actor::may::FILE)?;
    let credential_type = filing.check(Kind::Planned)?;
    Ok(Transition {
        exception: filing.build(Kind::Planned, State::Requested, credential_type),
        change: Change::Requested,
    })
}

/// Activates a break-glass exception: active at once, reviewed after.
pub fn activate_break_glass(filing: Filing<'_>) -> Result<Transition, LifecycleError> {
    require(filing.actor, "activate break-glass", crate::actor::may::BREAK_GLASS)?;
    let credential_type = filing.check(Kind::BreakGlass)?;
    Ok(Transition {
        exception: filing.build(Kind::BreakGlass, State::Active, credential_type),
        change: Change::BreakGlassActivated,
    })
}

impl Exception {
    /// The next version of this exception, changed at `now`.
    pub(crate) fn next_version(&self, now: Timestamp) -> Exception {
        self.next(now)
    }

    fn next(&self, now: Timestamp) -> Exception {
        let mut next = self.clone();
        next.updated_at = now;
        next.version += 1;
        next
    }

    fn invalid_state(&self, action: &'static str, now: Timestamp, hint: Option<&str>) -> LifecycleError {
        LifecycleError::InvalidState {
            id: self.id,
            action,
            state: self.effective_state(now),
            hint: hint.map(str::to_owned),
        }
    }

    fn is_owner_or_admin(&self, actor: &Actor) -> bool {
        actor.acts_as(&self.owner) || actor.roles.contains(Role::Admin)
    }

    /// Approves the request, or the pending renewal. Approvers are never the requester or
    /// the owner; the quorum counts distinct approvers.
    pub fn approve(
        &self,
        actor: &Actor,
        comment: Option<String>,
        now: Timestamp,
    ) -> Result<Transition, LifecycleError> {
        check_comment(&comment, false)?;
        let renewal = self.check_approver(actor, now)?;
        let mut next = self.next(now);
        let round = if renewal { self.renewals + 1 } else { 0 };
        let approval = Approval { by: actor.principal.clone(), at: now, comment: comment.clone(), round };
        let required = usize::try_from(self.approvals_required).unwrap_or(usize::MAX);
        let quorum_reached = match next.pending_renewal.take() {
            Some(mut pending) => {
                pending.approvals.push(approval);
                if pending.approvals.len() >= required {
                    next.expires_at = pending.expires_at;
                    next.renewals += 1;
                    next.approvals.extend(pending.approvals);
                    true
                } else {
                    next.pending_renewal = Some(pending);
                    false
                }
            }
            None => {
                next.approvals.push(approval);
                let reached = next.approvals.len() >= required;
                if reached {
                    next.state = State::Approved;
                    next.request_expires_at = None;
                }
                reached
            }
        };
        Ok(Transition {
            exception: next,
            change: Change::Approved { by: actor.principal.clone(), comment, renewal, quorum_reached },
        })
    }

    /// An approver narrows a request before approving it (recorded as its own event, then
    /// the approval): what is taken out is checked against what was asked, so the result is
    /// never wider. Only requests are narrowed; a renewal is rejected and asked again.
    pub fn narrow(&self, actor: &Actor, narrowing: &Narrowing, now: Timestamp) -> Result<Transition, LifecycleError> {
        if self.check_approver(actor, now)? {
            return Err(self.invalid_state(
                "narrow",
                now,
                Some("a pending renewal is approved or rejected as asked; reject it and ask for a shorter one"),
            ));
        }
        let mut errors = Vec::new();
        let mut next = self.next(now);
        if let Some(expires_at) = narrowing.expires_at {
            if expires_at >= self.expires_at {
                errors.push(FieldError::new(
                    "narrow.expires_at",
                    format!("narrowing only shortens: `{expires_at}` is not before `{}`", self.expires_at),
                ));
            } else if expires_at <= now.max(self.starts_at) {
                errors.push(FieldError::new(
                    "narrow.expires_at",
                    format!("`{expires_at}` is not after the start `{}`", now.max(self.starts_at)),
                ));
            } else {
                next.expires_at = expires_at;
                next.review.next_due = next.review.next_due.min(expires_at);
            }
        }
        for (idx, action) in narrowing.drop_actions.iter().enumerate() {
            if !self.scope.actions.contains(action) {
                errors.push(FieldError::new(
                    format!("narrow.drop_actions[{idx}]"),
                    format!("`{action}` is not in the request's scope"),
                ));
            }
        }
        next.scope.actions.retain(|a| !narrowing.drop_actions.contains(a));
        if next.scope.actions.is_empty() {
            errors.push(FieldError::new("narrow.drop_actions", "would leave no action; reject the request instead"));
        }
        for (idx, resource) in narrowing.drop_resources.iter().enumerate() {
            if !self.scope.resources.iter().any(|r| &r.entity == resource) {
                errors.push(FieldError::new(
                    format!("narrow.drop_resources[{idx}]"),
                    format!("`{resource}` is not in the request's scope"),
                ));
            }
        }
        next.scope.resources.retain(|r| !narrowing.drop_resources.contains(&r.entity));
        if next.scope.resources.is_empty() {
            errors
                .push(FieldError::new("narrow.drop_resources", "would leave no resource; reject the request instead"));
        }
        if let Some(extra) = &narrowing.add_condition {
            if let Err(e) = text::check_text("narrow.add_condition", extra, text::MAX_CONDITION_BYTES) {
                errors.push(e);
            }
            // Both must hold: the approver's condition can only take away.
            let joined = match &self.condition {
                Some(asked) => format!("({asked}) && ({extra})"),
                None => extra.clone(),
            };
            // The record must read back: the joined condition keeps within a condition's bound.
            if let Err(mut e) = text::check_text("narrow.add_condition", &joined, text::MAX_CONDITION_BYTES) {
                e.message = format!("with the request's own condition, {}", e.message);
                errors.push(e);
            }
            next.condition = Some(joined);
        }
        next.compensating_controls.extend(narrowing.add_controls.iter().cloned());
        if narrowing.is_empty() {
            errors.push(FieldError::new("narrow", "names nothing to take out"));
        }
        ValidationError::into_result(errors)?;
        Ok(Transition {
            exception: next,
            change: Change::Narrowed { by: actor.principal.clone(), narrowing: narrowing.clone() },
        })
    }

    /// Whether `actor` may approve now: an approver, neither requester nor owner (nor the
    /// issuer of their token), who has not approved this round. `true` for a renewal round.
    fn check_approver(&self, actor: &Actor, now: Timestamp) -> Result<bool, LifecycleError> {
        require(actor, "approve", &[Role::Approver])?;
        let state = self.effective_state(now);
        let renewal = match (state, &self.pending_renewal) {
            (State::Requested, _) => false,
            (State::Active | State::Approved, Some(_)) => true,
            _ => {
                return Err(self.invalid_state(
                    "approve",
                    now,
                    Some("only requests and pending renewals are approved"),
                ));
            }
        };
        // Separation of duties: whoever asked for it, or answers for it, never approves it.
        let renewal_asker = self.pending_renewal.as_ref().filter(|_| renewal).map(|p| &p.requested_by);
        let conflict = if actor.involves(&self.requester) {
            Some("requested")
        } else if actor.involves(&self.owner) {
            Some("owns")
        } else if renewal_asker.is_some_and(|asker| actor.involves(asker)) {
            Some("asked for this renewal of")
        } else {
            None
        };
        if let Some(relation) = conflict {
            return Err(LifecycleError::SeparationOfDuties(format!(
                "`{}` {relation} `{}` and may not approve it",
                actor.principal, self.id
            )));
        }
        if self.approved_by(&actor.principal) || actor.issuer.as_ref().is_some_and(|i| self.approved_by(i)) {
            return Err(LifecycleError::SeparationOfDuties(format!(
                "`{}` has already approved `{}`; the quorum counts distinct approvers",
                actor.principal, self.id
            )));
        }
        Ok(renewal)
    }

    /// The owner (or an admin) proposes `to` as the new owner; nothing changes until they
    /// accept. `to` must be a person other than the requester and the approvers (checked
    /// against the directory by the service). A new proposal replaces a waiting one.
    pub fn propose_transfer(
        &self,
        actor: &Actor,
        to: Principal,
        comment: Option<String>,
        now: Timestamp,
    ) -> Result<Transition, LifecycleError> {
        // Accountability changes hands: the record says why.
        check_comment(&comment, true)?;
        if !self.is_owner_or_admin(actor) {
            return Err(LifecycleError::Forbidden {
                principal: actor.principal.to_string(),
                action: "transfer an exception they do not own",
                needs: vec![Role::Admin],
            });
        }
        if !self.is_open(now) {
            return Err(self.invalid_state("transfer", now, Some("only open exceptions change owner")));
        }
        let refuse = |why: String| -> LifecycleError { ValidationError::one(FieldError::new("to", why)).into() };
        if to == self.owner {
            return Err(refuse(format!("`{to}` already owns `{}`", self.id)));
        }
        if to == self.requester {
            return Err(refuse(format!("`{to}` requested `{}` and may not also own it", self.id)));
        }
        if self.approvals.iter().any(|a| a.by == to) {
            return Err(refuse(format!("`{to}` approved `{}` and may not own it", self.id)));
        }
        if to.as_entity().is_some() {
            return Err(refuse(format!("`{to}` is a workload; an owner is a person")));
        }
        let mut next = self.next(now);
        next.pending_transfer = Some(PendingTransfer {
            to: to.clone(),
            proposed_by: actor.principal.clone(),
            proposed_at: now,
            comment: comment.clone(),
        });
        Ok(Transition {
            exception: next,
            change: Change::TransferProposed { by: actor.principal.clone(), to, comment },
        })
    }

    /// The proposed owner accepts: from now on they attest, renew and answer for it. A
    /// suspension stays until they attest.
    pub fn accept_transfer(
        &self,
        actor: &Actor,
        comment: Option<String>,
        now: Timestamp,
    ) -> Result<Transition, LifecycleError> {
        check_comment(&comment, false)?;
        let Some(pending) = &self.pending_transfer else {
            return Err(self.invalid_state("accept", now, Some("no ownership transfer is waiting")));
        };
        if !actor.acts_as(&pending.to) {
            return Err(LifecycleError::SeparationOfDuties(format!(
                "only `{}`, the proposed owner, accepts `{}`",
                pending.to, self.id
            )));
        }
        if !self.is_open(now) {
            return Err(self.invalid_state("accept", now, Some("only open exceptions change owner")));
        }
        let mut next = self.next(now);
        next.pending_transfer = None;
        let from = std::mem::replace(&mut next.owner, pending.to.clone());
        Ok(Transition { exception: next, change: Change::OwnerTransferred { from, to: pending.to.clone(), comment } })
    }

    /// Rejects the request, or the pending renewal (the exception then runs to its expiry).
    pub fn reject(&self, actor: &Actor, comment: Option<String>, now: Timestamp) -> Result<Transition, LifecycleError> {
        require(actor, "reject", &[Role::Approver])?;
        check_comment(&comment, true)?;
        let mut next = self.next(now);
        let renewal = match (self.effective_state(now), next.pending_renewal.take()) {
            (State::Requested, _) => {
                next.state = State::Rejected;
                next.resolution = Some(Resolution { by: actor.principal.clone(), at: now, comment: comment.clone() });
                false
            }
            (State::Active | State::Approved, Some(_)) => true,
            _ => {
                return Err(self.invalid_state("reject", now, Some("only requests and pending renewals are rejected")));
            }
        };
        Ok(Transition { exception: next, change: Change::Rejected { by: actor.principal.clone(), comment, renewal } })
    }

    /// The requester (or owner) takes back a request nobody has decided yet.
    pub fn withdraw(
        &self,
        actor: &Actor,
        comment: Option<String>,
        now: Timestamp,
    ) -> Result<Transition, LifecycleError> {
        check_comment(&comment, false)?;
        let filed = actor.is(&self.requester) && actor.roles.any(crate::actor::may::FILE);
        if !(filed || actor.acts_as(&self.owner) || actor.roles.contains(Role::Admin)) {
            return Err(LifecycleError::Forbidden {
                principal: actor.principal.to_string(),
                action: "withdraw a request they neither filed nor own",
                needs: vec![Role::Admin],
            });
        }
        if self.effective_state(now) != State::Requested {
            return Err(self.invalid_state("withdraw", now, Some("only undecided requests are withdrawn")));
        }
        let mut next = self.next(now);
        next.state = State::Withdrawn;
        next.resolution = Some(Resolution { by: actor.principal.clone(), at: now, comment: comment.clone() });
        Ok(Transition { exception: next, change: Change::Withdrawn { by: actor.principal.clone(), comment } })
    }

    /// Ends the exception now. The owner, an approver or an admin may revoke; a revoked
    /// break-glass still owes its post-use review.
    pub fn revoke(&self, actor: &Actor, comment: Option<String>, now: Timestamp) -> Result<Transition, LifecycleError> {
        check_comment(&comment, false)?;
        if !(self.is_owner_or_admin(actor) || actor.roles.contains(Role::Approver)) {
            return Err(LifecycleError::Forbidden {
                principal: actor.principal.to_string(),
                action: "revoke an exception they do not own",
                needs: vec![Role::Approver, Role::Admin],
            });
        }
        let state = self.effective_state(now);
        let mut next = self.next(now);
        match (self.kind, state) {
            (Kind::Planned, State::Requested | State::Approved | State::Active | State::Suspended) => {
                next.state = State::Revoked;
                next.pending_renewal = None;
            }
            (Kind::BreakGlass, State::Active | State::Suspended) => {
                next.state = State::AwaitingPostUseReview;
                next.expires_at = now;
            }
            _ => return Err(self.invalid_state("revoke", now, None)),
        }
        next.resolution = Some(Resolution { by: actor.principal.clone(), at: now, comment: comment.clone() });
        Ok(Transition { exception: next, change: Change::Revoked { by: actor.principal.clone(), comment } })
    }

    /// The owner asks to extend a live planned exception. A renewal is a new approval: the
    /// exception keeps its expiry until approvers reach the quorum again.
    pub fn renew(
        &self,
        actor: &Actor,
        expires_at: Timestamp,
        comment: Option<String>,
        rules: &Rules,
        now: Timestamp,
    ) -> Result<Transition, LifecycleError> {
        check_comment(&comment, false)?;
        if !self.is_owner_or_admin(actor) {
            return Err(LifecycleError::Forbidden {
                principal: actor.principal.to_string(),
                action: "renew an exception they do not own",
                needs: vec![Role::Admin],
            });
        }
        let state = self.effective_state(now);
        if self.kind != Kind::Planned || !matches!(state, State::Active | State::Approved) {
            return Err(self.invalid_state(
                "renew",
                now,
                Some("only live planned exceptions are renewed; file a new request"),
            ));
        }
        if self.pending_renewal.is_some() {
            return Err(self.invalid_state("renew", now, Some("a renewal is already waiting for approval")));
        }
        let mut errors = Vec::new();
        if self.renewals >= rules.renewal_limit {
            errors.push(FieldError::rule(
                "expires_at",
                "renewal_limit",
                format!(
                    "`{}` has been renewed {} times, the limit; change the baseline or file a new request",
                    self.id, self.renewals
                ),
            ));
        }
        if expires_at <= self.expires_at {
            errors
                .push(FieldError::new("expires_at", format!("must be after the current expiry `{}`", self.expires_at)));
        } else {
            let (cap, rule) = rules.max_duration(self.kind, self.risk, self.credential_type);
            if expires_at.duration_since(now) > cap.duration() {
                errors.push(FieldError::rule("expires_at", rule, format!("a renewal may run at most {cap} from now")));
            }
        }
        ValidationError::into_result(errors)?;
        let mut next = self.next(now);
        next.pending_renewal = Some(PendingRenewal {
            expires_at,
            requested_by: actor.principal.clone(),
            requested_at: now,
            comment: comment.clone(),
            approvals: Vec::new(),
        });
        Ok(Transition {
            exception: next,
            change: Change::RenewalRequested { by: actor.principal.clone(), expires_at, comment },
        })
    }

    /// The owner attests the exception is still needed: the next review moves one cadence
    /// on, and a suspension by a revalidation trigger is lifted.
    pub fn attest(&self, actor: &Actor, comment: Option<String>, now: Timestamp) -> Result<Transition, LifecycleError> {
        check_comment(&comment, false)?;
        if !actor.acts_as(&self.owner) {
            return Err(LifecycleError::SeparationOfDuties(format!(
                "only the owner `{}` attests `{}`",
                self.owner, self.id
            )));
        }
        let state = self.effective_state(now);
        if !matches!(state, State::Active | State::Approved | State::Suspended) {
            return Err(self.invalid_state("attest", now, None));
        }
        let mut next = self.next(now);
        let next_due = now.checked_add(self.review.every.duration()).unwrap_or(self.expires_at);
        next.review.next_due = next_due;
        next.review.last_attested = Some((actor.principal.clone(), now));
        let lifted = next.suspended_by.take();
        if self.state == State::Suspended {
            next.state = match self.kind {
                Kind::Planned => State::Approved,
                Kind::BreakGlass => State::Active,
            };
        }
        Ok(Transition {
            exception: next,
            change: Change::Attested { by: actor.principal.clone(), comment, next_due, lifted },
        })
    }

    /// Replaces its framework mapping (the controls auditors see it under). The owner or an
    /// admin may; in any state, since evidence about an ended exception still matters.
    pub fn set_frameworks(
        &self,
        actor: &Actor,
        keys: &[String],
        comment: Option<String>,
        now: Timestamp,
    ) -> Result<Transition, LifecycleError> {
        check_comment(&comment, false)?;
        if !actor.acts_as(&self.owner) {
            require(actor, "edit an exception's framework mapping", &[Role::Admin])?;
        }
        let mut errors = Vec::new();
        let mut wanted = Vec::new();
        for (idx, key) in keys.iter().enumerate() {
            match crate::frameworks::parse(key) {
                Ok(control) => wanted.push(control.key),
                Err(e) => errors.push(FieldError::new(format!("frameworks[{idx}]"), e)),
            }
        }
        ValidationError::into_result(errors)?;
        let wanted: Vec<String> = crate::frameworks::sorted(wanted).into_iter().map(str::to_owned).collect();
        if wanted == self.frameworks {
            return Err(ValidationError::one(FieldError::new("frameworks", "is the mapping it already has")).into());
        }
        let added = wanted.iter().filter(|k| !self.frameworks.contains(k)).cloned().collect();
        let removed = self.frameworks.iter().filter(|k| !wanted.contains(k)).cloned().collect();
        let mut next = self.next(now);
        next.frameworks = wanted;
        Ok(Transition {
            exception: next,
            change: Change::FrameworksChanged { by: actor.principal.clone(), added, removed, comment },
        })
    }

    /// Ends a break-glass early; its post-use review becomes due.
    pub fn end_break_glass(
        &self,
        actor: &Actor,
        comment: Option<String>,
        now: Timestamp,
    ) -> Result<Transition, LifecycleError> {
        check_comment(&comment, false)?;
        if !(actor.acts_as(&self.requester) || self.is_owner_or_admin(actor) || actor.roles.contains(Role::Responder)) {
            return Err(LifecycleError::Forbidden {
                principal: actor.principal.to_string(),
                action: "end a break-glass",
                needs: vec![Role::Responder, Role::Admin],
            });
        }
        if self.kind != Kind::BreakGlass || self.effective_state(now) != State::Active {
            return Err(self.invalid_state("end", now, Some("only an active break-glass is ended")));
        }
        let mut next = self.next(now);
        next.state = State::AwaitingPostUseReview;
        next.expires_at = now;
        Ok(Transition { exception: next, change: Change::BreakGlassEnded { by: actor.principal.clone(), comment } })
    }

    /// Files the post-use review of an ended break-glass: never by whoever activated it.
    pub fn review_post_use(
        &self,
        actor: &Actor,
        comment: Option<String>,
        now: Timestamp,
    ) -> Result<Transition, LifecycleError> {
        require(actor, "file a post-use review", &[Role::Approver, Role::Admin])?;
        check_comment(&comment, true)?;
        if self.kind != Kind::BreakGlass || self.effective_state(now) != State::AwaitingPostUseReview {
            return Err(self.invalid_state("review", now, Some("only an ended break-glass gets a post-use review")));
        }
        if actor.involves(&self.requester) {
            return Err(LifecycleError::SeparationOfDuties(format!(
                "`{}` activated `{}` and may not review its use",
                actor.principal, self.id
            )));
        }
        let mut next = self.next(now);
        next.state = State::Closed;
        if let Some(review) = next.post_use_review.as_mut() {
            review.reviewed_by = Some(actor.principal.clone());
            review.reviewed_at = Some(now);
            review.comment = comment.clone();
        }
        Ok(Transition { exception: next, change: Change::PostUseReviewed { by: actor.principal.clone(), comment } })
    }

    /// Whether `trigger` applies to this exception: the rules name it for every exception, or
    /// the exception adds it.
    pub fn revalidates_on(&self, trigger: RevalidationTrigger, rules: &Rules) -> bool {
        rules.revalidation_triggers.contains(&trigger) || self.review.revalidate_on.contains(&trigger)
    }

    /// Holds a live exception after a change to its subject; it grants nothing until the
    /// owner attests. `None` if the trigger does not apply or the exception is not live.
    pub fn suspend(&self, trigger: RevalidationTrigger, rules: &Rules, now: Timestamp) -> Option<Transition> {
        if !self.revalidates_on(trigger, rules) {
            return None;
        }
        self.hold(trigger, now)
    }

    /// Holds a live exception whatever its triggers say (its owner left: nobody answers for
    /// it until a new owner accepts it and attests). `None` if it is not live.
    pub fn hold(&self, trigger: RevalidationTrigger, now: Timestamp) -> Option<Transition> {
        let live = matches!(self.effective_state(now), State::Active | State::Approved);
        if !live {
            return None;
        }
        let mut next = self.next(now);
        next.state = State::Suspended;
        next.suspended_by = Some(trigger);
        Some(Transition { exception: next, change: Change::Suspended { trigger } })
    }

    /// Records what time already decided: expiry, a request's timeout, a break-glass's end.
    /// `None` when the record already matches the effective state.
    pub fn record_expiry(&self, now: Timestamp) -> Option<Transition> {
        let effective = self.effective_state(now);
        if effective == self.state || !matches!(effective, State::Expired | State::AwaitingPostUseReview) {
            return None;
        }
        let mut next = self.next(now);
        next.state = effective;
        next.pending_renewal = None;
        let change = match effective {
            State::AwaitingPostUseReview => Change::BreakGlassEnded { by: Principal::system(), comment: None },
            _ => Change::Expired,
        };
        Some(Transition { exception: next, change })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use jiff::SignedDuration;
    use proptest::prelude::*;

    use super::*;
    use crate::{
        CompensatingControl, ControlKind, IdentityKind, Remediation, ResourceScope, Risk, Scope, Waived,
        identity::IdentityStatus,
    };

    fn t0() -> Timestamp {
        "2026-11-23T10:00:00Z".parse().unwrap()
    }

    fn hours(h: i64) -> SignedDuration {
        SignedDuration::from_hours(h)
    }

    fn who(name: &str, roles: &[Role]) -> Actor {
        Actor::new(Principal::parse("actor", name).unwrap(), roles)
    }

    fn identity() -> Identity {
        Identity {
            entity: "ServiceAccount:ci".parse().unwrap(),
            kind: IdentityKind::ServiceAccount,
            owner: Principal::parse("o", "sam").unwrap(),
            team: None,
            status: IdentityStatus::Active,
            credential_type: CredentialType::WorkloadToken,
            attributes: Default::default(),
            created_at: t0(),
            updated_at: t0(),
            version: 1,
        }
    }

    fn draft(risk: Risk, lasts: SignedDuration) -> ExceptionDraft {
        ExceptionDraft {
            subject: "ServiceAccount:ci".parse().unwrap(),
            waives: vec![Waived::DefaultDeny],
            scope: Scope {
                actions: vec!["deploy".into()],
                resources: vec![ResourceScope { entity: "Environment:prod".parse().unwrap(), descendants: true }],
            },
            condition: None,
            compensating_controls: vec![
                CompensatingControl { kind: ControlKind::ExtraLogging, description: "logged".into(), enforced: true },
                CompensatingControl { kind: ControlKind::Monitoring, description: "watched".into(), enforced: true },
            ],
            justification: "why".into(),
            normal_path_unavailable: "because".into(),
            affected_systems: vec![],
            references: vec![],
            risk,
            credential_type: None,
            owner: Principal::parse("o", "sam").unwrap(),
            starts_at: None,
            expires_at: t0() + lasts,
            review_every: None,
            revalidate_on: vec![RevalidationTrigger::OwnerChange],
            remediation: Some(Remediation { plan: "fix".into(), retire_by: None, ticket: None }),
            frameworks: vec![],
        }
    }

    fn file(risk: Risk, lasts: SignedDuration) -> Exception {
        let rules = Rules::default();
        let (draft, identity, dana) = (draft(risk, lasts), identity(), who("dana", &[Role::Requester]));
        let filing = Filing { draft: &draft, actor: &dana, rules: &rules, identity: Some(&identity), now: t0() };
        request(filing).unwrap().exception
    }

    #[test]
    fn planned_walk_request_approve_attest_renew_revoke() {
        let (lee, morgan, sam) =
            (who("lee", &[Role::Approver]), who("morgan", &[Role::Approver]), who("sam", &[Role::Requester]));
        let e = file(Risk::Critical, hours(24 * 5));
        assert_eq!((e.state, e.approvals_required), (State::Requested, 2));
        let e = e.approve(&lee, None, t0()).unwrap().exception;
        assert_eq!(e.effective_state(t0()), State::Requested, "one of two approvals");
        let refused = e.approve(&lee, None, t0()).unwrap_err();
        assert!(matches!(refused, LifecycleError::SeparationOfDuties(_)), "the quorum counts distinct approvers");
        let e = e.approve(&morgan, Some("ok".into()), t0()).unwrap().exception;
        assert_eq!(e.effective_state(t0()), State::Active);
        let e = e.attest(&sam, None, t0() + hours(1)).unwrap().exception;
        assert_eq!(e.review.next_due, t0() + hours(1) + hours(24 * 7));
        let rules = Rules::default();
        let e = e.renew(&sam, t0() + hours(24 * 8), None, &rules, t0() + hours(24 * 4)).unwrap().exception;
        assert_eq!(e.expires_at, t0() + hours(24 * 5), "a renewal waits for its approvals");
        let e = e.approve(&lee, None, t0() + hours(24 * 4)).unwrap().exception;
        let e = e.approve(&morgan, None, t0() + hours(24 * 4)).unwrap().exception;
        assert_eq!((e.expires_at, e.renewals, e.pending_renewal.is_none()), (t0() + hours(24 * 8), 1, true));
        let e = e.revoke(&sam, Some("done".into()), t0() + hours(24 * 6)).unwrap().exception;
        assert_eq!(e.effective_state(t0() + hours(24 * 6)), State::Revoked);
        assert_eq!(e.version, 8);
    }

    #[test]
    fn filing_records_the_default_framework_mapping_plus_the_requesters_own() {
        let e = file(Risk::Low, hours(24));
        for key in ["nist-csf-2.0:ID.RA-07", "nist-800-53r5:CA-5", "csa-ccm-4:IAM-04", "owasp-nhi-2025:NHI5"] {
            assert!(e.frameworks.iter().any(|k| k == key), "{key} in {:?}", e.frameworks);
        }
        assert!(!e.frameworks.iter().any(|k| k == "owasp-nhi-2025:NHI7"), "a workload token is not long-lived");
        assert!(!e.frameworks.iter().any(|k| k == "owasp-nhi-2025:NHI10"), "not a break-glass");

        let rules = Rules::default();
        let mut d = draft(Risk::Medium, hours(4));
        d.credential_type = Some(CredentialType::LongLivedSecret);
        d.frameworks = vec!["nist-800-53r5:CM-6".into(), "nist-csf-2.0:ID.RA-07".into()];
        let mut agent = identity();
        agent.kind = IdentityKind::Agent;
        agent.credential_type = CredentialType::LongLivedSecret;
        agent.attributes.insert("vendor".into(), serde_json::json!("acme"));
        let riley = who("riley", &[Role::Responder]);
        let filing = Filing { draft: &d, actor: &riley, rules: &rules, identity: Some(&agent), now: t0() };
        let e = activate_break_glass(filing).unwrap().exception;
        for key in [
            "owasp-nhi-2025:NHI7",
            "owasp-nhi-2025:NHI10",
            "owasp-nhi-2025:NHI3",
            "nist-800-53r5:AC-2(2)",
            "nist-800-53r5:IA-5",
            "nist-ai-rmf-1.0:GOVERN-3.2",
            "nist-ai-rmf-1.0:GOVERN-6.1",
            "csa-ccm-4:IAM-18",
            "nist-800-53r5:CM-6",
        ] {
            assert!(e.frameworks.iter().any(|k| k == key), "{key} in {:?}", e.frameworks);
        }
        let mut once = e.frameworks.clone();
        once.dedup();
        assert_eq!(once, e.frameworks, "each control once, in catalog order");
    }

    #[test]
    fn the_owner_or_an_admin_edits_the_framework_mapping_and_nothing_else_changes() {
        let e = file(Risk::Low, hours(24));
        let (sam, alex, dana) =
            (who("sam", &[Role::Requester]), who("alex", &[Role::Admin]), who("dana", &[Role::Requester]));
        let keys = vec!["owasp-nhi-2025:nhi7".to_owned(), "nist-csf-2.0:ID.RA-07".to_owned()];
        let t = e.set_frameworks(&sam, &keys, Some("static key".into()), t0()).unwrap();
        assert_eq!(
            t.exception.frameworks,
            ["owasp-nhi-2025:NHI7", "nist-csf-2.0:ID.RA-07"],
            "normalised, catalog order"
        );
        assert_eq!((t.exception.state, t.exception.expires_at), (e.state, e.expires_at));
        let Change::FrameworksChanged { added, removed, .. } = &t.change else { panic!("{:?}", t.change) };
        assert_eq!(added, &["owasp-nhi-2025:NHI7"]);
        assert!(removed.iter().any(|k| k == "nist-800-53r5:CA-5"));
        assert!(e.set_frameworks(&alex, &keys, None, t0()).is_ok(), "an admin may");
        assert!(matches!(e.set_frameworks(&dana, &keys, None, t0()), Err(LifecycleError::Forbidden { .. })));
        let unknown = e.set_frameworks(&sam, &["iso-27001:A.5".to_owned()], None, t0()).unwrap_err();
        assert!(unknown.to_string().contains("frameworks[0]"), "{unknown}");
        let same = e.set_frameworks(&sam, &e.frameworks, None, t0()).unwrap_err();
        assert!(same.to_string().contains("already has"), "{same}");
    }

    #[test]
    fn requester_and_owner_never_approve() {
        let e = file(Risk::High, hours(48));
        let dana = who("dana", &[Role::Approver]);
        let sam = who("sam", &[Role::Approver]);
        let err = e.approve(&dana, None, t0()).unwrap_err();
        assert_eq!(err.to_string(), "separation of duties: `dana` requested `EXC-000000` and may not approve it");
        let err = e.approve(&sam, None, t0()).unwrap_err();
        assert_eq!(err.to_string(), "separation of duties: `sam` owns `EXC-000000` and may not approve it");
        let err = e.approve(&who("eve", &[Role::Requester]), None, t0()).unwrap_err();
        assert_eq!(err.to_string(), "`eve` may not approve: it needs one of the roles `approver`");
    }

    #[test]
    fn a_token_issued_by_the_requester_or_owner_does_not_approve_for_them() {
        let e = file(Risk::High, hours(48));
        // An admin issues `bob` an approver token, then uses it on a request of their own.
        let for_dana = who("bob", &[Role::Approver]).issued_by(Principal::parse("p", "dana").unwrap());
        let err = e.approve(&for_dana, None, t0()).unwrap_err();
        assert_eq!(err.to_string(), "separation of duties: `bob` requested `EXC-000000` and may not approve it");
        let for_sam = who("bob", &[Role::Approver]).issued_by(Principal::parse("p", "sam").unwrap());
        assert!(matches!(e.approve(&for_sam, None, t0()), Err(LifecycleError::SeparationOfDuties(_))));
        // Nor does it count twice towards a quorum.
        let e = file(Risk::Critical, hours(48));
        let e = e.approve(&who("lee", &[Role::Approver]), None, t0()).unwrap().exception;
        let lees_other = who("bob", &[Role::Approver]).issued_by(Principal::parse("p", "lee").unwrap());
        assert!(matches!(e.approve(&lees_other, None, t0()), Err(LifecycleError::SeparationOfDuties(_))));
        // Case does not make another person.
        let e = file(Risk::High, hours(48));
        let err = e.approve(&who("Dana", &[Role::Approver]), None, t0()).unwrap_err();
        assert!(matches!(err, LifecycleError::SeparationOfDuties(_)), "{err}");
        // waiver's own bootstrap issuing a token is nobody.
        let bootstrapped = who("lee", &[Role::Approver]).issued_by(Principal::system());
        assert!(e.approve(&bootstrapped, None, t0()).is_ok());
    }

    #[test]
    fn the_owner_is_a_person_other_than_the_requester() {
        let rules = Rules::default();
        let held = identity();
        let mut d = draft(Risk::Low, hours(4));
        d.owner = Principal::parse("o", "dana").unwrap();
        let dana = who("dana", &[Role::Requester]);
        let err = request(Filing { draft: &d, actor: &dana, rules: &rules, identity: Some(&held), now: t0() })
            .unwrap_err()
            .to_string();
        assert!(err.contains("owner") && err.contains("may not also own it"), "{err}");
        d.owner = Principal::parse("o", "ServiceAccount:ci").unwrap();
        let agent = who("ServiceAccount:ci", &[Role::Agent]);
        let err = request(Filing { draft: &d, actor: &agent, rules: &rules, identity: Some(&held), now: t0() })
            .unwrap_err()
            .to_string();
        assert!(err.contains("owner"), "an agent never owns, itself least of all: {err}");
        d.owner = Principal::parse("o", "ServiceAccount:other").unwrap();
        let err = request(Filing { draft: &d, actor: &dana, rules: &rules, identity: Some(&held), now: t0() })
            .unwrap_err()
            .to_string();
        assert!(err.contains("is a workload"), "{err}");
    }

    #[test]
    fn an_approver_narrows_a_request_and_never_widens_it() {
        let mut d = draft(Risk::Low, hours(48));
        d.scope.actions = vec!["deploy".into(), "write".into()];
        d.scope.resources.push(ResourceScope { entity: "Environment:staging".parse().unwrap(), descendants: false });
        let rules = Rules::default();
        let (held, dana) = (identity(), who("dana", &[Role::Requester]));
        let e = request(Filing { draft: &d, actor: &dana, rules: &rules, identity: Some(&held), now: t0() })
            .unwrap()
            .exception;
        let lee = who("lee", &[Role::Approver]);
        let narrowing = Narrowing {
            expires_at: Some(t0() + hours(8)),
            drop_actions: vec!["write".into()],
            drop_resources: vec!["Environment:staging".parse().unwrap()],
            add_condition: Some("context.ticket == \"CHG-1\"".into()),
            add_controls: vec![CompensatingControl {
                kind: ControlKind::RateLimit,
                description: "10 a minute".into(),
                enforced: true,
            }],
        };
        let t = e.narrow(&lee, &narrowing, t0()).unwrap();
        assert_eq!(t.change.event_type(), "exception.narrowed");
        let n = &t.exception;
        assert_eq!(n.expires_at, t0() + hours(8));
        assert_eq!(n.scope.actions, ["deploy"]);
        assert_eq!(n.scope.resources.len(), 1);
        assert_eq!(n.condition.as_deref(), Some("context.ticket == \"CHG-1\""));
        assert_eq!(n.compensating_controls.len(), 3);
        assert_eq!(n.state, State::Requested, "narrowing is not approval");
        // A second condition joins the first: both must hold.
        let again = Narrowing { add_condition: Some("true".into()), ..Narrowing::default() };
        let joined = n.narrow(&lee, &again, t0()).unwrap().exception;
        assert_eq!(joined.condition.as_deref(), Some("(context.ticket == \"CHG-1\") && (true)"));

        // Never wider, never empty, never by whoever may not approve.
        let later = Narrowing { expires_at: Some(t0() + hours(49)), ..Narrowing::default() };
        assert!(e.narrow(&lee, &later, t0()).unwrap_err().to_string().contains("narrow.expires_at"));
        let unknown = Narrowing { drop_actions: vec!["delete".into()], ..Narrowing::default() };
        assert!(e.narrow(&lee, &unknown, t0()).unwrap_err().to_string().contains("not in the request's scope"));
        let long = "x".repeat(text::MAX_CONDITION_BYTES - 8);
        let with_long = n.narrow(&lee, &Narrowing { add_condition: Some(long), ..Narrowing::default() }, t0());
        assert!(
            with_long.unwrap_err().to_string().contains("with the request's own condition"),
            "the joined text is bounded"
        );
        let all = Narrowing { drop_actions: vec!["deploy".into(), "write".into()], ..Narrowing::default() };
        assert!(e.narrow(&lee, &all, t0()).unwrap_err().to_string().contains("no action"));
        assert!(e.narrow(&lee, &Narrowing::default(), t0()).is_err(), "a narrowing that names nothing");
        let err = e.narrow(&who("dana", &[Role::Approver]), &narrowing, t0()).unwrap_err();
        assert!(matches!(err, LifecycleError::SeparationOfDuties(_)), "the requester narrows nothing: {err}");
        assert!(matches!(
            e.narrow(&who("eve", &[Role::Requester]), &narrowing, t0()),
            Err(LifecycleError::Forbidden { .. })
        ));
    }

    #[test]
    fn ownership_moves_only_when_the_new_owner_accepts() {
        let e = file(Risk::Low, hours(48)).approve(&who("lee", &[Role::Approver]), None, t0()).unwrap().exception;
        let (sam, kim, dana) =
            (who("sam", &[Role::Requester]), who("kim", &[Role::Requester]), who("dana", &[Role::Requester]));
        let kim_p = Principal::parse("to", "kim").unwrap();
        // Only the owner or an admin proposes; not to the requester, an approver or a workload.
        let why = || Some("moving teams".to_owned());
        assert!(matches!(e.propose_transfer(&dana, kim_p.clone(), why(), t0()), Err(LifecycleError::Forbidden { .. })));
        let silent = e.propose_transfer(&sam, kim_p.clone(), None, t0()).unwrap_err();
        assert!(silent.to_string().contains("comment"), "a transfer says why: {silent}");
        for (to, why) in
            [("dana", "requested"), ("lee", "approved"), ("ServiceAccount:ci", "workload"), ("sam", "already owns")]
        {
            let err =
                e.propose_transfer(&sam, Principal::parse("to", to).unwrap(), Some("x".into()), t0()).unwrap_err();
            assert!(err.to_string().contains(why), "{to}: {err}");
        }
        let proposed = e.propose_transfer(&sam, kim_p.clone(), Some("moving teams".into()), t0()).unwrap();
        assert_eq!(proposed.change.event_type(), "exception.transfer_proposed");
        let p = proposed.exception;
        assert_eq!(p.owner.as_str(), "sam", "nothing changes before acceptance");
        assert!(matches!(p.accept_transfer(&dana, None, t0()), Err(LifecycleError::SeparationOfDuties(_))));
        let kim_auditor = who("kim", &[Role::Auditor]);
        assert!(p.accept_transfer(&kim_auditor, None, t0()).is_err(), "accepting is a person's act");
        let accepted = p.accept_transfer(&kim, None, t0()).unwrap();
        assert_eq!(accepted.change.event_type(), "exception.owner_transferred");
        let a = accepted.exception;
        assert_eq!((a.owner.as_str(), a.pending_transfer.is_none()), ("kim", true));
        assert!(a.attest(&kim, None, t0()).is_ok(), "the new owner attests");
        assert!(a.attest(&sam, None, t0()).is_err(), "the old one no longer does");
        assert!(a.accept_transfer(&kim, None, t0()).is_err(), "nothing waits any more");
    }

    #[test]
    fn a_credential_type_sets_a_risk_floor() {
        let rules = Rules::default();
        let dana = who("dana", &[Role::Requester]);
        let mut held = identity();
        held.credential_type = CredentialType::LongLivedSecret;
        let d = draft(Risk::Low, hours(4));
        let err = request(Filing { draft: &d, actor: &dana, rules: &rules, identity: Some(&held), now: t0() })
            .unwrap_err()
            .to_string();
        assert!(err.contains("min_risk.credential_type.long_lived_secret"), "{err}");
        let d = draft(Risk::Medium, hours(4));
        assert!(request(Filing { draft: &d, actor: &dana, rules: &rules, identity: Some(&held), now: t0() }).is_ok());
    }

    #[test]
    fn the_inventory_decides_the_credential_type() {
        let rules = Rules::default();
        let dana = who("dana", &[Role::Requester]);
        let mut d = draft(Risk::Low, hours(4));
        d.credential_type = Some(CredentialType::JitCredential);
        let held = identity(); // a workload token
        let filing = Filing { draft: &d, actor: &dana, rules: &rules, identity: Some(&held), now: t0() };
        let err = request(filing).unwrap_err().to_string();
        assert!(err.contains("credential_type") && err.contains("workload_token"), "{err}");
        d.credential_type = None;
        let filing = Filing { draft: &d, actor: &dana, rules: &rules, identity: Some(&held), now: t0() };
        assert_eq!(request(filing).unwrap().exception.credential_type, CredentialType::WorkloadToken);
    }

    #[test]
    fn owner_powers_need_a_person_role() {
        let e = file(Risk::High, hours(48)).approve(&who("lee", &[Role::Approver]), None, t0()).unwrap().exception;
        for roles in [&[Role::Auditor][..], &[Role::Pep], &[Role::Agent], &[Role::Auditor, Role::Pep]] {
            let sam = who("sam", roles);
            assert!(e.revoke(&sam, None, t0()).is_err(), "{roles:?} revokes");
            assert!(e.attest(&sam, None, t0()).is_err(), "{roles:?} attests");
            assert!(e.renew(&sam, t0() + hours(60), None, &Rules::default(), t0()).is_err(), "{roles:?} renews");
            assert!(e.set_frameworks(&sam, &[], None, t0()).is_err(), "{roles:?} maps");
        }
        let requested = file(Risk::High, hours(48));
        assert!(requested.withdraw(&who("sam", &[Role::Auditor]), None, t0()).is_err());
        assert!(requested.withdraw(&who("dana", &[Role::Pep]), None, t0()).is_err(), "a requester's pep token");
        assert!(requested.withdraw(&who("sam", &[Role::Requester]), None, t0()).is_ok());
        assert!(e.attest(&who("sam", &[Role::Requester]), None, t0()).is_ok());
    }

    #[test]
    fn expiry_is_exact_and_needs_no_record() {
        let e = file(Risk::Low, hours(10));
        let e = e.approve(&who("lee", &[Role::Approver]), None, t0()).unwrap().exception;
        let end = e.expires_at;
        assert!(e.grants(end - SignedDuration::from_nanos(1)));
        assert!(!e.grants(end));
        assert_eq!(e.effective_state(end), State::Expired);
        assert_eq!(e.state, State::Approved, "nothing recorded yet");
        let recorded = e.record_expiry(end).unwrap();
        assert_eq!((recorded.exception.state, recorded.change), (State::Expired, Change::Expired));
        assert!(recorded.exception.record_expiry(end).is_none(), "recording twice does nothing");
    }

    #[test]
    fn break_glass_activate_end_review() {
        let rules = Rules::default();
        let (riley, lee) = (who("riley", &[Role::Responder]), who("lee", &[Role::Approver]));
        let (draft, identity) = (draft(Risk::High, hours(4)), identity());
        let filing = Filing { draft: &draft, actor: &riley, rules: &rules, identity: Some(&identity), now: t0() };
        let e = activate_break_glass(filing).unwrap().exception;
        assert_eq!(e.effective_state(t0()), State::Active, "active at once, no approval");
        let e = e.end_break_glass(&riley, None, t0() + hours(1)).unwrap().exception;
        let now = t0() + hours(2);
        assert_eq!(e.effective_state(now), State::AwaitingPostUseReview);
        assert_eq!(e.post_use_review_due(), Some(t0() + hours(1) + hours(72)));
        let riley_reviewer = who("riley", &[Role::Approver]);
        let err = e.review_post_use(&riley_reviewer, Some("fine".into()), now).unwrap_err();
        assert!(matches!(err, LifecycleError::SeparationOfDuties(_)), "{err}");
        let err = e.review_post_use(&lee, None, now).unwrap_err();
        assert!(err.to_string().contains("comment"), "{err}");
        let e = e.review_post_use(&lee, Some("matched the incident".into()), now).unwrap().exception;
        assert_eq!(e.effective_state(now), State::Closed);
        // A break-glass that simply runs out owes its review too.
        let e = activate_break_glass(filing).unwrap().exception;
        assert_eq!(e.effective_state(t0() + hours(4)), State::AwaitingPostUseReview);
        assert!(e.post_use_review_overdue(t0() + hours(4 + 72)));
    }

    #[test]
    fn break_glass_is_capped_and_needs_a_responder() {
        let rules = Rules::default();
        let identity = identity();
        let draft = draft(Risk::Low, hours(9));
        let riley = who("riley", &[Role::Responder]);
        let filing = Filing { draft: &draft, actor: &riley, rules: &rules, identity: Some(&identity), now: t0() };
        let err = activate_break_glass(filing).unwrap_err();
        assert!(err.to_string().contains("rule `max_duration.break_glass`"), "{err}");
        let dana = who("dana", &[Role::Requester]);
        let filing = Filing { actor: &dana, ..filing };
        assert!(matches!(activate_break_glass(filing), Err(LifecycleError::Forbidden { .. })));
    }

    #[test]
    fn rules_refuse_and_name_each_breach() {
        let rules = Rules::default();
        let identity = identity();
        let dana = who("dana", &[Role::Requester]);
        let mut bad = draft(Risk::Critical, hours(24 * 8));
        bad.compensating_controls.clear();
        bad.scope.actions = vec!["*".into()];
        bad.remediation = None;
        let filing = Filing { draft: &bad, actor: &dana, rules: &rules, identity: Some(&identity), now: t0() };
        let LifecycleError::Invalid(err) = request(filing).unwrap_err() else { panic!("not a rule error") };
        let rules_named: Vec<_> = err.errors.iter().filter_map(|e| e.rule.as_deref()).collect();
        assert_eq!(
            rules_named,
            [
                "max_duration.risk.critical",
                "wildcard_actions",
                "controls.min.critical",
                "controls.required.critical",
                "controls.required.critical",
                "remediation_plan_required"
            ]
        );
        let mut past = draft(Risk::Low, hours(1));
        past.expires_at = t0() - hours(1);
        let filing = Filing { draft: &past, ..filing };
        let LifecycleError::Invalid(err) = request(filing).unwrap_err() else { panic!("not invalid") };
        assert_eq!(err.errors[0].field, "expires_at");
        assert!(err.errors[0].message.contains("not in the future"));
    }

    #[test]
    fn offboarded_or_unknown_subjects_get_nothing() {
        let rules = Rules::default();
        let dana = who("dana", &[Role::Requester]);
        let draft = draft(Risk::Low, hours(5));
        let filing = Filing { draft: &draft, actor: &dana, rules: &rules, identity: None, now: t0() };
        assert!(request(filing).unwrap_err().to_string().contains("not in the identity inventory"));
        let mut gone = identity();
        gone.status = IdentityStatus::Offboarded;
        let filing = Filing { identity: Some(&gone), ..filing };
        assert!(request(filing).unwrap_err().to_string().contains("offboarded"));
    }

    #[test]
    fn agents_ask_for_themselves_within_agent_limits() {
        let rules = Rules::default();
        let identity = identity();
        let agent = who("ServiceAccount:ci", &[Role::Agent]);
        let ok = draft(Risk::Low, hours(12));
        let filing = Filing { draft: &ok, actor: &agent, rules: &rules, identity: Some(&identity), now: t0() };
        assert!(request(filing).is_ok());
        let long = draft(Risk::Low, hours(48));
        let err = request(Filing { draft: &long, ..filing }).unwrap_err();
        assert!(err.to_string().contains("agent.max_duration"), "{err}");
        let other = who("ServiceAccount:other", &[Role::Agent]);
        assert!(matches!(request(Filing { actor: &other, ..filing }), Err(LifecycleError::Forbidden { .. })));
    }

    #[test]
    fn a_revalidation_trigger_suspends_until_the_owner_attests() {
        let e = file(Risk::Low, hours(100));
        let e = e.approve(&who("lee", &[Role::Approver]), None, t0()).unwrap().exception;
        let rules = Rules { revalidation_triggers: vec![], ..Rules::default() };
        assert!(e.suspend(RevalidationTrigger::CodeChange, &rules, t0()).is_none(), "not a trigger it names");
        assert!(
            e.suspend(RevalidationTrigger::CodeChange, &Rules::default(), t0()).is_some(),
            "but the default rules name every trigger for every exception"
        );
        let e = e.suspend(RevalidationTrigger::OwnerChange, &rules, t0()).unwrap().exception;
        assert!(!e.grants(t0() + hours(1)));
        let err = e.attest(&who("lee", &[Role::Admin]), None, t0()).unwrap_err();
        assert!(matches!(err, LifecycleError::SeparationOfDuties(_)));
        let e = e.attest(&who("sam", &[Role::Requester]), None, t0() + hours(1)).unwrap().exception;
        assert!(e.grants(t0() + hours(1)));
        assert_eq!(e.suspended_by, None);
    }

    #[test]
    fn renewals_are_limited() {
        let rules = Rules { renewal_limit: 1, ..Rules::default() };
        let (lee, sam) = (who("lee", &[Role::Approver]), who("sam", &[Role::Requester]));
        let e = file(Risk::Low, hours(100));
        let e = e.approve(&lee, None, t0()).unwrap().exception;
        let e = e.renew(&sam, t0() + hours(200), None, &rules, t0()).unwrap().exception;
        assert!(e.renew(&sam, t0() + hours(300), None, &rules, t0()).is_err(), "one renewal at a time");
        let e = e.approve(&lee, None, t0()).unwrap().exception;
        let err = e.renew(&sam, t0() + hours(300), None, &rules, t0()).unwrap_err();
        assert!(err.to_string().contains("renewal_limit"), "{err}");
    }

    // --- The state machine against a small reference model -----------------------------

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum ModelState {
        Requested,
        Approved,
        Rejected,
        Withdrawn,
        Revoked,
    }

    /// dana requests, sam owns, lee and morgan approve, eve is a stranger.
    const PEOPLE: [&str; 5] = ["dana", "sam", "lee", "morgan", "eve"];

    fn roles_of(name: &str) -> &'static [Role] {
        match name {
            "dana" | "sam" => &[Role::Requester, Role::Approver],
            "lee" | "morgan" => &[Role::Approver],
            _ => &[Role::Requester],
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Approve(usize),
        Reject(usize),
        Withdraw(usize),
        Revoke(usize),
        Attest(usize),
        Wait(i64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..5usize).prop_map(Op::Approve),
            (0..5usize).prop_map(Op::Reject),
            (0..5usize).prop_map(Op::Withdraw),
            (0..5usize).prop_map(Op::Revoke),
            (0..5usize).prop_map(Op::Attest),
            (1..60i64).prop_map(Op::Wait),
        ]
    }

    struct Model {
        state: ModelState,
        approvers: BTreeSet<&'static str>,
        required: usize,
        now: i64,
        expires: i64,
        deadline: i64,
    }

    impl Model {
        fn effective(&self) -> State {
            match self.state {
                ModelState::Requested if self.now >= self.expires || self.now >= self.deadline => State::Expired,
                ModelState::Requested => State::Requested,
                ModelState::Approved if self.now >= self.expires => State::Expired,
                ModelState::Approved => State::Active,
                ModelState::Rejected => State::Rejected,
                ModelState::Withdrawn => State::Withdrawn,
                ModelState::Revoked => State::Revoked,
            }
        }

        /// Applies `op`; returns whether the model allows it.
        fn apply(&mut self, op: &Op) -> bool {
            let effective = self.effective();
            let name = |p: &usize| PEOPLE[*p];
            let approver = |p: &usize| roles_of(name(p)).contains(&Role::Approver);
            match op {
                Op::Approve(p) => {
                    let ok = approver(p)
                        && effective == State::Requested
                        && !["dana", "sam"].contains(&name(p))
                        && !self.approvers.contains(name(p));
                    if ok {
                        self.approvers.insert(name(p));
                        if self.approvers.len() >= self.required {
                            self.state = ModelState::Approved;
                        }
                    }
                    ok
                }
                Op::Reject(p) => {
                    let ok = approver(p) && effective == State::Requested;
                    if ok {
                        self.state = ModelState::Rejected;
                    }
                    ok
                }
                Op::Withdraw(p) => {
                    let ok = ["dana", "sam"].contains(&name(p)) && effective == State::Requested;
                    if ok {
                        self.state = ModelState::Withdrawn;
                    }
                    ok
                }
                Op::Revoke(p) => {
                    let ok = (name(p) == "sam" || approver(p))
                        && matches!(effective, State::Requested | State::Active | State::Approved);
                    if ok {
                        self.state = ModelState::Revoked;
                    }
                    ok
                }
                Op::Attest(p) => name(p) == "sam" && matches!(effective, State::Active | State::Approved),
                Op::Wait(h) => {
                    self.now += h;
                    true
                }
            }
        }
    }

    proptest! {
        #[test]
        fn lifecycle_agrees_with_the_reference_model(
            critical in any::<bool>(), lasts in 1i64..160, ops in prop::collection::vec(op(), 0..24),
        ) {
            let risk = if critical { Risk::Critical } else { Risk::Low };
            let lasts = if critical { lasts.min(24 * 7) } else { lasts };
            let mut exception = file(risk, hours(lasts));
            let mut model = Model {
                state: ModelState::Requested,
                approvers: BTreeSet::new(),
                required: if critical { 2 } else { 1 },
                now: 0,
                expires: lasts,
                deadline: 24 * 7,
            };
            for op in &ops {
                let now = t0() + hours(model.now);
                let actor = |p: &usize| who(PEOPLE[*p], roles_of(PEOPLE[*p]));
                let result = match op {
                    Op::Approve(p) => Some(exception.approve(&actor(p), None, now)),
                    Op::Reject(p) => Some(exception.reject(&actor(p), Some("no".into()), now)),
                    Op::Withdraw(p) => Some(exception.withdraw(&actor(p), None, now)),
                    Op::Revoke(p) => Some(exception.revoke(&actor(p), None, now)),
                    Op::Attest(p) => Some(exception.attest(&actor(p), None, now)),
                    Op::Wait(_) => None,
                };
                let allowed = model.apply(op);
                if let Some(result) = result {
                    prop_assert_eq!(result.is_ok(), allowed, "{:?} at +{}h: {:?}", op, model.now, result);
                    if let Ok(t) = result {
                        prop_assert_eq!(t.exception.version, exception.version + 1);
                        exception = t.exception;
                    }
                }
                prop_assert_eq!(exception.effective_state(t0() + hours(model.now)), model.effective());
            }
        }
    }
}

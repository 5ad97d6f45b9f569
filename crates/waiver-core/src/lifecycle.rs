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
    Actor, Approval, CredentialType, Exception, ExceptionDraft, ExceptionId, FieldError, Identity, IdentityStatus,
    Kind, LifecycleError, PendingRenewal, PostUseReview, Principal, RevalidationTrigger, Review, Role, Rules, State,
    ValidationError, exception::Resolution, exception::Usage, text,
};

/// What a transition changed, to be recorded as an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Requested,
    BreakGlassActivated,
    Approved { by: Principal, comment: Option<String>, renewal: bool, quorum_reached: bool },
    Rejected { by: Principal, comment: Option<String>, renewal: bool },
    Withdrawn { by: Principal, comment: Option<String> },
    Revoked { by: Principal, comment: Option<String> },
    RenewalRequested { by: Principal, expires_at: Timestamp, comment: Option<String> },
    Attested { by: Principal, comment: Option<String>, next_due: Timestamp, lifted: Option<RevalidationTrigger> },
    BreakGlassEnded { by: Principal, comment: Option<String> },
    PostUseReviewed { by: Principal, comment: Option<String> },
    Suspended { trigger: RevalidationTrigger },
    Expired,
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
        }
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
        let credential_type =
            draft.credential_type.or(identity.map(|i| i.credential_type)).unwrap_or(CredentialType::Other);
        if let Err(e) = rules.check_request(draft, kind, credential_type, by_agent, now) {
            errors.extend(e.errors);
        }
        ValidationError::into_result(errors)?;
        Ok(credential_type)
    }

    fn build(&self, kind: Kind, state: State, credential_type: CredentialType) -> Exception {
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
            usage: Usage::default(),
            created_at: now,
            updated_at: now,
            version: 1,
        }
    }
}

/// Files a planned exception request.
pub fn request(filing: Filing<'_>) -> Result<Transition, LifecycleError> {
    require(filing.actor, "request an exception", &[Role::Requester, Role::Admin, Role::Agent])?;
    let credential_type = filing.check(Kind::Planned)?;
    Ok(Transition {
        exception: filing.build(Kind::Planned, State::Requested, credential_type),
        change: Change::Requested,
    })
}

/// Activates a break-glass exception: active at once, reviewed after.
pub fn activate_break_glass(filing: Filing<'_>) -> Result<Transition, LifecycleError> {
    require(filing.actor, "activate break-glass", &[Role::Responder])?;
    let credential_type = filing.check(Kind::BreakGlass)?;
    Ok(Transition {
        exception: filing.build(Kind::BreakGlass, State::Active, credential_type),
        change: Change::BreakGlassActivated,
    })
}

impl Exception {
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
        actor.is(&self.owner) || actor.roles.contains(Role::Admin)
    }

    /// Approves the request, or the pending renewal. Approvers are never the requester or
    /// the owner; the quorum counts distinct approvers.
    pub fn approve(
        &self,
        actor: &Actor,
        comment: Option<String>,
        now: Timestamp,
    ) -> Result<Transition, LifecycleError> {
        require(actor, "approve", &[Role::Approver])?;
        check_comment(&comment, false)?;
        let state = self.effective_state(now);
        let renewal = match (state, &self.pending_renewal) {
            (State::Requested, _) => false,
            (State::Active | State::Approved, Some(_)) => true,
            _ => {
                return Err(self.invalid_state("approve", now, Some("only requests and pending renewals are approved")));
            }
        };
        if actor.is(&self.requester) {
            return Err(LifecycleError::SeparationOfDuties(format!(
                "`{}` requested `{}` and may not approve it",
                actor.principal, self.id
            )));
        }
        if actor.is(&self.owner) {
            return Err(LifecycleError::SeparationOfDuties(format!(
                "`{}` owns `{}` and may not approve it",
                actor.principal, self.id
            )));
        }
        if let Some(pending) = self.pending_renewal.as_ref().filter(|_| renewal)
            && actor.is(&pending.requested_by)
        {
            return Err(LifecycleError::SeparationOfDuties(format!(
                "`{}` asked for this renewal of `{}` and may not approve it",
                actor.principal, self.id
            )));
        }
        if self.approved_by(&actor.principal) {
            return Err(LifecycleError::SeparationOfDuties(format!(
                "`{}` has already approved `{}`; the quorum counts distinct approvers",
                actor.principal, self.id
            )));
        }
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
        if !(actor.is(&self.requester) || actor.is(&self.owner) || actor.roles.contains(Role::Admin)) {
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
        if !actor.is(&self.owner) {
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

    /// Ends a break-glass early; its post-use review becomes due.
    pub fn end_break_glass(
        &self,
        actor: &Actor,
        comment: Option<String>,
        now: Timestamp,
    ) -> Result<Transition, LifecycleError> {
        check_comment(&comment, false)?;
        if !(actor.is(&self.requester) || self.is_owner_or_admin(actor) || actor.roles.contains(Role::Responder)) {
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
        if actor.is(&self.requester) {
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

    /// Holds a live exception after a change to its subject; it grants nothing until the
    /// owner attests. `None` if the trigger does not apply or the exception is not live.
    pub fn suspend(&self, trigger: RevalidationTrigger, now: Timestamp) -> Option<Transition> {
        let live = matches!(self.effective_state(now), State::Active | State::Approved);
        if !live || !self.review.revalidate_on.contains(&trigger) {
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

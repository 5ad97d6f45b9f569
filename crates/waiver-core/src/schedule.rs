//! What time asks of an exception: the scheduler's findings, as pure functions of `now`.
//!
//! Expiry itself needs no finding: [`Exception::effective_state`] applies it at decision
//! time, and [`Exception::record_expiry`] only writes it down. The findings here are
//! notices (reminders, overdue reviews, unused exceptions, revalidation flags) and the one
//! action the rules may take on their own (revoking an unused exception). Each notice has
//! keys recorded on the exception so it is sent once per occasion: a key names the instant
//! it is about, so a renewal or an attestation re-arms it.

use jiff::Timestamp;

use crate::{
    Exception, Kind, Period, Principal, RevalidationTrigger, Rules, State,
    exception::Resolution,
    lifecycle::{Change, Transition},
    rules::FollowUp,
};

/// What a notice is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoticeKind {
    /// The exception expires within a reminder lead time.
    Expiring,
    /// A periodic review falls due within a reminder lead time.
    ReviewDue,
    /// A periodic review is past due.
    ReviewOverdue,
    /// A break-glass's post-use review is past due.
    PostUseReviewOverdue,
    /// An active exception granted nothing for the rules' `unused.after`.
    Unused,
    /// The subject changed (owner, code, vendor) and the rules say flag, not suspend.
    RevalidationRequired,
}

impl NoticeKind {
    pub fn event_type(self) -> &'static str {
        match self {
            NoticeKind::Expiring => "exception.expiring",
            NoticeKind::ReviewDue => "exception.review_due",
            NoticeKind::ReviewOverdue => "exception.review_overdue",
            NoticeKind::PostUseReviewOverdue => "break_glass.review_overdue",
            NoticeKind::Unused => "exception.unused",
            NoticeKind::RevalidationRequired => "exception.revalidation_required",
        }
    }
}

/// A finding to record about one exception.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub kind: NoticeKind,
    /// The instant it is about: the expiry, the review due date, the last use.
    pub about: Timestamp,
    /// The reminder lead time, for reminders.
    pub lead: Option<Period>,
    pub trigger: Option<RevalidationTrigger>,
    /// Recorded on the exception so the notice is not sent again.
    pub keys: Vec<String>,
}

fn key(kind: NoticeKind, lead: Option<Period>, about: Timestamp) -> String {
    match lead {
        Some(lead) => format!("{}:{lead}:{about}", kind.event_type()),
        None => format!("{}:{about}", kind.event_type()),
    }
}

/// A reminder for the shortest lead time whose window `now` is in; reaching it also counts
/// as having sent every longer one (a 12-hour exception gets one reminder, not two).
fn reminder(e: &Exception, kind: NoticeKind, leads: &[Period], about: Timestamp, now: Timestamp) -> Option<Notice> {
    if now >= about {
        return None;
    }
    let mut reached: Vec<Period> =
        leads.iter().copied().filter(|lead| about.checked_sub(lead.duration()).is_ok_and(|from| now >= from)).collect();
    reached.sort();
    let shortest = *reached.first()?;
    let notice_key = key(kind, Some(shortest), about);
    if e.notices.contains(&notice_key) {
        return None;
    }
    let keys = reached.iter().map(|lead| key(kind, Some(*lead), about)).collect();
    Some(Notice { kind, about, lead: Some(shortest), trigger: None, keys })
}

fn once(e: &Exception, kind: NoticeKind, about: Timestamp) -> Option<Notice> {
    let notice_key = key(kind, None, about);
    (!e.notices.contains(&notice_key)).then(|| Notice {
        kind,
        about,
        lead: None,
        trigger: None,
        keys: vec![notice_key],
    })
}

impl Exception {
    /// The notices due at `now` that have not been sent.
    pub fn due_notices(&self, rules: &Rules, now: Timestamp) -> Vec<Notice> {
        let state = self.effective_state(now);
        let mut due = Vec::new();
        // A break-glass is hours long by design and ends on its own; reminding is noise.
        if self.kind == Kind::Planned && matches!(state, State::Active | State::Approved) {
            due.extend(reminder(self, NoticeKind::Expiring, &rules.remind_before_expiry, self.expires_at, now));
        }
        if matches!(state, State::Active | State::Approved | State::Suspended) {
            if self.review_overdue(now) {
                due.extend(once(self, NoticeKind::ReviewOverdue, self.review.next_due));
            } else if self.review.next_due < self.expires_at {
                // A review due at or after expiry is moot: the exception ends first.
                due.extend(reminder(
                    self,
                    NoticeKind::ReviewDue,
                    &rules.remind_before_review,
                    self.review.next_due,
                    now,
                ));
            }
        }
        if self.post_use_review_overdue(now)
            && let Some(due_at) = self.post_use_review_due()
        {
            due.extend(once(self, NoticeKind::PostUseReviewOverdue, due_at));
        }
        if let Some(since) = self.unused_since(rules, now) {
            due.extend(once(self, NoticeKind::Unused, since));
        }
        due
    }

    /// When an active planned exception last mattered (its last use, else its start), if
    /// that is `unused.after` ago or more.
    pub fn unused_since(&self, rules: &Rules, now: Timestamp) -> Option<Timestamp> {
        if self.kind != Kind::Planned || self.effective_state(now) != State::Active {
            return None;
        }
        let since = self.usage.last_used_at.unwrap_or(self.starts_at).max(self.starts_at);
        let idle_until = since.checked_add(rules.unused_after.duration()).ok()?;
        (now >= idle_until).then_some(since)
    }

    /// Records a notice: the keys go on the exception, the notice into the log.
    pub fn notify(&self, notice: Notice, now: Timestamp) -> Transition {
        let mut next = self.next_version(now);
        next.notices.extend(notice.keys.iter().cloned());
        Transition { exception: next, change: Change::Noticed(notice) }
    }

    /// What the rules do about an unused exception: `None` to only flag it.
    pub fn revoke_unused(&self, rules: &Rules, now: Timestamp) -> Option<Transition> {
        if rules.unused_action != FollowUp::Revoke {
            return None;
        }
        let since = self.unused_since(rules, now)?;
        let comment = Some(format!("unused since {since}; the governance rules revoke after {}", rules.unused_after));
        let mut next = self.next_version(now);
        next.state = State::Revoked;
        next.pending_renewal = None;
        next.resolution = Some(Resolution { by: Principal::system(), at: now, comment: comment.clone() });
        Some(Transition { exception: next, change: Change::Revoked { by: Principal::system(), comment } })
    }

    /// A revalidation trigger as the rules say: suspend (held until the owner attests) or flag.
    pub fn revalidate(&self, trigger: RevalidationTrigger, rules: &Rules, now: Timestamp) -> Option<Transition> {
        match rules.revalidation_action {
            FollowUp::Suspend => self.suspend(trigger, rules, now),
            _ => {
                let live = matches!(self.effective_state(now), State::Active | State::Approved);
                if !live || !self.revalidates_on(trigger, rules) {
                    return None;
                }
                let kind = NoticeKind::RevalidationRequired;
                let keys = vec![format!("{}:{trigger}:{now}", kind.event_type())];
                Some(self.notify(Notice { kind, about: now, lead: None, trigger: Some(trigger), keys }, now))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use jiff::SignedDuration;

    use super::*;
    use crate::{
        Actor, CompensatingControl, ControlKind, CredentialType, ExceptionDraft, Identity, IdentityKind,
        IdentityStatus, Remediation, ResourceScope, Risk, Role, Scope, Waived,
        lifecycle::{self, Filing},
    };

    fn t0() -> Timestamp {
        "2026-11-23T10:00:00Z".parse().unwrap()
    }

    fn active(lasts: SignedDuration) -> Exception {
        let rules = Rules::default();
        let identity = Identity {
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
        };
        let draft = ExceptionDraft {
            subject: identity.entity.clone(),
            waives: vec![Waived::DefaultDeny],
            scope: Scope {
                actions: vec!["deploy".into()],
                resources: vec![ResourceScope { entity: "Environment:prod".parse().unwrap(), descendants: true }],
            },
            condition: None,
            compensating_controls: vec![CompensatingControl {
                kind: ControlKind::ExtraLogging,
                description: "logged".into(),
                enforced: true,
            }],
            justification: "why".into(),
            normal_path_unavailable: "because".into(),
            affected_systems: vec![],
            references: vec![],
            risk: Risk::Low,
            credential_type: None,
            owner: Principal::parse("o", "sam").unwrap(),
            starts_at: None,
            expires_at: t0() + lasts,
            review_every: None,
            revalidate_on: vec![RevalidationTrigger::CodeChange],
            remediation: Some(Remediation { plan: "fix".into(), retire_by: None, ticket: None }),
            frameworks: vec![],
        };
        let dana = Actor::new(Principal::parse("a", "dana").unwrap(), &[Role::Requester]);
        let lee = Actor::new(Principal::parse("a", "lee").unwrap(), &[Role::Approver]);
        let filing = Filing { draft: &draft, actor: &dana, rules: &rules, identity: Some(&identity), now: t0() };
        let requested = lifecycle::request(filing).unwrap().exception;
        requested.approve(&lee, None, t0()).unwrap().exception
    }

    fn days(d: i64) -> SignedDuration {
        SignedDuration::from_hours(24 * d)
    }

    #[test]
    fn expiry_reminders_fire_once_per_lead_and_the_shortest_wins() {
        let rules = Rules::default();
        let mut e = active(days(60));
        assert!(e.due_notices(&rules, t0() + days(10)).iter().all(|n| n.kind != NoticeKind::Expiring));
        let at = t0() + days(54);
        let due: Vec<_> = e.due_notices(&rules, at).into_iter().filter(|n| n.kind == NoticeKind::Expiring).collect();
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].lead, Some(Period::from_days(7)));
        e = e.notify(due[0].clone(), at).exception;
        assert!(e.due_notices(&rules, at).iter().all(|n| n.kind != NoticeKind::Expiring), "sent once");
        let later = t0() + days(59) + SignedDuration::from_hours(1);
        let due: Vec<_> = e.due_notices(&rules, later).into_iter().filter(|n| n.kind == NoticeKind::Expiring).collect();
        assert_eq!(due.first().and_then(|n| n.lead), Some(Period::from_days(1)), "then the one-day reminder");
        // Straight into the last day: one reminder, which also stands for the 7-day one.
        let fresh = active(days(60));
        let due: Vec<_> =
            fresh.due_notices(&rules, later).into_iter().filter(|n| n.kind == NoticeKind::Expiring).collect();
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].keys.len(), 2);
        assert!(e.due_notices(&rules, t0() + days(61)).iter().all(|n| n.kind != NoticeKind::Expiring), "none after");
    }

    #[test]
    fn reviews_overdue_and_unused_are_flagged_and_unused_may_revoke() {
        let mut rules = Rules::default();
        let mut e = active(days(85));
        e.review.next_due = t0() + days(60);
        // Unused after 30 days; the review falls due on day 60.
        let kinds = |at| e.due_notices(&rules, at).into_iter().map(|n| n.kind).collect::<Vec<_>>();
        assert_eq!(kinds(t0() + days(29)), vec![]);
        assert_eq!(kinds(t0() + days(31)), vec![NoticeKind::Unused]);
        assert!(kinds(t0() + days(58)).contains(&NoticeKind::ReviewDue));
        assert!(kinds(t0() + days(61)).contains(&NoticeKind::ReviewOverdue));
        assert!(e.revoke_unused(&rules, t0() + days(31)).is_none(), "the default only flags");
        rules.unused_action = FollowUp::Revoke;
        let revoked = e.revoke_unused(&rules, t0() + days(31)).unwrap();
        assert_eq!(revoked.exception.state, State::Revoked);
        let mut used = e.clone();
        used.usage.last_used_at = Some(t0() + days(20));
        assert!(used.revoke_unused(&rules, t0() + days(31)).is_none(), "a recent use keeps it");
    }

    #[test]
    fn revalidation_suspends_or_flags_as_the_rules_say() {
        let mut rules = Rules { revalidation_triggers: vec![], ..Rules::default() };
        let e = active(days(30));
        let t = e.revalidate(RevalidationTrigger::CodeChange, &rules, t0()).unwrap();
        assert_eq!(t.exception.state, State::Suspended);
        assert!(e.revalidate(RevalidationTrigger::VendorChange, &rules, t0()).is_none(), "not a named trigger");
        rules.revalidation_action = FollowUp::Flag;
        let t = e.revalidate(RevalidationTrigger::CodeChange, &rules, t0()).unwrap();
        assert_eq!(t.exception.effective_state(t0()), State::Active);
        assert_eq!(t.change.event_type(), "exception.revalidation_required");
    }
}

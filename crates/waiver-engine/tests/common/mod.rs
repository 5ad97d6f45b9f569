//! What the engine's test binaries share: an exception as the store would hold it.
#![allow(dead_code, clippy::unwrap_used, reason = "test fixtures")]

use jiff::Timestamp;
use waiver_core::{
    Approval, EntityRef, Exception, ExceptionId, Kind, Period, Principal, Remediation, Review, Risk, Scope, State,
    Waived,
    exception::{PostUseReview, Usage},
};

pub fn principal(name: &str) -> Principal {
    Principal::parse("p", name).unwrap()
}

/// The parts a test varies; everything else is a valid, approved-by-lee exception of dana's,
/// owned by sam, with one enforced control.
pub struct Parts {
    pub id: ExceptionId,
    pub kind: Kind,
    pub state: State,
    pub subject: EntityRef,
    pub waives: Vec<Waived>,
    pub scope: Scope,
    pub condition: Option<String>,
    pub starts_at: Timestamp,
    pub expires_at: Timestamp,
}

pub fn exception(p: Parts) -> Exception {
    Exception {
        id: p.id,
        kind: p.kind,
        state: p.state,
        subject: p.subject,
        waives: p.waives,
        scope: p.scope,
        condition: p.condition,
        compensating_controls: vec![waiver_core::CompensatingControl {
            kind: waiver_core::ControlKind::ExtraLogging,
            description: "logged".into(),
            enforced: true,
        }],
        justification: "test".into(),
        normal_path_unavailable: "test".into(),
        affected_systems: vec![],
        references: vec![],
        risk: Risk::High,
        credential_type: waiver_core::CredentialType::WorkloadToken,
        requester: principal("dana"),
        owner: principal("sam"),
        approvals: vec![Approval { by: principal("lee"), at: p.starts_at, comment: None, round: 0 }],
        approvals_required: 1,
        starts_at: p.starts_at,
        expires_at: p.expires_at,
        review: Review {
            every: Period::from_days(14),
            next_due: p.expires_at,
            revalidate_on: vec![],
            last_attested: None,
        },
        remediation: Some(Remediation { plan: "fix".into(), retire_by: None, ticket: None }),
        frameworks: vec![],
        renewals: 0,
        pending_renewal: None,
        request_expires_at: None,
        post_use_review: (p.kind == Kind::BreakGlass).then(|| PostUseReview {
            within: Period::from_days(3),
            reviewed_by: None,
            reviewed_at: None,
            comment: None,
        }),
        suspended_by: None,
        resolution: None,
        pending_transfer: None,
        usage: Usage::default(),
        notices: Vec::new(),
        created_at: p.starts_at,
        updated_at: p.starts_at,
        version: 2,
    }
}

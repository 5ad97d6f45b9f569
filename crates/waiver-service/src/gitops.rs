//! GitOps: what applying a document of identities, exceptions and a baseline would change,
//! worked out against the register, then done through the same use cases as every other
//! edge (same rules, same separation of duties, same events). Applying twice changes
//! nothing the second time.

use std::sync::Arc;

use waiver_core::{Actor, EntityRef, ExceptionId, IdentityStatus, Kind, Timestamp, exception::ExceptionDraft};
use waiver_engine::Baseline;
use waiver_proto::{
    ExceptionRequest, IdentityInput, IdentityPatchInput,
    gitops::{DesiredException, Document, request_of},
};
use waiver_store::ExceptionFilter;

use crate::{BaselineDiff, Service, ServiceError};

/// One change the document asks for.
#[derive(Debug, Clone)]
pub enum Step {
    AddIdentity(IdentityInput),
    UpdateIdentity {
        entity: EntityRef,
        patch: IdentityPatchInput,
        fields: Vec<&'static str>,
    },
    OffboardIdentity(EntityRef),
    SetBaseline {
        baseline: Arc<Baseline>,
        diff: BaselineDiff,
    },
    /// File a new (planned) exception request; it still needs its approvals.
    File(Box<ExceptionRequest>),
    /// Ask to renew an exception to a later expiry; it still needs its approvals.
    Renew {
        id: ExceptionId,
        expires_at: Timestamp,
    },
}

impl Step {
    /// One line for the diff `apply` prints.
    pub fn describe(&self) -> String {
        match self {
            Step::AddIdentity(i) => format!("+ identity {}:{} (owner {})", i.entity_type, i.id, i.owner),
            Step::UpdateIdentity { entity, fields, .. } => format!("~ identity {entity}: {}", fields.join(", ")),
            Step::OffboardIdentity(entity) => format!("- identity {entity} (offboard; revokes its open exceptions)"),
            Step::SetBaseline { diff, .. } => format!(
                "~ baseline: {} added, {} removed, {} changed",
                diff.added.len(),
                diff.removed.len(),
                diff.changed.len()
            ),
            Step::File(r) => format!(
                "+ exception request for {}:{} waiving {} until {} (needs approval)",
                r.subject.entity_type,
                r.subject.id,
                r.waives.join(", "),
                r.expires_at
            ),
            Step::Renew { id, expires_at } => format!("~ {id}: renew until {expires_at} (needs approval)"),
        }
    }
}

/// What applying a document would do.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub steps: Vec<Step>,
    /// Why the document cannot be applied as it stands; nothing is applied while any remain.
    pub refusals: Vec<String>,
    /// Entries already as the files want them.
    pub unchanged: usize,
    /// Open exceptions and active identities in the register that no file mentions (left
    /// alone: removing a line from a file revokes nothing).
    pub only_in_register: Vec<String>,
}

/// The draft fields the files and the register are compared on. A field the file leaves
/// out (`starts_at`, `credential_type`, review cadence) means "whatever it is"; the file's
/// framework controls must be among the recorded ones (filing adds the defaults).
fn differences(file: &ExceptionDraft, stored: &ExceptionDraft) -> Vec<&'static str> {
    let mut out = Vec::new();
    let mut check = |name: &'static str, same: bool| {
        if !same {
            out.push(name);
        }
    };
    check("subject", file.subject == stored.subject);
    check("waives", file.waives == stored.waives);
    check("scope", file.scope == stored.scope);
    check("condition", file.condition == stored.condition);
    check("compensating_controls", file.compensating_controls == stored.compensating_controls);
    check("justification", file.justification == stored.justification);
    check("normal_path_unavailable", file.normal_path_unavailable == stored.normal_path_unavailable);
    check("affected_systems", file.affected_systems == stored.affected_systems);
    check("references", file.references == stored.references);
    check("risk", file.risk == stored.risk);
    check("credential_type", file.credential_type.is_none() || file.credential_type == stored.credential_type);
    check("owner", file.owner == stored.owner);
    check("starts_at", file.starts_at.is_none() || file.starts_at == stored.starts_at);
    check("expires_at", file.expires_at == stored.expires_at);
    check("review.every", file.review_every.is_none() || file.review_every == stored.review_every);
    check("review.revalidate_on", file.revalidate_on == stored.revalidate_on);
    check("remediation", file.remediation == stored.remediation);
    check("frameworks", file.frameworks.iter().all(|k| stored.frameworks.contains(k)));
    out
}

impl Service {
    /// Works out what applying `document` would change; changes nothing.
    pub async fn plan(&self, actor: &Actor, document: &Document) -> Result<Plan, ServiceError> {
        let mut plan = Plan::default();
        let now = self.now();

        // Identities.
        let stored = self.identities(actor).await?;
        let mut mentioned = Vec::new();
        for (idx, want) in document.identities.iter().enumerate() {
            let entity: EntityRef = match format!("{}:{}", want.entity_type, want.id).parse() {
                Ok(e) => e,
                Err(e) => {
                    plan.refusals.push(format!("identities[{idx}]: {e}"));
                    continue;
                }
            };
            mentioned.push(entity.clone());
            // The same checks `identity add` makes, so a dry run catches what apply would hit.
            if let Err(e) = want.input().into_identity(now) {
                plan.refusals.extend(e.errors.iter().map(|f| format!("identities[{idx}].{}: {}", f.field, f.message)));
                continue;
            }
            let Some(have) = stored.iter().find(|i| i.entity == entity) else {
                if want.offboarded {
                    plan.refusals
                        .push(format!("identities[{idx}]: `{entity}` is not in the inventory and marked offboarded"));
                } else {
                    plan.steps.push(Step::AddIdentity(want.input()));
                }
                continue;
            };
            let mut patch = IdentityPatchInput::default();
            let mut fields = Vec::new();
            if have.kind.as_str() != want.kind {
                patch.kind = Some(want.kind.clone());
                fields.push("kind");
            }
            if have.owner.as_str() != want.owner {
                patch.owner = Some(want.owner.clone());
                fields.push("owner");
            }
            if have.team != want.team {
                match &want.team {
                    Some(team) => {
                        patch.team = Some(team.clone());
                        fields.push("team");
                    }
                    None => plan.refusals.push(format!(
                        "identities[{idx}]: `{entity}` has a team the files leave out; name it (a team is not cleared)"
                    )),
                }
            }
            if have.credential_type.as_str() != want.credential_type {
                patch.credential_type = Some(want.credential_type.clone());
                fields.push("credential_type");
            }
            if have.attributes != want.attributes {
                patch.attributes = Some(want.attributes.clone());
                fields.push("attributes");
            }
            let offboarded = have.status == IdentityStatus::Offboarded;
            if offboarded && !fields.is_empty() {
                plan.refusals.push(format!("identities[{idx}]: `{entity}` is offboarded; it cannot change"));
                continue;
            }
            let unchanged = fields.is_empty();
            if !unchanged {
                plan.steps.push(Step::UpdateIdentity { entity: entity.clone(), patch, fields });
            }
            match (offboarded, want.offboarded) {
                (false, true) => plan.steps.push(Step::OffboardIdentity(entity)),
                (true, false) => plan.refusals.push(format!(
                    "identities[{idx}]: `{entity}` is offboarded; an offboarded identity does not come back (add a new one)"
                )),
                _ if unchanged => plan.unchanged += 1,
                _ => {}
            }
        }
        for i in stored.iter().filter(|i| i.status == IdentityStatus::Active && !mentioned.contains(&i.entity)) {
            plan.only_in_register.push(format!("identity {}", i.entity));
        }

        // The baseline.
        if let Some(sources) = &document.baseline {
            let entities = sources.entities.as_ref().map(ToString::to_string);
            match Baseline::parse(&sources.policies, sources.schema.as_deref(), entities.as_deref()) {
                Err(e) => plan.refusals.push(format!("baseline: {e}")),
                Ok(next) => {
                    let next = Arc::new(next);
                    let diff = self.diff_baseline(actor, &next).await?;
                    if !diff.refusals.is_empty() {
                        plan.refusals.extend(diff.refusals.iter().map(|r| format!("baseline: {r}")));
                    } else if diff.added.is_empty() && diff.removed.is_empty() && diff.changed.is_empty() {
                        plan.unchanged += 1;
                    } else {
                        plan.steps.push(Step::SetBaseline { baseline: next, diff });
                    }
                }
            }
        }

        // Exceptions.
        let desired: Vec<DesiredException> = match document.desired_exceptions() {
            Ok(d) => d,
            Err(e) => {
                plan.refusals.extend(e.errors.iter().map(|f| format!("{}: {}", f.field, f.message)));
                Vec::new()
            }
        };
        let open: Vec<_> =
            self.store.exceptions(&ExceptionFilter::default()).await?.into_iter().filter(|e| e.is_open(now)).collect();
        let mut matched: Vec<ExceptionId> = Vec::new();
        for (idx, want) in desired.into_iter().enumerate() {
            let kind =
                if want.request.kind.as_deref() == Some("break_glass") { Kind::BreakGlass } else { Kind::Planned };
            let file = match want.request.clone().into_draft(kind) {
                Ok(d) => d,
                Err(e) => {
                    plan.refusals
                        .extend(e.errors.iter().map(|f| format!("exceptions[{idx}].{}: {}", f.field, f.message)));
                    continue;
                }
            };
            let draft_of = |e: &waiver_core::Exception| request_of(e).into_draft(e.kind).ok();
            match want.id {
                Some(id) => {
                    let Some(stored) = self.store.exception(id).await? else {
                        plan.refusals.push(format!("exceptions[{idx}]: `{id}` is not in the register"));
                        continue;
                    };
                    matched.push(id);
                    let Some(stored_draft) = draft_of(&stored) else {
                        plan.refusals.push(format!("exceptions[{idx}]: `{id}` cannot be compared"));
                        continue;
                    };
                    let diff = differences(&file, &stored_draft);
                    let renewal_pending =
                        stored.pending_renewal.as_ref().is_some_and(|p| p.expires_at == file.expires_at);
                    if diff.is_empty() || (diff == ["expires_at"] && renewal_pending) {
                        plan.unchanged += 1;
                    } else if diff == ["expires_at"] && file.expires_at > stored.expires_at && stored.is_open(now) {
                        plan.steps.push(Step::Renew { id, expires_at: file.expires_at });
                    } else {
                        plan.refusals.push(format!(
                            "exceptions[{idx}]: `{id}` differs in {}; an exception's terms are fixed once filed (only a later `expires_at`, a renewal, may change): file a new one",
                            diff.join(", ")
                        ));
                    }
                }
                None => {
                    if kind == Kind::BreakGlass {
                        plan.refusals.push(format!(
                            "exceptions[{idx}]: a break-glass is activated by a responder in an emergency, not from files"
                        ));
                        continue;
                    }
                    // Already filed from these files (or by hand, identically): nothing to do.
                    let same = open.iter().find(|e| {
                        !matched.contains(&e.id) && draft_of(e).is_some_and(|d| differences(&file, &d).is_empty())
                    });
                    match same {
                        Some(e) => {
                            matched.push(e.id);
                            plan.unchanged += 1;
                        }
                        None => plan.steps.push(Step::File(Box::new(want.request))),
                    }
                }
            }
        }
        for e in open.iter().filter(|e| !matched.contains(&e.id)) {
            plan.only_in_register.push(format!("exception {} ({})", e.id, e.subject));
        }
        Ok(plan)
    }
}

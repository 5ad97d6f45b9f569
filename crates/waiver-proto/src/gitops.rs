//! The GitOps document: what `waiver export --format yaml` writes and `waiver apply` reads.
//! Identities, exceptions (each a request, with its `id` once it is in the register) and
//! the baseline's sources; YAML or JSON, one file or a directory of them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use waiver_core::{ExceptionId, FieldError, ValidationError, exception as core};

use crate::{CompensatingControl, Entity, ExceptionRequest, IdentityInput, Remediation, ReviewInput, Scope};

/// One document (or the merge of a directory's documents).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Document {
    /// The inventory, as the files want it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub identities: Vec<DesiredIdentity>,
    /// Each: the fields of an exception request, plus `id` for one already in the register.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exceptions: Vec<Value>,
    /// The baseline, as the files want it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<BaselineSources>,
}

/// An identity as the files want it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DesiredIdentity {
    /// The Cedar entity type.
    #[serde(rename = "type")]
    pub entity_type: String,
    /// The entity id.
    pub id: String,
    /// What sort of identity it is.
    pub kind: String,
    /// The accountable person.
    pub owner: String,
    /// The owning team.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
    /// The credential type it authenticates with.
    pub credential_type: String,
    /// Cedar attributes.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, Value>,
    /// Offboarded identities stay in the files, marked, so their history keeps an owner.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub offboarded: bool,
}

impl DesiredIdentity {
    /// What `identity add` takes for it.
    pub fn input(&self) -> IdentityInput {
        IdentityInput {
            entity_type: self.entity_type.clone(),
            id: self.id.clone(),
            kind: self.kind.clone(),
            owner: self.owner.clone(),
            team: self.team.clone(),
            credential_type: self.credential_type.clone(),
            attributes: self.attributes.clone(),
        }
    }
}

impl From<&waiver_core::Identity> for DesiredIdentity {
    fn from(i: &waiver_core::Identity) -> Self {
        Self {
            entity_type: i.entity.entity_type().to_string(),
            id: i.entity.id().to_owned(),
            kind: i.kind.to_string(),
            owner: i.owner.to_string(),
            team: i.team.clone(),
            credential_type: i.credential_type.to_string(),
            attributes: i.attributes.clone(),
            offboarded: i.status == waiver_core::IdentityStatus::Offboarded,
        }
    }
}

/// The baseline's sources, as `PUT /api/v1/baseline` takes them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BaselineSources {
    /// Cedar policies, each with an `@id`.
    pub policies: String,
    /// A Cedar schema, if the baseline has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
    /// Cedar entity JSON: a list of `{"uid", "attrs", "parents"}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entities: Option<Value>,
}

/// An exception entry of the files.
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredException {
    /// Set for an exception already in the register.
    pub id: Option<ExceptionId>,
    /// Its terms.
    pub request: ExceptionRequest,
}

impl Document {
    /// Appends another document's entries (a directory's files, in name order).
    pub fn merge(&mut self, other: Document) -> Result<(), String> {
        self.identities.extend(other.identities);
        self.exceptions.extend(other.exceptions);
        if let Some(baseline) = other.baseline {
            if self.baseline.is_some() {
                return Err("more than one file has a `baseline`".into());
            }
            self.baseline = Some(baseline);
        }
        Ok(())
    }

    /// The exception entries, parsed; errors name `exceptions[i].field`.
    pub fn desired_exceptions(&self) -> Result<Vec<DesiredException>, ValidationError> {
        let mut out = Vec::with_capacity(self.exceptions.len());
        let mut errors = Vec::new();
        for (idx, entry) in self.exceptions.iter().enumerate() {
            let mut entry = entry.clone();
            let id = match entry.as_object_mut().and_then(|fields| fields.remove("id")) {
                None | Some(Value::Null) => None,
                Some(Value::String(id)) => match id.parse::<ExceptionId>() {
                    Ok(id) => Some(id),
                    Err(e) => {
                        errors.push(FieldError::new(format!("exceptions[{idx}].id"), e.to_string()));
                        continue;
                    }
                },
                Some(_) => {
                    errors.push(FieldError::new(format!("exceptions[{idx}].id"), "must be a string like `EXC-000042`"));
                    continue;
                }
            };
            match crate::parse::<ExceptionRequest>(&entry.to_string(), crate::Format::Json) {
                Ok(request) => out.push(DesiredException { id, request }),
                Err(e) => errors.extend(e.errors.into_iter().map(|mut f| {
                    f.field = if f.field == "(document)" {
                        format!("exceptions[{idx}]")
                    } else {
                        format!("exceptions[{idx}].{}", f.field)
                    };
                    f
                })),
            }
        }
        ValidationError::into_result(errors).map(|()| out)
    }
}

/// The request that would file this exception as it stands (its current terms).
pub fn request_of(e: &core::Exception) -> ExceptionRequest {
    ExceptionRequest {
        kind: (e.kind == core::Kind::BreakGlass).then(|| e.kind.to_string()),
        subject: Entity::from(&e.subject),
        waives: e.waives.iter().map(ToString::to_string).collect(),
        scope: Scope::from(&e.scope),
        condition: e.condition.clone(),
        compensating_controls: e.compensating_controls.iter().map(CompensatingControl::from).collect(),
        justification: e.justification.clone(),
        normal_path_unavailable: e.normal_path_unavailable.clone(),
        affected_systems: e.affected_systems.clone(),
        references: e.references.clone(),
        risk: e.risk.to_string(),
        credential_type: Some(e.credential_type.to_string()),
        owner: e.owner.to_string(),
        starts_at: Some(e.starts_at),
        expires_at: e.expires_at,
        review: ReviewInput {
            every: Some(e.review.every.to_string()),
            revalidate_on: e.review.revalidate_on.iter().map(ToString::to_string).collect(),
        },
        remediation: e.remediation.as_ref().map(Remediation::from),
        frameworks: e.frameworks.clone(),
    }
}

//! Identities on the wire: the inventory of non-human subjects.

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use waiver_core::{
    self as core, CredentialType, EntityRef, FieldError, IdentityKind, IdentityStatus, Principal, ValidationError,
    identity::IdentityPatch, text,
};

/// Most attributes an identity may carry, and their nesting depth.
const MAX_ATTRIBUTES: usize = 64;
const MAX_ATTRIBUTE_DEPTH: usize = 8;

/// What `waiver identity add` takes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IdentityInput {
    /// The Cedar entity type, e.g. `ServiceAccount`.
    #[serde(rename = "type")]
    pub entity_type: String,
    /// The entity id.
    pub id: String,
    /// `service_account`, `api_key`, `pipeline`, `agent`, `workload`, `bot` or `other`.
    pub kind: String,
    /// The accountable person.
    pub owner: String,
    /// The owning team.
    #[serde(default)]
    pub team: Option<String>,
    /// The credential type it authenticates with.
    pub credential_type: String,
    /// Cedar attributes.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub attributes: BTreeMap<String, serde_json::Value>,
}

/// What `waiver identity update` takes: only the fields to change.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IdentityPatchInput {
    /// New kind.
    #[serde(default)]
    pub kind: Option<String>,
    /// New owner (fires the `owner_change` revalidation trigger).
    #[serde(default)]
    pub owner: Option<String>,
    /// New team.
    #[serde(default)]
    pub team: Option<String>,
    /// New credential type.
    #[serde(default)]
    pub credential_type: Option<String>,
    /// Replaces all attributes (a changed `code_version`, `image_digest` or `commit` fires
    /// `code_change`; a changed `vendor` fires `vendor_change`).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub attributes: Option<BTreeMap<String, serde_json::Value>>,
}

/// An identity as clients read it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    /// The Cedar entity type.
    #[serde(rename = "type")]
    pub entity_type: String,
    /// The entity id.
    pub id: String,
    /// The kind of identity.
    pub kind: String,
    /// The accountable person.
    pub owner: String,
    /// The owning team.
    pub team: Option<String>,
    /// `active` or `offboarded`.
    pub status: String,
    /// Its credential type.
    pub credential_type: String,
    /// Cedar attributes.
    #[schema(value_type = Object)]
    pub attributes: BTreeMap<String, serde_json::Value>,
    /// When it was added.
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    /// When it last changed.
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Timestamp,
    /// How many changes it has had.
    pub version: u64,
}

fn depth(v: &serde_json::Value) -> usize {
    match v {
        serde_json::Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        serde_json::Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

fn check_attributes(errors: &mut Vec<FieldError>, attributes: &BTreeMap<String, serde_json::Value>) {
    if attributes.len() > MAX_ATTRIBUTES {
        errors.push(FieldError::new("attributes", format!("at most {MAX_ATTRIBUTES} attributes are allowed")));
    }
    for (key, value) in attributes {
        if let Err(e) = text::check_name(&format!("attributes.{key}"), key) {
            errors.push(e);
        }
        if depth(value) > MAX_ATTRIBUTE_DEPTH {
            errors.push(FieldError::new(
                format!("attributes.{key}"),
                format!("nests deeper than {MAX_ATTRIBUTE_DEPTH} levels"),
            ));
        }
        if value.as_f64().is_some() && !value.is_i64() && !value.is_u64() {
            errors.push(FieldError::new(format!("attributes.{key}"), "must be an integer: Cedar has no decimals"));
        }
    }
}

impl IdentityInput {
    /// Checks every field and builds the identity, active, at `now`.
    pub fn into_identity(self, now: Timestamp) -> Result<core::Identity, ValidationError> {
        let mut errors = Vec::new();
        let entity = EntityRef::parse_parts("", &self.entity_type, &self.id)
            .map_err(|e| {
                errors.extend(e.into_iter().map(|mut e| {
                    e.field = e.field.trim_start_matches('.').to_owned();
                    e
                }))
            })
            .ok();
        let kind = IdentityKind::parse(&self.kind).map_err(|e| errors.push(FieldError::new("kind", e))).ok();
        let owner = Principal::parse("owner", &self.owner).map_err(|e| errors.push(e)).ok();
        if let Some(team) = &self.team
            && let Err(e) = text::check_name("team", team)
        {
            errors.push(e);
        }
        let credential_type = CredentialType::parse(&self.credential_type)
            .map_err(|e| errors.push(FieldError::new("credential_type", e)))
            .ok();
        check_attributes(&mut errors, &self.attributes);
        match (entity, kind, owner, credential_type) {
            (Some(entity), Some(kind), Some(owner), Some(credential_type)) if errors.is_empty() => Ok(core::Identity {
                entity,
                kind,
                owner,
                team: self.team,
                status: IdentityStatus::Active,
                credential_type,
                attributes: self.attributes,
                created_at: now,
                updated_at: now,
                version: 1,
            }),
            _ => Err(ValidationError::new(errors)),
        }
    }
}

impl IdentityPatchInput {
    /// Checks every field given.
    pub fn into_patch(self) -> Result<IdentityPatch, ValidationError> {
        let mut errors = Vec::new();
        let mut patch = IdentityPatch::default();
        if let Some(kind) = &self.kind {
            patch.kind = IdentityKind::parse(kind).map_err(|e| errors.push(FieldError::new("kind", e))).ok();
        }
        if let Some(owner) = &self.owner {
            patch.owner = Principal::parse("owner", owner).map_err(|e| errors.push(e)).ok();
        }
        if let Some(team) = self.team {
            match text::check_name("team", &team) {
                Ok(()) => patch.team = Some(Some(team)),
                Err(e) => errors.push(e),
            }
        }
        if let Some(c) = &self.credential_type {
            patch.credential_type =
                CredentialType::parse(c).map_err(|e| errors.push(FieldError::new("credential_type", e))).ok();
        }
        if let Some(attributes) = self.attributes {
            check_attributes(&mut errors, &attributes);
            patch.attributes = Some(attributes);
        }
        if patch == IdentityPatch::default() && errors.is_empty() {
            errors.push(FieldError::new("(document)", "names no field to change"));
        }
        ValidationError::into_result(errors)?;
        Ok(patch)
    }
}

impl From<&core::Identity> for Identity {
    fn from(i: &core::Identity) -> Self {
        Self {
            entity_type: i.entity.entity_type().to_string(),
            id: i.entity.id().to_owned(),
            kind: i.kind.to_string(),
            owner: i.owner.to_string(),
            team: i.team.clone(),
            status: i.status.to_string(),
            credential_type: i.credential_type.to_string(),
            attributes: i.attributes.clone(),
            created_at: i.created_at,
            updated_at: i.updated_at,
            version: i.version,
        }
    }
}

impl TryFrom<Identity> for core::Identity {
    type Error = ValidationError;

    /// Reads a stored record back into the domain.
    fn try_from(r: Identity) -> Result<Self, Self::Error> {
        let status =
            IdentityStatus::parse(&r.status).map_err(|e| ValidationError::one(FieldError::new("status", e)))?;
        let input = IdentityInput {
            entity_type: r.entity_type,
            id: r.id,
            kind: r.kind,
            owner: r.owner,
            team: r.team,
            credential_type: r.credential_type,
            attributes: r.attributes,
        };
        let mut identity = input.into_identity(r.created_at)?;
        identity.status = status;
        identity.updated_at = r.updated_at;
        identity.version = r.version;
        Ok(identity)
    }
}

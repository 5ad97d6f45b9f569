//! The inventory of non-human identities: the subjects exceptions are granted to.

use std::collections::BTreeMap;

use jiff::Timestamp;

use crate::{CredentialType, EntityRef, Principal, RevalidationTrigger};

string_enum!(
    /// What sort of non-human identity this is.
    IdentityKind, "identity kind" {
    ServiceAccount => "service_account",
    ApiKey => "api_key",
    Pipeline => "pipeline",
    Agent => "agent",
    Workload => "workload",
    Bot => "bot",
    Other => "other",
}
);

string_enum!(
    /// Whether the identity may still hold exceptions.
    IdentityStatus, "identity status" { Active => "active", Offboarded => "offboarded" }
);

/// Attribute keys whose change means the identity's code or vendor changed.
pub const CODE_ATTRIBUTES: &[&str] = &["code_version", "image_digest", "commit"];
pub const VENDOR_ATTRIBUTES: &[&str] = &["vendor"];

/// A non-human identity in the inventory.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    pub entity: EntityRef,
    pub kind: IdentityKind,
    pub owner: Principal,
    pub team: Option<String>,
    pub status: IdentityStatus,
    pub credential_type: CredentialType,
    /// Cedar attributes of the entity, as JSON values.
    pub attributes: BTreeMap<String, serde_json::Value>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub version: u64,
}

/// The fields an update may change; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IdentityPatch {
    pub kind: Option<IdentityKind>,
    pub owner: Option<Principal>,
    pub team: Option<Option<String>>,
    pub credential_type: Option<CredentialType>,
    pub attributes: Option<BTreeMap<String, serde_json::Value>>,
}

impl Identity {
    /// Applies a patch; returns the updated identity, the names of the fields that changed
    /// and the revalidation triggers the change fires.
    pub fn apply(
        &self,
        patch: IdentityPatch,
        now: Timestamp,
    ) -> (Identity, Vec<&'static str>, Vec<RevalidationTrigger>) {
        let mut next = self.clone();
        let mut changed = Vec::new();
        let mut triggers = Vec::new();
        if let Some(kind) = patch.kind.filter(|k| *k != self.kind) {
            next.kind = kind;
            changed.push("kind");
        }
        if let Some(owner) = patch.owner.filter(|o| *o != self.owner) {
            next.owner = owner;
            changed.push("owner");
            triggers.push(RevalidationTrigger::OwnerChange);
        }
        if let Some(team) = patch.team.filter(|t| *t != self.team) {
            next.team = team;
            changed.push("team");
        }
        if let Some(credential_type) = patch.credential_type.filter(|c| *c != self.credential_type) {
            next.credential_type = credential_type;
            changed.push("credential_type");
        }
        if let Some(attributes) = patch.attributes.filter(|a| *a != self.attributes) {
            let differs = |keys: &[&str]| keys.iter().any(|k| attributes.get(*k) != self.attributes.get(*k));
            if differs(CODE_ATTRIBUTES) {
                triggers.push(RevalidationTrigger::CodeChange);
            }
            if differs(VENDOR_ATTRIBUTES) {
                triggers.push(RevalidationTrigger::VendorChange);
            }
            next.attributes = attributes;
            changed.push("attributes");
        }
        if !changed.is_empty() {
            next.updated_at = now;
        }
        (next, changed, triggers)
    }
}

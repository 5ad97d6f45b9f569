//! A person in waiver's directory (owners and approvers are people, never free strings).

use serde::{Deserialize, Serialize};

/// One person.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Person {
    /// The principal they act as (`sam`).
    pub name: String,
    /// `active` or `offboarded`.
    pub status: String,
    /// How they entered the directory: `admin`, `token`, `identity_owner` or `imported`.
    pub via: String,
    /// Who added them (`waiver` for the system).
    pub added_by: String,
    /// When (RFC 3339, UTC).
    pub added_at: String,
    /// When they left, if they did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offboarded_at: Option<String>,
}

impl Person {
    /// Whether they are a current person (may own and approve).
    pub fn is_active(&self) -> bool {
        self.status == "active"
    }
}

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
    /// Their work email (from SCIM), for notifications.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// How they are shown (from SCIM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// Their team, as the identity provider says (`team_claim`), for owners' reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
    /// The roles the identity provider gave them at their last sign-in (who is told of what
    /// waits for an approver, say).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    /// The channels they are notified on (`email`, `chat`); absent: every channel set up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<Vec<String>>,
    /// Whether they get one daily digest by email instead of a message per event.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub digest: bool,
}

impl Person {
    /// A current person, added now by `added_by` through `via`.
    pub fn new(name: &str, via: &str, added_by: &str, added_at: &str) -> Self {
        Self {
            name: name.to_owned(),
            status: "active".into(),
            via: via.to_owned(),
            added_by: added_by.to_owned(),
            added_at: added_at.to_owned(),
            offboarded_at: None,
            email: None,
            display_name: None,
            team: None,
            roles: Vec::new(),
            channels: None,
            digest: false,
        }
    }

    /// Whether they are a current person (may own and approve).
    pub fn is_active(&self) -> bool {
        self.status == "active"
    }

    /// Whether they want messages on `channel` (`email`, `chat`).
    pub fn wants(&self, channel: &str) -> bool {
        self.channels.as_ref().is_none_or(|c| c.iter().any(|x| x == channel))
    }
}

/// One thing waiting for a person (`GET /api/v1/inbox`, `waiver inbox`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WorkItem {
    /// `approve`, `post_use_review`, `attest`, `accept_transfer` or `my_request`.
    pub kind: String,
    /// The exception.
    pub id: String,
    /// Its effective state.
    pub state: String,
    /// Its risk.
    pub risk: String,
    /// `TYPE:ID`.
    pub subject: String,
    /// What it waives.
    pub waives: Vec<String>,
    /// Who answers for it.
    pub owner: String,
    /// Who filed it.
    pub requester: String,
    /// Since when it has waited (RFC 3339).
    pub waiting_since: String,
    /// When it times out (a request), falls due (a post-use review) or ends (an exception).
    pub due_at: Option<String>,
}

/// What waits for a person, by kind, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Inbox {
    /// At most `limit` of each kind.
    pub items: Vec<WorkItem>,
    /// How many of each kind wait in all.
    pub totals: std::collections::BTreeMap<String, usize>,
}

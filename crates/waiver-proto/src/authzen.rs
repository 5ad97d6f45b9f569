//! OpenID AuthZEN Authorization API 1.0 request and response shapes.
//!
//! Members are optional here so that a missing one is reported by name (400) rather than
//! as a generic parse error; unknown members are allowed, as the specification extends.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A subject or resource: `{type, id, properties}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EntityIn {
    /// The entity type.
    #[serde(rename = "type", default)]
    pub entity_type: Option<String>,
    /// The entity id.
    #[serde(default)]
    pub id: Option<String>,
    /// Attributes the caller supplies.
    #[serde(default)]
    pub properties: Option<Map<String, Value>>,
}

/// An action: `{name, properties}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ActionIn {
    /// The action name.
    #[serde(default)]
    pub name: Option<String>,
    /// Attributes the caller supplies.
    #[serde(default)]
    pub properties: Option<Map<String, Value>>,
}

/// `POST /access/v1/evaluation`, and one item of a batch.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EvaluationRequest {
    /// Who asks.
    #[serde(default)]
    pub subject: Option<EntityIn>,
    /// To do what.
    #[serde(default)]
    pub action: Option<ActionIn>,
    /// On what.
    #[serde(default)]
    pub resource: Option<EntityIn>,
    /// In which circumstances.
    #[serde(default)]
    pub context: Option<Value>,
}

/// `POST /access/v1/evaluations`: defaults at the top, items in `evaluations`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EvaluationsRequest {
    /// Default subject.
    #[serde(default)]
    pub subject: Option<EntityIn>,
    /// Default action.
    #[serde(default)]
    pub action: Option<ActionIn>,
    /// Default resource.
    #[serde(default)]
    pub resource: Option<EntityIn>,
    /// Default context.
    #[serde(default)]
    pub context: Option<Value>,
    /// The items; each member overrides the default.
    #[serde(default)]
    pub evaluations: Option<Vec<EvaluationRequest>>,
    /// `{"evaluations_semantic": "execute_all" | "deny_on_first_deny" | "permit_on_first_permit"}`.
    #[serde(default)]
    pub options: Option<Map<String, Value>>,
}

/// Paging for search.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PageIn {
    /// The opaque token from the previous page.
    #[serde(default)]
    pub token: Option<String>,
    /// Most results wanted.
    #[serde(default)]
    pub limit: Option<u32>,
}

/// `POST /access/v1/search/{subject,resource,action}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SearchRequest {
    /// The subject (only `type` for a subject search).
    #[serde(default)]
    pub subject: Option<EntityIn>,
    /// The action (absent for an action search).
    #[serde(default)]
    pub action: Option<ActionIn>,
    /// The resource (only `type` for a resource search).
    #[serde(default)]
    pub resource: Option<EntityIn>,
    /// The context.
    #[serde(default)]
    pub context: Option<Value>,
    /// Paging.
    #[serde(default)]
    pub page: Option<PageIn>,
}

/// One decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvaluationResponse {
    /// Allowed or not.
    pub decision: bool,
    /// Present only when an exception granted it, an item failed, or an explanation was asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<Value>,
}

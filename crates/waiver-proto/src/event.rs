//! Audit events as clients see them (`/api/v1/audit/events`, webhook `data`).

use serde::{Deserialize, Serialize};
use waiver_core::audit::EventRecord;

/// One event of the audit log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Event {
    /// Position in the log, from 1, without gaps.
    pub seq: u64,
    /// When it happened (RFC 3339, UTC).
    pub at: String,
    /// Who did it.
    pub actor: String,
    /// What happened, e.g. `exception.approved`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// The exception concerned, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exception_id: Option<String>,
    /// The payload.
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
    /// For an event that changed a stored record: `DIGEST KEY`, the SHA-256 of the record's
    /// stored text after the change and the record (`exception:EXC-…`, `identity:TYPE:ID`,
    /// `token:tok_…`). Hashed with the event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seal: Option<String>,
    /// The previous event's hash.
    pub prev_hash: String,
    /// SHA-256 over `prev_hash` and this event's canonical JSON.
    pub hash: String,
}

impl From<&EventRecord> for Event {
    fn from(e: &EventRecord) -> Self {
        Self {
            seq: e.seq,
            at: e.at.clone(),
            actor: e.actor.clone(),
            event_type: e.event_type.clone(),
            exception_id: e.exception_id.clone(),
            // The stored text is canonical JSON the store wrote; if it were not JSON the
            // chain would not verify either, so the raw text is kept rather than lost.
            data: serde_json::from_str(&e.data).unwrap_or_else(|_| serde_json::Value::String(e.data.clone())),
            seal: e.seal.as_ref().map(waiver_core::audit::Seal::text),
            prev_hash: e.prev_hash.clone(),
            hash: e.hash.clone(),
        }
    }
}

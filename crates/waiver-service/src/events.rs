//! The payloads of the events the service records.
//!
//! Each exception event carries what changed plus the recorded state and version after it,
//! and the filing events carry the whole exception, so the log alone tells the story.

use jiff::Timestamp;
use serde_json::{Value, json};
use waiver_core::{Exception, Identity, Principal, audit::EventDraft, lifecycle::Change};

fn to_value<T: serde::Serialize>(value: &T) -> Value {
    // The wire types hold only strings, numbers, lists and string-keyed maps, which always
    // serialise; Null marks the impossible case rather than dropping the event.
    serde_json::to_value(value).unwrap_or(Value::Null)
}

pub(crate) fn exception_event(actor: &Principal, at: Timestamp, exception: &Exception, change: &Change) -> EventDraft {
    let mut data = match change {
        Change::Requested | Change::BreakGlassActivated => {
            json!({ "exception": to_value(&waiver_proto::Exception::record(exception)) })
        }
        Change::Approved { by, comment, renewal, quorum_reached } => {
            json!({ "by": by.as_str(), "comment": comment, "renewal": renewal, "quorum_reached": quorum_reached,
                    "expires_at": exception.expires_at.to_string() })
        }
        Change::Rejected { by, comment, renewal } => {
            json!({ "by": by.as_str(), "comment": comment, "renewal": renewal })
        }
        Change::Withdrawn { by, comment }
        | Change::Revoked { by, comment }
        | Change::BreakGlassEnded { by, comment }
        | Change::PostUseReviewed { by, comment } => json!({ "by": by.as_str(), "comment": comment }),
        Change::RenewalRequested { by, expires_at, comment } => {
            json!({ "by": by.as_str(), "expires_at": expires_at.to_string(), "comment": comment })
        }
        Change::Attested { by, comment, next_due, lifted } => json!({
            "by": by.as_str(), "comment": comment, "next_due": next_due.to_string(),
            "lifted": lifted.map(|t| t.as_str()),
        }),
        Change::Suspended { trigger } => json!({ "trigger": trigger.as_str() }),
        Change::FrameworksChanged { by, added, removed, comment } => json!({
            "by": by.as_str(), "added": added, "removed": removed, "comment": comment,
            "frameworks": exception.frameworks,
        }),
        Change::Narrowed { by, narrowing } => json!({
            "by": by.as_str(), "narrowing": to_value(&waiver_proto::Narrowing::from_core(narrowing)),
            "scope": to_value(&waiver_proto::Scope::from(&exception.scope)), "condition": exception.condition,
            "expires_at": exception.expires_at.to_string(),
        }),
        Change::TransferProposed { by, to, comment } => {
            json!({ "by": by.as_str(), "to": to.as_str(), "owner": exception.owner.as_str(), "comment": comment })
        }
        Change::OwnerTransferred { from, to, comment } => {
            json!({ "from": from.as_str(), "to": to.as_str(), "owner": to.as_str(), "comment": comment })
        }
        Change::Expired => json!({}),
        Change::Noticed(notice) => json!({
            "about": notice.about.to_string(),
            "lead": notice.lead.map(|p| p.to_string()),
            "trigger": notice.trigger.map(|t| t.as_str()),
            "owner": exception.owner.as_str(),
            "expires_at": exception.expires_at.to_string(),
        }),
    };
    if let Value::Object(map) = &mut data {
        map.insert("state".into(), json!(exception.state.as_str()));
        map.insert("version".into(), json!(exception.version));
    }
    EventDraft {
        at,
        actor: actor.clone(),
        event_type: change.event_type().to_owned(),
        exception_id: Some(exception.id),
        data,
    }
}

pub(crate) fn identity_event(
    actor: &Principal,
    at: Timestamp,
    event_type: &str,
    identity: &Identity,
    extra: Value,
) -> EventDraft {
    let mut data = json!({ "identity": to_value(&waiver_proto::Identity::from(identity)) });
    if let (Value::Object(map), Value::Object(extra)) = (&mut data, extra) {
        map.extend(extra);
    }
    EventDraft { at, actor: actor.clone(), event_type: event_type.to_owned(), exception_id: None, data }
}

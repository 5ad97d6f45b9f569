//! The register as an OSCAL 1.1 plan of action and milestones (POA&M).
//!
//! Each exception is a `risk` (status from its state, `deadline` = `expires_at`,
//! `mitigating-factors` = its compensating controls, `remediations` = its remediation plan,
//! `risk-log` = its events) and a `poam-item` pointing at it. waiver's own facts (owner,
//! approvers, kind, break-glass, framework controls) are `props` in waiver's namespace.
//! UUIDs are version 5, derived from the exception id and event hash, so the same register
//! always renders the same document and a re-export keeps every item's identity.

use jiff::Timestamp;
use serde_json::{Value, json};
use uuid::Uuid;
use waiver_core::{Exception, Kind, State, audit::EventRecord};

use crate::{ExportError, Register, approvers, controls};

/// The OSCAL version the document declares (validated with compliance-trestle's models).
pub const OSCAL_VERSION: &str = "1.1.3";
/// The namespace of waiver's own props.
pub const NS: &str = "https://waiver.dev/ns/oscal";
/// Fixed namespace for waiver's name-based UUIDs.
const UUID_NS: Uuid = Uuid::from_u128(0x6b1f_3a52_9c4e_4d0b_8a8e_2f5d_0c7e_91a4);

fn uuid(name: &str) -> String {
    Uuid::new_v5(&UUID_NS, name.as_bytes()).to_string()
}

/// OSCAL's risk status for a waiver state: a requested exception asks for a deviation,
/// an approved one is a granted deviation, one awaiting its post-use review is still being
/// investigated, one that ended is closed.
pub fn risk_status(state: State) -> &'static str {
    match state {
        State::Requested => "deviation-requested",
        State::Approved | State::Active => "deviation-approved",
        State::Suspended | State::AwaitingPostUseReview => "investigating",
        State::Rejected | State::Withdrawn | State::Expired | State::Revoked | State::Closed => "closed",
    }
}

/// A prop value OSCAL accepts: no leading or trailing space, not empty, one line.
fn prop(name: &str, value: &str) -> Option<Value> {
    let value = value.split_whitespace().collect::<Vec<_>>().join(" ");
    (!value.is_empty()).then(|| json!({"name": name, "ns": NS, "value": value}))
}

fn props<const N: usize>(list: [Option<Value>; N]) -> Vec<Value> {
    list.into_iter().flatten().collect()
}

fn timestamp(t: Timestamp) -> String {
    t.to_string()
}

fn risk(e: &Exception, events: &[EventRecord], now: Timestamp) -> Value {
    let id = e.id.to_string();
    let state = e.effective_state(now);
    let waives = e.waives.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
    let mut facts: Vec<Value> = [
        prop("exception-id", &id),
        prop("state", state.as_str()),
        prop("kind", e.kind.as_str()),
        prop("break-glass", if e.kind == Kind::BreakGlass { "true" } else { "false" }),
        prop("subject", &e.subject.to_string()),
        prop("owner", e.owner.as_str()),
        prop("requester", e.requester.as_str()),
        prop("risk-rating", e.risk.as_str()),
        prop("credential-type", e.credential_type.as_str()),
        prop("waives", &waives),
        prop("renewals", &e.renewals.to_string()),
    ]
    .into_iter()
    .flatten()
    .collect();
    facts.extend(approvers(e).iter().filter_map(|a| prop("approver", a)));
    facts.extend(controls(e).iter().filter_map(|c| prop("framework-control", c.key)));

    let mitigating: Vec<Value> = e
        .compensating_controls
        .iter()
        .enumerate()
        .map(|(idx, c)| {
            json!({
                "uuid": uuid(&format!("{id}/control/{idx}")),
                "description": format!("{}: {}", c.kind, c.description),
                "props": props([prop("control-kind", c.kind.as_str()),
                          prop("enforcement", if c.enforced { "enforced" } else { "attested" })]),
            })
        })
        .collect();

    // A log entry carries `status-change` only where the risk's OSCAL status moved (every
    // event records the state after it; most, such as a reminder, leave it as it was).
    let mut status = None;
    let mut log: Vec<Value> = Vec::with_capacity(events.len());
    for ev in events {
        let data: Value = serde_json::from_str(&ev.data).unwrap_or(Value::Null);
        let mut entry = json!({
            "uuid": uuid(&format!("event/{}", ev.hash)),
            "title": ev.event_type,
            "description": match data.get("comment").and_then(Value::as_str) {
                Some(comment) => format!("{} by {}: {comment}", ev.event_type, ev.actor),
                None => format!("{} by {}", ev.event_type, ev.actor),
            },
            "start": ev.at,
            "props": props([prop("seq", &ev.seq.to_string()), prop("actor", &ev.actor), prop("event-hash", &ev.hash)]),
        });
        let now_status = data.get("state").and_then(Value::as_str).and_then(|s| State::parse(s).ok()).map(risk_status);
        if let Some(to) = now_status.filter(|to| status != Some(*to))
            && let Value::Object(fields) = &mut entry
        {
            fields.insert("status-change".into(), json!(to));
            status = Some(to);
        }
        log.push(entry);
    }

    let subject = e.subject.to_string();
    let scope = e.scope.actions.join(", ");
    let mut risk = json!({
        "uuid": uuid(&format!("{id}/risk")),
        "title": format!("{id}: {subject} may {scope} despite {waives}"),
        "description": e.justification,
        "statement": format!(
            "Accepted deviation from the access baseline ({waives}) for {subject}, owned by {}. \
             Why the normal path cannot be used: {}",
            e.owner, e.normal_path_unavailable
        ),
        "props": facts,
        "status": risk_status(state),
        "deadline": timestamp(e.expires_at),
    });
    if let Value::Object(fields) = &mut risk {
        if !mitigating.is_empty() {
            fields.insert("mitigating-factors".into(), Value::Array(mitigating));
        }
        if let Some(plan) = e.remediation.as_ref().filter(|r| !r.plan.trim().is_empty()) {
            fields.insert(
                "remediations".into(),
                json!([{
                    "uuid": uuid(&format!("{id}/remediation")),
                    "lifecycle": if state == State::Closed { "completed" } else { "planned" },
                    "title": format!("Return {subject} to the baseline"),
                    "description": plan.plan,
                }]),
            );
        }
        if !log.is_empty() {
            fields.insert("risk-log".into(), json!({ "entries": log }));
        }
    }
    risk
}

pub(crate) fn render(register: &Register) -> Result<String, ExportError> {
    let chain = register.chain.clone().ok_or_else(|| ExportError::Render("no verified chain head".into()))?;
    let now = register.generated_at;
    let mut risks = Vec::with_capacity(register.exceptions.len());
    let mut items = Vec::with_capacity(register.exceptions.len());
    for e in register.records() {
        let id = e.id.to_string();
        risks.push(risk(e, register.events_of(e.id), now));
        items.push(json!({
            "uuid": uuid(&format!("{id}/poam-item")),
            "title": format!("{id}: exception for {}", e.subject),
            "description": e.justification,
            "props": props([prop("exception-id", &id), prop("owner", e.owner.as_str())]),
            "related-risks": [{"risk-uuid": uuid(&format!("{id}/risk"))}],
        }));
    }
    if items.is_empty() {
        // OSCAL requires at least one item; an empty register says so rather than failing.
        items.push(json!({
            "uuid": uuid("poam-item/none"),
            "title": "No exceptions recorded",
            "description": "The register held no exceptions when this plan was exported.",
        }));
    }
    let document = json!({
        "plan-of-action-and-milestones": {
            "uuid": uuid(&format!("poam/{}/{}", chain.head_hash, now)),
            "metadata": {
                "title": "waiver: access-policy exceptions for non-human identities",
                "last-modified": timestamp(now),
                "version": format!("audit-chain-{}", chain.n_events),
                "oscal-version": OSCAL_VERSION,
                "props": props([prop("audit-chain-head", &chain.head_hash),
                          prop("audit-chain-events", &chain.n_events.to_string())]),
            },
            "system-id": {"identifier-type": "https://ietf.org/rfc/rfc4122", "id": uuid("system/waiver")},
            "poam-items": items,
        }
    });
    let mut document = document;
    if !risks.is_empty()
        && let Some(Value::Object(poam)) = document.get_mut("plan-of-action-and-milestones")
    {
        poam.insert("risks".into(), Value::Array(risks));
    }
    let mut text = serde_json::to_string_pretty(&document).map_err(|e| ExportError::Render(e.to_string()))?;
    text.push('\n');
    Ok(text)
}

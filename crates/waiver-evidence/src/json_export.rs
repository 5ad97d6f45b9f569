//! The whole register as one JSON document: every exception as the API shows it, with its
//! framework controls and its events, and the chain head the events verify against.

use serde_json::{Value, json};

use crate::{ExportError, Register, controls};

pub(crate) fn render(register: &Register) -> Result<String, ExportError> {
    let chain = register.chain.clone().ok_or_else(|| ExportError::Render("no verified chain head".into()))?;
    let now = register.generated_at;
    let mut exceptions = Vec::with_capacity(register.exceptions.len());
    for e in register.records() {
        let mut view = serde_json::to_value(waiver_proto::Exception::view(e, now))
            .map_err(|err| ExportError::Render(format!("{}: {err}", e.id)))?;
        if let Value::Object(fields) = &mut view {
            fields.insert(
                "controls".into(),
                controls(e).iter().map(|c| json!({"key": c.key, "title": c.title})).collect(),
            );
            fields.insert(
                "events".into(),
                register.events_of(e.id).iter().map(|ev| json!(waiver_proto::Event::from(ev))).collect(),
            );
        }
        exceptions.push(view);
    }
    let identities: Vec<Value> = register.identities.iter().map(|i| json!(waiver_proto::Identity::from(i))).collect();
    let document = json!({
        "format": "waiver.register.v1",
        "generated_at": now.to_string(),
        "chain": {"events": chain.n_events, "head_hash": chain.head_hash},
        "exceptions": exceptions,
        "identities": identities,
    });
    let mut text = serde_json::to_string_pretty(&document).map_err(|e| ExportError::Render(e.to_string()))?;
    text.push('\n');
    Ok(text)
}

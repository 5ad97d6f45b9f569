//! The whole register as one JSON document: every exception as the API shows it, with its
//! framework controls and its events, and the chain head the events verify against.
//!
//! The document is written in pieces ([`JsonWriter`]): the head, one exception at a time,
//! then the identities, so a server can stream it with memory flat in the number of
//! exceptions. The pieces concatenate to exactly what `serde_json::to_string_pretty` makes
//! of the whole document (the golden file pins it).

use jiff::Timestamp;
use serde_json::{Value, json};
use waiver_core::{Exception, Identity, audit::ChainHead, audit::EventRecord};

use crate::{ExportError, Register, controls};

pub(crate) fn render(register: &Register) -> Result<String, ExportError> {
    let chain = register.chain.clone().ok_or_else(|| ExportError::Render("no verified chain head".into()))?;
    let mut writer = JsonWriter::new(register.generated_at, &chain);
    let mut text = writer.head()?;
    for e in register.records() {
        let controls = controls(e);
        text.push_str(&writer.exception(e, &controls, register.events_of(e.id))?);
    }
    text.push_str(&writer.tail(&register.identities)?);
    Ok(text)
}

/// Writes the JSON export piece by piece.
#[derive(Debug)]
pub struct JsonWriter {
    generated_at: Timestamp,
    chain: ChainHead,
    written: usize,
}

fn pretty(value: &Value) -> Result<String, ExportError> {
    serde_json::to_string_pretty(value).map_err(|e| ExportError::Render(e.to_string()))
}

/// `text` indented by `levels` of two spaces after its first line (JSON strings hold no raw
/// newlines, so lines are safe to indent).
fn indented(text: &str, levels: usize) -> String {
    let pad = "  ".repeat(levels);
    text.replace('\n', &format!("\n{pad}"))
}

impl JsonWriter {
    pub fn new(generated_at: Timestamp, chain: &ChainHead) -> Self {
        Self { generated_at, chain: chain.clone(), written: 0 }
    }

    /// Everything before the first exception.
    pub fn head(&mut self) -> Result<String, ExportError> {
        let chain = json!({"events": self.chain.n_events, "head_hash": self.chain.head_hash});
        Ok(format!(
            "{{\n  \"format\": \"waiver.register.v1\",\n  \"generated_at\": {},\n  \"chain\": {},\n  \"exceptions\": [",
            Value::String(self.generated_at.to_string()),
            indented(&pretty(&chain)?, 1),
        ))
    }

    /// One exception, with its controls (keys and titles) and its events.
    pub fn exception(
        &mut self,
        e: &Exception,
        controls: &[&waiver_core::frameworks::Control],
        events: &[EventRecord],
    ) -> Result<String, ExportError> {
        let mut view = serde_json::to_value(waiver_proto::Exception::view(e, self.generated_at))
            .map_err(|err| ExportError::Render(format!("{}: {err}", e.id)))?;
        if let Value::Object(fields) = &mut view {
            fields
                .insert("controls".into(), controls.iter().map(|c| json!({"key": c.key, "title": c.title})).collect());
            fields.insert("events".into(), events.iter().map(|ev| json!(waiver_proto::Event::from(ev))).collect());
        }
        let separator = if self.written == 0 { "\n    " } else { ",\n    " };
        self.written += 1;
        Ok(format!("{separator}{}", indented(&pretty(&view)?, 2)))
    }

    /// Everything after the last exception.
    pub fn tail(&mut self, identities: &[Identity]) -> Result<String, ExportError> {
        let close = if self.written == 0 { "]" } else { "\n  ]" };
        let identities: Vec<Value> = identities.iter().map(|i| json!(waiver_proto::Identity::from(i))).collect();
        Ok(format!("{close},\n  \"identities\": {}\n}}\n", indented(&pretty(&Value::Array(identities))?, 1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pieces_are_what_serde_json_prints_of_the_whole() {
        let chain = ChainHead { n_events: 3, head_hash: "ab".into() };
        let at: Timestamp = "2026-11-23T12:00:00Z".parse().unwrap();
        let mut writer = JsonWriter::new(at, &chain);
        let text = format!("{}{}", writer.head().unwrap(), writer.tail(&[]).unwrap());
        let whole = json!({
            "format": "waiver.register.v1",
            "generated_at": at.to_string(),
            "chain": {"events": 3, "head_hash": "ab"},
            "exceptions": [],
            "identities": [],
        });
        assert_eq!(text, format!("{}\n", serde_json::to_string_pretty(&whole).unwrap()));
    }
}

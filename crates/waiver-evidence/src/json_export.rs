//! The whole register as one JSON document an auditor can take away and verify offline
//! (`waiver audit verify --file`, [`crate::verify_export`]): every exception as the API
//! shows it, with its framework controls, its events and its stored record; the identities;
//! the whole log as stored (`log`: each event's hashed body and hashes); the token records'
//! digests; and every baseline and rules text the log put in force (`artifacts`), with the
//! chain head all of it verifies against.
//!
//! The document is written in pieces ([`JsonWriter`]): the head, one exception at a time,
//! the identities, one event at a time, then the close, so a server can stream it with
//! memory flat in the size of the register. The pieces concatenate to exactly what
//! `serde_json::to_string_pretty` makes of the whole document (the golden file pins it), so
//! a verifier can render the document again from its verified parts and compare bytes.

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
    text.push_str(&writer.identities(&register.identities)?);
    for event in &register.log {
        text.push_str(&writer.log_event(event)?);
    }
    text.push_str(&writer.close(&register.tokens, &register.artifacts)?);
    Ok(text)
}

/// A baseline or rules text the log put in force, as exported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportedArtifact {
    pub kind: String,
    pub set_by_event: u64,
    pub sha256: String,
    pub body: String,
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
            "{{\n  \"format\": \"{FORMAT}\",\n  \"generated_at\": {},\n  \"chain\": {},\n  \"exceptions\": [",
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
            let record = waiver_proto::stored::exception_text(e)
                .map_err(|err| ExportError::Render(format!("{}: {err}", e.id)))?;
            fields.insert("record".into(), Value::String(record));
        }
        let separator = if self.written == 0 { "\n    " } else { ",\n    " };
        self.written += 1;
        Ok(format!("{separator}{}", indented(&pretty(&view)?, 2)))
    }

    /// After the last exception: the identities, and the start of the log.
    pub fn identities(&mut self, identities: &[Identity]) -> Result<String, ExportError> {
        let close = if self.written == 0 { "]" } else { "\n  ]" };
        self.written = 0;
        let identities: Vec<Value> = identities.iter().map(|i| json!(waiver_proto::Identity::from(i))).collect();
        Ok(format!("{close},\n  \"identities\": {},\n  \"log\": [", indented(&pretty(&Value::Array(identities))?, 1)))
    }

    /// One event of the log, as stored: what was hashed, and the hashes.
    pub fn log_event(&mut self, event: &EventRecord) -> Result<String, ExportError> {
        let stored = json!({"seq": event.seq, "exception_id": event.exception_id, "body": event.body,
                            "prev_hash": event.prev_hash, "hash": event.hash});
        let separator = if self.written == 0 { "\n    " } else { ",\n    " };
        self.written += 1;
        Ok(format!("{separator}{}", indented(&pretty(&stored)?, 2)))
    }

    /// After the last event: the token records' digests (`key`, `sha256`: the secret's hash
    /// stays at home) and the artifacts, and the end of the document.
    pub fn close(
        &mut self,
        tokens: &[(String, String)],
        artifacts: &[ExportedArtifact],
    ) -> Result<String, ExportError> {
        let close = if self.written == 0 { "]" } else { "\n  ]" };
        let tokens: Vec<Value> = tokens.iter().map(|(key, sha256)| json!({"key": key, "sha256": sha256})).collect();
        let artifacts: Vec<Value> = artifacts
            .iter()
            .map(|a| json!({"kind": a.kind, "set_by_event": a.set_by_event, "sha256": a.sha256, "body": a.body}))
            .collect();
        Ok(format!(
            "{close},\n  \"tokens\": {},\n  \"artifacts\": {}\n}}\n",
            indented(&pretty(&Value::Array(tokens))?, 1),
            indented(&pretty(&Value::Array(artifacts))?, 1)
        ))
    }
}

/// The export's format tag.
pub const FORMAT: &str = "waiver.register.v2";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pieces_are_what_serde_json_prints_of_the_whole() {
        let chain = ChainHead { n_events: 3, head_hash: "ab".into() };
        let at: Timestamp = "2026-11-23T12:00:00Z".parse().unwrap();
        let mut writer = JsonWriter::new(at, &chain);
        let text =
            format!("{}{}{}", writer.head().unwrap(), writer.identities(&[]).unwrap(), writer.close(&[], &[]).unwrap());
        let whole = json!({
            "format": FORMAT,
            "generated_at": at.to_string(),
            "chain": {"events": 3, "head_hash": "ab"},
            "exceptions": [],
            "identities": [],
            "log": [],
            "tokens": [],
            "artifacts": [],
        });
        assert_eq!(text, format!("{}\n", serde_json::to_string_pretty(&whole).unwrap()));
    }
}

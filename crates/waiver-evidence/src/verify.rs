//! Verifies a JSON export offline (`waiver audit verify --file`), with nothing but the file.
//!
//! 1. The log: every event's hash covers its stored body and links to the one before, and
//!    the last is the head the document names (anchor that head elsewhere to trust it).
//! 2. The records: each exception's stored record, each identity and each token digest is
//!    what the newest event that sealed its key says; every key the log sealed is present.
//! 3. The artifacts: each baseline and rules text hashes to its digest, which the event that
//!    put it in force sealed; every one the log sealed is present.
//! 4. The rest: the document is rendered again from those verified parts (views, controls,
//!    each exception's events) and must equal the file byte for byte, so an edit anywhere —
//!    a view, a control, whitespace — is found. Only usage counts are unsealed: they are
//!    telemetry and say so in the design.

use std::{collections::HashMap, sync::Arc};

use serde_json::Value;
use waiver_core::{
    Exception, ExceptionId, Identity,
    audit::{ChainHead, ChainVerifier, EventRecord, digest},
};

use crate::{Register, json_export};

/// What a verified export holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportVerified {
    pub chain: ChainHead,
    pub exceptions: usize,
    pub identities: usize,
    pub artifacts: usize,
}

fn array<'a>(doc: &'a Value, key: &str) -> Result<&'a Vec<Value>, String> {
    doc.get(key).and_then(Value::as_array).ok_or_else(|| format!("it has no `{key}` list"))
}

fn text<'a>(value: &'a Value, key: &str, what: &str) -> Result<&'a str, String> {
    value.get(key).and_then(Value::as_str).ok_or_else(|| format!("{what} has no `{key}`"))
}

fn number(value: &Value, key: &str, what: &str) -> Result<u64, String> {
    value.get(key).and_then(Value::as_u64).ok_or_else(|| format!("{what} has no `{key}`"))
}

/// Checks `text`, a JSON export, as the module describes; the error says what failed first.
pub fn verify_export(text_in: &str) -> Result<ExportVerified, String> {
    let doc: Value = serde_json::from_str(text_in).map_err(|e| format!("it is not JSON: {e}"))?;
    if doc.get("format").and_then(Value::as_str) != Some(json_export::FORMAT) {
        return Err(format!("it is not a `{}` export", json_export::FORMAT));
    }
    let generated_at = text(&doc, "generated_at", "the export")?
        .parse()
        .map_err(|e| format!("its `generated_at` is not a time: {e}"))?;
    let chain = doc.get("chain").ok_or("it has no `chain`")?;
    let claimed = ChainHead {
        n_events: number(chain, "events", "the chain")?,
        head_hash: text(chain, "head_hash", "the chain")?.to_owned(),
    };

    // 1. The log.
    let mut verifier = ChainVerifier::default();
    let mut log = Vec::new();
    for stored in array(&doc, "log")? {
        let seq = number(stored, "seq", "an event")?;
        let what = format!("event {seq}");
        let exception_id = match stored.get("exception_id") {
            None | Some(Value::Null) => None,
            Some(v) => Some(v.as_str().ok_or_else(|| format!("{what} has a malformed `exception_id`"))?.to_owned()),
        };
        let event = EventRecord::from_stored(
            seq,
            exception_id,
            text(stored, "body", &what)?.to_owned(),
            text(stored, "prev_hash", &what)?.to_owned(),
            text(stored, "hash", &what)?.to_owned(),
        )
        .map_err(|e| format!("the log is broken: {e}"))?;
        verifier.push(&event).map_err(|broken| format!("the log is broken: {broken}"))?;
        log.push(event);
    }
    let head = verifier.finish();
    if head != claimed {
        return Err(format!(
            "the log ends at event {} ({}), not at the head the export names ({} events, {})",
            head.n_events, head.head_hash, claimed.n_events, claimed.head_hash
        ));
    }
    // The newest seal of each key.
    let mut seals: HashMap<&str, (u64, &str)> = HashMap::new();
    for event in &log {
        if let Some(seal) = &event.seal {
            seals.insert(seal.key.as_str(), (event.seq, seal.digest.as_str()));
        }
    }
    let sealed = |key: &str, found: &str| -> Result<(), String> {
        match seals.get(key) {
            None => Err(format!("record `{key}` is not sealed by any event of the log")),
            Some((seq, expected)) if *expected != found => {
                Err(format!("record `{key}` differs from what event {seq} sealed"))
            }
            Some(_) => Ok(()),
        }
    };

    // 2. The records.
    let mut exceptions = Vec::new();
    let mut present: Vec<String> = Vec::new();
    for view in array(&doc, "exceptions")? {
        let id = text(view, "id", "an exception")?;
        let key = format!("exception:{id}");
        let record = text(view, "record", &key)?;
        sealed(&key, &digest(record))?;
        let wire: waiver_proto::Exception =
            serde_json::from_str(record).map_err(|e| format!("record `{key}` does not parse: {e}"))?;
        let mut exception = Exception::try_from(wire).map_err(|e| format!("record `{key}` does not parse: {e}"))?;
        if exception.id.to_string() != id {
            return Err(format!("record `{key}` holds the record of `{}`", exception.id));
        }
        // Usage is unsealed telemetry: taken from the view as it stands.
        let usage = view.get("usage").ok_or_else(|| format!("exception `{id}` has no `usage`"))?;
        exception.usage = waiver_core::exception::Usage {
            scope_used: usage.get("scope_used").map_or(Ok(0), |_| number(usage, "scope_used", &key))?,
            count: number(usage, "count", &key)?,
            last_used_at: match usage.get("last_used_at") {
                None | Some(Value::Null) => None,
                Some(t) => Some(
                    t.as_str()
                        .and_then(|t| t.parse().ok())
                        .ok_or_else(|| format!("exception `{id}`: bad `last_used_at`"))?,
                ),
            },
        };
        present.push(key);
        exceptions.push(Arc::new(exception));
    }
    let mut identities = Vec::new();
    for shown in array(&doc, "identities")? {
        let wire: waiver_proto::Identity =
            serde_json::from_value(shown.clone()).map_err(|e| format!("an identity does not parse: {e}"))?;
        let identity = Identity::try_from(wire).map_err(|e| format!("an identity does not parse: {e}"))?;
        let key = format!("identity:{}", identity.entity);
        let stored = waiver_proto::stored::identity_text(&identity).map_err(|e| e.to_string())?;
        sealed(&key, &digest(&stored))?;
        present.push(key);
        identities.push(identity);
    }
    let mut tokens = Vec::new();
    for token in array(&doc, "tokens")? {
        let key = text(token, "key", "a token")?;
        let sha256 = text(token, "sha256", key)?;
        sealed(key, sha256)?;
        present.push(key.to_owned());
        tokens.push((key.to_owned(), sha256.to_owned()));
    }
    for key in
        seals.keys().filter(|k| k.starts_with("exception:") || k.starts_with("identity:") || k.starts_with("token:"))
    {
        if !present.iter().any(|p| p == key) {
            return Err(format!("record `{key}` is sealed by the log and missing from the export"));
        }
    }

    // 3. The artifacts.
    let by_seq: HashMap<u64, &EventRecord> = log.iter().map(|e| (e.seq, e)).collect();
    let mut artifacts = Vec::new();
    for artifact in array(&doc, "artifacts")? {
        let kind = text(artifact, "kind", "an artifact")?;
        let seq = number(artifact, "set_by_event", kind)?;
        let sha256 = text(artifact, "sha256", kind)?;
        let body = text(artifact, "body", kind)?;
        if digest(body) != sha256 {
            return Err(format!("the {kind} of event {seq} does not hash to its digest"));
        }
        let seal = by_seq.get(&seq).and_then(|e| e.seal.as_ref());
        if seal.is_none_or(|s| s.key != kind || s.digest != sha256) {
            return Err(format!("event {seq} did not put this {kind} in force"));
        }
        artifacts.push(json_export::ExportedArtifact {
            kind: kind.to_owned(),
            set_by_event: seq,
            sha256: sha256.to_owned(),
            body: body.to_owned(),
        });
    }
    for event in &log {
        if let Some(seal) = event.seal.as_ref().filter(|s| crate::is_artifact_kind(&s.key))
            && !artifacts.iter().any(|a| a.set_by_event == event.seq)
        {
            return Err(format!("the {} event {} put in force is missing from the export", seal.key, event.seq));
        }
    }

    // 4. Everything else: rendered again from the verified parts, byte for byte.
    let counts = ExportVerified {
        chain: head.clone(),
        exceptions: exceptions.len(),
        identities: identities.len(),
        artifacts: artifacts.len(),
    };
    let mut register = Register::new(generated_at, exceptions, identities, waiver_core::Rules::default(), None);
    for event in &log {
        if let Some(id) = event.exception_id.as_deref().and_then(|id| id.parse::<ExceptionId>().ok()) {
            register.events.entry(id).or_default().push(event.clone());
        }
    }
    register.chain = Some(head);
    register.log = log;
    register.tokens = tokens;
    register.artifacts = artifacts;
    let rendered = json_export::render(&register).map_err(|e| e.to_string())?;
    if rendered != text_in {
        let at = rendered
            .bytes()
            .zip(text_in.bytes())
            .position(|(a, b)| a != b)
            .unwrap_or(rendered.len().min(text_in.len()));
        let line = text_in.get(..at).map_or(0, |t| t.lines().count());
        return Err(format!(
            "line {line} differs from what the verified log and records render: the export was edited outside its hashed parts"
        ));
    }
    Ok(counts)
}

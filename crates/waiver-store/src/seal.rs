//! Record seals: every stored record is checked against the event that last changed it.
//!
//! The log is the truth and the tables are its projections, so a projection must say what
//! the log says. Each commit seals every record it writes: one of the commit's events
//! carries the record's key and the SHA-256 of the record's stored text ([`Seal`], hashed
//! into the chain with the event), and the row keeps that event's sequence number
//! (`sealed_seq`). A read checks the row against its seal ([`check`]): the sealing event
//! is intact (its hash covers its body and the seal columns say what the body says), it
//! seals this record, the record's text hashes to the sealed digest, and no later event
//! sealed the same record (so an old, once-valid version cannot be put back). A record
//! that fails is *tampered*: it never grants and is reported, by key and reason.
//!
//! What is not sealed: usage counts (telemetry written by every node's flush, kept in
//! columns beside the record; the stored text holds zero usage) and webhook delivery
//! progress.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
};

use waiver_core::{
    EntityRef, Exception, ExceptionId, Identity,
    audit::{EventView, Seal},
};

use crate::{Commit, StoreError, TokenRecord};

/// The tampered records a store's reads found, by key: what `/readyz`, `/metrics` and the
/// UI report. Shared by the clones of one store.
#[derive(Debug, Clone, Default)]
pub struct Quarantine {
    found: Arc<Mutex<BTreeMap<String, Tampered>>>,
    /// How many are held, read without the lock on the common path (none).
    held: Arc<AtomicUsize>,
}

impl Quarantine {
    /// Notes what a read found for `key`: tampered (kept, logged once) or intact (dropped).
    pub fn note(&self, key: &str, outcome: Result<(), &Tampered>) {
        if outcome.is_ok() && self.held.load(Ordering::Relaxed) == 0 {
            return;
        }
        let Ok(mut found) = self.found.lock() else { return };
        match outcome {
            Ok(()) => {
                found.remove(key);
            }
            Err(tampered) => {
                if found.insert(key.to_owned(), tampered.clone()).is_none() {
                    tracing::error!(record = %tampered.key, reason = %tampered.reason,
                        "a stored record does not match the audit log; it grants nothing until restored");
                }
            }
        }
        self.held.store(found.len(), Ordering::Relaxed);
    }

    /// Reads checked rows, noting each outcome: tampered rows are left out.
    pub fn keep_intact<R, T>(
        &self,
        rows: &[R],
        read: impl Fn(&R) -> Result<Result<T, Tampered>, StoreError>,
        key: impl Fn(&T) -> String,
    ) -> Result<Vec<T>, StoreError> {
        let mut kept = Vec::with_capacity(rows.len());
        for row in rows {
            match read(row)? {
                Ok(value) => {
                    self.note(&key(&value), Ok(()));
                    kept.push(value);
                }
                Err(tampered) => self.note(&tampered.key.clone(), Err(&tampered)),
            }
        }
        Ok(kept)
    }

    /// Reads one checked row, noting the outcome: a tampered one is refused.
    pub fn one_intact<R, T>(
        &self,
        row: Option<&R>,
        read: impl Fn(&R) -> Result<Result<T, Tampered>, StoreError>,
        key: impl Fn(&T) -> String,
    ) -> Result<Option<T>, StoreError> {
        let Some(row) = row else { return Ok(None) };
        match read(row)? {
            Ok(value) => {
                self.note(&key(&value), Ok(()));
                Ok(Some(value))
            }
            Err(tampered) => {
                self.note(&tampered.key.clone(), Err(&tampered));
                Err(StoreError::Tampered(tampered))
            }
        }
    }

    /// Every record held, in key order.
    pub fn list(&self) -> Vec<Tampered> {
        self.found.lock().map(|found| found.values().cloned().collect()).unwrap_or_default()
    }
}

/// A record that does not match the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("record `{key}` does not match the audit log: {reason}")]
pub struct Tampered {
    /// `exception:EXC-…`, `identity:TYPE:ID` or `token:tok_…`.
    pub key: String,
    pub reason: String,
}

impl Tampered {
    pub fn new(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self { key: key.into(), reason: reason.into() }
    }

    /// The identity this record is about, if it is an identity record.
    pub fn identity(&self) -> Option<&str> {
        self.key.strip_prefix("identity:")
    }
}

pub fn exception_key(id: ExceptionId) -> String {
    format!("exception:{id}")
}

pub fn identity_key(entity: &EntityRef) -> String {
    format!("identity:{entity}")
}

pub fn token_key(id: &str) -> String {
    format!("token:{id}")
}

/// Lowercase hex SHA-256 of a record's stored text.
pub fn digest(text: &str) -> String {
    waiver_core::audit::digest(text)
}

/// An exception's stored text ([`waiver_proto::stored::exception_text`]).
pub fn exception_text(e: &Exception) -> Result<String, StoreError> {
    waiver_proto::stored::exception_text(e).map_err(|err| StoreError::Other(format!("cannot encode `{}`: {err}", e.id)))
}

/// An identity's stored text ([`waiver_proto::stored::identity_text`]).
pub fn identity_text(i: &Identity) -> Result<String, StoreError> {
    waiver_proto::stored::identity_text(i)
        .map_err(|err| StoreError::Other(format!("cannot encode identity `{}`: {err}", i.entity)))
}

/// A token's sealed text: its columns, in order, as a JSON array (tokens are stored as
/// columns, not as a document).
pub fn token_text(t: &TokenRecord) -> String {
    let mut fields = vec![
        serde_json::json!(t.id),
        serde_json::json!(t.secret_hash),
        serde_json::json!(t.principal),
        serde_json::json!(t.roles.join(",")),
        serde_json::json!(t.label),
        serde_json::json!(t.created_at),
        serde_json::json!(t.revoked_at),
        serde_json::json!(t.issued_by),
    ];
    // Only when set: a token from before expiry keeps the text its seal was made over.
    if let Some(expires_at) = &t.expires_at {
        fields.push(serde_json::json!(expires_at));
    }
    // Only when set, and tagged (an object, never a string): unambiguous with or without
    // an expiry before it.
    if !t.scopes.is_empty() {
        fields.push(serde_json::json!({ "scopes": t.scopes.join(",") }));
    }
    serde_json::Value::Array(fields).to_string()
}

/// An exception from its row, once the row matched its seal: the row's `id` column must
/// name the record it holds; usage comes from its columns.
pub fn exception_from_text(id: &str, text: &str, usage: waiver_core::exception::Usage) -> Result<Exception, Tampered> {
    let key = format!("exception:{id}");
    let parsed = serde_json::from_str::<waiver_proto::Exception>(text)
        .map_err(|e| e.to_string())
        .and_then(|r| Exception::try_from(r).map_err(|e| e.to_string()));
    match parsed {
        Ok(mut e) if e.id.to_string() == id => {
            e.usage = usage;
            Ok(e)
        }
        Ok(e) => Err(Tampered::new(key, format!("its row holds the record of `{}`", e.id))),
        Err(e) => Err(Tampered::new(key, format!("it does not parse: {e}"))),
    }
}

/// An exception's terms from its row, once the row matched its seal: the row's `id` column
/// must name the record it holds, as for [`exception_from_text`].
pub fn exception_terms_from_text(id: &str, text: &str) -> Result<waiver_core::Terms, Tampered> {
    match waiver_proto::stored::exception_terms(text) {
        Ok(t) if t.id.to_string() == id => Ok(t),
        Ok(t) => Err(Tampered::new(exception_key_str(id), format!("its row holds the record of `{}`", t.id))),
        Err(e) => Err(Tampered::new(exception_key_str(id), format!("it does not parse: {e}"))),
    }
}

fn exception_key_str(id: &str) -> String {
    format!("exception:{id}")
}

/// An identity from its row, once the row matched its seal.
pub fn identity_from_text(entity: &str, text: &str) -> Result<Identity, Tampered> {
    let key = format!("identity:{entity}");
    let parsed = serde_json::from_str::<waiver_proto::Identity>(text)
        .map_err(|e| e.to_string())
        .and_then(|r| Identity::try_from(r).map_err(|e| e.to_string()));
    match parsed {
        Ok(i) if i.entity.to_string() == entity => Ok(i),
        Ok(i) => Err(Tampered::new(key, format!("its row holds the record of `{}`", i.entity))),
        Err(e) => Err(Tampered::new(key, format!("it does not parse: {e}"))),
    }
}

/// Compares an exception row's index columns (`subject`, `owner`, `state`, `expires_at`,
/// `due_at`, as stored) with its record: a list filtered on an edited column would
/// mislead. `audit verify` runs it on every row.
pub fn check_columns(e: &Exception, stored: [Option<&str>; 5]) -> Result<(), Tampered> {
    let expected = [
        ("subject", e.subject.to_string()),
        ("owner", e.owner.as_str().to_owned()),
        ("state", e.state.as_str().to_owned()),
        ("expires_at", waiver_core::canonical::timestamp(e.expires_at)),
        ("due_at", waiver_core::canonical::timestamp(e.due_at())),
    ];
    for ((name, expected), stored) in expected.into_iter().zip(stored) {
        if stored != Some(expected.as_str()) {
            return Err(Tampered::new(
                exception_key(e.id),
                format!("its `{name}` column says `{}`, its record `{expected}`", stored.unwrap_or("")),
            ));
        }
    }
    Ok(())
}

/// What a commit writes, with the seal of each write: texts in the order of the commit's
/// writes, and for each of its events the seal it carries.
#[derive(Debug, Default)]
pub struct Plan {
    pub exceptions: Vec<Sealed>,
    pub identities: Vec<Sealed>,
    pub tokens: Vec<Sealed>,
    pub artifacts: Vec<Sealed>,
    /// One per event of the commit, in order.
    pub event_seals: Vec<Option<Seal>>,
}

/// A record's stored text and the index (in the commit) of the event that seals it.
#[derive(Debug)]
pub struct Sealed {
    pub text: String,
    pub event: usize,
}

impl Sealed {
    /// The sequence number its sealing event gets when the commit's first event is `first`.
    pub fn seq(&self, first: u64) -> u64 {
        first + self.event as u64
    }
}

/// Assigns each write of `commit` the event that seals it: an exception's last event in
/// the commit that names it; an identity's or token's next event that names no exception.
/// A write no event can seal is refused: every change to a record is an event.
pub fn plan(commit: &Commit) -> Result<Plan, StoreError> {
    let mut seals: Vec<Option<Seal>> = vec![None; commit.events.len()];
    let take = |seals: &mut Vec<Option<Seal>>, event: Option<usize>, key: String, text: String| {
        let slot = event.and_then(|i| seals.get_mut(i)).filter(|slot| slot.is_none());
        let (Some(event), Some(slot)) = (event, slot) else {
            return Err(StoreError::Other(format!("the write of `{key}` has no event of its own to seal it")));
        };
        *slot = Some(Seal { digest: digest(&text), key });
        Ok(Sealed { text, event })
    };
    // From the last write back, each takes the last event naming its exception that no later
    // write took: the final row is sealed by the commit's last event about it. (Indexed by
    // exception, so a commit of 10,000 filings costs 10,000 steps, not 10,000².)
    let mut by_exception: std::collections::HashMap<ExceptionId, Vec<usize>> = std::collections::HashMap::new();
    for (i, event) in commit.events.iter().enumerate() {
        if let Some(id) = event.exception_id {
            by_exception.entry(id).or_default().push(i);
        }
    }
    let mut exceptions = Vec::with_capacity(commit.exceptions.len());
    for write in commit.exceptions.iter().rev() {
        let id = write.value.id;
        let event = by_exception.get_mut(&id).and_then(Vec::pop);
        exceptions.push(take(&mut seals, event, exception_key(id), exception_text(&write.value)?)?);
    }
    exceptions.reverse();
    // Identity and token writes take the commit's events that name no exception, in order.
    let mut free = commit.events.iter().enumerate().filter(|(_, e)| e.exception_id.is_none()).map(|(i, _)| i);
    let mut identities = Vec::with_capacity(commit.identities.len());
    for write in &commit.identities {
        let text = identity_text(&write.value)?;
        identities.push(take(&mut seals, free.next(), identity_key(&write.value.entity), text)?);
    }
    let mut tokens = Vec::with_capacity(commit.tokens.len());
    for token in &commit.tokens {
        tokens.push(take(&mut seals, free.next(), token_key(&token.id), token_text(token))?);
    }
    let mut artifacts = Vec::with_capacity(commit.artifacts.len());
    for artifact in &commit.artifacts {
        artifacts.push(take(&mut seals, free.next(), artifact.kind.clone(), artifact.body.clone())?);
    }
    Ok(Plan { exceptions, identities, tokens, artifacts, event_seals: seals })
}

/// Seals the rows of a store upgraded from a version without seals, as they are: one
/// `record.sealed` event each. Trusted on first use (nothing older can vouch for them), and
/// only while no event of the log carries a seal ([`crate::StoreRead::unsealed`]).
pub fn legacy_commit(unsealed: crate::Unsealed, at: jiff::Timestamp) -> Commit {
    let event = |exception_id: Option<ExceptionId>, key: String| waiver_core::audit::EventDraft {
        at,
        actor: waiver_core::Principal::system(),
        event_type: "record.sealed".into(),
        exception_id,
        data: serde_json::json!({
            "record": key,
            "reason": "written before records were sealed; sealed as found at the upgrade",
        }),
    };
    let mut commit = Commit::default();
    for e in unsealed.exceptions {
        commit.events.push(event(Some(e.id), exception_key(e.id)));
        let version = e.version;
        commit.exceptions.push(crate::Write::update(e, version));
    }
    for i in unsealed.identities {
        commit.events.push(event(None, identity_key(&i.entity)));
        let version = i.version;
        commit.identities.push(crate::Write::update(i, version));
    }
    for t in unsealed.tokens {
        commit.events.push(event(None, token_key(&t.id)));
        commit.tokens.push(t);
    }
    commit
}

/// A stored row as a read finds it: the record's key and text, the sequence number it says
/// sealed it, that event's columns (if it exists), and the newest event sealing the same key.
#[derive(Debug, Clone, Copy)]
pub struct Row<'a> {
    pub key: &'a str,
    pub text: &'a str,
    pub sealed_seq: Option<u64>,
    pub event: Option<EventView<'a>>,
    pub last_sealed: Option<u64>,
    /// Whether `event` holds the stored body and hashes, to check that the event is intact.
    /// Bulk reads (a node loading its register) take only the event's seal columns: reading
    /// a million event bodies scattered over the log is what would cost, and `audit verify`
    /// checks every seal column against its hashed body.
    pub with_body: bool,
}

/// Checks a row against the log (see the module's documentation).
pub fn check(row: &Row<'_>) -> Result<(), Tampered> {
    let fail = |reason: String| Err(Tampered::new(row.key, reason));
    let Some(seq) = row.sealed_seq else {
        return fail("no event of the log sealed it".into());
    };
    let Some(event) = row.event else {
        return fail(format!("event {seq}, which sealed it, is not in the log"));
    };
    if event.seq != seq || (row.with_body && !event.intact()) {
        return fail(format!("event {seq}, which sealed it, is not intact"));
    }
    if event.seal_key != Some(row.key) {
        return fail(format!("event {seq} sealed another record"));
    }
    if event.seal_digest != Some(digest(row.text).as_str()) {
        return fail(format!("it differs from what event {seq} sealed"));
    }
    match row.last_sealed {
        Some(last) if last > seq => fail(format!("event {last} changed it after event {seq}, and the row is older")),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use jiff::Timestamp;
    use waiver_core::{
        Principal,
        audit::{EventDraft, GENESIS_HASH},
    };

    use super::*;

    #[test]
    fn terms_parsed_from_a_stored_text_are_the_records_own() {
        use waiver_core::{CompensatingControl, ControlKind, EntityRef, ResourceScope, State, Waived};
        let mut e = crate::contract::sample_exception();
        e.id = waiver_core::ExceptionId::new(7);
        e.state = State::Approved;
        e.condition = Some("context.tier == \"gold\" && context.note like \"ü*\"".into());
        e.waives = vec![Waived::DefaultDeny, Waived::parse("forbid-prod-db").unwrap()];
        e.scope.actions = vec!["read".into(), "write".into()];
        e.scope.resources = vec![
            ResourceScope {
                entity: EntityRef::parse_parts("r", "Service", "orders \"prod\"").unwrap(),
                descendants: true,
            },
            ResourceScope {
                entity: EntityRef::parse_parts("r", "App::Database", "ünïcode").unwrap(),
                descendants: false,
            },
        ];
        e.compensating_controls = vec![
            CompensatingControl { kind: ControlKind::Mfa, description: "a \"quoted\" one".into(), enforced: true },
            CompensatingControl { kind: ControlKind::ReadOnly, description: "attested".into(), enforced: false },
            CompensatingControl { kind: ControlKind::Other, description: "other".into(), enforced: true },
            CompensatingControl { kind: ControlKind::ExtraLogging, description: "logged".into(), enforced: true },
        ];
        let text = exception_text(&e).unwrap();
        let id = e.id.to_string();
        let terms = exception_terms_from_text(&id, &text).unwrap();
        assert_eq!(terms, e.terms());
        assert_eq!(terms.obligations, vec![ControlKind::Mfa, ControlKind::ExtraLogging]);
        // A checkpoint line reads back as the same terms, through the same parse.
        let line = waiver_proto::stored::terms_text(&terms);
        assert!(!line.contains('\n'), "one line: {line}");
        assert_eq!(exception_terms_from_text(&id, &line).unwrap(), terms);
        assert!(line.len() < text.len() / 2, "{} against {}", line.len(), text.len());
        // The row must hold the record it names, and the record must parse.
        let other = exception_terms_from_text("EXC-000999", &text);
        assert!(matches!(&other, Err(t) if t.reason.contains("holds the record of")), "{other:?}");
        let bad = exception_terms_from_text(&id, &text.replace("\"approved\"", "\"granted\""));
        assert!(matches!(&bad, Err(t) if t.reason.contains("does not parse")), "{bad:?}");
    }

    fn sealed_event(seq: u64, key: &str, text: &str) -> waiver_core::audit::EventRecord {
        EventDraft {
            at: Timestamp::UNIX_EPOCH,
            actor: Principal::system(),
            event_type: "identity.registered".into(),
            exception_id: None,
            data: serde_json::json!({}),
        }
        .seal_with(seq, GENESIS_HASH, Some(Seal { digest: digest(text), key: key.into() }))
    }

    #[test]
    fn a_row_matches_its_seal_until_anything_changes() {
        let event = sealed_event(5, "identity:ServiceAccount:etl", "{\"status\":\"offboarded\"}");
        let row = Row {
            key: "identity:ServiceAccount:etl",
            text: "{\"status\":\"offboarded\"}",
            sealed_seq: Some(5),
            event: Some(event.view()),
            last_sealed: Some(5),
            with_body: true,
        };
        assert_eq!(check(&row), Ok(()));
        let edited = Row { text: "{\"status\":\"active\"}", ..row };
        assert!(check(&edited).unwrap_err().reason.contains("differs from what event 5 sealed"));
        let rolled_back = Row { last_sealed: Some(9), ..row };
        assert!(check(&rolled_back).unwrap_err().reason.contains("event 9 changed it"));
        let other = Row { key: "identity:ServiceAccount:web", ..row };
        assert!(check(&other).unwrap_err().reason.contains("sealed another record"));
        assert!(check(&Row { sealed_seq: None, ..row }).is_err());
        assert!(check(&Row { event: None, ..row }).is_err());
        let mut forged = event.clone();
        forged.seal = Some(Seal { digest: digest("{\"status\":\"active\"}"), key: row.key.into() });
        let forged_row = Row { text: "{\"status\":\"active\"}", event: Some(forged.view()), ..row };
        assert!(check(&forged_row).unwrap_err().reason.contains("not intact"), "a seal column edited to match");
    }

    #[test]
    fn a_token_from_before_expiry_keeps_the_text_its_seal_was_made_over() {
        let mut token = TokenRecord {
            id: "tok_1".into(),
            secret_hash: "ab".into(),
            principal: "dana".into(),
            roles: vec!["admin".into(), "pep".into()],
            label: "ci".into(),
            created_at: "2026-01-01T00:00:00Z".into(),
            revoked_at: None,
            issued_by: Some("alex".into()),
            expires_at: None,
            scopes: Vec::new(),
            last_used_at: None,
        };
        assert_eq!(
            token_text(&token),
            r#"["tok_1","ab","dana","admin,pep","ci","2026-01-01T00:00:00Z",null,"alex"]"#,
            "the text sealed before tokens expired"
        );
        token.expires_at = Some("2026-04-01T00:00:00Z".into());
        assert!(token_text(&token).ends_with(r#""alex","2026-04-01T00:00:00Z"]"#), "an expiry is sealed");
        token.scopes = vec!["decide".into(), "read".into()];
        assert!(
            token_text(&token).ends_with(r#""2026-04-01T00:00:00Z",{"scopes":"decide,read"}]"#),
            "scopes are sealed, tagged"
        );
        token.expires_at = None;
        assert!(token_text(&token).ends_with(r#""alex",{"scopes":"decide,read"}]"#), "without an expiry too");
    }

    #[test]
    fn every_write_needs_an_event_of_its_own() {
        let token = TokenRecord {
            id: "tok_1".into(),
            secret_hash: "0".repeat(64),
            principal: "dana".into(),
            roles: vec!["admin".into()],
            label: "ci".into(),
            created_at: "2026-01-01T00:00:00Z".into(),
            revoked_at: None,
            issued_by: None,
            expires_at: None,
            scopes: Vec::new(),
            last_used_at: None,
        };
        let commit = Commit { tokens: vec![token], ..Commit::default() };
        assert!(matches!(plan(&commit), Err(StoreError::Other(m)) if m.contains("no event of its own")));
    }
}

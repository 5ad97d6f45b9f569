//! The audit chain: every change is an event linked to the one before by SHA-256.
//!
//! An event's hash is `SHA-256(prev_hash || canonical_bytes)`, written as lowercase hex,
//! where `prev_hash` is the previous event's hash as 64 ASCII hex digits (64 zeros for the
//! first event) and `canonical_bytes` is the canonical JSON ([`crate::canonical`]) of
//!
//! ```text
//! {"actor":…,"at":…,"data":…,"exception_id":…,"seq":…,"type":…}
//! ```
//!
//! with `exception_id` left out when the event concerns no exception, `at` in the log's
//! fixed timestamp form and `data` the canonical JSON of the payload. An event that produced
//! a stored record (an exception, identity or token) also carries `"seal":"DIGEST KEY"`,
//! sorted between `exception_id` and `seq`: the SHA-256 of the record's stored text after
//! the change and the record's key ([`Seal`]), so the log says what every record must be. The store keeps those
//! canonical bytes as they were hashed (the event's `body`) beside `seq`, `prev_hash`,
//! `hash` and an `exception_id` index, and [`ChainVerifier`] hashes exactly the stored
//! text and checks the index columns against the body, so changing, deleting or reordering
//! any stored byte breaks the chain at that event. docs/design/audit-chain.md has the worked
//! example that the golden test below pins.

use jiff::Timestamp;
use sha2::{Digest, Sha256};

use crate::{ExceptionId, Principal, canonical};

/// The `prev_hash` of the first event.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// An event before the store gives it its place in the chain.
#[derive(Debug, Clone, PartialEq)]
pub struct EventDraft {
    pub at: Timestamp,
    pub actor: Principal,
    pub event_type: String,
    pub exception_id: Option<ExceptionId>,
    pub data: serde_json::Value,
}

/// Lowercase hex SHA-256 of a text: a record's seal digest, an artifact's address.
pub fn digest(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// What a record must be after an event: the SHA-256 (lowercase hex) of the record's stored
/// text and the record's key (`exception:EXC-…`, `identity:TYPE:ID`, `token:tok_…`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Seal {
    pub digest: String,
    pub key: String,
}

impl Seal {
    /// The body's form: `DIGEST KEY`.
    pub fn text(&self) -> String {
        format!("{} {}", self.digest, self.key)
    }

    /// Reads the body's form back.
    pub fn parse(text: &str) -> Option<Self> {
        let (digest, key) = text.split_once(' ')?;
        (digest.len() == 64 && digest.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) && !key.is_empty())
            .then(|| Self { digest: digest.to_owned(), key: key.to_owned() })
    }
}

/// An event as stored and served: the parsed fields, and the exact bytes that were hashed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRecord {
    pub seq: u64,
    pub at: String,
    pub actor: String,
    pub event_type: String,
    pub exception_id: Option<String>,
    /// Canonical JSON text of the payload.
    pub data: String,
    /// The record this event sealed, if it changed one.
    pub seal: Option<Seal>,
    /// The canonical bytes of the whole event (without its hashes): what was hashed.
    pub body: String,
    pub prev_hash: String,
    pub hash: String,
}

impl EventDraft {
    /// Places the draft after the event with hash `prev_hash`, as number `seq`.
    pub fn seal(self, seq: u64, prev_hash: &str) -> EventRecord {
        self.seal_with(seq, prev_hash, None)
    }

    /// [`EventDraft::seal`], for the event that produced the record `seal` describes.
    pub fn seal_with(self, seq: u64, prev_hash: &str, seal: Option<Seal>) -> EventRecord {
        let mut record = EventRecord {
            seq,
            at: canonical::timestamp(self.at),
            actor: self.actor.to_string(),
            event_type: self.event_type,
            exception_id: self.exception_id.map(|id| id.to_string()),
            data: canonical::to_string(&self.data),
            seal,
            body: String::new(),
            prev_hash: prev_hash.to_owned(),
            hash: String::new(),
        };
        record.body = record.canonical_bytes();
        record.hash = hex::encode(record.view().digest());
        record
    }
}

impl EventRecord {
    /// Rebuilds a record from what the store keeps, parsing the body. A body that does not
    /// parse, or disagrees with the stored sequence number, is reported, not guessed at.
    pub fn from_stored(
        seq: u64,
        exception_id: Option<String>,
        body: String,
        prev_hash: String,
        hash: String,
    ) -> Result<Self, String> {
        let parsed: serde_json::Value =
            serde_json::from_str(&body).map_err(|e| format!("event {seq} has an unreadable body: {e}"))?;
        let text = |key: &str| {
            parsed
                .get(key)
                .and_then(|v| v.as_str())
                .map(str::to_owned)
                .ok_or_else(|| format!("event {seq} has no `{key}`"))
        };
        if parsed.get("seq").and_then(serde_json::Value::as_u64) != Some(seq) {
            return Err(format!("event {seq} has a body numbered otherwise"));
        }
        let seal = match parsed.get("seal") {
            None => None,
            Some(v) => {
                Some(v.as_str().and_then(Seal::parse).ok_or_else(|| format!("event {seq} has a malformed `seal`"))?)
            }
        };
        Ok(Self {
            seq,
            at: text("at")?,
            actor: text("actor")?,
            event_type: text("type")?,
            exception_id,
            data: parsed.get("data").map(canonical::to_string).ok_or_else(|| format!("event {seq} has no `data`"))?,
            seal,
            body,
            prev_hash,
            hash,
        })
    }

    /// The stored columns, borrowed, as the verifier reads them.
    pub fn view(&self) -> EventView<'_> {
        EventView {
            seq: self.seq,
            exception_id: self.exception_id.as_deref(),
            seal_digest: self.seal.as_ref().map(|s| s.digest.as_str()),
            seal_key: self.seal.as_ref().map(|s| s.key.as_str()),
            body: &self.body,
            prev_hash: &self.prev_hash,
            hash: &self.hash,
        }
    }

    /// The canonical bytes of the event, without its hashes, from its fields.
    pub fn canonical_bytes(&self) -> String {
        let mut out = String::with_capacity(96 + self.data.len() + self.actor.len());
        out.push_str("{\"actor\":");
        canonical::write_str(&self.actor, &mut out);
        out.push_str(",\"at\":");
        canonical::write_str(&self.at, &mut out);
        out.push_str(",\"data\":");
        out.push_str(&self.data);
        if let Some(id) = &self.exception_id {
            out.push_str(",\"exception_id\":");
            canonical::write_str(id, &mut out);
        }
        if let Some(seal) = &self.seal {
            out.push_str(",\"seal\":");
            canonical::write_str(&seal.text(), &mut out);
        }
        out.push_str(",\"seq\":");
        out.push_str(&self.seq.to_string());
        out.push_str(",\"type\":");
        canonical::write_str(&self.event_type, &mut out);
        out.push('}');
        out
    }
}

/// An event's stored columns, borrowed from wherever they are kept, so a verifier can hash a
/// batch in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventView<'a> {
    pub seq: u64,
    /// The index column; must agree with the body.
    pub exception_id: Option<&'a str>,
    /// The seal columns (digest, key); must agree with the body.
    pub seal_digest: Option<&'a str>,
    pub seal_key: Option<&'a str>,
    pub body: &'a str,
    pub prev_hash: &'a str,
    pub hash: &'a str,
}

impl EventView<'_> {
    /// `SHA-256(prev_hash || body)`.
    pub fn digest(&self) -> [u8; 32] {
        let mut hasher = Sha256::new();
        hasher.update(self.prev_hash.as_bytes());
        hasher.update(self.body.as_bytes());
        hasher.finalize().into()
    }

    /// Whether this event alone is intact: its hash matches its contents and its columns
    /// agree with its body. (Whether it links to its predecessor is the chain's question.)
    pub fn intact(&self) -> bool {
        let mut stored = [0u8; 32];
        hex::decode_to_slice(self.hash, &mut stored).is_ok() && self.digest() == stored && self.columns_match_body()
    }

    /// Whether the index columns (`seq`, `exception_id`, the seal) say what the hashed body
    /// says. The body ends `…"data":{…}[,"exception_id":"ID"][,"seal":"S"],"seq":N,"type":"T"}`;
    /// `data` is an object, so what precedes `,"seq":` is the seal, the exception id or the
    /// data's `}` — and a string's inner quotes are escaped, so none can pose as another.
    pub fn columns_match_body(&self) -> bool {
        // The key is near the end: scanning back from there beats a general search.
        const SEQ_KEY: &[u8] = b",\"seq\":";
        let Some(seq_at) = self.body.as_bytes().windows(SEQ_KEY.len()).rposition(|w| w == SEQ_KEY) else {
            return false;
        };
        let (head, tail) = self.body.split_at(seq_at);
        let digits = tail.get(7..).unwrap_or_default();
        let digits = digits.get(..digits.find(',').unwrap_or(digits.len())).unwrap_or_default();
        if digits.parse::<u64>().ok() != Some(self.seq) {
            return false;
        }
        let head = match (self.seal_digest, self.seal_key) {
            (Some(digest), Some(key)) => {
                // Keys and digests need no escaping in practice: match the pieces in place
                // (a verify checks a million events); otherwise build the escaped text.
                let plain = |t: &str| !t.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20);
                let rest = if plain(digest) && plain(key) {
                    head.strip_suffix('"')
                        .and_then(|h| h.strip_suffix(key))
                        .and_then(|h| h.strip_suffix(' '))
                        .and_then(|h| h.strip_suffix(digest))
                        .and_then(|h| h.strip_suffix(",\"seal\":\""))
                } else {
                    let mut expected = String::with_capacity(16 + digest.len() + key.len());
                    expected.push_str(",\"seal\":");
                    canonical::write_str(&format!("{digest} {key}"), &mut expected);
                    head.strip_suffix(expected.as_str())
                };
                match rest {
                    Some(rest) => rest,
                    None => return false,
                }
            }
            // A seal ends in a quote, which neither the data's `}` nor an exception id's suffix
            // check below accepts: dropping the columns of a sealed event breaks the chain.
            (None, None) => head,
            _ => return false,
        };
        match self.exception_id {
            Some(id) => head
                .strip_suffix('"')
                .and_then(|h| h.strip_suffix(id))
                .is_some_and(|h| h.ends_with(",\"exception_id\":\"")),
            None => head.ends_with('}'),
        }
    }
}

/// Where and why the chain breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the audit chain is broken at event {seq}: {reason}")]
pub struct BrokenLink {
    pub seq: u64,
    pub reason: String,
}

/// The end of a verified chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainHead {
    pub n_events: u64,
    /// The last event's hash, or [`GENESIS_HASH`] for an empty log.
    pub head_hash: String,
}

/// Recomputes the chain one event at a time, in sequence order.
#[derive(Debug)]
pub struct ChainVerifier {
    next_seq: u64,
    prev_hash: String,
}

impl Default for ChainVerifier {
    fn default() -> Self {
        Self { next_seq: 1, prev_hash: GENESIS_HASH.to_owned() }
    }
}

impl ChainVerifier {
    /// Continues a chain already verified up to `head` (for verifying only what was added).
    pub fn resume(head: &ChainHead) -> Self {
        Self { next_seq: head.n_events + 1, prev_hash: head.head_hash.clone() }
    }

    /// Checks the next event: its number follows the last, it links to the last, and its
    /// hash matches its contents.
    pub fn push(&mut self, event: &EventRecord) -> Result<(), BrokenLink> {
        self.push_view(&event.view())
    }

    /// [`ChainVerifier::push`] for a borrowed event.
    pub fn push_view(&mut self, event: &EventView<'_>) -> Result<(), BrokenLink> {
        check_link(self.next_seq, &self.prev_hash, event)?;
        check_contents(event)?;
        self.next_seq += 1;
        self.prev_hash.clear();
        self.prev_hash.push_str(event.hash);
        Ok(())
    }

    /// Joins a run verified on its own ([`verify_run`]) to the chain: the same answer as
    /// pushing its events one by one, the first broken event included.
    pub fn push_run(&mut self, run: &Run) -> Result<(), BrokenLink> {
        let first = EventView {
            seq: run.first_seq,
            exception_id: None,
            seal_digest: None,
            seal_key: None,
            body: "",
            prev_hash: &run.first_prev_hash,
            hash: "",
        };
        check_link(self.next_seq, &self.prev_hash, &first)?;
        if let Some(broken) = &run.broken {
            return Err(broken.clone());
        }
        self.next_seq = run.last_seq + 1;
        self.prev_hash.clone_from(&run.last_hash);
        Ok(())
    }

    /// The sequence number the next event must carry.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    pub fn finish(self) -> ChainHead {
        ChainHead { n_events: self.next_seq - 1, head_hash: self.prev_hash }
    }
}

/// Whether `event` may follow the event numbered `expected - 1` whose hash is `prev_hash`.
fn check_link(expected: u64, prev_hash: &str, event: &EventView<'_>) -> Result<(), BrokenLink> {
    if event.seq != expected {
        let reason = if event.seq > expected {
            format!("event {expected} is missing (the next stored event is {})", event.seq)
        } else {
            format!("event {} is stored out of order", event.seq)
        };
        return Err(BrokenLink { seq: expected, reason });
    }
    if event.prev_hash != prev_hash {
        return Err(BrokenLink {
            seq: expected,
            reason: format!("its prev_hash does not match the hash of event {}", expected - 1),
        });
    }
    Ok(())
}

/// Whether `event`'s hash matches its contents and its columns agree with its body.
fn check_contents(event: &EventView<'_>) -> Result<(), BrokenLink> {
    // Compared as stored text: only the lowercase hex waiver writes matches.
    let mut computed = [0u8; 64];
    let encoded = hex::encode_to_slice(event.digest(), &mut computed).is_ok();
    if !encoded || event.hash.as_bytes() != computed {
        return Err(BrokenLink { seq: event.seq, reason: "its hash does not match its contents".to_owned() });
    }
    if !event.columns_match_body() {
        return Err(BrokenLink {
            seq: event.seq,
            reason: "its stored sequence number, exception id or seal disagrees with its hashed body".to_owned(),
        });
    }
    Ok(())
}

/// Consecutive events verified without their predecessor, so that runs can be hashed in
/// parallel and joined in order by [`ChainVerifier::push_run`]: hashing is per event, only
/// the link between runs is sequential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    first_seq: u64,
    first_prev_hash: String,
    last_seq: u64,
    last_hash: String,
    /// The first event in the run that is broken (its link inside the run or its contents).
    broken: Option<BrokenLink>,
}

/// Verifies `events` (in stored order) as a run; `None` when there are none.
pub fn verify_run(events: &[EventView<'_>]) -> Option<Run> {
    let (first, last) = (events.first()?, events.last()?);
    let mut run = Run {
        first_seq: first.seq,
        first_prev_hash: first.prev_hash.to_owned(),
        last_seq: last.seq,
        last_hash: last.hash.to_owned(),
        broken: None,
    };
    let mut previous: Option<&EventView<'_>> = None;
    for event in events {
        let checked = match previous {
            Some(previous) => check_link(previous.seq.saturating_add(1), previous.hash, event),
            None => Ok(()),
        }
        .and_then(|()| check_contents(event));
        if let Err(broken) = checked {
            run.broken = Some(broken);
            break;
        }
        previous = Some(event);
    }
    Some(run)
}

/// Verifies a whole chain held in memory.
pub fn verify<'a>(events: impl IntoIterator<Item = &'a EventRecord>) -> Result<ChainHead, BrokenLink> {
    let mut verifier = ChainVerifier::default();
    for event in events {
        verifier.push(event)?;
    }
    Ok(verifier.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn chain(n: usize) -> Vec<EventRecord> {
        let mut prev = GENESIS_HASH.to_owned();
        let start: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        (0..n)
            .map(|idx| {
                let draft = EventDraft {
                    at: start + jiff::SignedDuration::from_secs(idx as i64 * 61),
                    actor: Principal::parse("actor", if idx % 2 == 0 { "dana" } else { "lee" }).unwrap(),
                    event_type: if idx % 3 == 0 { "exception.requested" } else { "exception.approved" }.into(),
                    exception_id: (idx % 4 != 3).then(|| ExceptionId::new(idx as u64 / 2 + 1)),
                    data: json!({"comment": format!("step {idx} ✓"), "n": idx}),
                };
                // Every other event sealed a record, as the store's commits do.
                let seal = (idx % 2 == 0).then(|| Seal {
                    digest: hex::encode(Sha256::digest(idx.to_string())),
                    key: format!("exception:EXC-{idx:06} \"x\""),
                });
                let record = draft.seal_with(idx as u64 + 1, &prev, seal);
                prev.clone_from(&record.hash);
                record
            })
            .collect()
    }

    /// Pins the canonical bytes and hash of one event; docs/design/audit-chain.md shows it.
    #[test]
    fn golden_event_bytes_and_hash() {
        let draft = EventDraft {
            at: "2026-11-23T09:30:00.5+01:00".parse().unwrap(),
            actor: Principal::parse("actor", "dana").unwrap(),
            event_type: "exception.approved".into(),
            exception_id: Some(ExceptionId::new(42)),
            data: json!({"quorum_reached": true, "comment": "ok \"go\"", "by": "lee"}),
        };
        let record = draft.seal(7, GENESIS_HASH);
        assert_eq!(
            record.canonical_bytes(),
            r#"{"actor":"dana","at":"2026-11-23T08:30:00.500000Z","data":{"by":"lee","comment":"ok \"go\"","quorum_reached":true},"exception_id":"EXC-000042","seq":7,"type":"exception.approved"}"#
        );
        assert_eq!(record.hash, "cdbe98b7718d0f334ee876835de36a81979004ed13fc2ab1e4d944c4b2ad8197");
        assert_eq!(record.body, record.canonical_bytes());
        let stored = EventRecord::from_stored(
            7,
            record.exception_id.clone(),
            record.body.clone(),
            GENESIS_HASH.into(),
            record.hash.clone(),
        );
        assert_eq!(stored.unwrap(), record, "a stored event reads back whole");
    }

    #[test]
    fn an_intact_chain_verifies() {
        let events = chain(20);
        let head = verify(&events).unwrap();
        assert_eq!(head.n_events, 20);
        assert_eq!(head.head_hash, events[19].hash);
        assert_eq!(verify(&[]).unwrap().head_hash, GENESIS_HASH);
    }

    #[test]
    fn an_event_alone_is_intact_until_its_body_or_hash_changes() {
        let mut events = chain(3);
        assert!(events.iter().all(|e| e.view().intact()));
        events[1].body = events[1].body.replace("step 1", "step 9");
        assert!(!events[1].view().intact(), "an edited body");
        let first = if events[2].hash.starts_with('0') { "1" } else { "0" };
        events[2].hash.replace_range(0..1, first);
        assert!(!events[2].view().intact(), "an edited hash");
        assert!(events[0].view().intact(), "the others are untouched");
    }

    /// The stored columns a tamperer could edit.
    fn field_mut(event: &mut EventRecord, field: usize) -> &mut String {
        match (field, &mut event.exception_id, &mut event.seal) {
            (0, Some(id), _) => id,
            (6, _, Some(seal)) => &mut seal.digest,
            (7, _, Some(seal)) => &mut seal.key,
            (0..=3 | 6 | 7, _, _) => &mut event.body,
            (4, _, _) => &mut event.prev_hash,
            _ => &mut event.hash,
        }
    }

    #[test]
    fn a_seal_is_hashed_and_its_columns_are_checked() {
        let mut events = chain(4);
        assert!(events[0].body.contains(",\"seal\":\""), "{}", events[0].body);
        assert!(verify(&events).is_ok());
        let stored = &events[2];
        let read = EventRecord::from_stored(
            stored.seq,
            stored.exception_id.clone(),
            stored.body.clone(),
            stored.prev_hash.clone(),
            stored.hash.clone(),
        )
        .unwrap();
        assert_eq!(&read, stored, "the seal reads back from the body");
        // Dropping a sealed event's seal columns (so a rolled-back record would look current)
        // breaks the chain at that event; so does adding one to an unsealed event.
        events[2].seal = None;
        assert_eq!(verify(&events).unwrap_err().seq, 3);
        let mut events = chain(4);
        events[1].seal = events[0].seal.clone();
        assert_eq!(verify(&events).unwrap_err().seq, 2);
    }

    proptest! {
        #[test]
        fn any_single_byte_change_is_found_at_its_event(
            n in 1usize..12, which in any::<prop::sample::Index>(), field in 0usize..8,
            pos in any::<prop::sample::Index>(), byte in any::<u8>(),
        ) {
            let mut events = chain(n);
            let idx = which.index(n);
            let text = field_mut(&mut events[idx], field);
            let mut bytes = text.clone().into_bytes();
            let at = pos.index(bytes.len());
            prop_assume!(bytes[at] != byte);
            bytes[at] = byte;
            // The store holds text; a change that is not UTF-8 could not be stored as it.
            let Ok(changed) = String::from_utf8(bytes) else { return Ok(()) };
            *text = changed;
            let err = verify(&events).unwrap_err();
            prop_assert_eq!(err.seq, idx as u64 + 1);
        }

        #[test]
        fn seq_changes_deletions_and_reorderings_are_found(
            n in 2usize..12, a in any::<prop::sample::Index>(), b in any::<prop::sample::Index>(), op in 0u8..3,
        ) {
            let mut events = chain(n);
            let (a, b) = (a.index(n), b.index(n));
            let first_bad = match op {
                0 => { events.remove(a); a }
                1 => { prop_assume!(a != b); events.swap(a, b); a.min(b) }
                _ => { events[a].seq += 1 + b as u64; a }
            };
            // Removing the last event leaves a valid, shorter chain: that is what anchoring
            // the head hash elsewhere is for, so only removals before the end must be found.
            if op == 0 && a == n - 1 {
                prop_assert!(verify(&events).is_ok());
            } else {
                prop_assert_eq!(verify(&events).unwrap_err().seq, first_bad as u64 + 1);
            }
        }

        /// Runs verified apart and joined in order give exactly what one pass gives: the
        /// same head, or the same first broken event and reason.
        #[test]
        fn runs_joined_in_order_answer_as_one_pass(
            n in 1usize..16, cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..5),
            which in any::<prop::sample::Index>(), op in 0u8..5, field in 0usize..8,
        ) {
            let mut events = chain(n);
            let idx = which.index(n);
            match op {
                0 => {}
                1 => { events.remove(idx); }
                2 => { let j = (idx + 1) % n; events.swap(idx, j); }
                3 => { events[idx].seq += 2; }
                _ => { field_mut(&mut events[idx], field).push('x'); }
            }
            let mut at: Vec<usize> = cuts.iter().map(|c| c.index(events.len() + 1)).collect();
            at.extend([0, events.len()]);
            at.sort_unstable();
            at.dedup();
            let views: Vec<EventView<'_>> = events.iter().map(EventRecord::view).collect();
            let mut joined = ChainVerifier::default();
            let mut outcome = Ok(());
            for pair in at.windows(2) {
                if let Some(run) = verify_run(&views[pair[0]..pair[1]]) {
                    outcome = joined.push_run(&run);
                    if outcome.is_err() { break; }
                }
            }
            prop_assert_eq!(outcome.map(|()| joined.finish()), verify(&events));
        }
    }
}

//! Register checkpoints: the terms of every exception as of one event, so a node loads what
//! decides without reading and hashing a million whole records.
//!
//! A checkpoint is the [`Terms`] of every exception, one
//! [`terms_text`](waiver_proto::stored::terms_text) line each, in id order, cut into parts
//! of [`PART_SIZE`] stored by their SHA-256. Its manifest lists the parts' digests and the
//! event it is as of; the manifest is an artifact of the log (kind [`KIND`]) sealed by a
//! [`EVENT`] event. So every byte a node reads from a checkpoint is vouched for by the
//! chain, as a record's text is by its seal.
//!
//! A checkpoint says what the records were as of its event, nothing after. Loading one, a
//! node also reads every exception an event after it sealed — named by the log's seal
//! columns, not by the rows, so a row put back to an older version cannot hide a later
//! change — each checked against its own seal as any read is. One that fails is left out,
//! as from a full load. A checkpoint that does not match its manifest is refused whole
//! ([`StoreError::Tampered`]): the caller loads the records instead.

use std::collections::{BTreeMap, HashMap, VecDeque};

use jiff::Timestamp;
use waiver_core::{ExceptionId, Principal, Terms, audit::EventDraft};

use crate::{Artifact, Commit, RegisterParts, StoreError, StoreRead, seal, seal::Tampered};

/// The artifact kind (and seal key) of a checkpoint's manifest.
pub const KIND: &str = "register";
/// The artifact kind of a checkpoint's parts (not sealed themselves: the manifest lists them).
pub const PART_KIND: &str = "register.part";
/// The event that puts a checkpoint in force.
pub const EVENT: &str = "register.checkpoint";
/// Exceptions per part: a part is read, hashed and parsed as one piece (~5 MB).
pub const PART_SIZE: usize = 20_000;
/// Records changed since a checkpoint read per query.
const CHANGED_BATCH: usize = 5_000;

/// What a checkpoint holds, sealed by its event.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Every record as sealed at or before this event (some may be newer; those are read
    /// again as changes since).
    pub as_of: u64,
    pub count: u64,
    /// The SHA-256 of each part, in order.
    pub parts: Vec<String>,
}

impl Manifest {
    pub fn text(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// The newest checkpoint: the event that sealed it, and its manifest.
pub async fn newest(store: &dyn StoreRead) -> Result<Option<(u64, Manifest)>, StoreError> {
    let Some(in_force) = store.artifact_at(KIND, None).await? else { return Ok(None) };
    let manifest = serde_json::from_str(&in_force.body)
        .map_err(|e| tampered(in_force.seq, format!("its manifest does not parse: {e}")))?;
    Ok(Some((in_force.seq, manifest)))
}

fn tampered(seq: u64, reason: String) -> StoreError {
    StoreError::Tampered(Tampered::new(KIND, format!("the checkpoint of event {seq}: {reason}")))
}

/// Whether a register of `count` exceptions, `changed` of them sealed since the newest
/// checkpoint (`None`: there is none), is worth a new one. Small registers load fast
/// without one; a checkpoint is replaced once 2 % of the register changed since (each
/// record changed since is read whole at a load: ~30 µs against ~4 µs from a checkpoint).
pub fn due(count: usize, changed: Option<usize>) -> bool {
    const SMALLEST: usize = 10_000;
    match changed {
        None => count >= SMALLEST,
        Some(changed) => count.max(changed) >= SMALLEST && changed * 50 >= count,
    }
}

/// The commit that checkpoints `terms`: every exception's, in id order, each read (and
/// checked against its seal) after event `as_of`. `previous` is the manifest it replaces,
/// whose parts are kept for a node loading it now.
pub fn commit(terms: &[Terms], as_of: u64, previous: Option<&Manifest>, at: Timestamp) -> Commit {
    commit_in_parts(terms, as_of, previous, at, PART_SIZE)
}

/// [`commit`] with parts of `part_size` exceptions (tests cut a few into several).
pub fn commit_in_parts(
    terms: &[Terms],
    as_of: u64,
    previous: Option<&Manifest>,
    at: Timestamp,
    part_size: usize,
) -> Commit {
    let bodies: Vec<String> = terms
        .chunks(part_size.max(1))
        .map(|chunk| {
            let mut body = String::with_capacity(chunk.len() * 320);
            for t in chunk {
                body.push_str(&waiver_proto::stored::terms_text(t));
                body.push('\n');
            }
            body
        })
        .collect();
    let manifest =
        Manifest { as_of, count: terms.len() as u64, parts: bodies.iter().map(|b| seal::digest(b)).collect() };
    Commit {
        events: vec![EventDraft {
            at,
            actor: Principal::system(),
            event_type: EVENT.into(),
            exception_id: None,
            data: serde_json::json!({ "as_of": as_of, "exceptions": terms.len(), "parts": bodies.len() }),
        }],
        artifacts: vec![Artifact { kind: KIND.into(), body: manifest.text(), replaces: None }],
        register_parts: Some(RegisterParts { bodies, keep: previous.map(|m| m.parts.clone()).unwrap_or_default() }),
        ..Commit::default()
    }
}

/// Exception ids as the log's `exception_id` column holds them, in id order.
pub fn sealed_ids(ids: Vec<String>) -> Result<Vec<ExceptionId>, StoreError> {
    let mut parsed = ids
        .iter()
        .map(|id| id.parse().map_err(|e| StoreError::Corrupt(format!("an event names exception `{id}`: {e}"))))
        .collect::<Result<Vec<ExceptionId>, _>>()?;
    parsed.sort_unstable();
    parsed.dedup();
    Ok(parsed)
}

/// A checkpoint's part, checked against its digest and parsed: terms in strictly
/// increasing id order.
fn parse_part(seq: u64, index: usize, digest: &str, body: &str) -> Result<Vec<Terms>, StoreError> {
    if seal::digest(body) != digest {
        return Err(tampered(seq, format!("part {index} does not hash to its digest")));
    }
    let mut terms: Vec<Terms> = Vec::with_capacity(PART_SIZE);
    for (line_no, line) in body.lines().enumerate() {
        let t = waiver_proto::stored::exception_terms(line)
            .map_err(|e| tampered(seq, format!("part {index}, line {}: {e}", line_no + 1)))?;
        if terms.last().is_some_and(|last| last.id >= t.id) {
            return Err(tampered(seq, format!("part {index} is out of id order at `{}`", t.id)));
        }
        terms.push(t);
    }
    Ok(terms)
}

/// Reads the parts of `manifest` in order, several at once, hashed and parsed on blocking
/// threads, handing each to `part` as it is ready.
async fn each_part(
    store: &dyn StoreRead,
    seq: u64,
    manifest: &Manifest,
    part: &mut (dyn FnMut(Vec<Terms>) -> Result<(), StoreError> + Send),
) -> Result<(), StoreError> {
    const AHEAD: usize = 3;
    let mut pending = VecDeque::new();
    let mut digests = manifest.parts.iter().enumerate();
    let mut count = 0u64;
    let mut last: Option<ExceptionId> = None;
    loop {
        while pending.len() < AHEAD {
            let Some((index, digest)) = digests.next() else { break };
            let body = store
                .register_part(digest)
                .await?
                .ok_or_else(|| tampered(seq, format!("part {index} ({digest}) is not stored")))?;
            let digest = digest.clone();
            pending.push_back(tokio::task::spawn_blocking(move || parse_part(seq, index, &digest, &body)));
        }
        let Some(next) = pending.pop_front() else { break };
        let terms = next.await.map_err(|e| StoreError::Other(format!("reading a checkpoint: {e}")))??;
        if let (Some(last), Some(first)) = (last, terms.first())
            && first.id <= last
        {
            return Err(tampered(seq, format!("its parts are out of id order at `{}`", first.id)));
        }
        last = terms.last().map(|t| t.id).or(last);
        count += terms.len() as u64;
        part(terms)?;
    }
    if count != manifest.count {
        return Err(tampered(seq, format!("it holds {count} exceptions, its manifest says {}", manifest.count)));
    }
    Ok(())
}

/// What [`load_each`] loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    /// The event that sealed the checkpoint, and the one it is as of.
    pub sealed_by: u64,
    pub as_of: u64,
    /// Exceptions an event after `as_of` sealed, read from their rows.
    pub changed: usize,
    /// Exceptions handed over.
    pub count: usize,
}

/// The terms of every exception from the newest checkpoint and the changes since, in id
/// order, handed over a page at a time, as [`StoreRead::exception_terms_each`] hands them
/// from the rows. `Ok(None)`: there is no checkpoint, or over a quarter of the register
/// changed since it (every row is then as quick a read). A checkpoint that does not match its
/// manifest is [`StoreError::Tampered`], held in the store's quarantine until one loads
/// intact; the pages handed over before are then void.
pub async fn load_each(
    store: &dyn StoreRead,
    page: &mut (dyn FnMut(Vec<Terms>) + Send),
) -> Result<Option<Loaded>, StoreError> {
    // What it finds is held with the tampered records (`/readyz`, `/metrics`, the UI).
    match load_checked(store, page).await {
        Err(StoreError::Tampered(t)) => {
            store.note(KIND, Err(&t));
            Err(StoreError::Tampered(t))
        }
        Ok(Some(loaded)) => {
            store.note(KIND, Ok(()));
            Ok(Some(loaded))
        }
        other => other,
    }
}

async fn load_checked(
    store: &dyn StoreRead,
    page: &mut (dyn FnMut(Vec<Terms>) + Send),
) -> Result<Option<Loaded>, StoreError> {
    let Some((sealed_by, manifest)) = newest(store).await? else { return Ok(None) };
    let since = store.exceptions_sealed_after(manifest.as_of).await?;
    // Past a quarter of the register, reading every record is as quick.
    if since.len() as u64 > manifest.count / 4 + 1_000 {
        return Ok(None);
    }
    // Each changed record read whole and checked against its seal, in batches; one that
    // fails (or is gone) is left out, as a full load leaves it out.
    let mut changed: BTreeMap<ExceptionId, Option<Terms>> = since.iter().map(|id| (*id, None)).collect();
    for batch in since.chunks(CHANGED_BATCH) {
        let filter = crate::ExceptionFilter { ids: Some(batch.to_vec()), ..crate::ExceptionFilter::default() };
        for e in store.exceptions(&filter).await? {
            if let Some(slot) = changed.get_mut(&e.id) {
                *slot = Some(e.terms());
            }
        }
    }
    let n_changed = changed.len();
    let mut changed = changed.into_iter().peekable();
    let mut count = 0;
    each_part(store, sealed_by, &manifest, &mut |terms| {
        let mut merged = Vec::with_capacity(terms.len());
        for t in terms {
            while let Some((_, newer)) = changed.next_if(|(id, _)| *id < t.id) {
                merged.extend(newer);
            }
            match changed.next_if(|(id, _)| *id == t.id) {
                Some((_, newer)) => merged.extend(newer),
                None => merged.push(t),
            }
        }
        count += merged.len();
        page(merged);
        Ok(())
    })
    .await?;
    let rest: Vec<Terms> = changed.filter_map(|(_, t)| t).collect();
    count += rest.len();
    page(rest);
    Ok(Some(Loaded { sealed_by, as_of: manifest.as_of, changed: n_changed, count }))
}

/// Checks the newest checkpoint against the records (`audit verify`): its parts match its
/// manifest, and every exception no event after it sealed is in it with the terms of its
/// row (each checked against its seal), and nothing else is. The first mismatch, if any.
pub async fn verify(store: &dyn StoreRead) -> Result<Option<Tampered>, StoreError> {
    let Some((sealed_by, manifest)) = (match newest(store).await {
        Err(StoreError::Tampered(t)) => return Ok(Some(t)),
        other => other?,
    }) else {
        return Ok(None);
    };
    let current = store.exception_terms().await?;
    let since: std::collections::HashSet<ExceptionId> =
        store.exceptions_sealed_after(manifest.as_of).await?.into_iter().collect();
    let mut rows: HashMap<ExceptionId, &Terms> =
        current.iter().filter(|t| !since.contains(&t.id)).map(|t| (t.id, t)).collect();
    let mismatch = |reason: String| Tampered::new(KIND, format!("the checkpoint of event {sealed_by}: {reason}"));
    let mut found = None;
    let read = each_part(store, sealed_by, &manifest, &mut |terms| {
        for t in terms {
            if found.is_some() || since.contains(&t.id) {
                continue;
            }
            match rows.remove(&t.id) {
                Some(row) if *row == t => {}
                Some(_) => found = Some(mismatch(format!("`{}` differs from its record", t.id))),
                None => found = Some(mismatch(format!("`{}` has no record", t.id))),
            }
        }
        Ok(())
    })
    .await;
    match read {
        Err(StoreError::Tampered(t)) => return Ok(Some(t)),
        other => other?,
    }
    if found.is_none()
        && let Some(id) = rows.keys().min()
    {
        found = Some(mismatch(format!("`{id}` is missing from it")));
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_is_due_once_two_percent_changed_and_never_for_a_small_register() {
        assert!(!due(9_999, None));
        assert!(due(10_000, None));
        assert!(!due(1_000_000, Some(19_999)));
        assert!(due(1_000_000, Some(20_000)));
        assert!(!due(500, Some(500)));
    }

    #[test]
    fn a_part_must_hash_to_its_digest_and_keep_id_order() {
        let mut a = crate::contract::sample_exception();
        a.id = ExceptionId::new(1);
        let mut b = a.clone();
        b.id = ExceptionId::new(2);
        let body = format!(
            "{}\n{}\n",
            waiver_proto::stored::terms_text(&a.terms()),
            waiver_proto::stored::terms_text(&b.terms())
        );
        let digest = seal::digest(&body);
        assert_eq!(parse_part(9, 0, &digest, &body).unwrap(), vec![a.terms(), b.terms()]);
        let edited = body.replace("EXC-000002", "EXC-000003");
        let refused = parse_part(9, 0, &digest, &edited).unwrap_err();
        assert!(refused.to_string().contains("part 0 does not hash to its digest"), "{refused}");
        let swapped = format!(
            "{}\n{}\n",
            waiver_proto::stored::terms_text(&b.terms()),
            waiver_proto::stored::terms_text(&a.terms())
        );
        let refused = parse_part(9, 0, &seal::digest(&swapped), &swapped).unwrap_err();
        assert!(refused.to_string().contains("out of id order"), "{refused}");
    }
}

//! Bulk import of exception requests (a spreadsheet or ticket export): every row checked
//! exactly as filing checks it, then the valid rows filed as ordinary requests — they enter
//! the lifecycle `requested`, and still need their owner, expiry and approvals.

use std::{collections::HashMap, sync::Arc};

use waiver_core::{
    Actor, ExceptionId, FieldError, Kind, ValidationError,
    lifecycle::{self, Filing, Transition},
};
use waiver_store::{Commit, ExceptionFilter, StoreError, Write};

use crate::{Service, ServiceError, events};

/// One row's outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct RowOutcome {
    /// The row's line in the file (1 is the header).
    pub line: usize,
    /// Set once filed (by this import, or by an earlier one of the same row).
    pub id: Option<ExceptionId>,
    /// An earlier import by the same person filed this very row: it is not filed again.
    pub already_filed: bool,
    /// Why the row cannot be filed (empty if it can).
    pub errors: Vec<FieldError>,
}

/// What an import did, or would do.
#[derive(Debug, Clone, Default)]
pub struct ImportReport {
    pub rows: Vec<RowOutcome>,
    pub valid: usize,
    pub invalid: usize,
    pub filed: usize,
    /// Rows an earlier import filed already (a retry after a timeout, say).
    pub already_filed: usize,
}

impl ImportReport {
    /// The report as the CLI prints it with `--output json` and the API answers.
    pub fn to_json(&self, dry_run: bool) -> serde_json::Value {
        let rows: Vec<serde_json::Value> = self
            .rows
            .iter()
            .map(|r| {
                serde_json::json!({"line": r.line, "id": r.id.map(|id| id.to_string()), "already_filed": r.already_filed,
                    "errors": r.errors.iter().map(|e| serde_json::json!({"field": e.field, "message": e.message, "rule": e.rule})).collect::<Vec<_>>()})
            })
            .collect();
        serde_json::json!({"rows": rows, "valid": self.valid, "invalid": self.invalid, "filed": self.filed,
            "already_filed": self.already_filed, "dry_run": dry_run})
    }
}

/// How an import treats invalid rows and whether it writes.
#[derive(Debug, Clone, Copy, Default)]
pub struct ImportMode {
    pub dry_run: bool,
    /// File the valid rows even if some are invalid (otherwise nothing is stored).
    pub skip_invalid: bool,
}

/// The reference that marks a row's request as imported: a digest of who imported it and
/// what the row says. A second import of the same row by the same person finds it and does
/// not file it again, so an import retried after a timeout or a dropped connection is safe.
fn import_key(actor: &Actor, request: &waiver_proto::ExceptionRequest) -> String {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    hasher.update(actor.principal.as_str().as_bytes());
    hasher.update([0]);
    hasher.update(serde_json::to_vec(request).unwrap_or_default());
    let digest = hex::encode(hasher.finalize());
    format!("{IMPORT_PREFIX}{}", digest.get(..24).unwrap_or_default())
}

const IMPORT_PREFIX: &str = "import:";

impl Service {
    /// Checks every row and, unless told not to, files the valid ones. `progress` is called
    /// with the phase (`"checked"`, then `"filed"`) and how many rows it has done.
    pub async fn import(
        &self,
        actor: &Actor,
        rows: Vec<(usize, Result<waiver_proto::ExceptionRequest, ValidationError>)>,
        mode: ImportMode,
        progress: &(dyn Fn(&'static str, usize) + Send + Sync),
    ) -> Result<ImportReport, ServiceError> {
        // Refused once for the file, not once per row: the same roles that may request.
        crate::require(actor, "import exception requests", waiver_core::actor::may::FILE)?;
        // One import at a time on this node, so "already filed" is read after any earlier
        // attempt (a client that gave up and retried) has committed. (Across replicas, two
        // concurrent imports of one file can still both file it.)
        let importing = Arc::clone(&self.importing).lock_owned().await;
        let now = self.clock.now();
        let identities: HashMap<_, _> =
            self.store.identities().await?.into_iter().map(|i| (i.entity.clone(), i)).collect();
        let directory = self.directory().await?;
        let mut report = ImportReport::default();
        let mut ready: Vec<(usize, Transition)> = Vec::new();
        // Requests waiting per subject: the store's, plus this file's rows accepted so far.
        let mut waiting: HashMap<waiver_core::EntityRef, usize> = HashMap::new();
        // Import keys already on file, per subject (read once per subject the file names).
        let mut on_file: HashMap<waiver_core::EntityRef, HashMap<String, ExceptionId>> = HashMap::new();
        let mut in_this_file: HashMap<String, usize> = HashMap::new();
        for (done, (line, request)) in rows.into_iter().enumerate() {
            let request = request.map(|mut r| {
                let key = import_key(actor, &r);
                r.references.push(key);
                r
            });
            let draft = request.and_then(|r| r.into_draft(Kind::Planned)).map_err(ServiceError::Invalid);
            if let Ok(draft) = &draft {
                if !on_file.contains_key(&draft.subject) {
                    let filter = ExceptionFilter { subject: Some(draft.subject.clone()), ..ExceptionFilter::default() };
                    let keys = self
                        .store
                        .exceptions(&filter)
                        .await?
                        .into_iter()
                        .flat_map(|e| {
                            let id = e.id;
                            e.references.into_iter().filter(|r| r.starts_with(IMPORT_PREFIX)).map(move |r| (r, id))
                        })
                        .collect();
                    on_file.insert(draft.subject.clone(), keys);
                }
                let key = draft.references.iter().find(|r| r.starts_with(IMPORT_PREFIX)).cloned().unwrap_or_default();
                if let Some(id) = on_file.get(&draft.subject).and_then(|keys| keys.get(&key)) {
                    report.already_filed += 1;
                    report.rows.push(RowOutcome { line, id: Some(*id), already_filed: true, errors: Vec::new() });
                    continue;
                }
                if let Some(first) = in_this_file.insert(key, line) {
                    let error = FieldError::new("(row)", format!("repeats line {first}; a row is filed once"));
                    report.invalid += 1;
                    report.rows.push(RowOutcome { line, id: None, already_filed: false, errors: vec![error] });
                    continue;
                }
            }
            let open = match &draft {
                Ok(draft) => match waiting.get(&draft.subject) {
                    Some(n) => Some(*n),
                    None => Some(self.requests_waiting(&draft.subject, now).await?),
                },
                Err(_) => None,
            };
            let checked = draft.and_then(|draft| {
                let mut governed: Vec<FieldError> =
                    directory.check_owner("owner", &draft.owner).err().into_iter().collect();
                governed.extend(crate::check_controls(&self.rules(), &draft.waives));
                ValidationError::into_result(governed)?;
                self.check_against_baseline(&draft)?;
                crate::check_open_requests(&self.rules(), &draft.subject, open.unwrap_or_default())?;
                let filing = Filing {
                    draft: &draft,
                    actor,
                    rules: &self.rules(),
                    identity: identities.get(&draft.subject),
                    now,
                };
                Ok(lifecycle::request(filing)?)
            });
            match checked {
                Ok(transition) => {
                    *waiting.entry(transition.exception.subject.clone()).or_insert(open.unwrap_or_default()) += 1;
                    report.valid += 1;
                    ready.push((report.rows.len(), transition));
                    report.rows.push(RowOutcome { line, id: None, already_filed: false, errors: Vec::new() });
                }
                Err(e) => {
                    report.invalid += 1;
                    let errors = match e {
                        ServiceError::Invalid(v) => v.errors,
                        other => vec![FieldError::new("(row)", other.to_string())],
                    };
                    report.rows.push(RowOutcome { line, id: None, already_filed: false, errors });
                }
            }
            if done % 1000 == 999 {
                progress("checked", done + 1);
            }
        }
        if mode.dry_run || (report.invalid > 0 && !mode.skip_invalid) {
            return Ok(report);
        }
        // One commit for the whole file: an import is filed entirely or not at all, whatever
        // happens to the connection that asked for it.
        if ready.is_empty() {
            return Ok(report);
        }
        let by = actor.principal.clone();
        let slots: Vec<usize> = ready.iter().map(|(slot, _)| *slot).collect();
        let mut filed: Vec<waiver_core::Exception> = ready.iter().map(|(_, t)| t.exception.clone()).collect();
        let store = Arc::clone(&self.store);
        // The commit runs in a task of its own, holding the import lock until it lands: a
        // client that hangs up cannot release the lock while its rows are still in flight.
        let sealed = tokio::spawn(async move {
            let _importing = importing;
            store
                .commit(Box::new(move |alloc| {
                    let mut commit = Commit::default();
                    for (_, Transition { mut exception, change }) in ready {
                        exception.id = alloc.exception_id();
                        commit.events.push(events::exception_event(&by, now, &exception, &change));
                        commit.exceptions.push(Write::insert(exception));
                    }
                    commit
                }))
                .await
        })
        .await
        .map_err(|e| ServiceError::Store(StoreError::Other(format!("the import's commit failed: {e}"))))??;
        for ((slot, event), exception) in slots.iter().zip(&sealed).zip(&mut filed) {
            let id = event.exception_id.as_deref().and_then(|id| id.parse().ok());
            if let Some(row) = report.rows.get_mut(*slot) {
                row.id = id;
            }
            if let Some(id) = id {
                exception.id = id;
            }
        }
        // This node's register takes them at once (the log follower would, a moment later).
        self.records.apply(&filed);
        report.filed = slots.len();
        progress("filed", slots.len());
        Ok(report)
    }
}

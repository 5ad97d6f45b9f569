//! Bulk import of exception requests (a spreadsheet or ticket export): every row checked
//! exactly as filing checks it, then the valid rows filed as ordinary requests — they enter
//! the lifecycle `requested`, and still need their owner, expiry and approvals.

use std::collections::HashMap;

use waiver_core::{
    Actor, ExceptionId, FieldError, Kind, ValidationError,
    lifecycle::{self, Filing, Transition},
};
use waiver_store::{Commit, Write};

use crate::{Service, ServiceError, events};

/// One row's outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct RowOutcome {
    /// The row's line in the file (1 is the header).
    pub line: usize,
    /// Set once filed.
    pub id: Option<ExceptionId>,
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
}

impl ImportReport {
    /// The report as the CLI prints it with `--output json` and the API answers.
    pub fn to_json(&self, dry_run: bool) -> serde_json::Value {
        let rows: Vec<serde_json::Value> = self
            .rows
            .iter()
            .map(|r| {
                serde_json::json!({"line": r.line, "id": r.id.map(|id| id.to_string()),
                    "errors": r.errors.iter().map(|e| serde_json::json!({"field": e.field, "message": e.message, "rule": e.rule})).collect::<Vec<_>>()})
            })
            .collect();
        serde_json::json!({"rows": rows, "valid": self.valid, "invalid": self.invalid, "filed": self.filed, "dry_run": dry_run})
    }
}

/// How an import treats invalid rows and whether it writes.
#[derive(Debug, Clone, Copy, Default)]
pub struct ImportMode {
    pub dry_run: bool,
    /// File the valid rows even if some are invalid (otherwise nothing is stored).
    pub skip_invalid: bool,
}

/// Rows per commit: one fsync per batch rather than per row.
const BATCH: usize = 500;

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
        let now = self.clock.now();
        let identities: HashMap<_, _> =
            self.store.identities().await?.into_iter().map(|i| (i.entity.clone(), i)).collect();
        let mut report = ImportReport::default();
        let mut ready: Vec<(usize, Transition)> = Vec::new();
        // Requests waiting per subject: the store's, plus this file's rows accepted so far.
        let mut waiting: HashMap<waiver_core::EntityRef, usize> = HashMap::new();
        for (done, (line, request)) in rows.into_iter().enumerate() {
            let draft = request.and_then(|r| r.into_draft(Kind::Planned)).map_err(ServiceError::Invalid);
            let open = match &draft {
                Ok(draft) => match waiting.get(&draft.subject) {
                    Some(n) => Some(*n),
                    None => Some(self.requests_waiting(&draft.subject, now).await?),
                },
                Err(_) => None,
            };
            let checked = draft.and_then(|draft| {
                self.check_against_baseline(&draft)?;
                crate::check_open_requests(&self.rules, &draft.subject, open.unwrap_or_default())?;
                let filing =
                    Filing { draft: &draft, actor, rules: &self.rules, identity: identities.get(&draft.subject), now };
                Ok(lifecycle::request(filing)?)
            });
            match checked {
                Ok(transition) => {
                    *waiting.entry(transition.exception.subject.clone()).or_insert(open.unwrap_or_default()) += 1;
                    report.valid += 1;
                    ready.push((report.rows.len(), transition));
                    report.rows.push(RowOutcome { line, id: None, errors: Vec::new() });
                }
                Err(e) => {
                    report.invalid += 1;
                    let errors = match e {
                        ServiceError::Invalid(v) => v.errors,
                        other => vec![FieldError::new("(row)", other.to_string())],
                    };
                    report.rows.push(RowOutcome { line, id: None, errors });
                }
            }
            if done % 1000 == 999 {
                progress("checked", done + 1);
            }
        }
        if mode.dry_run || (report.invalid > 0 && !mode.skip_invalid) {
            return Ok(report);
        }
        let by = actor.principal.clone();
        let mut filed_rows = 0;
        while !ready.is_empty() {
            let batch: Vec<(usize, Transition)> = ready.drain(..ready.len().min(BATCH)).collect();
            let slots: Vec<usize> = batch.iter().map(|(slot, _)| *slot).collect();
            let mut filed: Vec<waiver_core::Exception> = batch.iter().map(|(_, t)| t.exception.clone()).collect();
            let by = by.clone();
            let sealed = self
                .store
                .commit(Box::new(move |alloc| {
                    let mut commit = Commit::default();
                    for (_, Transition { mut exception, change }) in batch {
                        exception.id = alloc.exception_id();
                        commit.events.push(events::exception_event(&by, now, &exception, &change));
                        commit.exceptions.push(Write::insert(exception));
                    }
                    commit
                }))
                .await?;
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
            report.filed += slots.len();
            filed_rows += slots.len();
            progress("filed", filed_rows);
        }
        Ok(report)
    }
}

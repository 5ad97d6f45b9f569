//! The scheduler's job bodies: plain functions of the service clock's `now`.
//!
//! Each job reads what time made due, lets the core decide what to record, and commits in
//! batches. Decisions never wait for any of this: they apply time themselves.

use jiff::SignedDuration;
use waiver_core::{ExceptionId, Principal, State, lifecycle::Transition};
use waiver_store::{Commit, ExceptionFilter, StoreError, Write};

use crate::{Service, ServiceError, events};

/// Transitions committed in one transaction.
const BATCH: usize = 512;

/// States in which time can still change an exception.
const OPEN: [State; 4] = [State::Requested, State::Approved, State::Active, State::Suspended];

impl Service {
    /// Commits `(read_version, transition)` pairs as the system, in batches; a batch that
    /// meets a concurrent change is retried one by one, skipping what changed (the next run
    /// looks again). Returns the ids recorded.
    async fn commit_system_transitions(
        &self,
        transitions: Vec<(u64, Transition)>,
    ) -> Result<Vec<ExceptionId>, ServiceError> {
        let now = self.clock.now();
        let build = |chunk: &[(u64, Transition)]| {
            let mut commit = Commit::default();
            for (read_version, t) in chunk {
                commit.events.push(events::exception_event(&Principal::system(), now, &t.exception, &t.change));
                commit.exceptions.push(Write::update(t.exception.clone(), *read_version));
            }
            commit
        };
        let mut recorded = Vec::new();
        for chunk in transitions.chunks(BATCH) {
            let commit = build(chunk);
            match self.store.commit(Box::new(move |_| commit)).await {
                Ok(_) => recorded.extend(chunk.iter().map(|(_, t)| t.exception.id)),
                Err(StoreError::Conflict(_)) => {
                    for one in chunk {
                        let commit = build(std::slice::from_ref(one));
                        match self.store.commit(Box::new(move |_| commit)).await {
                            Ok(_) => recorded.push(one.1.exception.id),
                            Err(StoreError::Conflict(_)) => {}
                            Err(e) => return Err(e.into()),
                        }
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(recorded)
    }

    /// Expiry job: records what time already decided — expiries, request timeouts,
    /// break-glass ends (moving them to awaiting post-use review). Returns what it recorded.
    pub async fn record_expiries(&self) -> Result<Vec<ExceptionId>, ServiceError> {
        let now = self.clock.now();
        // Expired *at* `now` too (`expires_before` is strict; stored times are to the microsecond).
        let bound = now.checked_add(SignedDuration::from_micros(1)).unwrap_or(now);
        // Only what is due: expiries and request time-outs alike (`due_at`, indexed), so
        // the job costs the same with 10 pending requests as with 100,000.
        let ending = ExceptionFilter { states: Some(OPEN.to_vec()), due_before: Some(bound), ..Default::default() };
        let due = self.store.exceptions(&ending).await?;
        let transitions = due.iter().filter_map(|e| e.record_expiry(now).map(|t| (e.version, t))).collect();
        self.commit_system_transitions(transitions).await
    }

    /// Notice job: reminders before expiry and review, overdue reviews and post-use reviews,
    /// unused exceptions (flagged, or revoked if the rules say so). Each is recorded once.
    pub async fn record_notices(&self) -> Result<Vec<ExceptionId>, ServiceError> {
        const LIVE: [State; 4] = [State::Approved, State::Active, State::Suspended, State::AwaitingPostUseReview];
        let now = self.clock.now();
        let candidates = match self.records.all() {
            // The node's register in memory picks what may be due without reading the store
            // (what keeps an idle node idle at a million exceptions); each pick is then read
            // from the store, checked against its seal, and decided on that copy: its usage is
            // the one flushed there and its version the one the commit guards. A record the
            // memory is behind on is picked up by the next run.
            Some(all) => {
                let rules = self.rules();
                let picked = tokio::task::spawn_blocking(move || {
                    all.iter()
                        .filter(|e| LIVE.contains(&e.state))
                        .filter(|e| e.revoke_unused(&rules, now).is_some() || !e.due_notices(&rules, now).is_empty())
                        .map(|e| e.id)
                        .collect::<Vec<_>>()
                })
                .await
                .map_err(|e| ServiceError::Store(StoreError::Other(format!("the notice scan failed: {e}"))))?;
                let mut read = Vec::with_capacity(picked.len());
                for id in picked {
                    match self.store.exception(id).await {
                        Ok(Some(e)) if LIVE.contains(&e.state) => read.push(e),
                        // Gone, moved on, or not matching its seal (quarantined, reported
                        // elsewhere): nothing to record.
                        Ok(_) | Err(StoreError::Tampered(_)) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                read
            }
            None => {
                self.store.exceptions(&ExceptionFilter { states: Some(LIVE.to_vec()), ..Default::default() }).await?
            }
        };
        let mut transitions = Vec::new();
        for e in candidates {
            if let Some(revoked) = e.revoke_unused(&self.rules(), now) {
                transitions.push((e.version, revoked));
                continue;
            }
            // Several notices due at once are recorded one after another on the same record.
            let mut current = e.clone();
            let mut steps = Vec::new();
            for notice in e.due_notices(&self.rules(), now) {
                let t = current.notify(notice, now);
                current = t.exception.clone();
                steps.push(t);
            }
            let mut read_version = e.version;
            for t in steps {
                let next_version = t.exception.version;
                transitions.push((read_version, t));
                read_version = next_version;
            }
        }
        self.commit_system_transitions(transitions).await
    }
}

//! A sample of the decisions exceptions granted on this node, for the UI's "recent
//! decisions". The decision path only `try_send`s to a bounded channel (never waits, never
//! locks); one task drains it into a small map the UI reads. A full channel drops the sample,
//! never the decision. Held in memory: a restart or another replica starts empty.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex, PoisonError},
};

use jiff::Timestamp;
use waiver_core::ExceptionId;

/// Decisions kept per exception.
pub const PER_EXCEPTION: usize = 10;
/// Exceptions tracked at once; the longest-untouched is forgotten first.
const TRACKED: usize = 10_000;
const QUEUE: usize = 4096;

/// One decision an exception granted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Granted {
    pub exception: ExceptionId,
    pub at: Timestamp,
    pub subject: String,
    pub action: String,
    pub resource: String,
}

#[derive(Default)]
struct Held {
    by_exception: HashMap<ExceptionId, VecDeque<Granted>>,
    /// Exceptions in the order they were last touched (may repeat; stale entries skipped).
    touched: VecDeque<ExceptionId>,
}

/// The sample, readable by the UI.
#[derive(Clone, Default)]
pub struct Recent(Arc<Mutex<Held>>);

impl std::fmt::Debug for Recent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recent").finish_non_exhaustive()
    }
}

impl Recent {
    /// Starts the drain task; decisions send to the returned sender.
    pub fn start(&self) -> tokio::sync::mpsc::Sender<Granted> {
        let (sender, mut receiver) = tokio::sync::mpsc::channel::<Granted>(QUEUE);
        let recent = self.clone();
        tokio::spawn(async move {
            while let Some(first) = receiver.recv().await {
                let mut batch = vec![first];
                while let Ok(next) = receiver.try_recv() {
                    batch.push(next);
                }
                recent.record(batch);
            }
        });
        sender
    }

    fn record(&self, batch: Vec<Granted>) {
        let mut held = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        for granted in batch {
            let id = granted.exception;
            let list = held.by_exception.entry(id).or_default();
            list.push_front(granted);
            list.truncate(PER_EXCEPTION);
            held.touched.push_back(id);
        }
        while held.by_exception.len() > TRACKED {
            let Some(oldest) = held.touched.pop_front() else { break };
            // Forget it only if this was its last touch.
            if !held.touched.contains(&oldest) {
                held.by_exception.remove(&oldest);
            }
        }
        if held.touched.len() > TRACKED * 4 {
            // Compact: keep each exception's last touch only.
            let mut seen = std::collections::HashSet::new();
            let kept: VecDeque<ExceptionId> = held
                .touched
                .iter()
                .rev()
                .filter(|id| seen.insert(**id))
                .copied()
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            held.touched = kept;
        }
    }

    /// The latest decisions `id` granted here, newest first.
    pub fn of(&self, id: ExceptionId) -> Vec<Granted> {
        let held = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        held.by_exception.get(&id).map(|list| list.iter().cloned().collect()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    fn granted(id: u64, n: u64) -> Granted {
        Granted {
            exception: ExceptionId::new(id),
            at: Timestamp::from_second(1_800_000_000 + n as i64).unwrap(),
            subject: "ServiceAccount:a".into(),
            action: format!("act{n}"),
            resource: "Database:b".into(),
        }
    }

    #[test]
    fn keeps_the_latest_per_exception_newest_first() {
        let recent = Recent::default();
        recent.record((0..15).map(|n| granted(1, n)).collect());
        let got = recent.of(ExceptionId::new(1));
        assert_eq!(got.len(), PER_EXCEPTION);
        assert_eq!(got[0].action, "act14");
        assert_eq!(got[9].action, "act5");
        assert!(recent.of(ExceptionId::new(2)).is_empty());
    }

    #[test]
    fn forgets_the_longest_untouched_exception_first() {
        let recent = Recent::default();
        recent.record((1..=TRACKED as u64).map(|id| granted(id, 0)).collect());
        recent.record(vec![granted(1, 1)]); // touched again: now the newest
        recent.record(vec![granted(TRACKED as u64 + 1, 0)]);
        assert!(!recent.of(ExceptionId::new(1)).is_empty(), "recently touched is kept");
        assert!(recent.of(ExceptionId::new(2)).is_empty(), "the longest untouched is gone");
        assert_eq!(recent.0.lock().unwrap().by_exception.len(), TRACKED);
    }
}

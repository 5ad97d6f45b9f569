//! A sample of the decisions exceptions granted on this node, for the UI's "recent
//! decisions". The decision path only pushes onto a bounded lock-free queue (never waits,
//! never locks, wakes nobody: a channel would wake a task on every grant); the queue is
//! drained into a small map the UI reads once a second and whenever the UI reads. A full
//! queue drops its oldest sample, never a decision. Held in memory: a restart or another
//! replica starts empty.

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

struct Inner {
    held: Mutex<Held>,
    queue: crossbeam_queue::ArrayQueue<Granted>,
}

/// The sample, readable by the UI.
#[derive(Clone)]
pub struct Recent(Arc<Inner>);

impl Default for Recent {
    fn default() -> Self {
        Self(Arc::new(Inner { held: Mutex::default(), queue: crossbeam_queue::ArrayQueue::new(QUEUE) }))
    }
}

/// Where the decision path offers its samples.
#[derive(Clone)]
pub struct Sampler(Arc<Inner>);

impl Sampler {
    /// Queues a sample; when the queue is full the oldest sample goes.
    pub fn offer(&self, granted: Granted) {
        let _ = self.0.queue.force_push(granted);
    }
}

impl std::fmt::Debug for Recent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recent").finish_non_exhaustive()
    }
}

impl Recent {
    /// Starts draining the queue once a second; decisions offer samples to the returned
    /// sampler.
    pub fn start(&self) -> Sampler {
        let recent = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                recent.drain();
            }
        });
        Sampler(Arc::clone(&self.0))
    }

    fn drain(&self) {
        if self.0.queue.is_empty() {
            return;
        }
        let batch: Vec<Granted> = std::iter::from_fn(|| self.0.queue.pop()).take(QUEUE).collect();
        self.record(batch);
    }

    fn record(&self, batch: Vec<Granted>) {
        let mut held = self.0.held.lock().unwrap_or_else(PoisonError::into_inner);
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
        self.drain();
        let held = self.0.held.lock().unwrap_or_else(PoisonError::into_inner);
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
    fn offered_samples_are_read_without_a_drain_task_and_a_full_queue_drops_the_oldest() {
        let recent = Recent::default();
        let sampler = Sampler(Arc::clone(&recent.0));
        sampler.offer(granted(7, 0));
        assert_eq!(recent.of(ExceptionId::new(7)).len(), 1, "a read drains what was offered");
        // One more than the queue holds, each for its own exception, with no read between.
        let first = 100;
        let last = first + QUEUE as u64;
        for id in first..=last {
            sampler.offer(granted(id, 0));
        }
        assert!(recent.of(ExceptionId::new(first)).is_empty(), "the oldest sample went");
        assert_eq!(recent.of(ExceptionId::new(first + 1)).len(), 1);
        assert_eq!(recent.of(ExceptionId::new(last)).len(), 1, "the newest is kept");
    }

    #[test]
    fn forgets_the_longest_untouched_exception_first() {
        let recent = Recent::default();
        recent.record((1..=TRACKED as u64).map(|id| granted(id, 0)).collect());
        recent.record(vec![granted(1, 1)]); // touched again: now the newest
        recent.record(vec![granted(TRACKED as u64 + 1, 0)]);
        assert!(!recent.of(ExceptionId::new(1)).is_empty(), "recently touched is kept");
        assert!(recent.of(ExceptionId::new(2)).is_empty(), "the longest untouched is gone");
        assert_eq!(recent.0.held.lock().unwrap().by_exception.len(), TRACKED);
    }
}

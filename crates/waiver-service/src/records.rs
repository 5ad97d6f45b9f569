//! The register's records held in memory by a serving node, so reports (and the UI's
//! register) read a million exceptions without a million-row read from the store.
//!
//! Kept by whoever keeps the decision snapshot: the node's own writes and the log follower
//! apply the same changed records to both. A persistent map, so a change costs O(log n)
//! and a reader takes the whole register as of one instant for the price of a pointer.

use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use waiver_core::{Exception, ExceptionId};

type Map = imbl::OrdMap<ExceptionId, Arc<Exception>>;

/// Shared by every clone. Empty until [`Records::replace`] or [`Records::fill`] loads it;
/// readers then fall back to the store.
#[derive(Clone, Default)]
pub struct Records {
    held: Arc<ArcSwap<Option<Map>>>,
    /// While a load is under way ([`Records::begin_loading`]): the changes applied meanwhile,
    /// which the load's read may predate, merged when it lands.
    early: Arc<Mutex<Option<Vec<Arc<Exception>>>>>,
}

impl std::fmt::Debug for Records {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Records").field("loaded", &self.held.load().is_some()).finish()
    }
}

impl Records {
    fn early(&self) -> std::sync::MutexGuard<'_, Option<Vec<Arc<Exception>>>> {
        self.early.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Holds exactly these records (a load at start, or a reload to catch up).
    pub fn replace(&self, all: &[Exception]) {
        let map: Map = all.iter().map(|e| (e.id, Arc::new(e.clone()))).collect();
        let mut early = self.early();
        self.held.store(Arc::new(Some(map)));
        *early = None;
    }

    /// A load has begun whose read may miss changes applied from now on: keep them for
    /// [`Records::fill`]. (A serving node decides from the records' terms first and loads
    /// the whole records after it is ready.)
    pub fn begin_loading(&self) {
        let mut early = self.early();
        if self.held.load().is_none() {
            *early = Some(Vec::new());
        }
    }

    /// Whether a load begun with [`Records::begin_loading`] is still under way.
    pub fn loading(&self) -> bool {
        self.early().is_some()
    }

    /// The load begun with [`Records::begin_loading`] failed: readers keep reading the store.
    pub fn abandon_loading(&self) {
        *self.early() = None;
    }

    /// Lands the load begun with [`Records::begin_loading`]: these records, with the changes
    /// applied since merged over them (newer versions win). False when a
    /// [`Records::replace`] got there first, whose read is the newer.
    pub fn fill(&self, all: Vec<Exception>) -> bool {
        let mut map: Map = all.into_iter().map(|e| (e.id, Arc::new(e))).collect();
        let mut early = self.early();
        if self.held.load().is_some() {
            *early = None;
            return false;
        }
        for e in early.take().unwrap_or_default() {
            if map.get(&e.id).is_none_or(|held| held.version <= e.version) {
                map.insert(e.id, e);
            }
        }
        self.held.store(Arc::new(Some(map)));
        true
    }

    /// Applies changed records; a copy older than the one held is ignored (a slow writer
    /// must not roll a record back). Compare-and-swap: concurrent writers (the follower, a
    /// usage flush) each see the other's change. Before a load, nothing is held; during
    /// one, the changes are kept for it.
    pub fn apply(&self, changed: &[Exception]) {
        let changed: Vec<Arc<Exception>> = changed.iter().map(|e| Arc::new(e.clone())).collect();
        if self.held.load().is_none() {
            let mut early = self.early();
            // Checked again under the lock `fill` holds while it lands.
            if self.held.load().is_none() {
                if let Some(kept) = early.as_mut() {
                    kept.extend(changed);
                }
                return;
            }
        }
        self.held.rcu(|current| {
            let Some(current) = &**current else { return None };
            let mut next = current.clone();
            for e in &changed {
                if next.get(&e.id).is_none_or(|held| held.version <= e.version) {
                    next.insert(e.id, e.clone());
                }
            }
            Some(next)
        });
    }

    /// Every record, in id order, if loaded.
    pub fn all(&self) -> Option<Vec<Arc<Exception>>> {
        let guard = self.held.load();
        guard.as_ref().as_ref().map(|map| map.values().cloned().collect())
    }

    /// One record, if loaded and held.
    pub fn get(&self, id: ExceptionId) -> Option<Arc<Exception>> {
        self.held.load().as_ref().as_ref().and_then(|map| map.get(&id).cloned())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    fn record(id: u64, version: u64, count: u64) -> Exception {
        use waiver_core::*;
        let now: jiff::Timestamp = "2026-11-23T12:00:00Z".parse().unwrap();
        let p = |s: &str| Principal::parse("p", s).unwrap();
        Exception {
            id: ExceptionId::new(id),
            kind: Kind::Planned,
            state: State::Approved,
            subject: "ServiceAccount:sa0".parse().unwrap(),
            waives: vec![Waived::DefaultDeny],
            scope: Scope { actions: vec!["read".into()], resources: vec![] },
            condition: None,
            compensating_controls: vec![],
            justification: "j".into(),
            normal_path_unavailable: "n".into(),
            affected_systems: vec![],
            references: vec![],
            risk: Risk::Low,
            credential_type: CredentialType::WorkloadToken,
            requester: p("dana"),
            owner: p("sam"),
            approvals: vec![],
            approvals_required: 1,
            starts_at: now,
            expires_at: now,
            review: Review { every: Period::from_days(30), next_due: now, revalidate_on: vec![], last_attested: None },
            remediation: None,
            frameworks: vec![],
            renewals: 0,
            pending_renewal: None,
            request_expires_at: None,
            post_use_review: None,
            suspended_by: None,
            resolution: None,
            pending_transfer: None,
            usage: waiver_core::exception::Usage { count, last_used_at: None, scope_used: 0 },
            notices: vec![],
            created_at: now,
            updated_at: now,
            version,
        }
    }

    #[test]
    fn applies_newer_copies_ignores_older_and_shares_snapshots() {
        let records = Records::default();
        assert!(records.all().is_none(), "not loaded: readers fall back to the store");
        records.apply(&[record(1, 1, 0)]);
        assert!(records.all().is_none(), "applying before a load holds nothing");
        records.replace(&[record(1, 2, 0), record(2, 1, 0)]);
        let before = records.all().unwrap();
        records.apply(&[record(1, 3, 5), record(2, 0, 9), record(3, 1, 0)]);
        let after = records.all().unwrap();
        assert_eq!(after.iter().map(|e| (e.id.number(), e.version)).collect::<Vec<_>>(), vec![(1, 3), (2, 1), (3, 1)]);
        assert_eq!(records.get(ExceptionId::new(1)).unwrap().usage.count, 5);
        assert_eq!(before.len(), 2, "a reader's copy is not changed under it");
        // Same version (a usage flush) replaces: it carries newer usage.
        records.apply(&[record(2, 1, 7)]);
        assert_eq!(records.get(ExceptionId::new(2)).unwrap().usage.count, 7);
    }

    #[test]
    fn a_load_after_ready_keeps_the_changes_applied_while_it_read() {
        let records = Records::default();
        records.begin_loading();
        assert!(records.loading());
        // Applied while the load reads: 1 moves on to version 3, 3 is new.
        records.apply(&[record(1, 3, 0), record(3, 1, 0)]);
        assert!(records.all().is_none(), "still loading: readers fall back to the store");
        // The load read 1 at version 2 (before the change) and 2 (untouched).
        assert!(records.fill(vec![record(1, 2, 0), record(2, 1, 0)]));
        assert!(!records.loading());
        let held = records.all().unwrap();
        assert_eq!(held.iter().map(|e| (e.id.number(), e.version)).collect::<Vec<_>>(), vec![(1, 3), (2, 1), (3, 1)]);
        // An older change kept during the load does not roll back a newer read.
        let records = Records::default();
        records.begin_loading();
        records.apply(&[record(1, 1, 0)]);
        assert!(records.fill(vec![record(1, 4, 0)]));
        assert_eq!(records.get(ExceptionId::new(1)).unwrap().version, 4);
        // A full reload that lands first wins; the late fill is dropped.
        let records = Records::default();
        records.begin_loading();
        records.replace(&[record(1, 5, 0)]);
        assert!(!records.fill(vec![record(1, 4, 0)]));
        assert_eq!(records.get(ExceptionId::new(1)).unwrap().version, 5);
        // Nothing is kept when no load is under way (a CLI process).
        let records = Records::default();
        records.apply(&[record(1, 1, 0)]);
        assert!(!records.loading());
    }
}

//! The register's records held in memory by a serving node, so reports (and the UI's
//! register) read a million exceptions without a million-row read from the store.
//!
//! Kept by whoever keeps the decision snapshot: the node's own writes and the log follower
//! apply the same changed records to both. A persistent map, so a change costs O(log n)
//! and a reader takes the whole register as of one instant for the price of a pointer.

use std::sync::Arc;

use arc_swap::ArcSwap;
use waiver_core::{Exception, ExceptionId};

type Map = imbl::OrdMap<ExceptionId, Arc<Exception>>;

/// Shared by every clone. Empty until [`Records::replace`] loads it; readers then fall back
/// to the store.
#[derive(Clone, Default)]
pub struct Records(Arc<ArcSwap<Option<Map>>>);

impl std::fmt::Debug for Records {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Records").field("loaded", &self.0.load().is_some()).finish()
    }
}

impl Records {
    /// Holds exactly these records (a load at start, or a reload to catch up).
    pub fn replace(&self, all: &[Exception]) {
        let map: Map = all.iter().map(|e| (e.id, Arc::new(e.clone()))).collect();
        self.0.store(Arc::new(Some(map)));
    }

    /// Applies changed records; a copy older than the one held is ignored (a slow writer
    /// must not roll a record back). Compare-and-swap: concurrent writers (the follower, a
    /// usage flush) each see the other's change.
    pub fn apply(&self, changed: &[Exception]) {
        let changed: Vec<Arc<Exception>> = changed.iter().map(|e| Arc::new(e.clone())).collect();
        self.0.rcu(|current| {
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
        let guard = self.0.load();
        guard.as_ref().as_ref().map(|map| map.values().cloned().collect())
    }

    /// One record, if loaded and held.
    pub fn get(&self, id: ExceptionId) -> Option<Arc<Exception>> {
        self.0.load().as_ref().as_ref().and_then(|map| map.get(&id).cloned())
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
}

//! `waiver bench`: measurements on generated data, printed as JSON with `--output json`.

use std::{sync::Arc, time::Instant};

use jiff::SignedDuration;
use serde_json::json;
use waiver_core::{Actor, Clock, ManualClock, Principal, Role, Rules, Timestamp};
use waiver_service::{Action, Service};
use waiver_store::{Commit, Store, StoreRead};
use waiver_store_sqlite::SqliteStore;

use crate::{clock::SystemClock, commands::CliError, output::Printer};

fn actor(name: &str, roles: &[Role]) -> Result<Actor, CliError> {
    Ok(Actor::new(Principal::parse("actor", name).map_err(|e| CliError::Usage(e.to_string()))?, roles))
}

async fn scratch_store() -> Result<(tempfile::TempDir, Arc<SqliteStore>), CliError> {
    let dir = tempfile::tempdir().map_err(|e| CliError::Failure(e.into()))?;
    let store = SqliteStore::open(&dir.path().join("bench.db")).await?;
    Ok((dir, Arc::new(store)))
}

/// Walks `n` exceptions through request, approve and revoke with `concurrency` writers,
/// on a scratch SQLite database with the production durability settings.
pub async fn lifecycle(n: u64, concurrency: usize, out: &Printer) -> Result<u8, CliError> {
    let (_dir, store) = scratch_store().await?;
    let service = Service::new(store.clone(), Rules::default(), Arc::new(SystemClock));
    let admin = actor("alex", &[Role::Admin])?;
    let identity = waiver_proto::IdentityInput {
        entity_type: "ServiceAccount".into(),
        id: "bench".into(),
        kind: "service_account".into(),
        owner: "sam".into(),
        team: None,
        credential_type: "workload_token".into(),
        attributes: Default::default(),
    };
    service.identity_add(&admin, identity).await?;
    let now = service.now();
    let request = waiver_proto::ExceptionRequest {
        kind: None,
        subject: waiver_proto::Entity { entity_type: "ServiceAccount".into(), id: "bench".into() },
        waives: vec!["forbid-prod-db-direct-access".into()],
        scope: waiver_proto::Scope {
            actions: vec!["connect".into()],
            resources: vec![waiver_proto::ResourceScope {
                entity_type: "Database".into(),
                id: "orders".into(),
                descendants: false,
            }],
        },
        condition: None,
        compensating_controls: vec![],
        justification: "benchmark".into(),
        normal_path_unavailable: "benchmark".into(),
        affected_systems: vec![],
        references: vec![],
        risk: "low".into(),
        credential_type: None,
        owner: "sam".into(),
        starts_at: None,
        expires_at: now + SignedDuration::from_hours(24 * 30),
        review: Default::default(),
        remediation: Some(waiver_proto::Remediation { plan: "benchmark".into(), retire_by: None, ticket: None }),
        frameworks: vec![],
    };
    let requester = actor("dana", &[Role::Requester])?;
    let approver = actor("lee", &[Role::Approver])?;
    let owner = actor("sam", &[Role::Requester])?;
    let started = Instant::now();
    let mut tasks = Vec::new();
    let per_task = n.div_ceil(concurrency.max(1) as u64);
    for task in 0..concurrency.max(1) as u64 {
        let (service, request) = (service.clone(), request.clone());
        let (requester, approver, owner) = (requester.clone(), approver.clone(), owner.clone());
        let count = per_task.min(n.saturating_sub(task * per_task));
        tasks.push(tokio::spawn(async move {
            for _ in 0..count {
                let e = service.request(&requester, request.clone()).await?;
                service.act(&approver, e.id, Action::Approve, None).await?;
                service.act(&owner, e.id, Action::Revoke, None).await?;
            }
            Ok::<_, CliError>(())
        }));
    }
    for task in tasks {
        task.await.map_err(|e| CliError::Failure(e.into()))??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let writes = n * 3;
    let head = store.verify_chain().await?.map_err(|b| CliError::Failure(anyhow::anyhow!("{b}")))?;
    let per_second = writes as f64 / elapsed;
    out.json(&json!({ "exceptions": n, "writes": writes, "concurrency": concurrency, "seconds": elapsed,
                      "writes_per_second": per_second, "events": head.n_events, "durability": "wal+synchronous=full" }));
    out.say(format!(
        "{writes} lifecycle writes ({n} exceptions × request, approve, revoke) with {concurrency} writers in {elapsed:.2}s: {per_second:.0} writes/s (WAL, synchronous=FULL); chain of {} events verifies",
        head.n_events
    ));
    Ok(0)
}

/// Generates a log of `n` events (in large commits, to build it fast) and times `verify`.
pub async fn verify(n: u64, out: &Printer) -> Result<u8, CliError> {
    let (_dir, store) = scratch_store().await?;
    let clock = ManualClock::new(Timestamp::UNIX_EPOCH + SignedDuration::from_hours(24 * 365 * 56));
    let actor = Principal::parse("actor", "dana").map_err(|e| CliError::Usage(e.to_string()))?;
    let build_started = Instant::now();
    let mut written = 0u64;
    while written < n {
        let batch = (n - written).min(10_000);
        let mut commit = Commit::default();
        for idx in 0..batch {
            clock.advance(SignedDuration::from_millis(250));
            let seq = written + idx;
            commit.events.push(waiver_core::audit::EventDraft {
                at: clock.now(),
                actor: actor.clone(),
                event_type: match seq % 3 {
                    0 => "exception.approved",
                    1 => "exception.attested",
                    _ => "exception.revoked",
                }
                .into(),
                exception_id: Some(waiver_core::ExceptionId::new(seq / 3 + 1)),
                data: json!({ "by": "lee", "comment": "approved for the release train", "state": "approved", "version": seq % 7 + 2 }),
            });
        }
        store.commit(Box::new(move |_| commit)).await?;
        written += batch;
    }
    let build_seconds = build_started.elapsed().as_secs_f64();
    let started = Instant::now();
    let head = store.verify_chain().await?.map_err(|b| CliError::Failure(anyhow::anyhow!("{b}")))?;
    let elapsed = started.elapsed().as_secs_f64();
    let per_second = head.n_events as f64 / elapsed;
    // The chain arithmetic alone, over events already in memory: what verify costs once the
    // rows are read, to tell hashing apart from reading.
    let mut records = Vec::with_capacity(usize::try_from(n).unwrap_or_default());
    let mut after = 0;
    loop {
        let page = store.events(after, 50_000).await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        records.extend(page);
    }
    let started = Instant::now();
    let in_memory = waiver_core::audit::verify(&records).map_err(|b| CliError::Failure(anyhow::anyhow!("{b}")))?;
    let memory_seconds = started.elapsed().as_secs_f64();
    let memory_per_second = in_memory.n_events as f64 / memory_seconds;
    out.json(&json!({ "events": head.n_events, "seconds": elapsed, "events_per_second": per_second,
                      "in_memory_events_per_second": memory_per_second,
                      "build_seconds": build_seconds, "head_hash": head.head_hash }));
    out.say(format!(
        "verified {} events from the store in {elapsed:.2}s: {per_second:.0} events/s; the chain alone, in memory: {memory_per_second:.0} events/s (log built in {build_seconds:.1}s)",
        head.n_events
    ));
    Ok(0)
}

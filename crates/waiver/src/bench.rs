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
pub async fn verify(n: u64, reuse: Option<&std::path::Path>, out: &Printer) -> Result<u8, CliError> {
    let (_dir, store) = match reuse {
        Some(path) => (None, Arc::new(SqliteStore::open(path).await?)),
        None => {
            let (dir, store) = scratch_store().await?;
            (Some(dir), store)
        }
    };
    // A reused log is verified as it is, whatever its length.
    let existing = if store.last_seq().await? > 0 { n } else { 0 };
    let clock = ManualClock::new(Timestamp::UNIX_EPOCH + SignedDuration::from_hours(24 * 365 * 56));
    let actor = Principal::parse("actor", "dana").map_err(|e| CliError::Usage(e.to_string()))?;
    let build_started = Instant::now();
    let mut written = existing;
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
    let (started, cpu_started) = (Instant::now(), cpu_seconds());
    let head = store.verify_chain().await?.map_err(|b| CliError::Failure(anyhow::anyhow!("{b}")))?;
    let elapsed = started.elapsed().as_secs_f64();
    // CPU time as well as wall time: on a shared VM it is the steadier of the two.
    let cpu_per_event = (cpu_seconds() - cpu_started) / head.n_events.max(1) as f64;
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
                      "cpu_microseconds_per_event": cpu_per_event * 1e6,
                      "in_memory_events_per_second": memory_per_second,
                      "build_seconds": build_seconds, "head_hash": head.head_hash }));
    out.say(format!(
        "verified {} events from the store in {elapsed:.2}s: {per_second:.0} events/s ({:.2} µs of CPU each); the chain alone, in memory: {memory_per_second:.0} events/s (log built in {build_seconds:.1}s)",
        head.n_events,
        cpu_per_event * 1e6
    ));
    Ok(0)
}

/// CPU time this process has used (user and system, all threads), from /proc (0 where
/// there is none).
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return 0.0 };
    // Fields after the command name (which may hold spaces, so split after its `)`).
    let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let ticks: u64 = rest.split_whitespace().skip(11).take(2).filter_map(|f| f.parse::<u64>().ok()).sum();
    ticks as f64 / 100.0
}

/// Resident memory of this process, from /proc (0 where there is none).
fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|pages| pages.parse::<u64>().ok()))
        .map_or(0, |pages| pages * 4096)
}

/// A small deterministic generator, so every run measures the same organisation.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, below: usize) -> usize {
        self.0 = self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        usize::try_from((self.0 >> 33) % (below.max(1) as u64)).unwrap_or_default()
    }
}

pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(idx).copied().unwrap_or(0.0)
}

const N_ACTIONS: usize = 40;
const N_ENVIRONMENTS: usize = 10;
const N_SERVICES: usize = 2000;

/// A generated org: `n_policies` forbids and permits over 40 actions and 10 environments
/// holding 2,000 services.
fn generated_baseline(n_policies: usize) -> Result<Arc<waiver_engine::Baseline>, CliError> {
    let mut policies = String::new();
    for idx in 0..n_policies {
        let action = idx % N_ACTIONS;
        let env = idx % N_ENVIRONMENTS;
        let text = match idx % 10 {
            0 => format!(
                "@id(\"f{idx}\") forbid (principal, action == Action::\"a{action}\", resource in Environment::\"env{env}\") unless {{ context has change_window && context.change_window }};\n"
            ),
            1 => format!(
                "@id(\"f{idx}\") forbid (principal is Agent, action == Action::\"a{action}\", resource in Environment::\"env{env}\");\n"
            ),
            _ => format!(
                "@id(\"p{idx}\") permit (principal, action == Action::\"a{action}\", resource in Environment::\"env{env}\") when {{ context has tier && context.tier > {} }};\n",
                idx % 5
            ),
        };
        policies.push_str(&text);
    }
    let mut entities = Vec::new();
    for env in 0..N_ENVIRONMENTS {
        entities.push(json!({"uid": {"type": "Environment", "id": format!("env{env}")}, "attrs": {}, "parents": []}));
    }
    for svc in 0..N_SERVICES {
        entities.push(json!({"uid": {"type": "Service", "id": format!("svc{svc}")}, "attrs": {},
                             "parents": [{"type": "Environment", "id": format!("env{}", svc % N_ENVIRONMENTS)}]}));
    }
    let entities = serde_json::to_string(&entities).map_err(|e| CliError::Failure(e.into()))?;
    Ok(Arc::new(
        waiver_engine::Baseline::parse(&policies, None, Some(&entities))
            .map_err(|e| CliError::Failure(anyhow::anyhow!("generated baseline: {e}")))?,
    ))
}

/// `waiver bench decisions`: generates a baseline of `n_policies`, `n_exceptions` over
/// `n_subjects`, then times the full decision and plain Cedar over the same baseline, in
/// one run, on one thread.
pub async fn decisions(
    n_exceptions: usize,
    n_subjects: usize,
    n_policies: usize,
    seconds: f64,
    source: DecisionSource,
    out: &Printer,
) -> Result<u8, CliError> {
    let baseline = generated_baseline(n_policies)?;

    // Exceptions: built once from a template through the real domain type.
    let now: Timestamp = "2026-11-23T12:00:00Z".parse().map_err(|e: jiff::Error| CliError::Failure(e.into()))?;
    let template = template_exception(now)?;
    let mut rng = Lcg(42);
    let rss_before = rss_bytes();
    let started = Instant::now();
    // Generated one at a time and compiled as they come, so the measured memory is the
    // engine's, not a million domain objects waiting to be compiled.
    let make = |idx: usize, rng: &mut Lcg| -> Result<waiver_core::Exception, CliError> {
        let mut e = template.clone();
        e.id = waiver_core::ExceptionId::new(idx as u64 + 1);
        e.subject = format!("ServiceAccount:sa{}", idx % n_subjects.max(1))
            .parse()
            .map_err(|e: waiver_core::id::IdError| CliError::Failure(anyhow::anyhow!("{e}")))?;
        let action = rng.next(N_ACTIONS);
        let env = rng.next(N_ENVIRONMENTS);
        e.scope.actions = vec![format!("a{action}")];
        e.scope.resources = vec![waiver_core::ResourceScope {
            entity: format!("Environment:env{env}")
                .parse()
                .map_err(|e: waiver_core::id::IdError| CliError::Failure(anyhow::anyhow!("{e}")))?,
            descendants: true,
        }];
        let forbid = (0..n_policies).step_by(10).find(|p| p % N_ACTIONS == action && p % N_ENVIRONMENTS == env);
        e.waives = vec![waiver_core::Waived::DefaultDeny];
        if let Some(p) = forbid {
            e.waives
                .push(waiver_core::Waived::parse(&format!("f{p}")).map_err(|e| CliError::Failure(anyhow::anyhow!(e)))?);
        }
        Ok(e)
    };
    let mut write_seconds = None;
    let mut load_ready = None;
    let snapshot = match &source {
        DecisionSource::Memory => {
            let mut failure = None;
            let stream = (0..n_exceptions).map_while(|idx| match make(idx, &mut rng) {
                Ok(e) => Some(e),
                Err(e) => {
                    failure = Some(e);
                    None
                }
            });
            let snapshot = waiver_engine::Snapshot::new(baseline.clone(), stream);
            if let Some(e) = failure {
                return Err(e);
            }
            snapshot
        }
        DecisionSource::Store(store, _) => {
            // Written in large commits (unless a reused store holds them already: they are
            // generated all the same, so the requests drawn next are the same), then loaded
            // the way `serve` loads at start.
            let held = store.last_seq().await? > 0;
            for first in (0..n_exceptions).step_by(10_000) {
                let mut commit = Commit::default();
                for idx in first..(first + 10_000).min(n_exceptions) {
                    let e = make(idx, &mut rng)?;
                    if held {
                        continue;
                    }
                    // Every write is sealed by an event, as the service writes them.
                    commit.events.push(waiver_core::audit::EventDraft {
                        at: e.created_at,
                        actor: waiver_core::Principal::system(),
                        event_type: "exception.imported".into(),
                        exception_id: Some(e.id),
                        data: serde_json::json!({"bench": "a generated exception"}),
                    });
                    commit.exceptions.push(waiver_store::Write::insert(e));
                }
                if !held {
                    store.commit(Box::new(move |_| commit)).await?;
                }
            }
            write_seconds = Some(started.elapsed().as_secs_f64());
            // The register checkpoint the leader writes (unless a reused store holds one).
            if waiver_store::checkpoint::newest(store.as_ref()).await?.is_none() {
                let writing = Instant::now();
                let as_of = store.last_seq().await?;
                let terms = store.exception_terms().await?;
                let at = now;
                let commit =
                    tokio::task::spawn_blocking(move || waiver_store::checkpoint::commit(&terms, as_of, None, at))
                        .await
                        .map_err(|e| CliError::Failure(e.into()))?;
                store.commit(Box::new(move |_| commit)).await?;
                out.say(format!("  checkpointed the register in {:.0} ms", writing.elapsed().as_secs_f64() * 1000.0));
            }
            // As `serve` loads at start: the checkpoint and the records sealed since, compiled;
            // the whole records follow once the node is ready. First, on a cold heap, as a
            // node starts.
            let rss_before = rss_bytes();
            let loading = Instant::now();
            let cpu_before = cpu_seconds();
            let snapshot = crate::serve::compile_from_store(store.as_ref(), &baseline).await?;
            let ready = loading.elapsed().as_secs_f64();
            let cpu = cpu_seconds() - cpu_before;
            let grown = rss_bytes().saturating_sub(rss_before) as f64 / n_exceptions.max(1) as f64;
            // The peer in the same run: every record's terms, each checked against its seal.
            let loading = Instant::now();
            let cpu_before = cpu_seconds();
            let from_records = crate::serve::compile_from_records(store.as_ref(), &baseline).await?;
            let (records_ready, records_cpu) = (loading.elapsed().as_secs_f64(), cpu_seconds() - cpu_before);
            drop(from_records);
            out.say(format!(
                "  the process grew by {grown:.0} B per exception over the load (the snapshot, and what the allocator kept of the read); \
                 from every record instead: {:.0} ms ({records_cpu:.1} s of CPU); from the checkpoint {:.2}× that",
                records_ready * 1000.0,
                ready / records_ready
            ));
            // What each record changed since the checkpoint adds to a load: one read, checked
            // against its seal.
            let reading = Instant::now();
            let sample = 20_000.min(n_exceptions);
            let ids: Vec<waiver_core::ExceptionId> = (0..sample)
                .map(|n| waiver_core::ExceptionId::new((n * n_exceptions / sample.max(1)) as u64 + 1))
                .collect();
            for batch in ids.chunks(5_000) {
                let filter = waiver_store::ExceptionFilter { ids: Some(batch.to_vec()), ..Default::default() };
                store.exceptions(&filter).await?;
            }
            out.say(format!(
                "  a record changed since the checkpoint adds {:.1} µs to a load ({sample} spread over the register, read in batches as a load reads them)",
                reading.elapsed().as_secs_f64() * 1e6 / sample.max(1) as f64
            ));
            let (whole, rss_before) = (Instant::now(), rss_bytes());
            let records = store.exceptions(&waiver_store::ExceptionFilter::default()).await?;
            let whole = whole.elapsed().as_secs_f64();
            let held = rss_bytes().saturating_sub(rss_before) as f64 / n_exceptions.max(1) as f64;
            out.say(format!(
                "  loaded from the store in {:.0} ms ({cpu:.1} s of CPU): the register checkpoint and the records sealed since, checked against their seals and compiled; \
                 then {:.0} ms to read and check the {} whole records (after ready, not in the load; the process grew by {held:.0} B per exception more)",
                ready * 1000.0,
                whole * 1000.0,
                records.len(),
            ));
            drop(records);
            load_ready = Some(ready * 1000.0);
            snapshot
        }
    };
    let load_ms = match (load_ready, write_seconds) {
        (Some(ready), _) => ready,
        (None, Some(w)) => (started.elapsed().as_secs_f64() - w) * 1000.0,
        (None, None) => started.elapsed().as_secs_f64() * 1000.0,
    };
    let rss_after = rss_bytes();
    // Loading from a store holds the read records while compiling, so only the in-memory
    // build measures the engine's own footprint.
    let bytes_per_exception = matches!(source, DecisionSource::Memory)
        .then(|| rss_after.saturating_sub(rss_before) as f64 / n_exceptions.max(1) as f64);

    let requests: Vec<waiver_engine::DecisionRequest> = (0..10_000)
        .map(|_| waiver_engine::DecisionRequest {
            subject: waiver_engine::Target {
                entity_type: "ServiceAccount".into(),
                id: format!("sa{}", rng.next(n_subjects)),
                properties: None,
            },
            action: format!("a{}", rng.next(N_ACTIONS)),
            resource: waiver_engine::Target {
                entity_type: "Service".into(),
                id: format!("svc{}", rng.next(N_SERVICES)),
                properties: None,
            },
            context: json!({ "change_window": rng.next(2) == 0, "tier": rng.next(6) }),
        })
        .collect();

    let measure = |f: &dyn Fn(&waiver_engine::DecisionRequest) -> bool| {
        let mut samples = Vec::new();
        let mut allowed = 0usize;
        let deadline = Instant::now() + std::time::Duration::from_secs_f64(seconds);
        let mut idx = 0;
        while Instant::now() < deadline {
            let Some(request) = requests.get(idx % requests.len()) else { break };
            let t = Instant::now();
            let ok = f(request);
            samples.push(t.elapsed().as_secs_f64() * 1e6);
            allowed += usize::from(ok);
            idx += 1;
        }
        samples.sort_by(|a, b| a.total_cmp(b));
        (samples, allowed)
    };
    let (full, full_allowed) = measure(&|r| snapshot.decide(r, now, false).is_ok_and(|d| d.allowed));
    let (plain, plain_allowed) = measure(&|r| snapshot.baseline_only(r).unwrap_or(false));
    let (sliced, _) = measure(&|r| snapshot.slice_only(r).unwrap_or(false));
    // Decisions a second on every core at once (each thread replays the requests from its
    // own offset): what a batch can reach when the engine is all there is.
    let threads = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let parallel = {
        let deadline = Instant::now() + std::time::Duration::from_secs_f64(seconds);
        let started = Instant::now();
        let done: usize = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..threads)
                .map(|t| {
                    let (snapshot, requests) = (&snapshot, &requests);
                    scope.spawn(move || {
                        // Every request in turn, from this thread's own offset on (the clock
                        // read once per 256 decisions).
                        let mut next = requests.iter().cycle().skip(t * 997);
                        let mut n = 0usize;
                        while Instant::now() < deadline {
                            for request in next.by_ref().take(256) {
                                let _ = std::hint::black_box(snapshot.decide(request, now, false));
                            }
                            n += 256;
                        }
                        n
                    })
                })
                .collect();
            workers.into_iter().map(|w| w.join().unwrap_or(0)).sum()
        });
        done as f64 / started.elapsed().as_secs_f64()
    };
    let by_exception =
        requests.iter().filter(|r| snapshot.decide(r, now, false).is_ok_and(|d| d.exception.is_some())).count();
    // What was decided, request by request (allowed, and by which exception): equal digests
    // mean the snapshot answers alike whichever store it was loaded from.
    let digest = {
        use std::hash::{Hash as _, Hasher as _};
        let mut h = std::hash::DefaultHasher::new();
        for r in &requests {
            match snapshot.decide(r, now, false) {
                Ok(d) => (d.allowed, d.exception.map(|g| g.id.to_string())).hash(&mut h),
                Err(e) => e.to_string().hash(&mut h),
            }
        }
        format!("{:016x}", h.finish())
    };
    let result = json!({
        "exceptions": n_exceptions, "subjects": n_subjects, "policies": n_policies,
        "decisions": full.len(), "p50_us": percentile(&full, 0.5), "p99_us": percentile(&full, 0.99),
        "baseline_only_decisions": plain.len(),
        "baseline_only_p50_us": percentile(&plain, 0.5), "baseline_only_p99_us": percentile(&plain, 0.99),
        "slice_only_p50_us": percentile(&sliced, 0.5), "slice_only_p99_us": percentile(&sliced, 0.99),
        "threads": threads, "decisions_per_second_all_threads": parallel,
        "allowed_share": full_allowed as f64 / full.len().max(1) as f64,
        "baseline_only_allowed_share": plain_allowed as f64 / plain.len().max(1) as f64,
        "granted_by_exception_share": by_exception as f64 / requests.len() as f64,
        "rss_bytes": rss_after, "engine_bytes_per_exception": bytes_per_exception,
        "load_ms": load_ms, "source": source.name(), "store_write_seconds": write_seconds,
        "decision_digest": digest,
    });
    out.json(&result);
    out.say(format!(
        "{n_exceptions} exceptions over {n_subjects} subjects, {n_policies} policies ({}): decision p50 {:.2} µs, p99 {:.2} µs; plain Cedar p50 {:.2} µs (ratio {:.2}); Cedar on the same slice p50 {:.2} µs, p99 {:.2} µs (overlay ratio p50 {:.2}, p99 {:.2}); {:.0} decisions/s on {threads} threads; {}; load {:.0} ms; {:.0}% granted by an exception; digest {digest}",
        source.name(),
        percentile(&full, 0.5),
        percentile(&full, 0.99),
        percentile(&plain, 0.5),
        percentile(&full, 0.5) / percentile(&plain, 0.5).max(f64::EPSILON),
        percentile(&sliced, 0.5),
        percentile(&sliced, 0.99),
        percentile(&full, 0.5) / percentile(&sliced, 0.5).max(f64::EPSILON),
        percentile(&full, 0.99) / percentile(&sliced, 0.99).max(f64::EPSILON),
        parallel,
        bytes_per_exception.map_or_else(|| "memory not measured".to_owned(), |b| format!("{b:.0} B/exception")),
        load_ms,
        100.0 * by_exception as f64 / requests.len() as f64,
    ));

    Ok(0)
}

/// `waiver bench decisions [--through-store sqlite|postgres]`: opens the scratch store,
/// runs the benchmark, and drops the scratch database.
pub async fn decisions_through(
    cli: &crate::cli::Cli,
    shape: Shape,
    seconds: f64,
    store: Option<crate::cli::BenchStore>,
    reuse: Option<&std::path::Path>,
    out: &Printer,
) -> Result<u8, CliError> {
    let Shape { exceptions: n_exceptions, subjects: n_subjects, policies: n_policies } = shape;
    match store {
        None => decisions(n_exceptions, n_subjects, n_policies, seconds, DecisionSource::Memory, out).await,
        Some(crate::cli::BenchStore::Sqlite) => {
            let (_dir, store) = match reuse {
                Some(path) => (None, Arc::new(SqliteStore::open(path).await?)),
                None => {
                    let (dir, store) = scratch_store().await?;
                    (Some(dir), store)
                }
            };
            decisions(n_exceptions, n_subjects, n_policies, seconds, DecisionSource::Store(store, "sqlite"), out).await
        }
        Some(crate::cli::BenchStore::Postgres) => {
            let Some(url) = cli.database_url.as_deref() else {
                return Err(CliError::Usage(
                    "--through-store postgres needs --database-url postgres://… (a scratch database is made beside it)"
                        .into(),
                ));
            };
            let scratch = waiver_store_postgres::scratch_database(url).await?;
            let store = Arc::new(waiver_store_postgres::PostgresStore::connect(&scratch).await?);
            let result = decisions(
                n_exceptions,
                n_subjects,
                n_policies,
                seconds,
                DecisionSource::Store(store.clone(), "postgres"),
                out,
            )
            .await;
            store.close().await;
            waiver_store_postgres::drop_scratch_database(&scratch).await?;
            result
        }
    }
}

/// The generated organisation's size.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub exceptions: usize,
    pub subjects: usize,
    pub policies: usize,
}

/// Where `bench decisions` gets its snapshot from.
pub enum DecisionSource {
    /// Compiled straight from generated exceptions.
    Memory,
    /// Written to a store first, then loaded from it as `serve` loads; with its name.
    Store(Arc<dyn Store>, &'static str),
}

impl DecisionSource {
    fn name(&self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::Store(_, name) => name,
        }
    }
}

/// An approved, live exception to copy from.
pub(crate) fn template_exception(now: Timestamp) -> Result<waiver_core::Exception, CliError> {
    let p = |s: &str| Principal::parse("p", s).map_err(|e| CliError::Failure(anyhow::anyhow!("{e}")));
    Ok(waiver_core::Exception {
        id: waiver_core::ExceptionId::new(1),
        kind: waiver_core::Kind::Planned,
        state: waiver_core::State::Approved,
        subject: "ServiceAccount:sa0"
            .parse()
            .map_err(|e: waiver_core::id::IdError| CliError::Failure(anyhow::anyhow!("{e}")))?,
        waives: vec![],
        scope: waiver_core::Scope { actions: vec![], resources: vec![] },
        condition: None,
        compensating_controls: vec![waiver_core::CompensatingControl {
            kind: waiver_core::ControlKind::ExtraLogging,
            description: "logged".into(),
            enforced: true,
        }],
        justification: "bench".into(),
        normal_path_unavailable: "bench".into(),
        affected_systems: vec![],
        references: vec![],
        risk: waiver_core::Risk::Medium,
        credential_type: waiver_core::CredentialType::WorkloadToken,
        requester: p("dana")?,
        owner: p("sam")?,
        approvals: vec![],
        approvals_required: 1,
        starts_at: now - SignedDuration::from_hours(24),
        expires_at: now + SignedDuration::from_hours(24 * 30),
        review: waiver_core::Review {
            every: waiver_core::Period::from_days(30),
            next_due: now,
            revalidate_on: vec![],
            last_attested: None,
        },
        remediation: None,
        frameworks: vec![],
        renewals: 0,
        pending_renewal: None,
        request_expires_at: None,
        post_use_review: None,
        suspended_by: None,
        resolution: None,
        pending_transfer: None,
        usage: Default::default(),
        notices: Vec::new(),
        created_at: now,
        updated_at: now,
        version: 2,
    })
}

/// `waiver bench reports`: every report over a generated register held in memory, as the
/// serving node holds it. The records carry what their events summarise (renewals, usage,
/// approvals, post-use reviews), so `version` — the events each one has — sums to the size
/// of the log they stand for; no report reads the events themselves.
#[allow(clippy::indexing_slicing, reason = "serde_json::Value indexing yields Null; it never panics")]
pub async fn reports(n_exceptions: usize, n_subjects: usize, n_policies: usize, out: &Printer) -> Result<u8, CliError> {
    use waiver_core::exception::{Resolution, Usage};
    use waiver_core::{Approval, CredentialType, Kind, PostUseReview, Risk, State};
    use waiver_evidence::reports::{Options, Report};
    let fail = |e: String| CliError::Failure(anyhow::anyhow!(e));
    let baseline = generated_baseline(n_policies)?;
    let now: Timestamp = "2026-11-23T12:00:00Z".parse().map_err(|e: jiff::Error| CliError::Failure(e.into()))?;
    let template = template_exception(now)?;
    let sam = Principal::parse("approver", "sam").map_err(|e| fail(e.to_string()))?;
    let hours = |h: usize| SignedDuration::from_hours(h as i64);
    let mut rng = Lcg(7);
    let started = Instant::now();
    let mut exceptions: Vec<waiver_core::Exception> = Vec::with_capacity(n_exceptions);
    let mut events = 0u64;
    for idx in 0..n_exceptions {
        let mut e = template.clone();
        e.id = waiver_core::ExceptionId::new(idx as u64 + 1);
        e.subject =
            format!("ServiceAccount:sa{}", idx % n_subjects.max(1)).parse().map_err(|e| fail(format!("{e}")))?;
        let action = rng.next(N_ACTIONS);
        let env = rng.next(N_ENVIRONMENTS);
        e.scope.actions = vec![format!("a{action}")];
        e.scope.resources = vec![waiver_core::ResourceScope {
            entity: format!("Environment:env{env}").parse().map_err(|e| fail(format!("{e}")))?,
            descendants: true,
        }];
        let forbid = (0..n_policies).step_by(10).find(|p| p % N_ACTIONS == action && p % N_ENVIRONMENTS == env);
        e.waives = vec![match forbid {
            Some(p) => waiver_core::Waived::parse(&format!("f{p}")).map_err(fail)?,
            None => waiver_core::Waived::DefaultDeny,
        }];
        // Filed within the past year, for one to ninety days.
        let created = now - hours(rng.next(365 * 24));
        e.created_at = created;
        e.starts_at = created;
        e.expires_at = created + hours(24 * (1 + rng.next(90)));
        e.risk = match rng.next(4) {
            0 => Risk::Low,
            1 => Risk::Medium,
            2 => Risk::High,
            _ => Risk::Critical,
        };
        e.credential_type = match rng.next(3) {
            0 => CredentialType::WorkloadToken,
            1 => CredentialType::ApiKey,
            _ => CredentialType::LongLivedSecret,
        };
        e.approvals = vec![Approval { by: sam.clone(), at: created, comment: None, round: 0 }];
        e.renewals = if rng.next(10) == 0 { 1 + rng.next(3) as u32 } else { 0 };
        match rng.next(20) {
            0 => {
                e.kind = Kind::BreakGlass;
                e.approvals.clear();
                e.expires_at = created + hours(1 + rng.next(4));
                let reviewed = rng.next(3) != 0;
                e.state = if reviewed { State::Closed } else { State::AwaitingPostUseReview };
                e.post_use_review = Some(PostUseReview {
                    within: waiver_core::Period::from_days(3),
                    reviewed_by: reviewed.then(|| sam.clone()),
                    reviewed_at: reviewed.then(|| e.expires_at + hours(1 + rng.next(96))),
                    comment: None,
                });
            }
            1 => {
                e.state = State::Revoked;
                e.resolution = Some(Resolution { by: sam.clone(), at: created + hours(12), comment: None });
            }
            2 => {
                e.state = State::Requested;
                e.approvals.clear();
                e.request_expires_at = Some(created + hours(24 * 7));
            }
            _ => e.state = State::Approved,
        }
        if rng.next(5) != 0 {
            e.usage = Usage {
                count: 1 + rng.next(1000) as u64,
                last_used_at: Some(created + hours(rng.next(24))),
                scope_used: 1,
            };
        }
        e.frameworks = waiver_core::frameworks::default_mapping(&e, None).into_iter().map(String::from).collect();
        e.version = 6 + rng.next(9) as u64;
        events += e.version;
        exceptions.push(e);
    }
    // Held as a serving node holds them; each report then takes the register from it, as
    // `Service::report` does.
    let records = waiver_service::records::Records::default();
    records.replace(&exceptions);
    drop(exceptions);
    let identities = (0..n_subjects)
        .map(|idx| -> Result<waiver_core::Identity, CliError> {
            Ok(waiver_core::Identity {
                entity: format!("ServiceAccount:sa{idx}").parse().map_err(|e| fail(format!("{e}")))?,
                kind: waiver_core::IdentityKind::ServiceAccount,
                owner: sam.clone(),
                team: Some(format!("team{}", idx % 50)),
                status: if idx % 500 == 0 {
                    waiver_core::IdentityStatus::Offboarded
                } else {
                    waiver_core::IdentityStatus::Active
                },
                credential_type: CredentialType::WorkloadToken,
                attributes: Default::default(),
                created_at: now,
                updated_at: now,
                version: 1,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let generated = started.elapsed().as_secs_f64();
    let rss = rss_bytes();
    out.say(format!(
        "generated {n_exceptions} exceptions standing for {events} events over {n_subjects} subjects in {generated:.1} s; resident {:.0} MiB",
        rss as f64 / 1048576.0
    ));
    let mut results = Vec::new();
    for name in Report::NAMES {
        let report = Report::parse(name).map_err(fail)?;
        let mut samples = Vec::new();
        let mut size = 0;
        let mut precedent = None;
        for _ in 0..3 {
            let t = Instant::now();
            let held = records.all().ok_or_else(|| fail("the register is not loaded".into()))?;
            let register =
                waiver_evidence::Register::new(now, held, identities.clone(), Rules::default(), Some(baseline.clone()));
            let value = waiver_evidence::reports::run(report, &register, Options::default());
            samples.push(t.elapsed().as_secs_f64());
            size = serde_json::to_vec(&value).map_or(0, |v| v.len());
            if let Some(clusters) = value["clusters"].as_array() {
                // What the proposals claim, so a fast but failing check shows.
                let sum = |key: &str| {
                    clusters.iter().map(|c| c["proposal"][key].as_array().map_or(0, Vec::len)).sum::<usize>()
                };
                let errors = clusters.iter().filter(|c| c["proposal"]["error"].is_string()).count();
                precedent = Some(json!({"clusters": clusters.len(), "checked_covered": sum("makes_unnecessary"),
                                        "checked_still_needed": sum("still_needed"), "errors": errors}));
            }
        }
        samples.sort_by(|a, b| a.total_cmp(b));
        let median = percentile(&samples, 0.5);
        out.say(format!(
            "  {name:<12} median {:>8.0} ms (of 3), {size} bytes of JSON{}",
            median * 1000.0,
            precedent.as_ref().map_or(String::new(), |p| format!("; {p}"))
        ));
        results.push(
            json!({"report": name, "median_seconds": median, "runs": samples, "bytes": size, "precedent": precedent}),
        );
    }
    out.json(&json!({"exceptions": n_exceptions, "events": events, "subjects": n_subjects, "policies": n_policies,
                     "rss_bytes": rss, "reports": results}));
    Ok(0)
}

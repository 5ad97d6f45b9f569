//! What a serving node does besides answering: follow the log into the decision snapshot,
//! flush usage, run the scheduler's jobs, deliver webhooks, refresh the register gauges.
//! One tokio task per loop; each job body is a service call (a function of `now`).

use std::{
    collections::BTreeMap,
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use waiver_core::{ExceptionId, State};
use waiver_http::{DecisionState, metrics::RegisterGauges};
use waiver_service::Service;
use waiver_store::ExceptionFilter;

/// A background loop's name and task, for shutdown to wait on.
pub type Task = (&'static str, tokio::task::JoinHandle<()>);

/// Runs `job` every `period` until `stop` turns true, logging failures (the next run
/// retries). A run in progress when `stop` turns finishes first: what it did is recorded.
pub fn every<F, Fut>(
    name: &'static str,
    period: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
    mut job: F,
) -> Task
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = Result<usize, String>> + Send,
{
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => break,
            }
            match job().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(job = name, recorded = n, "scheduler job ran"),
                Err(e) => tracing::warn!(job = name, "scheduler job failed; it runs again: {e}"),
            }
            if *stop.borrow() {
                break;
            }
        }
    });
    (name, task)
}

/// Keeps `leading` true while this node holds the store's leadership, trying to take it
/// every two seconds otherwise; a lost session (a dead database connection) ends it.
fn hold_leadership(service: &Service, leading: Arc<AtomicBool>) {
    let store = service.store().clone();
    tokio::spawn(async move {
        loop {
            match store.try_lead().await {
                Ok(Some(mut leadership)) => {
                    tracing::info!("this node leads: it runs the scheduler");
                    leading.store(true, Ordering::SeqCst);
                    while leadership.still_leading().await {
                        tokio::time::sleep(Duration::from_secs(2)).await;
                    }
                    leading.store(false, Ordering::SeqCst);
                    tracing::warn!("this node no longer leads");
                }
                Ok(None) => {}
                Err(e) => tracing::debug!("cannot try for leadership: {e}"),
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    });
}

/// Starts the scheduler: expiry (every 250 ms, so expiries are recorded within a second),
/// notices (every 30 s), the register checkpoint (checked every 60 s), webhook delivery
/// (every 500 ms) and the register gauges (15 s).
/// Expiry and notices run only on the leader (one node of many on a shared store); webhook
/// delivery runs on every node, each subscription claimed by one node at a time.
pub fn start_scheduler(
    service: &Service,
    decisions: &DecisionState,
    stop: &tokio::sync::watch::Receiver<bool>,
) -> Vec<Task> {
    let leading = Arc::new(AtomicBool::new(false));
    hold_leadership(service, leading.clone());
    let mut tasks = Vec::new();
    let (s, l) = (service.clone(), leading.clone());
    tasks.push(every("expiry", Duration::from_millis(250), stop.clone(), move || {
        let (s, l) = (s.clone(), l.clone());
        async move {
            if !l.load(Ordering::SeqCst) {
                return Ok(0);
            }
            s.record_expiries().await.map(|ids| ids.len()).map_err(|e| e.to_string())
        }
    }));
    let (s, l) = (service.clone(), leading.clone());
    tasks.push(every("notices", Duration::from_secs(30), stop.clone(), move || {
        let (s, l) = (s.clone(), l.clone());
        async move {
            if !l.load(Ordering::SeqCst) {
                return Ok(0);
            }
            s.record_notices().await.map(|ids| ids.len()).map_err(|e| e.to_string())
        }
    }));
    // The register checkpoint, refreshed once 2 % of the register changed: what every
    // node loads at start instead of every record.
    let (s, l, d) = (service.clone(), leading.clone(), decisions.clone());
    tasks.push(every("checkpoint", Duration::from_secs(60), stop.clone(), move || {
        let (s, l, d) = (s.clone(), l.clone(), d.clone());
        async move {
            if !l.load(Ordering::SeqCst) {
                return Ok(0);
            }
            let count = d.snapshot.load().n_exceptions();
            s.checkpoint_register(count).await.map_err(|e| e.to_string())
        }
    }));
    // Webhooks run on every node: each subscription is claimed by one node at a time.
    let (s, halt) = (service.clone(), stop.clone());
    tasks.push(every("webhooks", Duration::from_millis(500), stop.clone(), move || {
        let (s, halt) = (s.clone(), halt.clone());
        async move { deliver_webhooks(&s, &halt).await }
    }));
    let (s, d) = (service.clone(), decisions.clone());
    tasks.push(every("gauges", Duration::from_secs(15), stop.clone(), move || {
        let (s, d) = (s.clone(), d.clone());
        async move { refresh_gauges(&s, &d).await.map(|()| 0) }
    }));
    tasks
}

/// Starts notification delivery (every second, on every node: each channel is claimed by one
/// node at a time) and the daily digest (checked every minute).
pub fn start_notifications(
    service: &Service,
    notifier: crate::notify::Notifier,
    stop: &tokio::sync::watch::Receiver<bool>,
) -> Vec<Task> {
    let mut tasks = Vec::new();
    let (s, n, halt) = (service.clone(), notifier.clone(), stop.clone());
    tasks.push(every("notifications", Duration::from_secs(1), stop.clone(), move || {
        let (s, n, halt) = (s.clone(), n.clone(), halt.clone());
        async move { n.deliver(&s, &halt).await }
    }));
    let (s, n) = (service.clone(), notifier);
    tasks.push(every("digest", Duration::from_secs(60), stop.clone(), move || {
        let (s, n) = (s.clone(), n.clone());
        async move { n.digests(&s).await }
    }));
    tasks
}

/// Most events one follower pass reads.
const CATCH_UP_PASS: usize = 200_000;
/// Above this many exceptions named in one pass, the follower reloads the whole register.
const RELOAD_ABOVE: usize = 2_000;

/// Follows the event log into the decision snapshot: changes made by other processes (the
/// CLI, other replicas) and by this node's scheduler. Only the exceptions the new events
/// name are reloaded; a `baseline.set` puts the log's new baseline in force (unless a
/// `--baseline` pinned one) and rebuilds, a `rules.set` the new rules — a node that cannot
/// load either reports not ready until it can; a token event reloads the token table.
pub fn follow_log(service: Service, decisions: DecisionState, follow_baseline: bool, start_after: u64) {
    tokio::spawn(async move {
        let store = service.store().clone();
        let mut seen = start_after;
        decisions.metrics.applied_seq.store(seen, Ordering::Relaxed);
        loop {
            // Woken by the store's change feed (PostgreSQL NOTIFY), or after 250 ms anyway.
            store.wait_for_change(seen, Duration::from_millis(250)).await;
            // Everything new, up to a bound (a replica back from a long pause may be far
            // behind; the rest comes on the next pass).
            let mut newer = Vec::new();
            let mut failed = false;
            loop {
                let after = newer.last().map_or(seen, |e: &waiver_core::audit::EventRecord| e.seq);
                match store.events(after, 4096).await {
                    Ok(page) => {
                        let full = page.len() == 4096;
                        newer.extend(page);
                        if !full || newer.len() >= CATCH_UP_PASS {
                            break;
                        }
                    }
                    Err(_) => {
                        failed = true;
                        break;
                    }
                }
            }
            if failed {
                tokio::time::sleep(Duration::from_millis(250)).await;
                continue;
            }
            let Some(last) = newer.last() else { continue };
            let mut ids: Vec<ExceptionId> =
                newer.iter().filter_map(|e| e.exception_id.as_deref()?.parse().ok()).collect();
            ids.sort();
            ids.dedup();
            // What the log last put in force, loaded again while an earlier load failed.
            let retry = decisions.artifact_failure().is_some();
            let mut failure = None;
            if follow_baseline && (retry || newer.iter().any(|e| e.event_type == "baseline.set")) {
                match service.stored_baseline().await {
                    Ok(Some((seq, next))) => {
                        let next = Arc::new(next);
                        service.set_baseline(next.clone());
                        match store.exceptions(&ExceptionFilter::default()).await {
                            Ok(all) => decisions.rebuild(next, &all),
                            Err(e) => {
                                tracing::warn!("cannot reload exceptions for the new baseline: {e}");
                                continue;
                            }
                        }
                        tracing::info!(event = seq, "the baseline of the log is in force");
                    }
                    Ok(None) => {}
                    Err(e) => failure = Some(format!("the baseline the log put in force cannot be loaded: {e}")),
                }
            }
            if retry || newer.iter().any(|e| e.event_type == "rules.set") {
                match service.stored_rules().await {
                    Ok(Some((seq, rules))) => {
                        service.set_rules(rules);
                        tracing::info!(event = seq, "the rules of the log are in force");
                    }
                    Ok(None) => {}
                    Err(e) => {
                        failure.get_or_insert(format!("the rules the log put in force cannot be loaded: {e}"));
                    }
                }
            }
            if retry || failure.is_some() {
                if let Some(why) = failure.as_deref()
                    && decisions.artifact_failure().as_deref() != Some(why)
                {
                    tracing::error!("{why}; this node reports not ready and keeps what it had");
                }
                decisions.set_artifact_failure(failure);
            }
            if newer.iter().any(|e| e.event_type.starts_with("identity."))
                && let Err(e) = decisions.reload_offboarded(store.as_ref()).await
            {
                tracing::warn!("cannot reload the inventory's offboarded identities: {e}");
                continue;
            }
            if newer.iter().any(|e| e.event_type.starts_with("token."))
                && let Err(e) = decisions.reload_tokens(store.as_ref()).await
            {
                tracing::warn!("cannot reload tokens: {e}");
                continue;
            }
            if ids.len() > RELOAD_ABOVE {
                // Far behind: one read of the register beats thousands of single reads.
                match store.exceptions(&ExceptionFilter::default()).await {
                    Ok(all) => decisions.rebuild(decisions.snapshot.load().baseline().clone(), &all),
                    Err(e) => {
                        tracing::warn!("cannot reload the register to catch up: {e}");
                        continue;
                    }
                }
                seen = last.seq;
                decisions.metrics.applied_seq.store(seen, Ordering::Relaxed);
                continue;
            }
            let mut changed = Vec::with_capacity(ids.len());
            for id in ids {
                match store.exception(id).await {
                    Ok(Some(e)) => changed.push(e),
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!("cannot refresh {id}: {e}");
                        failed = true;
                        break;
                    }
                }
            }
            if failed {
                // Retry the same events next tick: nothing may be skipped.
                continue;
            }
            decisions.apply_changes(&changed);
            seen = last.seq;
            decisions.metrics.applied_seq.store(seen, Ordering::Relaxed);
        }
    });
}

/// How long a claim on a webhook subscription lasts: several 10 s send timeouts, so a
/// live holder renews long before it runs out.
const WEBHOOK_LEASE: Duration = Duration::from_secs(30);

/// Delivers due webhook messages, one subscription at a time, in order. A failure stops
/// that subscription's batch and schedules a retry with backoff; the cursor only moves past
/// what the receiver acknowledged (or what the subscription filters out).
async fn deliver_webhooks(service: &Service, stop: &tokio::sync::watch::Receiver<bool>) -> Result<usize, String> {
    let store = service.store();
    let allow = &service.rules().webhook_allow_internal;
    let mut delivered = 0;
    for due in service.webhooks_due().await.map_err(|e| e.to_string())? {
        if !store.claim_webhook(&due.id, WEBHOOK_LEASE).await.map_err(|e| e.to_string())? {
            continue; // another replica delivers this one
        }
        // Read again under the claim: the previous holder may have moved the cursor since.
        let Some(hook) = service.webhooks_due().await.map_err(|e| e.to_string())?.into_iter().find(|h| h.id == due.id)
        else {
            continue;
        };
        let messages = service.webhook_messages(&hook, 100).await.map_err(|e| e.to_string())?;
        if messages.is_empty() {
            continue;
        }
        // Progress is recorded after each acknowledged message, so a crash re-sends at most
        // the one in flight (receivers deduplicate by `webhook-id`).
        let mut hook = hook;
        let mut passed = None;
        for message in messages {
            match message {
                Err(skipped) => passed = Some(skipped),
                Ok(message) => {
                    // Shutting down: the last acknowledged message is recorded; stop here.
                    if *stop.borrow() {
                        break;
                    }
                    // Renew the claim before each send; lost (this node stalled past the
                    // lease), the new holder carries on from the recorded cursor.
                    if !store.claim_webhook(&hook.id, WEBHOOK_LEASE).await.map_err(|e| e.to_string())? {
                        break;
                    }
                    if let Some(seq) = passed.take() {
                        hook.progress = service.webhook_progress(&hook, seq, None).await.map_err(|e| e.to_string())?;
                    }
                    let url = hook.url.clone();
                    let seq = message.seq;
                    // Checked at every send, not only at creation: a name may resolve
                    // elsewhere since.
                    let sent = match waiver_service::webhooks::refused_target(&url, allow).await {
                        Some(why) => Err(format!("refused: {why}")),
                        None => tokio::task::spawn_blocking(move || send(&url, &message))
                            .await
                            .unwrap_or_else(|_| Err("the sender failed".into())),
                    };
                    let failure = sent.err();
                    let cursor = if failure.is_none() { seq } else { hook.progress.delivered_seq };
                    if let Some(e) = &failure {
                        let url = waiver_service::webhooks::redact(&hook.url);
                        tracing::warn!(webhook = %hook.id, url = %url, "webhook delivery failed; retrying with backoff: {e}");
                    } else {
                        delivered += 1;
                    }
                    let failed = failure.is_some();
                    hook.progress =
                        service.webhook_progress(&hook, cursor, failure).await.map_err(|e| e.to_string())?;
                    if failed {
                        break;
                    }
                }
            }
        }
        if let Some(seq) = passed {
            service.webhook_progress(&hook, seq, None).await.map_err(|e| e.to_string())?;
        }
    }
    Ok(delivered)
}

/// The HTTP client webhooks and chat notifications are sent with: 10 s for the whole
/// exchange, statuses as answers, and no redirects (a receiver cannot send us elsewhere).
pub fn receiver_agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .http_status_as_error(false)
        .max_redirects(0)
        .build()
        .new_agent()
}

/// POSTs one message; any 2xx acknowledges it.
fn send(url: &str, message: &waiver_service::webhooks::Message) -> Result<(), String> {
    let response = receiver_agent()
        .post(url)
        .header("content-type", "application/cloudevents+json")
        .header("webhook-id", &message.id)
        .header("webhook-timestamp", message.timestamp.to_string())
        .header("webhook-signature", &message.signature)
        .header("user-agent", concat!("waiver/", env!("CARGO_PKG_VERSION")))
        .send(message.body.as_bytes())
        .map_err(|e| {
            // A category, not the transport's words: the error is shown to admins, and
            // should not map what listens where.
            match e {
                ureq::Error::Timeout(_) => "the receiver did not answer in time".to_owned(),
                ureq::Error::HostNotFound => "the receiver's host name does not resolve".to_owned(),
                ureq::Error::Tls(_) | ureq::Error::Rustls(_) => "TLS with the receiver failed".to_owned(),
                _ => "could not connect to the receiver".to_owned(),
            }
        })?;
    let status = response.status();
    if status.is_success() { Ok(()) } else { Err(format!("the receiver answered {}xx", status.as_u16() / 100)) }
}

/// Recomputes the register gauges for `/metrics`.
async fn refresh_gauges(service: &Service, decisions: &DecisionState) -> Result<(), String> {
    let store = service.store();
    let now = service.now();
    // From the register the node holds in memory when it holds one (no store read, no
    // parsing), counted on a blocking thread: neither touches the request-serving workers.
    let all = match service.records().all() {
        Some(all) => all,
        // The register is on its way into memory: the gauges wait for it rather than
        // read a million records from the store beside it.
        None if service.records().loading() => return Ok(()),
        None => store
            .exceptions(&ExceptionFilter::default())
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(Arc::new)
            .collect(),
    };
    let mut gauges = tokio::task::spawn_blocking(move || {
        let mut by: BTreeMap<(&'static str, &'static str, &'static str), u64> = BTreeMap::new();
        let mut gauges = RegisterGauges::default();
        for e in &all {
            let state = e.effective_state(now);
            *by.entry((state.as_str(), e.kind.as_str(), e.risk.as_str())).or_default() += 1;
            gauges.reviews_overdue += u64::from(e.review_overdue(now));
            gauges.post_use_reviews_overdue += u64::from(e.post_use_review_overdue(now));
            gauges.break_glass_active += u64::from(e.kind == waiver_core::Kind::BreakGlass && state == State::Active);
        }
        gauges.exceptions = by.into_iter().map(|((s, k, r), n)| ((s.into(), k.into(), r.into()), n)).collect();
        gauges
    })
    .await
    .map_err(|e| format!("the gauge count failed: {e}"))?;
    let head = store.last_seq().await.map_err(|e| e.to_string())?;
    for hook in store.webhooks().await.map_err(|e| e.to_string())? {
        if hook.deleted_at.is_none() {
            gauges.webhook_backlog += head.saturating_sub(hook.progress.delivered_seq);
            gauges.webhooks_failing += u64::from(hook.progress.attempts > 0);
        }
    }
    decisions.metrics.set_register(gauges);
    Ok(())
}

//! The storage contract: one suite every backend runs against a fresh, empty store.
//!
//! A backend's test calls [`run`]; a failure panics with the check that failed.
//!
//! This is test code shipped in the library so every backend crate can run it, so it
//! asserts and unwraps as tests do.
#![allow(
    clippy::panic,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    reason = "a test suite: a failed check panics"
)]

use std::sync::Arc;

use jiff::{SignedDuration, Timestamp};
use serde_json::json;
use waiver_core::{
    Actor, CompensatingControl, ControlKind, CredentialType, EntityRef, ExceptionDraft, ExceptionId, Identity,
    IdentityKind, IdentityStatus, Principal, Remediation, ResourceScope, Risk, Role, Rules, Scope, Waived,
    audit::{EventDraft, GENESIS_HASH},
    lifecycle::{self, Filing},
};

use crate::{Commit, ExceptionFilter, Store, StoreError, TokenRecord, WebhookProgress, WebhookRecord, Write};

fn at(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn principal(s: &str) -> Principal {
    Principal::parse("principal", s).unwrap()
}

fn entity(s: &str) -> EntityRef {
    s.parse().unwrap()
}

fn identity(subject: &str, now: Timestamp) -> Identity {
    Identity {
        entity: entity(subject),
        kind: IdentityKind::ServiceAccount,
        owner: principal("sam"),
        team: Some("platform".into()),
        status: IdentityStatus::Active,
        credential_type: CredentialType::WorkloadToken,
        attributes: [("env".to_owned(), json!("prod")), ("tier".to_owned(), json!(1))].into_iter().collect(),
        created_at: now,
        updated_at: now,
        version: 1,
    }
}

fn draft(subject: &str, now: Timestamp) -> ExceptionDraft {
    ExceptionDraft {
        subject: entity(subject),
        waives: vec![Waived::parse("forbid-prod-writes").unwrap(), Waived::DefaultDeny],
        scope: Scope {
            actions: vec!["deploy".into()],
            resources: vec![ResourceScope { entity: entity("Environment:prod"), descendants: true }],
        },
        condition: Some("context.source_ip.isInRange(ip(\"10.20.0.0/16\"))".into()),
        compensating_controls: vec![CompensatingControl {
            kind: ControlKind::ExtraLogging,
            description: "every use logged — ünïcode".into(),
            enforced: true,
        }],
        justification: "release train needs deploys during the freeze".into(),
        normal_path_unavailable: "change window closed".into(),
        affected_systems: vec!["payments".into()],
        references: vec!["CHG-1881".into()],
        risk: Risk::High,
        credential_type: None,
        owner: principal("sam"),
        starts_at: None,
        expires_at: now + SignedDuration::from_hours(24 * 10),
        review_every: None,
        revalidate_on: vec![],
        remediation: Some(Remediation { plan: "merge queue".into(), retire_by: None, ticket: Some("CHG-1".into()) }),
        frameworks: vec!["owasp-nhi-2025:NHI5".into()],
    }
}

/// A valid request, as the contract files it (for backends' own tests).
pub fn sample_exception() -> waiver_core::Exception {
    requested("ServiceAccount:ci-deployer", at("2026-11-23T10:00:00Z"))
}

fn requested(subject: &str, now: Timestamp) -> waiver_core::Exception {
    let id = identity(subject, now);
    let draft = draft(subject, now);
    let actor = Actor::new(principal("dana"), &[Role::Requester]);
    let rules = Rules::default();
    lifecycle::request(Filing { draft: &draft, actor: &actor, rules: &rules, identity: Some(&id), now })
        .unwrap()
        .exception
}

fn event(event_type: &str, exception: Option<ExceptionId>, now: Timestamp) -> EventDraft {
    EventDraft {
        at: now,
        actor: principal("dana"),
        event_type: event_type.into(),
        exception_id: exception,
        data: json!({"note": "ünïcode ✓", "n": 1}),
    }
}

/// Runs every check against `store`, which must be empty.
pub async fn run<S: Store + 'static>(store: Arc<S>) {
    let now = at("2026-11-23T10:00:00Z");
    empty_store(&*store).await;
    commit_and_read_back(&*store, now).await;
    stale_writes_store_nothing(&*store, now).await;
    tokens(&*store, now).await;
    state_and_expiry_filters(&*store, now).await;
    webhooks(&*store, now).await;
    concurrent_commits_keep_the_chain_linear(store.clone(), now).await;
    a_conflict_among_concurrent_commits_fails_alone(store.clone(), now).await;
}

async fn empty_store<S: Store>(store: &S) {
    let head = store.verify_chain().await.ok().and_then(Result::ok);
    assert!(head.as_ref().is_some_and(|h| h.n_events == 0 && h.head_hash == GENESIS_HASH), "empty chain: {head:?}");
    assert!(matches!(store.exception(ExceptionId::new(1)).await, Ok(None)), "no exception 1 yet");
    assert!(matches!(store.events(0, 10).await, Ok(v) if v.is_empty()), "no events yet");
    assert_eq!(store.last_seq().await.unwrap(), 0);
    let unsealed = store.unsealed().await.unwrap();
    assert!(unsealed.is_some_and(|u| u.is_empty()), "a new store has nothing to seal");
}

async fn commit_and_read_back<S: Store>(store: &S, now: Timestamp) {
    let subject = "ServiceAccount:ci-deployer";
    let mut exception = requested(subject, now);
    let identity = identity(subject, now);
    let (identity_w, mut exception_c) = (identity.clone(), exception.clone());
    let events = store
        .commit(Box::new(move |alloc| {
            exception_c.id = alloc.exception_id();
            let id = exception_c.id;
            Commit {
                events: vec![event("identity.added", None, now), event("exception.requested", Some(id), now)],
                exceptions: vec![Write::insert(exception_c)],
                identities: vec![Write::insert(identity_w)],
                ..Commit::default()
            }
        }))
        .await;
    let events = events.unwrap_or_default();
    assert!(events.len() == 2, "two events sealed: {events:?}");
    assert_eq!(store.last_seq().await.unwrap(), 2);
    assert!(events.first().is_some_and(|e| e.seq == 1 && e.prev_hash == GENESIS_HASH), "first event links to genesis");
    assert!(events.get(1).map(|e| &e.prev_hash) == events.first().map(|e| &e.hash), "second links to first");
    exception.id = ExceptionId::new(1);

    let read = store.exception(ExceptionId::new(1)).await;
    assert!(read.as_ref().ok().and_then(Option::as_ref) == Some(&exception), "exception round-trips: {read:?}");
    let read = store.identity(&identity.entity).await;
    assert!(read.as_ref().ok().and_then(Option::as_ref) == Some(&identity), "identity round-trips: {read:?}");
    assert!(store.identities().await.map(|v| v.len()).ok() == Some(1), "one identity listed");

    // A second exception gets the next id; filters and paging see both.
    let mut second = requested(subject, now);
    second.owner = principal("kim");
    let second_c = second.clone();
    let sealed = store
        .commit(Box::new(move |alloc| {
            let mut second = second_c;
            second.id = alloc.exception_id();
            Commit {
                events: vec![event("exception.requested", Some(second.id), now)],
                exceptions: vec![Write::insert(second)],
                ..Commit::default()
            }
        }))
        .await;
    assert!(sealed.as_ref().is_ok_and(|e| e.first().is_some_and(|e| e.seq == 3)), "third event: {sealed:?}");
    assert!(store.exception(ExceptionId::new(2)).await.ok().flatten().is_some(), "ids are allocated in order");
    let by_owner = store.exceptions(&ExceptionFilter { owner: Some("kim".into()), ..Default::default() }).await;
    assert!(
        by_owner.as_ref().is_ok_and(|v| v.len() == 1 && v[0].id == ExceptionId::new(2)),
        "owner filter: {by_owner:?}"
    );
    let by_subject = store.exceptions(&ExceptionFilter { subject: Some(entity(subject)), ..Default::default() }).await;
    assert!(by_subject.as_ref().is_ok_and(|v| v.len() == 2), "subject filter");
    let page = store
        .exceptions(&ExceptionFilter { after: Some(ExceptionId::new(1)), limit: Some(1), ..Default::default() })
        .await;
    assert!(page.as_ref().is_ok_and(|v| v.len() == 1 && v[0].id == ExceptionId::new(2)), "keyset paging");
    let paged = store.events(1, 1).await;
    assert!(paged.as_ref().is_ok_and(|v| v.len() == 1 && v[0].seq == 2), "event paging: {paged:?}");
    let of = store.events_of(ExceptionId::new(1)).await;
    assert!(of.as_ref().is_ok_and(|v| v.len() == 1 && v[0].seq == 2), "events of one exception: {of:?}");

    // An update with the version read succeeds and bumps it.
    let mut updated = exception.clone();
    updated.version += 1;
    updated.justification = "updated".into();
    let updated_c = updated.clone();
    let result = store
        .commit(Box::new(move |_| Commit {
            events: vec![event("exception.approved", Some(ExceptionId::new(1)), now)],
            exceptions: vec![Write::update(updated_c, 1)],
            ..Commit::default()
        }))
        .await;
    assert!(result.is_ok(), "update with the read version: {result:?}");
    let read = store.exception(ExceptionId::new(1)).await.ok().flatten();
    assert!(read.as_ref() == Some(&updated), "update is visible");
}

async fn stale_writes_store_nothing<S: Store>(store: &S, now: Timestamp) {
    let before = store.verify_chain().await.ok().and_then(Result::ok);
    let stale = store.exception(ExceptionId::new(1)).await.ok().flatten();
    assert!(stale.is_some(), "exception 1 exists");
    let Some(mut stale) = stale else { return };
    let read_version = stale.version - 1; // someone else already moved it on
    stale.version += 1;
    let result = store
        .commit(Box::new(move |_| Commit {
            events: vec![event("exception.revoked", Some(ExceptionId::new(1)), now)],
            exceptions: vec![Write::update(stale, read_version)],
            ..Commit::default()
        }))
        .await;
    assert!(matches!(result, Err(StoreError::Conflict(_))), "stale version is a conflict: {result:?}");

    let dup = identity("ServiceAccount:ci-deployer", now);
    let result = store
        .commit(Box::new(move |_| Commit {
            events: vec![event("identity.added", None, now)],
            identities: vec![Write::insert(dup)],
            ..Commit::default()
        }))
        .await;
    assert!(matches!(result, Err(StoreError::Conflict(_))), "duplicate identity is a conflict: {result:?}");

    let after = store.verify_chain().await.ok().and_then(Result::ok);
    assert!(before == after, "a refused commit appends nothing: {before:?} then {after:?}");
}

async fn tokens<S: Store>(store: &S, now: Timestamp) {
    let token = TokenRecord {
        id: "tok_1".into(),
        secret_hash: "ab".repeat(32),
        principal: "alex".into(),
        roles: vec!["admin".into(), "auditor".into()],
        label: "first admin".into(),
        created_at: now.to_string(),
        revoked_at: None,
        issued_by: Some("alex".into()),
        expires_at: Some((now + SignedDuration::from_hours(24)).to_string()),
        scopes: vec!["decide".into(), "read".into()],
        last_used_at: None,
    };
    let token_c = token.clone();
    let result = store
        .commit(Box::new(move |_| Commit {
            events: vec![event("token.issued", None, now)],
            tokens: vec![token_c],
            ..Commit::default()
        }))
        .await;
    assert!(result.is_ok(), "token stored: {result:?}");
    let read = store.token_by_hash(&token.secret_hash).await;
    assert!(read.as_ref().ok().and_then(Option::as_ref) == Some(&token), "token by hash: {read:?}");
    let mut revoked = token.clone();
    revoked.revoked_at = Some(now.to_string());
    let revoked_c = revoked.clone();
    let result = store
        .commit(Box::new(move |_| Commit {
            events: vec![event("token.revoked", None, now)],
            tokens: vec![revoked_c],
            ..Commit::default()
        }))
        .await;
    assert!(result.is_ok(), "token revoked: {result:?}");
    let read = store.token_by_hash(&token.secret_hash).await.ok().flatten();
    assert!(read.is_some_and(|t| t.revoked_at.is_some()), "revocation is visible");
    assert!(matches!(store.token_by_hash("00").await, Ok(None)), "unknown hash finds nothing");
    let all = store.tokens().await.unwrap();
    assert_eq!(all.len(), 1, "one token listed: {all:?}");
    // Last use: telemetry beside the sealed record; a later use wins, an older one is ignored.
    let used = |at: Timestamp| {
        Box::new(move |_: &mut crate::Allocator| Commit {
            token_usage: vec![("tok_1".into(), at)],
            ..Commit::default()
        }) as crate::CommitFn
    };
    store.commit(used(now + SignedDuration::from_secs(60))).await.unwrap();
    store.commit(used(now)).await.unwrap();
    let read = store.token_by_hash(&token.secret_hash).await.unwrap().unwrap();
    let last = read.last_used_at.as_deref().map(|t| t.parse::<Timestamp>().unwrap());
    assert_eq!(last, Some(now + SignedDuration::from_secs(60)), "the latest use is kept: {read:?}");
}

async fn state_and_expiry_filters<S: Store>(store: &S, now: Timestamp) {
    use waiver_core::State;
    let all = store.exceptions(&ExceptionFilter::default()).await.unwrap();
    let requested = |states: Vec<State>| ExceptionFilter { states: Some(states), ..Default::default() };
    let found = store.exceptions(&requested(vec![State::Requested, State::Active])).await.unwrap();
    assert_eq!(found.len(), all.iter().filter(|e| e.state == State::Requested).count(), "state filter");
    assert!(store.exceptions(&requested(vec![State::Revoked])).await.unwrap().is_empty(), "no revoked ones");
    // `requested()` expires 30 days after `now`; a fraction of a second must not confuse
    // the comparison.
    let expiry = all.first().map(|e| e.expires_at).unwrap();
    let before = |t: Timestamp| ExceptionFilter { expires_before: Some(t), ..Default::default() };
    let early = store.exceptions(&before(expiry - SignedDuration::from_millis(1))).await.unwrap();
    assert!(early.is_empty(), "nothing expires 1 ms before: {early:?}");
    let exact = store.exceptions(&before(expiry)).await.unwrap();
    assert!(exact.is_empty(), "`before` is strict: {exact:?}");
    let late = store.exceptions(&before(expiry + SignedDuration::from_millis(1))).await.unwrap();
    assert_eq!(late.len(), all.len(), "all expire by then");
    // A request is due at its time-out, before its expiry: the expiry job finds it by that.
    let first = all.first().unwrap();
    let timeout = first.request_expires_at.expect("requests time out");
    assert!(timeout < expiry && first.due_at() == timeout);
    let due = |t: Timestamp| ExceptionFilter { due_before: Some(t), ..Default::default() };
    assert!(store.exceptions(&due(timeout)).await.unwrap().is_empty(), "`due_before` is strict");
    let found = store.exceptions(&due(timeout + SignedDuration::from_millis(1))).await.unwrap();
    assert_eq!(found.len(), all.len(), "due at the time-out, not the expiry");
    let _ = now;
}

async fn webhooks<S: Store>(store: &S, now: Timestamp) {
    let hook = WebhookRecord {
        id: "wh_1".into(),
        url: "http://127.0.0.1:9/hook".into(),
        secret: "whsec_c2VjcmV0".into(),
        event_types: vec!["exception.".into(), "break_glass.used".into()],
        created_by: "alex".into(),
        created_at: now.to_string(),
        deleted_at: None,
        progress: WebhookProgress { delivered_seq: 3, ..Default::default() },
    };
    let hook_c = hook.clone();
    let result = store
        .commit(Box::new(move |_| Commit {
            events: vec![event("webhook.created", None, now)],
            webhooks: vec![hook_c],
            ..Commit::default()
        }))
        .await;
    assert!(result.is_ok(), "webhook stored: {result:?}");
    assert_eq!(store.webhooks().await.unwrap(), vec![hook.clone()], "webhook round-trips");
    let progress =
        WebhookProgress { delivered_seq: 5, attempts: 2, next_attempt_at: Some(now.to_string()), last_error: None };
    let progress_c = progress.clone();
    let before = store.last_seq().await.unwrap();
    let result = store
        .commit(Box::new(move |_| Commit { webhook_progress: vec![("wh_1".into(), progress_c)], ..Commit::default() }))
        .await;
    assert!(result.as_ref().is_ok_and(Vec::is_empty), "progress stored without an event: {result:?}");
    assert_eq!(store.last_seq().await.unwrap(), before);
    let read = store.webhooks().await.unwrap();
    assert!(read.first().is_some_and(|h| h.progress == progress), "progress visible: {read:?}");
    let missing = store
        .commit(Box::new(|_| Commit {
            webhook_progress: vec![("wh_none".into(), WebhookProgress::default())],
            ..Commit::default()
        }))
        .await;
    assert!(matches!(missing, Err(StoreError::NotFound(_))), "progress of an unknown webhook: {missing:?}");
    let mut deleted = hook.clone();
    deleted.deleted_at = Some(now.to_string());
    let result = store
        .commit(Box::new(move |_| Commit {
            events: vec![event("webhook.deleted", None, now)],
            webhooks: vec![deleted],
            ..Commit::default()
        }))
        .await;
    assert!(result.is_ok(), "webhook deleted: {result:?}");
    let read = store.webhooks().await.unwrap();
    assert!(
        read.first().is_some_and(|h| h.deleted_at.is_some() && h.progress.delivered_seq == 5),
        "deletion keeps progress: {read:?}"
    );
}

async fn concurrent_commits_keep_the_chain_linear<S: Store + 'static>(store: Arc<S>, now: Timestamp) {
    let before = store.verify_chain().await.ok().and_then(Result::ok).map_or(0, |h| h.n_events);
    let mut tasks = Vec::new();
    for n in 0..16u64 {
        let store = store.clone();
        let exception = requested("ServiceAccount:ci-deployer", now);
        tasks.push(tokio::spawn(async move {
            store
                .commit(Box::new(move |alloc| {
                    let mut exception = exception;
                    exception.id = alloc.exception_id();
                    let id = exception.id;
                    Commit {
                        events: (0..=n % 3).map(|_| event("exception.requested", Some(id), now)).collect(),
                        exceptions: vec![Write::insert(exception)],
                        ..Commit::default()
                    }
                }))
                .await
        }));
    }
    let mut n_events = 0;
    for task in tasks {
        let result = task.await;
        assert!(matches!(result, Ok(Ok(_))), "concurrent commit: {result:?}");
        n_events += result.ok().and_then(Result::ok).map_or(0, |v| v.len() as u64);
    }
    let head = store.verify_chain().await;
    assert!(
        matches!(&head, Ok(Ok(h)) if h.n_events == before + n_events),
        "chain stays gapless and linear under concurrent writers: {head:?}"
    );
    let all = store.exceptions(&ExceptionFilter::default()).await.unwrap_or_default();
    let ids: Vec<u64> = all.iter().map(|e| e.id.number()).collect();
    assert!(ids == (1..=ids.len() as u64).collect::<Vec<_>>(), "exception ids stay gapless: {ids:?}");
}

async fn a_conflict_among_concurrent_commits_fails_alone<S: Store + 'static>(store: Arc<S>, now: Timestamp) {
    let before = store.verify_chain().await.unwrap().unwrap().n_events;
    let current = store.exception(ExceptionId::new(1)).await.unwrap().unwrap();
    let mut tasks = Vec::new();
    for n in 0..6u64 {
        let store = store.clone();
        let mut next = current.clone();
        next.version += 1;
        // Only the first of these is written with the version everyone read; the others
        // claim a version nobody read and must each fail alone.
        let read_version = if n == 0 { current.version } else { current.version + 10 + n };
        tasks.push(tokio::spawn(async move {
            store
                .commit(Box::new(move |_| Commit {
                    events: vec![event("exception.attested", Some(ExceptionId::new(1)), now)],
                    exceptions: vec![Write::update(next, read_version)],
                    ..Commit::default()
                }))
                .await
        }));
    }
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.unwrap());
    }
    assert!(results[0].is_ok(), "the up-to-date commit succeeds: {:?}", results[0]);
    assert!(results[1..].iter().all(|r| matches!(r, Err(StoreError::Conflict(_)))), "{results:?}");
    let head = store.verify_chain().await.unwrap().unwrap();
    assert_eq!(head.n_events, before + 1, "only the winner's event is in the chain");
}

/// Edits the database behind the store's back: runs one SQL statement (the backend's test
/// supplies it, with a connection of its own).
pub type Tamper<'a> =
    &'a (dyn Fn(&'static str) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> + Sync);

/// Record seals (run after [`run`], on the store it left): every record read is checked
/// against the event that sealed it; an edited row is refused by `exception`/`identity`/
/// `token_by_hash`, left out of lists, held in `quarantined` and named by `verify_records`;
/// a deleted identity row is noticed; a write with no event to seal it is refused.
pub async fn seals<S: Store>(store: &S, tamper: Tamper<'_>) {
    let now = at("2026-11-23T10:00:00Z");
    assert!(store.verify_records(10).await.unwrap().is_empty(), "an untouched store matches its log");
    assert!(store.unsealed().await.unwrap().is_none(), "once sealed, an unsealed row is not legacy");
    assert!(store.quarantined().is_empty());

    // Every write must come with an event that seals it.
    let one = store.exception(ExceptionId::new(1)).await.unwrap().unwrap();
    let before = store.last_seq().await.unwrap();
    let version = one.version;
    let unsealed = one.clone();
    let result = store
        .commit(Box::new(move |_| Commit { exceptions: vec![Write::update(unsealed, version)], ..Commit::default() }))
        .await;
    assert!(matches!(&result, Err(StoreError::Other(m)) if m.contains("no event")), "unsealed write: {result:?}");
    assert_eq!(store.last_seq().await.unwrap(), before, "nothing stored");

    // Usage is telemetry beside the sealed record: adding to it leaves the seal intact.
    let used_at = now + SignedDuration::from_secs(5);
    store
        .commit(Box::new(move |_| Commit {
            usage: vec![crate::UsageDelta {
                exception: ExceptionId::new(1),
                uses: 3,
                last_used_at: used_at,
                scope_used: 0b01,
            }],
            ..Commit::default()
        }))
        .await
        .unwrap();
    store
        .commit(Box::new(move |_| Commit {
            usage: vec![crate::UsageDelta {
                exception: ExceptionId::new(1),
                uses: 2,
                last_used_at: now,
                scope_used: 0b10,
            }],
            ..Commit::default()
        }))
        .await
        .unwrap();
    let used = store.exception(ExceptionId::new(1)).await.unwrap().unwrap();
    assert_eq!((used.usage.count, used.usage.last_used_at), (one.usage.count + 5, Some(used_at)), "usage adds up");
    assert_eq!(used.usage.scope_used, 0b11, "the scope bitmaps are OR-ed");
    let listed = store.exceptions(&ExceptionFilter::default()).await.unwrap();
    let in_list = listed.iter().find(|e| e.id == ExceptionId::new(1)).unwrap();
    assert_eq!(in_list.usage, used.usage, "bulk reads carry the same usage");
    let terms = store.exception_terms().await.unwrap();
    assert_eq!(terms, listed.iter().map(waiver_core::Exception::terms).collect::<Vec<_>>(), "terms of every record");

    // An edited exception: refused alone, left out of lists, quarantined, named.
    tamper("UPDATE exceptions SET record = replace(record, '\"updated\"', '\"edited\"') WHERE number = 1").await;
    let read = store.exception(ExceptionId::new(1)).await;
    assert!(
        matches!(&read, Err(StoreError::Tampered(t)) if t.key == "exception:EXC-000001" && t.reason.contains("differs")),
        "edited exception: {read:?}"
    );
    let listed = store.exceptions(&ExceptionFilter::default()).await.unwrap();
    assert!(listed.iter().all(|e| e.id != ExceptionId::new(1)) && !listed.is_empty(), "left out of lists");
    let terms = store.exception_terms().await.unwrap();
    assert_eq!(
        terms,
        listed.iter().map(waiver_core::Exception::terms).collect::<Vec<_>>(),
        "what a node decides from at start is the listed records' terms, the edited one left out"
    );
    assert!(store.quarantined().iter().any(|t| t.key == "exception:EXC-000001"), "quarantined");
    let found = store.verify_records(10).await.unwrap();
    assert_eq!(found.first().map(|t| t.key.as_str()), Some("exception:EXC-000001"), "named: {found:?}");

    // Pointing the row at another event's seal does not help.
    tamper("UPDATE exceptions SET sealed_seq = 3 WHERE number = 1").await;
    let read = store.exception(ExceptionId::new(1)).await;
    assert!(matches!(&read, Err(StoreError::Tampered(t)) if t.reason.contains("another record")), "{read:?}");

    // An index column edited, the record left alone: `verify_records` compares them.
    tamper("UPDATE exceptions SET owner = 'mallory' WHERE number = 2").await;
    let found = store.verify_records(10).await.unwrap();
    assert!(found.iter().any(|t| t.key == "exception:EXC-000002" && t.reason.contains("`owner`")), "{found:?}");

    // An edited token no longer authenticates; an edited identity is quarantined.
    tamper("UPDATE tokens SET roles = 'admin,approver' WHERE id = 'tok_1'").await;
    let read = store.token_by_hash(&"ab".repeat(32)).await;
    assert!(matches!(&read, Err(StoreError::Tampered(t)) if t.key == "token:tok_1"), "edited token: {read:?}");
    assert!(store.tokens().await.unwrap().is_empty(), "left out of the token list");
    tamper("UPDATE identities SET record = replace(record, '\"active\"', '\"suspended\"')").await;
    assert!(store.identities().await.unwrap().is_empty(), "edited identity left out");
    assert!(store.quarantined().iter().any(|t| t.identity() == Some("ServiceAccount:ci-deployer")));

    // A deleted identity row is noticed (an offboarded one must stay denied).
    tamper("DELETE FROM identities").await;
    assert!(store.identities().await.unwrap().is_empty());
    let held = store.quarantined();
    assert!(
        held.iter().any(|t| t.identity() == Some("ServiceAccount:ci-deployer") && t.reason.contains("gone")),
        "a deleted identity is held: {held:?}"
    );
    let found = store.verify_records(100).await.unwrap();
    for key in ["exception:EXC-000001", "exception:EXC-000002", "identity:ServiceAccount:ci-deployer", "token:tok_1"] {
        assert!(found.iter().any(|t| t.key == key), "{key} named: {found:?}");
    }
    assert!(store.verify_records(1).await.unwrap().len() == 1, "the limit holds");
    artifacts(store, tamper, now).await;
}

/// Baselines and rules: content-addressed, sealed by the event that put them in force, and
/// fetchable as they were at any event.
async fn artifacts<S: Store>(store: &S, tamper: Tamper<'_>, now: Timestamp) {
    assert_eq!(store.artifact_at("baseline", None).await.unwrap(), None, "none yet");
    let put = |body: &'static str| {
        Box::new(move |_: &mut crate::Allocator| Commit {
            events: vec![event("baseline.set", None, now)],
            artifacts: vec![crate::Artifact { kind: "baseline".into(), body: body.into(), replaces: None }],
            ..Commit::default()
        }) as crate::CommitFn
    };
    let first = store.commit(put("permit(principal, action, resource);")).await.unwrap()[0].seq;
    let second = store.commit(put("forbid(principal, action, resource);")).await.unwrap()[0].seq;
    let third = store.commit(put("permit(principal, action, resource);")).await.unwrap()[0].seq;
    let now_in_force = store.artifact_at("baseline", None).await.unwrap().unwrap();
    assert_eq!((now_in_force.seq, now_in_force.body.as_str()), (third, "permit(principal, action, resource);"));
    assert_eq!(now_in_force.digest, crate::seal::digest(&now_in_force.body));
    let then = store.artifact_at("baseline", Some(third - 1)).await.unwrap().unwrap();
    assert_eq!(
        (then.seq, then.body.as_str()),
        (second, "forbid(principal, action, resource);"),
        "in force at an event"
    );
    assert_eq!(store.artifact_at("baseline", Some(first - 1)).await.unwrap(), None, "nothing before the first");
    assert_eq!(store.artifact_at("rules", None).await.unwrap(), None, "kinds are apart");
    // A read-modify-write names the version it replaces; a stale one is a conflict.
    let replace = |replaces: Option<String>| {
        Box::new(move |_: &mut crate::Allocator| Commit {
            events: vec![event("people.set", None, now)],
            artifacts: vec![crate::Artifact { kind: "people".into(), body: "{}".into(), replaces: Some(replaces) }],
            ..Commit::default()
        }) as crate::CommitFn
    };
    store.commit(replace(None)).await.unwrap();
    let stale = store.commit(replace(None)).await;
    assert!(matches!(stale, Err(StoreError::Conflict(_))), "{stale:?}");
    store.commit(replace(Some(crate::seal::digest("{}")))).await.unwrap();
    // An artifact needs its event.
    let refused = store
        .commit(Box::new(move |_| Commit {
            artifacts: vec![crate::Artifact { kind: "rules".into(), body: "x".into(), replaces: None }],
            ..Commit::default()
        }))
        .await;
    assert!(matches!(refused, Err(StoreError::Other(_))), "{refused:?}");
    // An edited text is not the one the log put in force.
    tamper("UPDATE artifacts SET body = 'permit(principal, action, resource) when { true };' WHERE kind = 'baseline' AND body LIKE 'permit%'").await;
    let read = store.artifact_at("baseline", None).await;
    assert!(matches!(&read, Err(StoreError::Tampered(t)) if t.key == "baseline"), "{read:?}");
    let older = store.artifact_at("baseline", Some(second)).await.unwrap().unwrap();
    assert_eq!(older.seq, second, "other versions still read");
}

/// Register checkpoints ([`crate::checkpoint`]), on an empty store: a checkpoint and the
/// records sealed since load as every record's terms; a record put back to an older
/// version after the checkpoint is left out, not loaded as it was; an edited part refuses
/// the whole checkpoint until it is written again; parts of all but the two newest
/// checkpoints are deleted.
pub async fn checkpoints<S: Store>(store: &S, tamper: Tamper<'_>) {
    use crate::checkpoint;
    let now = at("2026-11-23T10:00:00Z");
    let loaded = |pages: &mut Vec<waiver_core::Terms>| {
        let pages = std::mem::take(pages);
        pages.into_iter().map(|t| t.id).collect::<Vec<_>>()
    };
    let mut got: Vec<waiver_core::Terms> = Vec::new();
    assert_eq!(checkpoint::newest(store).await.unwrap(), None);
    assert_eq!(checkpoint::load_each(store, &mut |page| got.extend(page)).await.unwrap(), None, "none yet");
    assert_eq!(checkpoint::verify(store).await.unwrap(), None);

    let write = |e: waiver_core::Exception, version: Option<u64>| {
        Box::new(move |_: &mut crate::Allocator| Commit {
            events: vec![event("exception.requested", Some(e.id), now)],
            exceptions: vec![match version {
                Some(v) => Write::update(e, v),
                None => Write::insert(e),
            }],
            ..Commit::default()
        }) as crate::CommitFn
    };
    for n in 1..=5 {
        let mut e = sample_exception();
        e.id = ExceptionId::new(n);
        store.commit(write(e, None)).await.unwrap();
    }
    let take = |previous: Option<checkpoint::Manifest>| async move {
        let as_of = store.last_seq().await.unwrap();
        let terms = store.exception_terms().await.unwrap();
        let commit = checkpoint::commit_in_parts(&terms, as_of, previous.as_ref(), now, 2);
        store.commit(Box::new(move |_| commit)).await.unwrap();
        checkpoint::newest(store).await.unwrap().unwrap().1
    };
    let first = take(None).await;
    assert_eq!((first.count, first.parts.len()), (5, 3), "five exceptions in parts of two");

    let all = store.exception_terms().await.unwrap();
    let done = checkpoint::load_each(store, &mut |page| got.extend(page)).await.unwrap().unwrap();
    assert_eq!((done.changed, done.count), (0, 5));
    assert_eq!(got, all, "the checkpoint's terms are the records'");
    got.clear();

    // Changed since: one updated, one added; both read from their rows.
    let old_two = store.exception(ExceptionId::new(2)).await.unwrap().unwrap();
    let mut two = old_two.clone();
    two.state = waiver_core::State::Approved;
    two.version += 1;
    store.commit(write(two.clone(), Some(old_two.version))).await.unwrap();
    let mut six = sample_exception();
    six.id = ExceptionId::new(6);
    store.commit(write(six, None)).await.unwrap();
    let some = ExceptionFilter { ids: Some(vec![ExceptionId::new(6), ExceptionId::new(2)]), ..Default::default() };
    let listed: Vec<ExceptionId> = store.exceptions(&some).await.unwrap().iter().map(|e| e.id).collect();
    assert_eq!(listed, [ExceptionId::new(2), ExceptionId::new(6)], "by id, in id order");
    assert_eq!(store.exceptions_sealed_after(first.as_of).await.unwrap(), listed, "sealed since the checkpoint");
    let all = store.exception_terms().await.unwrap();
    let done = checkpoint::load_each(store, &mut |page| got.extend(page)).await.unwrap().unwrap();
    assert_eq!((done.changed, done.count), (2, 6));
    assert_eq!(got, all, "the checkpoint and the changes since are the records' terms");
    assert!(got.iter().any(|t| t.id == two.id && t.state == waiver_core::State::Approved));
    got.clear();
    assert_eq!(checkpoint::verify(store).await.unwrap(), None, "a checkpoint with changes since matches");

    // The row put back to what the checkpoint holds (its text and seal then): the log
    // sealed a newer version after the checkpoint, so the row is read, refused, left out.
    let old_text = crate::seal::exception_text(&old_two).unwrap().replace('\'', "''");
    let old_seal = store.events_of(ExceptionId::new(2)).await.unwrap()[0].seq;
    let sql = format!("UPDATE exceptions SET record = '{old_text}', sealed_seq = {old_seal} WHERE number = 2");
    tamper(Box::leak(sql.into_boxed_str())).await;
    checkpoint::load_each(store, &mut |page| got.extend(page)).await.unwrap().unwrap();
    assert_eq!(loaded(&mut got), [1, 3, 4, 5, 6].map(ExceptionId::new), "rolled back: left out");

    // A second checkpoint keeps the first's parts; a third drops them.
    let second = take(Some(first.clone())).await;
    let third = take(Some(second.clone())).await;
    let stored = |digest: String| async move { store.register_part(&digest).await.unwrap().is_some() };
    assert!(stored(second.parts[0].clone()).await && stored(third.parts[0].clone()).await);
    let only_first: Vec<&String> =
        first.parts.iter().filter(|d| !second.parts.contains(d) && !third.parts.contains(d)).collect();
    for digest in only_first {
        assert!(!stored(digest.clone()).await, "parts of older checkpoints are deleted");
    }

    // An edited part: the whole checkpoint is refused, and `verify` names it.
    tamper("UPDATE artifacts SET body = replace(body, '\"requested\"', '\"approved\"') WHERE kind = 'register.part'")
        .await;
    let refused = checkpoint::load_each(store, &mut |page| got.extend(page)).await;
    assert!(
        matches!(&refused, Err(StoreError::Tampered(t)) if t.key == "register" && t.reason.contains("does not hash")),
        "{refused:?}"
    );
    assert!(store.quarantined().iter().any(|t| t.key == "register"), "held with the tampered records");
    let found = checkpoint::verify(store).await.unwrap();
    assert!(found.is_some_and(|t| t.key == "register"), "named");

    // Written again, the same terms restore the edited parts (each is keyed by its hash), so
    // an operator's `waiver audit checkpoint` repairs it rather than writing one refused too.
    take(Some(third.clone())).await;
    assert!(checkpoint::load_each(store, &mut |page| got.extend(page)).await.unwrap().is_some(), "repaired");
    assert_eq!(checkpoint::verify(store).await.unwrap(), None);
    assert!(!store.quarantined().iter().any(|t| t.key == "register"), "no longer held");
}

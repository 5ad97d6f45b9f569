//! The shared store contract on a real PostgreSQL, in a database of its own. The server is
//! `WAIVER_TEST_PG_URL` (default: the development and CI machines' local server); the tests
//! fail, never skip, when it cannot be reached.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests")]

use std::sync::Arc;

use waiver_store_postgres::{PostgresStore, drop_scratch_database, scratch_database};

fn server_url() -> String {
    std::env::var("WAIVER_TEST_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn passes_the_store_contract() {
    let url = scratch_database(&server_url()).await.unwrap_or_else(|e| {
        panic!("cannot reach PostgreSQL at WAIVER_TEST_PG_URL (or the default postgres://postgres@127.0.0.1:5432/test): {e}")
    });
    let store = PostgresStore::connect(&url).await.unwrap();
    waiver_store::contract::run(Arc::new(store.clone())).await;
    let editor = sqlx::PgPool::connect(&url).await.unwrap();
    let tamper = move |sql: &'static str| {
        let editor = editor.clone();
        Box::pin(async move {
            sqlx::query(sql).execute(&editor).await.unwrap();
        }) as std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
    };
    waiver_store::contract::seals(&store, &tamper).await;
    store.close().await;
    drop_scratch_database(&url).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn passes_the_checkpoint_contract() {
    let url = scratch_database(&server_url()).await.unwrap();
    let store = PostgresStore::connect(&url).await.unwrap();
    let editor = sqlx::PgPool::connect(&url).await.unwrap();
    let tamper = move |sql: &'static str| {
        let editor = editor.clone();
        Box::pin(async move {
            sqlx::query(sql).execute(&editor).await.unwrap();
        }) as std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
    };
    waiver_store::contract::checkpoints(&store, &tamper).await;
    store.close().await;
    drop_scratch_database(&url).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn writers_on_two_pools_keep_one_gapless_chain_and_notify() {
    let url = scratch_database(&server_url()).await.unwrap();
    let a = PostgresStore::connect(&url).await.unwrap();
    let b = PostgresStore::connect(&url).await.unwrap();
    let mut listener = b.listen().await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..40 {
        let store = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            use waiver_store::Store;
            store
                .commit(Box::new(move |_| waiver_store::Commit {
                    events: vec![waiver_core::audit::EventDraft {
                        at: "2026-11-23T10:00:00Z".parse().unwrap(),
                        actor: waiver_core::Principal::system(),
                        event_type: "test.event".into(),
                        exception_id: None,
                        data: serde_json::json!({ "i": i }),
                    }],
                    ..Default::default()
                }))
                .await
                .unwrap()
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    use waiver_store::StoreRead;
    let head = a.verify_chain().await.unwrap().unwrap();
    assert_eq!(head.n_events, 40, "40 commits from two pools, one linear chain");
    let note = tokio::time::timeout(std::time::Duration::from_secs(5), listener.recv()).await.unwrap().unwrap();
    assert!(note.payload().parse::<u64>().unwrap() >= 1, "a commit notifies the channel");

    // Leadership: one holder at a time; released when its session ends.
    let leader = a.lead().await.unwrap();
    assert!(leader.is_some());
    assert!(b.lead().await.unwrap().is_none(), "a second replica does not lead");
    drop(leader);
    let mut took_over = None;
    for _ in 0..50 {
        took_over = b.lead().await.unwrap();
        if took_over.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(took_over.is_some(), "another replica takes over when the leader's session ends");
    drop(took_over);

    // Webhook claims: one replica per subscription at a time; a lapsed lease moves on.
    {
        use waiver_store::Store;
        let hook = waiver_store::WebhookRecord {
            id: "wh_claim".into(),
            url: "http://127.0.0.1:9/hook".into(),
            secret: "whsec_c2VjcmV0".into(),
            event_types: vec![],
            created_by: "alex".into(),
            created_at: "2026-11-23T10:00:00Z".into(),
            deleted_at: None,
            progress: Default::default(),
        };
        a.commit(Box::new(move |_| waiver_store::Commit { webhooks: vec![hook], ..Default::default() })).await.unwrap();
        let long = std::time::Duration::from_secs(60);
        let short = std::time::Duration::from_millis(200);
        assert!(a.claim_webhook("wh_claim", short).await.unwrap(), "a free subscription is claimed");
        assert!(!b.claim_webhook("wh_claim", long).await.unwrap(), "held by a: b passes");
        assert!(a.claim_webhook("wh_claim", short).await.unwrap(), "the holder renews");
        tokio::time::sleep(std::time::Duration::from_millis(400)).await;
        assert!(b.claim_webhook("wh_claim", long).await.unwrap(), "a lapsed lease moves to b");
        assert!(!a.claim_webhook("wh_claim", long).await.unwrap(), "and a no longer delivers");
        assert!(!a.claim_webhook("wh_nope", long).await.unwrap(), "no such subscription: nothing claimed");
    }
    a.close().await;
    b.close().await;
    drop_scratch_database(&url).await.unwrap();
}

//! The PostgreSQL store: one database shared by many `waiver serve` replicas.
//!
//! Linearity: every commit locks the single `chain_head` row (`SELECT … FOR UPDATE`) for
//! the length of its transaction, reads the head, appends its events after it and moves
//! the head, so writers on any replica append one after another: sequence numbers stay
//! gapless and the hash chain linear. Ids are allocated under the same lock.
//!
//! Change feed: a commit that appends events sends `NOTIFY waiver_events, '<last seq>'` in
//! its transaction (delivered only if it commits). Replicas LISTEN to wake at once and
//! read the log after the sequence number they hold, so a missed notification (a dropped
//! connection, a restart) costs latency, never an event.
//!
//! Leadership: [`PostgresStore::try_lead`] holds a session advisory lock on a dedicated
//! connection; whoever holds it runs the scheduler. The lock dies with the connection, so
//! a dead leader's lock is freed by PostgreSQL and another replica takes over.

use std::{str::FromStr, time::Duration};

use async_trait::async_trait;
use sqlx::{
    PgPool, Postgres, Row,
    postgres::{PgConnectOptions, PgListener, PgPoolOptions, PgRow},
};
use waiver_core::{
    EntityRef, Exception, ExceptionId, Identity,
    audit::{BrokenLink, ChainHead, ChainVerifier, EventRecord, EventView, GENESIS_HASH},
};
use waiver_store::{
    Allocator, CommitFn, ExceptionFilter, InForce, Store, StoreError, StoreRead, TokenRecord, Unsealed,
    WebhookProgress, WebhookRecord,
    seal::{self, Quarantine, Tampered},
};

/// The channel commits notify on.
pub const CHANNEL: &str = "waiver_events";
/// The advisory lock key of the scheduler leader ("waiver" in ASCII).
const LEADER_LOCK: i64 = 0x7761_6976_6572;

/// The PostgreSQL-backed store.
#[derive(Clone)]
pub struct PostgresStore {
    pool: PgPool,
    /// The newest sequence number a notification announced, fed by one LISTEN task started
    /// on first use.
    feed: std::sync::Arc<tokio::sync::OnceCell<tokio::sync::watch::Receiver<u64>>>,
    /// Names this process in webhook delivery claims.
    node: std::sync::Arc<str>,
    quarantine: Quarantine,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore").finish_non_exhaustive()
    }
}

fn map_err(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Database(db) => match db.code().as_deref() {
            Some("23505") => StoreError::Conflict(db.message().to_owned()),
            // serialization_failure, deadlock_detected: retry.
            Some("40001" | "40P01") => StoreError::Conflict(db.message().to_owned()),
            // cannot_connect_now, admin_shutdown, crash_shutdown, too_many_connections.
            Some("57P03" | "57P01" | "57P02" | "53300") => StoreError::Unavailable(db.message().to_owned()),
            _ => StoreError::Other(db.message().to_owned()),
        },
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) | sqlx::Error::Tls(_) => {
            StoreError::Unavailable(e.to_string())
        }
        sqlx::Error::Protocol(_) | sqlx::Error::WorkerCrashed => StoreError::Unavailable(e.to_string()),
        sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) => StoreError::Corrupt(e.to_string()),
        _ => StoreError::Other(e.to_string()),
    }
}

fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(what.to_string())
}

fn to_i64(n: u64, what: &str) -> Result<i64, StoreError> {
    i64::try_from(n).map_err(|_| StoreError::Other(format!("{what} {n} is out of range")))
}

fn to_u64(n: i64, what: &str) -> Result<u64, StoreError> {
    u64::try_from(n).map_err(|_| corrupt(format!("{what} {n}")))
}

/// How `expires_at` is stored: fixed-width UTC with six fractional digits.
fn stored_instant(t: jiff::Timestamp) -> String {
    waiver_core::canonical::timestamp(t)
}

impl PostgresStore {
    /// Connects to a `postgres://` URL and migrates the database.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let options = PgConnectOptions::from_str(url).map_err(map_err)?;
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await
            .map_err(map_err)?;
        sqlx::migrate!("./migrations").run(&pool).await.map_err(|e| StoreError::Other(e.to_string()))?;
        backfill_due_at(&pool).await?;
        sqlx::query(
            "INSERT INTO chain_head (id, seq, hash, last_exception) VALUES (TRUE, 0, $1, 0) ON CONFLICT DO NOTHING",
        )
        .bind(GENESIS_HASH)
        .execute(&pool)
        .await
        .map_err(map_err)?;
        let node = format!("{}-{:016x}", std::process::id(), rand::random::<u64>()).into();
        Ok(Self { pool, feed: Default::default(), node, quarantine: Quarantine::default() })
    }

    /// The change feed: a task LISTENs (reconnecting after an outage) and publishes each
    /// announced sequence number.
    async fn feed(&self) -> tokio::sync::watch::Receiver<u64> {
        self.feed
            .get_or_init(|| async {
                let (tx, rx) = tokio::sync::watch::channel(0u64);
                let store = self.clone();
                tokio::spawn(async move {
                    loop {
                        match store.listen().await {
                            Ok(mut listener) => loop {
                                match listener.try_recv().await {
                                    Ok(Some(note)) => {
                                        if let Ok(seq) = note.payload().parse::<u64>() {
                                            tx.send_if_modified(|held| {
                                                let newer = seq > *held;
                                                *held = (*held).max(seq);
                                                newer
                                            });
                                        }
                                    }
                                    // The connection dropped: followers catch up by sequence
                                    // number; wake them so they look now.
                                    Ok(None) => {
                                        tx.send_modify(|_| {});
                                    }
                                    Err(_) => break,
                                }
                            },
                            Err(e) => tracing::debug!("cannot LISTEN for changes yet: {e}"),
                        }
                        if tx.is_closed() {
                            return;
                        }
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                });
                rx
            })
            .await
            .clone()
    }

    /// Keys the log sealed whose row is gone (`kind`: exception, identity, token).
    async fn missing(&self, kind: &str) -> Result<Vec<Tampered>, StoreError> {
        let (table, column) = match kind {
            "exception" => ("exceptions", "id"),
            "identity" => ("identities", "entity"),
            _ => ("tokens", "id"),
        };
        let keys: Vec<String> = sqlx::query_scalar(&format!(
            "SELECT DISTINCT v.seal_key FROM events v WHERE v.seal_key >= $1 AND v.seal_key < $2 \
             AND NOT EXISTS (SELECT 1 FROM {table} x WHERE x.{column} = substr(v.seal_key, length($1) + 1)) \
             ORDER BY v.seal_key"
        ))
        .bind(format!("{kind}:"))
        .bind(format!("{kind};"))
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(keys.into_iter().map(|key| Tampered::new(key, "the log sealed it, and its row is gone")).collect())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// A listener on the change channel: each notification carries the newest sequence
    /// number a commit appended.
    pub async fn listen(&self) -> Result<PgListener, StoreError> {
        let mut listener = PgListener::connect_with(&self.pool).await.map_err(map_err)?;
        listener.listen(CHANNEL).await.map_err(map_err)?;
        Ok(listener)
    }

    /// Tries to become the scheduler leader: `Some` holds the lock for as long as the
    /// returned connection lives (drop it, or lose it, and the lock is gone).
    pub async fn lead(&self) -> Result<Option<Leader>, StoreError> {
        let mut conn = self.pool.acquire().await.map_err(map_err)?;
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(LEADER_LOCK)
            .fetch_one(&mut *conn)
            .await
            .map_err(map_err)?;
        if got {
            // The lock belongs to this session: keep the connection out of the pool.
            Ok(Some(Leader { conn: Some(conn.detach()) }))
        } else {
            Ok(None)
        }
    }
}

/// The scheduler leadership: an advisory lock held by one dedicated session.
pub struct Leader {
    conn: Option<sqlx::PgConnection>,
}

impl std::fmt::Debug for Leader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leader").finish_non_exhaustive()
    }
}

#[async_trait]
impl waiver_store::Leadership for Leader {
    /// Whether the session holding the lock is still alive (so the lock still holds).
    async fn still_leading(&mut self) -> bool {
        let Some(conn) = self.conn.as_mut() else { return false };
        let alive = sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(&mut *conn).await.is_ok();
        if !alive {
            self.conn = None;
        }
        alive
    }
}

/// Sets `due_at` on records a migration could not (requests written before the column).
/// Every replica may run it at once; each writes the same value.
async fn backfill_due_at(pool: &PgPool) -> Result<(), StoreError> {
    let rows = sqlx::query("SELECT number, record FROM exceptions WHERE due_at IS NULL")
        .fetch_all(pool)
        .await
        .map_err(map_err)?;
    for row in &rows {
        let number: i64 = row.try_get("number").map_err(map_err)?;
        let due = unchecked::<waiver_proto::Exception, Exception>(row)?.due_at();
        sqlx::query("UPDATE exceptions SET due_at = $1 WHERE number = $2 AND due_at IS NULL")
            .bind(stored_instant(due))
            .bind(number)
            .execute(pool)
            .await
            .map_err(map_err)?;
    }
    Ok(())
}

/// The columns a checked read takes from the event that sealed a row (`e`), and the newest
/// event sealing the same key; the row's table is `x`.
macro_rules! seal_columns {
    ($table:literal) => {
        concat!(
            "x.sealed_seq AS sealed_seq, e.seq AS e_seq, e.exception_id AS e_exception_id, e.body AS e_body, ",
            "e.prev_hash AS e_prev_hash, e.hash AS e_hash, e.seal_digest AS e_seal_digest, e.seal_key AS e_seal_key, ",
            "(SELECT max(v.seq) FROM events v WHERE v.seal_key = e.seal_key) AS last_sealed ",
            "FROM ",
            $table,
            " x LEFT JOIN events e ON e.seq = x.sealed_seq"
        )
    };
    // Without the event's body and hashes: for bulk reads (see `seal::Row::with_body`).
    ($table:literal, light) => {
        concat!(
            "x.sealed_seq AS sealed_seq, e.seq AS e_seq, e.exception_id AS e_exception_id, ",
            "e.seal_digest AS e_seal_digest, e.seal_key AS e_seal_key, ",
            "(SELECT max(v.seq) FROM events v WHERE v.seal_key = e.seal_key) AS last_sealed ",
            "FROM ",
            $table,
            " x LEFT JOIN events e ON e.seq = x.sealed_seq"
        )
    };
}

/// Exception rows with what checks them; `WHERE` and `ORDER BY` follow.
const EXCEPTION_SELECT: &str = concat!(
    "SELECT x.number AS number, x.id AS id, x.record AS record, x.use_count AS use_count, ",
    "x.last_used_at AS last_used_at, x.subject AS subject_column, x.owner AS owner_column, ",
    "x.state AS state_column, x.expires_at AS expires_column, x.due_at AS due_column, x.used_scope AS used_scope, ",
    seal_columns!("exceptions")
);
/// [`EXCEPTION_SELECT`] for bulk reads: the sealing event's seal columns, not its body.
const EXCEPTION_LIST: &str = concat!(
    "SELECT x.number AS number, x.id AS id, x.record AS record, x.use_count AS use_count, ",
    "x.last_used_at AS last_used_at, x.subject AS subject_column, x.owner AS owner_column, ",
    "x.state AS state_column, x.expires_at AS expires_column, x.due_at AS due_column, x.used_scope AS used_scope, ",
    seal_columns!("exceptions", light)
);
const IDENTITY_SELECT: &str = concat!("SELECT x.entity AS entity, x.record AS record, ", seal_columns!("identities"));
const TOKEN_SELECT: &str = concat!(
    "SELECT x.id AS id, x.secret_hash AS secret_hash, x.principal AS principal, x.roles AS roles, x.label AS label, ",
    "x.created_at AS created_at, x.revoked_at AS revoked_at, x.issued_by AS issued_by, x.expires_at AS expires_at, x.scopes AS scopes, x.last_used_at AS last_used_at, ",
    seal_columns!("tokens")
);

/// Checks a row read with `seal_columns!` against its seal.
fn check_sealed(row: &PgRow, key: &str, text: &str) -> Result<Result<(), Tampered>, StoreError> {
    let with_body = row.try_column("e_body").is_ok();
    let seq = |name: &str| -> Result<Option<u64>, StoreError> {
        let value: Option<i64> = row.try_get(name).map_err(map_err)?;
        Ok(value.and_then(|v| u64::try_from(v).ok()))
    };
    let e_exception_id: Option<&str> = row.try_get("e_exception_id").map_err(map_err)?;
    let column = |name: &str| -> Result<Option<&str>, StoreError> {
        if with_body { row.try_get(name).map_err(map_err) } else { Ok(Some("")) }
    };
    let (e_body, e_prev_hash, e_hash) = (column("e_body")?, column("e_prev_hash")?, column("e_hash")?);
    let event = match (seq("e_seq")?, e_body, e_prev_hash, e_hash) {
        (Some(seq), Some(body), Some(prev_hash), Some(hash)) => Some(EventView {
            seq,
            exception_id: e_exception_id,
            seal_digest: row.try_get("e_seal_digest").map_err(map_err)?,
            seal_key: row.try_get("e_seal_key").map_err(map_err)?,
            body,
            prev_hash,
            hash,
        }),
        _ => None,
    };
    Ok(seal::check(&seal::Row {
        key,
        text,
        sealed_seq: seq("sealed_seq")?,
        event,
        last_sealed: seq("last_sealed")?,
        with_body,
    }))
}

/// An exception row read with [`EXCEPTION_SELECT`]: the exception, or why it does not
/// match the log. (Only failing to read the row at all is an error.)
fn exception_from_row(row: &PgRow) -> Result<Result<Exception, Tampered>, StoreError> {
    let id: &str = row.try_get("id").map_err(map_err)?;
    let text: &str = row.try_get("record").map_err(map_err)?;
    if let Err(tampered) = check_sealed(row, &format!("exception:{id}"), text)? {
        return Ok(Err(tampered));
    }
    Ok(seal::exception_from_text(id, text, usage_columns(row)?))
}

fn usage_columns(row: &PgRow) -> Result<waiver_core::exception::Usage, StoreError> {
    let count: i64 = row.try_get("use_count").map_err(map_err)?;
    let last_used: Option<&str> = row.try_get("last_used_at").map_err(map_err)?;
    let scope_used: i64 = row.try_get("used_scope").map_err(map_err)?;
    Ok(waiver_core::exception::Usage {
        count: u64::try_from(count).unwrap_or_default(),
        last_used_at: last_used.and_then(|t| t.parse().ok()),
        scope_used: u64::from_ne_bytes(scope_used.to_ne_bytes()),
    })
}

fn identity_from_row(row: &PgRow) -> Result<Result<Identity, Tampered>, StoreError> {
    let entity: &str = row.try_get("entity").map_err(map_err)?;
    let text: &str = row.try_get("record").map_err(map_err)?;
    if let Err(tampered) = check_sealed(row, &format!("identity:{entity}"), text)? {
        return Ok(Err(tampered));
    }
    Ok(seal::identity_from_text(entity, text))
}

/// Reads a row without its seal (legacy rows, before they are sealed).
fn unchecked<T: serde::de::DeserializeOwned, U: TryFrom<T>>(row: &PgRow) -> Result<U, StoreError>
where
    U::Error: std::fmt::Display,
{
    let text: &str = row.try_get("record").map_err(map_err)?;
    let record: T = serde_json::from_str(text).map_err(corrupt)?;
    U::try_from(record).map_err(corrupt)
}

fn event_from_row(row: &PgRow) -> Result<EventRecord, StoreError> {
    let seq: i64 = row.try_get("seq").map_err(map_err)?;
    EventRecord::from_stored(
        to_u64(seq, "event sequence number")?,
        row.try_get("exception_id").map_err(map_err)?,
        row.try_get("body").map_err(map_err)?,
        row.try_get("prev_hash").map_err(map_err)?,
        row.try_get("hash").map_err(map_err)?,
    )
    .map_err(corrupt)
}

fn token_from_row(row: &PgRow) -> Result<Result<TokenRecord, Tampered>, StoreError> {
    let token = token_columns(row)?;
    let key = seal::token_key(&token.id);
    Ok(check_sealed(row, &key, &seal::token_text(&token))?.map(|()| token))
}

fn token_columns(row: &PgRow) -> Result<TokenRecord, StoreError> {
    let roles: String = row.try_get("roles").map_err(map_err)?;
    Ok(TokenRecord {
        id: row.try_get("id").map_err(map_err)?,
        secret_hash: row.try_get("secret_hash").map_err(map_err)?,
        principal: row.try_get("principal").map_err(map_err)?,
        roles: roles.split(',').filter(|r| !r.is_empty()).map(str::to_owned).collect(),
        label: row.try_get("label").map_err(map_err)?,
        created_at: row.try_get("created_at").map_err(map_err)?,
        revoked_at: row.try_get("revoked_at").map_err(map_err)?,
        issued_by: row.try_get("issued_by").map_err(map_err)?,
        expires_at: row.try_get("expires_at").map_err(map_err)?,
        scopes: row
            .try_get::<Option<String>, _>("scopes")
            .map_err(map_err)?
            .map(|s| s.split(',').filter(|r| !r.is_empty()).map(str::to_owned).collect())
            .unwrap_or_default(),
        last_used_at: row.try_get("last_used_at").map_err(map_err)?,
    })
}

fn webhook_from_row(row: &PgRow) -> Result<WebhookRecord, StoreError> {
    let event_types: String = row.try_get("event_types").map_err(map_err)?;
    let delivered: i64 = row.try_get("delivered_seq").map_err(map_err)?;
    let attempts: i32 = row.try_get("attempts").map_err(map_err)?;
    Ok(WebhookRecord {
        id: row.try_get("id").map_err(map_err)?,
        url: row.try_get("url").map_err(map_err)?,
        secret: row.try_get("secret").map_err(map_err)?,
        event_types: event_types.split(',').filter(|t| !t.is_empty()).map(str::to_owned).collect(),
        created_by: row.try_get("created_by").map_err(map_err)?,
        created_at: row.try_get("created_at").map_err(map_err)?,
        deleted_at: row.try_get("deleted_at").map_err(map_err)?,
        progress: WebhookProgress {
            delivered_seq: to_u64(delivered, "event sequence number")?,
            attempts: u32::try_from(attempts).map_err(corrupt)?,
            next_attempt_at: row.try_get("next_attempt_at").map_err(map_err)?,
            last_error: row.try_get("last_error").map_err(map_err)?,
        },
    })
}

const EVENT_COLUMNS: &str = "seq, exception_id, body, prev_hash, hash";

#[async_trait]
impl StoreRead for PostgresStore {
    async fn exception(&self, id: ExceptionId) -> Result<Option<Exception>, StoreError> {
        let row = sqlx::query(&format!("{EXCEPTION_SELECT} WHERE x.number = $1"))
            .bind(to_i64(id.number(), "exception number")?)
            .fetch_optional(&self.pool)
            .await
            .map_err(map_err)?;
        self.quarantine.one_intact(row.as_ref(), exception_from_row, |e| seal::exception_key(e.id))
    }

    async fn exceptions(&self, filter: &ExceptionFilter) -> Result<Vec<Exception>, StoreError> {
        let mut q = sqlx::QueryBuilder::<Postgres>::new(format!("{EXCEPTION_LIST} WHERE TRUE"));
        if let Some(after) = filter.after {
            q.push(" AND x.number > ").push_bind(to_i64(after.number(), "exception number")?);
        }
        if let Some(subject) = &filter.subject {
            q.push(" AND x.subject = ").push_bind(subject.to_string());
        }
        if let Some(owner) = &filter.owner {
            q.push(" AND x.owner = ").push_bind(owner.clone());
        }
        if let Some(states) = &filter.states {
            let states: Vec<String> = states.iter().map(|s| s.as_str().to_owned()).collect();
            q.push(" AND x.state = ANY(").push_bind(states).push(")");
        }
        if let Some(before) = filter.expires_before {
            q.push(" AND x.expires_at < ").push_bind(stored_instant(before));
        }
        if let Some(before) = filter.due_before {
            q.push(" AND x.due_at < ").push_bind(stored_instant(before));
        }
        if let Some(ids) = &filter.ids {
            let numbers =
                ids.iter().map(|id| to_i64(id.number(), "exception number")).collect::<Result<Vec<i64>, _>>()?;
            q.push(" AND x.number = ANY(").push_bind(numbers).push(")");
        }
        q.push(" ORDER BY x.number");
        if let Some(limit) = filter.limit {
            q.push(" LIMIT ").push_bind(i64::from(limit));
        }
        let rows = q.build().fetch_all(&self.pool).await.map_err(map_err)?;
        self.quarantine.keep_intact(&rows, exception_from_row, |e| seal::exception_key(e.id))
    }

    async fn identity(&self, entity: &EntityRef) -> Result<Option<Identity>, StoreError> {
        let row = sqlx::query(&format!("{IDENTITY_SELECT} WHERE x.entity = $1"))
            .bind(entity.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(map_err)?;
        self.quarantine.one_intact(row.as_ref(), identity_from_row, |i| seal::identity_key(&i.entity))
    }

    async fn identities(&self) -> Result<Vec<Identity>, StoreError> {
        let rows = sqlx::query(&format!("{IDENTITY_SELECT} ORDER BY x.entity COLLATE \"C\""))
            .fetch_all(&self.pool)
            .await
            .map_err(map_err)?;
        let kept = self.quarantine.keep_intact(&rows, identity_from_row, |i| seal::identity_key(&i.entity))?;
        // An offboarded identity deleted from the table must stay denied.
        for tampered in self.missing("identity").await? {
            self.quarantine.note(&tampered.key.clone(), Err(&tampered));
        }
        Ok(kept)
    }

    async fn token_by_hash(&self, secret_hash: &str) -> Result<Option<TokenRecord>, StoreError> {
        let row = sqlx::query(&format!("{TOKEN_SELECT} WHERE x.secret_hash = $1"))
            .bind(secret_hash)
            .fetch_optional(&self.pool)
            .await
            .map_err(map_err)?;
        self.quarantine.one_intact(row.as_ref(), token_from_row, |t| seal::token_key(&t.id))
    }

    async fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        let rows = sqlx::query(&format!("{TOKEN_SELECT} ORDER BY x.id COLLATE \"C\""))
            .fetch_all(&self.pool)
            .await
            .map_err(map_err)?;
        self.quarantine.keep_intact(&rows, token_from_row, |t| seal::token_key(&t.id))
    }

    async fn webhooks(&self) -> Result<Vec<WebhookRecord>, StoreError> {
        let rows = sqlx::query("SELECT * FROM webhooks ORDER BY id COLLATE \"C\"")
            .fetch_all(&self.pool)
            .await
            .map_err(map_err)?;
        rows.iter().map(webhook_from_row).collect()
    }

    async fn last_seq(&self) -> Result<u64, StoreError> {
        let seq: i64 =
            sqlx::query_scalar("SELECT seq FROM chain_head WHERE id").fetch_one(&self.pool).await.map_err(map_err)?;
        to_u64(seq, "event sequence number")
    }

    async fn events(&self, after: u64, limit: u32) -> Result<Vec<EventRecord>, StoreError> {
        let rows = sqlx::query(&format!("SELECT {EVENT_COLUMNS} FROM events WHERE seq > $1 ORDER BY seq LIMIT $2"))
            .bind(to_i64(after, "event sequence number")?)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(map_err)?;
        rows.iter().map(event_from_row).collect()
    }

    async fn events_of(&self, id: ExceptionId) -> Result<Vec<EventRecord>, StoreError> {
        let rows = sqlx::query(&format!("SELECT {EVENT_COLUMNS} FROM events WHERE exception_id = $1 ORDER BY seq"))
            .bind(id.to_string())
            .fetch_all(&self.pool)
            .await
            .map_err(map_err)?;
        rows.iter().map(event_from_row).collect()
    }

    async fn verify_records(&self, limit: usize) -> Result<Vec<Tampered>, StoreError> {
        let mut found = Vec::new();
        let mut after = 0i64;
        loop {
            let rows = sqlx::query(&format!("{EXCEPTION_LIST} WHERE x.number > $1 ORDER BY x.number LIMIT 10000"))
                .bind(after)
                .fetch_all(&self.pool)
                .await
                .map_err(map_err)?;
            let Some(last) = rows.last() else { break };
            after = last.try_get("number").map_err(map_err)?;
            for row in &rows {
                let outcome = exception_from_row(row)?.and_then(|e| {
                    let column = |name: &str| row.try_get::<Option<&str>, _>(name).ok().flatten();
                    seal::check_columns(
                        &e,
                        ["subject_column", "owner_column", "state_column", "expires_column", "due_column"].map(column),
                    )
                });
                if let Err(tampered) = outcome {
                    found.push(tampered);
                }
            }
        }
        let identities = sqlx::query(&format!("{IDENTITY_SELECT} ORDER BY x.entity COLLATE \"C\""))
            .fetch_all(&self.pool)
            .await
            .map_err(map_err)?;
        for row in &identities {
            if let Err(tampered) = identity_from_row(row)? {
                found.push(tampered);
            }
        }
        let tokens = sqlx::query(&format!("{TOKEN_SELECT} ORDER BY x.id COLLATE \"C\""))
            .fetch_all(&self.pool)
            .await
            .map_err(map_err)?;
        for row in &tokens {
            if let Err(tampered) = token_from_row(row)? {
                found.push(tampered);
            }
        }
        for kind in ["exception", "identity", "token"] {
            found.extend(self.missing(kind).await?);
        }
        found.truncate(limit);
        Ok(found)
    }

    async fn artifact_at(&self, kind: &str, at: Option<u64>) -> Result<Option<InForce>, StoreError> {
        let at = match at {
            Some(seq) => to_i64(seq, "event sequence number")?,
            None => i64::MAX,
        };
        let row = sqlx::query(
            "SELECT e.seq AS e_seq, e.exception_id AS e_exception_id, e.body AS e_body, e.prev_hash AS e_prev_hash, e.hash AS e_hash, e.seal_digest AS e_seal_digest, e.seal_key AS e_seal_key, e.seq AS sealed_seq, e.seq AS last_sealed, a.body AS artifact FROM events e LEFT JOIN artifacts a ON a.digest = e.seal_digest WHERE e.seal_key = $1 AND e.seq <= $2 ORDER BY e.seq DESC LIMIT 1",
        )
        .bind(kind)
        .bind(at)
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err)?;
        let Some(row) = row else { return Ok(None) };
        let body: Option<String> = row.try_get("artifact").map_err(map_err)?;
        let body = body.unwrap_or_default();
        // The newest seal at or before `at` is the one in force, so it is its own last.
        check_sealed(&row, kind, &body)?.map_err(StoreError::Tampered)?;
        let seq: i64 = row.try_get("e_seq").map_err(map_err)?;
        let digest: Option<String> = row.try_get("e_seal_digest").map_err(map_err)?;
        Ok(Some(InForce { seq: u64::try_from(seq).map_err(corrupt)?, digest: digest.unwrap_or_default(), body }))
    }

    async fn register_part(&self, digest: &str) -> Result<Option<String>, StoreError> {
        sqlx::query_scalar("SELECT body FROM artifacts WHERE digest = $1 AND kind = $2")
            .bind(digest)
            .bind(waiver_store::checkpoint::PART_KIND)
            .fetch_optional(&self.pool)
            .await
            .map_err(map_err)
    }

    async fn exceptions_sealed_after(&self, seq: u64) -> Result<Vec<ExceptionId>, StoreError> {
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT exception_id FROM events WHERE seq > $1 AND exception_id IS NOT NULL AND seal_key IS NOT NULL",
        )
        .bind(to_i64(seq, "event sequence number")?)
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        waiver_store::checkpoint::sealed_ids(ids)
    }

    fn quarantined(&self) -> Vec<Tampered> {
        self.quarantine.list()
    }

    fn note(&self, key: &str, outcome: Result<(), &Tampered>) {
        self.quarantine.note(key, outcome);
    }

    async fn unsealed(&self) -> Result<Option<Unsealed>, StoreError> {
        let sealed: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM events WHERE seal_key IS NOT NULL)")
            .fetch_one(&self.pool)
            .await
            .map_err(map_err)?;
        if sealed {
            return Ok(None);
        }
        let mut unsealed = Unsealed::default();
        let rows =
            sqlx::query("SELECT record, use_count, last_used_at, used_scope FROM exceptions WHERE sealed_seq IS NULL")
                .fetch_all(&self.pool)
                .await
                .map_err(map_err)?;
        for row in &rows {
            let mut e: Exception = unchecked::<waiver_proto::Exception, _>(row)?;
            e.usage = usage_columns(row)?;
            unsealed.exceptions.push(e);
        }
        let rows = sqlx::query("SELECT record FROM identities WHERE sealed_seq IS NULL")
            .fetch_all(&self.pool)
            .await
            .map_err(map_err)?;
        for row in &rows {
            unsealed.identities.push(unchecked::<waiver_proto::Identity, _>(row)?);
        }
        let rows = sqlx::query("SELECT * FROM tokens WHERE sealed_seq IS NULL")
            .fetch_all(&self.pool)
            .await
            .map_err(map_err)?;
        for row in &rows {
            unsealed.tokens.push(token_columns(row)?);
        }
        Ok(Some(unsealed))
    }

    async fn verify_chain(&self) -> Result<Result<ChainHead, BrokenLink>, StoreError> {
        const BATCH: i64 = 10_000;
        let mut verifier = ChainVerifier::default();
        let mut after = 0i64;
        loop {
            let rows = sqlx::query(&format!(
                "SELECT {EVENT_COLUMNS}, seal_digest, seal_key FROM events WHERE seq > $1 ORDER BY seq LIMIT $2"
            ))
            .bind(after)
            .bind(BATCH)
            .fetch_all(&self.pool)
            .await
            .map_err(map_err)?;
            let Some(last) = rows.last() else { break };
            after = last.try_get("seq").map_err(map_err)?;
            for row in &rows {
                let seq: i64 = row.try_get("seq").map_err(map_err)?;
                let view = EventView {
                    seq: to_u64(seq, "event sequence number")?,
                    exception_id: row.try_get("exception_id").map_err(map_err)?,
                    body: row.try_get("body").map_err(map_err)?,
                    prev_hash: row.try_get("prev_hash").map_err(map_err)?,
                    hash: row.try_get("hash").map_err(map_err)?,
                    seal_digest: row.try_get("seal_digest").map_err(map_err)?,
                    seal_key: row.try_get("seal_key").map_err(map_err)?,
                };
                if let Err(broken) = verifier.push_view(&view) {
                    return Ok(Err(broken));
                }
            }
        }
        Ok(Ok(verifier.finish()))
    }
}

/// The chain head and id counter while a transaction holds the head row.
struct Head {
    seq: u64,
    prev_hash: String,
    last_exception: u64,
}

async fn apply(tx: &mut sqlx::Transaction<'static, Postgres>, build: CommitFn) -> Result<Vec<EventRecord>, StoreError> {
    let row = sqlx::query("SELECT seq, hash, last_exception FROM chain_head WHERE id FOR UPDATE")
        .fetch_one(&mut **tx)
        .await
        .map_err(map_err)?;
    let mut head = Head {
        seq: to_u64(row.try_get("seq").map_err(map_err)?, "event sequence number")?,
        prev_hash: row.try_get("hash").map_err(map_err)?,
        last_exception: to_u64(row.try_get("last_exception").map_err(map_err)?, "exception number")?,
    };
    let mut allocator = Allocator::after(head.last_exception);
    let commit = build(&mut allocator);
    head.last_exception = allocator.last();
    let plan = seal::plan(&commit)?;
    let first_seq = head.seq + 1;

    for (write, sealed) in commit.exceptions.iter().zip(&plan.exceptions) {
        let e = &write.value;
        let record = sealed.text.as_str();
        let sealed_seq = to_i64(sealed.seq(first_seq), "event sequence number")?;
        let number = to_i64(e.id.number(), "exception number")?;
        let version = to_i64(e.version, "version")?;
        let result = match write.expected_version {
            None => sqlx::query(
                "INSERT INTO exceptions (number, id, version, subject, owner, state, expires_at, record, due_at, \
                 sealed_seq, use_count, last_used_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
            )
            .bind(number)
            .bind(e.id.to_string())
            .bind(version)
            .bind(e.subject.to_string())
            .bind(e.owner.as_str())
            .bind(e.state.as_str())
            .bind(stored_instant(e.expires_at))
            .bind(record)
            .bind(stored_instant(e.due_at()))
            .bind(sealed_seq)
            .bind(to_i64(e.usage.count, "use count")?)
            .bind(e.usage.last_used_at.map(stored_instant))
            .execute(&mut **tx)
            .await
            .map_err(map_err)?,
            Some(expected) => sqlx::query(
                "UPDATE exceptions SET version = $1, owner = $2, state = $3, expires_at = $4, record = $5, due_at = $6, \
                 sealed_seq = $7 WHERE number = $8 AND version = $9",
            )
            .bind(version)
            .bind(e.owner.as_str())
            .bind(e.state.as_str())
            .bind(stored_instant(e.expires_at))
            .bind(record)
            .bind(stored_instant(e.due_at()))
            .bind(sealed_seq)
            .bind(number)
            .bind(to_i64(expected, "version")?)
            .execute(&mut **tx)
            .await
            .map_err(map_err)?,
        };
        if result.rows_affected() != 1 {
            return Err(StoreError::Conflict(format!("`{}` changed since it was read", e.id)));
        }
    }

    for (write, sealed) in commit.identities.iter().zip(&plan.identities) {
        let i = &write.value;
        let record = sealed.text.as_str();
        let sealed_seq = to_i64(sealed.seq(first_seq), "event sequence number")?;
        let result = match write.expected_version {
            None => sqlx::query(
                "INSERT INTO identities (entity, version, status, owner, record, sealed_seq) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(i.entity.to_string())
            .bind(to_i64(i.version, "version")?)
            .bind(i.status.as_str())
            .bind(i.owner.as_str())
            .bind(record)
            .bind(sealed_seq)
            .execute(&mut **tx)
            .await
            .map_err(|e| match map_err(e) {
                StoreError::Conflict(_) => StoreError::Conflict(format!("identity `{}` already exists", i.entity)),
                other => other,
            })?,
            Some(expected) => sqlx::query(
                "UPDATE identities SET version = $1, status = $2, owner = $3, record = $4, sealed_seq = $5 \
                 WHERE entity = $6 AND version = $7",
            )
            .bind(to_i64(i.version, "version")?)
            .bind(i.status.as_str())
            .bind(i.owner.as_str())
            .bind(record)
            .bind(sealed_seq)
            .bind(i.entity.to_string())
            .bind(to_i64(expected, "version")?)
            .execute(&mut **tx)
            .await
            .map_err(map_err)?,
        };
        if result.rows_affected() != 1 {
            return Err(StoreError::Conflict(format!("identity `{}` changed since it was read", i.entity)));
        }
    }

    for (token, sealed) in commit.tokens.iter().zip(&plan.tokens) {
        // An update writes every column, so the row is the record its seal describes.
        sqlx::query(
            "INSERT INTO tokens (id, secret_hash, principal, roles, label, created_at, revoked_at, issued_by, sealed_seq, expires_at, scopes) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
             ON CONFLICT (id) DO UPDATE SET secret_hash = excluded.secret_hash, principal = excluded.principal, \
             roles = excluded.roles, label = excluded.label, created_at = excluded.created_at, \
             revoked_at = excluded.revoked_at, issued_by = excluded.issued_by, sealed_seq = excluded.sealed_seq, \
             expires_at = excluded.expires_at, scopes = excluded.scopes",
        )
        .bind(&token.id)
        .bind(&token.secret_hash)
        .bind(&token.principal)
        .bind(token.roles.join(","))
        .bind(&token.label)
        .bind(&token.created_at)
        .bind(&token.revoked_at)
        .bind(&token.issued_by)
        .bind(to_i64(sealed.seq(first_seq), "event sequence number")?)
        .bind(&token.expires_at)
        .bind((!token.scopes.is_empty()).then(|| token.scopes.join(",")))
        .execute(&mut **tx)
        .await
        .map_err(map_err)?;
    }

    for hook in &commit.webhooks {
        sqlx::query(
            "INSERT INTO webhooks (id, url, secret, event_types, created_by, created_at, deleted_at, delivered_seq) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (id) DO UPDATE SET deleted_at = excluded.deleted_at",
        )
        .bind(&hook.id)
        .bind(&hook.url)
        .bind(&hook.secret)
        .bind(hook.event_types.join(","))
        .bind(&hook.created_by)
        .bind(&hook.created_at)
        .bind(&hook.deleted_at)
        .bind(to_i64(hook.progress.delivered_seq, "event sequence number")?)
        .execute(&mut **tx)
        .await
        .map_err(map_err)?;
    }

    for (id, progress) in &commit.webhook_progress {
        let result = sqlx::query(
            "UPDATE webhooks SET delivered_seq = $1, attempts = $2, next_attempt_at = $3, last_error = $4 WHERE id = $5",
        )
        .bind(to_i64(progress.delivered_seq, "event sequence number")?)
        .bind(i32::try_from(progress.attempts).unwrap_or(i32::MAX))
        .bind(&progress.next_attempt_at)
        .bind(&progress.last_error)
        .bind(id)
        .execute(&mut **tx)
        .await
        .map_err(map_err)?;
        if result.rows_affected() != 1 {
            return Err(StoreError::NotFound(format!("webhook `{id}`")));
        }
    }

    for (artifact, sealed) in commit.artifacts.iter().zip(&plan.artifacts) {
        if let Some(expected) = &artifact.replaces {
            let current: Option<String> =
                sqlx::query_scalar("SELECT seal_digest FROM events WHERE seal_key = $1 ORDER BY seq DESC LIMIT 1")
                    .bind(&artifact.kind)
                    .fetch_optional(&mut **tx)
                    .await
                    .map_err(map_err)?
                    .flatten();
            if current.as_ref() != expected.as_ref() {
                return Err(StoreError::Conflict(format!(
                    "the `{}` document changed since it was read",
                    artifact.kind
                )));
            }
        }
        // Content-addressed: a version put in force again is stored once.
        sqlx::query("INSERT INTO artifacts (digest, kind, body) VALUES ($1, $2, $3) ON CONFLICT (digest) DO NOTHING")
            .bind(seal::digest(&sealed.text))
            .bind(&artifact.kind)
            .bind(&artifact.body)
            .execute(&mut **tx)
            .await
            .map_err(map_err)?;
    }

    if let Some(parts) = &commit.register_parts {
        let digests: Vec<String> = parts.bodies.iter().map(|b| seal::digest(b)).collect();
        for (digest, body) in digests.iter().zip(&parts.bodies) {
            sqlx::query(PUT_PART)
                .bind(digest)
                .bind(waiver_store::checkpoint::PART_KIND)
                .bind(body)
                .execute(&mut **tx)
                .await
                .map_err(map_err)?;
        }
        // Parts of older checkpoints are derived state, not history: only the two newest
        // checkpoints' are kept.
        let keep: Vec<String> = digests.into_iter().chain(parts.keep.iter().cloned()).collect();
        sqlx::query("DELETE FROM artifacts WHERE kind = $1 AND NOT (digest = ANY($2))")
            .bind(waiver_store::checkpoint::PART_KIND)
            .bind(keep)
            .execute(&mut **tx)
            .await
            .map_err(map_err)?;
    }

    for (id, at) in &commit.token_usage {
        sqlx::query(
            "UPDATE tokens SET last_used_at = $1 WHERE id = $2 AND (last_used_at IS NULL OR last_used_at < $1)",
        )
        .bind(stored_instant(*at))
        .bind(id)
        .execute(&mut **tx)
        .await
        .map_err(map_err)?;
    }

    for used in &commit.usage {
        // Added in place, so flushes from several nodes never lose each other's counts.
        sqlx::query(
            "UPDATE exceptions SET use_count = use_count + $1, \
             last_used_at = CASE WHEN last_used_at IS NULL OR last_used_at < $2 THEN $2 ELSE last_used_at END, \
             used_scope = used_scope | $4 \
             WHERE number = $3",
        )
        .bind(to_i64(used.uses, "use count")?)
        .bind(stored_instant(used.last_used_at))
        .bind(to_i64(used.exception.number(), "exception number")?)
        .bind(i64::from_ne_bytes(used.scope_used.to_ne_bytes()))
        .execute(&mut **tx)
        .await
        .map_err(map_err)?;
    }

    let mut sealed = Vec::with_capacity(commit.events.len());
    for (draft, seal) in commit.events.into_iter().zip(plan.event_seals) {
        head.seq += 1;
        let event = draft.seal_with(head.seq, &head.prev_hash, seal);
        sqlx::query(&format!(
            "INSERT INTO events ({EVENT_COLUMNS}, seal_digest, seal_key) VALUES ($1, $2, $3, $4, $5, $6, $7)"
        ))
        .bind(to_i64(event.seq, "event sequence number")?)
        .bind(&event.exception_id)
        .bind(&event.body)
        .bind(&event.prev_hash)
        .bind(&event.hash)
        .bind(event.seal.as_ref().map(|s| s.digest.as_str()))
        .bind(event.seal.as_ref().map(|s| s.key.as_str()))
        .execute(&mut **tx)
        .await
        .map_err(map_err)?;
        head.prev_hash.clone_from(&event.hash);
        sealed.push(event);
    }
    sqlx::query("UPDATE chain_head SET seq = $1, hash = $2, last_exception = $3 WHERE id")
        .bind(to_i64(head.seq, "event sequence number")?)
        .bind(&head.prev_hash)
        .bind(to_i64(head.last_exception, "exception number")?)
        .execute(&mut **tx)
        .await
        .map_err(map_err)?;
    if !sealed.is_empty() {
        // Delivered to listeners only if this transaction commits.
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(head.seq.to_string())
            .execute(&mut **tx)
            .await
            .map_err(map_err)?;
    }
    Ok(sealed)
}

#[async_trait]
impl Store for PostgresStore {
    async fn commit(&self, build: CommitFn) -> Result<Vec<EventRecord>, StoreError> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        let sealed = apply(&mut tx, build).await?;
        tx.commit().await.map_err(map_err)?;
        Ok(sealed)
    }

    async fn wait_for_change(&self, seen: u64, at_most: Duration) {
        let mut feed = self.feed().await;
        if *feed.borrow_and_update() > seen {
            return;
        }
        let _ = tokio::time::timeout(at_most, feed.changed()).await;
    }

    async fn try_lead(&self) -> Result<Option<Box<dyn waiver_store::Leadership>>, StoreError> {
        Ok(self.lead().await?.map(|l| Box::new(l) as Box<dyn waiver_store::Leadership>))
    }

    async fn claim_webhook(&self, id: &str, lease: Duration) -> Result<bool, StoreError> {
        // SKIP LOCKED: a replica claiming the same row this instant is passed over, not
        // waited for; the lease (database time, so replicas' clocks do not matter) lets a
        // dead holder's subscriptions move on.
        let claimed: Option<String> = sqlx::query_scalar(
            "UPDATE webhooks SET lease_holder = $2, lease_until = clock_timestamp() + $3 * interval '1 millisecond'
             WHERE id = (SELECT id FROM webhooks WHERE id = $1
                           AND (lease_holder IS NULL OR lease_holder = $2 OR lease_until < clock_timestamp())
                         FOR UPDATE SKIP LOCKED)
             RETURNING id",
        )
        .bind(id)
        .bind(self.node.as_ref())
        .bind(i64::try_from(lease.as_millis()).unwrap_or(i64::MAX))
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(claimed.is_some())
    }
}

/// Creates an empty database of its own for a test, next to the one `url` names, and
/// returns its URL. Tests fail (not skip) when the server cannot be reached.
pub async fn scratch_database(url: &str) -> Result<String, StoreError> {
    let options = PgConnectOptions::from_str(url).map_err(map_err)?;
    let pool = PgPoolOptions::new().max_connections(1).connect_with(options).await.map_err(map_err)?;
    let name = format!("waiver_test_{:016x}", rand::random::<u64>());
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&pool).await.map_err(map_err)?;
    pool.close().await;
    let base = url.rsplit_once('/').map_or(url, |(base, _)| base);
    Ok(format!("{base}/{name}"))
}

/// Drops a database [`scratch_database`] made (closing any session still on it).
pub async fn drop_scratch_database(url: &str) -> Result<(), StoreError> {
    let (base, name) = url.rsplit_once('/').ok_or_else(|| StoreError::Other(format!("`{url}` names no database")))?;
    if !name.starts_with("waiver_test_") || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(StoreError::Other(format!("`{name}` is not a scratch database")));
    }
    let options = PgConnectOptions::from_str(&format!("{base}/postgres")).map_err(map_err)?;
    let pool = PgPoolOptions::new().max_connections(1).connect_with(options).await.map_err(map_err)?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&pool).await.map_err(map_err)?;
    pool.close().await;
    Ok(())
}

/// Stores a register checkpoint part under its SHA-256. A part the next checkpoint shares is
/// stored once; a stored copy that differs from what hashes to its key was edited outside
/// waiver, and writing the text again restores it, so a new checkpoint repairs a tampered
/// one rather than being refused too. (Baselines and rules keep the first copy: a version
/// set again must not mend the evidence that it was tampered with before; it is refused on
/// load and a new version is set.)
const PUT_PART: &str = "INSERT INTO artifacts (digest, kind, body) VALUES ($1, $2, $3) ON CONFLICT (digest) DO UPDATE \
    SET kind = excluded.kind, body = excluded.body WHERE artifacts.kind <> excluded.kind OR artifacts.body <> excluded.body";

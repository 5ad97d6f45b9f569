//! The SQLite store: waiver's embedded default.
//!
//! Durability: the database runs in WAL mode with `synchronous=FULL`, so every commit
//! fsyncs the WAL before it is acknowledged and survives `kill -9` and power loss. (WAL
//! with `NORMAL` would survive a process crash but could lose the last commits on power
//! loss; an exception register must not forget an approval or a revocation it confirmed.)
//! Writers take the write lock up front with `BEGIN IMMEDIATE` on a one-connection pool,
//! so the chain head read at the start of a commit is still the head at its end, across
//! processes too (a CLI next to a server waits on `busy_timeout`).
//!
//! Group commit: one writer task applies every commit that is waiting in one transaction,
//! each inside its own savepoint, so N concurrent writers pay for one fsync instead of N,
//! and a commit that fails (a version conflict) is rolled back alone.

use std::{path::Path, str::FromStr, time::Duration};

use async_trait::async_trait;
use sqlx::{
    Row, SqlitePool,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous},
};
use tokio::sync::{mpsc, oneshot};
use waiver_core::{
    EntityRef, Exception, ExceptionId, Identity,
    audit::{BrokenLink, ChainHead, ChainVerifier, EventRecord, EventView, GENESIS_HASH},
};
use waiver_store::{
    Allocator, CommitFn, ExceptionFilter, Store, StoreError, StoreRead, TokenRecord, WebhookProgress, WebhookRecord,
};

/// The SQLite-backed store.
#[derive(Clone)]
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
    jobs: mpsc::Sender<Job>,
    write_failure: WriteFailure,
}

/// The store-side error of the last commit, if it failed (shared with the writer task).
type WriteFailure = std::sync::Arc<std::sync::Mutex<Option<String>>>;

fn note_outcome(failure: &WriteFailure, outcome: Option<&StoreError>) {
    let next = match outcome {
        Some(StoreError::Unavailable(message) | StoreError::Other(message)) => Some(message.clone()),
        // A conflict or a refused commit says nothing about the store's health.
        Some(_) => return,
        None => None,
    };
    if let Ok(mut slot) = failure.lock() {
        *slot = next;
    }
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").finish_non_exhaustive()
    }
}

fn map_err(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict(db.message().to_owned()),
        // Busy or locked (5, 6), out of space (13), I/O (10 and its extended codes), cannot
        // open (14): the store is unavailable for now, not the request wrong.
        sqlx::Error::Database(db)
            if db
                .code()
                .and_then(|c| c.parse::<i32>().ok())
                .is_some_and(|c| matches!(c & 0xff, 5 | 6 | 10 | 13 | 14)) =>
        {
            StoreError::Unavailable(db.message().to_owned())
        }
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
            StoreError::Unavailable(e.to_string())
        }
        sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) => StoreError::Corrupt(e.to_string()),
        _ => StoreError::Other(e.to_string()),
    }
}

fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(what.to_string())
}

impl SqliteStore {
    /// Opens (creating if needed) the database file at `path` and migrates it.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        // The register is private: made 0600 before SQLite first writes it (its -wal and
        // -shm files take the database file's mode).
        #[cfg(unix)]
        if !path.exists() {
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            if let Err(e) = options.open(path)
                && e.kind() != std::io::ErrorKind::AlreadyExists
            {
                return Err(StoreError::Unavailable(format!("cannot create {}: {e}", path.display())));
            }
        }
        let options = SqliteConnectOptions::new().filename(path).create_if_missing(true);
        Self::connect(options).await
    }

    /// Opens a `sqlite:` URL.
    pub async fn open_url(url: &str) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url).map_err(map_err)?.create_if_missing(true);
        Self::connect(options).await
    }

    async fn connect(options: SqliteConnectOptions) -> Result<Self, StoreError> {
        let options = options
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options.clone())
            .await
            .map_err(map_err)?;
        sqlx::migrate!("./migrations").run(&writer).await.map_err(|e| StoreError::Other(e.to_string()))?;
        backfill_due_at(&writer).await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options.read_only(true))
            .await
            .map_err(map_err)?;
        let (jobs, queue) = mpsc::channel(1024);
        let write_failure = WriteFailure::default();
        tokio::spawn(write_loop(writer.clone(), queue, write_failure.clone()));
        Ok(Self { writer, reader, jobs, write_failure })
    }

    /// Copies everything in the WAL into the database file and empties the WAL, so the file
    /// alone holds every commit (before it is moved or copied). Fails if readers kept it busy.
    pub async fn checkpoint(&self) -> Result<(), StoreError> {
        let row = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)").fetch_one(&self.writer).await.map_err(map_err)?;
        let busy: i64 = row.try_get(0).map_err(map_err)?;
        if busy != 0 {
            return Err(StoreError::Unavailable("the checkpoint was blocked by a reader".into()));
        }
        Ok(())
    }

    /// Closes both pools, checkpointing the WAL.
    pub async fn close(&self) {
        self.reader.close().await;
        self.writer.close().await;
    }
}

fn exception_from_row(row: &SqliteRow) -> Result<Exception, StoreError> {
    let text: String = row.try_get("record").map_err(map_err)?;
    let record: waiver_proto::Exception = serde_json::from_str(&text).map_err(corrupt)?;
    Exception::try_from(record).map_err(corrupt)
}

fn identity_from_row(row: &SqliteRow) -> Result<Identity, StoreError> {
    let text: String = row.try_get("record").map_err(map_err)?;
    let record: waiver_proto::Identity = serde_json::from_str(&text).map_err(corrupt)?;
    Identity::try_from(record).map_err(|e| corrupt(format!("identity: {e}")))
}

fn event_from_row(row: &SqliteRow) -> Result<EventRecord, StoreError> {
    let seq: i64 = row.try_get("seq").map_err(map_err)?;
    EventRecord::from_stored(
        u64::try_from(seq).map_err(|_| corrupt(format!("event sequence number {seq}")))?,
        row.try_get("exception_id").map_err(map_err)?,
        row.try_get("body").map_err(map_err)?,
        row.try_get("prev_hash").map_err(map_err)?,
        row.try_get("hash").map_err(map_err)?,
    )
    .map_err(corrupt)
}

fn token_from_row(row: &SqliteRow) -> Result<TokenRecord, StoreError> {
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
    })
}

fn webhook_from_row(row: &SqliteRow) -> Result<WebhookRecord, StoreError> {
    let event_types: String = row.try_get("event_types").map_err(map_err)?;
    let delivered: i64 = row.try_get("delivered_seq").map_err(map_err)?;
    let attempts: i64 = row.try_get("attempts").map_err(map_err)?;
    Ok(WebhookRecord {
        id: row.try_get("id").map_err(map_err)?,
        url: row.try_get("url").map_err(map_err)?,
        secret: row.try_get("secret").map_err(map_err)?,
        event_types: event_types.split(',').filter(|t| !t.is_empty()).map(str::to_owned).collect(),
        created_by: row.try_get("created_by").map_err(map_err)?,
        created_at: row.try_get("created_at").map_err(map_err)?,
        deleted_at: row.try_get("deleted_at").map_err(map_err)?,
        progress: WebhookProgress {
            delivered_seq: u64::try_from(delivered).map_err(corrupt)?,
            attempts: u32::try_from(attempts).map_err(corrupt)?,
            next_attempt_at: row.try_get("next_attempt_at").map_err(map_err)?,
            last_error: row.try_get("last_error").map_err(map_err)?,
        },
    })
}

/// How `expires_at` is stored: fixed-width UTC with six fractional digits, so text order
/// is time order and the expiry index answers "before this instant" exactly.
fn stored_instant(t: jiff::Timestamp) -> String {
    waiver_core::canonical::timestamp(t)
}

const EVENT_COLUMNS: &str = "seq, exception_id, body, prev_hash, hash";

fn to_i64(n: u64, what: &str) -> Result<i64, StoreError> {
    i64::try_from(n).map_err(|_| StoreError::Other(format!("{what} {n} is out of range")))
}

#[async_trait]
impl StoreRead for SqliteStore {
    async fn exception(&self, id: ExceptionId) -> Result<Option<Exception>, StoreError> {
        let row = sqlx::query("SELECT record FROM exceptions WHERE number = ?")
            .bind(to_i64(id.number(), "exception number")?)
            .fetch_optional(&self.reader)
            .await
            .map_err(map_err)?;
        row.as_ref().map(exception_from_row).transpose()
    }

    async fn exceptions(&self, filter: &ExceptionFilter) -> Result<Vec<Exception>, StoreError> {
        // Only the filters given become SQL, so SQLite can use the index each one has
        // (`?1 IS NULL OR …` would defeat them and scan every record).
        let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new("SELECT record FROM exceptions WHERE 1 = 1");
        if let Some(after) = filter.after {
            q.push(" AND number > ").push_bind(to_i64(after.number(), "exception number")?);
        }
        if let Some(subject) = &filter.subject {
            q.push(" AND subject = ").push_bind(subject.to_string());
        }
        if let Some(owner) = &filter.owner {
            q.push(" AND owner = ").push_bind(owner.clone());
        }
        if let Some(states) = &filter.states {
            q.push(" AND state IN (");
            let mut list = q.separated(", ");
            for state in states {
                list.push_bind(state.as_str());
            }
            if states.is_empty() {
                list.push("NULL");
            }
            q.push(")");
        }
        if let Some(before) = filter.expires_before {
            q.push(" AND expires_at < ").push_bind(stored_instant(before));
        }
        if let Some(before) = filter.due_before {
            q.push(" AND due_at < ").push_bind(stored_instant(before));
        }
        // With an expiry bound, `+number` keeps SQLite from walking the table in id order to
        // skip a sort: the expiry index finds the few rows due, which are then sorted.
        let order = if filter.expires_before.is_some() || filter.due_before.is_some() {
            " ORDER BY +number LIMIT "
        } else {
            " ORDER BY number LIMIT "
        };
        q.push(order).push_bind(filter.limit.map_or(-1, i64::from));
        let rows = q.build().fetch_all(&self.reader).await.map_err(map_err)?;
        rows.iter().map(exception_from_row).collect()
    }

    async fn identity(&self, entity: &EntityRef) -> Result<Option<Identity>, StoreError> {
        let row = sqlx::query("SELECT record FROM identities WHERE entity = ?")
            .bind(entity.to_string())
            .fetch_optional(&self.reader)
            .await
            .map_err(map_err)?;
        row.as_ref().map(identity_from_row).transpose()
    }

    async fn identities(&self) -> Result<Vec<Identity>, StoreError> {
        let rows = sqlx::query("SELECT record FROM identities ORDER BY entity")
            .fetch_all(&self.reader)
            .await
            .map_err(map_err)?;
        rows.iter().map(identity_from_row).collect()
    }

    async fn token_by_hash(&self, secret_hash: &str) -> Result<Option<TokenRecord>, StoreError> {
        let row = sqlx::query("SELECT * FROM tokens WHERE secret_hash = ?")
            .bind(secret_hash)
            .fetch_optional(&self.reader)
            .await
            .map_err(map_err)?;
        row.as_ref().map(token_from_row).transpose()
    }

    async fn last_seq(&self) -> Result<u64, StoreError> {
        let seq: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM events")
            .fetch_one(&self.reader)
            .await
            .map_err(map_err)?;
        u64::try_from(seq).map_err(corrupt)
    }

    async fn webhooks(&self) -> Result<Vec<WebhookRecord>, StoreError> {
        let rows = sqlx::query("SELECT * FROM webhooks ORDER BY id").fetch_all(&self.reader).await.map_err(map_err)?;
        rows.iter().map(webhook_from_row).collect()
    }

    async fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        let rows = sqlx::query("SELECT * FROM tokens ORDER BY id").fetch_all(&self.reader).await.map_err(map_err)?;
        rows.iter().map(token_from_row).collect()
    }

    async fn events(&self, after: u64, limit: u32) -> Result<Vec<EventRecord>, StoreError> {
        let rows = sqlx::query(&format!("SELECT {EVENT_COLUMNS} FROM events WHERE seq > ? ORDER BY seq LIMIT ?"))
            .bind(to_i64(after, "event sequence number")?)
            .bind(i64::from(limit))
            .fetch_all(&self.reader)
            .await
            .map_err(map_err)?;
        rows.iter().map(event_from_row).collect()
    }

    async fn events_of(&self, id: ExceptionId) -> Result<Vec<EventRecord>, StoreError> {
        let rows = sqlx::query(&format!("SELECT {EVENT_COLUMNS} FROM events WHERE exception_id = ? ORDER BY seq"))
            .bind(id.to_string())
            .fetch_all(&self.reader)
            .await
            .map_err(map_err)?;
        rows.iter().map(event_from_row).collect()
    }

    async fn verify_chain(&self) -> Result<Result<ChainHead, BrokenLink>, StoreError> {
        // Rows cross from SQLite to Rust in batches of one string each, fields split by
        // unit separators and read in place: per-row overhead, not hashing, is what bounds
        // a verify. Hashing a batch runs on a blocking thread while the next one is read.
        let mut verifier = ChainVerifier::default();
        let mut pending: Option<Batch> = None;
        let mut after = 0i64;
        loop {
            let fetch = fetch_batch(&self.reader, after);
            let check = async {
                match pending.take() {
                    None => Ok((verifier, Ok(None))),
                    Some(batch) => tokio::task::spawn_blocking(move || {
                        let result = batch.verify(&mut verifier);
                        (verifier, result)
                    })
                    .await
                    .map_err(|e| StoreError::Other(format!("verify task failed: {e}"))),
                }
            };
            let (fetched, checked) = tokio::join!(fetch, check);
            let (returned, result) = checked?;
            verifier = returned;
            if let Some(broken) = result? {
                return Ok(Err(broken));
            }
            let Some(batch) = fetched? else { break };
            after = batch.last_seq;
            pending = Some(batch);
        }
        Ok(Ok(verifier.finish()))
    }
}

/// Events verified per round trip.
const VERIFY_BATCH: i64 = 20_000;
/// Separators between fields and between events in a batch. Every stored field is text
/// waiver wrote without control characters (canonical JSON escapes them), so these never
/// occur in an untouched log; a tampered field that holds one splits wrongly and fails its
/// hash, which is the point.
const FIELD: char = '\u{1f}';
const RECORD: char = '\u{1e}';

/// A batch of events as one string, in sequence order.
struct Batch {
    text: String,
    last_seq: i64,
}

impl Batch {
    /// Verifies every event in the batch: `Ok(Some(link))` names the first broken one.
    fn verify(&self, verifier: &mut ChainVerifier) -> Result<Option<BrokenLink>, StoreError> {
        let mut views = Vec::with_capacity(usize::try_from(VERIFY_BATCH).unwrap_or_default());
        for record in self.text.split(RECORD) {
            let mut fields = record.split(FIELD);
            let mut next = || fields.next().ok_or_else(|| corrupt("an event row is missing fields"));
            let seq = next()?;
            views.push(EventView {
                seq: seq.parse().map_err(|_| corrupt(format!("event sequence number `{seq}`")))?,
                exception_id: Some(next()?).filter(|id| !id.is_empty()),
                body: next()?,
                prev_hash: next()?,
                hash: next()?,
            });
        }
        // SQLite concatenates in whatever order it visits rows; the chain is checked in
        // sequence order. (Already sorted in practice, so this is one linear pass.)
        views.sort_unstable_by_key(|view| view.seq);
        for view in &views {
            if let Err(broken) = verifier.push_view(view) {
                return Ok(Some(broken));
            }
        }
        Ok(None)
    }
}

/// The next batch of events after `after`, or `None` past the end.
async fn fetch_batch(pool: &SqlitePool, after: i64) -> Result<Option<Batch>, StoreError> {
    let row = sqlx::query(
        "SELECT group_concat(seq || ?1 || ifnull(exception_id, '') || ?1 || body || ?1 || prev_hash || ?1 || hash, ?2) \
         AS text, max(seq) AS last_seq FROM (SELECT * FROM events WHERE seq > ?3 ORDER BY seq LIMIT ?4)",
    )
    .bind(FIELD.to_string())
    .bind(RECORD.to_string())
    .bind(after)
    .bind(VERIFY_BATCH)
    .fetch_one(pool)
    .await
    .map_err(map_err)?;
    let text: Option<String> = row.try_get("text").map_err(map_err)?;
    let last_seq: Option<i64> = row.try_get("last_seq").map_err(map_err)?;
    Ok(text.zip(last_seq).map(|(text, last_seq)| Batch { text, last_seq }))
}

/// Sets `due_at` on records a migration could not (requests written before the column).
async fn backfill_due_at(pool: &SqlitePool) -> Result<(), StoreError> {
    let rows = sqlx::query("SELECT number, record FROM exceptions WHERE due_at IS NULL")
        .fetch_all(pool)
        .await
        .map_err(map_err)?;
    for row in &rows {
        let number: i64 = row.try_get("number").map_err(map_err)?;
        let due = exception_from_row(row)?.due_at();
        sqlx::query("UPDATE exceptions SET due_at = ? WHERE number = ?")
            .bind(stored_instant(due))
            .bind(number)
            .execute(pool)
            .await
            .map_err(map_err)?;
    }
    Ok(())
}

/// One commit waiting for the writer.
struct Job {
    build: CommitFn,
    reply: oneshot::Sender<Result<Vec<EventRecord>, StoreError>>,
}

/// Most commits applied in one transaction (one fsync).
const MAX_GROUP: usize = 128;

/// The chain head and id counter while a transaction is open.
struct Head {
    seq: u64,
    prev_hash: String,
    last_exception: u64,
}

/// The single writer: takes every commit waiting, applies each inside its own savepoint and
/// commits them together, so concurrent writers share one fsync (group commit) while each
/// commit still succeeds or fails on its own.
async fn write_loop(pool: SqlitePool, mut jobs: mpsc::Receiver<Job>, failure: WriteFailure) {
    while let Some(first) = jobs.recv().await {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match jobs.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        let replies = apply_group(&pool, group).await;
        let failed = replies
            .iter()
            .find_map(|(_, result)| result.as_ref().err().filter(|e| !matches!(e, StoreError::Conflict(_))));
        let landed = replies.iter().any(|(_, result)| result.is_ok());
        note_outcome(&failure, if landed { None } else { failed });
        for (reply, result) in replies {
            // The caller may have gone away (a cancelled request); its commit still stands.
            let _ = reply.send(result);
        }
    }
}

type Reply = (oneshot::Sender<Result<Vec<EventRecord>, StoreError>>, Result<Vec<EventRecord>, StoreError>);

async fn apply_group(pool: &SqlitePool, group: Vec<Job>) -> Vec<Reply> {
    let mut conn = match pool.acquire().await {
        Ok(conn) => conn,
        Err(e) => {
            let e = map_err(e);
            return group.into_iter().map(|job| (job.reply, Err(e.clone()))).collect();
        }
    };
    let (replies, clean) = apply_group_on(&mut conn, group).await;
    if !clean {
        // After `SQLITE_FULL` or an I/O error SQLite may roll the transaction back by itself,
        // and sqlx's count of open transactions on this connection no longer matches: every
        // later `BEGIN` would fail until a restart. A fresh connection starts clean.
        conn.close_on_drop();
    }
    replies
}

/// Applies the group on `conn`; the flag is false when a transaction-level step failed and
/// the connection's transaction state is unknown.
async fn apply_group_on(conn: &mut sqlx::pool::PoolConnection<sqlx::Sqlite>, group: Vec<Job>) -> (Vec<Reply>, bool) {
    let fail_all = |group: Vec<Job>, e: StoreError| -> (Vec<Reply>, bool) {
        (group.into_iter().map(|job| (job.reply, Err(e.clone()))).collect(), false)
    };
    let mut tx = match sqlx::Connection::begin_with(&mut **conn, "BEGIN IMMEDIATE").await {
        Ok(tx) => tx,
        Err(e) => return fail_all(group, map_err(e)),
    };
    let mut head = match read_head(&mut tx).await {
        Ok(head) => head,
        Err(e) => return fail_all(group, e),
    };
    let mut outcomes = Vec::with_capacity(group.len());
    for job in group {
        let before = (head.seq, head.prev_hash.clone(), head.last_exception);
        let result = match sqlx::query("SAVEPOINT job").execute(&mut *tx).await {
            Ok(_) => apply_one(&mut tx, &mut head, job.build).await,
            Err(e) => Err(map_err(e)),
        };
        let settled = match &result {
            Ok(_) => sqlx::query("RELEASE job").execute(&mut *tx).await,
            Err(_) => {
                (head.seq, head.prev_hash, head.last_exception) = before;
                match sqlx::query("ROLLBACK TO job").execute(&mut *tx).await {
                    Ok(_) => sqlx::query("RELEASE job").execute(&mut *tx).await,
                    Err(e) => Err(e),
                }
            }
        };
        if let Err(e) = settled {
            // The transaction is in an unknown state: give up on the whole group.
            let e = map_err(e);
            let mut replies: Vec<Reply> = outcomes.into_iter().map(|(reply, _)| (reply, Err(e.clone()))).collect();
            replies.push((job.reply, Err(e)));
            return (replies, false);
        }
        outcomes.push((job.reply, result));
    }
    match tx.commit().await {
        Ok(()) => (outcomes, true),
        Err(e) => {
            let e = map_err(e);
            (outcomes.into_iter().map(|(reply, _)| (reply, Err(e.clone()))).collect(), false)
        }
    }
}

async fn read_head(tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>) -> Result<Head, StoreError> {
    let row = sqlx::query("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1")
        .fetch_optional(&mut **tx)
        .await
        .map_err(map_err)?;
    let (seq, prev_hash) = match row {
        Some(row) => {
            let seq: i64 = row.try_get("seq").map_err(map_err)?;
            (u64::try_from(seq).map_err(corrupt)?, row.try_get::<String, _>("hash").map_err(map_err)?)
        }
        None => (0, GENESIS_HASH.to_owned()),
    };
    let last_number: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(number), 0) FROM exceptions")
        .fetch_one(&mut **tx)
        .await
        .map_err(map_err)?;
    Ok(Head { seq, prev_hash, last_exception: u64::try_from(last_number).map_err(corrupt)? })
}

async fn apply_one(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    head: &mut Head,
    build: CommitFn,
) -> Result<Vec<EventRecord>, StoreError> {
    let mut allocator = Allocator::after(head.last_exception);
    let commit = build(&mut allocator);
    head.last_exception = allocator.last();
    for write in &commit.exceptions {
        let e = &write.value;
        let record = serde_json::to_string(&waiver_proto::Exception::record(e)).map_err(corrupt)?;
        let number = to_i64(e.id.number(), "exception number")?;
        let version = to_i64(e.version, "version")?;
        let result = match write.expected_version {
            None => sqlx::query(
                "INSERT INTO exceptions (number, id, version, subject, owner, state, expires_at, record, due_at) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
            .execute(&mut **tx)
            .await
            .map_err(map_err)?,
            Some(expected) => sqlx::query(
                "UPDATE exceptions SET version = ?, owner = ?, state = ?, expires_at = ?, record = ?, due_at = ? \
                 WHERE number = ? AND version = ?",
            )
            .bind(version)
            .bind(e.owner.as_str())
            .bind(e.state.as_str())
            .bind(stored_instant(e.expires_at))
            .bind(record)
            .bind(stored_instant(e.due_at()))
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

    for write in &commit.identities {
        let i = &write.value;
        let record = serde_json::to_string(&waiver_proto::Identity::from(i)).map_err(corrupt)?;
        let result =
            match write.expected_version {
                None => sqlx::query(
                    "INSERT INTO identities (entity, version, status, owner, record) VALUES (?, ?, ?, ?, ?)",
                )
                .bind(i.entity.to_string())
                .bind(to_i64(i.version, "version")?)
                .bind(i.status.as_str())
                .bind(i.owner.as_str())
                .bind(record)
                .execute(&mut **tx)
                .await
                .map_err(|e| match map_err(e) {
                    StoreError::Conflict(_) => StoreError::Conflict(format!("identity `{}` already exists", i.entity)),
                    other => other,
                })?,
                Some(expected) => sqlx::query(
                    "UPDATE identities SET version = ?, status = ?, owner = ?, record = ? \
                 WHERE entity = ? AND version = ?",
                )
                .bind(to_i64(i.version, "version")?)
                .bind(i.status.as_str())
                .bind(i.owner.as_str())
                .bind(record)
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

    for token in &commit.tokens {
        sqlx::query(
            "INSERT INTO tokens (id, secret_hash, principal, roles, label, created_at, revoked_at, issued_by) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT (id) DO UPDATE SET revoked_at = excluded.revoked_at",
        )
        .bind(&token.id)
        .bind(&token.secret_hash)
        .bind(&token.principal)
        .bind(token.roles.join(","))
        .bind(&token.label)
        .bind(&token.created_at)
        .bind(&token.revoked_at)
        .bind(&token.issued_by)
        .execute(&mut **tx)
        .await
        .map_err(map_err)?;
    }

    for hook in &commit.webhooks {
        sqlx::query(
            "INSERT INTO webhooks (id, url, secret, event_types, created_by, created_at, deleted_at, delivered_seq) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?) \
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
            "UPDATE webhooks SET delivered_seq = ?, attempts = ?, next_attempt_at = ?, last_error = ? WHERE id = ?",
        )
        .bind(to_i64(progress.delivered_seq, "event sequence number")?)
        .bind(i64::from(progress.attempts))
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

    let mut sealed = Vec::with_capacity(commit.events.len());
    for draft in commit.events {
        head.seq += 1;
        let event = draft.seal(head.seq, &head.prev_hash);
        sqlx::query(&format!("INSERT INTO events ({EVENT_COLUMNS}) VALUES (?, ?, ?, ?, ?)"))
            .bind(to_i64(event.seq, "event sequence number")?)
            .bind(&event.exception_id)
            .bind(&event.body)
            .bind(&event.prev_hash)
            .bind(&event.hash)
            .execute(&mut **tx)
            .await
            .map_err(map_err)?;
        head.prev_hash.clone_from(&event.hash);
        sealed.push(event);
    }
    Ok(sealed)
}

#[async_trait]
impl Store for SqliteStore {
    fn write_failure(&self) -> Option<String> {
        self.write_failure.lock().ok().and_then(|slot| slot.clone())
    }

    async fn probe_write(&self) -> Result<(), StoreError> {
        let probe = async {
            let mut conn = self.writer.acquire().await?;
            let result = async {
                let mut tx = sqlx::Connection::begin_with(&mut *conn, "BEGIN IMMEDIATE").await?;
                sqlx::query("INSERT OR REPLACE INTO write_probe (id, at) VALUES (1, strftime('%Y-%m-%dT%H:%M:%fZ'))")
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await
            }
            .await;
            if result.is_err() {
                // As in the writer: the transaction state is unknown after such an error.
                conn.close_on_drop();
            }
            result
        };
        let outcome = probe.await.map_err(map_err);
        note_outcome(&self.write_failure, outcome.as_ref().err());
        outcome
    }

    async fn commit(&self, build: CommitFn) -> Result<Vec<EventRecord>, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Job { build, reply })
            .await
            .map_err(|_| StoreError::Unavailable("the writer has stopped".into()))?;
        answer.await.map_err(|_| StoreError::Unavailable("the writer has stopped".into()))?
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[tokio::test]
    async fn passes_the_store_contract() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("waiver.db")).await.unwrap();
        waiver_store::contract::run(Arc::new(store)).await;
    }
}

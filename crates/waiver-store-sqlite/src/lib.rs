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
    audit::{BrokenLink, ChainHead, ChainVerifier, EventRecord, EventView, GENESIS_HASH, Run, verify_run},
};
use waiver_store::{
    Allocator, CommitFn, ExceptionFilter, InForce, Store, StoreError, StoreRead, TokenRecord, Unsealed,
    WebhookProgress, WebhookRecord,
    seal::{self, Quarantine, Tampered},
};

/// The SQLite-backed store.
#[derive(Clone)]
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
    jobs: mpsc::Sender<Job>,
    write_failure: WriteFailure,
    quarantine: Quarantine,
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
        Ok(Self { writer, reader, jobs, write_failure, quarantine: Quarantine::default() })
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
    /// Every exception, checked against its seal, as a node loads its register: rows cross
    /// from SQLite in pages of one string each (as `audit verify` reads the log), since
    /// handing a million rows one by one from SQLite's thread costs more than checking them.
    async fn all_exceptions(&self) -> Result<Vec<Exception>, StoreError> {
        // Sized once: growing a vector of a million records copies it into fresh pages at
        // every doubling.
        let mut all = Vec::with_capacity(self.exception_head().await?);
        self.load_each(bulk_exception, |e| e.id, |e| e, &mut |page| all.extend(page)).await?;
        // In number order, which is id order unless a row's number was edited.
        all.sort_by_key(|e| e.id);
        Ok(all)
    }

    /// The highest exception number (the count, as numbers have no gaps).
    async fn exception_head(&self) -> Result<usize, StoreError> {
        let head: Option<i64> =
            sqlx::query_scalar("SELECT max(number) FROM exceptions").fetch_one(&self.reader).await.map_err(map_err)?;
        Ok(head.and_then(|h| usize::try_from(h).ok()).unwrap_or_default())
    }

    /// Every exception row, read in pages and handed to `sink` page by page in number order
    /// (`read` takes a row's fields; a page whose rows do not split into their fields is
    /// read row by row into whole records, then `whole`). Tampered rows are left out and
    /// quarantined.
    async fn load_each<T: Send + 'static>(
        &self,
        read: fn(&[&str]) -> Result<T, Tampered>,
        id_of: fn(&T) -> ExceptionId,
        whole: fn(Exception) -> T,
        sink: &mut (dyn FnMut(Vec<T>) + Send),
    ) -> Result<(), StoreError> {
        // Pages are fixed ranges of exception numbers, read on several reader connections
        // and parsed and checked on blocking threads at once (a record's check needs only
        // its row and its seal), then taken in order.
        let head = i64::try_from(self.exception_head().await?).unwrap_or_default();
        if head == 0 {
            return Ok(());
        }
        let reader = self.reader.clone();
        let mut pages =
            std::pin::pin!(in_ranges(head, LOAD_PAGE, move |lo, hi| exception_page(reader.clone(), lo, hi, read)));
        while let Some((lo, hi, page)) = futures_util::StreamExt::next(&mut pages).await.transpose()? {
            match page {
                Some(page) => {
                    let mut intact = Vec::with_capacity(page.len());
                    for outcome in page {
                        match outcome {
                            Ok(e) => {
                                self.quarantine.note(&seal::exception_key(id_of(&e)), Ok(()));
                                intact.push(e);
                            }
                            Err(tampered) => self.quarantine.note(&tampered.key.clone(), Err(&tampered)),
                        }
                    }
                    sink(intact);
                }
                None => {
                    // A stored field holds a separator (someone wrote control characters
                    // into a row): read this page row by row instead, which checks each on
                    // its own.
                    let rows = sqlx::query(&format!(
                        "{EXCEPTION_LIST} WHERE x.number > ? AND x.number <= ? ORDER BY x.number"
                    ))
                    .bind(lo)
                    .bind(hi)
                    .fetch_all(&self.reader)
                    .await
                    .map_err(map_err)?;
                    let intact =
                        self.quarantine.keep_intact(&rows, exception_from_row, |e| seal::exception_key(e.id))?;
                    sink(intact.into_iter().map(whole).collect());
                }
            }
        }
        Ok(())
    }

    /// Keys the log sealed whose row is gone (`kind`: exception, identity, token).
    async fn missing(&self, kind: &str) -> Result<Vec<Tampered>, StoreError> {
        let (table, column) = match kind {
            "exception" => ("exceptions", "id"),
            "identity" => ("identities", "entity"),
            _ => ("tokens", "id"),
        };
        let keys: Vec<String> = sqlx::query_scalar(&format!(
            "SELECT DISTINCT v.seal_key FROM events v WHERE v.seal_key >= ?1 AND v.seal_key < ?2 \
             AND NOT EXISTS (SELECT 1 FROM {table} x WHERE x.{column} = substr(v.seal_key, length(?1) + 1)) \
             ORDER BY v.seal_key"
        ))
        .bind(format!("{kind}:"))
        .bind(format!("{kind};"))
        .fetch_all(&self.reader)
        .await
        .map_err(map_err)?;
        Ok(keys.into_iter().map(|key| Tampered::new(key, "the log sealed it, and its row is gone")).collect())
    }

    /// Notes identities whose row is gone in the quarantine: an offboarded identity deleted
    /// from the table must stay denied, so the decision side treats a missing one as tampered.
    async fn note_missing(&self, kind: &str) -> Result<(), StoreError> {
        for tampered in self.missing(kind).await? {
            self.quarantine.note(&tampered.key.clone(), Err(&tampered));
        }
        Ok(())
    }

    pub async fn close(&self) {
        self.reader.close().await;
        self.writer.close().await;
    }
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
    "SELECT x.id AS id, x.record AS record, x.use_count AS use_count, x.last_used_at AS last_used_at, ",
    "x.used_scope AS used_scope, ",
    seal_columns!("exceptions")
);
/// [`EXCEPTION_SELECT`] for bulk reads: the sealing event's seal columns, not its body.
const EXCEPTION_LIST: &str = concat!(
    "SELECT x.id AS id, x.record AS record, x.use_count AS use_count, x.last_used_at AS last_used_at, ",
    "x.used_scope AS used_scope, ",
    seal_columns!("exceptions", light)
);
const IDENTITY_SELECT: &str = concat!("SELECT x.entity AS entity, x.record AS record, ", seal_columns!("identities"));
const TOKEN_SELECT: &str = concat!(
    "SELECT x.id AS id, x.secret_hash AS secret_hash, x.principal AS principal, x.roles AS roles, x.label AS label, ",
    "x.created_at AS created_at, x.revoked_at AS revoked_at, x.issued_by AS issued_by, x.expires_at AS expires_at, x.scopes AS scopes, x.last_used_at AS last_used_at, ",
    seal_columns!("tokens")
);

/// Checks a row read with [`SEAL_COLUMNS`] against its seal.
fn check_sealed(row: &SqliteRow, key: &str, text: &str) -> Result<Result<(), Tampered>, StoreError> {
    let with_body = row.try_column("e_body").is_ok();
    let seq = |name: &str| -> Result<Option<u64>, StoreError> {
        let value: Option<i64> = row.try_get(name).map_err(map_err)?;
        Ok(value.and_then(|v| u64::try_from(v).ok()))
    };
    let sealed_seq = seq("sealed_seq")?;
    let e_seq = seq("e_seq")?;
    let e_exception_id: Option<&str> = row.try_get("e_exception_id").map_err(map_err)?;
    let column = |name: &str| -> Result<Option<&str>, StoreError> {
        if with_body { row.try_get(name).map_err(map_err) } else { Ok(Some("")) }
    };
    let (e_body, e_prev_hash, e_hash) = (column("e_body")?, column("e_prev_hash")?, column("e_hash")?);
    let event = match (e_seq, e_body, e_prev_hash, e_hash) {
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
    Ok(seal::check(&seal::Row { key, text, sealed_seq, event, last_sealed: seq("last_sealed")?, with_body }))
}

/// An exception row read with [`EXCEPTION_SELECT`]: the exception, or why it does not
/// match the log. (Only failing to read the row at all is an error.)
fn exception_from_row(row: &SqliteRow) -> Result<Result<Exception, Tampered>, StoreError> {
    let id: &str = row.try_get("id").map_err(map_err)?;
    let text: &str = row.try_get("record").map_err(map_err)?;
    if let Err(tampered) = check_sealed(row, &format!("exception:{id}"), text)? {
        return Ok(Err(tampered));
    }
    Ok(seal::exception_from_text(id, text, usage_columns(row)?))
}

fn usage_columns(row: &SqliteRow) -> Result<waiver_core::exception::Usage, StoreError> {
    let count: i64 = row.try_get("use_count").map_err(map_err)?;
    let last_used: Option<&str> = row.try_get("last_used_at").map_err(map_err)?;
    let scope_used: i64 = row.try_get("used_scope").map_err(map_err)?;
    Ok(waiver_core::exception::Usage {
        count: u64::try_from(count).unwrap_or_default(),
        last_used_at: last_used.and_then(|t| t.parse().ok()),
        scope_used: u64::from_ne_bytes(scope_used.to_ne_bytes()),
    })
}

fn identity_from_row(row: &SqliteRow) -> Result<Result<Identity, Tampered>, StoreError> {
    let entity: &str = row.try_get("entity").map_err(map_err)?;
    let text: &str = row.try_get("record").map_err(map_err)?;
    if let Err(tampered) = check_sealed(row, &format!("identity:{entity}"), text)? {
        return Ok(Err(tampered));
    }
    Ok(seal::identity_from_text(entity, text))
}

/// One exception from a bulk page: `id, record, use_count, last_used_at, sealed_seq, e_seq,
/// e_exception_id, e_seal_digest, e_seal_key, last_sealed, used_scope`, absent values empty.
fn bulk_exception(fields: &[&str]) -> Result<Exception, Tampered> {
    let (id, text) = bulk_checked(fields)?;
    let field = |i: usize| fields.get(i).copied().filter(|f| !f.is_empty());
    let usage = waiver_core::exception::Usage {
        count: field(2).and_then(|f| f.parse::<u64>().ok()).unwrap_or_default(),
        last_used_at: field(3).and_then(|t| t.parse().ok()),
        scope_used: field(10).and_then(|f| f.parse::<i64>().ok()).map_or(0, |b| u64::from_ne_bytes(b.to_ne_bytes())),
    };
    seal::exception_from_text(id, text, usage)
}

/// [`bulk_exception`]'s terms only: the same seal check, then the fields a decision reads.
fn bulk_terms(fields: &[&str]) -> Result<waiver_core::Terms, Tampered> {
    let (id, text) = bulk_checked(fields)?;
    seal::exception_terms_from_text(id, text)
}

/// A bulk row's id and stored text, once the text matched its seal.
fn bulk_checked<'a>(fields: &[&'a str]) -> Result<(&'a str, &'a str), Tampered> {
    let field = |i: usize| fields.get(i).copied().filter(|f| !f.is_empty());
    let number = |i: usize| field(i).and_then(|f| f.parse::<u64>().ok());
    let id = field(0).unwrap_or_default();
    let key = format!("exception:{id}");
    let text = fields.get(1).copied().unwrap_or_default();
    let event = number(5).map(|seq| EventView {
        seq,
        exception_id: field(6),
        seal_digest: field(7),
        seal_key: field(8),
        body: "",
        prev_hash: "",
        hash: "",
    });
    let row = seal::Row { key: &key, text, sealed_seq: number(4), event, last_sealed: number(9), with_body: false };
    seal::check(&row)?;
    Ok((id, text))
}

/// Reads a row without its seal (legacy rows, before they are sealed).
fn unchecked<T: serde::de::DeserializeOwned, U: TryFrom<T>>(row: &SqliteRow) -> Result<U, StoreError>
where
    U::Error: std::fmt::Display,
{
    let text: &str = row.try_get("record").map_err(map_err)?;
    let record: T = serde_json::from_str(text).map_err(corrupt)?;
    U::try_from(record).map_err(corrupt)
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

fn token_from_row(row: &SqliteRow) -> Result<Result<TokenRecord, Tampered>, StoreError> {
    let token = token_columns(row)?;
    let key = seal::token_key(&token.id);
    Ok(check_sealed(row, &key, &seal::token_text(&token))?.map(|()| token))
}

fn token_columns(row: &SqliteRow) -> Result<TokenRecord, StoreError> {
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
        let row = sqlx::query(&format!("{EXCEPTION_SELECT} WHERE x.number = ?"))
            .bind(to_i64(id.number(), "exception number")?)
            .fetch_optional(&self.reader)
            .await
            .map_err(map_err)?;
        self.quarantine.one_intact(row.as_ref(), exception_from_row, |e| seal::exception_key(e.id))
    }

    async fn exception_terms_each(
        &self,
        page: &mut (dyn FnMut(Vec<waiver_core::Terms>) + Send),
    ) -> Result<(), StoreError> {
        self.load_each(bulk_terms, |t| t.id, |e| e.terms(), page).await
    }

    async fn exceptions(&self, filter: &ExceptionFilter) -> Result<Vec<Exception>, StoreError> {
        if *filter == ExceptionFilter::default() {
            return self.all_exceptions().await;
        }
        // Only the filters given become SQL, so SQLite can use the index each one has
        // (`?1 IS NULL OR …` would defeat them and scan every record).
        let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new(format!("{EXCEPTION_LIST} WHERE 1 = 1"));
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
            q.push(" AND x.state IN (");
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
            q.push(" AND x.expires_at < ").push_bind(stored_instant(before));
        }
        if let Some(before) = filter.due_before {
            q.push(" AND x.due_at < ").push_bind(stored_instant(before));
        }
        if let Some(ids) = &filter.ids {
            let numbers: Vec<u64> = ids.iter().map(|id| id.number()).collect();
            let numbers = serde_json::to_string(&numbers).map_err(|e| StoreError::Other(e.to_string()))?;
            q.push(" AND x.number IN (SELECT value FROM json_each(").push_bind(numbers).push("))");
        }
        // With an expiry bound, `+number` keeps SQLite from walking the table in id order to
        // skip a sort: the expiry index finds the few rows due, which are then sorted.
        let order = if filter.expires_before.is_some() || filter.due_before.is_some() {
            " ORDER BY +x.number LIMIT "
        } else {
            " ORDER BY x.number LIMIT "
        };
        q.push(order).push_bind(filter.limit.map_or(-1, i64::from));
        let rows = q.build().fetch_all(&self.reader).await.map_err(map_err)?;
        self.quarantine.keep_intact(&rows, exception_from_row, |e| seal::exception_key(e.id))
    }

    async fn identity(&self, entity: &EntityRef) -> Result<Option<Identity>, StoreError> {
        let row = sqlx::query(&format!("{IDENTITY_SELECT} WHERE x.entity = ?"))
            .bind(entity.to_string())
            .fetch_optional(&self.reader)
            .await
            .map_err(map_err)?;
        self.quarantine.one_intact(row.as_ref(), identity_from_row, |i| seal::identity_key(&i.entity))
    }

    async fn identities(&self) -> Result<Vec<Identity>, StoreError> {
        let rows = sqlx::query(&format!("{IDENTITY_SELECT} ORDER BY x.entity"))
            .fetch_all(&self.reader)
            .await
            .map_err(map_err)?;
        let kept = self.quarantine.keep_intact(&rows, identity_from_row, |i| seal::identity_key(&i.entity))?;
        self.note_missing("identity").await?;
        Ok(kept)
    }

    async fn token_by_hash(&self, secret_hash: &str) -> Result<Option<TokenRecord>, StoreError> {
        let row = sqlx::query(&format!("{TOKEN_SELECT} WHERE x.secret_hash = ?"))
            .bind(secret_hash)
            .fetch_optional(&self.reader)
            .await
            .map_err(map_err)?;
        self.quarantine.one_intact(row.as_ref(), token_from_row, |t| seal::token_key(&t.id))
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
        let rows =
            sqlx::query(&format!("{TOKEN_SELECT} ORDER BY x.id")).fetch_all(&self.reader).await.map_err(map_err)?;
        self.quarantine.keep_intact(&rows, token_from_row, |t| seal::token_key(&t.id))
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

    async fn verify_records(&self, limit: usize) -> Result<Vec<Tampered>, StoreError> {
        let mut found = Vec::new();
        // In pages, so a large register is not held twice in memory.
        let mut after = 0i64;
        loop {
            let rows = sqlx::query(&format!(
                "SELECT x.number AS number, x.subject AS subject_column, x.owner AS owner_column, \
                 x.state AS state_column, x.expires_at AS expires_column, x.due_at AS due_column, \
                 {} WHERE x.number > ? ORDER BY x.number LIMIT 10000",
                EXCEPTION_LIST.trim_start_matches("SELECT ")
            ))
            .bind(after)
            .fetch_all(&self.reader)
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
        let identities = sqlx::query(&format!("{IDENTITY_SELECT} ORDER BY x.entity"))
            .fetch_all(&self.reader)
            .await
            .map_err(map_err)?;
        for row in &identities {
            if let Err(tampered) = identity_from_row(row)? {
                found.push(tampered);
            }
        }
        let tokens =
            sqlx::query(&format!("{TOKEN_SELECT} ORDER BY x.id")).fetch_all(&self.reader).await.map_err(map_err)?;
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
            "SELECT e.seq AS e_seq, e.exception_id AS e_exception_id, e.body AS e_body, e.prev_hash AS e_prev_hash, e.hash AS e_hash, e.seal_digest AS e_seal_digest, e.seal_key AS e_seal_key, e.seq AS sealed_seq, e.seq AS last_sealed, a.body AS artifact FROM events e LEFT JOIN artifacts a ON a.digest = e.seal_digest WHERE e.seal_key = ? AND e.seq <= ? ORDER BY e.seq DESC LIMIT 1",
        )
        .bind(kind)
        .bind(at)
        .fetch_optional(&self.reader)
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
        sqlx::query_scalar("SELECT body FROM artifacts WHERE digest = ? AND kind = ?")
            .bind(digest)
            .bind(waiver_store::checkpoint::PART_KIND)
            .fetch_optional(&self.reader)
            .await
            .map_err(map_err)
    }

    async fn exceptions_sealed_after(&self, seq: u64) -> Result<Vec<ExceptionId>, StoreError> {
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT exception_id FROM events WHERE seq > ? AND exception_id IS NOT NULL AND seal_key IS NOT NULL ORDER BY exception_id",
        )
        .bind(to_i64(seq, "event sequence number")?)
        .fetch_all(&self.reader)
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
            .fetch_one(&self.reader)
            .await
            .map_err(map_err)?;
        if sealed {
            return Ok(None);
        }
        let mut unsealed = Unsealed::default();
        let rows =
            sqlx::query("SELECT record, use_count, last_used_at, used_scope FROM exceptions WHERE sealed_seq IS NULL")
                .fetch_all(&self.reader)
                .await
                .map_err(map_err)?;
        for row in &rows {
            let mut e: Exception = unchecked::<waiver_proto::Exception, _>(row)?;
            e.usage = usage_columns(row)?;
            unsealed.exceptions.push(e);
        }
        let rows = sqlx::query("SELECT record FROM identities WHERE sealed_seq IS NULL")
            .fetch_all(&self.reader)
            .await
            .map_err(map_err)?;
        for row in &rows {
            unsealed.identities.push(unchecked::<waiver_proto::Identity, _>(row)?);
        }
        let rows = sqlx::query("SELECT * FROM tokens WHERE sealed_seq IS NULL")
            .fetch_all(&self.reader)
            .await
            .map_err(map_err)?;
        for row in &rows {
            unsealed.tokens.push(token_columns(row)?);
        }
        Ok(Some(unsealed))
    }

    async fn verify_chain(&self) -> Result<Result<ChainHead, BrokenLink>, StoreError> {
        // Rows cross from SQLite to Rust in batches of one string each, fields split by
        // unit separators and read in place: per-row overhead, not hashing, is what bounds
        // a verify. Batches are fixed ranges of sequence numbers, read on several reader
        // connections and hashed on blocking threads at once (every event's hash depends
        // only on its own columns); only joining them, in order, is sequential. The log is
        // verified up to the head it had when the verify began.
        let head: Option<i64> =
            sqlx::query_scalar("SELECT max(seq) FROM events").fetch_one(&self.reader).await.map_err(map_err)?;
        let mut verifier = ChainVerifier::default();
        let Some(head) = head.filter(|h| *h > 0) else { return Ok(Ok(verifier.finish())) };
        let reader = self.reader.clone();
        let mut runs =
            std::pin::pin!(in_ranges(head, VERIFY_BATCH, move |lo, hi| verify_batch(reader.clone(), lo, hi)));
        while let Some((_, _, run)) = futures_util::StreamExt::next(&mut runs).await.transpose()? {
            // Batches still in flight after a break finish on their own and are dropped.
            if let Some(run) = run
                && let Err(broken) = verifier.push_run(&run)
            {
                return Ok(Err(broken));
            }
        }
        Ok(Ok(verifier.finish()))
    }
}

/// Exceptions read per page when a node loads its register.
const LOAD_PAGE: i64 = 5_000;
/// Ranges read and worked on at once, by the register load and by `audit verify`.
const IN_FLIGHT: usize = 4;

/// Fixed ranges `lo < key <= hi` of the keys up to `head`, `step` keys each, each given to
/// `task` on a task of its own with at most [`IN_FLIGHT`] under way, yielded in order with
/// their range: how the register load and `audit verify` read on several connections and
/// work on several threads at once while taking the results in order.
fn in_ranges<T, Fut>(
    head: i64,
    step: i64,
    task: impl Fn(i64, i64) -> Fut,
) -> impl futures_util::Stream<Item = Result<(i64, i64, T), StoreError>>
where
    Fut: std::future::Future<Output = Result<T, StoreError>> + Send + 'static,
    T: Send + 'static,
{
    use futures_util::StreamExt as _;
    let ranges = (0..head).step_by(usize::try_from(step).unwrap_or(1)).map(move |lo| (lo, (lo + step).min(head)));
    futures_util::stream::iter(ranges)
        .map(move |(lo, hi)| {
            let running = tokio::spawn(task(lo, hi));
            async move {
                let done = running.await.map_err(|e| StoreError::Other(format!("a read task failed: {e}")))??;
                Ok((lo, hi, done))
            }
        })
        .buffered(IN_FLIGHT)
}

/// The exceptions numbered `lo < number <= hi`, each checked against its seal; `None` when
/// a row does not split into its fields (read those row by row).
async fn exception_page<T: Send + 'static>(
    pool: SqlitePool,
    lo: i64,
    hi: i64,
    read: fn(&[&str]) -> Result<T, Tampered>,
) -> Result<Option<Vec<Result<T, Tampered>>>, StoreError> {
    const FIELDS: [&str; 11] = [
        "id",
        "record",
        "use_count",
        "last_used_at",
        "sealed_seq",
        "e_seq",
        "e_exception_id",
        "e_seal_digest",
        "e_seal_key",
        "last_sealed",
        "used_scope",
    ];
    // `concat_ws` builds each row's text in one pass; a chain of `||` copies the growing
    // text once per field, ten copies of every record (most of a page's cost). It leaves
    // out empty values, so every column but the record is marked: `+value`, or `-` for
    // NULL. (An empty record drops out, the row splits short, and the page is read row
    // by row.)
    let fields = format!(
        "concat_ws(char(31), {})",
        FIELDS.map(|f| if f == "record" { f.to_owned() } else { format!("ifnull('+' || {f}, '-')") }).join(", ")
    );
    let inner = format!("SELECT x.number AS number, {}", EXCEPTION_LIST.trim_start_matches("SELECT "));
    let query = format!(
        "SELECT group_concat({fields}, char(30)) AS text, count(*) AS n \
         FROM ({inner} WHERE x.number > ? AND x.number <= ? ORDER BY x.number)"
    );
    let row = sqlx::query(&query).bind(lo).bind(hi).fetch_one(&pool).await.map_err(map_err)?;
    let text: Option<String> = row.try_get("text").map_err(map_err)?;
    let n: i64 = row.try_get("n").map_err(map_err)?;
    let Some(text) = text else { return Ok(Some(Vec::new())) };
    tokio::task::spawn_blocking(move || {
        fn unmark((idx, f): (usize, &str)) -> &str {
            match idx {
                1 => f,
                _ => f.strip_prefix('+').unwrap_or_default(),
            }
        }
        let page: Vec<Vec<&str>> =
            text.split('\u{1e}').map(|r| r.split('\u{1f}').enumerate().map(unmark).collect()).collect();
        if i64::try_from(page.len()).ok() != Some(n) || page.iter().any(|r| r.len() != FIELDS.len()) {
            return None;
        }
        Some(page.iter().map(|fields| read(fields)).collect())
    })
    .await
    .map_err(|e| StoreError::Other(format!("load task failed: {e}")))
}

/// Events verified per batch: ~3.5 MB of text each. Batches of 20,000 (~9 MB) spent a
/// fifth of SQLite's time faulting in fresh pages for `group_concat`'s growing buffer;
/// much smaller ones pay more per query than they save.
const VERIFY_BATCH: i64 = 8_000;
/// Separators between fields and between events in a batch. Every stored field is text
/// waiver wrote without control characters (canonical JSON escapes them), so these never
/// occur in an untouched log; a tampered field that holds one splits wrongly and fails its
/// hash, which is the point.
const FIELD: char = '\u{1f}';
const RECORD: char = '\u{1e}';

/// A batch of events as one string.
struct Batch {
    text: String,
}

impl Batch {
    /// Verifies the batch as one run of the chain; `Err` when a row does not split into its
    /// columns (`strict`: into exactly its columns; otherwise a column holding a separator
    /// shifts the rest, and the hash check names its event).
    fn run(&self, strict: bool) -> Result<Option<Run>, String> {
        let mut views = Vec::with_capacity(usize::try_from(VERIFY_BATCH).unwrap_or_default());
        for record in self.text.split(RECORD) {
            views.push(event_view(record, strict)?);
        }
        // SQLite concatenates in whatever order it visits rows; the chain is checked in
        // sequence order. (Already sorted in practice, so this is one linear pass.)
        views.sort_unstable_by_key(|view| view.seq);
        Ok(verify_run(&views))
    }
}

/// One event row of a batch. `strict` (the `concat_ws` form): the sequence number, a bit
/// each for the optional columns present (exception id 1, seal digest 2, seal key 4), then
/// the columns present, exactly. Otherwise (the `||` form) every column, optional ones `-`
/// for NULL or `+` before the value.
fn event_view(record: &str, strict: bool) -> Result<EventView<'_>, String> {
    fn field<'a>(fields: &mut std::str::Split<'a, char>) -> Result<&'a str, String> {
        fields.next().ok_or_else(|| "an event row is missing fields".to_owned())
    }
    fn optional<'a>(
        fields: &mut std::str::Split<'a, char>,
        flags: Option<u8>,
        bit: u8,
    ) -> Result<Option<&'a str>, String> {
        match flags {
            Some(flags) if flags & bit == 0 => Ok(None),
            Some(_) => field(fields).map(Some),
            None => field(fields).map(|f| f.strip_prefix('+')),
        }
    }
    let mut fields = record.split(FIELD);
    let seq = field(&mut fields)?;
    let seq = seq.parse().map_err(|_| format!("event sequence number `{seq}`"))?;
    let flags = match strict {
        true => Some(field(&mut fields)?.parse::<u8>().map_err(|_| "an event row's column flags".to_owned())?),
        false => None,
    };
    let exception_id = optional(&mut fields, flags, 1)?;
    let (body, prev_hash, hash) = (field(&mut fields)?, field(&mut fields)?, field(&mut fields)?);
    let view = EventView {
        seq,
        exception_id,
        body,
        prev_hash,
        hash,
        seal_digest: optional(&mut fields, flags, 2)?,
        seal_key: optional(&mut fields, flags, 4)?,
    };
    if strict && fields.next().is_some() {
        return Err("an event row has more fields than it should".to_owned());
    }
    Ok(view)
}

/// Reads and verifies the events numbered `lo < seq <= hi` as one run (`None`: there are none).
async fn verify_batch(pool: SqlitePool, lo: i64, hi: i64) -> Result<Option<Run>, StoreError> {
    // `concat_ws` builds each row's text in one pass (a chain of `||` copies the growing
    // text once per field), but it drops NULL and empty arguments: the row says which
    // optional columns it has (see `event_view`). A row with an empty or split column (never written so; a
    // tamperer's) makes the batch be read again with `||`, which keeps every column, so the
    // chain names that event.
    const CONCAT_WS: &str = "SELECT group_concat(concat_ws(?1, seq, (exception_id IS NOT NULL) \
        | ((seal_digest IS NOT NULL) << 1) | ((seal_key IS NOT NULL) << 2), exception_id, body, prev_hash, hash, \
        seal_digest, seal_key), ?2) FROM events WHERE seq > ?3 AND seq <= ?4";
    const PIPES: &str = "SELECT group_concat(seq || ?1 || ifnull('+' || exception_id, '-') || ?1 || ifnull(body, '') \
        || ?1 || ifnull(prev_hash, '') || ?1 || ifnull(hash, '') || ?1 || ifnull('+' || seal_digest, '-') || ?1 \
        || ifnull('+' || seal_key, '-'), ?2) FROM events WHERE seq > ?3 AND seq <= ?4";
    let mut malformed = String::new();
    for (query, strict) in [(CONCAT_WS, true), (PIPES, false)] {
        let text: Option<String> = sqlx::query_scalar(query)
            .bind(FIELD.to_string())
            .bind(RECORD.to_string())
            .bind(lo)
            .bind(hi)
            .fetch_one(&pool)
            .await
            .map_err(map_err)?;
        let Some(text) = text else { return Ok(None) };
        let batch = Batch { text };
        match tokio::task::spawn_blocking(move || batch.run(strict))
            .await
            .map_err(|e| StoreError::Other(format!("verify task failed: {e}")))?
        {
            Ok(run) => return Ok(run),
            Err(reason) => malformed = reason,
        }
    }
    Err(corrupt(malformed))
}

/// Sets `due_at` on records a migration could not (requests written before the column).
async fn backfill_due_at(pool: &SqlitePool) -> Result<(), StoreError> {
    let rows = sqlx::query("SELECT number, record FROM exceptions WHERE due_at IS NULL")
        .fetch_all(pool)
        .await
        .map_err(map_err)?;
    for row in &rows {
        let number: i64 = row.try_get("number").map_err(map_err)?;
        let due = unchecked::<waiver_proto::Exception, Exception>(row)?.due_at();
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
                 sealed_seq, use_count, last_used_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
                "UPDATE exceptions SET version = ?, owner = ?, state = ?, expires_at = ?, record = ?, due_at = ?, \
                 sealed_seq = ? WHERE number = ? AND version = ?",
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
                     VALUES (?, ?, ?, ?, ?, ?)",
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
                "UPDATE identities SET version = ?, status = ?, owner = ?, record = ?, sealed_seq = ? \
                 WHERE entity = ? AND version = ?",
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
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
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

    for (artifact, sealed) in commit.artifacts.iter().zip(&plan.artifacts) {
        if let Some(expected) = &artifact.replaces {
            let current: Option<String> =
                sqlx::query_scalar("SELECT seal_digest FROM events WHERE seal_key = ? ORDER BY seq DESC LIMIT 1")
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
        sqlx::query("INSERT INTO artifacts (digest, kind, body) VALUES (?, ?, ?) ON CONFLICT (digest) DO NOTHING")
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
        let keep = serde_json::to_string(&digests.iter().chain(&parts.keep).collect::<Vec<_>>())
            .map_err(|e| StoreError::Other(e.to_string()))?;
        sqlx::query("DELETE FROM artifacts WHERE kind = ? AND digest NOT IN (SELECT value FROM json_each(?))")
            .bind(waiver_store::checkpoint::PART_KIND)
            .bind(keep)
            .execute(&mut **tx)
            .await
            .map_err(map_err)?;
    }

    for (id, at) in &commit.token_usage {
        sqlx::query(
            "UPDATE tokens SET last_used_at = ?1 WHERE id = ?2 AND (last_used_at IS NULL OR last_used_at < ?1)",
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
            "UPDATE exceptions SET use_count = use_count + ?1, \
             last_used_at = CASE WHEN last_used_at IS NULL OR last_used_at < ?2 THEN ?2 ELSE last_used_at END, \
             used_scope = used_scope | ?4 \
             WHERE number = ?3",
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
            "INSERT INTO events ({EVENT_COLUMNS}, seal_digest, seal_key) VALUES (?, ?, ?, ?, ?, ?, ?)"
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

/// Stores a register checkpoint part under its SHA-256. A part the next checkpoint shares is
/// stored once; a stored copy that differs from what hashes to its key was edited outside
/// waiver, and writing the text again restores it, so a new checkpoint repairs a tampered
/// one rather than being refused too. (Baselines and rules keep the first copy: a version
/// set again must not mend the evidence that it was tampered with before; it is refused on
/// load and a new version is set.)
const PUT_PART: &str = "INSERT INTO artifacts (digest, kind, body) VALUES (?, ?, ?) ON CONFLICT (digest) DO UPDATE \
    SET kind = excluded.kind, body = excluded.body WHERE artifacts.kind <> excluded.kind OR artifacts.body <> excluded.body";

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// A register written by a version before record seals: rows hold their usage inside
    /// the record and no event seals them. Opening migrates usage into its columns; the
    /// first `seal_legacy_records` seals every row once, as found, after which an unsealed
    /// row counts as tampered.
    #[tokio::test]
    async fn a_register_from_before_seals_is_sealed_once_as_found() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("waiver.db");
        // Written as the earlier version did: its migrations, its rows.
        let url = format!("sqlite:{}?mode=rwc", path.display());
        let old = SqlitePool::connect(&url).await.unwrap();
        let mut migrator = sqlx::migrate!("./migrations");
        migrator.migrations =
            std::borrow::Cow::Owned(migrator.migrations.iter().filter(|m| m.version < 6).cloned().collect());
        migrator.run(&old).await.unwrap();
        let mut exception = waiver_store::contract::sample_exception();
        exception.id = ExceptionId::new(1);
        exception.usage.count = 7;
        let record = serde_json::to_string(&waiver_proto::Exception::record(&exception)).unwrap();
        assert!(record.contains("\"count\":7"), "the old record held its usage");
        let event = waiver_core::audit::EventDraft {
            at: exception.created_at,
            actor: waiver_core::Principal::system(),
            event_type: "exception.requested".into(),
            exception_id: Some(exception.id),
            data: serde_json::json!({}),
        }
        .seal(1, GENESIS_HASH);
        sqlx::query("INSERT INTO events (seq, exception_id, body, prev_hash, hash) VALUES (1, ?, ?, ?, ?)")
            .bind(&event.exception_id)
            .bind(&event.body)
            .bind(&event.prev_hash)
            .bind(&event.hash)
            .execute(&old)
            .await
            .unwrap();
        sqlx::query(
            "INSERT INTO exceptions (number, id, version, subject, owner, state, expires_at, record, due_at) \
             VALUES (1, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(exception.id.to_string())
        .bind(i64::try_from(exception.version).unwrap())
        .bind(exception.subject.to_string())
        .bind(exception.owner.as_str())
        .bind(exception.state.as_str())
        .bind(stored_instant(exception.expires_at))
        .bind(&record)
        .bind(stored_instant(exception.due_at()))
        .execute(&old)
        .await
        .unwrap();
        old.close().await;

        let store = SqliteStore::open(&path).await.unwrap();
        let unsealed = store.unsealed().await.unwrap().expect("no event sealed anything yet");
        assert_eq!(unsealed.exceptions.len(), 1);
        assert_eq!(unsealed.exceptions[0].usage.count, 7, "usage moved into its columns");
        assert!(store.exception(ExceptionId::new(1)).await.is_err(), "unsealed, it grants nothing yet");
        let at = exception.created_at;
        store.commit(Box::new(move |_| seal::legacy_commit(unsealed, at))).await.unwrap();
        assert!(store.verify_chain().await.unwrap().is_ok());
        assert!(store.verify_records(10).await.unwrap().is_empty(), "every row sealed");
        let read = store.exception(ExceptionId::new(1)).await.unwrap().unwrap();
        assert_eq!(read, exception, "read back as it was, usage included");
        assert!(store.unsealed().await.unwrap().is_none(), "sealing happens once");
        // From now on an unsealed row is tampered, not legacy.
        sqlx::query("UPDATE exceptions SET sealed_seq = NULL").execute(&store.writer).await.unwrap();
        assert!(store.unsealed().await.unwrap().is_none());
        assert!(matches!(store.exception(ExceptionId::new(1)).await, Err(StoreError::Tampered(_))));
    }

    /// A verify reads the log in batches, hashed at once and joined in order: whatever is
    /// changed and wherever (inside a batch, at either edge of one, in the read-back form a
    /// malformed column takes), it names the same first broken event as one pass would.
    #[tokio::test]
    async fn a_verify_in_parallel_batches_names_the_first_broken_event() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("waiver.db");
        let store = SqliteStore::open(&path).await.unwrap();
        let n = 2 * VERIFY_BATCH + 5_000;
        let at: jiff::Timestamp = "2026-12-01T00:00:00Z".parse().unwrap();
        let mut written = 0;
        while written < n {
            let mut commit = waiver_store::Commit::default();
            for idx in written..(written + 10_000).min(n) {
                commit.events.push(waiver_core::audit::EventDraft {
                    at,
                    actor: waiver_core::Principal::system(),
                    event_type: "exception.attested".into(),
                    exception_id: (idx % 3 != 0).then(|| ExceptionId::new(u64::try_from(idx).unwrap() + 1)),
                    data: serde_json::json!({ "n": idx }),
                });
            }
            written += i64::try_from(commit.events.len()).unwrap();
            store.commit(Box::new(move |_| commit)).await.unwrap();
        }
        let head = store.verify_chain().await.unwrap().unwrap();
        assert_eq!(head.n_events, u64::try_from(n).unwrap());
        let editor = SqlitePool::connect(&format!("sqlite:{}", path.display())).await.unwrap();
        for trigger in ["events_no_update", "events_no_delete"] {
            sqlx::query(&format!("DROP TRIGGER {trigger}")).execute(&editor).await.unwrap();
        }
        let first = VERIFY_BATCH + 1;
        let (split, emptied, last_batch) = (VERIFY_BATCH * 3 / 2, VERIFY_BATCH * 5 / 4, 2 * VERIFY_BATCH + 1);
        let cases = [
            (
                first,
                format!("UPDATE events SET body = replace(body, '\"n\":', '\"n\": ') WHERE seq = {first}"),
                "its hash",
            ),
            (VERIFY_BATCH, format!("UPDATE events SET prev_hash = hash WHERE seq = {VERIFY_BATCH}"), "prev_hash"),
            // A separator in a column shifts the columns after it: the event is named, the
            // reason is whichever check the shifted text fails first.
            (split, format!("UPDATE events SET body = body || char(31) WHERE seq = {split}"), ""),
            (emptied, format!("UPDATE events SET body = '' WHERE seq = {emptied}"), "its hash"),
            (emptied + 1, format!("UPDATE events SET exception_id = '' WHERE seq = {}", emptied + 1), "disagrees"),
            (last_batch, format!("DELETE FROM events WHERE seq = {last_batch}"), "missing"),
            (n, format!("UPDATE events SET hash = upper(hash) WHERE seq = {n}"), "its hash"),
        ];
        for (seq, sql, reason) in cases {
            let kept: (Option<String>, String, String, String) =
                sqlx::query_as("SELECT exception_id, body, prev_hash, hash FROM events WHERE seq = ?")
                    .bind(seq)
                    .fetch_one(&editor)
                    .await
                    .unwrap();
            sqlx::query(&sql).execute(&editor).await.unwrap();
            let broken = store.verify_chain().await.unwrap().unwrap_err();
            assert_eq!(broken.seq, u64::try_from(seq).unwrap(), "{sql}: {broken}");
            assert!(broken.reason.contains(reason), "{sql}: {broken}");
            sqlx::query(
                "INSERT OR REPLACE INTO events (seq, exception_id, body, prev_hash, hash) VALUES (?, ?, ?, ?, ?)",
            )
            .bind(seq)
            .bind(kept.0)
            .bind(kept.1)
            .bind(kept.2)
            .bind(kept.3)
            .execute(&editor)
            .await
            .unwrap();
            assert_eq!(store.verify_chain().await.unwrap().unwrap(), head, "restored after {sql}");
        }
    }

    #[tokio::test]
    async fn passes_the_store_contract() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("waiver.db");
        let store = Arc::new(SqliteStore::open(&path).await.unwrap());
        waiver_store::contract::run(store.clone()).await;
        let editor = SqlitePool::connect(&format!("sqlite:{}", path.display())).await.unwrap();
        let tamper = move |sql: &'static str| {
            let editor = editor.clone();
            Box::pin(async move {
                sqlx::query(sql).execute(&editor).await.unwrap();
            }) as std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
        };
        waiver_store::contract::seals(&*store, &tamper).await;
    }

    #[tokio::test]
    async fn passes_the_checkpoint_contract() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("waiver.db");
        let store = SqliteStore::open(&path).await.unwrap();
        let editor = SqlitePool::connect(&format!("sqlite:{}", path.display())).await.unwrap();
        let tamper = move |sql: &'static str| {
            let editor = editor.clone();
            Box::pin(async move {
                sqlx::query(sql).execute(&editor).await.unwrap();
            }) as std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
        };
        waiver_store::contract::checkpoints(&store, &tamper).await;
    }
}

//! The storage boundary of waiver.
//!
//! The event log is the truth; exceptions, identities and tokens are projections of it kept
//! in the same transaction. A [`Commit`] appends its events to the hash chain and writes its
//! projections atomically, checking each write's expected version so that two writers
//! racing on one exception cannot both win. Backends implement [`StoreRead`] and [`Store`]
//! and must pass [`contract::run`].

pub mod checkpoint;
pub mod contract;
pub mod seal;

use async_trait::async_trait;
use jiff::Timestamp;
use waiver_core::{
    EntityRef, Exception, ExceptionId, Identity, State,
    audit::{BrokenLink, ChainHead, EventDraft, EventRecord},
};

/// What can go wrong in a store. Small on purpose: callers act on the kind, not the detail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The thing asked for does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// Another writer changed it first, or it already exists; reload and retry.
    #[error("conflicting write: {0}")]
    Conflict(String),
    /// The database cannot be reached or is busy past the timeout.
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    /// A stored record does not parse: someone edited the database by hand.
    #[error("the store holds a corrupt record: {0}")]
    Corrupt(String),
    /// A stored record parses but is not what the audit log says it is ([`seal`]).
    #[error("{0}")]
    Tampered(seal::Tampered),
    /// Anything else the database said.
    #[error("store error: {0}")]
    Other(String),
}

/// A projection write, with the version the writer read (`None` to insert a new row).
#[derive(Debug, Clone, PartialEq)]
pub struct Write<T> {
    pub value: T,
    pub expected_version: Option<u64>,
}

impl<T> Write<T> {
    pub fn insert(value: T) -> Self {
        Self { value, expected_version: None }
    }

    pub fn update(value: T, read_version: u64) -> Self {
        Self { value, expected_version: Some(read_version) }
    }
}

/// An API token as stored: only the SHA-256 of its secret, never the secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    /// Public id, shown in lists and events.
    pub id: String,
    /// Lowercase hex SHA-256 of the secret.
    pub secret_hash: String,
    pub principal: String,
    pub roles: Vec<String>,
    pub label: String,
    pub created_at: String,
    pub revoked_at: Option<String>,
    /// Who issued it (absent on tokens issued before this was recorded).
    pub issued_by: Option<String>,
    /// RFC 3339; from then on it authenticates nobody (absent on tokens issued before
    /// tokens expired).
    pub expires_at: Option<String>,
    /// What it may be used for (`read`, `request`, `approve`, `decide`, `admin`), within
    /// its roles; empty: everything its roles allow (tokens from before scopes).
    pub scopes: Vec<String>,
    /// When it last authenticated (telemetry beside the sealed record; ignored on writes).
    pub last_used_at: Option<String>,
}

/// A webhook subscription and its delivery progress. The event log is the outbox: each
/// subscription keeps a cursor (`delivered_seq`) into it, advanced only after the receiver
/// acknowledged, so delivery is at least once across restarts and in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookRecord {
    /// Public id (`wh_…`), also the Standard Webhooks message id prefix.
    pub id: String,
    pub url: String,
    /// The signing secret (`whsec_…`). Stored as is: signing needs it (shown once on creation).
    pub secret: String,
    /// Event type prefixes to deliver (`exception.`, `break_glass.used`); empty for all.
    pub event_types: Vec<String>,
    pub created_by: String,
    pub created_at: String,
    pub deleted_at: Option<String>,
    pub progress: WebhookProgress,
}

/// Where a subscription's delivery stands. Written without an event: delivery progress is
/// not a change of governance state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WebhookProgress {
    /// Every event up to this sequence number was acknowledged (or filtered out).
    pub delivered_seq: u64,
    /// Failed attempts at the next event.
    pub attempts: u32,
    /// RFC 3339; no attempt before then (backoff).
    pub next_attempt_at: Option<String>,
    pub last_error: Option<String>,
}

/// Everything one change writes, all or nothing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Commit {
    pub events: Vec<EventDraft>,
    pub exceptions: Vec<Write<Exception>>,
    pub identities: Vec<Write<Identity>>,
    /// Inserted, or (same id) their `revoked_at` updated.
    pub tokens: Vec<TokenRecord>,
    /// Inserted, or (same id) their `deleted_at` updated.
    pub webhooks: Vec<WebhookRecord>,
    /// Delivery progress of existing subscriptions, by id.
    pub webhook_progress: Vec<(String, WebhookProgress)>,
    /// Decisions granted, added to existing exceptions' usage (not sealed: telemetry).
    pub usage: Vec<UsageDelta>,
    /// Tokens used, by id, and when last (kept if later than the stored one; not sealed).
    pub token_usage: Vec<(String, Timestamp)>,
    /// Baselines or rules put in force, each sealed by an event of the commit that names no
    /// exception (the `baseline.set` / `rules.set` event).
    pub artifacts: Vec<Artifact>,
    /// The parts of a register checkpoint ([`checkpoint`]), whose manifest is one of
    /// `artifacts`.
    pub register_parts: Option<RegisterParts>,
}

/// The parts of a register checkpoint: stored by their SHA-256, sealed by reference (the
/// checkpoint's manifest, an artifact its event seals, lists their digests).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegisterParts {
    pub bodies: Vec<String>,
    /// Digests of stored parts to keep besides these (the previous checkpoint's, which a
    /// node may be loading right now); every other stored part is deleted.
    pub keep: Vec<String>,
}

/// A version of the baseline or the rules, stored by the SHA-256 of its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifact {
    /// `baseline`, `rules` or `people`: the key its sealing events carry.
    pub kind: String,
    pub body: String,
    /// When set, the digest of the version this one replaces (`Some(None)`: none yet); the
    /// commit is refused as a conflict if another writer put a version in force since, so a
    /// read-modify-write of a document (the people directory) never loses an update.
    pub replaces: Option<Option<String>>,
}

/// The artifact of a kind in force at some event: the event that put it in force, and it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InForce {
    pub seq: u64,
    pub digest: String,
    pub body: String,
}

/// Uses of one exception to add to its stored usage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageDelta {
    pub exception: ExceptionId,
    pub uses: u64,
    pub last_used_at: Timestamp,
    /// Scope parts granted (a bitmap OR-ed into the stored one).
    pub scope_used: u64,
}

/// Records written before record seals existed: the rows of a store upgraded from an
/// earlier version, sealed once as they are ([`seal::legacy_commit`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Unsealed {
    pub exceptions: Vec<Exception>,
    pub identities: Vec<Identity>,
    pub tokens: Vec<TokenRecord>,
}

impl Unsealed {
    pub fn is_empty(&self) -> bool {
        self.exceptions.is_empty() && self.identities.is_empty() && self.tokens.is_empty()
    }
}

/// Hands out ids inside the commit's transaction, so they are gapless and never reused.
#[derive(Debug)]
pub struct Allocator {
    next_exception: u64,
}

impl Allocator {
    /// Starts after the highest id the store holds.
    pub fn after(last_exception: u64) -> Self {
        Self { next_exception: last_exception + 1 }
    }

    /// The highest id handed out (or the starting point, if none).
    pub fn last(&self) -> u64 {
        self.next_exception - 1
    }

    pub fn exception_id(&mut self) -> ExceptionId {
        let id = ExceptionId::new(self.next_exception);
        self.next_exception += 1;
        id
    }
}

/// Builds a commit once the transaction holds the write lock, so new ids can be allocated
/// in order. Everything that can refuse has been checked before; building cannot fail.
pub type CommitFn = Box<dyn FnOnce(&mut Allocator) -> Commit + Send>;

/// Filters the store applies; the service applies time-dependent ones (effective state).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExceptionFilter {
    pub subject: Option<EntityRef>,
    pub owner: Option<String>,
    /// Only ids after this one (keyset paging).
    pub after: Option<ExceptionId>,
    pub limit: Option<u32>,
    /// Only these recorded states (not the effective state: the service applies time).
    pub states: Option<Vec<State>>,
    /// Only exceptions whose `expires_at` lies before this instant, compared to the
    /// microsecond (callers re-check the exact time; the scheduler does).
    pub expires_before: Option<Timestamp>,
    /// Only exceptions whose [`Exception::due_at`] lies before this instant (the expiry job).
    pub due_before: Option<Timestamp>,
    /// Only these exceptions (the records changed since a checkpoint).
    pub ids: Option<Vec<ExceptionId>>,
}

/// Reading. Code that only reads takes this trait and so cannot write.
#[async_trait]
pub trait StoreRead: Send + Sync {
    async fn exception(&self, id: ExceptionId) -> Result<Option<Exception>, StoreError>;
    /// Exceptions in id order.
    async fn exceptions(&self, filter: &ExceptionFilter) -> Result<Vec<Exception>, StoreError>;
    /// The [`Terms`](waiver_core::Terms) of every exception, in id order, each record
    /// checked against its seal as [`StoreRead::exceptions`] checks it (a tampered one is
    /// left out and held in the quarantine): what a serving node compiles at start. A store
    /// may read them without parsing whole records; by default they are taken from those.
    async fn exception_terms(&self) -> Result<Vec<waiver_core::Terms>, StoreError> {
        let mut all = Vec::new();
        self.exception_terms_each(&mut |page| all.extend(page)).await?;
        Ok(all)
    }
    /// [`StoreRead::exception_terms`] handed over a page at a time, in id order, as each is
    /// read and checked, so the caller can compile one while the next is read.
    async fn exception_terms_each(
        &self,
        page: &mut (dyn FnMut(Vec<waiver_core::Terms>) + Send),
    ) -> Result<(), StoreError> {
        page(self.exceptions(&ExceptionFilter::default()).await?.iter().map(Exception::terms).collect());
        Ok(())
    }
    async fn identity(&self, entity: &EntityRef) -> Result<Option<Identity>, StoreError>;
    /// Identities in `TYPE:ID` order.
    async fn identities(&self) -> Result<Vec<Identity>, StoreError>;
    async fn token_by_hash(&self, secret_hash: &str) -> Result<Option<TokenRecord>, StoreError>;
    /// Every token, revoked or not.
    async fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError>;
    /// Every webhook subscription, deleted or not, in id order.
    async fn webhooks(&self) -> Result<Vec<WebhookRecord>, StoreError>;
    /// The sequence number of the newest event (0 for an empty log).
    async fn last_seq(&self) -> Result<u64, StoreError>;
    /// Events with `seq > after`, in order, at most `limit`.
    async fn events(&self, after: u64, limit: u32) -> Result<Vec<EventRecord>, StoreError>;
    /// Events about one exception, in order.
    async fn events_of(&self, id: ExceptionId) -> Result<Vec<EventRecord>, StoreError>;
    /// Recomputes the whole chain: `Ok(Err(link))` names the first broken event.
    async fn verify_chain(&self) -> Result<Result<ChainHead, BrokenLink>, StoreError>;

    /// Checks every record (exceptions, identities, tokens) against its seal and every
    /// sealed key of the log against the records ([`seal`]); at most `limit` mismatches, in
    /// key order within each kind. Run after [`StoreRead::verify_chain`] found the chain
    /// intact, so the seals themselves can be trusted.
    async fn verify_records(&self, limit: usize) -> Result<Vec<seal::Tampered>, StoreError>;

    /// The records this store's reads found tampered (and left out, or refused), newest
    /// finding per key; a record found intact again is dropped from it.
    fn quarantined(&self) -> Vec<seal::Tampered>;

    /// Notes what a check made outside the store's own reads (a register checkpoint's
    /// load) found for `key`: held in [`StoreRead::quarantined`] if tampered, dropped if
    /// intact.
    fn note(&self, key: &str, outcome: Result<(), &seal::Tampered>);

    /// The rows no event sealed, if the log has never sealed a record (a store made by an
    /// earlier version); `None` once any event carries a seal, after which an unsealed row
    /// is tampered, not legacy.
    async fn unsealed(&self) -> Result<Option<Unsealed>, StoreError>;

    /// The artifact of `kind` (`baseline`, `rules`) in force at event `at` (the newest when
    /// `None`): put in force by the newest event at or before it that sealed one, checked
    /// against that seal (a body that does not hash to it is `Tampered`). `None` if no event
    /// ever did.
    async fn artifact_at(&self, kind: &str, at: Option<u64>) -> Result<Option<InForce>, StoreError>;

    /// A register checkpoint's part by its digest ([`checkpoint`]), unchecked (the caller
    /// hashes it); `None` if no part is stored under it.
    async fn register_part(&self, digest: &str) -> Result<Option<String>, StoreError>;

    /// The exceptions that events after `seq` sealed, in id order: what changed since a
    /// checkpoint as of `seq`. Read from the log's seal columns, not from the rows, so a row
    /// put back to an older version does not hide a later change.
    async fn exceptions_sealed_after(&self, seq: u64) -> Result<Vec<ExceptionId>, StoreError>;
}

/// Writing: one atomic commit at a time.
#[async_trait]
pub trait Store: StoreRead {
    /// Runs `build` inside a write transaction and applies what it returns: events appended
    /// to the chain in order, projections written with their version checks. On any error
    /// nothing is written. Returns the events as sealed into the chain.
    async fn commit(&self, build: CommitFn) -> Result<Vec<EventRecord>, StoreError>;

    /// Waits until the log may have grown past `seen`, or `at_most` passed. A hint to wake
    /// followers early (PostgreSQL's LISTEN/NOTIFY); callers still read the log after the
    /// sequence number they hold, so a missed wake-up costs latency, never an event. The
    /// default simply sleeps (polling).
    async fn wait_for_change(&self, seen: u64, at_most: std::time::Duration) {
        let _ = seen;
        tokio::time::sleep(at_most).await;
    }

    /// Tries to become the one node that runs the scheduler. `None`: another node leads.
    /// The default (a single-node store) always leads.
    async fn try_lead(&self) -> Result<Option<Box<dyn Leadership>>, StoreError> {
        Ok(Some(Box::new(Always)))
    }

    /// Claims the delivery of one webhook subscription for `lease`: `true` when this
    /// process may send its messages now (it held the claim already, or nobody did, or the
    /// holder's lease ran out), `false` when another process holds it. Claiming again
    /// renews. So each subscription's messages leave from one node at a time, in order,
    /// while different subscriptions spread over the replicas. The default (a single-node
    /// store) always grants.
    async fn claim_webhook(&self, id: &str, lease: std::time::Duration) -> Result<bool, StoreError> {
        let _ = (id, lease);
        Ok(true)
    }

    /// Whether commits are failing for a reason of the store's (out of space, I/O): the
    /// last commit's error, cleared by the next one that lands. `/readyz` reports it.
    fn write_failure(&self) -> Option<String> {
        None
    }

    /// Commits a write that changes nothing else, to learn whether writes work again (after
    /// [`Store::write_failure`] said they did not); clears the failure when it lands.
    async fn probe_write(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// Held while a node leads; leadership ends when it is dropped or its session is lost.
#[async_trait]
pub trait Leadership: Send + Sync {
    /// Whether this node still leads (for a lock held by a database session: whether the
    /// session is alive).
    async fn still_leading(&mut self) -> bool;
}

/// Leadership of a single-node store.
struct Always;

#[async_trait]
impl Leadership for Always {
    async fn still_leading(&mut self) -> bool {
        true
    }
}

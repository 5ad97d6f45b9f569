//! Deciding one request: the baseline, then the subject's exceptions.

use std::{
    collections::{HashMap, HashSet},
    str::FromStr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering},
    },
};

use cedar_policy::{
    Authorizer, Context, Decision as CedarDecision, Entities, Entity, EntityId, EntityTypeName, EntityUid, PolicySet,
    Request,
};
use jiff::Timestamp;
use serde_json::Value;
use waiver_core::{ControlKind, Exception, ExceptionId, Kind, Scope, State, Terms, exception::can_grant};

use crate::{Baseline, DEFAULT_DENY, baseline::Slice, json::to_cedar};

/// A subject or resource of a request: `{type, id, properties}`.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub entity_type: String,
    pub id: String,
    pub properties: Option<serde_json::Map<String, Value>>,
}

/// What a policy enforcement point asks.
#[derive(Debug, Clone, PartialEq)]
pub struct DecisionRequest {
    pub subject: Target,
    pub action: String,
    pub resource: Target,
    /// A JSON object (or null for none).
    pub context: Value,
}

/// Why a request cannot be evaluated at all (the edge answers 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("{field}: `{value}` is not a valid Cedar entity type")]
    EntityType { field: &'static str, value: String },
    #[error("context: {0}")]
    Context(String),
    #[error("{0}")]
    Request(String),
}

/// The exception that granted a decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub id: ExceptionId,
    pub expires_at: Timestamp,
    pub owner: String,
    /// What the enforcement point must do: the enforced compensating controls.
    pub obligations: Vec<String>,
    /// Every use of a break-glass is recorded in the audit log.
    pub break_glass: bool,
}

/// An exception of the subject that did not grant, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NearMiss {
    pub exception: ExceptionId,
    pub why: String,
}

/// The answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// On allow, the permitting policies' `@id`s; on deny, the deny reasons.
    ///
    /// On a deny, `default-deny` is listed only when it can matter: the subject has
    /// exceptions, or the caller asked for an explanation. Otherwise a deny that a forbid
    /// caused lists only the forbids.
    pub reasons: Vec<String>,
    pub exception: Option<Grant>,
    /// Filled only when explaining.
    pub near_misses: Vec<NearMiss>,
}

/// Shares one copy of each string (actions, policy ids, owners) across all exceptions: a
/// million exceptions name a few hundred distinct ones.
#[derive(Default)]
struct Interner {
    strings: FastMap<String, Arc<str>>,
    /// By the waived policy itself, so it is not formatted per exception.
    waived: FastMap<waiver_core::Waived, Arc<str>>,
}

impl Interner {
    fn get(&mut self, s: &str) -> Arc<str> {
        if let Some(shared) = self.strings.get(s) {
            return shared.clone();
        }
        let shared: Arc<str> = Arc::from(s);
        self.strings.insert(s.to_owned(), shared.clone());
        shared
    }

    fn waived(&mut self, w: &waiver_core::Waived) -> Arc<str> {
        if let Some(shared) = self.waived.get(w) {
            return shared.clone();
        }
        let shared = self.get(&w.to_string());
        self.waived.insert(w.clone(), shared.clone());
        shared
    }
}

/// The maps a compile fills and drops: a fast hasher, seeded per map (the keys come from
/// filed exceptions, so not a fixed seed).
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// An exception compiled for deciding: only what the decision needs.
#[derive(Debug)]
struct Compiled {
    id: ExceptionId,
    /// The record's version, so an older copy never replaces a newer one.
    version: u64,
    /// Approved (planned) or activated (break-glass) and not suspended, closed or ended.
    live: bool,
    state: State,
    starts_at: Timestamp,
    expires_at: Timestamp,
    any_action: bool,
    actions: Box<[Arc<str>]>,
    resources: Box<[(Arc<EntityUid>, bool)]>,
    /// Whether `resources` holds every resource of the scope, in order (so a grant's
    /// position in it is the scope's, for the usage bitmap).
    scope_aligned: bool,
    waives: Box<[Arc<str>]>,
    /// Boxed: most exceptions have none, and a policy set is large.
    condition: Option<Box<PolicySet>>,
    owner: Arc<str>,
    obligations: Box<[Arc<str>]>,
    break_glass: bool,
    counter: Arc<Counter>,
}

/// A subject's exception as its list holds it: what rules most exceptions out of a request
/// (not live, outside its window, another action) inline in the list, so the candidate loop
/// passes over them without following a pointer to each (at a million exceptions, each
/// would be a cache miss).
#[derive(Debug, Clone)]
struct Candidate {
    live: bool,
    starts_at: Timestamp,
    expires_at: Timestamp,
    /// [`action_key`] of its one action; `None` for any action or several.
    action: Option<u64>,
    compiled: Arc<Compiled>,
}

impl Candidate {
    fn new(compiled: Compiled) -> Self {
        let action = match &*compiled.actions {
            [one] if !compiled.any_action => Some(action_key(one)),
            _ => None,
        };
        Self {
            live: compiled.live,
            starts_at: compiled.starts_at,
            expires_at: compiled.expires_at,
            action,
            compiled: Arc::new(compiled),
        }
    }

    /// False only when [`Snapshot::check`] would refuse it, from the inline fields alone.
    fn may_apply(&self, now: Timestamp, action: u64) -> bool {
        self.live && self.starts_at <= now && now < self.expires_at && self.action.is_none_or(|a| a == action)
    }
}

impl std::ops::Deref for Candidate {
    type Target = Compiled;
    fn deref(&self) -> &Compiled {
        &self.compiled
    }
}

/// A subject's exceptions that can grant, with a mask of their actions beside the list: a
/// request for an action none of them names passes over the whole list without reading it
/// (most requests of a subject with exceptions are for other actions).
#[derive(Debug, Clone, Default)]
struct Candidates {
    /// Bit `key % 64` of every exception's [`action_key`]; all bits for one of any action
    /// or several. A bit can be shared, never missing: a clear bit means none applies.
    actions: u64,
    list: Vec<Candidate>,
}

impl Candidates {
    fn bit(key: u64) -> u64 {
        1 << (key % 64)
    }

    /// The bits `candidate` sets in the mask.
    fn bits(candidate: &Candidate) -> u64 {
        candidate.action.map_or(u64::MAX, Self::bit)
    }

    fn push(&mut self, candidate: Candidate) {
        self.actions |= Self::bits(&candidate);
        self.list.push(candidate);
    }

    fn retain(&mut self, keep: impl FnMut(&Candidate) -> bool) {
        self.list.retain(keep);
        self.actions = self.list.iter().fold(0, |mask, c| mask | Self::bits(c));
    }

    /// Whether any of them may be for the action whose key is `key`.
    fn may_name(&self, key: u64) -> bool {
        self.actions & Self::bit(key) != 0
    }
}

/// A hash of an action name for [`Candidate::may_apply`]; equal names hash alike, and a
/// collision only sends an exception on to the full check.
fn action_key(action: &str) -> u64 {
    use std::hash::{Hash as _, Hasher as _};
    let mut hasher = std::hash::DefaultHasher::new();
    action.hash(&mut hasher);
    hasher.finish()
}

/// How often one exception has granted since this process started; shared by every
/// snapshot that holds the exception, so a swap loses no count. Atomics only: the decision
/// path takes no lock.
#[derive(Debug, Default)]
pub struct Counter {
    pub count: AtomicU64,
    /// Microseconds since the Unix epoch of the last grant (0 for never).
    pub last_used_micros: AtomicI64,
    /// How much of `count` the store already has.
    pub flushed: AtomicU64,
    /// Which parts of the scope granted ([`waiver_core::Scope::used_bit`]), OR-ed per grant.
    pub scope_used: AtomicU64,
    /// Set by the first grant since the last flush, which also queues the exception in
    /// [`Snapshot::take_used`]: the flush visits what was used, not every counter.
    pub dirty: AtomicBool,
}

/// An immutable view for deciding: a baseline and the exceptions, indexed by subject.
#[derive(Debug)]
pub struct Snapshot {
    baseline: Arc<Baseline>,
    /// Persistent maps (structural sharing): an incremental change copies the path to the
    /// entries it touches, O(log n), not the whole index — a write costs each replica the
    /// same at 100 exceptions as at 1M.
    /// Only exceptions in a state that can grant (approved or active) are compiled here, so
    /// requests nobody approved and ended exceptions cost a decision nothing.
    by_subject: imbl::HashMap<EntityUid, Candidates>,
    /// The rest, as little as an explanation needs ("revoked", "requested"), read only when
    /// a caller asks for near misses.
    ended: imbl::HashMap<EntityUid, Vec<Ended>>,
    n_exceptions: usize,
    counters: imbl::HashMap<ExceptionId, Arc<Counter>>,
    types: TypeNames,
    /// Identities the inventory holds as offboarded, or whose inventory record does not
    /// match the audit log: denied whatever the baseline says, with the reason.
    offboarded: Arc<HashMap<EntityUid, &'static str>>,
    /// Exceptions granted through since the last flush took them (see [`Counter::dirty`]);
    /// shared by every snapshot that follows this one. A lock-free queue: the decision path
    /// takes no lock.
    used: Arc<crossbeam_queue::SegQueue<ExceptionId>>,
}

/// The deny reason for an identity the inventory holds as offboarded; no exception waives it.
pub const OFFBOARDED: &str = "identity-offboarded";

/// The deny reason for an identity whose inventory record does not match the audit log (it
/// may hide an offboarding); no exception waives it.
pub const IDENTITY_TAMPERED: &str = "identity-record-tampered";

/// An exception that cannot grant in its state: kept for near misses only.
#[derive(Debug, Clone, Copy)]
struct Ended {
    id: ExceptionId,
    version: u64,
    state: State,
}

/// Most near misses of ended or undecided exceptions listed in one explanation.
const MAX_ENDED_NEAR_MISSES: usize = 32;

/// Whether an exception's recorded state lets it grant at all (time is checked per decision).
/// What the engine compiles: a whole record, or only its [`Terms`] (what a serving node
/// loads at start). Both give the same [`View`], so they compile the same.
pub trait Compilable {
    fn view(&self) -> View<'_>;
}

/// The fields a decision reads, borrowed from a record or from its terms.
#[derive(Debug, Clone)]
pub struct View<'e> {
    pub id: ExceptionId,
    pub version: u64,
    pub kind: Kind,
    pub state: State,
    pub subject: &'e waiver_core::EntityRef,
    pub waives: &'e [waiver_core::Waived],
    pub scope: &'e Scope,
    pub condition: Option<&'e str>,
    pub obligations: std::borrow::Cow<'e, [ControlKind]>,
    pub owner: &'e waiver_core::Principal,
    pub starts_at: Timestamp,
    pub expires_at: Timestamp,
}

impl Compilable for Exception {
    fn view(&self) -> View<'_> {
        View {
            id: self.id,
            version: self.version,
            kind: self.kind,
            state: self.state,
            subject: &self.subject,
            waives: &self.waives,
            scope: &self.scope,
            condition: self.condition.as_deref(),
            obligations: waiver_core::exception::obligations(&self.compensating_controls).collect(),
            owner: &self.owner,
            starts_at: self.starts_at,
            expires_at: self.expires_at,
        }
    }
}

impl Compilable for Terms {
    fn view(&self) -> View<'_> {
        View {
            id: self.id,
            version: self.version,
            kind: self.kind,
            state: self.state,
            subject: &self.subject,
            waives: &self.waives,
            scope: &self.scope,
            condition: self.condition.as_deref(),
            obligations: std::borrow::Cow::Borrowed(&self.obligations),
            owner: &self.owner,
            starts_at: self.starts_at,
            expires_at: self.expires_at,
        }
    }
}

impl<T: Compilable + ?Sized> Compilable for &T {
    fn view(&self) -> View<'_> {
        (**self).view()
    }
}

impl<T: Compilable + ?Sized> Compilable for Arc<T> {
    fn view(&self) -> View<'_> {
        (**self).view()
    }
}

/// Parsed entity type names, so a decision does not re-parse `ServiceAccount` each time.
#[derive(Debug, Default, Clone)]
struct TypeNames(HashMap<String, EntityTypeName>);

impl TypeNames {
    fn remember(&mut self, name: &str) {
        if !self.0.contains_key(name)
            && let Ok(parsed) = EntityTypeName::from_str(name)
        {
            self.0.insert(name.to_owned(), parsed);
        }
    }

    fn uid(&self, field: &'static str, entity_type: &str, id: &str) -> Result<EntityUid, RequestError> {
        match self.0.get(entity_type) {
            Some(name) => Ok(EntityUid::from_type_name_and_id(name.clone(), EntityId::new(id))),
            None => uid(field, entity_type, id),
        }
    }
}

fn uid(field: &'static str, entity_type: &str, id: &str) -> Result<EntityUid, RequestError> {
    let type_name = EntityTypeName::from_str(entity_type)
        .map_err(|_| RequestError::EntityType { field, value: entity_type.chars().take(64).collect() })?;
    Ok(EntityUid::from_type_name_and_id(type_name, EntityId::new(id)))
}

/// A request in Cedar's terms, built once per decision and shared by every evaluation in it.
struct Prepared {
    principal: EntityUid,
    action: EntityUid,
    resource: EntityUid,
    request: Request,
    entities: Arc<Entities>,
}

/// Refuses JSON nested deeper than Cedar's JSON parsers are given (they recurse per level).
fn shallow(value: &Value) -> Result<(), String> {
    let depth = crate::limits::json_depth(value);
    if depth > crate::limits::MAX_NESTING {
        return Err(format!("it nests {depth} levels deep; at most {} are allowed", crate::limits::MAX_NESTING));
    }
    Ok(())
}

/// The request context as Cedar's. Plain JSON (strings, integers, booleans, lists, objects)
/// is converted directly; values with Cedar's JSON escapes (`__extn` for `ip(…)` and
/// `decimal(…)`, `__entity`) go through Cedar's own parser.
fn context(value: &Value) -> Result<Context, RequestError> {
    fn escaped(v: &Value) -> bool {
        match v {
            Value::Object(map) => {
                map.contains_key("__extn") || map.contains_key("__entity") || map.values().any(escaped)
            }
            Value::Array(items) => items.iter().any(escaped),
            Value::Number(n) => !(n.is_i64()),
            _ => false,
        }
    }
    shallow(value).map_err(RequestError::Context)?;
    match value {
        Value::Null => Ok(Context::empty()),
        Value::Object(map) if !escaped(value) => {
            let pairs = map.iter().filter_map(|(k, v)| to_cedar(v, 0).map(|v| (k.clone(), v)));
            Context::from_pairs(pairs).map_err(|e| RequestError::Context(e.to_string()))
        }
        Value::Object(_) => {
            Context::from_json_value(value.clone(), None).map_err(|e| RequestError::Context(e.to_string()))
        }
        _ => Err(RequestError::Context("must be an object".into())),
    }
}

/// Why an exception did not grant a request.
#[derive(Debug, Clone, Copy)]
enum Miss<'r> {
    NotLive { state: State, uncompiled: bool },
    NotStarted(jiff::SignedDuration),
    Expired(jiff::SignedDuration),
    Action,
    Resource,
    Waive(&'r str),
    ConditionError,
    ConditionFalse,
}

impl Miss<'_> {
    fn why(self) -> String {
        match self {
            Miss::NotLive { state: State::Approved | State::Active, uncompiled: true } => {
                "condition does not compile against the baseline".into()
            }
            Miss::NotLive { state, .. } => state.as_str().replace('_', " "),
            Miss::NotStarted(d) => format!("not started; starts in {}", describe(d)),
            Miss::Expired(d) => format!("expired {} ago", describe(d)),
            Miss::Action => "out of scope: action".into(),
            Miss::Resource => "out of scope: resource".into(),
            Miss::Waive(missing) => format!("does not waive `{missing}`"),
            Miss::ConditionError => "condition error".into(),
            Miss::ConditionFalse => "condition false".into(),
        }
    }
}

fn errored_policy(e: &cedar_policy::AuthorizationError) -> &cedar_policy::PolicyId {
    match e {
        cedar_policy::AuthorizationError::PolicyEvaluationError(e) => e.policy_id(),
    }
}

fn describe(d: jiff::SignedDuration) -> String {
    let secs = d.as_secs().unsigned_abs();
    match secs {
        0..120 => format!("{secs}s"),
        120..7200 => format!("{}m", secs / 60),
        7200..172_800 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86_400),
    }
}

/// Compiles exceptions for a snapshot, sharing strings and resource uids between them.
struct Compiler<'a> {
    baseline: Arc<Baseline>,
    previous: Option<&'a Snapshot>,
    strings: Interner,
    resources_seen: FastMap<waiver_core::EntityRef, Arc<EntityUid>>,
    counters: FastMap<ExceptionId, Arc<Counter>>,
    /// Parsed subject types: Cedar parses a type name with its full grammar.
    type_names: TypeNames,
}

impl<'a> Compiler<'a> {
    fn new(baseline: Arc<Baseline>, previous: Option<&'a Snapshot>) -> Self {
        Self {
            baseline,
            previous,
            strings: Interner::default(),
            resources_seen: FastMap::default(),
            counters: FastMap::default(),
            type_names: TypeNames::default(),
        }
    }

    /// `e` as a Cedar uid, its type parsed once per compile.
    fn uid(&mut self, e: &waiver_core::EntityRef) -> Option<EntityUid> {
        self.type_names.remember(e.entity_type().as_str());
        self.type_names.uid("subject", e.entity_type().as_str(), e.id()).ok()
    }

    /// `e` compiled; `None` for an exception to a control outside Cedar, which never
    /// touches a decision. Its subject is the caller's to index it by.
    fn compile(&mut self, e: &View<'_>) -> Option<Compiled> {
        if waives_control(e) {
            return None;
        }
        let resources_seen = &mut self.resources_seen;
        let resources: Box<[(Arc<EntityUid>, bool)]> = e
            .scope
            .resources
            .iter()
            .filter_map(|r| {
                if let Some(shared) = resources_seen.get(&r.entity) {
                    return Some((Arc::clone(shared), r.descendants));
                }
                let shared = Arc::new(uid("resource", r.entity.entity_type().as_str(), r.entity.id()).ok()?);
                resources_seen.insert(r.entity.clone(), Arc::clone(&shared));
                Some((shared, r.descendants))
            })
            .collect();
        let scope_aligned = resources.len() == e.scope.resources.len();
        let condition = e.condition.map(|c| self.baseline.compile_condition(c).ok());
        let live = matches!(
            (e.kind, e.state),
            (Kind::Planned, State::Approved | State::Active) | (Kind::BreakGlass, State::Active)
        );
        let previous = self.previous;
        let counter = Arc::clone(
            self.counters
                .entry(e.id)
                .or_insert_with(|| previous.and_then(|p| p.counters.get(&e.id).cloned()).unwrap_or_default()),
        );
        let strings = &mut self.strings;
        Some(Compiled {
            id: e.id,
            version: e.version,
            // A condition that does not compile can never hold: the exception stays
            // indexed (to explain itself) but cannot grant.
            live: live && !matches!(condition, Some(None)),
            state: e.state,
            starts_at: e.starts_at,
            expires_at: e.expires_at,
            any_action: e.scope.actions.iter().any(|a| a == Scope::ANY_ACTION),
            actions: e.scope.actions.iter().map(|a| strings.get(a)).collect(),
            resources,
            scope_aligned,
            waives: e.waives.iter().map(|w| strings.waived(w)).collect(),
            condition: condition.flatten().map(Box::new),
            owner: strings.get(e.owner.as_str()),
            obligations: e.obligations.iter().map(|kind| strings.get(kind.as_str())).collect(),
            break_glass: e.kind == Kind::BreakGlass,
            counter,
        })
    }
}

fn waives_control(e: &View<'_>) -> bool {
    e.waives.iter().any(waiver_core::Waived::is_control)
}

/// Builds a [`Snapshot`] one exception at a time ([`Snapshot::builder`]); exceptions are
/// listed in the order they are added, as [`Snapshot::new`] lists them.
pub struct Builder<'p> {
    compiler: Compiler<'p>,
    previous: Option<&'p Snapshot>,
    /// By the subject as recorded, its Cedar uid made once per subject, not per exception.
    by_subject: FastMap<waiver_core::EntityRef, (EntityUid, Candidates)>,
    ended: FastMap<waiver_core::EntityRef, (EntityUid, Vec<Ended>)>,
    n_exceptions: usize,
}

/// `subject`'s entry in `map`, made (with its uid) if new; `None` if it is no Cedar uid.
fn slot<'m, T: Default>(
    map: &'m mut FastMap<waiver_core::EntityRef, (EntityUid, T)>,
    compiler: &mut Compiler<'_>,
    subject: &waiver_core::EntityRef,
) -> Option<&'m mut T> {
    if !map.contains_key(subject) {
        let uid = compiler.uid(subject)?;
        map.insert(subject.clone(), (uid, T::default()));
    }
    map.get_mut(subject).map(|(_, held)| held)
}

/// A builder's index as the snapshot holds it, by uid (two records naming one uid share it).
fn by_uid<I: Clone>(
    map: FastMap<waiver_core::EntityRef, (EntityUid, I)>,
    mut merge: impl FnMut(&mut I, I),
) -> imbl::HashMap<EntityUid, I> {
    let mut out = imbl::HashMap::new();
    for (_, (uid, held)) in map {
        match out.get_mut(&uid) {
            Some(existing) => merge(existing, held),
            None => {
                out.insert(uid, held);
            }
        }
    }
    out
}

impl<'p> Builder<'p> {
    fn after(previous: Option<&'p Snapshot>, baseline: Arc<Baseline>) -> Self {
        Self {
            compiler: Compiler::new(baseline, previous),
            previous,
            by_subject: FastMap::default(),
            ended: FastMap::default(),
            n_exceptions: 0,
        }
    }

    pub fn add<E: Compilable + ?Sized>(&mut self, e: &E) {
        let e = e.view();
        if !can_grant(e.kind, e.state) {
            let Some(list) = slot(&mut self.ended, &mut self.compiler, e.subject) else { return };
            list.push(Ended { id: e.id, version: e.version, state: e.state });
            self.n_exceptions += 1;
            return;
        }
        if waives_control(&e) {
            return;
        }
        let Some(list) = slot(&mut self.by_subject, &mut self.compiler, e.subject) else { return };
        let Some(compiled) = self.compiler.compile(&e) else { return };
        list.push(Candidate::new(compiled));
        self.n_exceptions += 1;
    }

    pub fn finish(self) -> Snapshot {
        let Self { compiler, previous, by_subject, ended, n_exceptions } = self;
        let baseline = Arc::clone(&compiler.baseline);
        let mut types = TypeNames::default();
        types.remember("Action");
        for name in baseline.by_type.keys() {
            types.remember(name);
        }
        for subject in by_subject.keys() {
            types.remember(subject.entity_type().as_str());
        }
        for resource in compiler.resources_seen.keys() {
            types.remember(resource.entity_type().as_str());
        }
        // The two largest indexes built side by side: at a million exceptions each is a
        // fraction of a second, and the node is not ready until both are.
        let all_counters = compiler.counters;
        let (counters, by_subject) = std::thread::scope(|scope| {
            let counters = scope.spawn(move || all_counters.into_iter().collect::<imbl::HashMap<_, _>>());
            let by_subject = by_uid(by_subject, |held: &mut Candidates, more| {
                for c in more.list {
                    held.push(c);
                }
            });
            (counters.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)), by_subject)
        });
        let ended = by_uid(ended, |held: &mut Vec<Ended>, more| held.extend(more));
        let offboarded = previous.map(|p| Arc::clone(&p.offboarded)).unwrap_or_default();
        let used = previous.map(|p| Arc::clone(&p.used)).unwrap_or_default();
        Snapshot { baseline, by_subject, ended, n_exceptions, counters, types, offboarded, used }
    }
}

impl Snapshot {
    /// Compiles the exceptions that can ever grant against `baseline`. Exceptions whose
    /// condition no longer compiles are kept, fail closed, and say so as a near miss.
    pub fn new<E: Compilable>(baseline: Arc<Baseline>, exceptions: impl IntoIterator<Item = E>) -> Self {
        Self::after(None, baseline, exceptions)
    }

    /// [`Snapshot::new`], keeping the usage counters of `previous` for the exceptions both hold.
    pub fn after<E: Compilable>(
        previous: Option<&Snapshot>,
        baseline: Arc<Baseline>,
        exceptions: impl IntoIterator<Item = E>,
    ) -> Self {
        let mut builder = Builder::after(previous, baseline);
        for e in exceptions {
            builder.add(&e);
        }
        builder.finish()
    }

    /// A snapshot built one exception at a time: a node compiles each page of records as
    /// the store hands it over, while the next pages are read.
    pub fn builder(baseline: Arc<Baseline>) -> Builder<'static> {
        Builder::after(None, baseline)
    }

    /// This snapshot with `changed` exceptions replaced (or added): what a write on this
    /// node applies at once, without reloading the store. Costs O(log n) per change in the
    /// persistent indexes plus compiling the changed exceptions (and a copy of the changed
    /// subject's own list); an older version of an exception than the one held is ignored,
    /// so appliers may race.
    pub fn with_changes<E: Compilable>(&self, changed: &[E]) -> Self {
        let mut compiler = Compiler::new(Arc::clone(&self.baseline), Some(self));
        let mut by_subject = self.by_subject.clone();
        let mut ended = self.ended.clone();
        let mut counters = self.counters.clone();
        let mut n_exceptions = self.n_exceptions;
        let mut types = self.types.clone();
        for e in changed {
            let e = e.view();
            let Some(subject) = compiler.uid(e.subject) else { continue };
            let held = by_subject
                .get(&subject)
                .and_then(|listed| listed.list.iter().find(|c| c.id == e.id).map(|c| c.version))
                .or_else(|| ended.get(&subject).and_then(|list| list.iter().find(|c| c.id == e.id).map(|c| c.version)));
            if held.is_some_and(|version| version > e.version) {
                continue;
            }
            // Out of whichever index held it; into the one its new state belongs to.
            if let Some(list) = by_subject.get_mut(&subject) {
                list.retain(|c| c.id != e.id);
            }
            if let Some(list) = ended.get_mut(&subject) {
                list.retain(|c| c.id != e.id);
            }
            if held.is_none() {
                n_exceptions += 1;
            }
            if can_grant(e.kind, e.state) {
                let Some(compiled) = compiler.compile(&e) else { continue };
                by_subject.entry(subject).or_default().push(Candidate::new(compiled));
            } else {
                ended.entry(subject).or_default().push(Ended { id: e.id, version: e.version, state: e.state });
            }
            types.remember(e.subject.entity_type().as_str());
            for r in &e.scope.resources {
                types.remember(r.entity.entity_type().as_str());
            }
        }
        counters.extend(compiler.counters);
        let offboarded = Arc::clone(&self.offboarded);
        Self {
            baseline: Arc::clone(&self.baseline),
            by_subject,
            ended,
            n_exceptions,
            counters,
            types,
            offboarded,
            used: Arc::clone(&self.used),
        }
    }

    /// This snapshot with the inventory's offboarded identities taken from `identities`,
    /// and the identities in `tampered` (records that do not match the log) denied too.
    pub fn with_inventory(&self, identities: &[waiver_core::Identity], tampered: &[waiver_core::EntityRef]) -> Self {
        let entity_uid = |e: &waiver_core::EntityRef| uid("subject", e.entity_type().as_str(), e.id()).ok();
        let set = identities
            .iter()
            .filter(|i| i.status == waiver_core::IdentityStatus::Offboarded)
            .filter_map(|i| entity_uid(&i.entity).map(|u| (u, OFFBOARDED)))
            .chain(tampered.iter().filter_map(|e| entity_uid(e).map(|u| (u, IDENTITY_TAMPERED))))
            .collect();
        Self {
            baseline: Arc::clone(&self.baseline),
            by_subject: self.by_subject.clone(),
            ended: self.ended.clone(),
            n_exceptions: self.n_exceptions,
            counters: self.counters.clone(),
            types: self.types.clone(),
            offboarded: Arc::new(set),
            used: Arc::clone(&self.used),
        }
    }

    /// How many exceptions a decision may evaluate: those in a state that can grant.
    pub fn n_deciding(&self) -> usize {
        self.by_subject.values().map(|listed| listed.list.len()).sum()
    }

    pub fn baseline(&self) -> &Arc<Baseline> {
        &self.baseline
    }

    /// The usage counters of the exceptions this snapshot holds.
    pub fn counters(&self) -> impl Iterator<Item = (ExceptionId, &Arc<Counter>)> {
        self.counters.iter().map(|(id, c)| (*id, c))
    }

    /// The exceptions granted through since the last call, with their counters, each once;
    /// each counter's `dirty` flag is cleared before it is returned, so a grant after this
    /// queues it again. (One not held by this snapshot any more is left out.)
    pub fn take_used(&self) -> Vec<(ExceptionId, Arc<Counter>)> {
        let mut taken = Vec::new();
        while let Some(id) = self.used.pop() {
            if let Some(counter) = self.counters.get(&id) {
                counter.dirty.store(false, Ordering::SeqCst);
                taken.push((id, Arc::clone(counter)));
            }
        }
        taken
    }

    /// Queues `id` for the next [`Snapshot::take_used`] again (its flush failed).
    pub fn mark_used(&self, id: ExceptionId) {
        if let Some(counter) = self.counters.get(&id)
            && !counter.dirty.swap(true, Ordering::SeqCst)
        {
            self.used.push(id);
        }
    }

    /// This node's live counter for one exception (decisions not yet flushed included).
    pub fn counter(&self, id: ExceptionId) -> Option<&Arc<Counter>> {
        self.counters.get(&id)
    }

    pub fn n_exceptions(&self) -> usize {
        self.n_exceptions
    }

    /// What a request target adds to the entity store, if anything: an entity the store
    /// does not hold, with the request's properties; or a stored one with the attributes it
    /// lacks. The store is authoritative: a property never replaces a stored attribute.
    /// With a schema, added entities are parsed with it (typed as Cedar types them).
    fn addition(
        &self,
        uid: &EntityUid,
        properties: Option<&serde_json::Map<String, Value>>,
    ) -> Result<Option<Entity>, RequestError> {
        let Some(properties) = properties.filter(|p| !p.is_empty()) else { return Ok(None) };
        let stored = self.baseline.entities.get(uid);
        if let Some(schema) = &self.baseline.schema {
            let mut json = match stored {
                Some(e) => e.to_json_value().map_err(|e| RequestError::Request(e.to_string()))?,
                None => {
                    serde_json::json!({"uid": {"__entity": {"type": uid.type_name().to_string(), "id": uid.id().unescaped()}},
                                           "attrs": {}, "parents": []})
                }
            };
            for value in properties.values() {
                shallow(value).map_err(|e| RequestError::Request(format!("`properties` of `{uid}`: {e}")))?;
            }
            let Some(attrs) = json.get_mut("attrs").and_then(Value::as_object_mut) else { return Ok(None) };
            let before = attrs.len();
            for (key, value) in properties {
                attrs.entry(key.clone()).or_insert_with(|| value.clone());
            }
            if attrs.len() == before {
                return Ok(None);
            }
            return Entity::from_json_value(json, Some(schema)).map(Some).map_err(|e| {
                RequestError::Request(format!("`properties` of `{uid}`: {}", crate::baseline::diagnostics(&e)))
            });
        }
        let (_, mut attrs, parents) = match stored {
            Some(e) => e.clone().into_inner(),
            None => (uid.clone(), HashMap::new(), HashSet::new()),
        };
        let before = attrs.len();
        for (key, value) in properties {
            if !attrs.contains_key(key)
                && let Some(value) = to_cedar(value, 0)
            {
                attrs.insert(key.clone(), value);
            }
        }
        if attrs.len() == before && stored.is_some() {
            return Ok(None);
        }
        Entity::new(uid.clone(), attrs, parents).map(Some).map_err(|e| RequestError::Request(e.to_string()))
    }

    /// The context as Cedar reads it: with a schema that declares the action, parsed with
    /// the schema, as Cedar does, so `"source_ip": "10.20.3.4"` is an `ipaddr` where the
    /// schema says so; otherwise plain JSON (and Cedar's `__extn` escapes).
    fn typed_context(&self, value: &Value, action: &EntityUid) -> Result<Context, RequestError> {
        let declared = self.baseline.schema.as_ref().filter(|_| self.baseline.declared_actions.contains(action));
        match (declared, value) {
            (Some(schema), Value::Object(_)) => {
                shallow(value).map_err(RequestError::Context)?;
                Context::from_json_value(value.clone(), Some((schema, action)))
                    .map_err(|e| RequestError::Context(crate::baseline::diagnostics(&e)))
            }
            (Some(schema), Value::Null) => {
                Context::from_json_value(Value::Object(Default::default()), Some((schema, action)))
                    .map_err(|e| RequestError::Context(crate::baseline::diagnostics(&e)))
            }
            _ => context(value),
        }
    }

    /// Builds the Cedar request and its entities: the principal, the resource and (if stored)
    /// the action, each with its stored attributes and ancestors plus the request's properties.
    fn prepare(&self, request: &DecisionRequest) -> Result<Prepared, RequestError> {
        let principal = self.types.uid("subject.type", &request.subject.entity_type, &request.subject.id)?;
        let resource = self.types.uid("resource.type", &request.resource.entity_type, &request.resource.id)?;
        let action = match self.baseline.action_uid(&request.action) {
            Some(uid) => uid,
            None => self.types.uid("action.name", "Action", &request.action)?,
        };
        let context = self.typed_context(&request.context, &action)?;
        // The whole store, as Cedar sees it: attributes of any stored entity, all ancestors.
        // Copied only when the request adds to it (properties for what the store lacks).
        let mut additions: Vec<Entity> = Vec::new();
        additions.extend(self.addition(&principal, request.subject.properties.as_ref())?);
        if resource != principal {
            additions.extend(self.addition(&resource, request.resource.properties.as_ref())?);
        }
        let entities = if additions.is_empty() {
            Arc::clone(&self.baseline.store)
        } else {
            let store = Entities::clone(&self.baseline.store);
            Arc::new(store.upsert_entities(additions, None).map_err(|e| RequestError::Request(e.to_string()))?)
        };
        // With a schema the request is validated by it, as Cedar validates it: an action the
        // schema does not declare, or a principal or resource of a type the action does not
        // apply to, is a bad request (an unconstrained permit must not answer it).
        let request =
            Request::new(principal.clone(), action.clone(), resource.clone(), context, self.baseline.schema.as_ref())
                .map_err(|e| RequestError::Request(crate::baseline::diagnostics(&e)))?;
        Ok(Prepared { principal, action, resource, request, entities })
    }

    /// Decides with the baseline sliced by action (the production path).
    pub fn decide(&self, request: &DecisionRequest, now: Timestamp, explain: bool) -> Result<Decision, RequestError> {
        self.decide_with(request, now, explain, true)
    }

    /// Decides without counting a use: what a search asks ("who could?") is an evaluation,
    /// not an access, so it leaves usage (and the "unused" hygiene it feeds) alone.
    pub fn evaluate(&self, request: &DecisionRequest, now: Timestamp, explain: bool) -> Result<Decision, RequestError> {
        self.run(request, now, explain, true, false)
    }

    /// Decides; `sliced: false` evaluates the whole baseline (for testing the slicing).
    pub fn decide_with(
        &self,
        request: &DecisionRequest,
        now: Timestamp,
        explain: bool,
        sliced: bool,
    ) -> Result<Decision, RequestError> {
        self.run(request, now, explain, sliced, true)
    }

    fn run(
        &self,
        request: &DecisionRequest,
        now: Timestamp,
        explain: bool,
        sliced: bool,
        count: bool,
    ) -> Result<Decision, RequestError> {
        let Prepared { principal, action, resource, request: cedar_request, entities } = self.prepare(request)?;
        if !self.offboarded.is_empty()
            && let Some(reason) = self.offboarded.get(&principal)
        {
            // Offboarded means denied: before the baseline, and beyond any exception.
            return Ok(Decision {
                allowed: false,
                reasons: vec![(*reason).to_owned()],
                exception: None,
                near_misses: Vec::new(),
            });
        }
        let slice: &Slice = if sliced { self.baseline.slice(&action) } else { &self.baseline.unsliced };

        // One evaluation tells which policies are satisfied, permits and forbids alike (see
        // `Slice`); Cedar's rule on that is Cedar's answer.
        let response = Authorizer::new().is_authorized(&cedar_request, &slice.probe, &entities);
        let mut satisfied_permits = Vec::new();
        let mut reasons: Vec<String> = Vec::new();
        let name =
            |id: &cedar_policy::PolicyId| self.baseline.annotations.get(id).cloned().unwrap_or_else(|| id.to_string());
        for id in response.diagnostics().reason() {
            if self.baseline.forbids.contains(id) {
                reasons.push(name(id));
            } else {
                satisfied_permits.push(id);
            }
        }
        // A forbid that errors is skipped by Cedar; waiver counts it as fired (fail closed).
        reasons.extend(
            response
                .diagnostics()
                .errors()
                .map(errored_policy)
                .filter(|id| self.baseline.forbids.contains(*id))
                .map(name),
        );
        if !satisfied_permits.is_empty() && reasons.is_empty() {
            let mut reasons: Vec<String> = satisfied_permits.into_iter().map(name).collect();
            reasons.sort();
            return Ok(Decision { allowed: true, reasons, exception: None, near_misses: Vec::new() });
        }
        let listed = self.by_subject.get(&principal);
        let wanted = action_key(&request.action);
        // An explanation says why each one missed, so it looks at every one in full; a
        // decision reads the list only if some exception may name the action.
        let candidates = match listed {
            Some(listed) if explain || listed.may_name(wanted) => listed.list.as_slice(),
            _ => &[],
        };
        // Did any permit match? If not, the default deny is a reason too, and waiving the
        // forbids alone grants nothing. Listed only when some exception could use it (or
        // the caller asked why; see `Decision::reasons`).
        let permitted = if reasons.is_empty() {
            false
        } else if listed.is_none_or(|listed| listed.list.is_empty()) && !explain {
            true
        } else {
            !satisfied_permits.is_empty()
        };
        if !permitted {
            reasons.push(DEFAULT_DENY.to_owned());
        }
        reasons.sort();
        reasons.dedup();

        let mut near_misses = Vec::new();
        let mut ancestors = None;
        for exception in candidates {
            if !explain && !exception.may_apply(now, wanted) {
                continue;
            }
            let ancestors = *ancestors.get_or_insert_with(|| self.baseline.ancestors.get(&resource));
            match self.check(exception, request, &cedar_request, &entities, &resource, ancestors, &reasons, now) {
                Ok(()) => {
                    if count {
                        // Every update first, then the flag, all SeqCst against the flush's
                        // clear-then-read (`take_used`): either the flush sees this grant's
                        // updates or this grant sees the flag cleared and queues again.
                        exception.counter.count.fetch_add(1, Ordering::SeqCst);
                        exception.counter.last_used_micros.store(now.as_microsecond(), Ordering::SeqCst);
                        let bit = self.scope_bit(exception, &request.action, &resource);
                        if exception.counter.scope_used.load(Ordering::Relaxed) & bit != bit {
                            exception.counter.scope_used.fetch_or(bit, Ordering::SeqCst);
                        }
                        if !exception.counter.dirty.load(Ordering::SeqCst)
                            && !exception.counter.dirty.swap(true, Ordering::SeqCst)
                        {
                            self.used.push(exception.id);
                        }
                    }
                    return Ok(Decision {
                        allowed: true,
                        reasons,
                        exception: Some(Grant {
                            id: exception.id,
                            expires_at: exception.expires_at,
                            owner: exception.owner.to_string(),
                            obligations: exception.obligations.iter().map(|o| o.to_string()).collect(),
                            break_glass: exception.break_glass,
                        }),
                        near_misses: Vec::new(),
                    });
                }
                Err(miss) if explain => near_misses.push(NearMiss { exception: exception.id, why: miss.why() }),
                Err(_) => {}
            }
        }
        if explain {
            let ended = self.ended.get(&principal).map(Vec::as_slice).unwrap_or_default();
            near_misses.extend(
                ended
                    .iter()
                    .take(MAX_ENDED_NEAR_MISSES)
                    .map(|e| NearMiss { exception: e.id, why: e.state.as_str().replace('_', " ") }),
            );
            near_misses.sort_by_key(|m| m.exception);
        }
        Ok(Decision { allowed: false, reasons, exception: None, near_misses })
    }

    /// Plain Cedar over the whole baseline, with no slicing and no exceptions: the peer the
    /// decision benchmark compares against. Builds the request the same way `decide` does.
    pub fn baseline_only(&self, request: &DecisionRequest) -> Result<bool, RequestError> {
        let prepared = self.prepare(request)?;
        let response =
            Authorizer::new().is_authorized(&prepared.request, &self.baseline.unsliced.all, &prepared.entities);
        Ok(response.decision() == CedarDecision::Allow)
    }

    /// Plain Cedar over the policies of the request's action alone (the slice `decide`
    /// evaluates), with no exceptions: what the overlay of exceptions is measured against.
    pub fn slice_only(&self, request: &DecisionRequest) -> Result<bool, RequestError> {
        let prepared = self.prepare(request)?;
        let slice = self.baseline.slice(&prepared.action);
        let response = Authorizer::new().is_authorized(&prepared.request, &slice.all, &prepared.entities);
        Ok(response.decision() == CedarDecision::Allow)
    }

    /// Whether one exception grants this request at `now`; the error says why not (worded
    /// only when explaining: most requests pass over several exceptions that do not apply).
    #[expect(clippy::too_many_arguments, reason = "the parts of one request, computed once by the caller")]
    fn check<'r>(
        &self,
        e: &Compiled,
        request: &DecisionRequest,
        cedar_request: &Request,
        entities: &Entities,
        resource: &EntityUid,
        ancestors: Option<&HashSet<EntityUid>>,
        reasons: &'r [String],
        now: Timestamp,
    ) -> Result<(), Miss<'r>> {
        if !e.live {
            return Err(Miss::NotLive { state: e.state, uncompiled: e.condition.is_none() });
        }
        if now < e.starts_at {
            return Err(Miss::NotStarted(e.starts_at.duration_since(now)));
        }
        if now >= e.expires_at {
            return Err(Miss::Expired(now.duration_since(e.expires_at)));
        }
        if !(e.any_action || e.actions.iter().any(|a| **a == *request.action)) {
            return Err(Miss::Action);
        }
        let in_scope = e.resources.iter().any(|(scope, descendants)| {
            **scope == *resource || (*descendants && ancestors.is_some_and(|a| a.contains(&**scope)))
        });
        if !in_scope {
            return Err(Miss::Resource);
        }
        if let Some(missing) = reasons.iter().find(|r| !e.waives.iter().any(|w| **w == ***r)) {
            return Err(Miss::Waive(missing));
        }
        if let Some(condition) = &e.condition {
            let response = Authorizer::new().is_authorized(cedar_request, condition, entities);
            if response.diagnostics().errors().next().is_some() {
                return Err(Miss::ConditionError);
            }
            if response.decision() != CedarDecision::Allow {
                return Err(Miss::ConditionFalse);
            }
        }
        Ok(())
    }

    /// The usage bit of a grant by `e` of `action` on `resource` (0 if its scope could not
    /// be lined up with the record's).
    fn scope_bit(&self, e: &Compiled, action: &str, resource: &EntityUid) -> u64 {
        let a = e.actions.iter().position(|a| **a == *action || &**a == Scope::ANY_ACTION);
        let r = e.resources.iter().position(|(scope, descendants)| {
            **scope == *resource
                || (*descendants && self.baseline.ancestors.get(resource).is_some_and(|a| a.contains(&**scope)))
        });
        match (a, r) {
            (Some(a), Some(r)) if e.scope_aligned => Scope::used_bit(e.actions.len(), e.resources.len(), a, r),
            _ => 0,
        }
    }

    /// Entity ids of `entity_type` the baseline knows, for search.
    pub fn entities_of_type(&self, entity_type: &str) -> &[String] {
        self.baseline.by_type.get(entity_type).map(Vec::as_slice).unwrap_or_default()
    }

    /// Every action name the baseline knows, for action search.
    pub fn actions(&self) -> impl Iterator<Item = &String> {
        self.baseline.actions.iter()
    }
}

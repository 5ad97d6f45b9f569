//! Reports over the register: sprawl, drift toward permanence, precedent (with a proposed
//! baseline change, checked with Cedar), hygiene, break-glass, and framework coverage.
//!
//! Each is a pure function of the register, the rules and the baseline, at the register's
//! `generated_at`; the answer is JSON for the API, the CLI and the UI's dashboard alike.

use std::collections::{BTreeMap, BTreeSet};

use foldhash::HashMap;

use jiff::{SignedDuration, Timestamp};
use serde_json::{Value, json};
use waiver_core::{EntityRef, Exception, IdentityStatus, Kind, State, Waived};
use waiver_engine::{DecisionRequest, Snapshot, Target};

use crate::Register;

/// Which report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    Sprawl,
    Drift,
    Precedent,
    Hygiene,
    BreakGlass,
    Frameworks,
}

impl Report {
    pub const NAMES: &'static [&'static str] =
        &["sprawl", "drift", "precedent", "hygiene", "break-glass", "frameworks"];

    /// Parses a report name; the error lists the known ones.
    pub fn parse(s: &str) -> Result<Self, String> {
        Ok(match s {
            "sprawl" => Self::Sprawl,
            "drift" => Self::Drift,
            "precedent" => Self::Precedent,
            "hygiene" => Self::Hygiene,
            "break-glass" => Self::BreakGlass,
            "frameworks" => Self::Frameworks,
            other => {
                return Err(format!(
                    "`{}` is not a report; expected one of {}",
                    waiver_core::id::clip(other),
                    Self::NAMES.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
                ));
            }
        })
    }
}

/// Knobs a caller may turn.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Weeks of history in time series (1 to 520).
    pub weeks: u32,
    /// A live exception that granted nothing for this many days is unused.
    pub unused_days: u32,
    /// Most items any one list in a report carries (each list's full size is in `totals`).
    pub limit: usize,
    /// Distinct subjects that make a cluster a precedent.
    pub min_subjects: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self { weeks: 12, unused_days: 30, min_subjects: 3, limit: 1000 }
    }
}

/// Runs a report.
pub fn run(report: Report, register: &Register, options: Options) -> Value {
    match report {
        Report::Sprawl => sprawl(register, options),
        Report::Drift => drift(register, options),
        Report::Precedent => precedent(register, options),
        Report::Hygiene => hygiene(register, options),
        Report::BreakGlass => break_glass(register, options),
        Report::Frameworks => frameworks(register, options),
    }
}

fn days(d: i64) -> SignedDuration {
    SignedDuration::from_hours(24 * d)
}

/// Whether it ever granted: a break-glass from activation, a planned exception once its
/// first round of approvals was complete.
fn was_granted(e: &Exception) -> bool {
    let first_round = e.approvals.iter().filter(|a| a.round == 0).count();
    e.kind == Kind::BreakGlass || u64::try_from(first_round).unwrap_or(0) >= u64::from(e.approvals_required)
}

/// When it stops (or stopped) being open, from the record alone: a rejection, withdrawal
/// or revocation at its resolution (a revocation and a break-glass end also pull
/// `expires_at` in to that instant), a request that timed out at its timeout, otherwise at
/// `expires_at` (for one still open, in the future).
fn ended_at(e: &Exception) -> Timestamp {
    let mut end = e.expires_at;
    if let Some(resolution) = &e.resolution {
        end = end.min(resolution.at);
    }
    if e.state == State::Expired
        && !was_granted(e)
        && let Some(timeout) = e.request_expires_at
    {
        end = end.min(timeout);
    }
    end
}

/// The most frequent keys first, at most `limit` of them.
fn counts<K: std::fmt::Display + Eq + std::hash::Hash>(items: impl Iterator<Item = K>, limit: usize) -> Vec<Value> {
    // Hashed, not ordered: keys are counted once per record, sorted once per distinct key.
    let mut by: HashMap<K, u64> = HashMap::default();
    for item in items {
        *by.entry(item).or_default() += 1;
    }
    let mut rows: Vec<(String, u64)> = by.into_iter().map(|(k, n)| (k.to_string(), n)).collect();
    rows.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    rows.into_iter().take(limit).map(|(key, n)| json!({"key": key, "count": n})).collect()
}

/// A list cut to `limit` items, counting all: an item past the limit is counted, never
/// rendered (at a million records, rendering what is cut would cost more than the report).
struct Capped {
    items: Vec<Value>,
    total: usize,
    limit: usize,
}

impl Capped {
    fn new(limit: usize) -> Self {
        Self { items: Vec::new(), total: 0, limit }
    }

    fn push(&mut self, item: impl FnOnce() -> Value) {
        self.total += 1;
        if self.items.len() < self.limit {
            self.items.push(item());
        }
    }

    /// The items; the full count goes into `totals` under `name`.
    fn finish(self, name: &str, totals: &mut serde_json::Map<String, Value>) -> Vec<Value> {
        totals.insert(name.to_owned(), self.total.into());
        self.items
    }
}

fn sprawl(r: &Register, options: Options) -> Value {
    let now = r.generated_at;
    let open: Vec<&Exception> = r.records().filter(|e| e.is_open(now)).collect();
    let team = |e: &Exception| r.identity(e).and_then(|i| i.team.as_deref()).unwrap_or("(none)");
    let age_buckets: [(&str, i64); 5] =
        [("< 7d", 7), ("7–30d", 30), ("30–90d", 90), ("90–180d", 180), ("≥ 180d", i64::MAX)];
    let mut ages = vec![0u64; age_buckets.len()];
    for e in &open {
        let age = now.duration_since(e.starts_at.min(now)).as_hours() / 24;
        if let Some(idx) = age_buckets.iter().position(|(_, upto)| age < *upto)
            && let Some(slot) = ages.get_mut(idx)
        {
            *slot += 1;
        }
    }
    // One pass: each exception adds itself to the weeks it was live at the end of (a
    // difference array), and to the weeks it opened and closed in.
    let weeks = options.weeks.clamp(1, 520) as usize;
    let week = days(7).as_secs();
    let first_end = now - days(7 * (weeks as i64 - 1));
    // The index of the first week ending at or after `t` (may be out of range either way).
    let week_at_or_after = |t: Timestamp| -> i64 {
        let offset = t.duration_since(first_end).as_secs();
        if offset <= 0 { offset / week } else { (offset + week - 1) / week }
    };
    let mut live = vec![0i64; weeks + 1];
    let (mut opened, mut closed) = (vec![0u64; weeks], vec![0u64; weeks]);
    let n = weeks as i64;
    for e in r.records() {
        if was_granted(e) {
            // Live at week ends in [starts_at, ended_at).
            let from = week_at_or_after(e.starts_at).clamp(0, n);
            let to = week_at_or_after(ended_at(e)).clamp(0, n);
            if from < to {
                if let Some(n) = live.get_mut(from as usize) {
                    *n += 1;
                }
                if let Some(n) = live.get_mut(to as usize) {
                    *n -= 1;
                }
            }
        }
        // A week holds the instants in (end - 7d, end].
        for (t, slot) in [(e.created_at, &mut opened), (ended_at(e), &mut closed)] {
            if t <= now
                && let Ok(idx) = usize::try_from(week_at_or_after(t))
                && let Some(c) = slot.get_mut(idx)
            {
                *c += 1;
            }
        }
    }
    let mut series = Vec::new();
    let mut active = 0i64;
    for idx in 0..weeks {
        active += live.get(idx).copied().unwrap_or(0);
        let end = first_end + days(7 * idx as i64);
        series.push(json!({"week_ending": end.to_string(), "active": active,
                           "opened": opened.get(idx), "closed": closed.get(idx)}));
    }
    let limit = options.limit;
    json!({
        "report": "sprawl",
        "generated_at": now.to_string(),
        "open": open.len(),
        "active": r.records().filter(|e| e.grants(now)).count(),
        "expiring": {
            "within_24h": open.iter().filter(|e| e.expires_at <= now + days(1)).count(),
            "within_7d": open.iter().filter(|e| e.expires_at <= now + days(7)).count(),
        },
        "by_state": counts(r.records().map(|e| e.effective_state(now)), limit),
        "by_waived_rule": counts(open.iter().flat_map(|e| e.waives.iter()), limit),
        "by_identity": counts(open.iter().map(|e| &e.subject), limit),
        "by_owner": counts(open.iter().map(|e| &e.owner), limit),
        "by_team": counts(open.iter().map(|e| team(e)), limit),
        "by_kind": counts(open.iter().map(|e| e.kind), limit),
        "by_risk": counts(open.iter().map(|e| e.risk), limit),
        "by_credential_type": counts(open.iter().map(|e| e.credential_type), limit),
        "age": age_buckets.iter().zip(&ages).map(|((label, _), n)| json!({"bucket": label, "count": n})).collect::<Vec<_>>(),
        "weekly": series,
    })
}

/// Actions, resources and waived rules, as one comparable key.
type ScopeKey<'a> = (BTreeSet<&'a str>, BTreeSet<&'a EntityRef>, BTreeSet<&'a Waived>);

/// Whether two exceptions fall in the same precedent cluster, without building keys.
fn same_cluster(a: (&Waived, &Exception), b: (&Waived, &Exception)) -> bool {
    fn set_eq<T: PartialEq>(x: &[T], y: &[T]) -> bool {
        x.iter().all(|i| y.contains(i)) && y.iter().all(|i| x.contains(i))
    }
    fn types(e: &Exception) -> Vec<&waiver_core::EntityType> {
        e.scope.resources.iter().map(|r| r.entity.entity_type()).collect()
    }
    a.0 == b.0 && set_eq(&a.1.scope.actions, &b.1.scope.actions) && {
        let (ta, tb) = (
            a.1.scope.resources.iter().map(|r| r.entity.entity_type()),
            b.1.scope.resources.iter().map(|r| r.entity.entity_type()),
        );
        // Usually one resource type each: compare without allocating when both are uniform.
        match (uniform(ta), uniform(tb)) {
            (Some(x), Some(y)) => x == y,
            _ => set_eq(&types(a.1), &types(b.1)),
        }
    }
}

/// The one value every item has, if they all have the same one (`None` for none or mixed).
fn uniform<T: PartialEq>(mut items: impl Iterator<Item = T>) -> Option<T> {
    let first = items.next()?;
    items.all(|i| i == first).then_some(first)
}

/// A hash of a precedent cluster's key: the waived rule, the actions and the resource types,
/// the same whatever their order.
fn cluster_hash(e: &Exception, waived: &Waived) -> u64 {
    use std::hash::BuildHasher as _;
    let state = foldhash::fast::FixedState::with_seed(1);
    // Sets: the least and greatest item hash, the same whatever the order and however
    // often an item repeats; equal hashes are confirmed with the key itself.
    let actions = spread(e.scope.actions.iter().map(|a| state.hash_one(a)));
    let types = spread(e.scope.resources.iter().map(|r| state.hash_one(r.entity.entity_type())));
    state.hash_one((waived, actions, types))
}

/// The least and greatest of some hashes: a set's fingerprint, blind to order and repeats.
fn spread(hashes: impl Iterator<Item = u64>) -> (u64, u64) {
    hashes.fold((u64::MAX, 0), |(lo, hi), h| (lo.min(h), hi.max(h)))
}

/// A hash of the subject and [`scope_key`], the same whatever the order of the items.
fn scope_hash(e: &Exception) -> u64 {
    use std::hash::BuildHasher as _;
    let state = foldhash::fast::FixedState::with_seed(0);
    // Order- and repeat-free: each part by its least and greatest item hash (equal hashes
    // are confirmed with the key itself).
    let actions = spread(e.scope.actions.iter().map(|a| state.hash_one(a)));
    let resources = spread(e.scope.resources.iter().map(|r| state.hash_one(&r.entity)));
    let waives = spread(e.waives.iter().map(|w| state.hash_one(w)));
    state.hash_one((&e.subject, actions, resources, waives))
}

fn scope_key(e: &Exception) -> ScopeKey<'_> {
    (
        e.scope.actions.iter().map(String::as_str).collect(),
        e.scope.resources.iter().map(|r| &r.entity).collect(),
        e.waives.iter().collect(),
    )
}

fn drift(r: &Register, options: Options) -> Value {
    let now = r.generated_at;
    let mut renewed_refs: Vec<&Exception> = r.records().filter(|e| e.renewals > 0).collect();
    renewed_refs.sort_by(|a, b| b.renewals.cmp(&a.renewals).then(a.id.cmp(&b.id)));
    let mut renewed = Capped::new(options.limit);
    for e in renewed_refs {
        renewed.push(|| {
            json!({"id": e.id.to_string(), "subject": e.subject.to_string(),
                   "renewals": e.renewals, "state": e.effective_state(now).to_string()})
        });
    }
    let mut beyond = Capped::new(options.limit);
    for e in r.records().filter(|e| e.renewals > 0) {
        let (max, rule) = r.rules.max_duration(e.kind, e.risk, e.credential_type);
        let lived = e.expires_at.duration_since(e.starts_at);
        if lived > max.duration() {
            beyond.push(|| {
                json!({"id": e.id.to_string(), "subject": e.subject.to_string(), "renewals": e.renewals,
                       "lifetime_days": lived.as_hours() / 24, "rule": rule, "rule_max_days": max.duration().as_hours() / 24})
            });
        }
    }
    // The same subject asking again for the same scope after an earlier one ended: grouped
    // by a hash of subject and scope first (no allocation per exception); equal keys are
    // confirmed within a group.
    let mut groups: HashMap<u64, Vec<&Exception>> = HashMap::default();
    for e in r.records() {
        groups.entry(scope_hash(e)).or_default().push(e);
    }
    let mut pairs = Vec::new();
    for members in groups.values().filter(|m| m.len() > 1) {
        for (idx, later) in members.iter().enumerate() {
            let earlier = members.get(..idx).unwrap_or_default().iter().find(|e| {
                e.subject == later.subject
                    && was_granted(e)
                    && ended_at(e) <= later.created_at
                    && scope_key(e) == scope_key(later)
            });
            if let Some(earlier) = earlier {
                pairs.push((*later, earlier.id));
            }
        }
    }
    pairs.sort_by_key(|(later, _)| later.id);
    let mut recreated = Capped::new(options.limit);
    for (later, after) in pairs {
        recreated.push(|| {
            json!({"id": later.id.to_string(), "after": after.to_string(),
                   "subject": later.subject.to_string(), "state": later.effective_state(now).to_string()})
        });
    }
    let mut totals = serde_json::Map::new();
    json!({
        "report": "drift",
        "generated_at": now.to_string(),
        "renewed": renewed.finish("renewed", &mut totals),
        "beyond_rule_maximum": beyond.finish("beyond_rule_maximum", &mut totals),
        "recreated_after_end": recreated.finish("recreated_after_end", &mut totals),
        "totals": totals,
    })
}

/// A Cedar entity literal: `Type::"id"`, the id escaped as Cedar strings are.
fn cedar_entity(e: &EntityRef) -> String {
    format!("{}::{}", e.entity_type(), serde_json::Value::String(e.id().to_owned()))
}

fn cedar_set(items: impl IntoIterator<Item = String>) -> String {
    format!("[{}]", items.into_iter().collect::<Vec<_>>().join(", "))
}

fn precedent(r: &Register, options: Options) -> Value {
    let now = r.generated_at;
    // Clusters: exceptions open now, or ended within the history window, that waive the same
    // rule for the same actions on the same types of resource.
    let since = now - days(7 * i64::from(options.weeks.clamp(1, 520)));
    type Key<'a> = (&'a Waived, BTreeSet<&'a str>, BTreeSet<&'a str>);
    fn key<'a>(e: &'a Exception, waived: &'a Waived) -> Key<'a> {
        let actions: BTreeSet<&str> = e.scope.actions.iter().map(String::as_str).collect();
        let types: BTreeSet<&str> = e.scope.resources.iter().map(|res| res.entity.entity_type().as_str()).collect();
        (waived, actions, types)
    }
    // Gathered by a hash of the key (no allocation per exception), then split by the key
    // itself within each hash group (a collision costs a comparison, never a wrong cluster).
    let mut hashed: HashMap<u64, Vec<(&Waived, &Exception)>> = HashMap::default();
    for e in r.records() {
        // Only what still grants, for identities still in service: a proposal that fixes the
        // baseline for good must not write in an offboarded identity or a lapsed need. The
        // window still bounds how far back a live exception was filed.
        let live = matches!(e.effective_state(now), State::Approved | State::Active | State::Suspended);
        let active = r.identity(e).is_some_and(|i| i.status == waiver_core::IdentityStatus::Active);
        if !live || !active || e.created_at < since {
            continue;
        }
        for waived in e.waives.iter().filter(|w| !w.is_control()) {
            hashed.entry(cluster_hash(e, waived)).or_default().push((waived, e));
        }
    }
    let mut clusters: HashMap<Key, Vec<&Exception>> = HashMap::default();
    for group in hashed.into_values() {
        let mut group = group.into_iter();
        let Some((first_waived, first)) = group.next() else { continue };
        let mut same = vec![first];
        for (waived, e) in group {
            if same_cluster((first_waived, first), (waived, e)) {
                same.push(e);
            } else {
                clusters.entry(key(e, waived)).or_default().push(e);
            }
        }
        clusters.entry(key(first, first_waived)).or_default().extend(same);
    }
    // Hash groups with equal keys merged above in no set order: members back in id order.
    for members in clusters.values_mut() {
        members.sort_by_key(|e| e.id);
    }
    let mut clusters: Vec<(Key, Vec<&Exception>)> = clusters.into_iter().collect();
    clusters.sort_by(|a, b| a.0.cmp(&b.0));
    // Cheap bound first: a cluster with fewer exceptions than the minimum has fewer subjects.
    clusters.retain(|(_, members)| members.len() >= options.min_subjects.max(2));
    // Distinct subjects are found once per cluster, on the worker that proposes for it.
    let render = |((waived, actions, types), members): &(Key, Vec<&Exception>)| {
        let subjects = distinct_subjects(members);
        if subjects.len() < options.min_subjects.max(2) {
            return None;
        }
        let waived = waived.to_string();
        let actions: BTreeSet<String> = actions.iter().map(|a| (*a).to_owned()).collect();
        let proposal = propose(r, &waived, &actions, members, &subjects, options.limit);
        Some(json!({
            "waives": waived,
            "actions": actions,
            "resource_types": types,
            "n_subjects": subjects.len(),
            "n_exceptions": members.len(),
            "subjects": subjects.iter().take(options.limit).map(ToString::to_string).collect::<Vec<_>>(),
            "exceptions": members.iter().take(options.limit).map(|e| e.id.to_string()).collect::<Vec<_>>(),
            "proposal": proposal,
        }))
    };
    // Each cluster's proposal is independent (its own changed baseline, its own Cedar
    // checks): spread over the cores, in order.
    let threads = std::thread::available_parallelism().map_or(1, std::num::NonZero::get).clamp(1, 8);
    let chunk = clusters.len().div_ceil(threads).max(1);
    let found: Vec<Value> = std::thread::scope(|scope| {
        let workers: Vec<_> = clusters
            .chunks(chunk)
            .map(|part| scope.spawn(move || part.iter().filter_map(render).collect::<Vec<Value>>()))
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap_or_else(|_| vec![json!({"error": "a proposal could not be computed"})]))
            .collect()
    });
    json!({"report": "precedent", "generated_at": now.to_string(), "min_subjects": options.min_subjects, "clusters": found})
}

/// The baseline change that would make a cluster's exceptions unnecessary, and the check:
/// the proposed baseline alone (no exceptions) must allow every action on every resource
/// each exception covers. A waived forbid gets an `unless` carving the cluster out; when
/// the baseline would still not permit those requests (the forbid was not all that stood
/// in the way), a permit for exactly the cluster is proposed with it. A waived default
/// deny gets that permit alone.
/// The members' subjects, each once, in order (a sort of references beats a tree of them).
fn distinct_subjects<'a>(members: &[&'a Exception]) -> Vec<&'a EntityRef> {
    let mut subjects: Vec<&EntityRef> = members.iter().map(|e| &e.subject).collect();
    subjects.sort_unstable();
    subjects.dedup();
    subjects
}

/// Above this many subjects, a proposal names a group rather than listing them: always,
/// for a cluster. A group in the entity store is what the members share, so the change
/// stays one line of policy and membership is managed as data (leaving the group removes
/// the access), rather than a permanent allowlist written into a policy.
const GROUP_ABOVE: usize = 1;
/// The entity type of a proposed group.
const PRECEDENT_GROUP: &str = "WaiverPrecedent";

/// Most members of one cluster the proposal is evaluated against.
const CHECK_ALL: usize = 32;

fn propose(
    r: &Register,
    waived: &str,
    actions: &BTreeSet<String>,
    members: &[&Exception],
    subjects: &[&EntityRef],
    limit: usize,
) -> Value {
    let Some(baseline) = r.baseline.as_deref() else {
        return json!({"error": "no baseline is loaded, so no change can be proposed"});
    };
    let first = members.first().map_or(0, |e| e.id.number());
    // The principals become a group (an entity change plus `principal in` the group): it is
    // what they share, and a set literal of thousands would be unreadable and rebuilt by
    // Cedar on every evaluation. A baseline with a schema would refuse the undeclared group
    // type, so it keeps the list.
    let group_id = format!("{waived}-{first}");
    let grouped = subjects.len() > GROUP_ABOVE && baseline.sources().1.is_none();
    let group = grouped.then(|| waiver_engine::GroupChange {
        group: (PRECEDENT_GROUP, &group_id),
        members: subjects.iter().map(|s| (s.entity_type().as_str(), s.id())).collect(),
    });
    let principals = match &group {
        Some(_) => format!("{PRECEDENT_GROUP}::{}", Value::String(group_id.clone())),
        None => cedar_set(subjects.iter().map(|s| cedar_entity(s)).collect::<BTreeSet<_>>()),
    };
    let membership = group.as_ref().map(|_| {
        json!({"change": "add_members", "group": principals, "n_members": subjects.len(),
               "members": subjects.iter().take(limit).map(|s| cedar_entity(s)).collect::<Vec<_>>()})
    });
    let action_set = cedar_set(actions.iter().map(|a| format!("Action::{}", Value::String(a.clone()))));
    let resources: BTreeSet<String> =
        members.iter().flat_map(|e| e.scope.resources.iter().map(|res| cedar_entity(&res.entity))).collect();
    let cluster =
        format!("principal in {principals} && action in {action_set} && resource in {}", cedar_set(resources));
    let permit_id = format!("permit-precedent-{first}");
    let permit = format!("@id(\"{permit_id}\")\npermit (principal, action, resource)\nwhen {{ {cluster} }};");

    // Candidate changes, smallest first: (the changes as shown, policies replaced, added).
    let added = json!({"change": "add", "policy_id": permit_id, "policy": permit});
    let carved;
    type Candidate<'a> = (Vec<Value>, Vec<(&'a str, &'a str)>, Vec<&'a str>);
    let mut candidates: Vec<Candidate> = Vec::new();
    if waived == Waived::DefaultDeny.to_string() {
        candidates.push((vec![added], vec![], vec![&permit]));
    } else {
        let Some(current) = baseline.policy_text(waived) else {
            return json!({"error": format!("the baseline has no policy `{waived}` any more")});
        };
        carved = format!("{}\nunless {{ {cluster} }};", current.trim_end().trim_end_matches(';'));
        let replaced = json!({"change": "replace", "policy_id": waived, "policy": carved});
        candidates.push((vec![replaced.clone()], vec![(waived, &carved)], vec![]));
        candidates.push((vec![replaced, added], vec![(waived, &carved)], vec![&permit]));
    }
    // Every member is checked in a cluster of up to CHECK_ALL; a larger one is checked on
    // an even sample of that many (first and last included) and says so.
    let checked: Vec<&Exception> = if members.len() <= CHECK_ALL {
        members.to_vec()
    } else {
        (0..CHECK_ALL).filter_map(|k| members.get(k * (members.len() - 1) / (CHECK_ALL - 1)).copied()).collect()
    };
    let mut best: Option<(Vec<Value>, Vec<String>, Vec<String>)> = None;
    // The group's memberships once, shared by every candidate.
    let grouped;
    let base = match &group {
        Some(change) => match baseline.with_changes(&[], &[], Some(change)) {
            Ok(b) => {
                grouped = b;
                &grouped
            }
            Err(e) => return json!({"error": format!("the proposed group cannot be built: {e}")}),
        },
        None => baseline,
    };
    for (changes, replace, add) in candidates {
        // The baseline's own policies, schema and entities, with the proposed changes.
        let proposed = match base.with_changes(&replace, &add, None) {
            Ok(b) => b,
            Err(e) => return json!({"changes": changes, "error": format!("the proposal does not parse: {e}")}),
        };
        let snapshot = Snapshot::new(std::sync::Arc::new(proposed), std::iter::empty::<Exception>());
        let (covered, still): (Vec<&Exception>, Vec<&Exception>) =
            checked.iter().copied().partition(|e| allowed_by_baseline_alone(&snapshot, e));
        let ids = |list: Vec<&Exception>| list.iter().map(|e| e.id.to_string()).collect::<Vec<_>>();
        let done = still.is_empty();
        if best.as_ref().is_none_or(|(_, c, _)| covered.len() > c.len()) {
            best = Some((changes, ids(covered), ids(still)));
        }
        if done {
            break;
        }
    }
    let Some((mut changes, covered, still)) = best else { return json!({"error": "nothing to propose"}) };
    if let Some(membership) = membership {
        changes.insert(0, membership);
    }
    let sampled = checked.len() < members.len();
    json!({
        "changes": changes,
        "makes_unnecessary": covered,
        "still_needed": still,
        // Unchecked members are in neither list: the claim is only what Cedar was asked.
        "not_checked": members.len() - checked.len(),
        "checked": if sampled {
            format!("evaluated with Cedar on an even sample of {} of the {} exceptions: the proposed baseline alone, without any exception, allows every action on every resource in each sampled exception's scope", checked.len(), members.len())
        } else {
            "evaluated with Cedar: the proposed baseline alone, without any exception, allows every action on every resource in the scope of each exception it makes unnecessary".to_owned()
        },
    })
}

/// Whether the baseline alone allows every action on every resource in the exception's scope.
fn allowed_by_baseline_alone(snapshot: &Snapshot, e: &Exception) -> bool {
    e.scope.actions.iter().all(|action| {
        e.scope.resources.iter().all(|res| {
            let request = DecisionRequest {
                subject: Target {
                    entity_type: e.subject.entity_type().to_string(),
                    id: e.subject.id().to_owned(),
                    properties: None,
                },
                action: action.clone(),
                resource: Target {
                    entity_type: res.entity.entity_type().to_string(),
                    id: res.entity.id().to_owned(),
                    properties: None,
                },
                context: json!({}),
            };
            snapshot.baseline_only(&request).unwrap_or(false)
        })
    })
}

fn hygiene(r: &Register, options: Options) -> Value {
    let now = r.generated_at;
    let quiet = days(i64::from(options.unused_days));
    let row = |e: &Exception, why: String, suggestion: &str| {
        json!({"id": e.id.to_string(), "subject": e.subject.to_string(), "owner": e.owner.to_string(),
               "state": e.effective_state(now).to_string(), "finding": why, "suggestion": suggestion})
    };
    let limit = options.limit;
    let (mut unused, mut broad, mut weak, mut orphaned) =
        (Capped::new(limit), Capped::new(limit), Capped::new(limit), Capped::new(limit));
    for e in r.records().filter(|e| e.grants(now)) {
        let since = e.usage.last_used_at.unwrap_or(e.starts_at);
        if now.duration_since(since) >= quiet {
            let why = match e.usage.last_used_at {
                Some(t) => format!("last granted a decision {} days ago", now.duration_since(t).as_hours() / 24),
                None => format!("never granted a decision in {} days", now.duration_since(e.starts_at).as_hours() / 24),
            };
            unused.push(|| row(e, why, "revoke"));
        }
        let wide_actions = e.scope.actions.iter().any(|a| a == "*") || e.scope.actions.len() > 3;
        let wide_resources = e.scope.resources.iter().any(|res| res.descendants) || e.scope.resources.len() > 3;
        // What its grants used of its scope (recorded since usage kept a bitmap): less than
        // it covers is a narrower scope to propose, however often it is used.
        let used = e.scope.used(e.usage.scope_used);
        let (n_actions, n_resources) = (e.scope.actions.len(), e.scope.resources.len());
        if e.usage.count > 0
            && e.usage.scope_used != 0
            && (used.actions.len() < n_actions || used.resources.len() < n_resources)
        {
            broad.push(|| {
                let mut found = row(
                    e,
                    format!(
                        "used {} of {n_actions} action(s) and {} of {n_resources} resource(s) in {} grant(s)",
                        used.actions.len(),
                        used.resources.len(),
                        e.usage.count
                    ),
                    "narrow the scope to what is used",
                );
                if let Value::Object(map) = &mut found {
                    map.insert(
                        "narrowed_scope".into(),
                        json!({
                            "actions": used.actions,
                            "resources": used.resources.iter().map(|r| json!({
                                "entity": r.entity.to_string(), "descendants": r.descendants})).collect::<Vec<_>>(),
                        }),
                    );
                    if let Some(pairs) = &used.pairs {
                        let pairs: Vec<Value> =
                            pairs.iter().map(|(a, r)| json!({"action": a, "resource": r.entity.to_string()})).collect();
                        map.insert("used_pairs".into(), Value::Array(pairs));
                    }
                }
                found
            });
        } else if (wide_actions || wide_resources) && e.usage.count == 0 {
            broad.push(|| {
                row(
                    e,
                    format!(
                        "covers {} action(s) on {} resource(s){} and has granted nothing",
                        e.scope.actions.len(),
                        e.scope.resources.len(),
                        if wide_resources { " including descendants" } else { "" }
                    ),
                    "narrow the scope to what is used, or revoke",
                )
            });
        }
    }
    for e in r.records().filter(|e| e.is_open(now)) {
        let min = *r.rules.controls_min.get(e.risk);
        let required = r.rules.controls_required.get(e.risk);
        let kinds: BTreeSet<_> = e.compensating_controls.iter().map(|c| c.kind).collect();
        let missing: Vec<String> = required.iter().filter(|k| !kinds.contains(k)).map(ToString::to_string).collect();
        let enforced = e.compensating_controls.iter().filter(|c| c.enforced).count();
        let mut why = Vec::new();
        if (e.compensating_controls.len() as u64) < u64::from(min) {
            why.push(format!("{} control(s) where {} risk needs {min}", e.compensating_controls.len(), e.risk));
        }
        if !missing.is_empty() {
            why.push(format!("missing required {}", missing.join(", ")));
        }
        if matches!(e.risk, waiver_core::Risk::High | waiver_core::Risk::Critical) && enforced == 0 {
            why.push(format!("no control is enforced by a system for a {} risk (all are attested)", e.risk));
        }
        if !why.is_empty() {
            weak.push(|| row(e, why.join("; "), "add or enforce compensating controls"));
        }
        match r.identity(e) {
            None => {
                orphaned.push(|| row(e, "its subject is not in the identity inventory (no owner)".into(), "revoke"))
            }
            Some(i) if i.status == IdentityStatus::Offboarded => {
                orphaned.push(|| row(e, format!("its subject `{}` is offboarded", i.entity), "revoke"));
            }
            Some(_) => {}
        }
    }
    let mut overdue = Capped::new(limit);
    for e in r.records().filter(|e| e.review_overdue(now)) {
        overdue.push(|| row(e, format!("review was due {}", e.review.next_due), "attest or revoke"));
    }
    let mut post_use = Capped::new(limit);
    for e in r.records().filter(|e| e.post_use_review_overdue(now)) {
        post_use.push(|| {
            let due = e.post_use_review_due().map(|t| t.to_string()).unwrap_or_default();
            row(e, format!("post-use review was due {due}"), "review the break-glass use")
        });
    }
    let mut totals = serde_json::Map::new();
    json!({
        "report": "hygiene",
        "generated_at": now.to_string(),
        "unused_days": options.unused_days,
        "unused": unused.finish("unused", &mut totals),
        "over_broad": broad.finish("over_broad", &mut totals),
        "weak_controls": weak.finish("weak_controls", &mut totals),
        "reviews_overdue": overdue.finish("reviews_overdue", &mut totals),
        "post_use_reviews_overdue": post_use.finish("post_use_reviews_overdue", &mut totals),
        "offboarded_or_ownerless": orphaned.finish("offboarded_or_ownerless", &mut totals),
        "totals": totals,
    })
}

fn break_glass(r: &Register, options: Options) -> Value {
    let now = r.generated_at;
    let mut activations = Capped::new(options.limit);
    let mut by_requester: BTreeMap<String, u64> = BTreeMap::new();
    let mut by_subject: BTreeMap<String, u64> = BTreeMap::new();
    let (mut durations, mut to_review) = (Vec::new(), Vec::new());
    for e in r.records().filter(|e| e.kind == Kind::BreakGlass) {
        // Ending a break-glass pulls `expires_at` in to that instant.
        let ended = (now >= e.expires_at).then_some(e.expires_at);
        let reviewed = e.post_use_review.as_ref().and_then(|p| p.reviewed_at);
        let minutes = ended.map(|t| t.duration_since(e.starts_at).as_secs() / 60);
        let review_hours = ended.zip(reviewed).map(|(end, rev)| rev.duration_since(end).as_secs() / 3600);
        durations.extend(minutes);
        to_review.extend(review_hours);
        *by_requester.entry(e.requester.to_string()).or_default() += 1;
        *by_subject.entry(e.subject.to_string()).or_default() += 1;
        activations.push(|| json!({
            "id": e.id.to_string(), "subject": e.subject.to_string(), "activated_by": e.requester.to_string(),
            "activated_at": e.starts_at.to_string(), "ended_at": ended.map(|t| t.to_string()),
            "duration_minutes": minutes, "reviewed_by": e.post_use_review.as_ref().and_then(|p| p.reviewed_by.as_ref()).map(ToString::to_string),
            "hours_to_review": review_hours, "state": e.effective_state(now).to_string(),
            "review_overdue": e.post_use_review_overdue(now),
        }));
    }
    let median = |mut xs: Vec<i64>| {
        xs.sort_unstable();
        xs.get(xs.len() / 2).copied()
    };
    let repeat = |by: BTreeMap<String, u64>| {
        let mut rows: Vec<(String, u64)> = by.into_iter().filter(|(_, n)| *n > 1).collect();
        rows.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        rows.into_iter().take(options.limit).map(|(k, n)| json!({"key": k, "count": n})).collect::<Vec<_>>()
    };
    let mut totals = serde_json::Map::new();
    json!({
        "report": "break-glass",
        "generated_at": now.to_string(),
        "activations": activations.total,
        "active_now": r.records().filter(|e| e.kind == Kind::BreakGlass && e.grants(now)).count(),
        "median_duration_minutes": median(durations),
        "median_hours_to_review": median(to_review),
        "repeat_activators": repeat(by_requester),
        "repeat_subjects": repeat(by_subject),
        "items": activations.finish("items", &mut totals),
        "totals": totals,
    })
}

fn frameworks(r: &Register, options: Options) -> Value {
    let now = r.generated_at;
    // One pass: each exception counts toward the controls it is mapped to.
    let mut tally: HashMap<&str, (u64, u64, Vec<String>)> = HashMap::default();
    for e in r.records() {
        let open = e.is_open(now);
        for key in &e.frameworks {
            let (all, n_open, ids) = tally.entry(key.as_str()).or_default();
            *all += 1;
            if open {
                *n_open += 1;
                if ids.len() < options.limit {
                    ids.push(e.id.to_string());
                }
            }
        }
    }
    let mut rows = Vec::new();
    for framework in waiver_core::frameworks::FRAMEWORKS {
        let mut controls_out = Vec::new();
        let mut touched = 0;
        for control in waiver_core::frameworks::CONTROLS.iter().filter(|c| c.framework() == framework.key) {
            let (all, open, ids) = tally.remove(control.key).unwrap_or_default();
            touched += usize::from(all > 0);
            controls_out.push(json!({
                "key": control.key, "id": control.id(), "title": control.title, "relevance": control.relevance,
                "exceptions": all, "open": open, "open_ids": ids,
            }));
        }
        rows.push(json!({"framework": framework.key, "title": framework.title,
                         "controls_with_exceptions": touched, "controls": controls_out}));
    }
    json!({"report": "frameworks", "generated_at": now.to_string(), "frameworks": rows})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_set_fingerprint_ignores_order_and_repeats_but_not_members() {
        let of = |items: &[u64]| spread(items.iter().copied());
        assert_eq!(of(&[3, 1, 2]), of(&[1, 2, 3, 3, 1]));
        assert_ne!(of(&[1, 2]), of(&[1, 3]));
        assert_eq!(of(&[]), (u64::MAX, 0));
    }
}

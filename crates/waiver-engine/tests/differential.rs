//! Differential testing against Cedar itself.
//!
//! A seeded generator makes baselines (scopes with `==`, `in`, `is`; action groups in
//! entities.json or in a schema; an optional namespace; `when`/`unless` reading attributes
//! of other entities, `has`, sets, extension types in the context), entity stores and
//! requests. For every case waiver's answer with no exceptions must equal what
//! cedar-policy's own `Authorizer` answers over the full `Entities` parsed with the schema —
//! decision and reasons — except where waiver deliberately fails closed (a forbid that
//! errors counts as fired). With generated exceptions, the answer must equal DESIGN.md §4
//! computed from Cedar's answer by `oracle` below, written apart from the engine.
//!
//! Budget: `CASES` cases (about 100,000) from a fixed seed, so a run is repeatable; set
//! `WAIVER_DIFF_SEED` to explore others. A divergence is written to
//! `tests/corpus/divergences/` (as a case to replay) and fails the test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, reason = "tests")]

use std::{collections::BTreeSet, fmt::Write as _, sync::Arc};

use cedar_policy::{Authorizer, Context, Decision as CedarDecision, Entities, EntityUid, PolicySet, Request, Schema};
use jiff::Timestamp;
use serde_json::{Value, json};
use waiver_core::{EntityRef, Exception, Kind, ResourceScope, Scope, State, Waived};
use waiver_engine::{Baseline, DEFAULT_DENY, DecisionRequest, Snapshot, Target};

mod common;

/// Baselines generated, and requests asked of each.
const BASELINES: usize = 400;
const REQUESTS_PER_BASELINE: usize = 250;

/// A tiny deterministic generator (SplitMix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// One generated baseline with what its requests may name.
struct World {
    ns: Option<&'static str>,
    schema: Option<String>,
    policies: String,
    /// Policy `@id`s in order, with their effect.
    ids: Vec<(String, bool)>,
    entities: String,
}

const USERS: usize = 5;
const GROUPS: usize = 3;
const FOLDERS: usize = 3;
const DOCS: usize = 6;

impl World {
    fn ty(&self, name: &str) -> String {
        match self.ns {
            Some(ns) => format!("{ns}::{name}"),
            None => name.to_owned(),
        }
    }

    fn uid(&self, ty: &str, id: &str) -> String {
        format!("{}::\"{id}\"", self.ty(ty))
    }

    fn action(&self, name: &str) -> String {
        format!("{}::\"{name}\"", self.ty("Action"))
    }
}

fn entity(world_ns: Option<&str>, ty: &str, id: &str, attrs: Value, parents: &[(&str, String)]) -> Value {
    let qualify = |t: &str| match world_ns {
        Some(ns) => format!("{ns}::{t}"),
        None => t.to_owned(),
    };
    json!({
        "uid": {"type": qualify(ty), "id": id},
        "attrs": attrs,
        "parents": parents.iter().map(|(t, id)| json!({"type": qualify(t), "id": id})).collect::<Vec<_>>(),
    })
}

fn generate(rng: &mut Rng) -> World {
    let ns = rng.chance(30).then_some("App");
    let with_schema = rng.chance(50);
    let mut world = World { ns, schema: None, policies: String::new(), ids: Vec::new(), entities: String::new() };
    // Entities: users in groups (nested), folders owned by users, docs in folders.
    let mut list = Vec::new();
    for g in 0..GROUPS {
        let parents: Vec<(&str, String)> =
            if g + 1 < GROUPS && rng.chance(50) { vec![("Group", format!("g{}", g + 1))] } else { vec![] };
        list.push(entity(ns, "Group", &format!("g{g}"), json!({}), &parents));
    }
    for u in 0..USERS {
        let parents: Vec<(&str, String)> =
            (0..GROUPS).filter(|_| rng.chance(40)).map(|g| ("Group", format!("g{g}"))).collect();
        let attrs = json!({"dept": *rng.pick(&["eng", "ops", "fin"]), "level": rng.below(5) as i64});
        list.push(entity(ns, "User", &format!("u{u}"), attrs, &parents));
    }
    for f in 0..FOLDERS {
        let owner = format!("u{}", rng.below(USERS));
        let owner_type = world.ty("User");
        let attrs = json!({"owner": {"__entity": {"type": owner_type, "id": owner}}});
        list.push(entity(ns, "Folder", &format!("f{f}"), attrs, &[]));
    }
    for d in 0..DOCS {
        let folder = format!("f{}", rng.below(FOLDERS));
        let folder_type = world.ty("Folder");
        let mut attrs = json!({
            "folder": {"__entity": {"type": folder_type, "id": folder}},
            "tags": (0..rng.below(3)).map(|i| format!("t{i}")).collect::<Vec<_>>(),
        });
        if rng.chance(60) {
            attrs["env"] = json!(*rng.pick(&["prod", "dev"]));
        }
        list.push(entity(ns, "Doc", &format!("d{d}"), attrs, &[("Folder", folder)]));
    }
    // Action groups: in a schema, or in entities.json.
    let grouped = rng.chance(70);
    if with_schema {
        let groups = if grouped {
            "action writes; action delete, write in [writes] appliesTo { principal: User, resource: Doc, context: Ctx };"
        } else {
            "action delete, write appliesTo { principal: User, resource: Doc, context: Ctx };"
        };
        let body = format!(
            "entity Group in [Group]; entity User in [Group] {{ dept: String, level: Long }};\n\
             entity Folder {{ owner: User }}; entity Doc in [Folder] {{ folder: Folder, env?: String, tags: Set<String> }};\n\
             type Ctx = {{ ip: ipaddr, n: Long }};\n\
             action read appliesTo {{ principal: User, resource: Doc, context: Ctx }};\n{groups}"
        );
        world.schema = Some(match ns {
            Some(ns) => format!("namespace {ns} {{ {body} }}"),
            None => body,
        });
    } else {
        let action_type = world.ty("Action");
        for name in ["read", "write", "delete", "writes"] {
            let parents = if grouped && (name == "write" || name == "delete") {
                vec![json!({"type": action_type, "id": "writes"})]
            } else {
                vec![]
            };
            list.push(json!({"uid": {"type": action_type, "id": name}, "attrs": {}, "parents": parents}));
        }
    }
    world.entities = Value::Array(list).to_string();

    // Policies: scopes and conditions from templates, all valid against the schema.
    let n = 1 + rng.below(6);
    for i in 0..n {
        let permit = i == 0 || rng.chance(55);
        let principal = match rng.below(4) {
            0 => "principal".to_owned(),
            1 => format!("principal == {}", world.uid("User", &format!("u{}", rng.below(USERS)))),
            2 => format!("principal in {}", world.uid("Group", &format!("g{}", rng.below(GROUPS)))),
            _ => format!("principal is {}", world.ty("User")),
        };
        let action = match rng.below(4) {
            0 => "action".to_owned(),
            1 => {
                let name: &&str = rng.pick(&["read", "write", "delete"]);
                format!("action == {}", world.action(name))
            }
            2 if grouped => format!("action in {}", world.action("writes")),
            _ => format!("action in [{}, {}]", world.action("read"), world.action("delete")),
        };
        let resource = match rng.below(4) {
            0 => "resource".to_owned(),
            1 => format!("resource == {}", world.uid("Doc", &format!("d{}", rng.below(DOCS)))),
            2 => format!("resource in {}", world.uid("Folder", &format!("f{}", rng.below(FOLDERS)))),
            _ => format!("resource is {}", world.ty("Doc")),
        };
        let conditions = [
            "",
            "when { resource has env && resource.env == \"prod\" }",
            "unless { resource has env && resource.env == \"dev\" }",
            "when { resource.folder.owner == principal }",
            "when { principal.level > 2 }",
            "when { principal.dept == \"eng\" && resource.tags.contains(\"t0\") }",
            "when { context.ip.isInRange(ip(\"10.0.0.0/8\")) }",
            "unless { context.n < 3 }",
            "when { principal in resource.folder.owner }",
        ];
        let condition = *rng.pick(&conditions);
        let id = format!("p{i}");
        let _ = writeln!(
            world.policies,
            "@id(\"{id}\") {} ({principal}, {action}, {resource}) {condition};",
            if permit { "permit" } else { "forbid" }
        );
        world.ids.push((id, permit));
    }
    world
}

/// One request, as waiver receives it and as Cedar receives it.
struct Asked {
    principal: String,
    action: String,
    resource: String,
    context: Value,
}

fn ask(world: &World, rng: &mut Rng) -> Asked {
    // Mostly known entities, sometimes ones the store does not hold.
    let principal = format!("u{}", rng.below(USERS + 1));
    let resource = format!("d{}", rng.below(DOCS + 1));
    let action = rng.pick(&["read", "write", "delete"]).to_string();
    let ip = *rng.pick(&["10.1.2.3", "192.168.0.9", "10.200.0.1"]);
    let n = rng.below(6) as i64;
    let context = if world.schema.is_some() {
        json!({"ip": ip, "n": n})
    } else {
        json!({"ip": {"__extn": {"fn": "ip", "arg": ip}}, "n": n})
    };
    Asked { principal, action, resource, context }
}

/// Cedar's answer and its reasons: allowed, the policies that determined it, whether any
/// permit matched, and the forbids that errored.
struct CedarAnswer {
    allowed: bool,
    reasons: BTreeSet<String>,
    errored_forbids: BTreeSet<String>,
    permit_matched: bool,
}

struct CedarWorld {
    schema: Option<Schema>,
    policies: PolicySet,
    permits: PolicySet,
    entities: Entities,
    names: std::collections::HashMap<String, String>,
    forbids: BTreeSet<String>,
}

fn cedar_world(world: &World) -> CedarWorld {
    let schema = world.schema.as_deref().map(|s| Schema::from_cedarschema_str(s).unwrap().0);
    let policies: PolicySet = world.policies.parse().unwrap();
    let mut permits = PolicySet::new();
    let mut names = std::collections::HashMap::new();
    let mut forbids = BTreeSet::new();
    for p in policies.policies() {
        let name = p.annotation("id").unwrap().to_owned();
        names.insert(p.id().to_string(), name.clone());
        if p.effect() == cedar_policy::Effect::Permit {
            permits.add(p.clone()).unwrap();
        } else {
            forbids.insert(name);
        }
    }
    let entities = Entities::from_json_str(&world.entities, schema.as_ref()).unwrap();
    CedarWorld { schema, policies, permits, entities, names, forbids }
}

fn cedar_answer(world: &World, cw: &CedarWorld, asked: &Asked) -> Option<(Request, CedarAnswer)> {
    let uid = |s: String| s.parse::<EntityUid>().unwrap();
    let action = uid(world.action(&asked.action));
    let context = match &cw.schema {
        Some(schema) => Context::from_json_value(asked.context.clone(), Some((schema, &action))).ok()?,
        None => Context::from_json_value(asked.context.clone(), None).unwrap(),
    };
    let request = Request::new(
        uid(world.uid("User", &asked.principal)),
        action,
        uid(world.uid("Doc", &asked.resource)),
        context,
        cw.schema.as_ref(),
    )
    .ok()?;
    let response = Authorizer::new().is_authorized(&request, &cw.policies, &cw.entities);
    let name = |id: &cedar_policy::PolicyId| cw.names[&id.to_string()].clone();
    let reasons: BTreeSet<String> = response.diagnostics().reason().map(name).collect();
    let errored_forbids: BTreeSet<String> = response
        .diagnostics()
        .errors()
        .map(|e| match e {
            cedar_policy::AuthorizationError::PolicyEvaluationError(e) => name(e.policy_id()),
        })
        .filter(|n| cw.forbids.contains(n))
        .collect();
    let permit_matched =
        Authorizer::new().is_authorized(&request, &cw.permits, &cw.entities).decision() == CedarDecision::Allow;
    let allowed = response.decision() == CedarDecision::Allow;
    Some((request, CedarAnswer { allowed, reasons, errored_forbids, permit_matched }))
}

/// DESIGN.md §4 from Cedar's answer, written apart from the engine. `None` for a grant by
/// the baseline; `Some(reasons)` for a deny (before exceptions).
fn baseline_oracle(answer: &CedarAnswer) -> (bool, BTreeSet<String>) {
    // waiver fails closed where Cedar would skip an erroring forbid.
    if answer.allowed && answer.errored_forbids.is_empty() {
        return (true, answer.reasons.clone());
    }
    // Denied: the forbids Cedar found satisfied. (Allowed with an errored forbid: none.)
    let mut reasons: BTreeSet<String> = if answer.allowed { BTreeSet::new() } else { answer.reasons.clone() };
    reasons.extend(answer.errored_forbids.iter().cloned());
    if !answer.permit_matched {
        reasons.insert(DEFAULT_DENY.to_owned());
    }
    (false, reasons)
}

/// A generated exception and what the oracle needs to know of it.
struct Generated {
    exception: Exception,
    live_now: bool,
    actions: Vec<String>,
    resource: String,
    descendants: bool,
    condition: Option<String>,
}

fn generated_exception(world: &World, rng: &mut Rng, n: u64, subject: &str, now: Timestamp) -> Generated {
    let expires_at = if rng.chance(80) { "2027-01-01T00:00:00Z" } else { "2026-06-01T00:00:00Z" };
    let expires_at: Timestamp = expires_at.parse().unwrap();
    let state =
        if rng.chance(80) { State::Approved } else { *rng.pick(&[State::Revoked, State::Requested, State::Suspended]) };
    let mut waives: Vec<String> =
        world.ids.iter().filter(|(_, permit)| !permit).map(|(id, _)| id.clone()).filter(|_| rng.chance(70)).collect();
    if rng.chance(40) {
        waives.push(DEFAULT_DENY.to_owned());
    }
    if waives.is_empty() {
        waives.push(DEFAULT_DENY.to_owned());
    }
    let actions: Vec<String> =
        ["read", "write", "delete"].iter().filter(|_| rng.chance(60)).map(|a| (*a).to_owned()).collect();
    let actions = if actions.is_empty() { vec!["read".to_owned()] } else { actions };
    let descendants = rng.chance(40);
    let resource = if descendants {
        world.uid("Folder", &format!("f{}", rng.below(FOLDERS)))
    } else {
        world.uid("Doc", &format!("d{}", rng.below(DOCS)))
    };
    let (rtype, rid) = if descendants {
        (world.ty("Folder"), resource.split('"').nth(1).unwrap().to_owned())
    } else {
        (world.ty("Doc"), resource.split('"').nth(1).unwrap().to_owned())
    };
    let condition = match rng.below(4) {
        0 => Some("principal.level > 1".to_owned()),
        1 => Some("context.n >= 2".to_owned()),
        _ => None,
    };
    let exception = common::exception(common::Parts {
        id: waiver_core::ExceptionId::new(n),
        kind: Kind::Planned,
        state,
        subject: EntityRef::parse_parts("s", &world.ty("User"), subject).unwrap(),
        waives: waives.iter().map(|w| Waived::parse(w).unwrap()).collect(),
        scope: Scope {
            actions: actions.clone(),
            resources: vec![ResourceScope { entity: EntityRef::parse_parts("r", &rtype, &rid).unwrap(), descendants }],
        },
        condition: condition.clone(),
        starts_at: "2026-01-01T00:00:00Z".parse().unwrap(),
        expires_at,
    });
    let live_now = state == State::Approved && now < expires_at;
    Generated { exception, live_now, actions, resource, descendants, condition }
}

/// Whether a generated exception grants, by DESIGN.md §4, with Cedar deciding scope
/// (`in` over the store) and the condition.
fn exception_oracle(
    g: &Generated,
    cw: &CedarWorld,
    request: &Request,
    asked: &Asked,
    world: &World,
    reasons: &BTreeSet<String>,
) -> bool {
    if !g.live_now || !g.actions.contains(&asked.action) {
        return false;
    }
    let waived: BTreeSet<String> = g.exception.waives.iter().map(ToString::to_string).collect();
    if !reasons.iter().all(|r| waived.contains(r)) {
        return false;
    }
    let target = world.uid("Doc", &asked.resource);
    let scope_holds = |condition: &str| {
        let text = format!("permit(principal, action, resource) when {{ {condition} }};");
        let set: PolicySet = text.parse().unwrap();
        Authorizer::new().is_authorized(request, &set, &cw.entities).decision() == CedarDecision::Allow
    };
    let in_scope =
        if g.descendants { scope_holds(&format!("resource in {}", g.resource)) } else { target == g.resource };
    in_scope && g.condition.as_deref().is_none_or(scope_holds)
}

fn divergence(seed: u64, world: &World, asked: &Asked, what: String) -> String {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/divergences");
    let _ = std::fs::create_dir_all(&dir);
    let record = json!({
        "seed": seed, "what": what, "schema": world.schema, "policies": world.policies,
        "entities": serde_json::from_str::<Value>(&world.entities).unwrap(),
        "request": {"principal": world.uid("User", &asked.principal), "action": asked.action,
                    "resource": world.uid("Doc", &asked.resource), "context": asked.context},
    });
    let path = dir.join(format!("seed-{seed}.json"));
    let _ = std::fs::write(&path, serde_json::to_string_pretty(&record).unwrap());
    format!("{what}\n(written to {})\n{record:#}", path.display())
}

#[test]
fn waiver_answers_as_cedar_and_design_4_on_generated_cases() {
    let seed: u64 = std::env::var("WAIVER_DIFF_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(20_261_202);
    let mut rng = Rng(seed);
    let now: Timestamp = "2026-11-23T12:00:00Z".parse().unwrap();
    let (mut cases, mut with_exceptions, mut allowed, mut granted) = (0usize, 0usize, 0usize, 0usize);
    for b in 0..BASELINES {
        let world = generate(&mut rng);
        let baseline = match Baseline::parse(&world.policies, world.schema.as_deref(), Some(&world.entities)) {
            Ok(b) => Arc::new(b),
            Err(e) => {
                panic!("{}", divergence(seed, &world, &ask(&world, &mut rng), format!("baseline {b} refused: {e}")))
            }
        };
        let cw = cedar_world(&world);
        // Half the baselines also carry exceptions for some users.
        let exceptions: Vec<Generated> = if b % 2 == 1 {
            (0..8)
                .map(|i| {
                    let subject = format!("u{}", rng.below(USERS));
                    generated_exception(&world, &mut rng, i + 1, &subject, now)
                })
                .collect()
        } else {
            Vec::new()
        };
        // What a serving node compiles at start is each record's terms, parsed from its
        // stored text: they must be the record's own, and decide the same (every other
        // baseline with exceptions is built from them).
        let terms: Vec<waiver_core::Terms> = exceptions
            .iter()
            .map(|g| {
                let text = waiver_proto::stored::exception_text(&g.exception).unwrap();
                let parsed = waiver_proto::stored::exception_terms(&text).unwrap();
                assert_eq!(parsed, g.exception.terms(), "terms parsed from the stored text of {}", g.exception.id);
                parsed
            })
            .collect();
        let snapshot = if b % 4 == 3 {
            Snapshot::new(baseline, terms.iter())
        } else {
            Snapshot::new(baseline, exceptions.iter().map(|g| &g.exception))
        };
        for _ in 0..REQUESTS_PER_BASELINE {
            let asked = ask(&world, &mut rng);
            let Some((request, answer)) = cedar_answer(&world, &cw, &asked) else { continue };
            let ours_request = DecisionRequest {
                subject: Target { entity_type: world.ty("User"), id: asked.principal.clone(), properties: None },
                action: asked.action.clone(),
                resource: Target { entity_type: world.ty("Doc"), id: asked.resource.clone(), properties: None },
                context: asked.context.clone(),
            };
            let diverged = |what: String| divergence(seed, &world, &asked, what);
            let ours = snapshot
                .decide(&ours_request, now, true)
                .unwrap_or_else(|e| panic!("{}", diverged(format!("waiver refused the request: {e}"))));
            // The production path does not explain, and passes over exceptions that cannot
            // apply from what their list holds inline: it must answer alike, by the same one.
            let quiet = snapshot.decide(&ours_request, now, false).unwrap();
            if quiet.allowed != ours.allowed
                || quiet.exception.as_ref().map(|g| g.id) != ours.exception.as_ref().map(|g| g.id)
            {
                panic!(
                    "{}",
                    diverged(format!(
                        "without an explanation waiver said {} by {:?}; explaining, {} by {:?}",
                        quiet.allowed,
                        quiet.exception.map(|g| g.id),
                        ours.allowed,
                        ours.exception.as_ref().map(|g| g.id)
                    ))
                );
            }
            cases += 1;
            let (base_allowed, reasons) = baseline_oracle(&answer);
            let subject_exceptions: Vec<&Generated> =
                exceptions.iter().filter(|g| g.exception.subject.id() == asked.principal).collect();
            let expected_grant: Vec<u64> = if base_allowed {
                Vec::new()
            } else {
                subject_exceptions
                    .iter()
                    .filter(|g| exception_oracle(g, &cw, &request, &asked, &world, &reasons))
                    .map(|g| g.exception.id.number())
                    .collect()
            };
            let expected_allowed = base_allowed || !expected_grant.is_empty();
            if !exceptions.is_empty() {
                with_exceptions += 1;
            }
            let ours_reasons: BTreeSet<String> = ours.reasons.iter().cloned().collect();
            if ours.allowed != expected_allowed || (ours.exception.is_none() && ours_reasons != reasons) {
                panic!(
                    "{}",
                    diverged(format!(
                        "waiver said {} with reasons {ours_reasons:?}; Cedar and DESIGN.md §4 say {expected_allowed} with reasons {reasons:?} (grants {expected_grant:?})",
                        ours.allowed
                    ))
                );
            }
            if let Some(grant) = &ours.exception {
                assert!(
                    expected_grant.contains(&grant.id.number()),
                    "{}",
                    diverged(format!("granted by {} not among {expected_grant:?}", grant.id))
                );
                granted += 1;
            }
            allowed += usize::from(ours.allowed);
        }
    }
    eprintln!(
        "differential: {cases} cases ({with_exceptions} with exceptions), {allowed} allowed, {granted} granted by an exception; 0 divergences (seed {seed})"
    );
    assert!(cases >= 100_000, "the budget covers at least 100,000 answered cases: {cases}");
    assert!(granted > 0 && allowed > 0 && allowed < cases, "the generator reaches every outcome");
}

/// Every divergence ever found, replayed: `tests/corpus/divergences/*.json` (schema,
/// policies, entities and a request with full uids), answered by waiver as Cedar answers
/// (no exceptions; reasons as DESIGN.md §4 derives them).
#[test]
fn recorded_divergences_answer_as_cedar() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/divergences");
    let mut replayed = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let record: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let schema_text = record["schema"].as_str();
        let policies = record["policies"].as_str().unwrap();
        let entities = record["entities"].to_string();
        let baseline = Arc::new(Baseline::parse(policies, schema_text, Some(&entities)).unwrap());
        let schema = schema_text.map(|s| Schema::from_cedarschema_str(s).unwrap().0);
        let set: PolicySet = policies.parse().unwrap();
        let store = Entities::from_json_str(&entities, schema.as_ref()).unwrap();
        let request = &record["request"];
        let uid = |v: &Value| v.as_str().unwrap().parse::<EntityUid>().unwrap();
        let (principal, resource) = (uid(&request["principal"]), uid(&request["resource"]));
        let action_name = request["action"].as_str().unwrap();
        let action = baseline.sources().1.map_or_else(
            || format!("Action::\"{action_name}\"").parse::<EntityUid>().unwrap(),
            |_| {
                let schema = schema.as_ref().unwrap();
                schema.actions().find(|a| a.id().unescaped() == action_name).unwrap().clone()
            },
        );
        let context =
            Context::from_json_value(request["context"].clone(), schema.as_ref().map(|s| (s, &action))).unwrap();
        let cedar_request =
            Request::new(principal.clone(), action, resource.clone(), context, schema.as_ref()).unwrap();
        let response = Authorizer::new().is_authorized(&cedar_request, &set, &store);
        let cedar = response.decision() == CedarDecision::Allow && response.diagnostics().errors().next().is_none();
        let ours = Snapshot::new(baseline, Vec::<Exception>::new())
            .decide(
                &DecisionRequest {
                    subject: Target {
                        entity_type: principal.type_name().to_string(),
                        id: principal.id().unescaped().into(),
                        properties: None,
                    },
                    action: action_name.into(),
                    resource: Target {
                        entity_type: resource.type_name().to_string(),
                        id: resource.id().unescaped().into(),
                        properties: request["resource_properties"].as_object().cloned(),
                    },
                    context: request["context"].clone(),
                },
                "2026-11-23T12:00:00Z".parse().unwrap(),
                true,
            )
            .unwrap();
        assert_eq!(ours.allowed, cedar, "{}", path.display());
        if !cedar {
            let fired: BTreeSet<String> = response
                .diagnostics()
                .reason()
                .map(|id| set.policy(id).unwrap().annotation("id").unwrap().to_owned())
                .collect();
            let ours: BTreeSet<String> = ours.reasons.into_iter().filter(|r| r != DEFAULT_DENY).collect();
            assert_eq!(ours, fired, "the forbids that fired: {}", path.display());
        }
        replayed += 1;
    }
    assert!(replayed >= 1, "the corpus is not empty");
}

//! The baseline: Cedar policies with `@id`, an optional schema, and entities, checked when
//! written and indexed by action so a decision evaluates only the policies that can apply.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    str::FromStr,
    sync::Arc,
};

use crate::limits::{self, Syntax};
use cedar_policy::{
    ActionConstraint, Effect, Entities, Entity, EntityId, EntityTypeName, EntityUid, Policy, PolicyId, PolicySet,
    Schema, ValidationMode, Validator,
};

/// The deny reason when no permit matched.
pub const DEFAULT_DENY: &str = "default-deny";

/// Why a baseline was refused. Messages carry Cedar's own diagnostics.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BaselineError {
    #[error("the policies do not parse: {0}")]
    Parse(String),
    #[error("policy {position} has no `@id(\"…\")` annotation; every baseline policy needs one")]
    MissingId { position: usize },
    #[error("the policy id `{0}` is used twice")]
    DuplicateId(String),
    #[error("the policy id `{0}` is reserved")]
    ReservedId(String),
    #[error("the schema does not parse: {0}")]
    Schema(String),
    #[error("the policies do not validate against the schema: {0}")]
    Invalid(String),
    #[error("the entities do not parse: {0}")]
    Entities(String),
    #[error("the condition is not a valid Cedar expression: {0}")]
    Condition(String),
    #[error(
        "the action name `{name}` means both `{first}` and `{second}`; a decision request names an action by its \
         name alone, so action names must be unique across namespaces"
    )]
    AmbiguousAction { name: String, first: String, second: String },
    #[error("policy `{policy}`: {detail}")]
    Annotation { policy: String, detail: String },
    #[error("{what} cannot be parsed safely: {detail}")]
    TooComplex { what: &'static str, detail: String },
    #[error("policy `{0}` cannot be evaluated exactly: Cedar does not take back its own JSON form of it")]
    NotRoundTripping(String),
}

/// Refuses text the parsers would recurse too deep on (see [`crate::limits`]).
fn check_shape(what: &'static str, text: &str, syntax: Syntax) -> Result<(), BaselineError> {
    match limits::shape(text, syntax).excess() {
        Some(detail) => Err(BaselineError::TooComplex { what, detail }),
        None => Ok(()),
    }
}

fn check_json_depth(what: &'static str, text: &str) -> Result<(), BaselineError> {
    let depth = limits::json_text_depth(text);
    if depth > limits::MAX_NESTING {
        let detail = format!("it nests {depth} levels deep; at most {} are allowed", limits::MAX_NESTING);
        return Err(BaselineError::TooComplex { what, detail });
    }
    Ok(())
}

/// A group of policies evaluated together: all of them, and the same policies each as a
/// permit (the probe).
///
/// Cedar evaluates every policy of a set independently, and its effect plays no part in that;
/// the answer is then "allow iff some permit is satisfied and no forbid is". One evaluation of
/// the probe therefore tells which policies are satisfied (and which errored), permits and
/// forbids alike, and Cedar's rule applied to that is Cedar's answer. A deny that an
/// exception may waive needs both "which forbids fired" and "did any permit match": one
/// evaluation instead of two. The differential test holds it to Cedar's own `Authorizer`.
#[derive(Debug, Clone, Default)]
pub(crate) struct Slice {
    pub(crate) all: PolicySet,
    pub(crate) probe: PolicySet,
}

impl Slice {
    fn add(&mut self, policy: &Policy, as_permit: &Policy) {
        // Ids are unique in the source set, so adding cannot collide.
        let _ = self.all.add(policy.clone());
        let _ = self.probe.add(as_permit.clone());
    }
}

/// `policy` with its effect a permit (itself if it is one); `None` if Cedar cannot take its
/// own JSON form back.
fn as_permit(policy: &Policy) -> Option<Policy> {
    if policy.effect() == Effect::Permit {
        return Some(policy.clone());
    }
    let mut json = policy.to_json().ok()?;
    *json.get_mut("effect")? = serde_json::Value::String("permit".into());
    Policy::from_json(Some(policy.id().clone()), json).ok()
}

/// Entities to make members of a group, by `(type, id)`: a proposal that names thousands of
/// principals is a group in Cedar, not a set literal (which Cedar builds on every evaluation).
#[derive(Debug, Clone)]
pub struct GroupChange<'a> {
    pub group: (&'a str, &'a str),
    pub members: Vec<(&'a str, &'a str)>,
}

type EntityMaps = (HashMap<EntityUid, Entity>, HashMap<EntityUid, HashSet<EntityUid>>);

impl GroupChange<'_> {
    fn apply(
        &self,
        entities: &HashMap<EntityUid, Entity>,
        ancestors: &HashMap<EntityUid, HashSet<EntityUid>>,
    ) -> Result<EntityMaps, BaselineError> {
        let type_name = |t: &str| {
            EntityTypeName::from_str(t).map_err(|e| BaselineError::Entities(format!("`{t}`: {}", diagnostics(&e))))
        };
        let group = EntityUid::from_type_name_and_id(type_name(self.group.0)?, EntityId::new(self.group.1));
        let mut entities = entities.clone();
        let mut ancestors = ancestors.clone();
        let mut types: HashMap<&str, EntityTypeName> = HashMap::new();
        for (t, id) in &self.members {
            let name = match types.get(t) {
                Some(name) => name.clone(),
                None => {
                    let name = type_name(t)?;
                    types.insert(t, name.clone());
                    name
                }
            };
            let uid = EntityUid::from_type_name_and_id(name, EntityId::new(*id));
            let entity = match entities.remove(&uid) {
                Some(stored) => {
                    let (uid, attrs, mut parents) = stored.into_inner();
                    parents.insert(group.clone());
                    Entity::new(uid, attrs, parents).map_err(|e| BaselineError::Entities(diagnostics(&e)))?
                }
                None => Entity::new_no_attrs(uid.clone(), HashSet::from([group.clone()])),
            };
            ancestors.entry(uid.clone()).or_default().insert(group.clone());
            entities.insert(uid, entity);
        }
        Ok((entities, ancestors))
    }
}

/// What a baseline forbid demands of the exceptions that waive it, from its Cedar
/// annotations: `@risk("critical")` (the least risk such an exception is filed at),
/// `@max_duration("P7D")` (the longest it may run), `@controls("monitoring, read_only")`
/// (compensating controls it must carry).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Floors {
    pub risk: Option<waiver_core::Risk>,
    pub max_duration: Option<waiver_core::Period>,
    pub controls: Vec<waiver_core::ControlKind>,
    /// `@approvers("dba, security")`: the rules' approver groups that may approve.
    pub approvers: Vec<String>,
}

impl Floors {
    fn of(policy: &Policy, id: &str) -> Result<Self, BaselineError> {
        let bad = |detail: String| BaselineError::Annotation { policy: id.to_owned(), detail };
        let risk = policy
            .annotation("risk")
            .map(|r| waiver_core::Risk::parse(r).map_err(|e| bad(format!("`@risk`: {e}"))))
            .transpose()?;
        let max_duration = policy
            .annotation("max_duration")
            .map(|d| d.parse::<waiver_core::Period>().map_err(|e| bad(format!("`@max_duration`: {e}"))))
            .transpose()?;
        let controls = policy
            .annotation("controls")
            .map(|list| {
                list.split(',')
                    .map(str::trim)
                    .filter(|c| !c.is_empty())
                    .map(|c| waiver_core::ControlKind::parse(c).map_err(|e| bad(format!("`@controls`: {e}"))))
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()?
            .unwrap_or_default();
        let approvers = policy
            .annotation("approvers")
            .map(|list| list.split(',').map(str::trim).filter(|g| !g.is_empty()).map(str::to_owned).collect())
            .unwrap_or_default();
        Ok(Self { risk, max_duration, controls, approvers })
    }
}

/// A validated baseline.
#[derive(Debug)]
pub struct Baseline {
    pub(crate) unsliced: Slice,
    /// Policies that can apply to each known action.
    pub(crate) slices: HashMap<EntityUid, Slice>,
    /// Policies that can apply to an action the baseline never names.
    pub(crate) fallback: Slice,
    /// Cedar's policy id → the `@id` annotation.
    pub(crate) annotations: HashMap<PolicyId, String>,
    pub(crate) forbids: HashSet<PolicyId>,
    pub(crate) ids: BTreeSet<String>,
    /// Each forbid's demands on the exceptions that waive it (by `@id`).
    pub(crate) floors: HashMap<String, Floors>,
    pub(crate) schema: Option<Schema>,
    /// The actions the schema declares (looked up per decision, so a set, not a scan).
    pub(crate) declared_actions: HashSet<EntityUid>,
    /// Stored entities with their ancestors, by uid (shared with proposed variants).
    pub(crate) entities: Arc<HashMap<EntityUid, Entity>>,
    /// The same entities as Cedar's store, built once: a decision that adds nothing to it
    /// evaluates against it as it is (no copy per request).
    pub(crate) store: Arc<Entities>,
    pub(crate) ancestors: Arc<HashMap<EntityUid, HashSet<EntityUid>>>,
    /// Entity ids by type, in order, for search.
    pub(crate) by_type: Arc<HashMap<String, Vec<String>>>,
    /// Every action the baseline names or the schema and entities declare, by name.
    pub(crate) actions: BTreeSet<String>,
    /// Each known action by its name alone, for AuthZEN's `action.name`: `delete` is
    /// `App::Action::"delete"` when that is the only action named `delete`.
    pub(crate) action_uids: HashMap<String, EntityUid>,
    source: (String, Option<String>, Option<String>),
}

impl Baseline {
    /// Parses and checks a baseline: every policy carries a unique `@id`; with a schema,
    /// the policies validate strictly (an erroring `forbid` would be skipped by Cedar, so
    /// none gets in) and the entities conform.
    pub fn parse(policies: &str, schema: Option<&str>, entities: Option<&str>) -> Result<Self, BaselineError> {
        check_shape("the policies", policies, Syntax::Policy)?;
        if let Some(text) = schema {
            check_shape("the schema", text, Syntax::Schema)?;
        }
        if let Some(text) = entities {
            check_json_depth("the entities", text)?;
        }
        limits::on_known_stack(|| Self::parse_bounded(policies, schema, entities))
    }

    fn parse_bounded(policies: &str, schema: Option<&str>, entities: Option<&str>) -> Result<Self, BaselineError> {
        let schema_parsed = match schema {
            None => None,
            Some(text) => {
                let (schema, _warnings) =
                    Schema::from_cedarschema_str(text).map_err(|e| BaselineError::Schema(diagnostics(&e)))?;
                Some(schema)
            }
        };
        // The policies first, so a policy error is reported before an entity error.
        let set = PolicySet::from_str(policies).map_err(|e| BaselineError::Parse(diagnostics(&e)))?;
        let parsed = match entities {
            None => Entities::empty(),
            Some(text) => {
                let value: serde_json::Value =
                    serde_json::from_str(text).map_err(|e| BaselineError::Entities(e.to_string()))?;
                Entities::from_json_value(value, schema_parsed.as_ref())
                    .map_err(|e| BaselineError::Entities(diagnostics(&e)))?
            }
        };
        let mut stored = HashMap::new();
        let mut ancestors = HashMap::new();
        let mut by_type: HashMap<String, Vec<String>> = HashMap::new();
        // Action groups a schema declares (`action delete in [writes]`) are entities as Cedar
        // sees them, whether or not entities.json lists them.
        let schema_actions = match &schema_parsed {
            Some(schema) => Some(schema.action_entities().map_err(|e| BaselineError::Schema(diagnostics(&e)))?),
            None => None,
        };
        for entity in schema_actions.iter().flat_map(|actions| actions.iter()) {
            let (uid, _, parents) = entity.clone().into_inner();
            ancestors.insert(uid.clone(), parents);
            stored.insert(uid, entity.clone());
        }
        for entity in parsed.iter() {
            let (uid, _, parents) = entity.clone().into_inner();
            by_type.entry(uid.type_name().to_string()).or_default().push(uid.id().unescaped().to_owned());
            ancestors.insert(uid.clone(), parents);
            stored.insert(uid, entity.clone());
        }
        for ids in by_type.values_mut() {
            ids.sort();
        }
        Self::assemble(
            set,
            schema_parsed,
            Arc::new(stored),
            Arc::new(ancestors),
            Arc::new(by_type),
            (policies.to_owned(), schema.map(str::to_owned), entities.map(str::to_owned)),
        )
    }

    /// The same schema and entities with some policies replaced (by `@id`), others added,
    /// and optionally entities made members of a new group: what a proposed change is
    /// checked against, without parsing the rest again.
    pub fn with_changes(
        &self,
        replace: &[(&str, &str)],
        add: &[&str],
        group: Option<&GroupChange<'_>>,
    ) -> Result<Self, BaselineError> {
        for text in replace.iter().map(|(_, text)| *text).chain(add.iter().copied()) {
            check_shape("the proposed policies", text, Syntax::Policy)?;
        }
        limits::on_known_stack(|| self.with_changes_bounded(replace, add, group))
    }

    fn with_changes_bounded(
        &self,
        replace: &[(&str, &str)],
        add: &[&str],
        group: Option<&GroupChange<'_>>,
    ) -> Result<Self, BaselineError> {
        let parse = |cedar_id: String, text: &str| {
            Policy::parse(Some(PolicyId::new(cedar_id)), text).map_err(|e| BaselineError::Parse(diagnostics(&e)))
        };
        let mut set = PolicySet::new();
        let mut text = String::new();
        for policy in self.unsliced.all.policies() {
            let id = self.annotations.get(policy.id()).map_or("", String::as_str);
            let next = match replace.iter().find(|(target, _)| *target == id) {
                Some((_, with)) => parse(policy.id().to_string(), with)?,
                None => policy.clone(),
            };
            text.push_str(&next.to_string());
            text.push_str("\n\n");
            set.add(next).map_err(|e| BaselineError::Parse(diagnostics(&e)))?;
        }
        for (n, added) in add.iter().enumerate() {
            let next = parse(format!("proposed{n}"), added)?;
            text.push_str(&next.to_string());
            text.push_str("\n\n");
            set.add(next).map_err(|e| BaselineError::Parse(diagnostics(&e)))?;
        }
        let (entities, ancestors) = match group {
            None => (self.entities.clone(), self.ancestors.clone()),
            Some(change) => {
                let (entities, ancestors) = change.apply(&self.entities, &self.ancestors)?;
                (Arc::new(entities), Arc::new(ancestors))
            }
        };
        Self::assemble(
            set,
            self.schema.clone(),
            entities,
            ancestors,
            self.by_type.clone(),
            (text, self.source.1.clone(), self.source.2.clone()),
        )
    }

    /// Checks the policies (unique `@id`s, strict validation with a schema) and slices them.
    fn assemble(
        set: PolicySet,
        schema: Option<Schema>,
        stored: Arc<HashMap<EntityUid, Entity>>,
        ancestors: Arc<HashMap<EntityUid, HashSet<EntityUid>>>,
        by_type: Arc<HashMap<String, Vec<String>>>,
        source: (String, Option<String>, Option<String>),
    ) -> Result<Self, BaselineError> {
        let mut annotations = HashMap::new();
        let mut forbids = HashSet::new();
        let mut floors = HashMap::new();
        let mut ids = BTreeSet::new();
        for (position, policy) in set.policies().enumerate() {
            let id = policy.annotation("id").ok_or(BaselineError::MissingId { position: position + 1 })?;
            if id == DEFAULT_DENY {
                return Err(BaselineError::ReservedId(id.to_owned()));
            }
            if !ids.insert(id.to_owned()) {
                return Err(BaselineError::DuplicateId(id.to_owned()));
            }
            annotations.insert(policy.id().clone(), id.to_owned());
            if policy.effect() == Effect::Forbid {
                forbids.insert(policy.id().clone());
                let demands = Floors::of(policy, id)?;
                if demands != Floors::default() {
                    floors.insert(id.to_owned(), demands);
                }
            }
        }
        if let Some(schema) = &schema {
            let result = Validator::new(schema.clone()).validate(&set, ValidationMode::Strict);
            if !result.validation_passed() {
                let errors: Vec<_> = result
                    .validation_errors()
                    .map(|e| {
                        let id = annotations.get(e.policy_id()).map_or("?", String::as_str);
                        format!("policy `{id}`: {}", diagnostics(e))
                    })
                    .collect();
                return Err(BaselineError::Invalid(errors.join("; ")));
            }
        }
        let mut actions: BTreeSet<String> = ancestors
            .keys()
            .filter(|uid| {
                let type_name = uid.type_name().to_string();
                type_name == "Action" || type_name.ends_with("::Action")
            })
            .map(|uid| uid.id().unescaped().to_owned())
            .collect();
        if let Some(schema) = &schema {
            actions.extend(schema.actions().map(|a| a.id().unescaped().to_owned()));
        }

        // Slice by action: a policy on `action == A` joins A's slice; one on `action in
        // [..]` joins the slice of each listed action and of every known action below one;
        // an unconstrained one joins every slice. Unknown actions get the unconstrained and
        // `in` policies, which is all that could match an action with no known ancestors.
        let mut named: HashSet<EntityUid> = ancestors.keys().filter(|uid| is_action(uid)).cloned().collect();
        for policy in set.policies() {
            match policy.action_constraint() {
                ActionConstraint::Any => {}
                ActionConstraint::Eq(uid) => {
                    named.insert(uid);
                }
                ActionConstraint::In(uids) => named.extend(uids),
            }
        }
        if let Some(schema) = &schema {
            named.extend(schema.actions().cloned());
        }
        let mut action_uids: HashMap<String, EntityUid> = HashMap::new();
        for uid in &named {
            let name = uid.id().unescaped().to_owned();
            if let Some(other) = action_uids.get(&name).filter(|other| *other != uid) {
                return Err(BaselineError::AmbiguousAction { name, first: other.to_string(), second: uid.to_string() });
            }
            action_uids.insert(name.clone(), uid.clone());
            actions.insert(name);
        }
        let mut slices: HashMap<EntityUid, Slice> = named.iter().map(|uid| (uid.clone(), Slice::default())).collect();
        let mut fallback = Slice::default();
        let mut unsliced = Slice::default();
        for policy in set.policies() {
            let flipped = as_permit(policy).ok_or_else(|| BaselineError::NotRoundTripping(policy.id().to_string()))?;
            let permit = &flipped;
            unsliced.add(policy, permit);
            match policy.action_constraint() {
                ActionConstraint::Any => {
                    fallback.add(policy, permit);
                    slices.values_mut().for_each(|slice| slice.add(policy, permit));
                }
                ActionConstraint::Eq(uid) => {
                    if let Some(slice) = slices.get_mut(&uid) {
                        slice.add(policy, permit);
                    }
                }
                ActionConstraint::In(groups) => {
                    fallback.add(policy, permit);
                    for (uid, slice) in &mut slices {
                        let below = ancestors.get(uid).is_some_and(|a| groups.iter().any(|g| a.contains(g)));
                        if groups.contains(uid) || below {
                            slice.add(policy, permit);
                        }
                    }
                }
            }
        }
        let store = Entities::from_entities(stored.values().cloned(), None)
            .map_err(|e| BaselineError::Entities(diagnostics(&e)))?;
        let declared_actions = schema.iter().flat_map(|schema| schema.actions().cloned()).collect();
        Ok(Self {
            declared_actions,
            store: Arc::new(store),
            unsliced,
            slices,
            fallback,
            annotations,
            forbids,
            ids,
            floors,
            schema,
            entities: stored,
            ancestors,
            by_type,
            actions,
            action_uids,
            source,
        })
    }

    /// The `@id`s of every policy.
    pub fn policy_ids(&self) -> &BTreeSet<String> {
        &self.ids
    }

    /// Whether `id` is a deny reason an exception can waive: a forbid of this baseline, or
    /// `default-deny`. A permit never denies, so "waiving" one would mean nothing.
    pub fn can_waive(&self, id: &str) -> bool {
        id == DEFAULT_DENY || self.annotations.iter().any(|(p, a)| a == id && self.forbids.contains(p))
    }

    /// What the forbid `id` demands of the exceptions that waive it (none for most).
    pub fn floors(&self, id: &str) -> Option<&Floors> {
        self.floors.get(id)
    }

    /// Why `id` cannot be waived, if it cannot.
    pub fn why_not_waivable(&self, id: &str) -> Option<String> {
        if self.can_waive(id) {
            None
        } else if self.ids.contains(id) {
            Some(format!(
                "`{id}` is a permit: a permit never denies, so there is nothing to waive (waive the forbid that denies, or `default-deny`)"
            ))
        } else {
            Some(format!("`{id}` is not the `@id` of a baseline forbid (nor `default-deny`)"))
        }
    }

    /// The source text of the policy with `@id` `id` (as Cedar prints it, so formatting
    /// changes alone do not count as a change).
    pub fn policy_text(&self, id: &str) -> Option<String> {
        let cedar_id = self.annotations.iter().find(|(_, a)| a.as_str() == id).map(|(p, _)| p)?;
        self.unsliced.all.policy(cedar_id).map(|p| p.to_string())
    }

    /// Each policy's `@id` and effect (`permit` or `forbid`), in `@id` order.
    pub fn policies(&self) -> Vec<(String, &'static str)> {
        let mut out: Vec<_> = self
            .annotations
            .iter()
            .map(|(p, id)| (id.clone(), if self.forbids.contains(p) { "forbid" } else { "permit" }))
            .collect();
        out.sort();
        out
    }

    pub fn n_policies(&self) -> usize {
        self.annotations.len()
    }

    /// The policies, schema and entities this baseline was built from.
    pub fn sources(&self) -> (&str, Option<&str>, Option<&str>) {
        (&self.source.0, self.source.1.as_deref(), self.source.2.as_deref())
    }

    /// Compiles an exception's condition to a one-policy set, validated against the schema
    /// when there is one, so a condition that cannot evaluate never gets in.
    pub fn compile_condition(&self, condition: &str) -> Result<PolicySet, BaselineError> {
        check_shape("the condition", condition, Syntax::Policy)?;
        if limits::has_comment(condition) {
            // `true // && context.source_ip…` reads as a restriction and grants from anywhere.
            return Err(BaselineError::Condition(
                "it contains a `//` comment; approvers must read exactly what is evaluated".into(),
            ));
        }
        limits::on_known_stack(|| self.compile_condition_bounded(condition))
    }

    fn compile_condition_bounded(&self, condition: &str) -> Result<PolicySet, BaselineError> {
        let text = format!("permit (principal, action, resource) when {{ {condition} }};");
        let set = PolicySet::from_str(&text).map_err(|e| BaselineError::Condition(diagnostics(&e)))?;
        if set.policies().count() != 1 {
            return Err(BaselineError::Condition("it must be a single expression".into()));
        }
        if let Some(schema) = &self.schema {
            let result = Validator::new(schema.clone()).validate(&set, ValidationMode::Strict);
            if !result.validation_passed() {
                let errors: Vec<_> = result.validation_errors().map(|e| diagnostics(e)).collect();
                return Err(BaselineError::Condition(errors.join("; ")));
            }
        }
        Ok(set)
    }

    /// The uid of the action a decision request names: a full uid as written
    /// (`App::Action::"delete"`), else the one known action of that name, else
    /// `Action::"NAME"` (an action the baseline never names).
    pub(crate) fn action_uid(&self, name: &str) -> Option<EntityUid> {
        if name.contains("::")
            && let Ok(uid) = EntityUid::from_str(name)
        {
            return Some(uid);
        }
        self.action_uids.get(name).cloned()
    }

    /// The policies that can apply to `action`.
    pub(crate) fn slice(&self, action: &EntityUid) -> &Slice {
        self.slices.get(action).unwrap_or(&self.fallback)
    }
}

fn is_action(uid: &EntityUid) -> bool {
    let name = uid.type_name().to_string();
    name == "Action" || name.ends_with("::Action")
}

/// Cedar's diagnostic with its help, on one line.
pub(crate) fn diagnostics(e: &dyn miette::Diagnostic) -> String {
    let mut text = e.to_string();
    if let Some(help) = e.help() {
        text.push_str(&format!(" (help: {help})"));
    }
    let mut source = std::error::Error::source(e);
    while let Some(inner) = source {
        text.push_str(&format!(": {inner}"));
        source = inner.source();
    }
    text
}

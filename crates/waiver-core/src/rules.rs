//! Governance rules: the organisation's exception policy, as configuration.
//!
//! A rules file is TOML. Every key is optional and falls back to the default written by
//! `waiver init` ([`DEFAULT_RULES_TOML`]); unknown keys are refused so a typo never silently
//! loosens a rule. A request that breaks a rule is refused with the rule's key named.

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::Deserialize;

use crate::{ControlKind, CredentialType, ExceptionDraft, FieldError, Kind, Period, Risk, Scope, ValidationError};

/// The rules file `waiver init` writes; also the defaults for any key a file leaves out.
pub const DEFAULT_RULES_TOML: &str = include_str!("default_rules.toml");

/// A value for each risk rating.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PerRisk<T> {
    pub low: T,
    pub medium: T,
    pub high: T,
    pub critical: T,
}

impl<T> PerRisk<T> {
    pub fn get(&self, risk: Risk) -> &T {
        match risk {
            Risk::Low => &self.low,
            Risk::Medium => &self.medium,
            Risk::High => &self.high,
            Risk::Critical => &self.critical,
        }
    }
}

/// Validated governance rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    /// Longest planned exception, from start to expiry.
    pub max_planned: Period,
    /// Longest break-glass, from activation to end.
    pub max_break_glass: Period,
    pub max_by_risk: PerRisk<Period>,
    pub max_by_credential_type: BTreeMap<CredentialType, Period>,
    /// Distinct approvers needed.
    pub approvals: PerRisk<u32>,
    /// Least number of compensating controls.
    pub controls_min: PerRisk<u32>,
    /// Control kinds that must be among the compensating controls.
    pub controls_required: PerRisk<Vec<ControlKind>>,
    /// Longest review cadence.
    pub review_every: PerRisk<Period>,
    pub renewal_limit: u32,
    /// A request not decided within this times out.
    pub pending_timeout: Period,
    /// Most requests one subject may have waiting at once: a flood of requests nobody
    /// approves (one import, an agent asking for itself) is refused, not queued.
    pub max_open_requests_per_subject: u32,
    pub post_use_review_within: Period,
    /// Whether scope may name the action `*`.
    pub wildcard_actions: bool,
    /// Whether a planned exception must carry a remediation plan.
    pub remediation_plan_required: bool,
    /// How far in the past a request's `starts_at` may lie (clock skew between clients).
    pub start_skew: Period,
    /// Limits for exceptions an AI agent requests for itself.
    pub agent_max_duration: Period,
    pub agent_max_risk: Risk,
    /// Remind the owner this long before an exception expires (each lead time once).
    pub remind_before_expiry: Vec<Period>,
    /// Remind the owner this long before a review falls due.
    pub remind_before_review: Vec<Period>,
    /// An active exception that granted nothing for this long is unused.
    pub unused_after: Period,
    /// What happens to an unused exception.
    pub unused_action: FollowUp,
    /// What an owner, code or vendor change does to the exceptions it applies to.
    pub revalidation_action: FollowUp,
    /// The triggers that apply to every exception; an exception may add others, never fewer.
    pub revalidation_triggers: Vec<crate::RevalidationTrigger>,
    /// What an owner leaving (a person offboarded) does to the live exceptions they own.
    pub owner_left_action: FollowUp,
    /// The longest an API token lives (and what one issued without an expiry gets).
    pub token_max_lifetime: Period,
    /// The least risk an exception for a subject with this credential type is filed at.
    pub min_risk_by_credential_type: BTreeMap<CredentialType, Risk>,
    /// Controls no decision point enforces, which exceptions may waive as `control:NAME`
    /// (name → what the control requires).
    pub control_catalog: BTreeMap<String, String>,
    /// Named groups of approvers (`[approvers] dba = ["lee", "morgan"]`): a baseline forbid
    /// annotated `@approvers("dba")` is approved only by its groups' members.
    pub approver_groups: BTreeMap<String, Vec<crate::Principal>>,
    /// Webhook receivers allowed on internal addresses (loopback, private, link-local,
    /// multicast), as `HOST` or `HOST:PORT`; every other internal target is refused.
    pub webhook_allow_internal: Vec<String>,
    /// What a sign-in must prove before approve, revoke or break-glass.
    pub step_up: StepUp,
}

/// What the rules ask of a person's sign-in before the actions that change what is allowed
/// most (`[step_up]`): how recent it is, and how strong (`acr`, `amr`). An actor with no
/// sign-in behind it (an API token, the local CLI) never meets it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepUp {
    /// The actions that need it: any of [`StepUp::ACTIONS`].
    pub actions: Vec<String>,
    /// The sign-in is at most this old.
    pub max_age: Option<Period>,
    /// The sign-in's `acr` is one of these (empty: any).
    pub acr: Vec<String>,
    /// The sign-in's `amr` holds one of these (empty: any).
    pub amr: Vec<String>,
}

impl StepUp {
    pub const ACTIONS: [&'static str; 3] = ["approve", "revoke", "break_glass"];

    /// Whether `action` needs a step-up at all.
    pub fn applies(&self, action: &str) -> bool {
        self.actions.iter().any(|a| a == action)
    }

    /// Why `actor` may not `action` without signing in again, or `None` when they may.
    pub fn refuses(&self, action: &str, actor: &crate::Actor, now: Timestamp) -> Option<String> {
        if !self.applies(action) {
            return None;
        }
        let Some(auth) = &actor.authentication else {
            return Some(format!(
                "`{action}` needs a sign-in at the identity provider{}; `{}` presents none (an API token or the local CLI)",
                self.wants(),
                actor.principal
            ));
        };
        if let Some(max_age) = self.max_age
            && now.duration_since(auth.at) > max_age.duration()
        {
            return Some(format!("`{action}` needs a sign-in{}; the last was at {}", self.wants(), auth.at));
        }
        if !self.acr.is_empty() && !auth.acr.as_ref().is_some_and(|acr| self.acr.contains(acr)) {
            return Some(format!(
                "`{action}` needs a sign-in{}; this one's acr is `{}`",
                self.wants(),
                auth.acr.as_deref().unwrap_or("none")
            ));
        }
        if !self.amr.is_empty() && !auth.amr.iter().any(|m| self.amr.contains(m)) {
            return Some(format!(
                "`{action}` needs a sign-in{}; this one's amr is `{}`",
                self.wants(),
                auth.amr.join(" ")
            ));
        }
        None
    }

    /// What it asks, in words: ` within 15m with acr `x``.
    fn wants(&self) -> String {
        let mut out = String::new();
        if let Some(max_age) = self.max_age {
            out.push_str(&format!(" within the last {max_age}"));
        }
        if !self.acr.is_empty() {
            out.push_str(&format!(" with acr `{}`", self.acr.join("` or `")));
        }
        if !self.amr.is_empty() {
            out.push_str(&format!(" with amr `{}`", self.amr.join("` or `")));
        }
        out
    }
}

/// What a scheduler finding does to an exception.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FollowUp {
    /// Record it in the log (and so notify): a person decides.
    Flag,
    /// Hold it until the owner attests (revalidation only).
    Suspend,
    /// End it (unused exceptions only).
    Revoke,
}

impl FollowUp {
    fn parse(key: &str, value: &str, allowed: &[FollowUp]) -> Result<Self, RulesError> {
        let parsed = match value {
            "flag" => Some(FollowUp::Flag),
            "suspend" => Some(FollowUp::Suspend),
            "revoke" => Some(FollowUp::Revoke),
            _ => None,
        };
        let names: Vec<&str> = allowed.iter().map(|f| f.as_str()).collect();
        parsed
            .filter(|p| allowed.contains(p))
            .ok_or_else(|| RulesError(format!("`{key}`: `{value}` is not one of `{}`", names.join("`, `"))))
    }

    pub fn as_str(self) -> &'static str {
        match self {
            FollowUp::Flag => "flag",
            FollowUp::Suspend => "suspend",
            FollowUp::Revoke => "revoke",
        }
    }
}

/// Why a rules file was refused: the key and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid governance rules: {0}")]
pub struct RulesError(String);

impl Default for Rules {
    fn default() -> Self {
        // INVARIANT: the default file is valid; a unit test parses it.
        Self::from_toml(DEFAULT_RULES_TOML).unwrap_or_else(|_| Self::fallback())
    }
}

impl Rules {
    /// The strictest sensible rules, used only if the bundled defaults failed to parse
    /// (which a unit test rules out).
    fn fallback() -> Self {
        fn per<T: Clone>(v: T) -> PerRisk<T> {
            PerRisk { low: v.clone(), medium: v.clone(), high: v.clone(), critical: v }
        }
        Self {
            max_planned: Period::from_days(7),
            max_break_glass: Period::from_hours(4),
            max_by_risk: per(Period::from_days(7)),
            max_by_credential_type: BTreeMap::new(),
            approvals: per(2),
            controls_min: per(1),
            controls_required: PerRisk { low: vec![], medium: vec![], high: vec![], critical: vec![] },
            review_every: per(Period::from_days(7)),
            renewal_limit: 0,
            pending_timeout: Period::from_days(7),
            max_open_requests_per_subject: 0,
            post_use_review_within: Period::from_days(1),
            wildcard_actions: false,
            remediation_plan_required: true,
            start_skew: Period::from_secs(300),
            agent_max_duration: Period::from_hours(8),
            agent_max_risk: Risk::Low,
            remind_before_expiry: vec![Period::from_days(7), Period::from_days(1)],
            remind_before_review: vec![Period::from_days(3)],
            unused_after: Period::from_days(30),
            unused_action: FollowUp::Flag,
            revalidation_action: FollowUp::Suspend,
            revalidation_triggers: vec![
                crate::RevalidationTrigger::OwnerChange,
                crate::RevalidationTrigger::CodeChange,
                crate::RevalidationTrigger::VendorChange,
            ],
            owner_left_action: FollowUp::Suspend,
            token_max_lifetime: Period::from_days(30),
            min_risk_by_credential_type: BTreeMap::new(),
            control_catalog: BTreeMap::new(),
            approver_groups: BTreeMap::new(),
            webhook_allow_internal: Vec::new(),
            step_up: StepUp::default(),
        }
    }

    /// Parses a rules file over the defaults.
    pub fn from_toml(text: &str) -> Result<Self, RulesError> {
        let defaults: RawRules = toml::from_str(DEFAULT_RULES_TOML).map_err(|e| RulesError(e.to_string()))?;
        let raw: RawRules =
            toml::from_str(text).map_err(|e| RulesError(e.message().to_owned() + &at(text, e.span())))?;
        if raw.version.is_some_and(|v| v != 1) {
            return Err(RulesError("`version`: only version 1 is understood".into()));
        }
        raw.overlay(defaults).build()
    }

    /// The longest an exception may last, as the smallest of the caps that apply, and the
    /// rule key of that cap.
    pub fn max_duration(&self, kind: Kind, risk: Risk, credential_type: CredentialType) -> (Period, String) {
        let mut caps = vec![match kind {
            Kind::Planned => (self.max_planned, "max_duration.planned".to_owned()),
            Kind::BreakGlass => (self.max_break_glass, "max_duration.break_glass".to_owned()),
        }];
        caps.push((*self.max_by_risk.get(risk), format!("max_duration.risk.{risk}")));
        if let Some(cap) = self.max_by_credential_type.get(&credential_type) {
            caps.push((*cap, format!("max_duration.credential_type.{credential_type}")));
        }
        caps.into_iter().min_by_key(|(p, _)| *p).unwrap_or((self.max_planned, "max_duration.planned".into()))
    }

    /// Checks a draft against every rule that applies, reporting every breach.
    pub fn check_request(
        &self,
        draft: &ExceptionDraft,
        kind: Kind,
        credential_type: CredentialType,
        by_agent: bool,
        now: Timestamp,
    ) -> Result<(), ValidationError> {
        let mut errors = Vec::new();
        let starts_at = draft.starts_at.unwrap_or(now);
        let earliest = now.checked_sub(self.start_skew.duration()).unwrap_or(now);
        if kind == Kind::BreakGlass && draft.starts_at.is_some_and(|s| s > now) {
            errors.push(FieldError::new("starts_at", "a break-glass starts at once; leave `starts_at` out"));
        }
        if starts_at < earliest {
            errors.push(FieldError::new("starts_at", format!("`{starts_at}` is in the past")));
        }
        if draft.expires_at <= now {
            errors.push(FieldError::new("expires_at", format!("`{}` is not in the future", draft.expires_at)));
        } else if draft.expires_at <= starts_at {
            errors.push(FieldError::new("expires_at", "must be after `starts_at`"));
        } else {
            let (cap, rule) = self.max_duration(kind, draft.risk, credential_type);
            let (cap, rule) = if by_agent && self.agent_max_duration < cap {
                (self.agent_max_duration, "agent.max_duration".to_owned())
            } else {
                (cap, rule)
            };
            let lasts = draft.expires_at.duration_since(starts_at);
            if lasts > cap.duration() {
                errors.push(FieldError::rule(
                    "expires_at",
                    rule,
                    format!("the exception would last {}; at most {cap} is allowed", describe(lasts)),
                ));
            }
        }
        if let Some(floor) = self.min_risk_by_credential_type.get(&credential_type).filter(|f| draft.risk < **f) {
            errors.push(FieldError::rule(
                "risk",
                format!("min_risk.credential_type.{credential_type}"),
                format!(
                    "an exception for a `{credential_type}` is filed at risk `{floor}` or above, not `{}`",
                    draft.risk
                ),
            ));
        }
        if by_agent && draft.risk > self.agent_max_risk {
            errors.push(FieldError::rule(
                "risk",
                "agent.max_risk",
                format!("an agent may request up to `{}` risk, not `{}`", self.agent_max_risk, draft.risk),
            ));
        }
        if !self.wildcard_actions
            && let Some(idx) = draft.scope.actions.iter().position(|a| a == Scope::ANY_ACTION)
        {
            errors.push(FieldError::rule(
                format!("scope.actions[{idx}]"),
                "wildcard_actions",
                "the wildcard action `*` is not allowed; name each action",
            ));
        }
        let n_controls = u32::try_from(draft.compensating_controls.len()).unwrap_or(u32::MAX);
        let min = *self.controls_min.get(draft.risk);
        if n_controls < min {
            errors.push(FieldError::rule(
                "compensating_controls",
                format!("controls.min.{}", draft.risk),
                format!("`{}` risk needs at least {min} compensating controls; {n_controls} given", draft.risk),
            ));
        }
        for required in self.controls_required.get(draft.risk) {
            if !draft.compensating_controls.iter().any(|c| c.kind == *required) {
                errors.push(FieldError::rule(
                    "compensating_controls",
                    format!("controls.required.{}", draft.risk),
                    format!("`{}` risk needs a `{required}` control", draft.risk),
                ));
            }
        }
        if let Some(every) = draft.review_every {
            let max = *self.review_every.get(draft.risk);
            if every > max {
                errors.push(FieldError::rule(
                    "review.every",
                    format!("review_every.{}", draft.risk),
                    format!("`{}` risk must be reviewed at least every {max}; {every} given", draft.risk),
                ));
            }
        }
        if kind == Kind::Planned && self.remediation_plan_required && draft.remediation.is_none() {
            errors.push(FieldError::rule(
                "remediation",
                "remediation_plan_required",
                "a planned exception needs a remediation plan: how it returns to the baseline",
            ));
        }
        ValidationError::into_result(errors)
    }
}

/// A short human rendering of a duration: `45d`, `8h 30m`.
fn describe(d: jiff::SignedDuration) -> String {
    let secs = d.as_secs();
    let (days, hours, minutes) = (secs / 86_400, secs % 86_400 / 3600, secs % 3600 / 60);
    match (days, hours, minutes) {
        (0, 0, m) => format!("{m}m"),
        (0, h, 0) => format!("{h}h"),
        (0, h, m) => format!("{h}h {m}m"),
        (d, 0, _) => format!("{d}d"),
        (d, h, _) => format!("{d}d {h}h"),
    }
}

fn at(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    span.map(|s| format!(" (line {})", text.get(..s.start).unwrap_or_default().lines().count().max(1)))
        .unwrap_or_default()
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPerRisk<T> {
    low: Option<T>,
    medium: Option<T>,
    high: Option<T>,
    critical: Option<T>,
}

impl<T> RawPerRisk<T> {
    fn overlay(self, under: Self) -> Self {
        Self {
            low: self.low.or(under.low),
            medium: self.medium.or(under.medium),
            high: self.high.or(under.high),
            critical: self.critical.or(under.critical),
        }
    }

    fn build<U>(self, key: &str, f: impl Fn(&str, T) -> Result<U, RulesError>) -> Result<PerRisk<U>, RulesError> {
        let one = |name: &str, v: Option<T>| {
            let key = format!("{key}.{name}");
            v.ok_or_else(|| RulesError(format!("`{key}` is missing"))).and_then(|v| f(&key, v))
        };
        Ok(PerRisk {
            low: one("low", self.low)?,
            medium: one("medium", self.medium)?,
            high: one("high", self.high)?,
            critical: one("critical", self.critical)?,
        })
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMaxDuration {
    planned: Option<String>,
    break_glass: Option<String>,
    #[serde(default)]
    risk: RawPerRisk<String>,
    credential_type: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawControls {
    #[serde(default)]
    min: RawPerRisk<u32>,
    #[serde(default)]
    required: RawPerRisk<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBreakGlass {
    post_use_review_within: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    max_duration: Option<String>,
    max_risk: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReminders {
    before_expiry: Option<Vec<String>>,
    before_review: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUnused {
    after: Option<String>,
    action: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebhooks {
    allow_internal: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRevalidation {
    action: Option<String>,
    triggers: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeople {
    owner_left: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTokens {
    max_lifetime: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStepUp {
    actions: Option<Vec<String>>,
    max_age: Option<String>,
    acr: Option<Vec<String>>,
    amr: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRisk {
    credential_type: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRules {
    version: Option<u32>,
    renewal_limit: Option<u32>,
    pending_timeout: Option<String>,
    max_open_requests_per_subject: Option<u32>,
    wildcard_actions: Option<bool>,
    remediation_plan_required: Option<bool>,
    start_skew: Option<String>,
    #[serde(default)]
    max_duration: RawMaxDuration,
    #[serde(default)]
    approvals: RawPerRisk<u32>,
    #[serde(default)]
    controls: RawControls,
    #[serde(default)]
    review_every: RawPerRisk<String>,
    #[serde(default)]
    break_glass: RawBreakGlass,
    #[serde(default)]
    agent: RawAgent,
    #[serde(default)]
    reminders: RawReminders,
    #[serde(default)]
    unused: RawUnused,
    #[serde(default)]
    revalidation: RawRevalidation,
    #[serde(default)]
    webhooks: RawWebhooks,
    approvers: Option<BTreeMap<String, Vec<String>>>,
    #[serde(default)]
    people: RawPeople,
    #[serde(default)]
    min_risk: RawRisk,
    catalog: Option<BTreeMap<String, String>>,
    #[serde(default)]
    tokens: RawTokens,
    #[serde(default)]
    step_up: RawStepUp,
}

fn period(key: &str, v: String) -> Result<Period, RulesError> {
    v.parse().map_err(|e| RulesError(format!("`{key}`: {e}")))
}

fn required<T>(key: &str, v: Option<T>) -> Result<T, RulesError> {
    v.ok_or_else(|| RulesError(format!("`{key}` is missing")))
}

impl RawRules {
    fn overlay(self, under: Self) -> Self {
        Self {
            version: self.version.or(under.version),
            renewal_limit: self.renewal_limit.or(under.renewal_limit),
            pending_timeout: self.pending_timeout.or(under.pending_timeout),
            max_open_requests_per_subject: self.max_open_requests_per_subject.or(under.max_open_requests_per_subject),
            wildcard_actions: self.wildcard_actions.or(under.wildcard_actions),
            remediation_plan_required: self.remediation_plan_required.or(under.remediation_plan_required),
            start_skew: self.start_skew.or(under.start_skew),
            max_duration: RawMaxDuration {
                planned: self.max_duration.planned.or(under.max_duration.planned),
                break_glass: self.max_duration.break_glass.or(under.max_duration.break_glass),
                risk: self.max_duration.risk.overlay(under.max_duration.risk),
                // A file that lists credential types replaces the default list whole, so
                // that a type can be left uncapped.
                credential_type: self.max_duration.credential_type.or(under.max_duration.credential_type),
            },
            approvals: self.approvals.overlay(under.approvals),
            controls: RawControls {
                min: self.controls.min.overlay(under.controls.min),
                required: self.controls.required.overlay(under.controls.required),
            },
            review_every: self.review_every.overlay(under.review_every),
            break_glass: RawBreakGlass {
                post_use_review_within: self
                    .break_glass
                    .post_use_review_within
                    .or(under.break_glass.post_use_review_within),
            },
            agent: RawAgent {
                max_duration: self.agent.max_duration.or(under.agent.max_duration),
                max_risk: self.agent.max_risk.or(under.agent.max_risk),
            },
            reminders: RawReminders {
                before_expiry: self.reminders.before_expiry.or(under.reminders.before_expiry),
                before_review: self.reminders.before_review.or(under.reminders.before_review),
            },
            unused: RawUnused {
                after: self.unused.after.or(under.unused.after),
                action: self.unused.action.or(under.unused.action),
            },
            revalidation: RawRevalidation {
                action: self.revalidation.action.or(under.revalidation.action),
                triggers: self.revalidation.triggers.or(under.revalidation.triggers),
            },
            webhooks: RawWebhooks { allow_internal: self.webhooks.allow_internal.or(under.webhooks.allow_internal) },
            approvers: self.approvers.or(under.approvers),
            people: RawPeople { owner_left: self.people.owner_left.or(under.people.owner_left) },
            min_risk: RawRisk { credential_type: self.min_risk.credential_type.or(under.min_risk.credential_type) },
            catalog: self.catalog.or(under.catalog),
            tokens: RawTokens { max_lifetime: self.tokens.max_lifetime.or(under.tokens.max_lifetime) },
            step_up: RawStepUp {
                actions: self.step_up.actions.or(under.step_up.actions),
                max_age: self.step_up.max_age.or(under.step_up.max_age),
                acr: self.step_up.acr.or(under.step_up.acr),
                amr: self.step_up.amr.or(under.step_up.amr),
            },
        }
    }

    fn build(self) -> Result<Rules, RulesError> {
        let mut max_by_credential_type = BTreeMap::new();
        for (name, cap) in self.max_duration.credential_type.unwrap_or_default() {
            let key = format!("max_duration.credential_type.{name}");
            let credential_type = CredentialType::parse(&name).map_err(|e| RulesError(format!("`{key}`: {e}")))?;
            max_by_credential_type.insert(credential_type, period(&key, cap)?);
        }
        let approvals = self.approvals.build("approvals", |key, n| {
            if n == 0 { Err(RulesError(format!("`{key}`: at least one approval is needed; use 1"))) } else { Ok(n) }
        })?;
        let controls_required = self.controls.required.build("controls.required", |key, kinds| {
            kinds.iter().map(|k| ControlKind::parse(k).map_err(|e| RulesError(format!("`{key}`: {e}")))).collect()
        })?;
        let agent_max_risk = required("agent.max_risk", self.agent.max_risk)?;
        let periods = |key: &str, v: Option<Vec<String>>| -> Result<Vec<Period>, RulesError> {
            required(key, v)?.into_iter().map(|p| period(key, p)).collect()
        };
        let unused_action = required("unused.action", self.unused.action)?;
        let revalidation_action = required("revalidation.action", self.revalidation.action)?;
        let owner_left = required("people.owner_left", self.people.owner_left)?;
        let mut min_risk_by_credential_type = BTreeMap::new();
        for (name, risk) in self.min_risk.credential_type.unwrap_or_default() {
            let key = format!("min_risk.credential_type.{name}");
            let credential_type = CredentialType::parse(&name).map_err(|e| RulesError(format!("`{key}`: {e}")))?;
            min_risk_by_credential_type
                .insert(credential_type, Risk::parse(&risk).map_err(|e| RulesError(format!("`{key}`: {e}")))?);
        }
        let mut control_catalog = BTreeMap::new();
        for (name, what) in self.catalog.unwrap_or_default() {
            crate::text::check_name("catalog", &name)
                .and_then(|()| {
                    name.parse::<crate::PolicyId>()
                        .map(|_| ())
                        .map_err(|e| crate::FieldError::new("catalog", e.to_string()))
                })
                .and_then(|()| crate::text::check_text("catalog", &what, crate::text::MAX_TEXT_BYTES))
                .map_err(|e| RulesError(format!("`catalog.{name}`: {}", e.message)))?;
            control_catalog.insert(name, what);
        }
        Ok(Rules {
            max_planned: period("max_duration.planned", required("max_duration.planned", self.max_duration.planned)?)?,
            max_break_glass: period(
                "max_duration.break_glass",
                required("max_duration.break_glass", self.max_duration.break_glass)?,
            )?,
            max_by_risk: self.max_duration.risk.build("max_duration.risk", period)?,
            max_by_credential_type,
            approvals,
            controls_min: self.controls.min.build("controls.min", |_, n| Ok(n))?,
            controls_required,
            review_every: self.review_every.build("review_every", period)?,
            renewal_limit: required("renewal_limit", self.renewal_limit)?,
            pending_timeout: period("pending_timeout", required("pending_timeout", self.pending_timeout)?)?,
            max_open_requests_per_subject: required(
                "max_open_requests_per_subject",
                self.max_open_requests_per_subject,
            )?,
            post_use_review_within: period(
                "break_glass.post_use_review_within",
                required("break_glass.post_use_review_within", self.break_glass.post_use_review_within)?,
            )?,
            wildcard_actions: required("wildcard_actions", self.wildcard_actions)?,
            remediation_plan_required: required("remediation_plan_required", self.remediation_plan_required)?,
            start_skew: period("start_skew", required("start_skew", self.start_skew)?)?,
            agent_max_duration: period("agent.max_duration", required("agent.max_duration", self.agent.max_duration)?)?,
            agent_max_risk: Risk::parse(&agent_max_risk).map_err(|e| RulesError(format!("`agent.max_risk`: {e}")))?,
            remind_before_expiry: periods("reminders.before_expiry", self.reminders.before_expiry)?,
            remind_before_review: periods("reminders.before_review", self.reminders.before_review)?,
            unused_after: period("unused.after", required("unused.after", self.unused.after)?)?,
            unused_action: FollowUp::parse("unused.action", &unused_action, &[FollowUp::Flag, FollowUp::Revoke])?,
            revalidation_action: FollowUp::parse(
                "revalidation.action",
                &revalidation_action,
                &[FollowUp::Flag, FollowUp::Suspend],
            )?,
            revalidation_triggers: required("revalidation.triggers", self.revalidation.triggers)?
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    crate::RevalidationTrigger::parse(t)
                        .map_err(|e| RulesError(format!("`revalidation.triggers[{i}]`: {e}")))
                })
                .collect::<Result<_, _>>()?,
            owner_left_action: FollowUp::parse("people.owner_left", &owner_left, &[FollowUp::Flag, FollowUp::Suspend])?,
            token_max_lifetime: period(
                "tokens.max_lifetime",
                required("tokens.max_lifetime", self.tokens.max_lifetime)?,
            )?,
            min_risk_by_credential_type,
            control_catalog,
            approver_groups: self
                .approvers
                .unwrap_or_default()
                .into_iter()
                .map(|(group, members)| {
                    let members = members
                        .iter()
                        .map(|m| {
                            crate::Principal::parse("member", m)
                                .map_err(|e| RulesError(format!("`approvers.{group}`: `{m}` {}", e.message)))
                        })
                        .collect::<Result<Vec<_>, _>>()?;
                    Ok((group, members))
                })
                .collect::<Result<_, RulesError>>()?,
            webhook_allow_internal: allow_list(self.webhooks.allow_internal.unwrap_or_default())?,
            step_up: self.step_up.build()?,
        })
    }
}

impl RawStepUp {
    fn build(self) -> Result<StepUp, RulesError> {
        let actions = self.actions.unwrap_or_default();
        if let Some(bad) = actions.iter().find(|a| !StepUp::ACTIONS.contains(&a.as_str())) {
            return Err(RulesError(format!(
                "`step_up.actions`: `{bad}` is not one of `{}`",
                StepUp::ACTIONS.join("`, `")
            )));
        }
        let max_age = self.max_age.map(|v| period("step_up.max_age", v)).transpose()?;
        let (acr, amr) = (self.acr.unwrap_or_default(), self.amr.unwrap_or_default());
        for (key, values) in [("step_up.acr", &acr), ("step_up.amr", &amr)] {
            if let Some(bad) = values.iter().find(|v| v.is_empty() || v.len() > 200 || v.chars().any(char::is_control))
            {
                return Err(RulesError(format!("`{key}`: `{bad}` is not a usable value")));
            }
        }
        if !actions.is_empty() && max_age.is_none() && acr.is_empty() && amr.is_empty() {
            return Err(RulesError(
                "`step_up`: actions are named but nothing is asked of the sign-in; set `max_age`, `acr` or `amr`"
                    .into(),
            ));
        }
        Ok(StepUp { actions, max_age, acr, amr })
    }
}

/// `HOST` or `HOST:PORT` entries, checked and lowercased.
fn allow_list(entries: Vec<String>) -> Result<Vec<String>, RulesError> {
    entries
        .into_iter()
        .enumerate()
        .map(|(i, entry)| {
            let ok = !entry.is_empty()
                && entry.len() <= 256
                && entry.chars().all(|c| c.is_ascii_alphanumeric() || ".-:[]_".contains(c));
            if ok {
                Ok(entry.to_ascii_lowercase())
            } else {
                Err(RulesError(format!("`webhooks.allow_internal[{i}]`: `{entry}` is not a `HOST` or `HOST:PORT`")))
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_file_parses_to_the_documented_values() {
        let rules = Rules::from_toml(DEFAULT_RULES_TOML).unwrap();
        assert_eq!(rules, Rules::default());
        assert_eq!(rules.max_planned, Period::from_days(90));
        assert_eq!(*rules.approvals.get(Risk::Critical), 2);
        assert_eq!(
            rules.controls_required.get(Risk::Critical),
            &vec![ControlKind::ExtraLogging, ControlKind::Monitoring]
        );
        assert_ne!(rules, Rules::fallback());
    }

    #[test]
    fn step_up_asks_recent_and_strong_sign_ins_of_the_named_actions_only() {
        let rules =
            Rules::from_toml("[step_up]\nactions = [\"approve\"]\nmax_age = \"PT10M\"\nacr = [\"urn:mfa\"]\n").unwrap();
        let now: Timestamp = "2026-06-01T12:00:00Z".parse().unwrap();
        let lee = crate::Actor::new(crate::Principal::parse("p", "lee").unwrap(), &[crate::Role::Approver]);
        let step = &rules.step_up;
        assert!(step.refuses("revoke", &lee, now).is_none(), "revoke is not named");
        assert!(step.refuses("approve", &lee, now).unwrap().contains("presents none"));
        let signed = |minutes: i64, acr: &str| {
            lee.clone().authenticated(crate::Authentication {
                at: now - jiff::SignedDuration::from_mins(minutes),
                acr: Some(acr.into()),
                amr: vec!["pwd".into()],
            })
        };
        assert!(step.refuses("approve", &signed(2, "urn:mfa"), now).is_none());
        assert!(step.refuses("approve", &signed(11, "urn:mfa"), now).unwrap().contains("within the last"));
        assert!(step.refuses("approve", &signed(2, "urn:pwd"), now).unwrap().contains("acr is `urn:pwd`"));
        for bad in ["[step_up]\nactions = [\"delete\"]\nmax_age = \"PT1M\"", "[step_up]\nactions = [\"approve\"]"] {
            assert!(Rules::from_toml(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn smallest_cap_applies_and_is_named() {
        let rules = Rules::default();
        let (cap, rule) = rules.max_duration(Kind::Planned, Risk::Low, CredentialType::LongLivedSecret);
        assert_eq!((cap, rule.as_str()), (Period::from_days(30), "max_duration.credential_type.long_lived_secret"));
        let (cap, rule) = rules.max_duration(Kind::Planned, Risk::Critical, CredentialType::WorkloadToken);
        assert_eq!((cap, rule.as_str()), (Period::from_days(7), "max_duration.risk.critical"));
        let (_, rule) = rules.max_duration(Kind::BreakGlass, Risk::Low, CredentialType::WorkloadToken);
        assert_eq!(rule, "max_duration.break_glass");
    }

    #[test]
    fn partial_files_overlay_the_defaults() {
        let rules = Rules::from_toml("renewal_limit = 5\n[approvals]\nhigh = 3\n").unwrap();
        assert_eq!(rules.renewal_limit, 5);
        assert_eq!(*rules.approvals.get(Risk::High), 3);
        assert_eq!(*rules.approvals.get(Risk::Critical), 2);
    }

    #[test]
    fn bad_files_name_the_key() {
        for (text, expect) in [
            ("renewal_limt = 5", "unknown field `renewal_limt`"),
            ("pending_timeout = \"P1M\"", "`pending_timeout`"),
            ("[approvals]\nlow = 0", "`approvals.low`"),
            ("[controls.required]\nhigh = [\"firewall\"]", "`controls.required.high`"),
            ("[max_duration.credential_type]\npassword = \"P1D\"", "`max_duration.credential_type.password`"),
            ("version = 2", "`version`"),
            ("[agent]\nmax_risk = \"extreme\"", "`agent.max_risk`"),
            ("[unused]\naction = \"suspend\"", "`unused.action`"),
            ("[revalidation]\naction = \"revoke\"", "`revalidation.action`"),
            ("[reminders]\nbefore_expiry = [\"soon\"]", "`reminders.before_expiry`"),
        ] {
            let err = Rules::from_toml(text).unwrap_err().to_string();
            assert!(err.contains(expect), "{text}: {err}");
        }
    }
}

//! What an approver sees before deciding (issue 20): the rules a request waives with their
//! Cedar text and governance annotations; what it would newly allow, computed with the
//! engine on today's snapshot (and what it would not: still denied by a rule it does not
//! waive, or already allowed); the live exceptions it overlaps or duplicates; how broad it is
//! for its risk; and the identity's and the requester's history.
//!
//! Read-only and bounded: at most [`MAX_PAIRS`] (action, resource) pairs are evaluated.

use std::{collections::BTreeMap, sync::Arc};

use waiver_core::{Exception, ExceptionId, Risk, State, Timestamp};
use waiver_engine::{DecisionRequest, Snapshot, Target};

/// Most (action, resource) pairs the preview evaluates.
pub const MAX_PAIRS: usize = 24;
/// A scope wider than this many pairs, filed at `low` or `medium` risk, is called out.
pub const BROAD_PAIRS: usize = 10;

/// One waived rule, as the baseline has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaivedRule {
    pub id: String,
    /// The Cedar text (none for `default-deny` and controls outside Cedar).
    pub text: Option<String>,
    /// Its governance annotations, in words (`@risk("high")`, `@approvers("dba")` …).
    pub annotations: Vec<String>,
}

/// What the request would do for one (action, resource) pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub action: String,
    pub resource: String,
    /// `newly_allowed`, `already_allowed`, `already_granted`, `still_denied` or `unknown`.
    pub kind: &'static str,
    /// The sentence shown.
    pub text: String,
}

/// A live exception of the same subject that shares waived rules and scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overlap {
    pub id: ExceptionId,
    pub state: State,
    /// The same rules and the same scope.
    pub duplicate: bool,
}

/// The approver's panel.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Panel {
    pub rules: Vec<WaivedRule>,
    pub outcomes: Vec<Outcome>,
    /// Pairs in scope beyond those evaluated.
    pub more_pairs: usize,
    pub overlaps: Vec<Overlap>,
    /// Warnings in words: ineffective, unnecessary, broad for its risk, overlapping.
    pub warnings: Vec<String>,
    /// The subject's exceptions by effective state (this one excluded).
    pub identity_history: BTreeMap<&'static str, usize>,
    /// The requester's filings by effective state (this one excluded).
    pub requester_history: BTreeMap<&'static str, usize>,
    /// The precedent cluster it joins, as the precedent report groups them: live exceptions
    /// waiving the same rule for the same actions on the same types of resource (the rule,
    /// and how many others). A large one says the baseline may need changing instead.
    pub precedent: Option<(String, usize)>,
}

fn pairs(e: &Exception) -> Vec<(String, String, bool)> {
    let mut out = Vec::new();
    for action in &e.scope.actions {
        for r in &e.scope.resources {
            out.push((action.clone(), r.entity.to_string(), r.descendants));
        }
    }
    out
}

fn live(state: State) -> bool {
    matches!(state, State::Requested | State::Approved | State::Active | State::Suspended)
}

/// The panel for `e`, with `snapshot` as decisions stand now and `all` the register.
pub fn panel(snapshot: &Snapshot, e: &Exception, all: &[Arc<Exception>], now: Timestamp) -> Panel {
    let mut panel = Panel::default();
    let baseline = snapshot.baseline();
    for waived in &e.waives {
        let id = waived.to_string();
        let mut annotations = Vec::new();
        if let Some(floors) = baseline.floors(&id) {
            if let Some(risk) = floors.risk {
                annotations.push(format!("@risk(\"{risk}\"): filed at {risk} risk or above"));
            }
            if let Some(max) = floors.max_duration {
                annotations.push(format!("@max_duration(\"{max}\"): lasts at most {max}"));
            }
            if !floors.controls.is_empty() {
                let kinds: Vec<&str> = floors.controls.iter().map(|c| c.as_str()).collect();
                annotations.push(format!("@controls(\"{}\"): needs these controls", kinds.join(", ")));
            }
            if !floors.approvers.is_empty() {
                annotations.push(format!("@approvers(\"{}\"): only these groups approve", floors.approvers.join(", ")));
            }
        }
        panel.rules.push(WaivedRule { text: baseline.policy_text(&id), id, annotations });
    }

    let waived: Vec<String> = e.waives.iter().map(ToString::to_string).collect();
    let controls_only = e.waives.iter().all(waiver_core::exception::Waived::is_control);
    let all_pairs = pairs(e);
    panel.more_pairs = all_pairs.len().saturating_sub(MAX_PAIRS);
    if !controls_only {
        for (action, resource, descendants) in all_pairs.iter().take(MAX_PAIRS) {
            let (rtype, rid) = resource.split_once(':').unwrap_or(("", resource.as_str()));
            let request = DecisionRequest {
                subject: Target {
                    entity_type: e.subject.entity_type().to_string(),
                    id: e.subject.id().to_owned(),
                    properties: None,
                },
                action: action.clone(),
                resource: Target { entity_type: rtype.to_owned(), id: rid.to_owned(), properties: None },
                context: serde_json::Value::Null,
            };
            let whom = format!(
                "{} may {action} {resource}{}",
                e.subject.id(),
                if *descendants { " (and what is in it)" } else { "" }
            );
            let (kind, text) = match snapshot.evaluate(&request, now, true) {
                Err(err) => ("unknown", format!("{whom}: cannot be evaluated ({err})")),
                Ok(d) if d.allowed && d.exception.is_none() => {
                    ("already_allowed", format!("{whom}: already allowed by the baseline ({})", d.reasons.join(", ")))
                }
                Ok(d) => {
                    let unwaived: Vec<&String> = d.reasons.iter().filter(|r| !waived.contains(r)).collect();
                    let by = d.reasons.join(", ");
                    match (&d.exception, unwaived.is_empty()) {
                        (Some(g), _) if g.id != e.id => (
                            "already_granted",
                            format!("{whom}: already allowed through {} (today denied by {by})", g.id),
                        ),
                        (_, true) => ("newly_allowed", format!("{whom} — today denied by {by}")),
                        (_, false) => (
                            "still_denied",
                            format!(
                                "{whom}: still denied by {}, which it does not waive",
                                unwaived.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                            ),
                        ),
                    }
                }
            };
            panel.outcomes.push(Outcome { action: action.clone(), resource: resource.clone(), kind, text });
        }
    }
    let count = |k: &str| panel.outcomes.iter().filter(|o| o.kind == k).count();
    if !panel.outcomes.is_empty() && count("newly_allowed") == 0 {
        if count("still_denied") > 0 {
            panel.warnings.push(
                "Ineffective: nothing it covers would be allowed; a rule it does not waive still denies it.".into(),
            );
        } else if count("already_allowed") + count("already_granted") == panel.outcomes.len() {
            panel.warnings.push("Unnecessary: everything it covers is already allowed.".into());
        }
    } else if count("still_denied") > 0 {
        panel
            .warnings
            .push(format!("{} of the pairs evaluated stay denied by rules it does not waive.", count("still_denied")));
    }
    let breadth = all_pairs.len();
    let deep = e.scope.resources.iter().any(|r| r.descendants) || e.scope.actions.iter().any(|a| a == "*");
    if (breadth > BROAD_PAIRS || deep) && e.risk <= Risk::Medium {
        panel.warnings.push(format!(
            "Broad for `{}` risk: {breadth} action-resource pairs{}.",
            e.risk,
            if deep { ", including everything inside a resource" } else { "" }
        ));
    }

    let mine: std::collections::BTreeSet<(String, String, bool)> = all_pairs.iter().cloned().collect();
    for other in all.iter().filter(|o| o.id != e.id && o.subject == e.subject) {
        let state = other.effective_state(now);
        *panel.identity_history.entry(state.as_str()).or_default() += 1;
        if !live(state) || !other.waives.iter().any(|w| e.waives.contains(w)) {
            continue;
        }
        let theirs: std::collections::BTreeSet<(String, String, bool)> = pairs(other).into_iter().collect();
        if theirs.is_disjoint(&mine) {
            continue;
        }
        let duplicate = theirs == mine && other.waives == e.waives;
        panel.overlaps.push(Overlap { id: other.id, state, duplicate });
    }
    for other in all.iter().filter(|o| o.id != e.id && o.requester == e.requester) {
        *panel.requester_history.entry(other.effective_state(now).as_str()).or_default() += 1;
    }
    // The precedent report's key: the waived rule, the action set, the resource types.
    let actions: std::collections::BTreeSet<&str> = e.scope.actions.iter().map(String::as_str).collect();
    let types: std::collections::BTreeSet<&str> =
        e.scope.resources.iter().map(|r| r.entity.entity_type().as_str()).collect();
    for waived in e.waives.iter().filter(|w| !w.is_control()) {
        let n = all
            .iter()
            .filter(|o| o.id != e.id && o.waives.contains(waived))
            .filter(|o| matches!(o.effective_state(now), State::Approved | State::Active | State::Suspended))
            .filter(|o| {
                o.scope.actions.iter().map(String::as_str).collect::<std::collections::BTreeSet<_>>() == actions
            })
            .filter(|o| {
                o.scope
                    .resources
                    .iter()
                    .map(|r| r.entity.entity_type().as_str())
                    .collect::<std::collections::BTreeSet<_>>()
                    == types
            })
            .count();
        if n > 0 && panel.precedent.as_ref().is_none_or(|(_, most)| n > *most) {
            panel.precedent = Some((waived.to_string(), n));
        }
    }
    let duplicates: Vec<String> = panel.overlaps.iter().filter(|o| o.duplicate).map(|o| o.id.to_string()).collect();
    if !duplicates.is_empty() {
        panel
            .warnings
            .push(format!("Duplicate of {}: the same rules and scope for the same subject.", duplicates.join(", ")));
    } else if !panel.overlaps.is_empty() {
        let ids: Vec<String> = panel.overlaps.iter().map(|o| o.id.to_string()).collect();
        panel.warnings.push(format!("Overlaps {}: the same subject, rules and part of the scope.", ids.join(", ")));
    }
    panel
}

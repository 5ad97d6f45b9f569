//! Printing results as text for people or JSON for programs.

use std::fmt::Write as _;

use jiff::{Timestamp, Unit};
use serde::Serialize;
use serde_json::{Value, json};
use waiver_core::{
    Exception, ExceptionId, Identity,
    audit::{BrokenLink, ChainHead, EventRecord},
};
use waiver_service::IssuedToken;
use waiver_store::seal::Tampered;

use crate::cli::Output;

/// Prints in the chosen format.
#[derive(Debug, Clone, Copy)]
pub struct Printer {
    format: Output,
}

fn json_line<T: Serialize>(value: &T) {
    use std::io::Write as _;
    match serde_json::to_string_pretty(value) {
        Ok(text) => {
            let mut stdout = std::io::stdout().lock();
            let _ = writeln!(stdout, "{text}").and_then(|()| stdout.flush());
        }
        Err(e) => eprintln!("error: cannot print JSON: {e}"),
    }
}

/// "in 3d 4h", "2h ago": how far `at` is from `now`, roughly.
pub fn relative(at: Timestamp, now: Timestamp) -> String {
    let secs = at.duration_since(now).as_secs();
    let abs = secs.unsigned_abs();
    let text = match abs {
        0..60 => format!("{abs}s"),
        60..3600 => format!("{}m", abs / 60),
        3600..86_400 => format!("{}h {}m", abs / 3600, abs % 3600 / 60),
        _ => format!("{}d {}h", abs / 86_400, abs % 86_400 / 3600),
    };
    if secs >= 0 { format!("in {text}") } else { format!("{text} ago") }
}

fn short(at: Timestamp) -> String {
    at.round(Unit::Second).map(|t| t.to_string()).unwrap_or_else(|_| at.to_string())
}

impl Printer {
    pub fn new(format: Output) -> Self {
        Self { format }
    }

    pub fn is_json(&self) -> bool {
        self.format == Output::Json
    }

    /// A line of text, printed only in text mode. A closed stdout (a pipe whose reader went
    /// away) is not worth dying for, above all in a server.
    pub fn say(&self, text: impl AsRef<str>) {
        if !self.is_json() {
            use std::io::Write as _;
            let mut stdout = std::io::stdout().lock();
            let _ = writeln!(stdout, "{}", text.as_ref()).and_then(|()| stdout.flush());
        }
    }

    /// A JSON value, printed only in JSON mode.
    pub fn json(&self, value: &impl Serialize) {
        if self.is_json() {
            json_line(value);
        }
    }

    pub fn filed(&self, e: &Exception, now: Timestamp) {
        if self.is_json() {
            return json_line(&waiver_proto::Exception::view(e, now));
        }
        outln!("{}", e.id);
        eprintln!(
            "{} {} for {}: needs {} approval{} by someone other than {} and {}; expires {} ({})",
            e.id,
            e.effective_state(now),
            e.subject,
            e.approvals_required,
            if e.approvals_required == 1 { "" } else { "s" },
            e.requester,
            e.owner,
            short(e.expires_at),
            relative(e.expires_at, now),
        );
    }

    pub fn exception(&self, e: &Exception, now: Timestamp, history: Option<&[EventRecord]>) {
        if self.is_json() {
            let mut view = serde_json::to_value(waiver_proto::Exception::view(e, now)).unwrap_or(Value::Null);
            if let (Some(history), Value::Object(map)) = (history, &mut view) {
                let events: Vec<_> = history.iter().map(waiver_proto::Event::from).collect();
                map.insert("history".into(), serde_json::to_value(events).unwrap_or(Value::Null));
            }
            return json_line(&view);
        }
        let mut s = String::new();
        let state = e.effective_state(now);
        let _ = writeln!(s, "{}  {}  {}  risk {}", e.id, e.kind, state, e.risk);
        let _ = writeln!(s, "  subject        {} ({})", e.subject, e.credential_type);
        let waives: Vec<_> = e.waives.iter().map(ToString::to_string).collect();
        let _ = writeln!(s, "  waives         {}", waives.join(", "));
        let resources: Vec<_> = e
            .scope
            .resources
            .iter()
            .map(|r| if r.descendants { format!("{} and descendants", r.entity) } else { r.entity.to_string() })
            .collect();
        let _ = writeln!(s, "  scope          {} on {}", e.scope.actions.join(", "), resources.join(", "));
        if let Some(condition) = &e.condition {
            let _ = writeln!(s, "  condition      {condition}");
        }
        for c in &e.compensating_controls {
            let how = if c.enforced { "enforced" } else { "attested" };
            let _ = writeln!(s, "  control        {} ({how}): {}", c.kind, c.description);
        }
        let _ = writeln!(s, "  requester      {}    owner {}", e.requester, e.owner);
        let approvers: Vec<_> = e.approvals.iter().map(|a| a.by.to_string()).collect();
        let _ = writeln!(
            s,
            "  approvals      {}/{} {}",
            e.approvals.iter().filter(|a| a.round == e.renewals).count(),
            e.approvals_required,
            if approvers.is_empty() { String::new() } else { format!("({})", approvers.join(", ")) }
        );
        let _ = writeln!(
            s,
            "  window         {} → {} (expires {})",
            short(e.starts_at),
            short(e.expires_at),
            relative(e.expires_at, now)
        );
        let overdue = if e.review_overdue(now) { "  OVERDUE" } else { "" };
        let _ =
            writeln!(s, "  review         every {}, next due {}{overdue}", e.review.every, short(e.review.next_due));
        if let Some(p) = &e.pending_renewal {
            let _ = writeln!(
                s,
                "  renewal        to {} asked by {}, {}/{} approvals",
                short(p.expires_at),
                p.requested_by,
                p.approvals.len(),
                e.approvals_required
            );
        }
        if e.renewals > 0 {
            let _ = writeln!(s, "  renewals       {}", e.renewals);
        }
        if let Some(due) = e.post_use_review_due().filter(|_| state == waiver_core::State::AwaitingPostUseReview) {
            let late = if e.post_use_review_overdue(now) { "  OVERDUE" } else { "" };
            let _ = writeln!(s, "  post-use review due {}{late}", short(due));
        }
        if let Some(trigger) = e.suspended_by {
            let _ = writeln!(s, "  suspended by   {trigger} (the owner must attest)");
        }
        let _ = writeln!(s, "  justification  {}", e.justification);
        if let Some(r) = &e.remediation {
            let _ = writeln!(s, "  remediation    {}", r.plan);
        }
        if let Some(history) = history {
            let _ = writeln!(s, "  history");
            for event in history {
                let _ = writeln!(s, "    #{:<6} {}  {:<28} by {}", event.seq, event.at, event.event_type, event.actor);
            }
        }
        outln!("{}", s.trim_end_matches('\n'));
    }

    pub fn exception_list(&self, exceptions: &[Exception], now: Timestamp) {
        if self.is_json() {
            let items: Vec<_> = exceptions.iter().map(|e| waiver_proto::Exception::view(e, now)).collect();
            return json_line(&json!({ "items": items, "next_cursor": null }));
        }
        outln!(
            "{:<11} {:<11} {:<24} {:<8} {:<40} {:<10} {:<36} EXPIRES",
            "ID",
            "KIND",
            "STATE",
            "RISK",
            "SUBJECT",
            "OWNER",
            "WAIVES"
        );
        for e in exceptions {
            let waives: Vec<_> = e.waives.iter().map(ToString::to_string).collect();
            outln!(
                "{:<11} {:<11} {:<24} {:<8} {:<40} {:<10} {:<36} {}",
                e.id.to_string(),
                e.kind.as_str(),
                e.effective_state(now).as_str(),
                e.risk.as_str(),
                e.subject.to_string(),
                e.owner.as_str(),
                waives.join(","),
                relative(e.expires_at, now)
            );
        }
        outln!("{} exceptions", exceptions.len());
    }

    pub fn identity(&self, identity: &Identity, exceptions: Option<&[Exception]>, now: Timestamp) {
        if self.is_json() {
            let mut view = serde_json::to_value(waiver_proto::Identity::from(identity)).unwrap_or(Value::Null);
            if let (Some(exceptions), Value::Object(map)) = (exceptions, &mut view) {
                let items: Vec<_> = exceptions.iter().map(|e| waiver_proto::Exception::view(e, now)).collect();
                map.insert("exceptions".into(), serde_json::to_value(items).unwrap_or(Value::Null));
            }
            return json_line(&view);
        }
        outln!(
            "{}  {}  {}  owner {}  team {}  credential {}",
            identity.entity,
            identity.kind,
            identity.status,
            identity.owner,
            identity.team.as_deref().unwrap_or("-"),
            identity.credential_type
        );
        for e in exceptions.unwrap_or_default() {
            outln!("  {}  {}  expires {}", e.id, e.effective_state(now), relative(e.expires_at, now));
        }
    }

    pub fn identity_list(&self, identities: &[Identity]) {
        if self.is_json() {
            let items: Vec<_> = identities.iter().map(waiver_proto::Identity::from).collect();
            return json_line(&json!({ "items": items, "next_cursor": null }));
        }
        for i in identities {
            outln!(
                "{:<56} {:<16} {:<11} {:<8} {}",
                i.entity.to_string(),
                i.kind.as_str(),
                i.status.as_str(),
                i.owner.as_str(),
                i.team.as_deref().unwrap_or("-")
            );
        }
        outln!("{} identities", identities.len());
    }

    pub fn offboarded(&self, identity: &Identity, revoked: &[ExceptionId]) {
        let ids: Vec<_> = revoked.iter().map(ToString::to_string).collect();
        if self.is_json() {
            return json_line(&json!({ "identity": waiver_proto::Identity::from(identity), "revoked": ids }));
        }
        outln!("{} offboarded; revoked {} exceptions {}", identity.entity, ids.len(), ids.join(" "));
    }

    /// An export that verified offline.
    pub fn export_verified(&self, v: &waiver_evidence::ExportVerified) {
        if self.is_json() {
            return json_line(&json!({
                "ok": true, "events": v.chain.n_events, "head_hash": v.chain.head_hash,
                "exceptions": v.exceptions, "identities": v.identities, "artifacts": v.artifacts,
            }));
        }
        outln!(
            "ok: the export verifies — {} events up to head {}; {} exceptions, {} identities and {} baseline/rules \
             versions match them (compare the head with one anchored elsewhere)",
            v.chain.n_events,
            v.chain.head_hash,
            v.exceptions,
            v.identities,
            v.artifacts
        );
    }

    pub fn export_refused(&self, why: &str) {
        if self.is_json() {
            return json_line(&json!({ "ok": false, "reason": why }));
        }
        outln!("the export does not verify: {why}");
    }

    /// What `audit verify` found: the chain, then the records that do not match it.
    pub fn verification(&self, chain: &Result<ChainHead, BrokenLink>, records: &[Tampered]) {
        if self.is_json() {
            let records: Vec<_> = records.iter().map(|t| json!({ "record": t.key, "reason": t.reason })).collect();
            return json_line(&match chain {
                Ok(head) => json!({
                    "ok": records.is_empty(), "events": head.n_events, "head_hash": head.head_hash, "records": records,
                }),
                Err(broken) => json!({ "ok": false, "first_bad_seq": broken.seq, "reason": broken.reason }),
            });
        }
        match chain {
            Ok(head) if records.is_empty() => {
                outln!("ok: {} events, head {}; every record matches its events", head.n_events, head.head_hash);
            }
            Ok(head) => {
                outln!("chain ok: {} events, head {}", head.n_events, head.head_hash);
                for t in records {
                    outln!("record {} does not match the audit log: {}", t.key, t.reason);
                }
            }
            Err(broken) => outln!("broken at event {}: {}", broken.seq, broken.reason),
        }
    }

    pub fn events(&self, events: &[EventRecord]) {
        if self.is_json() {
            let items: Vec<_> = events.iter().map(waiver_proto::Event::from).collect();
            return json_line(&json!({ "items": items }));
        }
        for e in events {
            outln!(
                "#{:<6} {}  {:<28} {:<12} by {}",
                e.seq,
                e.at,
                e.event_type,
                e.exception_id.as_deref().unwrap_or("-"),
                e.actor
            );
        }
    }

    pub fn token(&self, issued: &IssuedToken) {
        if self.is_json() {
            return json_line(&json!({
                "id": issued.record.id, "token": issued.secret, "principal": issued.record.principal,
                "roles": issued.record.roles, "expires_at": issued.record.expires_at,
            }));
        }
        outln!("{}", issued.secret);
        eprintln!(
            "token {} for {} ({}); expires {}; shown once, stored hashed",
            issued.record.id,
            issued.record.principal,
            issued.record.roles.join(", "),
            issued.record.expires_at.as_deref().unwrap_or("never")
        );
    }
}

//! How records read on a page: times, durations, rows of the register.

use jiff::{SignedDuration, Timestamp};
use waiver_core::Exception;

/// `2026-11-23 09:30 UTC`.
pub(crate) fn when(t: Timestamp) -> String {
    t.strftime("%Y-%m-%d %H:%M UTC").to_string()
}

/// A rule's period in words: `30 days`, `8 hours`, `1 day 12 hours`, `90 minutes`.
pub(crate) fn human(p: waiver_core::Period) -> String {
    let secs = p.duration().as_secs().unsigned_abs();
    let unit = |n: u64, one: &str| if n == 1 { format!("1 {one}") } else { format!("{n} {one}s") };
    let (days, hours, minutes) = (secs / 86_400, secs % 86_400 / 3600, secs % 3600 / 60);
    let mut parts = Vec::new();
    if days > 0 {
        parts.push(unit(days, "day"));
    }
    if hours > 0 {
        parts.push(unit(hours, "hour"));
    }
    if minutes > 0 && days == 0 {
        parts.push(unit(minutes, "minute"));
    }
    if parts.is_empty() { unit(secs, "second") } else { parts.join(" ") }
}

/// A stored RFC 3339 string shown as [`when`], or as it is if it does not parse.
pub(crate) fn when_str(s: &str) -> String {
    s.parse::<Timestamp>().map(when).unwrap_or_else(|_| s.to_owned())
}

/// `3d 4h`, `5h 10m`, `42m`, `under a minute`.
pub(crate) fn span(d: SignedDuration) -> String {
    let secs = d.as_secs().unsigned_abs();
    let (days, hours, minutes) = (secs / 86_400, secs % 86_400 / 3600, secs % 3600 / 60);
    match (days, hours, minutes) {
        (0, 0, 0) => "under a minute".to_owned(),
        (0, 0, m) => format!("{m}m"),
        (0, h, m) => format!("{h}h {m}m"),
        (d, h, _) => format!("{d}d {h}h"),
    }
}

/// `in 3d 4h` or `2h 5m ago`.
pub(crate) fn relative(now: Timestamp, t: Timestamp) -> String {
    if t >= now {
        format!("in {}", span(t.duration_since(now)))
    } else {
        format!("{} ago", span(now.duration_since(t)))
    }
}

/// One row of a list of exceptions.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    pub id: String,
    pub state: String,
    pub kind: String,
    pub risk: String,
    pub subject: String,
    pub subject_link: String,
    pub owner: String,
    pub requester: String,
    pub waives: String,
    pub expires: String,
    pub expires_at: String,
    pub justification: String,
    /// `3d ago`: since it was filed.
    pub age: String,
    /// `2h ago`, or `never`.
    pub last_used: String,
    /// When the owner next attests, while it is live; else empty.
    pub review_due: String,
}

pub(crate) fn identity_link(entity: &str) -> String {
    format!("/ui/identities/{}", encode_path(entity))
}

/// Percent-encodes a path segment (entity ids hold `:` and `/`).
pub(crate) fn encode_path(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b':') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// When an exception stopped mattering, if it has: resolved (rejected, withdrawn, revoked:
/// its resolution's time), timed out, expired or ended (its expiry). `None` while it is
/// requested, approved, active or suspended.
pub(crate) fn ended_at(e: &Exception, now: Timestamp) -> Option<Timestamp> {
    use waiver_core::State;
    match e.effective_state(now) {
        State::Requested | State::Approved | State::Active | State::Suspended => None,
        State::Rejected | State::Withdrawn | State::Revoked => {
            Some(e.resolution.as_ref().map_or(e.updated_at, |r| r.at))
        }
        State::Expired => Some(
            match (e.state, e.request_expires_at) {
                (State::Requested, Some(timeout)) => timeout.min(e.expires_at),
                _ => e.expires_at,
            }
            .min(now),
        ),
        State::AwaitingPostUseReview | State::Closed => Some(e.expires_at.min(now)),
    }
}

impl Row {
    pub(crate) fn of(e: &Exception, now: Timestamp) -> Self {
        let state = e.effective_state(now);
        let expires = match ended_at(e, now) {
            None => relative(now, e.expires_at),
            Some(at) => format!("ended {}", relative(now, at)),
        };
        let mut justification: String = e.justification.chars().take(90).collect();
        if e.justification.chars().count() > 90 {
            justification.push('…');
        }
        Row {
            id: e.id.to_string(),
            state: state.as_str().to_owned(),
            kind: e.kind.to_string(),
            risk: e.risk.to_string(),
            subject: e.subject.to_string(),
            subject_link: identity_link(&e.subject.to_string()),
            owner: e.owner.to_string(),
            requester: e.requester.to_string(),
            waives: e.waives.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
            expires,
            expires_at: when(e.expires_at),
            justification,
            age: relative(now, e.created_at),
            last_used: e.usage.last_used_at.map_or_else(|| "never".to_owned(), |t| relative(now, t)),
            review_due: if ended_at(e, now).is_none() && e.kind == waiver_core::Kind::Planned {
                relative(now, e.review.next_due)
            } else {
                String::new()
            },
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn spans_and_relative_times_read_as_people_say_them() {
        let now: Timestamp = "2026-11-23T12:00:00Z".parse().unwrap();
        assert_eq!(relative(now, now + SignedDuration::from_hours(76)), "in 3d 4h");
        assert_eq!(relative(now, now - SignedDuration::from_mins(125)), "2h 5m ago");
        assert_eq!(span(SignedDuration::from_secs(30)), "under a minute");
        assert_eq!(when(now), "2026-11-23 12:00 UTC");
        assert_eq!(
            encode_path("Workload:spiffe://prod/x y"),
            "Workload:spiffe%3A%2F%2Fprod%2Fx%20y".replace("%3A", ":")
        );
    }
}

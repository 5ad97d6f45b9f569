//! Prometheus metrics, in the text exposition format.
//!
//! Written by hand on purpose: the decision path records into plain atomics and takes no
//! lock (prometheus-client's histogram takes a write lock per observation, which would
//! serialise every decision on one cache line and one lock). The gauges describing the
//! register are set by a background refresher, never computed on a scrape.

use std::{
    fmt::Write as _,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

/// Upper bounds of the decision latency histogram, in seconds.
const BUCKETS: [f64; 12] =
    [0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.05, 0.25];

/// How a decision came out.
#[derive(Debug, Clone, Copy)]
pub enum Outcome {
    Allow,
    Deny,
    Error,
}

/// What decided it: the baseline alone, an exception, or a break-glass.
#[derive(Debug, Clone, Copy)]
pub enum DecisionPath {
    Baseline,
    Exception,
    BreakGlass,
}

/// The register's shape, set by the refresher.
#[derive(Debug, Clone, Default)]
pub struct RegisterGauges {
    /// `(state, kind, risk)` → count.
    pub exceptions: Vec<((String, String, String), u64)>,
    pub reviews_overdue: u64,
    pub post_use_reviews_overdue: u64,
    pub break_glass_active: u64,
    pub webhook_backlog: u64,
    pub webhooks_failing: u64,
}

/// Every metric waiver exports.
#[derive(Debug, Default)]
pub struct Metrics {
    /// `[outcome][path]`.
    decisions: [[AtomicU64; 3]; 3],
    buckets: [AtomicU64; BUCKETS.len()],
    latency_count: AtomicU64,
    latency_sum_nanos: AtomicU64,
    register: Mutex<RegisterGauges>,
    /// Set once the snapshot loaded and the server caught up with the log.
    pub ready: std::sync::atomic::AtomicBool,
    /// The last event the decision snapshot reflects (a replica's lag is the head minus this).
    pub applied_seq: AtomicU64,
    /// Break-glass grants refused because their use could not be made durable.
    break_glass_refused: AtomicU64,
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Records one decision. Atomics only.
    pub fn decision(&self, outcome: Outcome, path: DecisionPath, took: Duration) {
        if let Some(c) = self.decisions.get(outcome as usize).and_then(|row| row.get(path as usize)) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        let secs = took.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b)
            && let Some(bucket) = self.buckets.get(i)
        {
            bucket.fetch_add(1, Ordering::Relaxed);
        }
        self.latency_count.fetch_add(1, Ordering::Relaxed);
        self.latency_sum_nanos.fetch_add(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// A break-glass grant was denied after all, because its use could not be recorded:
    /// counted, and moved from allowed to denied in the decision counts.
    pub fn break_glass_refused(&self) {
        self.break_glass_refused.fetch_add(1, Ordering::Relaxed);
        let path = DecisionPath::BreakGlass as usize;
        if let Some(c) = self.decisions.get(Outcome::Allow as usize).and_then(|row| row.get(path)) {
            c.fetch_sub(1, Ordering::Relaxed);
        }
        if let Some(c) = self.decisions.get(Outcome::Deny as usize).and_then(|row| row.get(path)) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Replaces the register gauges (the refresher's job; not on any request path).
    pub fn set_register(&self, gauges: RegisterGauges) {
        if let Ok(mut held) = self.register.lock() {
            *held = gauges;
        }
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let _ = writeln!(out, "# HELP waiver_decisions_total Decisions answered, by outcome and by what decided them.");
        let _ = writeln!(out, "# TYPE waiver_decisions_total counter");
        for (o, outcome) in ["allow", "deny", "error"].iter().enumerate() {
            for (p, path) in ["baseline", "exception", "break_glass"].iter().enumerate() {
                let n = self.decisions.get(o).and_then(|r| r.get(p)).map_or(0, |c| c.load(Ordering::Relaxed));
                let _ = writeln!(out, "waiver_decisions_total{{outcome=\"{outcome}\",path=\"{path}\"}} {n}");
            }
        }
        let _ = writeln!(out, "# HELP waiver_decision_duration_seconds Time to answer a decision request.");
        let _ = writeln!(out, "# TYPE waiver_decision_duration_seconds histogram");
        let mut cumulative = 0;
        for (bound, bucket) in BUCKETS.iter().zip(&self.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            let _ = writeln!(out, "waiver_decision_duration_seconds_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let count = self.latency_count.load(Ordering::Relaxed);
        let sum = self.latency_sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "waiver_decision_duration_seconds_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "waiver_decision_duration_seconds_sum {sum}");
        let _ = writeln!(out, "waiver_decision_duration_seconds_count {count}");
        let register = self.register.lock().map(|g| g.clone()).unwrap_or_default();
        let _ = writeln!(
            out,
            "# HELP waiver_break_glass_refused_total Break-glass grants denied because their use could not be made durable."
        );
        let _ = writeln!(out, "# TYPE waiver_break_glass_refused_total counter");
        let _ = writeln!(out, "waiver_break_glass_refused_total {}", self.break_glass_refused.load(Ordering::Relaxed));
        let _ = writeln!(out, "# HELP waiver_exceptions Exceptions by effective state, kind and risk.");
        let _ = writeln!(out, "# TYPE waiver_exceptions gauge");
        for ((state, kind, risk), n) in &register.exceptions {
            let _ = writeln!(out, "waiver_exceptions{{state=\"{state}\",kind=\"{kind}\",risk=\"{risk}\"}} {n}");
        }
        for (name, help, value) in [
            (
                "waiver_reviews_overdue",
                "Live exceptions whose periodic review is past due.",
                register.reviews_overdue as f64,
            ),
            (
                "waiver_post_use_reviews_overdue",
                "Break-glass exceptions whose post-use review is past due.",
                register.post_use_reviews_overdue as f64,
            ),
            ("waiver_break_glass_active", "Break-glass exceptions active now.", register.break_glass_active as f64),
            (
                "waiver_webhook_backlog",
                "Events not yet acknowledged, summed over live webhooks.",
                register.webhook_backlog as f64,
            ),
            ("waiver_webhooks_failing", "Live webhooks whose last attempt failed.", register.webhooks_failing as f64),
            (
                "waiver_applied_seq",
                "The last event of the log the decision snapshot reflects.",
                self.applied_seq.load(Ordering::Relaxed) as f64,
            ),
            (
                "waiver_ready",
                "1 once the snapshot is loaded and caught up.",
                f64::from(u8::from(self.ready.load(Ordering::Relaxed))),
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} gauge");
            let _ = writeln!(out, "{name} {value}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts_and_a_cumulative_histogram() {
        let m = Metrics::default();
        m.decision(Outcome::Allow, DecisionPath::Exception, Duration::from_micros(20));
        m.decision(Outcome::Deny, DecisionPath::Baseline, Duration::from_millis(3));
        let text = m.render();
        assert!(text.contains("waiver_decisions_total{outcome=\"allow\",path=\"exception\"} 1"), "{text}");
        assert!(text.contains("waiver_decisions_total{outcome=\"deny\",path=\"baseline\"} 1"));
        assert!(text.contains("waiver_decision_duration_seconds_bucket{le=\"0.000025\"} 1"), "{text}");
        assert!(text.contains("waiver_decision_duration_seconds_bucket{le=\"0.005\"} 2"));
        assert!(text.contains("waiver_decision_duration_seconds_count 2"));
    }
}

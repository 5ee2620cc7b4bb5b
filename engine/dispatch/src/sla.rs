//! SLA classes: per-class latency histograms, budget alerts and the
//! Prometheus text exposition of the dispatcher's metrics.
//!
//! Latency is measured from publish to outcome on the dispatcher's
//! monotonic clock, so it includes queueing, retries and backoff. Cancelled
//! deliveries are counted but not timed: a cancel is the caller's choice,
//! not the dispatcher's delay.
//!
//! Alerting works on windows: every `window_events` recorded deliveries of
//! a class, the window's p99 is compared with the class's budget and the
//! window starts over. The alert is edge-triggered: it fires when a class
//! goes from within budget to over it, and re-arms once a later window is
//! back within budget. So a long breach raises one alert, not one per
//! window, and a class that never breaks its budget never alerts.

use std::fmt::{self, Write as _};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;

use super::class::SlaClass;
use super::context::State;

/// Longest latency a histogram tells apart; longer ones count as this.
pub const LATENCY_US_MAX: u64 = 3_600_000_000;

/// The quantiles `metrics_text` reports.
const QUANTILES: [f64; 4] = [0.5, 0.9, 0.99, 0.999];

/// The outcomes counted per class, in label order.
const OUTCOMES: [State; 4] = [
    State::Processed,
    State::Failed,
    State::TimedOut,
    State::Cancelled,
];

/// A class broke its p99 budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlaAlert {
    /// The class.
    pub class: SlaClass,
    /// The window's p99 latency.
    pub p99: Duration,
    /// The class's budget.
    pub budget: Duration,
    /// Deliveries in the window.
    pub window_events: u64,
}

/// Called once each time a class goes over its budget.
pub type AlertFn = Arc<dyn Fn(&SlaAlert) + Send + Sync>;

/// Budgets and alerting.
#[derive(Clone)]
pub struct SlaConfig {
    /// p99 budget per class, indexed by [`SlaClass::index`].
    pub budgets_p99: [Duration; 3],
    /// Deliveries per alerting window (per class).
    pub window_events: u64,
    /// Called when a class breaks its budget (a `tracing` warning is
    /// emitted as well).
    pub alert: Option<AlertFn>,
}

impl Default for SlaConfig {
    fn default() -> Self {
        SlaConfig {
            budgets_p99: [
                Duration::from_millis(200),
                Duration::from_millis(800),
                Duration::from_secs(2),
            ],
            window_events: 1000,
            alert: None,
        }
    }
}

impl fmt::Debug for SlaConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SlaConfig")
            .field("budgets_p99", &self.budgets_p99)
            .field("window_events", &self.window_events)
            .field("alert", &self.alert.is_some())
            .finish()
    }
}

/// Latency histograms, outcome counters and alert state of every class.
#[derive(Debug)]
pub(crate) struct SlaMonitor {
    config: SlaConfig,
    classes: [ClassStats; 3],
}

#[derive(Debug)]
struct ClassStats {
    histograms: Mutex<Histograms>,
    latency_us_sum: AtomicU64,
    outcomes: [AtomicU64; 4],
    retries: AtomicU64,
    alerts: AtomicU64,
}

#[derive(Debug)]
struct Histograms {
    total: Histogram<u64>,
    window: Histogram<u64>,
    breached: bool,
}

impl ClassStats {
    fn new() -> ClassStats {
        let histogram = || Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).expect("valid bounds");
        ClassStats {
            histograms: Mutex::new(Histograms {
                total: histogram(),
                window: histogram(),
                breached: false,
            }),
            latency_us_sum: AtomicU64::new(0),
            outcomes: Default::default(),
            retries: AtomicU64::new(0),
            alerts: AtomicU64::new(0),
        }
    }
}

impl SlaMonitor {
    pub(super) fn new(config: SlaConfig) -> SlaMonitor {
        assert!(config.window_events > 0);
        SlaMonitor {
            config,
            classes: [ClassStats::new(), ClassStats::new(), ClassStats::new()],
        }
    }

    /// Counts one retry of a delivery of `class`.
    pub(super) fn record_retry(&self, class: SlaClass) {
        self.classes[class.index()]
            .retries
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Records a delivery's outcome and, unless it was cancelled, its
    /// latency; raises the alert if this closes a window over budget.
    pub(super) fn record(&self, class: SlaClass, outcome: State, latency: Duration) {
        let stats = &self.classes[class.index()];
        let position = OUTCOMES.iter().position(|&o| o == outcome);
        stats.outcomes[position.expect("a terminal state")].fetch_add(1, Ordering::Relaxed);
        if outcome == State::Cancelled {
            return;
        }
        let latency_us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        let latency_us = latency_us.clamp(1, LATENCY_US_MAX);
        stats
            .latency_us_sum
            .fetch_add(latency_us, Ordering::Relaxed);
        if let Some(alert) = self.record_latency(class, latency_us) {
            stats.alerts.fetch_add(1, Ordering::Relaxed);
            self.raise(&alert);
        }
    }

    fn record_latency(&self, class: SlaClass, latency_us: u64) -> Option<SlaAlert> {
        let stats = &self.classes[class.index()];
        let mut histograms = stats.histograms.lock().expect("SLA histograms poisoned");
        histograms.total.saturating_record(latency_us);
        histograms.window.saturating_record(latency_us);
        let window_events = histograms.window.len();
        if window_events < self.config.window_events {
            return None;
        }
        let p99 = Duration::from_micros(histograms.window.value_at_quantile(0.99));
        histograms.window.reset();
        let budget = self.config.budgets_p99[class.index()];
        let broken = p99 > budget;
        let newly_broken = broken && !histograms.breached;
        histograms.breached = broken;
        newly_broken.then_some(SlaAlert {
            class,
            p99,
            budget,
            window_events,
        })
    }

    fn raise(&self, alert: &SlaAlert) {
        tracing::warn!(
            class = alert.class.as_str(),
            p99_us = u64::try_from(alert.p99.as_micros()).unwrap_or(u64::MAX),
            budget_us = u64::try_from(alert.budget.as_micros()).unwrap_or(u64::MAX),
            window_events = alert.window_events,
            "SLA class broke its p99 latency budget"
        );
        if let Some(callback) = &self.config.alert {
            callback(alert);
        }
    }

    /// The p99 latency of `class` since the dispatcher started.
    pub(super) fn p99(&self, class: SlaClass) -> Duration {
        let histograms = self.classes[class.index()].histograms.lock();
        let histograms = histograms.expect("SLA histograms poisoned");
        Duration::from_micros(histograms.total.value_at_quantile(0.99))
    }

    /// Appends every metric in Prometheus text exposition format.
    pub(super) fn write_metrics(&self, out: &mut String) {
        self.write_latency(out);
        header(
            out,
            "sluice_dispatch_sla_budget_seconds",
            "gauge",
            "p99 latency budget of the SLA class.",
        );
        for class in SlaClass::ALL {
            let budget = self.config.budgets_p99[class.index()].as_secs_f64();
            sample(
                out,
                "sluice_dispatch_sla_budget_seconds",
                &[("class", class.as_str())],
                budget,
            );
        }
        header(
            out,
            "sluice_dispatch_sla_breached",
            "gauge",
            "1 while the last window of the class broke its budget.",
        );
        for class in SlaClass::ALL {
            let histograms = self.classes[class.index()].histograms.lock();
            let breached = histograms.expect("SLA histograms poisoned").breached;
            sample(
                out,
                "sluice_dispatch_sla_breached",
                &[("class", class.as_str())],
                f64::from(u8::from(breached)),
            );
        }
        self.write_counters(out);
    }

    fn write_latency(&self, out: &mut String) {
        let name = "sluice_dispatch_latency_seconds";
        header(
            out,
            name,
            "summary",
            "Delivery latency from publish to outcome, by SLA class.",
        );
        for class in SlaClass::ALL {
            let stats = &self.classes[class.index()];
            let labels = [("class", class.as_str())];
            let histograms = stats.histograms.lock().expect("SLA histograms poisoned");
            for quantile in QUANTILES {
                let value_us = histograms.total.value_at_quantile(quantile);
                let quantile = quantile.to_string();
                let labels = [labels[0], ("quantile", quantile.as_str())];
                sample(out, name, &labels, micros_to_seconds(value_us));
            }
            let sum_us = stats.latency_us_sum.load(Ordering::Relaxed);
            sample(
                out,
                &format!("{name}_sum"),
                &labels,
                micros_to_seconds(sum_us),
            );
            let count = histograms.total.len() as f64;
            sample(out, &format!("{name}_count"), &labels, count);
        }
    }

    fn write_counters(&self, out: &mut String) {
        let deliveries = "sluice_dispatch_deliveries_total";
        header(
            out,
            deliveries,
            "counter",
            "Deliveries by SLA class and outcome.",
        );
        for class in SlaClass::ALL {
            let stats = &self.classes[class.index()];
            for (outcome, count) in OUTCOMES.iter().zip(&stats.outcomes) {
                let labels = [("class", class.as_str()), ("outcome", outcome.as_str())];
                sample(
                    out,
                    deliveries,
                    &labels,
                    count.load(Ordering::Relaxed) as f64,
                );
            }
        }
        let retries = "sluice_dispatch_retries_total";
        let help = "Handler attempts retried, by SLA class.";
        self.write_per_class(out, retries, help, |s| &s.retries);
        let alerts = "sluice_dispatch_sla_alerts_total";
        let help = "SLA budget alerts raised, by SLA class.";
        self.write_per_class(out, alerts, help, |s| &s.alerts);
    }

    fn write_per_class(
        &self,
        out: &mut String,
        name: &str,
        help: &str,
        counter: impl Fn(&ClassStats) -> &AtomicU64,
    ) {
        header(out, name, "counter", help);
        for class in SlaClass::ALL {
            let value = counter(&self.classes[class.index()]).load(Ordering::Relaxed);
            sample(out, name, &[("class", class.as_str())], value as f64);
        }
    }
}

fn micros_to_seconds(value_us: u64) -> f64 {
    value_us as f64 / 1e6
}

/// Writes the `# HELP` and `# TYPE` lines of a metric family.
pub(super) fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    writeln!(out, "# HELP {name} {help}").expect("writing to a String");
    writeln!(out, "# TYPE {name} {kind}").expect("writing to a String");
}

/// Writes one sample line. Label values here are fixed identifiers or
/// checked type names, so only `\`, `"` and newlines need escaping.
pub(super) fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: f64) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (index, (label, value)) in labels.iter().enumerate() {
            if index > 0 {
                out.push(',');
            }
            let value = value
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            write!(out, "{label}=\"{value}\"").expect("writing to a String");
        }
        out.push('}');
    }
    writeln!(out, " {value}").expect("writing to a String");
}

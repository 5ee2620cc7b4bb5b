//! Unit tests of the pure parts: backoff, the cancel registry's epochs and
//! bound, the codecs' content types, the SLA window.

use std::time::Duration;

use bytes::Bytes;

use super::class::SlaClass;
use super::context::CancelRegistry;
use super::retry::RetryPolicy;
use super::sla::{SlaConfig, SlaMonitor};
use super::{Encoding, State};

#[test]
fn backoff_doubles_up_to_its_cap() {
    let policy = RetryPolicy {
        retries_max: 3,
        backoff_first: Duration::from_millis(10),
        backoff_max: Duration::from_millis(35),
    };
    let waits: Vec<_> = (1..=4).map(|a| policy.backoff(a).as_millis()).collect();
    assert_eq!(waits, [10, 20, 35, 35]);
    assert_eq!(policy.attempts_max(), 4);
    assert_eq!(RetryPolicy::default().retries_max, 3);
    assert_eq!(policy.backoff(u32::MAX), Duration::from_millis(35));
}

#[test]
fn cancel_reaches_only_deliveries_created_before_it() {
    let registry = CancelRegistry::new(2);
    let id = Bytes::from_static(b"order-1");
    let before = registry.epoch();
    registry.cancel(id.clone());
    let after = registry.epoch();
    assert!(registry.is_cancelled(&id, before));
    assert!(!registry.is_cancelled(&id, after));
    assert!(!registry.is_cancelled(&Bytes::from_static(b"order-2"), before));
    // Bounded: the oldest cancel is forgotten once two newer ones arrive.
    registry.cancel(Bytes::from_static(b"order-2"));
    registry.cancel(Bytes::from_static(b"order-3"));
    assert!(!registry.is_cancelled(&id, before));
    assert!(registry.is_cancelled(&Bytes::from_static(b"order-3"), before));
}

#[test]
fn content_types_name_their_encoding() {
    for encoding in [Encoding::Json, Encoding::Postcard] {
        assert_eq!(
            Encoding::from_content_type(encoding.content_type()),
            Some(encoding)
        );
    }
    assert_eq!(Encoding::from_content_type("text/plain"), None);
}

#[test]
fn sla_window_alerts_on_the_edge_only() {
    let monitor = SlaMonitor::new(SlaConfig {
        window_events: 4,
        ..SlaConfig::default()
    });
    let record = |ms, n| {
        for _ in 0..n {
            monitor.record(SlaClass::P2, State::Processed, Duration::from_millis(ms));
        }
    };
    record(2500, 12); // three windows over the 2 s budget: one alert
    record(10, 4); // back within budget: re-armed
    record(2500, 4); // over again: a second alert
    let mut metrics = String::new();
    monitor.write_metrics(&mut metrics);
    assert!(
        metrics.contains("sluice_dispatch_sla_alerts_total{class=\"P2\"} 2\n"),
        "{metrics}"
    );
    assert!(metrics.contains("sluice_dispatch_sla_alerts_total{class=\"P0\"} 0\n"));
    monitor.record(SlaClass::P2, State::Cancelled, Duration::from_secs(60));
    assert!(
        monitor.p99(SlaClass::P2) < Duration::from_secs(3),
        "a cancel is not timed"
    );
}

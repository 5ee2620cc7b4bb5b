//! Durable typed subscriptions on the embedded bus: every delivery's
//! outcome recorded in the log, retries then a dead letter with its cause,
//! deadlines, cancellation through the log, unknown schema versions, and
//! replay of dead letters exactly once.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sluice_core::bus::{Bus, Delivery, Message};
use sluice_dispatch::DurableBus as _;
use sluice_dispatch::durable::dead_letter_headers;
use sluice_dispatch::{
    Context, Dispatcher, DispatcherConfig, DurableConfig, Encoding, LIFECYCLE_TOPIC, RetryPolicy,
    SlaAlert, SlaClass, SlaConfig, TypedEvent, dead_letter_topic,
};
use sluice_model::event::Headers;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Payment {
    id: String,
    cents: u64,
}

impl TypedEvent for Payment {
    const TYPE_NAME: &'static str = "payment.settled";
    const SCHEMA_VERSION: u32 = 1;

    fn key(&self) -> Bytes {
        Bytes::from(self.id.clone())
    }
}

const GROUP: &str = "ledger";

async fn bounded<T>(test: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), test)
        .await
        .expect("the test took longer than 60 s")
}

fn fast_retries() -> DurableConfig {
    DurableConfig {
        retry: RetryPolicy {
            retries_max: 3,
            backoff_first: Duration::from_millis(1),
            backoff_max: Duration::from_millis(5),
        },
        ..DurableConfig::default()
    }
}

/// Every lifecycle record of the topic, by (partition, offset).
fn lifecycle(bus: &Bus) -> HashMap<(u64, u64), serde_json::Value> {
    let mut out = HashMap::new();
    for partition in 0..4 {
        let (records, _) = bus.read(LIFECYCLE_TOPIC, partition, 0, 10_000).unwrap();
        for record in records {
            let value: serde_json::Value = serde_json::from_slice(&record.payload).unwrap();
            if value["topic"] == Payment::TYPE_NAME {
                let at = (
                    value["partition"].as_u64().unwrap(),
                    value["offset"].as_u64().unwrap(),
                );
                assert!(out.insert(at, value).is_none(), "{at:?} recorded twice");
            }
        }
    }
    out
}

/// Waits until `count` deliveries of the topic have lifecycle records.
async fn recorded(bus: &Bus, count: usize) -> HashMap<(u64, u64), serde_json::Value> {
    loop {
        let records = lifecycle(bus);
        if records.len() >= count {
            return records;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn header<'a>(delivery: &'a Delivery, name: &str) -> &'a str {
    let value = delivery
        .headers
        .user
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("header {name} missing"));
    std::str::from_utf8(value).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcomes_are_recorded_and_failures_become_dead_letters_that_replay_once() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let bus = Bus::open(dir.path()).await.unwrap();
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let broken = Arc::new(AtomicBool::new(true));
        let attempts = Arc::new(AtomicU32::new(0));
        let handler = {
            let (seen, broken, attempts) = (seen.clone(), broken.clone(), attempts.clone());
            move |payment: Arc<Payment>, context: Context| {
                let (seen, broken, attempts) = (seen.clone(), broken.clone(), attempts.clone());
                async move {
                    assert_eq!(context.group(), GROUP);
                    if payment.id == "bad" && broken.load(Ordering::SeqCst) {
                        attempts.fetch_add(1, Ordering::SeqCst);
                        return Err(format!("ledger rejects {}", payment.cents).into());
                    }
                    seen.lock().unwrap().push(payment.id.clone());
                    Ok(())
                }
            }
        };
        let subscription = bus
            .subscribe_with::<Payment, _>(GROUP, handler, fast_retries())
            .await
            .unwrap();
        let mut producer = bus.producer().await.unwrap();
        for i in 0..10 {
            let payment = Payment {
                id: if i == 4 {
                    "bad".into()
                } else {
                    format!("p{i}")
                },
                cents: 100 + i,
            };
            bus.publish_typed(&mut producer, &payment, Encoding::Json)
                .await
                .unwrap();
        }
        let records = recorded(&bus, 10).await;
        let states: Vec<&str> = {
            let mut by_offset: Vec<_> = records.values().collect();
            by_offset.sort_by_key(|r| (r["partition"].as_u64(), r["offset"].as_u64()));
            by_offset
                .iter()
                .map(|r| r["state"].as_str().unwrap())
                .collect()
        };
        assert_eq!(states.iter().filter(|s| **s == "processed").count(), 9);
        assert_eq!(states.iter().filter(|s| **s == "failed").count(), 1);
        assert_eq!(attempts.load(Ordering::SeqCst), 4, "1 attempt + 3 retries");
        let failed = records.values().find(|r| r["state"] == "failed").unwrap();
        assert_eq!(failed["attempts"], 4);
        assert_eq!(failed["errors"].as_array().unwrap().len(), 4);
        assert_eq!(failed["cause"], "ledger rejects 104");
        let started: Vec<u64> = failed["attempts_ms"]
            .as_array()
            .unwrap()
            .iter()
            .map(|ms| ms.as_u64().unwrap())
            .collect();
        assert_eq!(started.len(), 4, "one start time per attempt: {failed}");
        assert!(started.windows(2).all(|w| w[0] <= w[1]), "{failed}");
        assert_eq!(Some(started[0]), failed["first_attempt_ms"].as_u64());
        assert!(started[3] <= failed["reported_ms"].as_u64().unwrap());

        let letters = bus.dead_letters(Payment::TYPE_NAME, GROUP, 100).unwrap();
        assert_eq!(letters.len(), 1);
        let letter = &letters[0];
        assert_eq!(letter.key, Bytes::from("bad"));
        assert_eq!(
            header(letter, dead_letter_headers::CAUSE),
            "ledger rejects 104"
        );
        assert_eq!(header(letter, dead_letter_headers::ATTEMPTS), "4");
        assert!(header(letter, dead_letter_headers::SOURCE).starts_with("payment.settled/"));

        // Fix the handler, replay: the letter is handled, once.
        broken.store(false, Ordering::SeqCst);
        assert_eq!(
            bus.replay_dead_letters(Payment::TYPE_NAME, GROUP)
                .await
                .unwrap(),
            1
        );
        assert_eq!(
            bus.replay_dead_letters(Payment::TYPE_NAME, GROUP)
                .await
                .unwrap(),
            0
        );
        assert!(
            bus.dead_letters(Payment::TYPE_NAME, GROUP, 100)
                .unwrap()
                .is_empty()
        );
        let records = recorded(&bus, 11).await;
        assert_eq!(
            records
                .values()
                .filter(|r| r["state"] == "processed")
                .count(),
            10
        );
        let mut handled = seen.lock().unwrap().clone();
        handled.sort();
        let mut expected: Vec<String> = (0..10)
            .filter(|i| *i != 4)
            .map(|i| format!("p{i}"))
            .collect();
        expected.push("bad".into());
        expected.sort();
        assert_eq!(handled, expected);
        subscription.unsubscribe().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlines_cancellations_and_unknown_versions_end_deliveries() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let bus = Bus::open(dir.path()).await.unwrap();
        let called: Arc<Mutex<Vec<String>>> = Arc::default();
        let handler = {
            let called = called.clone();
            move |payment: Arc<Payment>, _context: Context| {
                let called = called.clone();
                async move {
                    called.lock().unwrap().push(payment.id.clone());
                    if payment.id == "slow" {
                        tokio::time::sleep(Duration::from_secs(5)).await;
                    }
                    Ok(())
                }
            }
        };
        let config = DurableConfig {
            deadline: Duration::from_millis(200),
            ..fast_retries()
        };
        let subscription = bus
            .subscribe_with::<Payment, _>(GROUP, handler, config)
            .await
            .unwrap();
        bus.cancel(Bytes::from("cancelled")).await.unwrap();
        let mut producer = bus.producer().await.unwrap();
        for id in ["slow", "cancelled", "fine"] {
            let payment = Payment {
                id: id.into(),
                cents: 1,
            };
            bus.publish_typed(&mut producer, &payment, Encoding::Postcard)
                .await
                .unwrap();
        }
        // Version 2 of the type, which this subscription does not know.
        let headers = Headers {
            event_type: Payment::TYPE_NAME.into(),
            schema_version: 2,
            content_type: "application/json".into(),
            ..Headers::default()
        };
        let newer = Message::new(Payment::TYPE_NAME, Bytes::from(r#"{"id":"v2"}"#))
            .key(Bytes::from("v2"))
            .headers(headers);
        producer.publish(newer).await.unwrap();

        let records = recorded(&bus, 4).await;
        let state_of = |key: &str| {
            records
                .values()
                .find(|r| {
                    let (partition, offset) = (
                        r["partition"].as_u64().unwrap(),
                        r["offset"].as_u64().unwrap(),
                    );
                    let (events, _) = bus
                        .read(Payment::TYPE_NAME, partition as u32, offset, 1)
                        .unwrap();
                    events[0].key.as_ref() == key.as_bytes()
                })
                .map(|r| r["state"].as_str().unwrap().to_owned())
                .unwrap()
        };
        assert_eq!(state_of("slow"), "timed_out");
        assert_eq!(state_of("cancelled"), "cancelled");
        assert_eq!(state_of("fine"), "processed");
        assert_eq!(state_of("v2"), "undecodable");
        let called = called.lock().unwrap().clone();
        assert!(!called.contains(&"cancelled".to_owned()), "{called:?}");
        assert!(!called.contains(&"v2".to_owned()));

        let letters = bus.dead_letters(Payment::TYPE_NAME, GROUP, 100).unwrap();
        let causes: HashMap<Bytes, String> = letters
            .iter()
            .map(|l| {
                (
                    l.key.clone(),
                    header(l, dead_letter_headers::CAUSE).to_owned(),
                )
            })
            .collect();
        assert_eq!(causes.len(), 2, "{causes:?}");
        assert_eq!(causes[&Bytes::from("slow")], "timed out");
        assert!(causes[&Bytes::from("v2")].contains("unknown schema version 2"));
        assert_eq!(
            dead_letter_topic(Payment::TYPE_NAME, GROUP),
            "payment.settled.dlq.ledger"
        );
        subscription.unsubscribe().await.unwrap();
    })
    .await;
}

/// Publishes five events to a durable subscription of class P0 whose
/// handler takes `handling`; returns the alerts raised.
async fn durable_sla_run(handling: Duration) -> (Vec<SlaAlert>, String) {
    let dir = tempfile::tempdir().unwrap();
    let bus = Bus::open(dir.path()).await.unwrap();
    let alerts: Arc<Mutex<Vec<SlaAlert>>> = Arc::default();
    let sink = Arc::clone(&alerts);
    let dispatcher: Dispatcher = Dispatcher::new(DispatcherConfig {
        sla: SlaConfig {
            window_events: 5,
            alert: Some(Arc::new(move |alert: &SlaAlert| {
                sink.lock().unwrap().push(*alert)
            })),
            ..SlaConfig::default()
        },
        ..DispatcherConfig::default()
    });
    let config = DurableConfig {
        class: SlaClass::P0,
        dispatcher: Some(dispatcher.handle()),
        ..fast_retries()
    };
    let handler = move |_: Arc<Payment>, _: Context| async move {
        tokio::time::sleep(handling).await;
        Ok(())
    };
    let subscription = bus
        .subscribe_with::<Payment, _>(GROUP, handler, config)
        .await
        .unwrap();
    let mut producer = bus.producer().await.unwrap();
    for i in 0..5 {
        let payment = Payment {
            id: format!("p{i}"),
            cents: i,
        };
        bus.publish_typed(&mut producer, &payment, Encoding::Json)
            .await
            .unwrap();
    }
    recorded(&bus, 5).await;
    subscription.unsubscribe().await.unwrap();
    let alerts = alerts.lock().unwrap().clone();
    (alerts, dispatcher.metrics_text())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_deliveries_count_in_the_sla_classes() {
    bounded(async {
        // P0's budget is 200 ms: handlers of 300 ms break it (the batch is
        // handled one by one, so later events wait even longer).
        let (alerts, metrics) = durable_sla_run(Duration::from_millis(300)).await;
        assert_eq!(alerts.len(), 1, "{alerts:?}");
        assert_eq!(alerts[0].class, SlaClass::P0);
        assert!(alerts[0].p99 > Duration::from_millis(200));
        assert!(
            metrics
                .contains("sluice_dispatch_deliveries_total{class=\"P0\",outcome=\"processed\"} 5"),
            "{metrics}"
        );
        // Fast handlers stay within it: no alert.
        let (alerts, _) = durable_sla_run(Duration::ZERO).await;
        assert!(alerts.is_empty(), "{alerts:?}");
    })
    .await;
}

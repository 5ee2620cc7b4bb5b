//! Durable typed subscriptions on the embedded bus: every delivery's
//! outcome recorded in the log, retries then a dead letter with its cause,
//! deadlines (the subscription's and the producer's), cancellation through
//! the log (with a reason, of earlier events only), unknown schema
//! versions, and replay of dead letters exactly once.

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
    Context, Dispatcher, DispatcherConfig, DurableConfig, Encoding, EventOptions, LIFECYCLE_TOPIC,
    RetryPolicy, SlaAlert, SlaClass, SlaConfig, TypedEvent, dead_letter_topic,
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
async fn deadlines_and_unknown_versions_end_deliveries() {
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
        let mut producer = bus.producer().await.unwrap();
        for id in ["slow", "fine"] {
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

        let records = recorded(&bus, 3).await;
        let by_key = records_by_key(&bus, &records);
        assert_eq!(by_key["slow"][0]["state"], "timed_out");
        assert_eq!(by_key["fine"][0]["state"], "processed");
        assert_eq!(by_key["v2"][0]["state"], "undecodable");
        let called = called.lock().unwrap().clone();
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

/// The lifecycle records of `records` by the business id of their event,
/// each list in offset order.
fn records_by_key(
    bus: &Bus,
    records: &HashMap<(u64, u64), serde_json::Value>,
) -> HashMap<String, Vec<serde_json::Value>> {
    let mut sorted: Vec<_> = records.iter().collect();
    sorted.sort_by_key(|(at, _)| **at);
    let mut out: HashMap<String, Vec<serde_json::Value>> = HashMap::new();
    for ((partition, offset), record) in sorted {
        let (events, _) = bus
            .read(Payment::TYPE_NAME, *partition as u32, *offset, 1)
            .unwrap();
        let key = String::from_utf8(events[0].key.to_vec()).unwrap();
        out.entry(key).or_default().push(record.clone());
    }
    out
}

/// A handler that records each payment's cents and, for id `gate`, waits
/// until `gate` has a permit; for id `long`, says it started and runs
/// until cut off.
fn gated_handler(
    called: Arc<Mutex<Vec<(String, u64)>>>,
    gate: Arc<tokio::sync::Semaphore>,
    started: Arc<tokio::sync::Notify>,
) -> impl sluice_dispatch::Handler<Payment> {
    move |payment: Arc<Payment>, _context: Context| {
        let (called, gate, started) = (called.clone(), gate.clone(), started.clone());
        async move {
            called
                .lock()
                .unwrap()
                .push((payment.id.clone(), payment.cents));
            match payment.id.as_str() {
                "gate" => drop(gate.acquire().await.unwrap()),
                "long" => {
                    started.notify_one();
                    tokio::time::sleep(Duration::from_secs(60)).await;
                }
                _ => {}
            }
            Ok(())
        }
    }
}

/// A cancellation reaches the events of its business id published before
/// it, queued or running, and never one published after it (it used to:
/// durable deliveries compared against cancel epoch 0).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancellation_applies_to_earlier_events_only() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let bus = Bus::open(dir.path()).await.unwrap();
        let called: Arc<Mutex<Vec<(String, u64)>>> = Arc::default();
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let started = Arc::new(tokio::sync::Notify::new());
        let handler = gated_handler(called.clone(), gate.clone(), started.clone());
        // One partition: the gate holds back everything after it.
        let config = DurableConfig {
            partitions: 1,
            deadline: Duration::from_secs(20),
            ..fast_retries()
        };
        let subscription = bus
            .subscribe_with::<Payment, _>(GROUP, handler, config)
            .await
            .unwrap();
        let mut producer = bus.producer().await.unwrap();
        let mut publish = async |id: &str, cents| {
            let payment = Payment {
                id: id.into(),
                cents,
            };
            bus.publish_typed(&mut producer, &payment, Encoding::Json)
                .await
                .unwrap();
        };
        publish("gate", 0).await;
        publish("order-7", 1).await;
        bus.cancel(Bytes::from("order-7"), "customer withdrew")
            .await
            .unwrap();
        publish("order-7", 2).await;
        publish("long", 3).await;
        gate.add_permits(1);
        // A cancellation of a running attempt cuts it off.
        started.notified().await;
        bus.cancel(Bytes::from("long"), "operator stop")
            .await
            .unwrap();

        let records = recorded(&bus, 4).await;
        let by_key = records_by_key(&bus, &records);
        let order = &by_key["order-7"];
        assert_eq!(order.len(), 2, "{order:?}");
        assert_eq!(order[0]["state"], "cancelled", "{order:?}");
        assert_eq!(order[0]["reason"], "customer withdrew");
        assert_eq!(order[1]["state"], "processed", "{order:?}");
        assert_eq!(order[1]["reason"], serde_json::Value::Null);
        assert_eq!(by_key["long"][0]["state"], "cancelled");
        assert_eq!(by_key["long"][0]["reason"], "operator stop");
        let called = called.lock().unwrap().clone();
        assert!(called.contains(&("order-7".to_owned(), 2)), "{called:?}");
        assert!(!called.contains(&("order-7".to_owned(), 1)), "{called:?}");
        assert!(
            bus.dead_letters(Payment::TYPE_NAME, GROUP, 10)
                .unwrap()
                .is_empty()
        );
        subscription.unsubscribe().await.unwrap();
    })
    .await;
}

/// A producer's deadline header ends a delivery as timed out, before or
/// during its handler, whatever the subscription's own deadline; the
/// lifecycle record says whose deadline passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_deadline_times_deliveries_out() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let bus = Bus::open(dir.path()).await.unwrap();
        let called: Arc<Mutex<Vec<(String, u64)>>> = Arc::default();
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let started = Arc::new(tokio::sync::Notify::new());
        let handler = gated_handler(called.clone(), gate.clone(), started.clone());
        let config = DurableConfig {
            partitions: 1,
            deadline: Duration::from_secs(30),
            ..fast_retries()
        };
        let subscription = bus
            .subscribe_with::<Payment, _>(GROUP, handler, config)
            .await
            .unwrap();
        let mut producer = bus.producer().await.unwrap();
        let now_ms = sluice_core::io::wall_unix_ms(&**bus.clock());
        let cases = [
            ("expired", Some(now_ms - 1)),
            ("long", Some(now_ms + 300)),
            ("later", Some(now_ms + 60_000)),
            ("none", None),
        ];
        for (cents, (id, deadline_ms)) in (0..).zip(cases) {
            let payment = Payment {
                id: id.into(),
                cents,
            };
            let options = EventOptions {
                deadline_ms,
                class: Some(SlaClass::P0),
            };
            bus.publish_typed_with(&mut producer, &payment, Encoding::Json, options)
                .await
                .unwrap();
        }
        let mut headers = Headers {
            event_type: Payment::TYPE_NAME.into(),
            schema_version: 1,
            content_type: "application/json".into(),
            ..Headers::default()
        };
        headers
            .user
            .push(("sluice-deadline-ms".into(), Bytes::from("soon")));
        let garbled = Message::new(
            Payment::TYPE_NAME,
            Bytes::from(r#"{"id":"garbled","cents":9}"#),
        )
        .key(Bytes::from("garbled"))
        .headers(headers);
        producer.publish(garbled).await.unwrap();

        let records = recorded(&bus, 5).await;
        let by_key = records_by_key(&bus, &records);
        let expired = &by_key["expired"][0];
        assert_eq!(expired["state"], "timed_out");
        assert_eq!(expired["attempts"], 0, "the handler never ran: {expired}");
        assert!(
            expired["cause"]
                .as_str()
                .unwrap()
                .contains("the event's deadline passed")
        );
        assert_eq!(expired["deadline_ms"], now_ms - 1);
        let long = &by_key["long"][0];
        assert_eq!(long["state"], "timed_out");
        assert_eq!(long["attempts"], 1);
        let took =
            long["reported_ms"].as_u64().unwrap() - long["first_attempt_ms"].as_u64().unwrap();
        assert!(
            took < 5_000,
            "cut off at the event's deadline, took {took} ms"
        );
        assert!(
            long["cause"]
                .as_str()
                .unwrap()
                .contains("the event's deadline passed")
        );
        for id in ["later", "none"] {
            assert_eq!(by_key[id][0]["state"], "processed", "{id}");
            assert_eq!(by_key[id][0]["class"], "P0", "{id}");
        }
        assert_eq!(by_key["none"][0]["deadline_ms"], serde_json::Value::Null);
        let garbled = &by_key["garbled"][0];
        assert_eq!(garbled["state"], "undecodable");
        assert!(
            garbled["cause"]
                .as_str()
                .unwrap()
                .contains("sluice-deadline-ms")
        );
        let called: Vec<String> = called
            .lock()
            .unwrap()
            .iter()
            .map(|(id, _)| id.clone())
            .collect();
        assert_eq!(called, ["long", "later", "none"]);
        let letters = bus.dead_letters(Payment::TYPE_NAME, GROUP, 10).unwrap();
        assert_eq!(
            letters.len(),
            3,
            "expired, long and garbled are dead letters"
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

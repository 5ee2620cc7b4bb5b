//! The audit export: a subject's events with their history as the log
//! records it (published, appended, delivered, retried, processed or
//! failed, dead-lettered, replayed, committed by a group, erased) and
//! their verification status.

// The test tampers with a segment through std::fs.
#![allow(clippy::disallowed_methods)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sluice_audit::{ExportQuery, KeyPair, VerifyOptions, export};
use sluice_core::bus::{Bus, BusConfig, Message};
use sluice_dispatch::DurableBus as _;
use sluice_dispatch::{
    Context, DurableConfig, Encoding, LIFECYCLE_TOPIC, RetryPolicy, TypedEvent, dead_letter_topic,
};
use sluice_model::state::TopicConfig;

fn parse_lines(bytes: &[u8]) -> Vec<Value> {
    bytes
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_lists_a_subjects_events_with_history_and_status() {
    let dir = tempfile::tempdir().unwrap();
    let config = BusConfig {
        retention_interval: None,
        ..BusConfig::default()
    };
    let bus = Bus::open_with_config(dir.path(), config).await.unwrap();
    bus.create_topic("crm", 2, TopicConfig::default())
        .await
        .unwrap();
    let mut producer = bus.producer().await.unwrap();
    for i in 0..6 {
        let subject = if i % 2 == 0 { "alice" } else { "bob" };
        let message =
            Message::new("crm", format!("{{\"n\":{i}}}")).key(subject.as_bytes().to_vec());
        producer.publish(message).await.unwrap();
    }
    let mut consumer = bus.consumer("billing", "m1", &["crm"]).await.unwrap();
    let got = consumer
        .poll(100, Duration::from_millis(500))
        .await
        .unwrap();
    assert_eq!(got.len(), 6);
    consumer.commit().await.unwrap();
    let key = KeyPair::generate("node-1").unwrap();
    bus.checkpoint(&key).await.unwrap();
    bus.erase(&key, "alice", "ticket 7").await.unwrap();
    drop(consumer);
    bus.close().await.unwrap();

    let query = ExportQuery {
        subject: "alice".into(),
        from_ms: 0,
        to_ms: u64::MAX,
    };
    let options = VerifyOptions {
        trusted_keys: vec![key.public_key()],
    };
    let mut out = Vec::new();
    let summary = export(dir.path(), &query, &options, &mut out).unwrap();
    assert!(summary.directory_verified);
    let lines = parse_lines(&out);
    assert_eq!(summary.events, 3);
    assert_eq!(lines.len(), 3);
    for line in &lines {
        assert_eq!(line["subject"], "alice");
        assert_eq!(line["key"], "alice");
        assert!(line["offset"].is_u64(), "{line}");
        assert_eq!(line["verification"]["chain"], "verified");
        assert!(
            line["verification"]["checkpoint"]["signed_index"].is_u64(),
            "{line}"
        );
        assert_eq!(line["verification"]["signature"], "unsigned");
        assert_eq!(line["erased"], true);
        assert!(
            line["payload"].is_null(),
            "erased payloads are not exported"
        );
        let states: Vec<&str> = line["history"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["state"].as_str().unwrap())
            .collect();
        assert_eq!(
            states,
            ["published", "appended", "committed", "erased"],
            "{line}"
        );
        assert_eq!(line["history"][2]["group"], "billing");
    }
    // A time window that ends before everything exports nothing.
    let early = ExportQuery {
        to_ms: 1,
        ..query.clone()
    };
    let mut out = Vec::new();
    assert_eq!(
        export(dir.path(), &early, &options, &mut out)
            .unwrap()
            .events,
        0
    );

    // Damage the log: the export still lists, but says the directory did
    // not verify and marks events at or after the first bad record.
    let segment = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "seg"))
        .unwrap();
    let mut bytes = std::fs::read(&segment).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    std::fs::write(&segment, bytes).unwrap();
    let mut out = Vec::new();
    let summary = export(dir.path(), &query, &options, &mut out).unwrap();
    assert!(!summary.directory_verified);
    assert!(summary.first_finding.unwrap().contains(".seg"));
    let lines = parse_lines(&out);
    assert_eq!(lines.len(), 3);
    assert!(
        lines
            .iter()
            .all(|l| l["verification"]["chain"] == "verified")
    );
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Order {
    id: String,
    cents: u64,
}

impl TypedEvent for Order {
    const TYPE_NAME: &'static str = "order.placed";
    const SCHEMA_VERSION: u32 = 1;

    fn key(&self) -> Bytes {
        Bytes::from(self.id.clone())
    }
}

/// Lifecycle records committed so far.
fn lifecycle_records(bus: &Bus) -> usize {
    (0..4)
        .map(|p| bus.read(LIFECYCLE_TOPIC, p, 0, 10_000).unwrap().0.len())
        .sum()
}

async fn until_lifecycle_records(bus: &Bus, count: usize) {
    while lifecycle_records(bus) < count {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The steps of `line`'s history that belong to `group`, as state names.
fn states_of<'a>(line: &'a Value, group: &str) -> Vec<&'a str> {
    steps_of(line, group)
        .iter()
        .map(|step| step["state"].as_str().unwrap())
        .collect()
}

fn steps_of<'a>(line: &'a Value, group: &str) -> Vec<&'a Value> {
    line["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|step| step["group"] == group)
        .collect()
}

fn assert_in_time_order(line: &Value) {
    let times: Vec<u64> = line["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|step| step["at_ms"].as_u64().expect("every step has a time"))
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{line:#}");
}

/// One subject, two durable groups on its topic: `ledger` fails twice then
/// succeeds, `risk` always fails until it is fixed, so its delivery
/// becomes a dead letter, which is then replayed. A third event of the
/// subject goes to a topic nobody reads.
async fn deliveries_scenario(dir: &std::path::Path) {
    let config = BusConfig {
        retention_interval: None,
        ..BusConfig::default()
    };
    let bus = Bus::open_with_config(dir, config).await.unwrap();
    let retries = DurableConfig {
        retry: RetryPolicy {
            retries_max: 3,
            backoff_first: Duration::from_millis(2),
            backoff_max: Duration::from_millis(5),
        },
        ..DurableConfig::default()
    };
    let ledger_failures = Arc::new(AtomicU32::new(0));
    let ledger = {
        let failures = ledger_failures.clone();
        move |order: Arc<Order>, context: Context| {
            let failures = failures.clone();
            async move {
                if order.id == "alice" && failures.load(Ordering::SeqCst) < 2 {
                    failures.fetch_add(1, Ordering::SeqCst);
                    return Err(format!("ledger busy at attempt {}", context.attempt()).into());
                }
                Ok(())
            }
        }
    };
    let risk_broken = Arc::new(AtomicBool::new(true));
    let risk = {
        let broken = risk_broken.clone();
        move |order: Arc<Order>, _: Context| {
            let broken = broken.clone();
            async move {
                if order.id == "alice" && broken.load(Ordering::SeqCst) {
                    return Err(format!("risk limit exceeded by {}", order.cents).into());
                }
                Ok(())
            }
        }
    };
    let ledger = bus
        .subscribe_with::<Order, _>("ledger", ledger, retries.clone())
        .await
        .unwrap();
    let risk = bus
        .subscribe_with::<Order, _>("risk", risk, retries)
        .await
        .unwrap();
    bus.create_topic("notes", 1, TopicConfig::default())
        .await
        .unwrap();
    let mut producer = bus.producer().await.unwrap();
    for (id, cents) in [("alice", 700), ("bob", 5)] {
        let order = Order {
            id: id.into(),
            cents,
        };
        bus.publish_typed(&mut producer, &order, Encoding::Json)
            .await
            .unwrap();
    }
    producer
        .publish(Message::new("notes", "called back").key("alice"))
        .await
        .unwrap();
    // alice and bob, each by both groups.
    until_lifecycle_records(&bus, 4).await;
    risk_broken.store(false, Ordering::SeqCst);
    let replayed = bus.replay_dead_letters(Order::TYPE_NAME, "risk").await;
    assert_eq!(replayed.unwrap(), 1);
    // The replayed alice, by both groups.
    until_lifecycle_records(&bus, 6).await;
    ledger.unsubscribe().await.unwrap();
    risk.unsubscribe().await.unwrap();
    bus.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_joins_deliveries_retries_dead_letters_and_replays() {
    let dir = tempfile::tempdir().unwrap();
    tokio::time::timeout(Duration::from_secs(60), deliveries_scenario(dir.path()))
        .await
        .expect("the scenario took longer than 60 s");
    let query = ExportQuery {
        subject: "alice".into(),
        from_ms: 0,
        to_ms: u64::MAX,
    };
    let mut out = Vec::new();
    let summary = export(dir.path(), &query, &VerifyOptions::default(), &mut out).unwrap();
    assert!(summary.directory_verified, "{:?}", summary.first_finding);
    let lines = parse_lines(&out);
    // The order, its replay and the note: no lifecycle record, dead letter
    // or other subject's event is a line of its own.
    assert_eq!(lines.len(), 3, "{lines:#?}");
    let original = &lines[0];
    let replayed = lines
        .iter()
        .find(|l| !l["replay_of"].is_null())
        .expect("the replayed event");
    let note = lines.iter().find(|l| l["topic"] == "notes").unwrap();
    assert_eq!(original["topic"], Order::TYPE_NAME);
    assert!(original["replay_of"].is_null());
    for line in &lines {
        assert_in_time_order(line);
        assert_eq!(line["history"][0]["state"], "published", "{line:#}");
    }

    // ledger: failed twice, then processed on the third attempt.
    assert_eq!(
        states_of(original, "ledger"),
        ["delivered", "retried", "retried", "processed", "committed"],
        "{original:#}"
    );
    let ledger = steps_of(original, "ledger");
    assert_eq!(ledger[0]["error"], "ledger busy at attempt 1");
    assert_eq!(ledger[1]["error"], "ledger busy at attempt 2");
    assert!(ledger[2]["error"].is_null());
    assert_eq!(ledger[2]["attempt"], 3);
    assert_eq!(ledger[3]["attempts"], 3);
    assert!(ledger[0]["at_ms"].as_u64() <= ledger[1]["at_ms"].as_u64());
    assert!(ledger[2]["at_ms"].as_u64() <= ledger[3]["at_ms"].as_u64());

    // risk: four failed attempts, a dead letter, then the replay.
    assert_eq!(
        states_of(original, "risk"),
        [
            "delivered",
            "retried",
            "retried",
            "retried",
            "failed",
            "dead_lettered",
            "committed",
            "replayed"
        ],
        "{original:#}"
    );
    let risk = steps_of(original, "risk");
    for step in &risk[..4] {
        assert_eq!(step["error"], "risk limit exceeded by 700");
    }
    assert_eq!(risk[4]["cause"], "risk limit exceeded by 700");
    assert_eq!(risk[4]["attempts"], 4);
    let dead = dead_letter_topic(Order::TYPE_NAME, "risk");
    assert_eq!(risk[5]["topic"], dead.as_str());
    assert_eq!(risk[5]["offset"], 0);
    assert_eq!(risk[5]["cause"], "risk limit exceeded by 700");
    assert_eq!(risk[5]["attempts"], 4);
    assert_eq!(risk[7]["dead_letter"]["topic"], dead.as_str());
    assert_eq!(risk[7]["dead_letter"]["offset"], 0);
    assert_eq!(risk[7]["topic"], Order::TYPE_NAME);
    assert_eq!(risk[7]["offset"], replayed["offset"]);
    assert_eq!(risk[7]["partition"], replayed["partition"]);

    // The replayed event names the original and has its own deliveries.
    assert_eq!(replayed["replay_of"]["offset"], original["offset"]);
    assert_eq!(replayed["replay_of"]["dead_letter"]["topic"], dead.as_str());
    for group in ["ledger", "risk"] {
        assert_eq!(
            states_of(replayed, group),
            ["delivered", "processed", "committed"],
            "{replayed:#}"
        );
    }

    // Never delivered: published (and appended), nothing else.
    let states: Vec<&str> = note["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["published", "appended"], "{note:#}");
}

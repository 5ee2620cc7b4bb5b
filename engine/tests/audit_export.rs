//! The audit export: a subject's events with their history as the log
//! records it (published, appended, committed by a group, erased) and
//! their verification status.

// The test tampers with a segment through std::fs.
#![allow(clippy::disallowed_methods)]

use std::time::Duration;

use serde_json::Value;
use sluice::audit::{ExportQuery, KeyPair, VerifyOptions, export};
use sluice::bus::{Bus, BusConfig, Message};
use sluice::state::TopicConfig;

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

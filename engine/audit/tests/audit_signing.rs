//! Producer signatures: a signed event is appended and counted by the
//! verifier; a signature that does not verify is refused with a named
//! error and nothing is appended.

use sluice_audit::signing::{self, SignatureError};
use std::sync::Arc;

use sluice_audit::{KeyPair, Sm2Signatures, VerifyOptions, VerifySignature as _, verify};
use sluice_core::bus::{Bus, BusConfig, BusError, Message};
use sluice_model::event::Headers;
use sluice_model::state::TopicConfig;

fn signed(key: &KeyPair, payload: &str) -> Message {
    let mut headers = Headers {
        event_type: "payment.settled".into(),
        content_type: "application/json".into(),
        ..Headers::default()
    };
    signing::sign("payments", b"acct-1", payload.as_bytes(), &mut headers, key);
    Message::new("payments", payload.to_owned())
        .key(&b"acct-1"[..])
        .headers(headers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_producer_signature_is_refused_and_nothing_is_appended() {
    let dir = tempfile::tempdir().unwrap();
    let config = BusConfig {
        retention_interval: None,
        signatures: Arc::new(Sm2Signatures),
        ..BusConfig::default()
    };
    let bus = Bus::open_with_config(dir.path(), config).await.unwrap();
    bus.create_topic("payments", 1, TopicConfig::default())
        .await
        .unwrap();
    let key = KeyPair::generate("producer-7").unwrap();
    let mut producer = bus.producer().await.unwrap();
    producer
        .publish(signed(&key, "{\"amount\":10}"))
        .await
        .unwrap();
    // Changed after signing: refused before anything is queued.
    let mut forged = signed(&key, "{\"amount\":10}");
    forged.payload = "{\"amount\":99}".into();
    let error = producer.publish(forged).await.unwrap_err();
    assert!(
        matches!(&error, BusError::Signature(refused)
            if matches!(refused.0.downcast_ref(), Some(SignatureError::Invalid(_)))),
        "{error}"
    );
    assert!(
        error.to_string().contains("nothing was appended"),
        "{error}"
    );
    // Unsigned events still go through.
    producer
        .publish(Message::new("payments", "plain"))
        .await
        .unwrap();
    // A remote producer's event, stamped by itself, is checked the same
    // way on the node that queues it.
    let mut forged = signed(&key, "{\"amount\":10}");
    forged.payload = "{\"amount\":98}".into();
    let event = sluice_model::event::Event {
        topic: forged.topic.clone(),
        key: forged.key.clone(),
        payload: forged.payload.clone(),
        headers: forged.headers.clone(),
        producer: sluice_model::event::ProducerStamp {
            id: 999,
            epoch: 0,
            sequence: 0,
        },
        partition: 0,
        timestamp_ms: 0,
    };
    let error = bus.send_stamped(event).await.unwrap_err();
    assert!(matches!(error, BusError::Signature(_)), "{error}");
    let partitions = bus.describe_topic("payments").unwrap().partitions;
    assert_eq!(partitions, vec![(0, 2)], "exactly the two good events");
    bus.close().await.unwrap();
    let report = verify(dir.path(), &VerifyOptions::default()).unwrap();
    assert_eq!(report.producer_signatures, 1);
    assert_eq!(report.events, 2);
}

/// Erasure masks the subject's payloads on every later read, leaves other
/// subjects alone, and leaves a signed tombstone the verifier checks;
/// masking by clearance works on the same reads and the stored log still
/// verifies afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasure_masks_later_reads_and_leaves_a_signed_record() {
    use sluice_audit::erasure::HEADER_ERASED;
    use sluice_audit::{Clearance, MaskingPolicy};
    use std::time::Duration;

    let dir = tempfile::tempdir().unwrap();
    let config = BusConfig {
        retention_interval: None,
        signatures: Arc::new(Sm2Signatures),
        ..BusConfig::default()
    };
    let bus = Bus::open_with_config(dir.path(), config).await.unwrap();
    bus.create_topic("crm", 1, TopicConfig::default())
        .await
        .unwrap();
    let mut producer = bus.producer().await.unwrap();
    let json = Headers {
        content_type: "application/json".into(),
        ..Headers::default()
    };
    for (subject, card) in [("alice", "4111111111111111"), ("bob", "5500000000000004")] {
        let body = format!("{{\"name\":\"{subject}\",\"card\":{{\"number\":\"{card}\"}}}}");
        let message = Message::new("crm", body)
            .key(subject.as_bytes().to_vec())
            .headers(json.clone());
        producer.publish(message).await.unwrap();
    }
    let key = KeyPair::generate("dpo@sluice.test").unwrap();
    let (erasure, _) = bus.erase(&key, "alice", "ticket 991").await.unwrap();
    erasure.verify_signature().unwrap();
    // A later event of the erased subject is masked too.
    let message = Message::new("crm", "{\"name\":\"alice\"}")
        .key(&b"alice"[..])
        .headers(json.clone());
    producer.publish(message).await.unwrap();

    let mut consumer = bus.consumer("readers", "m1", &["crm"]).await.unwrap();
    let deliveries = consumer
        .poll(100, Duration::from_millis(500))
        .await
        .unwrap();
    assert_eq!(deliveries.len(), 3);
    let policy = MaskingPolicy::parse(
        br#"{"rules": [{"path": "$.card.number", "mask": {"partial": {"keep_last": 4}}, "visible_from": "L3"}]}"#,
    )
    .unwrap();
    for delivery in &deliveries {
        let erased = delivery
            .headers
            .user
            .iter()
            .any(|(n, _)| n == HEADER_ERASED);
        if delivery.key.as_ref() == b"alice" {
            assert!(erased && delivery.payload.is_empty(), "{delivery:?}");
            continue;
        }
        assert!(!erased);
        let low = policy
            .mask(
                &delivery.payload,
                &delivery.headers.content_type,
                Clearance::L1,
            )
            .unwrap();
        let high = policy
            .mask(
                &delivery.payload,
                &delivery.headers.content_type,
                Clearance::L4,
            )
            .unwrap();
        let low: serde_json::Value = serde_json::from_slice(&low).unwrap();
        let high: serde_json::Value = serde_json::from_slice(&high).unwrap();
        assert_ne!(low["card"]["number"], "5500000000000004", "{low}");
        assert!(low["card"]["number"].as_str().unwrap().ends_with("0004"));
        assert_eq!(high["card"]["number"], "5500000000000004");
    }
    drop(consumer);
    bus.close().await.unwrap();
    // Reopened, the tombstone still masks (it is in the log and replayed).
    let bus = Bus::open(dir.path()).await.unwrap();
    let mut consumer = bus.consumer("again", "m1", &["crm"]).await.unwrap();
    let deliveries = consumer
        .poll(100, Duration::from_millis(500))
        .await
        .unwrap();
    let alice: Vec<_> = deliveries
        .iter()
        .filter(|d| d.key.as_ref() == b"alice")
        .collect();
    assert_eq!(alice.len(), 2);
    assert!(alice.iter().all(|d| d.payload.is_empty()));
    drop(consumer);
    bus.close().await.unwrap();
    let pinned = VerifyOptions {
        trusted_keys: vec![key.public_key()],
    };
    let report = verify(dir.path(), &pinned).unwrap();
    assert_eq!(report.erasures, 1);
    assert_eq!(report.signatures, 1);
    let stranger = VerifyOptions {
        trusted_keys: vec![KeyPair::generate("x").unwrap().public_key()],
    };
    let error = verify(dir.path(), &stranger).unwrap_err();
    assert!(
        error.to_string().contains("erasure is signed by key"),
        "{error}"
    );
}

/// `BusConfig::checkpoints` signs the chain head by its policy while the
/// log grows, and the checkpoints verify against the recomputed chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_checkpoints_are_written_and_verify() {
    use sluice_core::bus::CheckpointPolicy;
    use std::time::Duration;

    let dir = tempfile::tempdir().unwrap();
    let key = KeyPair::generate("node-1").unwrap();
    let policy = CheckpointPolicy {
        entries: 4,
        interval: Duration::from_millis(50),
    };
    let config = BusConfig {
        retention_interval: None,
        checkpoints: Some((Arc::new(key.clone()), policy)),
        ..BusConfig::default()
    };
    let bus = Bus::open_with_config(dir.path(), config).await.unwrap();
    bus.create_topic("t", 1, TopicConfig::default())
        .await
        .unwrap();
    let mut producer = bus.producer().await.unwrap();
    for i in 0..20 {
        producer
            .publish(Message::new("t", format!("event {i}")))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    bus.close().await.unwrap();
    let pinned = VerifyOptions {
        trusted_keys: vec![key.public_key()],
    };
    let report = verify(dir.path(), &pinned).unwrap();
    assert!(report.checkpoints >= 2, "{report:?}");
    assert_eq!(report.signatures, report.checkpoints);
    assert_eq!(report.events, 20);
}

//! Events of hundreds of kilobytes through the client library, against a
//! `ClusterNode` in this process: `RemoteProducer` refuses an event over
//! the format's limit and a request over `PUBLISH_BYTES_MAX` at once, with
//! typed errors; `RemoteConsumer` fetches are bounded by bytes and always
//! move on. The CLI's side is in `net/cli/tests/big_events.rs`.

use std::future::Future;
use std::time::{Duration, Instant};

use bytes::Bytes;

use sluice_client::client::{Client, ClientConfig, ClientError};
use sluice_client::consumer::{RemoteConsumer, Start};
use sluice_client::protocol::{ClientRequest, ClientResponse, PUBLISH_BYTES_MAX, PublishOutcome};
use sluice_model::event::{EVENT_PAYLOAD_SIZE_MAX, EventError, Headers};
use sluice_server::node::{ClusterNode, NodeConfig};

async fn bounded<T>(test: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(120), test)
        .await
        .expect("the test took longer than 120 s")
}

/// One in-process node, initialised, with a 1-partition topic `big`.
async fn one_node(root: &tempfile::TempDir) -> (ClusterNode, Client) {
    let config = NodeConfig::new(1, "127.0.0.1:0".parse().unwrap(), root.path().join("n1"));
    let node = ClusterNode::start(config).await.expect("node starts");
    let mut config = ClientConfig::new(vec![node.local_address()]);
    config.request_timeout = Duration::from_secs(20);
    let client = Client::new(config).expect("client");
    let members = vec![(1, node.local_address().to_string())];
    let answer = client
        .request_from(node.local_address(), &ClientRequest::Initialize { members })
        .await
        .expect("initialise");
    assert_eq!(answer, ClientResponse::Done);
    client.create_topic("big", 1).await.expect("topic");
    (node, client)
}

/// `RemoteProducer` refuses an event over the format's limits when it is
/// stamped (no sequence taken), and a request over `PUBLISH_BYTES_MAX`
/// before sending it: both at once, with typed errors naming the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_producer_refuses_oversized_events_and_requests_at_once() {
    bounded(async {
        let root = tempfile::tempdir().unwrap();
        let (node, client) = one_node(&root).await;
        let mut producer = client.producer().await.expect("producer");

        let huge = Bytes::from(vec![b'x'; EVENT_PAYLOAD_SIZE_MAX + 1]);
        let refused = producer
            .stamp("big", Bytes::new(), huge, Headers::default())
            .await
            .expect_err("an oversized payload is refused");
        assert!(
            matches!(refused, ClientError::Event(EventError::PayloadTooLarge { size }) if size == EVENT_PAYLOAD_SIZE_MAX + 1),
            "{refused:?}"
        );
        assert!(refused.to_string().contains(&EVENT_PAYLOAD_SIZE_MAX.to_string()));

        // 20 events of 900 kB: each valid, together more than a request
        // may carry.
        let mut events = Vec::new();
        for i in 0..20u8 {
            let payload = Bytes::from(vec![i; 900_000]);
            let event = producer
                .stamp("big", Bytes::new(), payload, Headers::default())
                .await
                .expect("a valid event");
            events.push(event);
        }
        let started = Instant::now();
        let refused = producer
            .publish(events.clone())
            .await
            .expect_err("an oversized request is refused");
        assert!(
            matches!(refused, ClientError::RequestTooLarge { max, .. } if max == PUBLISH_BYTES_MAX),
            "{refused:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(2));

        // Nothing was sent and the refused event took no sequence: the
        // same events, split, are appended from offset 0 on, in order.
        let mut offsets = Vec::new();
        for part in events.chunks(5) {
            for outcome in producer.publish(part.to_vec()).await.expect("publish") {
                match outcome {
                    PublishOutcome::Appended { offset, .. } => offsets.push(offset),
                    PublishOutcome::Refused { message } => panic!("refused: {message}"),
                }
            }
        }
        assert_eq!(offsets, (0..20).collect::<Vec<u64>>());
        node.shutdown().await.expect("shutdown");
    })
    .await;
}

/// A `RemoteConsumer` reads 40 events of 500 kB (20 MB, more than a
/// frame) in fetches bounded by bytes, and a byte bound below one event
/// still returns one event per fetch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_consumer_fetches_are_bounded_by_bytes_and_always_move_on() {
    bounded(async {
        let root = tempfile::tempdir().unwrap();
        let (node, client) = one_node(&root).await;
        let mut producer = client.producer().await.expect("producer");
        let mut events = Vec::new();
        for i in 0..40u8 {
            let payload = Bytes::from(vec![i; 500_000]);
            let event = producer
                .stamp("big", Bytes::new(), payload, Headers::default())
                .await
                .expect("a valid event");
            events.push(event);
        }
        for chunk in events.chunks(10) {
            producer.publish(chunk.to_vec()).await.expect("publish");
        }

        let mut consumer =
            RemoteConsumer::all_partitions(client.clone(), &["big"], Start::Earliest)
                .await
                .expect("consumer");
        let first = consumer
            .poll()
            .await
            .expect("a poll within the frame bound");
        let bytes: usize = first.iter().map(|p| p.event.payload.len()).sum();
        assert!(
            !first.is_empty() && first.len() < 40,
            "{} events",
            first.len()
        );
        assert!(bytes <= 4 * 1024 * 1024, "{bytes} bytes in one fetch");
        let mut seen: Vec<u8> = first.iter().map(|p| p.event.payload[0]).collect();

        consumer.set_fetch_max_bytes(1);
        while seen.len() < 40 {
            let polled = consumer.poll().await.expect("poll");
            assert_eq!(
                polled.len(),
                1,
                "one event per fetch below one event's size"
            );
            seen.push(polled[0].event.payload[0]);
        }
        assert_eq!(seen, (0..40).collect::<Vec<u8>>());
        assert!(consumer.poll().await.expect("poll").is_empty());
        node.shutdown().await.expect("shutdown");
    })
    .await;
}

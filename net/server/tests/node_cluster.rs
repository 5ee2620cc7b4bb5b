//! Three `ClusterNode`s in one process on loopback, driven only through
//! the client protocol: initialise, create a topic, publish from several
//! idempotent producers while the leader is stopped, and check that every
//! acknowledged event is readable exactly once at the offset it was
//! acknowledged with. Also: membership add and remove, and authentication.

use sluice_model::transport::MessageKind;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;

use sluice_client::auth::Secret;
use sluice_client::client::{Client, ClientConfig, ClientError};
use sluice_client::protocol::{ClientRequest, ClientResponse, PublishOutcome};
use sluice_client::tcp::TcpConfig;
use sluice_model::event::Headers;
use sluice_model::transport::NodeId;
use sluice_server::node::{ClusterNode, NodeConfig};

const TOPIC: &str = "orders";
const PARTITIONS: u32 = 3;

async fn bounded<T>(test: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(120), test)
        .await
        .expect("the test took longer than 120 s")
}

fn node_config(id: NodeId, listen: SocketAddr, dir: PathBuf) -> NodeConfig {
    NodeConfig {
        tcp: TcpConfig {
            call_timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_millis(200),
            backoff_initial: Duration::from_millis(20),
            backoff_max: Duration::from_millis(200),
            ..TcpConfig::default()
        },
        ..NodeConfig::new(id, listen, dir)
    }
}

struct Cluster {
    root: tempfile::TempDir,
    addresses: BTreeMap<NodeId, SocketAddr>,
    nodes: BTreeMap<NodeId, ClusterNode>,
}

impl Cluster {
    async fn start(ids: &[NodeId]) -> Cluster {
        let root = tempfile::tempdir().expect("tempdir");
        let mut cluster = Cluster {
            root,
            addresses: BTreeMap::new(),
            nodes: BTreeMap::new(),
        };
        for &id in ids {
            cluster.start_node(id, "127.0.0.1:0".parse().unwrap()).await;
        }
        cluster
    }

    async fn start_node(&mut self, id: NodeId, listen: SocketAddr) {
        let dir = self.root.path().join(format!("node-{id}"));
        let node = ClusterNode::start(node_config(id, listen, dir))
            .await
            .expect("node starts");
        self.addresses.insert(id, node.local_address());
        self.nodes.insert(id, node);
    }

    async fn stop(&mut self, id: NodeId) {
        let node = self.nodes.remove(&id).expect("running");
        node.shutdown().await.expect("clean shutdown");
    }

    fn client(&self) -> Client {
        let mut config = ClientConfig::new(self.addresses.values().copied().collect());
        config.request_timeout = Duration::from_secs(20);
        config.attempt_timeout = Duration::from_millis(500);
        Client::new(config).expect("client")
    }

    async fn initialize(&self, client: &Client) {
        let members = self
            .addresses
            .iter()
            .map(|(&id, address)| (id, address.to_string()))
            .collect();
        let first = *self.addresses.values().next().unwrap();
        let answer = client
            .request_from(first, &ClientRequest::Initialize { members })
            .await
            .expect("initialise");
        assert_eq!(answer, ClientResponse::Done);
    }

    /// Waits until a running node leads, and returns it.
    async fn leader(&self, client: &Client) -> NodeId {
        loop {
            let metadata = client.metadata().await.expect("metadata");
            if let Some((leader, _)) = metadata.leader {
                if self.nodes.contains_key(&leader) {
                    return leader;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// An event some producer had acknowledged: (producer, partition,
/// sequence) → offset.
type Acked = Arc<Mutex<HashMap<(u64, u32, u64), u64>>>;

/// Publishes `rounds` batches of `batch` events, recording each
/// acknowledged event.
async fn produce(client: Client, rounds: usize, batch: usize, acked: Acked) -> usize {
    let mut producer = client.producer().await.expect("producer");
    let (id, _) = producer.identity();
    let mut count = 0;
    for round in 0..rounds {
        let mut events = Vec::new();
        for i in 0..batch {
            let key = Bytes::from(format!("key-{}", (round * batch + i) % 7));
            let payload = Bytes::from(format!("{id}:{round}:{i}"));
            let event = producer
                .stamp(TOPIC, key, payload, Headers::default())
                .await
                .expect("stamp");
            events.push(event);
        }
        let stamps: Vec<_> = events
            .iter()
            .map(|e| (e.partition, e.producer.sequence))
            .collect();
        let outcomes = producer.publish(events).await.expect("publish");
        let mut acked = acked.lock().unwrap();
        for ((partition, sequence), outcome) in stamps.into_iter().zip(outcomes) {
            match outcome {
                PublishOutcome::Appended {
                    partition: p,
                    offset,
                    ..
                } => {
                    assert_eq!(p, partition);
                    acked.insert((id, partition, sequence), offset);
                    count += 1;
                }
                PublishOutcome::Refused { message } => panic!("refused: {message}"),
            }
        }
    }
    count
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_events_survive_losing_the_leader() {
    bounded(async {
        let mut cluster = Cluster::start(&[1, 2, 3]).await;
        let client = cluster.client();
        cluster.initialize(&client).await;
        let first_leader = cluster.leader(&client).await;
        client
            .create_topic(TOPIC, PARTITIONS)
            .await
            .expect("create topic");

        let acked: Acked = Arc::default();
        let producers: Vec<_> = (0..4)
            .map(|_| tokio::spawn(produce(client.clone(), 40, 8, Arc::clone(&acked))))
            .collect();
        // Let some publishes land, then stop the leader under load.
        while acked.lock().unwrap().len() < 200 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        cluster.stop(first_leader).await;
        let mut total = 0;
        for producer in producers {
            total += producer.await.expect("producer task");
        }
        assert_eq!(total, 4 * 40 * 8);
        let new_leader = cluster.leader(&client).await;
        assert_ne!(new_leader, first_leader);

        // Read every partition back from the new leader.
        let acked = acked.lock().unwrap().clone();
        let mut seen: HashMap<(u64, u32, u64), u64> = HashMap::new();
        for partition in 0..PARTITIONS {
            let mut offset = 0;
            let mut last_sequence: HashMap<u64, u64> = HashMap::new();
            loop {
                let (events, next, (_, end)) = client
                    .fetch(TOPIC, partition, offset, 1000, Duration::ZERO)
                    .await
                    .expect("fetch");
                for event in &events {
                    let stamp = (event.producer.id, partition, event.producer.sequence);
                    assert!(
                        seen.insert(stamp, event.offset).is_none(),
                        "{stamp:?} appears twice"
                    );
                    if let Some(previous) =
                        last_sequence.insert(event.producer.id, event.producer.sequence)
                    {
                        assert!(previous < event.producer.sequence, "producer order broken");
                    }
                }
                offset = next;
                if offset >= end {
                    break;
                }
            }
        }
        for (stamp, offset) in &acked {
            assert_eq!(
                seen.get(stamp),
                Some(offset),
                "acknowledged {stamp:?} lost or moved"
            );
        }
        assert_eq!(
            seen.len(),
            acked.len(),
            "events nobody acknowledged appeared"
        );

        // The old leader comes back on its address and catches up with
        // everything the new leader had applied.
        let applied = client.metadata().await.expect("metadata").log.2;
        let address = cluster.addresses[&first_leader];
        cluster.start_node(first_leader, address).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let answer = client.request_from(address, &ClientRequest::Metadata).await;
            if let Ok(ClientResponse::Metadata(metadata)) = &answer {
                if metadata.log.2 >= applied && metadata.leader.is_some() {
                    break;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the old leader never caught up: {answer:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for id in [1, 2, 3] {
            cluster.stop(id).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn members_are_added_and_removed() {
    bounded(async {
        let mut cluster = Cluster::start(&[1, 2, 3]).await;
        let client = cluster.client();
        cluster.initialize(&client).await;
        cluster.leader(&client).await;
        client.create_topic(TOPIC, 1).await.expect("create topic");

        cluster.start_node(4, "127.0.0.1:0".parse().unwrap()).await;
        let address = cluster.addresses[&4].to_string();
        // The leader answers once node 4 has caught up: no retry meanwhile.
        let mut config = ClientConfig::new(cluster.addresses.values().copied().collect());
        config.attempt_timeout = Duration::from_secs(40);
        let adding = Client::new(config).expect("client");
        let added = adding
            .request(&ClientRequest::AddNode {
                id: 4,
                address,
                catch_up_ms: 30_000,
            })
            .await
            .expect("add node 4");
        assert_eq!(added, ClientResponse::Done);
        let metadata = client.metadata().await.expect("metadata");
        assert!(
            metadata
                .members
                .iter()
                .any(|(id, _, voter)| *id == 4 && *voter),
            "node 4 is a voter: {metadata:?}"
        );
        // The new member has the topic: it replicated the log.
        let answer = client
            .request_from(cluster.addresses[&4], &ClientRequest::Metadata)
            .await
            .expect("node 4 answers");
        let ClientResponse::Metadata(seen_by_4) = answer else {
            panic!("unexpected {answer:?}");
        };
        assert_eq!(seen_by_4.topics, vec![(TOPIC.to_owned(), 1)]);

        let removed = client
            .request(&ClientRequest::RemoveNode { id: 4 })
            .await
            .expect("remove node 4");
        assert_eq!(removed, ClientResponse::Done);
        let metadata = client.metadata().await.expect("metadata");
        assert!(
            metadata.members.iter().all(|(id, _, _)| *id != 4),
            "node 4 is gone: {metadata:?}"
        );
        for id in [1, 2, 3, 4] {
            cluster.stop(id).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_without_the_secret_are_refused() {
    bounded(async {
        let root = tempfile::tempdir().unwrap();
        let secret = Secret::new(*b"the cluster secret, 32 bytes ok!").unwrap();
        let config = NodeConfig {
            secret: Some(secret.clone()),
            ..node_config(1, "127.0.0.1:0".parse().unwrap(), root.path().join("n1"))
        };
        let node = ClusterNode::start(config).await.expect("node starts");
        let address = node.local_address();
        let client_with = |secret: Option<Secret>| {
            let mut config = ClientConfig::new(vec![address]);
            config.secret = secret;
            // Long enough for the challenge to arrive on a loaded machine.
            config.attempt_timeout = Duration::from_secs(5);
            Client::new(config).unwrap()
        };

        let error = client_with(None)
            .request_from(address, &ClientRequest::Metadata)
            .await
            .unwrap_err();
        assert!(
            matches!(&error, ClientError::Unavailable { last, .. } if last.contains("requires authentication")),
            "{error}"
        );
        let wrong = Secret::new(*b"not the cluster secret, at all!!").unwrap();
        let error = client_with(Some(wrong))
            .request_from(address, &ClientRequest::Metadata)
            .await
            .unwrap_err();
        assert!(matches!(error, ClientError::Unavailable { .. }), "{error}");

        let answer = client_with(Some(secret))
            .request_from(address, &ClientRequest::Metadata)
            .await
            .expect("the right secret is admitted");
        assert!(matches!(answer, ClientResponse::Metadata(_)));
        node.shutdown().await.unwrap();
    })
    .await;
}

/// An impostor on a node's address (it sends a challenge, but cannot prove
/// it holds the secret) gets the client's proof and nothing else: the
/// client refuses to send it a request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_cannot_prove_the_secret_gets_no_request() {
    use bytes::BytesMut;
    use sluice_client::wire::{self, Header, Role};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    bounded(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let impostor = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let header = |role| Header {
                role,
                kind: MessageKind::Auth as u8,
                group: 0,
                request_id: 0,
                source: 9,
            };
            let mut frame = BytesMut::new();
            wire::encode_into(&mut frame, &header(Role::Request), &[7u8; 32]);
            stream.write_all(&frame).await.unwrap();
            let mut buf = BytesMut::new();
            let answer = loop {
                if let Some(frame) = wire::decode(&mut buf).unwrap() {
                    break frame;
                }
                assert!(stream.read_buf(&mut buf).await.unwrap() > 0, "closed early");
            };
            // A proof made with another secret.
            let other = Secret::new(*b"the impostor's own secret, 32 b!").unwrap();
            let proof = other.node_proof(&answer.body[32..], 9);
            let mut frame = BytesMut::new();
            wire::encode_into(&mut frame, &header(Role::Response), &proof);
            stream.write_all(&frame).await.unwrap();
            // Whatever the client sends from here on.
            let mut rest = Vec::new();
            let _ = stream.read_to_end(&mut rest).await;
            (answer.body.len(), rest.len())
        });
        let mut config = ClientConfig::new(vec![address]);
        config.secret = Some(Secret::new(*b"the cluster secret, 32 bytes ok!").unwrap());
        config.attempt_timeout = Duration::from_secs(5);
        let client = Client::new(config).unwrap();
        let error = client
            .request_from(address, &ClientRequest::Metadata)
            .await
            .unwrap_err();
        assert!(
            error
                .to_string()
                .contains("did not prove it holds the cluster secret"),
            "{error}"
        );
        drop(client);
        let (answer_len, sent_after) = impostor.await.unwrap();
        assert_eq!(answer_len, 64, "a proof and a challenge");
        assert_eq!(sent_after, 0, "the client sent a request to an impostor");
    })
    .await;
}

/// `ClusterNode::stopped` resolves, with a reason, once the node's Raft
/// core stops on its own, and not before (`sluice node` exits on it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_reports_when_its_raft_core_stops() {
    bounded(async {
        let root = tempfile::tempdir().unwrap();
        let config = node_config(1, "127.0.0.1:0".parse().unwrap(), root.path().join("n1"));
        let node = ClusterNode::start(config).await.expect("node starts");
        let early = tokio::time::timeout(Duration::from_millis(300), node.stopped()).await;
        assert!(early.is_err(), "reported a stop while running: {early:?}");
        node.bus().raft().shutdown().await.expect("shutdown");
        let reason = tokio::time::timeout(Duration::from_secs(10), node.stopped())
            .await
            .expect("the stop is reported");
        assert!(!reason.is_empty());
        let _ = node.shutdown().await;
    })
    .await;
}

/// Two `RemoteConsumer`s in one group share a topic's partitions and
/// consume each event once; when one leaves, the other takes over its
/// partitions from the committed offsets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_consumers_share_a_group_and_take_over() {
    use sluice_client::consumer::{Polled, RemoteConsumer, Start};

    async fn publish(client: &Client, from: usize, count: usize) {
        let mut producer = client.producer().await.expect("producer");
        let mut events = Vec::new();
        for i in from..from + count {
            let key = Bytes::from(format!("key-{i}"));
            let payload = Bytes::from(format!("event-{i}"));
            let event = producer
                .stamp("orders", key, payload, Headers::default())
                .await
                .expect("stamp");
            events.push(event);
        }
        let outcomes = producer.publish(events).await.expect("publish");
        assert!(
            outcomes
                .iter()
                .all(|o| matches!(o, PublishOutcome::Appended { .. }))
        );
    }

    /// Polls and commits until `want` events came in all, or panics.
    async fn drain(consumers: &mut [&mut RemoteConsumer], seen: &mut Vec<String>, want: usize) {
        for _ in 0..200 {
            for consumer in consumers.iter_mut() {
                let polled: Vec<Polled> = consumer.poll().await.expect("poll");
                seen.extend(
                    polled
                        .iter()
                        .map(|p| String::from_utf8(p.event.payload.to_vec()).unwrap()),
                );
                consumer.commit().await.expect("commit");
            }
            if seen.len() >= want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("{} of {want} events came", seen.len());
    }

    bounded(async {
        let cluster = Cluster::start(&[1]).await;
        let client = cluster.client();
        cluster.initialize(&client).await;
        cluster.leader(&client).await;
        client
            .create_topic("orders", 4)
            .await
            .expect("create topic");
        publish(&client, 0, 200).await;

        let mut a =
            RemoteConsumer::join(client.clone(), "billing", "a", &["orders"], Start::Earliest)
                .await
                .expect("a joins");
        let mut b =
            RemoteConsumer::join(client.clone(), "billing", "b", &["orders"], Start::Earliest)
                .await
                .expect("b joins");
        let mut seen = Vec::new();
        drain(&mut [&mut a, &mut b], &mut seen, 200).await;
        assert_eq!(a.generation(), b.generation());
        let (mine, theirs) = (a.positions().count(), b.positions().count());
        assert_eq!((mine, theirs), (2, 2), "the partitions are shared");

        b.leave().await.expect("b leaves");
        publish(&client, 200, 100).await;
        drain(&mut [&mut a], &mut seen, 300).await;
        assert_eq!(a.positions().count(), 4, "a took b's partitions");

        let mut sorted = seen.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), seen.len(), "an event came twice");
        assert_eq!(seen.len(), 300);
        a.leave().await.expect("a leaves");
    })
    .await;
}

/// A peer that has proved nothing cannot make a secured node buffer a large
/// frame: a handshake frame that declares more than a proof and a challenge
/// is refused at once, before its body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_frame_before_the_proof_is_refused_at_once() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    bounded(async {
        let root = tempfile::tempdir().unwrap();
        let config = NodeConfig {
            secret: Some(Secret::new(*b"the cluster secret, 32 bytes ok!").unwrap()),
            ..node_config(1, "127.0.0.1:0".parse().unwrap(), root.path().join("n1"))
        };
        let node = ClusterNode::start(config).await.expect("node starts");
        let mut stream = tokio::net::TcpStream::connect(node.local_address())
            .await
            .unwrap();
        // The start of a frame declaring an 8 MiB body (within the frame
        // bound), and nothing more.
        let mut start = sluice_client::wire::MAGIC.to_le_bytes().to_vec();
        start.extend_from_slice(&(8u32 << 20).to_le_bytes());
        stream.write_all(&start).await.unwrap();
        let mut sink = Vec::new();
        let closed =
            tokio::time::timeout(Duration::from_secs(2), stream.read_to_end(&mut sink)).await;
        assert!(
            closed.is_ok(),
            "the node kept the connection open, waiting for the body"
        );
        node.shutdown().await.unwrap();
    })
    .await;
}

//! A follower that catches up by a snapshot ends with the body of every
//! event retention kept, as the leader does, and its data directory
//! verifies (`audit::verify`).
//!
//! Three `Bus::open_member` nodes on real directories talk through an
//! in-process transport that can cut a node off. The follower is cut off
//! while the leader writes, drops a prefix by retention and purges, writes
//! more, snapshots at an index above the retention point and writes more;
//! healed, the follower must install that snapshot (the leader no longer
//! holds the entries it lacks) and then serve every retained offset.
//!
//! Before snapshots carried the log records between the retention point
//! and the snapshot, the follower held offsets without bodies there
//! ("indexed entry missing from the log").

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use openraft::async_runtime::WatchReceiver;
use sluice_audit::{VerifyOptions, verify};
use sluice_core::bus::{Bus, BusConfig, Message};
use sluice_core::io::os::{OsClock, OsDisk, OsEnv};
use sluice_core::raft::{Node, RaftService, TransportNetwork};
use sluice_model::state::TopicConfig;
use sluice_model::transport::{Caller, Handler, NodeId, Request, Transport, TransportError};

const IDS: [NodeId; 3] = [1, 2, 3];
const TOPIC: &str = "orders";
const PARTITIONS: u32 = 2;
/// Small segments, so retention (whole sealed segments) has some to drop.
const SEGMENT_SIZE: u64 = 4096;

type Service = RaftService<OsEnv>;

/// Rewrites a request on its way to a node (tests plant damage with it).
type Tamper = Box<dyn Fn(NodeId, Request) -> Request + Send + Sync>;

/// The nodes' handlers, which nodes are cut off, and what was refused.
#[derive(Default)]
struct Net {
    services: Mutex<BTreeMap<NodeId, Arc<Service>>>,
    cut: Mutex<BTreeSet<NodeId>>,
    tamper: Mutex<Option<Tamper>>,
    refusals: Mutex<Vec<String>>,
}

/// One node's side of the in-process network.
#[derive(Clone)]
struct MemTransport {
    source: NodeId,
    net: Arc<Net>,
}

impl std::fmt::Debug for MemTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MemTransport({})", self.source)
    }
}

impl Transport for MemTransport {
    fn call(
        &self,
        target: NodeId,
        request: Request,
    ) -> impl Future<Output = Result<Bytes, TransportError>> + Send {
        let this = self.clone();
        async move {
            let cut = {
                let cut = this.net.cut.lock().unwrap();
                cut.contains(&this.source) || cut.contains(&target)
            };
            let service = this.net.services.lock().unwrap().get(&target).cloned();
            let (false, Some(service)) = (cut, service) else {
                let source = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
                return Err(TransportError::Unreachable {
                    target,
                    source: Arc::new(source),
                });
            };
            let request = match this.net.tamper.lock().unwrap().as_ref() {
                Some(tamper) => tamper(target, request),
                None => request,
            };
            service
                .handle(Caller::node(this.source), request)
                .await
                .map_err(|error| {
                    this.net
                        .refusals
                        .lock()
                        .unwrap()
                        .push(error.message.clone());
                    TransportError::Remote {
                        target,
                        message: error.message,
                    }
                })
        }
    }
}

/// Three running nodes.
struct Cluster {
    dirs: BTreeMap<NodeId, tempfile::TempDir>,
    buses: BTreeMap<NodeId, Bus<OsEnv>>,
    net: Arc<Net>,
}

impl Cluster {
    async fn start() -> Cluster {
        let net = Arc::new(Net::default());
        let mut dirs = BTreeMap::new();
        let mut buses = BTreeMap::new();
        for id in IDS {
            let dir = tempfile::tempdir().unwrap();
            let bus = open(id, dir.path(), &net).await;
            dirs.insert(id, dir);
            buses.insert(id, bus);
        }
        let members = IDS
            .iter()
            .map(|&id| (id, Node::new(format!("node-{id}"))))
            .collect();
        buses[&1].initialize(members).await.unwrap();
        Cluster { dirs, buses, net }
    }

    async fn leader(&self) -> NodeId {
        for _ in 0..500 {
            let leader = self.buses[&1]
                .raft()
                .metrics()
                .borrow_watched()
                .current_leader;
            let agreed = leader.is_some_and(|leader| {
                IDS.iter().filter(|id| !self.is_cut(**id)).all(|id| {
                    self.buses[id]
                        .raft()
                        .metrics()
                        .borrow_watched()
                        .current_leader
                        == Some(leader)
                })
            });
            if let (true, Some(leader)) = (agreed, leader) {
                if !self.is_cut(leader) {
                    return leader;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("no leader agreed on in 10 s");
    }

    fn is_cut(&self, id: NodeId) -> bool {
        self.net.cut.lock().unwrap().contains(&id)
    }

    fn cut(&self, id: NodeId) {
        self.net.cut.lock().unwrap().insert(id);
    }

    fn heal(&self, id: NodeId) {
        self.net.cut.lock().unwrap().remove(&id);
    }

    /// Waits until node `id` has applied what the leader has.
    async fn caught_up(&self, id: NodeId, leader: NodeId) {
        let target = self.buses[&leader]
            .raft()
            .metrics()
            .borrow_watched()
            .last_applied;
        self.buses[&id]
            .raft()
            .wait(Some(Duration::from_secs(20)))
            .metrics(|m| m.last_applied >= target, "the follower caught up")
            .await
            .unwrap();
    }
}

async fn open(id: NodeId, dir: &Path, net: &Arc<Net>) -> Bus<OsEnv> {
    let transport = MemTransport {
        source: id,
        net: Arc::clone(net),
    };
    let network = TransportNetwork::new(id, Arc::new(transport));
    let config = BusConfig {
        node_id: id,
        segment_size: SEGMENT_SIZE,
        retention_interval: None,
        ..BusConfig::default()
    };
    let disk = OsDisk::open(dir).unwrap();
    let bus = Bus::open_member(disk, Arc::new(OsClock::new()), config, network)
        .await
        .unwrap();
    let service = Arc::new(RaftService::new(bus.raft().clone()));
    net.services.lock().unwrap().insert(id, service);
    bus
}

/// Publishes `count` events through `leader`; returns (partition,
/// offset) → payload of each.
async fn publish(
    cluster: &Cluster,
    leader: NodeId,
    tag: &str,
    count: usize,
) -> BTreeMap<(u32, u64), Bytes> {
    let mut producer = cluster.buses[&leader].producer().await.unwrap();
    let mut published = BTreeMap::new();
    for i in 0..count {
        let payload = Bytes::from(format!("{tag}-{i:04}-{}", "x".repeat(40)));
        let message = Message::new(TOPIC, payload.clone()).key(format!("k{i}"));
        let receipt = producer.publish(message).await.unwrap();
        published.insert((receipt.partition, receipt.offset), payload);
    }
    published
}

/// Every retained event of node `id`, by (partition, offset), with the log
/// index that holds it.
fn read_all(bus: &Bus<OsEnv>) -> BTreeMap<(u32, u64), (u64, Bytes)> {
    let mut events = BTreeMap::new();
    let description = bus.describe_topic(TOPIC).unwrap();
    for (partition, &(first, next)) in description.partitions.iter().enumerate() {
        let partition = partition as u32;
        let mut offset = first;
        while offset < next {
            let (deliveries, after) = bus
                .read(TOPIC, partition, offset, 64)
                .unwrap_or_else(|e| panic!("read {partition}@{offset}: {e}"));
            assert!(after > offset, "no progress at {partition}@{offset}");
            for delivery in deliveries {
                let location = bus
                    .state()
                    .locate(TOPIC, partition, delivery.offset)
                    .expect("a read event is indexed");
                events.insert(
                    (partition, delivery.offset),
                    (location.log_index, delivery.payload),
                );
            }
            offset = after;
        }
    }
    events
}

/// A 3-node cluster with the topic (retention: 3 segments), one follower
/// caught up and then cut off; returns it with the leader, that follower
/// and the other one.
async fn cut_off_follower() -> (Cluster, NodeId, NodeId, NodeId) {
    let cluster = Cluster::start().await;
    let leader = cluster.leader().await;
    let config = TopicConfig {
        retention_bytes: Some(3 * SEGMENT_SIZE),
        ..TopicConfig::default()
    };
    cluster.buses[&leader]
        .create_topic(TOPIC, PARTITIONS, config)
        .await
        .unwrap();
    let follower = *IDS.iter().find(|&&id| id != leader).unwrap();
    let other = *IDS
        .iter()
        .find(|&&id| id != leader && id != follower)
        .unwrap();
    cluster.caught_up(follower, leader).await;
    cluster.cut(follower);
    (cluster, leader, follower, other)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_that_installs_a_snapshot_holds_every_retained_body() {
    tokio::time::timeout(Duration::from_secs(120), catch_up())
        .await
        .expect("the test took longer than 120 s");
}

async fn catch_up() {
    let (mut cluster, leader, follower, other) = cut_off_follower().await;

    // Writes, retention drops a prefix (leader and the other follower
    // purge their logs), writes, a snapshot above the retention point,
    // writes.
    let mut published = publish(&cluster, leader, "a", 150).await;
    let point = cluster.buses[&leader].enforce_retention().await.unwrap();
    cluster.caught_up(other, leader).await;
    cluster.buses[&other].enforce_retention().await.unwrap();
    assert!(point > 1, "retention dropped nothing");
    published.extend(publish(&cluster, leader, "b", 40).await);
    let snapshot = {
        let raft = cluster.buses[&leader].raft();
        let applied = raft.metrics().borrow_watched().last_applied;
        raft.trigger().snapshot().await.unwrap();
        raft.wait(Some(Duration::from_secs(10)))
            .metrics(|m| m.snapshot >= applied, "a fresh snapshot")
            .await
            .unwrap();
        raft.metrics().borrow_watched().snapshot.unwrap().index
    };
    assert!(
        snapshot > point,
        "the snapshot lies above the retention point"
    );
    published.extend(publish(&cluster, leader, "c", 20).await);

    // The follower comes back: the leader's log begins after what it
    // holds, so it gets the snapshot, then the entries after it.
    cluster.heal(follower);
    cluster.caught_up(follower, leader).await;
    let installed = cluster.buses[&follower]
        .raft()
        .metrics()
        .borrow_watched()
        .snapshot
        .expect("the follower installed a snapshot");
    assert!(installed.index >= snapshot, "installed {installed:?}");

    let expected = read_all(&cluster.buses[&leader]);
    let got = read_all(&cluster.buses[&follower]);
    let between = got
        .values()
        .filter(|(index, _)| (point..=installed.index).contains(index))
        .count();
    assert!(
        between > 0,
        "no retained event between the retention point {point} and the snapshot at {}",
        installed.index
    );
    assert_eq!(got.len(), expected.len());
    for (key, (_, payload)) in &got {
        assert_eq!(Some(payload), published.get(key), "event {key:?}");
        assert_eq!(payload, &expected[key].1, "event {key:?}");
    }

    let bus = cluster.buses.remove(&follower).unwrap();
    bus.close().await.unwrap();
    let report = verify(cluster.dirs[&follower].path(), &VerifyOptions::default())
        .unwrap_or_else(|e| panic!("the follower's directory does not verify: {e}"));
    assert!(
        report.first_index <= point,
        "the follower's log begins at {}, after the retention point {point}",
        report.first_index
    );
    for (_, bus) in std::mem::take(&mut cluster.buses) {
        bus.close().await.unwrap();
    }
}

/// A full-snapshot request as it travels (`raft/transport_network.rs`).
#[derive(serde::Serialize, serde::Deserialize)]
struct FullSnapshotWire {
    vote: sluice_core::raft::Vote,
    meta: openraft::storage::SnapshotMeta<sluice_core::raft::CommittedLeaderId, NodeId, Node>,
    data: Vec<u8>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_whose_tail_does_not_chain_is_refused() {
    tokio::time::timeout(Duration::from_secs(120), refuse_a_broken_tail())
        .await
        .expect("the test took longer than 120 s");
}

async fn refuse_a_broken_tail() {
    use sluice_core::raft::snapshot::testing::{corrupt_tail_record, tail_indexes};
    use sluice_model::transport::MessageKind;

    let (mut cluster, leader, follower, other) = cut_off_follower().await;
    publish(&cluster, leader, "a", 150).await;
    cluster.buses[&leader].enforce_retention().await.unwrap();
    cluster.caught_up(other, leader).await;
    cluster.buses[&other].enforce_retention().await.unwrap();
    publish(&cluster, leader, "b", 40).await;
    let before = cluster.buses[&follower]
        .raft()
        .metrics()
        .borrow_watched()
        .clone();

    // One record in the middle of the tail gets a flipped payload bit and
    // the snapshot a recomputed checksum: only the chain can tell.
    let damaged = Arc::new(Mutex::new(None::<u64>));
    let record = Arc::clone(&damaged);
    *cluster.net.tamper.lock().unwrap() = Some(Box::new(move |target, mut request| {
        if target != follower || request.kind != MessageKind::FullSnapshot as u8 {
            return request;
        }
        let mut wire: FullSnapshotWire = postcard::from_bytes(&request.body).unwrap();
        let tail = tail_indexes(&wire.data).expect("the snapshot carries a tail");
        let index = tail.start() + (tail.end() - tail.start()) / 2;
        wire.data = corrupt_tail_record(&wire.data, index).expect("a record to damage");
        *record.lock().unwrap() = Some(index);
        request.body = Bytes::from(postcard::to_allocvec(&wire).unwrap());
        request
    }));
    cluster.heal(follower);
    let mut refusal = None;
    for _ in 0..500 {
        refusal = cluster.net.refusals.lock().unwrap().first().cloned();
        if refusal.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let refusal = refusal.expect("the follower refused the damaged snapshot");
    let index = damaged.lock().unwrap().expect("a snapshot was damaged");
    assert!(
        refusal.contains(&format!("log tail record at index {index} does not chain")),
        "{refusal}"
    );
    // Nothing was installed, and the follower still runs.
    let after = cluster.buses[&follower]
        .raft()
        .metrics()
        .borrow_watched()
        .clone();
    assert_eq!(after.snapshot, before.snapshot);
    assert_eq!(after.last_applied, before.last_applied);
    assert!(after.running_state.is_ok(), "{:?}", after.running_state);

    // Undamaged, the same snapshot installs.
    *cluster.net.tamper.lock().unwrap() = None;
    cluster.caught_up(follower, leader).await;
    assert_eq!(
        read_all(&cluster.buses[&follower]),
        read_all(&cluster.buses[&leader])
    );
    for (_, bus) in std::mem::take(&mut cluster.buses) {
        bus.close().await.unwrap();
    }
}

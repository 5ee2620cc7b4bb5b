//! A follower whose newest segment lost its end (cut by an operator, by
//! a device, or a power failure under buffered durability) recovers a log
//! shorter than what it had acknowledged to the leader. It must still
//! catch up from the leader.
//!
//! Three `Bus::open_member` nodes on real directories, an in-process
//! transport. The follower is stopped, its newest segment truncated to a
//! third of its frames, and it is opened again: its applied index must
//! reach the leader's, and it must hold the same events.
//!
//! Before the leader allowed a follower's log to revert
//! (`openraft::Config::allow_log_reversion`), it kept sending entries after
//! the follower's old last index, which the follower no longer had; the
//! follower refused each one and applied nothing, for good.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use openraft::async_runtime::WatchReceiver;
use sluice_core::bus::{Bus, BusConfig, BusError, Message};
use sluice_core::io::os::{OsClock, OsDisk, OsEnv};
use sluice_core::io::{Disk, DiskFile};
use sluice_core::log::{self, Log};
use sluice_core::raft::{Node, RaftService, TransportNetwork};
use sluice_model::state::TopicConfig;
use sluice_model::transport::{Caller, Handler, NodeId, Request, Transport, TransportError};

const IDS: [NodeId; 3] = [1, 2, 3];
const TOPIC: &str = "orders";
/// Small segments, so the log has several and each holds several events.
const SEGMENT_SIZE: u64 = 64 * 1024;
/// A tenth of the operator's 75 kB events, for the smaller segments.
const PAYLOAD_SIZE: usize = 7_500;

/// The bound of one call, as the TCP transport has one.
const CALL_TIMEOUT: Duration = Duration::from_secs(1);

type Service = RaftService<OsEnv>;

/// The nodes' handlers; a stopped node has none.
#[derive(Default)]
struct Net {
    services: Mutex<BTreeMap<NodeId, Arc<Service>>>,
}

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
            let service = this.net.services.lock().unwrap().get(&target).cloned();
            let Some(service) = service else {
                let source = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
                return Err(TransportError::Unreachable {
                    target,
                    source: Arc::new(source),
                });
            };
            // Bounded like the TCP transport's calls: a leader's append
            // stream that began before the follower restarted waits for
            // requests the old process answered, until the call times out.
            let answer = tokio::time::timeout(
                CALL_TIMEOUT,
                service.handle(Caller::node(this.source), request),
            );
            match answer.await {
                Ok(answer) => answer.map_err(|error| TransportError::Remote {
                    target,
                    message: error.message,
                }),
                Err(_) => Err(TransportError::TimedOut {
                    target,
                    after: CALL_TIMEOUT,
                }),
            }
        }
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
        // Elections only when a node stops, even on a loaded machine.
        heartbeat_interval: Duration::from_millis(150),
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

fn metrics(bus: &Bus<OsEnv>) -> openraft::RaftMetrics<sluice_core::raft::TypeConfig> {
    bus.raft().metrics().borrow_watched().clone()
}

async fn leader(buses: &BTreeMap<NodeId, Bus<OsEnv>>) -> NodeId {
    for _ in 0..500 {
        let leaders: Vec<_> = buses
            .values()
            .map(|bus| metrics(bus).current_leader)
            .collect();
        if let Some(Some(leader)) = leaders.first() {
            if leaders.iter().all(|l| *l == Some(*leader)) && buses.contains_key(leader) {
                return *leader;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no leader agreed on in 10 s");
}

async fn publish(bus: &Bus<OsEnv>, tag: &str, count: usize) {
    let mut producer = bus.producer().await.unwrap();
    for i in 0..count {
        let mut payload = format!("{tag}-{i:05}-").into_bytes();
        payload.resize(PAYLOAD_SIZE, b'a' + (i % 26) as u8);
        let message = Message::new(TOPIC, Bytes::from(payload)).key(format!("k{i}"));
        producer.publish(message).await.unwrap();
    }
}

/// Every event of the topic, by (partition, offset).
fn read_all(bus: &Bus<OsEnv>) -> BTreeMap<(u32, u64), Bytes> {
    let mut events = BTreeMap::new();
    let description = bus.describe_topic(TOPIC).unwrap();
    for (partition, &(first, next)) in description.partitions.iter().enumerate() {
        let partition = partition as u32;
        let mut offset = first;
        while offset < next {
            let (deliveries, after) = bus.read(TOPIC, partition, offset, 64).unwrap();
            for delivery in deliveries {
                events.insert((partition, delivery.offset), delivery.payload);
            }
            offset = after;
        }
    }
    events
}

/// The last index of the log in `dir`, opened as the node opens it (a
/// torn tail is cut) while no node runs on it.
fn last_index(dir: &Path) -> u64 {
    let options = log::Options {
        segment_size: SEGMENT_SIZE,
        ..log::Options::default()
    };
    let disk = OsDisk::open(dir).unwrap();
    let log = Log::open(disk, Arc::new(OsClock::new()), options).unwrap();
    log.next_index() - 1
}

/// Asserts that `got` holds the events of `expected`, naming the first
/// that differs (payloads are too large to print).
fn same_events(got: &BTreeMap<(u32, u64), Bytes>, expected: &BTreeMap<(u32, u64), Bytes>) {
    let missing: Vec<_> = expected.keys().filter(|k| !got.contains_key(k)).collect();
    let extra: Vec<_> = got.keys().filter(|k| !expected.contains_key(k)).collect();
    let differ: Vec<_> = got
        .iter()
        .filter(|(k, v)| expected.get(k).is_some_and(|e| e != *v))
        .map(|(k, _)| k)
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty() && differ.is_empty(),
        "the follower lacks {missing:?}, has more {extra:?}, differs at {differ:?}"
    );
}

/// Truncates the newest segment of `dir` to a third of its frames (a
/// segment made from a spare is zeros past its frames; cutting only zeros
/// would lose nothing). Returns the file's name and new length.
fn truncate_newest_segment(dir: &Path) -> (String, u64) {
    let disk = OsDisk::open(dir).unwrap();
    let newest = disk
        .list()
        .unwrap()
        .into_iter()
        .filter(|name| name.ends_with(".seg"))
        .max()
        .expect("a segment");
    let file = disk.open(&newest).unwrap();
    let mut bytes = vec![0; file.size().unwrap() as usize];
    file.read_at(0, &mut bytes).unwrap();
    let frames = bytes
        .iter()
        .rposition(|&b| b != 0)
        .map_or(0, |last| last + 1);
    let cut = (frames / 3) as u64;
    file.set_len(cut).unwrap();
    file.sync_data().unwrap();
    (newest, cut)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_that_lost_its_log_tail_catches_up() {
    tokio::time::timeout(Duration::from_secs(120), catch_up(false))
        .await
        .expect("the test took longer than 120 s");
}

/// The same with a snapshot of the follower's state above the cut: its
/// state machine is then ahead of its log, and the events it indexes
/// there have no bodies until they come from the leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_that_lost_its_log_tail_below_its_snapshot_catches_up() {
    tokio::time::timeout(Duration::from_secs(120), catch_up(true))
        .await
        .expect("the test took longer than 120 s");
}

async fn catch_up(snapshot: bool) {
    let net = Arc::new(Net::default());
    let mut dirs = BTreeMap::new();
    let mut buses = BTreeMap::new();
    for id in IDS {
        let dir = tempfile::tempdir().unwrap();
        buses.insert(id, open(id, dir.path(), &net).await);
        dirs.insert(id, dir);
    }
    let members = IDS
        .iter()
        .map(|&id| (id, Node::new(format!("node-{id}"))))
        .collect();
    buses[&1].initialize(members).await.unwrap();
    let mut leader = leader(&buses).await;
    // A leader all agree on may still be taking office: ask again.
    for attempt in 1.. {
        match buses[&leader]
            .create_topic(TOPIC, 2, TopicConfig::default())
            .await
        {
            Ok(_) => break,
            Err(BusError::NotLeader { .. }) if attempt < 50 => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                leader = self::leader(&buses).await;
            }
            Err(error) => panic!("create the topic: {error}"),
        }
    }
    publish(&buses[&leader], "a", 60).await;

    // The follower has acknowledged everything, then stops.
    let follower = *IDS.iter().find(|&&id| id != leader).unwrap();
    let target = metrics(&buses[&leader]).last_applied;
    buses[&follower]
        .raft()
        .wait(Some(Duration::from_secs(20)))
        .metrics(|m| m.last_applied >= target, "the follower caught up")
        .await
        .unwrap();
    if snapshot {
        let raft = buses[&follower].raft();
        raft.trigger().snapshot().await.unwrap();
        raft.wait(Some(Duration::from_secs(10)))
            .metrics(|m| m.snapshot >= target, "a snapshot of everything")
            .await
            .unwrap();
    }
    net.services.lock().unwrap().remove(&follower);
    buses.remove(&follower).unwrap().close().await.unwrap();
    let before = last_index(dirs[&follower].path());

    let (segment, cut) = truncate_newest_segment(dirs[&follower].path());
    // What the follower's recovery keeps: up to the torn frame.
    let after = last_index(dirs[&follower].path());
    assert!(
        after < before,
        "cutting {segment} to {cut} bytes left the log at {after} (it was at {before})"
    );
    let bus = open(follower, dirs[&follower].path(), &net).await;
    buses.insert(follower, bus);

    // More writes, then the follower must hold everything the leader has.
    publish(&buses[&leader], "b", 20).await;
    let target = metrics(&buses[&leader]).last_applied;
    let caught_up = buses[&follower]
        .raft()
        .wait(Some(Duration::from_secs(30)))
        .metrics(|m| m.last_applied >= target, "the follower caught up")
        .await;
    assert!(
        caught_up.is_ok(),
        "the follower recovered to {after} and never caught up with the leader's {target:?}: \
         follower {:?}, leader {:?}",
        metrics(&buses[&follower]),
        metrics(&buses[&leader]),
    );
    // The leader's metrics may lag its last apply a moment: the events
    // decide, given a little time.
    let expected = read_all(&buses[&leader]);
    for _ in 0..100 {
        if read_all(&buses[&follower]) == expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    same_events(&read_all(&buses[&follower]), &expected);
    for (_, bus) in buses {
        bus.close().await.unwrap();
    }
}

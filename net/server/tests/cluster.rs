//! A three-node Raft cluster in one process: each node has its own data
//! directory (`OsDisk`), serves `RaftService` on a `TcpServer` bound to a
//! loopback port 0, and reaches its peers through a `TcpTransport`. The
//! tests replicate commands, lose the leader, and restart a follower from
//! its data directory. Every test runs under a time bound.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use tokio::net::TcpListener;

use sluice_client::tcp::{TcpConfig, TcpServer, TcpTransport};
use sluice_core::io::os::{OsClock, OsDisk, OsEnv};
use sluice_core::raft::{
    Durability, LogStore, Node, NodeId, RaftService, SNAPSHOT_CHUNK_SIZE, StateMachineStore,
    StateView, TransportNetwork,
};
use sluice_model::event::{BatchBuilder, Event, EventBatch, ProducerStamp};
use sluice_model::state::{Command, EventOutcome, Op, Response, State, TopicConfig};

type Raft = sluice_core::raft::Raft<OsEnv>;
type View = StateView<OsEnv>;

const IDS: [NodeId; 3] = [1, 2, 3];
const TOPIC: &str = "orders";
const PARTITIONS: u32 = 3;
const EVENTS_PER_BATCH: u64 = 4;
/// The leader's stamp on every command; apply reads no other clock.
const TIMESTAMP_MS: u64 = 1_700_000_000_000;
/// How often the waiting helpers look again.
const POLL: Duration = Duration::from_millis(20);

/// Runs `test` and fails if it takes longer than 60 s.
async fn bounded<T>(test: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), test)
        .await
        .expect("the test took longer than 60 s")
}

/// Short Raft timeouts, so elections take a fraction of a second.
fn raft_config() -> Arc<openraft::Config> {
    let config = openraft::Config {
        cluster_name: "sluice-test".into(),
        heartbeat_interval: 50,
        election_timeout_min: 150,
        election_timeout_max: 300,
        ..openraft::Config::default()
    };
    Arc::new(config.validate().expect("valid Raft config"))
}

fn tcp_config() -> TcpConfig {
    TcpConfig {
        call_timeout: Duration::from_secs(1),
        connect_timeout: Duration::from_millis(200),
        backoff_initial: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        ..TcpConfig::default()
    }
}

/// One running node.
struct Member {
    /// The log's next index when the node opened it: 1 or more after a
    /// restart means it found its earlier entries on disk.
    log_next_on_open: u64,
    raft: Raft,
    view: View,
    server: TcpServer,
}

impl Member {
    /// Opens (or reopens) the node's log and state in `dir` and serves it
    /// on a fresh loopback port.
    async fn start(id: NodeId, dir: &Path, transport: &TcpTransport, chunk: usize) -> Member {
        let disk = OsDisk::open(dir).expect("open data directory");
        let clock = Arc::new(OsClock::new());
        let options = sluice_core::log::Options::default();
        let store = LogStore::<OsEnv>::open(disk.clone(), clock, options, Durability::Sync)
            .expect("open log store");
        let (_, log_next_on_open) = store.reader().bounds();
        let machine = StateMachineStore::<OsEnv>::new(disk);
        let view = machine.view();
        let network =
            TransportNetwork::new(id, Arc::new(transport.clone())).with_snapshot_chunk_size(chunk);
        let raft = Raft::new(id, raft_config(), network, store, machine)
            .await
            .expect("start Raft");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let server = TcpServer::serve(listener, id, RaftService::new(raft.clone())).expect("serve");
        Member {
            log_next_on_open,
            raft,
            view,
            server,
        }
    }

    /// Stops Raft, then the server (peers see the connection close).
    async fn stop(self) {
        self.raft.shutdown().await.expect("Raft shuts down");
        self.server.shutdown().await;
    }
}

/// Three nodes, their data directories and their transports.
struct Cluster {
    root: tempfile::TempDir,
    dirs: BTreeMap<NodeId, PathBuf>,
    transports: BTreeMap<NodeId, TcpTransport>,
    members: BTreeMap<NodeId, Member>,
    /// Snapshots larger than this go in pieces.
    chunk: usize,
}

impl Cluster {
    /// Starts every node, tells each transport every address, and
    /// initialises the cluster with all three members.
    async fn start() -> Cluster {
        Cluster::start_with(SNAPSHOT_CHUNK_SIZE).await
    }

    /// [`Cluster::start`], sending snapshots larger than `chunk` bytes in
    /// pieces.
    async fn start_with(chunk: usize) -> Cluster {
        let root = tempfile::tempdir().expect("tempdir");
        let mut cluster = Cluster {
            dirs: BTreeMap::new(),
            transports: BTreeMap::new(),
            members: BTreeMap::new(),
            root,
            chunk,
        };
        for id in IDS {
            let dir = cluster.root.path().join(format!("node-{id}"));
            std::fs::create_dir(&dir).expect("create node directory");
            let transport = TcpTransport::new(id, tcp_config());
            let member = Member::start(id, &dir, &transport, chunk).await;
            cluster.dirs.insert(id, dir);
            cluster.transports.insert(id, transport);
            cluster.members.insert(id, member);
        }
        for id in IDS {
            cluster.announce(id);
        }
        let nodes: BTreeMap<NodeId, Node> = cluster
            .members
            .iter()
            .map(|(&id, member)| (id, Node::new(member.server.local_address().to_string())))
            .collect();
        cluster.members[&IDS[0]]
            .raft
            .initialize(nodes)
            .await
            .expect("initialize the cluster");
        cluster
    }

    /// Tells every transport where node `id` listens now.
    fn announce(&self, id: NodeId) {
        let address = self.members[&id].server.local_address();
        for transport in self.transports.values() {
            transport.set_address(id, address);
        }
    }

    async fn stop(&mut self, id: NodeId) {
        let member = self.members.remove(&id).expect("node is running");
        member.stop().await;
    }

    /// Restarts node `id` from its data directory, on a new port.
    async fn restart(&mut self, id: NodeId) {
        assert!(!self.members.contains_key(&id));
        let member = Member::start(id, &self.dirs[&id], &self.transports[&id], self.chunk).await;
        self.members.insert(id, member);
        self.announce(id);
    }

    /// Waits until every running node names the same running leader.
    async fn leader(&self) -> NodeId {
        loop {
            let mut named = Vec::new();
            for member in self.members.values() {
                named.push(member.raft.current_leader().await);
            }
            if let Some(Some(leader)) = named.first().copied() {
                let agreed = named.iter().all(|&n| n == Some(leader));
                if agreed && self.members.contains_key(&leader) {
                    return leader;
                }
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Proposes `op` through `leader`; returns its response. If `leader`
    /// lost its leadership meanwhile (a loaded machine misses heartbeats),
    /// proposes again through the current leader: a proposal refused with
    /// `ForwardToLeader` was never appended, and the test's publishes carry
    /// producer stamps, so a discarded one is deduplicated.
    async fn write(&self, leader: NodeId, op: Op) -> Response {
        let mut leader = leader;
        loop {
            let command = Command {
                timestamp_ms: TIMESTAMP_MS,
                op: op.clone(),
            };
            let raft = &self.members[&leader].raft;
            match raft.client_write(command).await {
                Ok(written) => return written.data,
                Err(error) if error.forward_to_leader().is_some() => {
                    tokio::time::sleep(POLL).await;
                    leader = self.leader().await;
                }
                Err(error) => panic!("write through the leader: {error}"),
            }
        }
    }

    /// Waits until every running node has applied the same state, up to at
    /// least `index`; returns it.
    async fn converged(&self, index: u64) -> State {
        loop {
            let states: Vec<State> = self
                .members
                .values()
                .map(|m| m.view.read().clone())
                .collect();
            let caught_up = states.iter().all(|s| s.last_applied_index() >= Some(index));
            if caught_up && states.windows(2).all(|pair| pair[0] == pair[1]) {
                return states.into_iter().next().expect("a running node");
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Builds a snapshot on `id` covering everything applied there, then
    /// purges the log up to it; returns the snapshot's last index.
    async fn compact(&self, id: NodeId) -> u64 {
        let raft = &self.members[&id].raft;
        let applied = raft
            .metrics()
            .borrow_watched()
            .last_applied
            .expect("applied");
        raft.trigger().snapshot().await.expect("trigger a snapshot");
        let covered = |m: &openraft::RaftMetrics<_>| m.snapshot.is_some_and(|s| s >= applied);
        raft.wait(None)
            .metrics(covered, "snapshot built")
            .await
            .expect("snapshot");
        raft.trigger()
            .purge_log(applied.index)
            .await
            .expect("trigger a purge");
        let purged = |m: &openraft::RaftMetrics<_>| m.purged.is_some_and(|p| p >= applied);
        raft.wait(None)
            .metrics(purged, "log purged")
            .await
            .expect("purge");
        applied.index
    }

    fn applied_index(&self, id: NodeId) -> u64 {
        let state = self.members[&id].view.read();
        state.last_applied_index().expect("applied something")
    }
}

/// An idempotent producer's stamps, and what the cluster acknowledged.
struct Producer {
    stamp: ProducerStamp,
    sequences: [u64; PARTITIONS as usize],
    /// (partition, offset) of every acknowledged event.
    acknowledged: Vec<(u32, u64)>,
}

impl Producer {
    /// Creates the topic and registers a producer through `leader`.
    async fn init(cluster: &Cluster, leader: NodeId) -> Producer {
        let create = Op::CreateTopic {
            name: TOPIC.into(),
            partitions: PARTITIONS,
            config: TopicConfig::default(),
        };
        assert_eq!(cluster.write(leader, create).await, Response::TopicCreated);
        let Response::ProducerInit { id, epoch } =
            cluster.write(leader, Op::InitProducer { name: None }).await
        else {
            panic!("InitProducer answers with the producer's id");
        };
        Producer {
            stamp: ProducerStamp {
                id,
                epoch,
                sequence: 0,
            },
            sequences: [0; PARTITIONS as usize],
            acknowledged: Vec::new(),
        }
    }

    /// The next batch: events spread round-robin over the partitions.
    fn batch(&mut self) -> EventBatch {
        let mut builder = BatchBuilder::new();
        for n in 0..EVENTS_PER_BATCH {
            let partition = (n % u64::from(PARTITIONS)) as u32;
            let sequence = &mut self.sequences[partition as usize];
            let event = Event {
                topic: TOPIC.into(),
                payload: format!("{partition}/{sequence}").into(),
                producer: ProducerStamp {
                    sequence: *sequence,
                    ..self.stamp
                },
                partition,
                timestamp_ms: TIMESTAMP_MS,
                ..Event::default()
            };
            builder.push(&event).expect("a valid event");
            *sequence += 1;
        }
        builder.finish()
    }

    /// Publishes one batch through `leader` and records the receipts.
    async fn publish(&mut self, cluster: &Cluster, leader: NodeId) {
        let batch = self.batch();
        let Response::Published(outcomes) = cluster.write(leader, Op::Publish(batch)).await else {
            panic!("Publish answers with one outcome per event");
        };
        assert_eq!(outcomes.len() as u64, EVENTS_PER_BATCH);
        for outcome in outcomes {
            let EventOutcome::Appended { partition, offset } = outcome else {
                panic!("every fresh event is appended, got {outcome:?}");
            };
            self.acknowledged.push((partition, offset));
        }
    }

    /// Asserts that `state` holds every acknowledged event and knows every
    /// sequence this producer used.
    fn check(&self, state: &State) {
        for &(partition, offset) in &self.acknowledged {
            assert!(
                state.locate(TOPIC, partition, offset).is_some(),
                "acknowledged event at {TOPIC}/{partition} offset {offset} is missing"
            );
        }
        for (partition, &next) in self.sequences.iter().enumerate() {
            let partition = partition as u32;
            let known = state.sequence_next(self.stamp.id, TOPIC, partition);
            assert_eq!(known, Some(next), "sequence of partition {partition}");
            let (_, offset_next) = state.partition_range(TOPIC, partition).expect("partition");
            assert_eq!(offset_next, next, "offsets of partition {partition}");
        }
    }
}

/// Writes through the leader reach all three state machines; after the
/// leader stops, the other two elect a new one that holds every
/// acknowledged write and accepts new ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_replicate_and_survive_leader_loss() {
    bounded(async {
        let mut cluster = Cluster::start().await;
        let leader = cluster.leader().await;
        let mut producer = Producer::init(&cluster, leader).await;
        for _ in 0..5 {
            producer.publish(&cluster, leader).await;
        }
        let state = cluster.converged(cluster.applied_index(leader)).await;
        producer.check(&state);

        cluster.stop(leader).await;
        let successor = cluster.leader().await;
        assert_ne!(successor, leader);
        // The new leader commits a blank entry of its term, which applies
        // everything the old leader committed.
        let state = cluster.converged(cluster.applied_index(successor)).await;
        producer.check(&state);

        producer.publish(&cluster, successor).await;
        let state = cluster.converged(cluster.applied_index(successor)).await;
        producer.check(&state);
        assert_eq!(producer.acknowledged.len() as u64, 6 * EVENTS_PER_BATCH);
    })
    .await;
}

/// A follower stopped while the others keep writing comes back from its
/// data directory and catches up to the same state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_follower_catches_up() {
    bounded(async {
        let mut cluster = Cluster::start().await;
        let leader = cluster.leader().await;
        let mut producer = Producer::init(&cluster, leader).await;
        producer.publish(&cluster, leader).await;
        let applied_before_stop = cluster.applied_index(leader);
        cluster.converged(applied_before_stop).await;

        let follower = *IDS.iter().find(|&&id| id != leader).expect("a follower");
        cluster.stop(follower).await;
        for _ in 0..3 {
            producer.publish(&cluster, leader).await;
        }

        cluster.restart(follower).await;
        let reopened = cluster.members[&follower].log_next_on_open;
        assert!(
            reopened > applied_before_stop,
            "the follower reopened its log: next index {reopened}, applied {applied_before_stop}"
        );
        assert_eq!(cluster.leader().await, leader);
        let state = cluster.converged(cluster.applied_index(leader)).await;
        producer.check(&state);
        assert_eq!(producer.acknowledged.len() as u64, 4 * EVENTS_PER_BATCH);
    })
    .await;
}

/// A follower that is behind the leader's purged log gets the leader's
/// snapshot (the full-snapshot message) and then the entries after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_follower_installs_snapshot() {
    lagging_follower_installs_snapshot_sent_in(SNAPSHOT_CHUNK_SIZE).await;
}

/// The same with the snapshot cut into pieces of 256 bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_follower_installs_snapshot_sent_in_pieces() {
    lagging_follower_installs_snapshot_sent_in(256).await;
}

async fn lagging_follower_installs_snapshot_sent_in(chunk: usize) {
    bounded(async {
        let mut cluster = Cluster::start_with(chunk).await;
        let leader = cluster.leader().await;
        let mut producer = Producer::init(&cluster, leader).await;
        cluster.converged(cluster.applied_index(leader)).await;

        let follower = *IDS.iter().find(|&&id| id != leader).expect("a follower");
        cluster.stop(follower).await;
        for _ in 0..3 {
            producer.publish(&cluster, leader).await;
        }
        if chunk < SNAPSHOT_CHUNK_SIZE {
            // Grow the state (the snapshot holds state, not events) well
            // past a few pieces.
            for t in 0..64 {
                let op = Op::CreateTopic {
                    name: format!("padding-topic-number-{t:04}"),
                    partitions: 4,
                    config: TopicConfig::default(),
                };
                cluster.write(leader, op).await;
            }
        }
        let snapshot_index = cluster.compact(leader).await;
        producer.publish(&cluster, leader).await;

        cluster.restart(follower).await;
        let state = cluster.converged(cluster.applied_index(leader)).await;
        producer.check(&state);
        let metrics = cluster.members[&follower]
            .raft
            .metrics()
            .borrow_watched()
            .clone();
        let installed = metrics.snapshot.expect("the follower installed a snapshot");
        assert!(installed.index >= snapshot_index);
        let snapshot_size = std::fs::metadata(cluster.dirs[&leader].join("state.snapshot"))
            .expect("the leader's snapshot file")
            .len();
        if chunk < SNAPSHOT_CHUNK_SIZE {
            assert!(
                snapshot_size > 4 * chunk as u64,
                "a {snapshot_size}-byte snapshot does not exercise pieces of {chunk}"
            );
        }
    })
    .await;
}

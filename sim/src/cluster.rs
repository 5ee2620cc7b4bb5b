//! [`SimCluster`]: Sluice Raft nodes, each on its own madsim node with its
//! own [`SimDisk`], [`SimClock`] and [`SimTransport`], serving
//! `RaftService` on a [`SimServer`]; plus what a scenario needs to drive
//! and judge them (leader discovery, writes, partitions, convergence, the
//! final read of a topic).
//!
//! The supervisor (the scenario's own task, madsim's main node) holds each
//! node's `Raft` handle and calls it directly: client requests do not cross
//! the simulated network, Raft's own messages do, so partitions cut
//! replication and elections but not the client's view of a node.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use madsim::net::NetSim;
use madsim::runtime::Handle;
use madsim::task::NodeId as MadsimNodeId;
use openraft::error::{ClientWriteError, RaftError};
use sluice_core::raft::{
    Durability, LogStore, LogStoreReader, Node, RaftService, StateMachineStore, StateView,
    TransportNetwork, codec_decode_command,
};
use sluice_jepsen::Event;
use sluice_model::state::{Command, Response, State};
use sluice_model::transport::NodeId;

use crate::{
    LinkFaults, SimClock, SimDisk, SimDisks, SimEnv, SimServer, SimTransport, SimTransportConfig,
};

/// A Sluice Raft handle in the simulation.
pub type SimRaft = sluice_core::raft::Raft<SimEnv>;

/// How often waiting helpers look again (virtual time).
const POLL: Duration = Duration::from_millis(20);

/// Raft timeouts for the simulation: a heartbeat several times the
/// network's worst latency (10 ms), elections a few heartbeats. See
/// [`raft_config_with`].
pub fn raft_config() -> Arc<openraft::Config> {
    raft_config_with(50)
}

/// Raft timeouts around a heartbeat of `heartbeat_ms`: elections between
/// three and six heartbeats.
///
/// The heartbeat must exceed the round trip between nodes by a third:
/// openraft bounds a heartbeat by three quarters of the interval, so with
/// slower links no heartbeat is ever acknowledged, and once writes pause
/// the leader's lease lapses and every write is refused with
/// `LeaseExpired`, for good (no append goes out to renew it). Regression:
/// scenario `dc-failover`, seed 14, with a 50 ms heartbeat over 10-40 ms
/// WAN links.
///
/// Leader restore is off. openraft 0.10 turns it on by default: a leader
/// that restarts takes up leadership again in its old term, without an
/// election. Sluice's state machine lives in memory and the committed
/// index is not persisted, the case openraft's docs warn about: the
/// restored leader's state machine is stale (and its log may even lack
/// entries the followers committed while its own copy was not yet synced),
/// yet it serves read-index reads at once. Regression: scenario `crash`,
/// seed 45 (a worker read a stale committed offset through such a leader
/// and processed inputs twice).
pub fn raft_config_with(heartbeat_ms: u64) -> Arc<openraft::Config> {
    let config = openraft::Config {
        cluster_name: "sluice-sim".into(),
        heartbeat_interval: heartbeat_ms,
        election_timeout_min: 3 * heartbeat_ms,
        election_timeout_max: 6 * heartbeat_ms,
        enable_leader_restore: Some(false),
        // With the planted bug `AckBeforeSync` a follower acknowledges
        // entries it has not synced, and a crash takes them back: openraft
        // then panics on the follower's log reversion before any client
        // sees the loss. Allowing the reversion lets the run go on, so the
        // checker judges what the bug does to acknowledged writes. Without
        // the bug synced entries never revert, so this changes nothing.
        allow_log_reversion: Some(sluice_model::testing::planted::is_planted(
            sluice_model::testing::planted::Bug::AckBeforeSync,
        )),
        ..openraft::Config::default()
    };
    Arc::new(config.validate().expect("valid Raft config"))
}

/// What a running node hands the supervisor.
#[derive(Clone)]
struct Member {
    raft: SimRaft,
    view: StateView<SimEnv>,
    reader: LogStoreReader<SimDisk>,
}

/// One node: its madsim node and, while it runs, its handles.
struct Slot {
    madsim_id: MadsimNodeId,
    clock: Arc<SimClock>,
    member: Arc<Mutex<Option<Member>>>,
    /// Why the node's last start failed (its disk refused to open), if it
    /// did.
    refused: Arc<Mutex<Option<String>>>,
}

/// How a proposal through one node ended, as its client sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Proposal {
    /// Committed and applied; the state machine's answer.
    Done(Response),
    /// Definitely not applied: the node is not the leader.
    Refused,
    /// Unknown: timed out, the node is down, or it failed mid-way.
    Unknown,
}

/// A cluster of Sluice nodes in one simulation. See the module docs.
pub struct SimCluster {
    ids: Vec<NodeId>,
    disks: SimDisks,
    slots: BTreeMap<NodeId, Slot>,
    faults: Arc<LinkFaults>,
}

impl std::fmt::Debug for SimCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimCluster")
            .field("ids", &self.ids)
            .finish_non_exhaustive()
    }
}

impl SimCluster {
    /// Creates one madsim node per id and starts Sluice on each (log,
    /// state machine, Raft, server) with [`raft_config`]; returns once
    /// every node runs. Does not initialise the cluster.
    pub async fn start(ids: &[NodeId]) -> SimCluster {
        SimCluster::start_with(ids, raft_config()).await
    }

    /// [`SimCluster::start`] with Raft configuration `config`.
    pub async fn start_with(ids: &[NodeId], config: Arc<openraft::Config>) -> SimCluster {
        let handle = Handle::current();
        let disks = SimDisks::new();
        let faults = Arc::new(LinkFaults::default());
        let mut slots = BTreeMap::new();
        for &id in ids {
            let disk = disks.disk(id);
            let member: Arc<Mutex<Option<Member>>> = Arc::new(Mutex::new(None));
            let refused: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
            let init_refused = Arc::clone(&refused);
            let clock = Arc::new(SimClock::new());
            let init_member = Arc::clone(&member);
            let init_clock = Arc::clone(&clock);
            let transport = SimTransportConfig {
                faults: Arc::clone(&faults),
                ..SimTransportConfig::default()
            };
            let config = Arc::clone(&config);
            let node = handle
                .create_node()
                .name(format!("sluice-{id}"))
                .ip(crate::node_address(id).ip())
                .init(move || {
                    run_node(
                        id,
                        disk.clone(),
                        init_clock.clone(),
                        init_member.clone(),
                        init_refused.clone(),
                        transport.clone(),
                        config.clone(),
                    )
                })
                .build();
            disks.set_owner(id, node.id());
            let slot = Slot {
                madsim_id: node.id(),
                clock,
                member,
                refused,
            };
            slots.insert(id, slot);
        }
        let cluster = SimCluster {
            ids: ids.to_vec(),
            disks,
            slots,
            faults,
        };
        for &id in ids {
            if let Err(refusal) = cluster.wait_running(id).await {
                panic!("node {id} did not start: {refusal}");
            }
        }
        cluster
    }

    /// Initialises the cluster with every node as a voter, through the
    /// first node.
    pub async fn initialize(&self) {
        let nodes: BTreeMap<NodeId, Node> = self
            .ids
            .iter()
            .map(|&id| (id, Node::new(crate::node_address(id).to_string())))
            .collect();
        self.raft(self.ids[0])
            .expect("the first node runs")
            .initialize(nodes)
            .await
            .expect("initialize the cluster");
    }

    /// The ids of every node.
    pub fn ids(&self) -> &[NodeId] {
        &self.ids
    }

    /// The disks, for fault injection, kills and restarts.
    pub fn disks(&self) -> &SimDisks {
        &self.disks
    }

    /// Node `id`'s clock.
    pub fn clock(&self, id: NodeId) -> &SimClock {
        &self.slots[&id].clock
    }

    /// Node `id`'s madsim node, for `NetSim` partitions.
    pub fn madsim_id(&self, id: NodeId) -> MadsimNodeId {
        self.slots[&id].madsim_id
    }

    fn member(&self, id: NodeId) -> Option<Member> {
        let slot = &self.slots[&id];
        slot.member
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Node `id`'s Raft handle, if it runs.
    pub fn raft(&self, id: NodeId) -> Option<SimRaft> {
        self.member(id).map(|member| member.raft)
    }

    /// The index of node `id`'s last snapshot (built or installed), if it
    /// runs and has one.
    pub fn snapshot_index(&self, id: NodeId) -> Option<u64> {
        use openraft::async_runtime::WatchReceiver as _;
        let raft = self.raft(id)?;
        let metrics = raft.metrics();
        let snapshot = metrics.borrow_watched().snapshot;
        snapshot.map(|log_id| log_id.index)
    }

    /// The index node `id`'s log is purged up to (inclusive), if it runs
    /// and has purged anything.
    pub fn purged_index(&self, id: NodeId) -> Option<u64> {
        use openraft::async_runtime::WatchReceiver as _;
        let raft = self.raft(id)?;
        let metrics = raft.metrics();
        let purged = metrics.borrow_watched().purged;
        purged.map(|log_id| log_id.index)
    }

    /// Whether node `id` runs (it may still be cut off).
    pub fn is_running(&self, id: NodeId) -> bool {
        self.member(id).is_some()
    }

    /// The links' extra delay and duplication.
    pub fn faults(&self) -> &LinkFaults {
        &self.faults
    }

    /// Waits, at most `limit`, until node `id` has confirmed with a quorum
    /// that it leads and has applied everything committed before this call
    /// (a read index), so that what it then reads from its applied state
    /// is not stale. False if it could not.
    pub async fn read_barrier(&self, id: NodeId, limit: Duration) -> bool {
        let Some(raft) = self.raft(id) else {
            return false;
        };
        let barrier = raft.ensure_linearizable(openraft::ReadPolicy::ReadIndex);
        matches!(madsim::time::timeout(limit, barrier).await, Ok(Ok(_)))
    }

    /// Proposes `command` through node `id` (`sluice_core::raft::propose`), as
    /// a client of that node would, waiting at most `limit`.
    pub async fn propose(&self, id: NodeId, command: Command, limit: Duration) -> Proposal {
        let Some(member) = self.member(id) else {
            return Proposal::Unknown;
        };
        let proposal = sluice_core::raft::propose(&member.raft, &member.view, command);
        match madsim::time::timeout(limit, proposal).await {
            Ok(Ok(response)) => Proposal::Done(response),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => Proposal::Refused,
            Ok(Err(_)) | Err(_) => Proposal::Unknown,
        }
    }

    /// Waits until node `id` runs, or its start failed.
    async fn wait_running(&self, id: NodeId) -> Result<(), String> {
        loop {
            if self.member(id).is_some() {
                return Ok(());
            }
            let refused = self.slots[&id]
                .refused
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            if let Some(refusal) = refused {
                return Err(refusal);
            }
            madsim::time::sleep(POLL).await;
        }
    }

    /// Cuts node `id`'s power: its tasks die and its disk crashes (see
    /// [`SimDisks::kill`]). A node that is down stays down.
    pub fn kill(&self, id: NodeId) {
        if !self.is_running(id) {
            return;
        }
        *self.slots[&id]
            .member
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = None;
        self.disks.kill(id);
    }

    /// Starts node `id` again on its crashed disk; returns once it runs,
    /// or with the reason its disk refused to open (it then stays down).
    /// A running node is left alone.
    pub async fn restart(&self, id: NodeId) -> Result<(), String> {
        if self.is_running(id) {
            return Ok(());
        }
        *self.slots[&id]
            .refused
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = None;
        self.disks.restart(id);
        self.wait_running(id).await
    }

    /// Cuts node `id` off the network in both directions.
    pub fn isolate(&self, id: NodeId) {
        NetSim::current().clog_node(self.madsim_id(id));
    }

    /// Reconnects node `id` (links cut one by one stay cut).
    pub fn heal(&self, id: NodeId) {
        NetSim::current().unclog_node(self.madsim_id(id));
    }

    /// Cuts the link from `source` to `target` only: messages the other
    /// way still arrive.
    pub fn cut_one_way(&self, source: NodeId, target: NodeId) {
        NetSim::current().clog_link(self.madsim_id(source), self.madsim_id(target));
    }

    /// Splits the nodes into `sides`: every link between two sides is cut
    /// both ways; links within a side stay as they are.
    pub fn partition(&self, sides: &[Vec<NodeId>]) {
        for (n, side) in sides.iter().enumerate() {
            for other in &sides[n + 1..] {
                for &a in side {
                    for &b in other {
                        self.cut_one_way(a, b);
                        self.cut_one_way(b, a);
                    }
                }
            }
        }
    }

    /// Undoes every cut: nodes and links.
    pub fn heal_all(&self) {
        let net = NetSim::current();
        for &a in &self.ids {
            net.unclog_node(self.madsim_id(a));
            for &b in &self.ids {
                if a != b {
                    net.unclog_link(self.madsim_id(a), self.madsim_id(b));
                }
            }
        }
    }

    /// The node that a majority of running nodes, itself included, name
    /// as leader, if any.
    pub async fn leader(&self) -> Option<NodeId> {
        let mut votes: BTreeMap<NodeId, usize> = BTreeMap::new();
        for &id in &self.ids {
            if let Some(raft) = self.raft(id)
                && let Some(leader) = raft.current_leader().await
            {
                *votes.entry(leader).or_default() += 1;
            }
        }
        let majority = self.ids.len() / 2 + 1;
        let (&leader, _) = votes.iter().find(|&(_, &count)| count >= majority)?;
        let named_by_itself = match self.raft(leader) {
            Some(raft) => raft.current_leader().await == Some(leader),
            None => false,
        };
        named_by_itself.then_some(leader)
    }

    /// Waits until a majority agrees on a leader, at most `limit`.
    pub async fn wait_leader(&self, limit: Duration) -> Option<NodeId> {
        let deadline = std::time::Instant::now() + limit;
        while std::time::Instant::now() < deadline {
            if let Some(leader) = self.leader().await {
                return Some(leader);
            }
            madsim::time::sleep(POLL).await;
        }
        None
    }

    /// Waits until every running node has applied at least `index` and all
    /// hold the same state, at most `limit`; returns that state.
    pub async fn converged(&self, index: u64, limit: Duration) -> Result<State, String> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            let states: Vec<State> = self
                .ids
                .iter()
                .filter_map(|&id| self.member(id))
                .map(|member| member.view.read().clone())
                .collect();
            let caught_up = states.iter().all(|s| s.last_applied_index() >= Some(index));
            if caught_up && states.windows(2).all(|pair| pair[0] == pair[1]) {
                return states.into_iter().next().ok_or("no node runs".into());
            }
            if std::time::Instant::now() >= deadline {
                let applied: Vec<_> = states.iter().map(State::last_applied_index).collect();
                return Err(format!(
                    "nodes did not converge on index {index} within {limit:?}: applied {applied:?}"
                ));
            }
            madsim::time::sleep(POLL).await;
        }
    }

    /// The highest index applied on any running node.
    pub fn applied_max(&self) -> u64 {
        self.ids
            .iter()
            .filter_map(|&id| self.member(id))
            .filter_map(|member| member.view.read().last_applied_index())
            .max()
            .unwrap_or(0)
    }

    /// Runs `f` on node `id`'s applied state, if the node runs.
    pub fn with_state<T>(&self, id: NodeId, f: impl FnOnce(&State) -> T) -> Option<T> {
        let member = self.member(id)?;
        let state = member.view.read();
        Some(f(&state))
    }

    /// Every retained event of `topic` as node `id` holds it: offsets from
    /// its state's partition index, values (payloads as UTF-8) from its
    /// log. An event the index names but the log cannot produce is an
    /// error.
    pub fn final_read(&self, id: NodeId, topic: &str) -> Result<Vec<Event>, String> {
        let member = self.member(id).ok_or(format!("node {id} is not running"))?;
        let state = member.view.read().clone();
        let partitions = state.topic(topic).map_or(0, |info| info.partitions);
        let mut events = Vec::new();
        for partition in 0..partitions {
            let Some((first, next)) = state.partition_range(topic, partition) else {
                continue;
            };
            events.extend(read_events(
                &member,
                &state,
                id,
                topic,
                partition,
                first..next,
            )?);
        }
        Ok(events)
    }

    /// The events of `topic`/`partition` at offsets `from..to` as node
    /// `id` holds them (see [`SimCluster::final_read`]).
    pub fn read_range(
        &self,
        id: NodeId,
        topic: &str,
        partition: u32,
        from: u64,
        to: u64,
    ) -> Result<Vec<Event>, String> {
        let member = self.member(id).ok_or(format!("node {id} is not running"))?;
        let state = member.view.read().clone();
        read_events(&member, &state, id, topic, partition, from..to)
    }
}

/// Reads `offsets` of `topic`/`partition` through `member`'s log, located
/// by `state`.
fn read_events(
    member: &Member,
    state: &State,
    id: NodeId,
    topic: &str,
    partition: u32,
    offsets: std::ops::Range<u64>,
) -> Result<Vec<Event>, String> {
    let mut events = Vec::new();
    for offset in offsets {
        let location = state.locate(topic, partition, offset).ok_or(format!(
            "node {id}: {topic}/{partition}@{offset} not indexed"
        ))?;
        let mut records = Vec::new();
        member
            .reader
            .read_records(location.log_index, location.log_index + 1, &mut records)
            .map_err(|e| format!("node {id}: read log {}: {e}", location.log_index))?;
        let record = records.first().ok_or(format!(
            "node {id}: log entry {} missing",
            location.log_index
        ))?;
        let command = codec_decode_command(&record.payload)
            .map_err(|e| format!("node {id}: decode {}: {e}", location.log_index))?;
        let batch = command.batch().ok_or(format!(
            "node {id}: entry {} has no events",
            location.log_index
        ))?;
        let view = location.select(topic, partition, batch).ok_or(format!(
            "node {id}: {topic}/{partition}@{offset} not in its batch"
        ))?;
        let value = String::from_utf8_lossy(&view.payload()).into_owned();
        events.push(Event::new(partition, offset, value));
    }
    Ok(events)
}

/// A node's init task: opens its log and state on its disk, starts Raft
/// and its server, and publishes its handles; runs until killed.
async fn run_node(
    id: NodeId,
    disk: SimDisk,
    clock: Arc<SimClock>,
    member: Arc<Mutex<Option<Member>>>,
    refused: Arc<Mutex<Option<String>>>,
    transport: SimTransportConfig,
    config: Arc<openraft::Config>,
) {
    // Small segments (a scenario writes tens of kilobytes per node), so
    // that rolls, spare segments (`log/spare.rs`) and sealing happen under
    // every fault.
    let options = sluice_core::log::Options {
        segment_size: 8 * 1024,
        ..sluice_core::log::Options::default()
    };
    let opened = LogStore::<SimEnv>::open(
        disk.clone(),
        clock as Arc<dyn sluice_core::io::Clock>,
        options,
        Durability::Sync,
    );
    // A disk that refuses to open (damage a crash cannot explain) keeps
    // the node down; the scenario decides whether that is allowed.
    let store = match opened {
        Ok(store) => store,
        Err(error) => {
            *refused.lock().unwrap_or_else(|e| e.into_inner()) = Some(error.to_string());
            return;
        }
    };
    let reader = store.reader();
    let mut machine = StateMachineStore::<SimEnv>::new(disk);
    // As the bus does: snapshots carry the hash chain's head, and a node
    // installing one anchors its chain there.
    machine.link_chain(reader.clone());
    let view = machine.view();
    let transport = SimTransport::new(id, transport);
    let network = TransportNetwork::new(id, Arc::new(transport));
    let raft = match SimRaft::new(id, config, network, store, machine).await {
        Ok(raft) => raft,
        Err(error) => {
            *refused.lock().unwrap_or_else(|e| e.into_inner()) = Some(error.to_string());
            return;
        }
    };
    let _server = SimServer::serve(id, RaftService::new(raft.clone()))
        .await
        .expect("bind the node's address");
    *member.lock().unwrap_or_else(|e| e.into_inner()) = Some(Member { raft, view, reader });
    std::future::pending::<()>().await;
}

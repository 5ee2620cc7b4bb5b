//! The embedded bus: a one-member Raft cluster in the process, with
//! idempotent producers, consumer groups and transactions.
//!
//! ```text
//! Producer::send ─► batcher ─► Raft entry ─► LogStore (write, group commit)
//!                                  │
//!                                  ▼ commit
//!                     StateMachineStore::apply ─► receipts, consumers woken
//! Consumer::poll ◄── partition index (state) + event bodies (log, zero-copy)
//! ```
//!
//! Everything is generic over the async runtime and the disk, with
//! production defaults, so the simulator runs this same code on madsim.

mod audit;
mod batcher;
mod consumer;
mod error;
mod inflight;
mod metrics;
mod producer;
mod retention;

use crate::io::Env;
use crate::io::os::OsEnv;
use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use openraft::alias::MpscSenderOf;
use openraft::network::{NetSnapshot, RaftNetworkFactory};
use openraft::type_config::TypeConfigExt;

use crate::io::os::{OsClock, OsDisk};
use crate::io::{Clock, wall_unix_ms};
use crate::raft::{
    Durability, LogStore, LogStoreReader, Node, NodeId, Raft, SingleNodeNetwork, StateMachineStore,
    StateView, TypeConfig,
};
use sluice_model::state::{AdminAction, Command, Op, Response, TopicConfig};

pub use audit::{
    Checkpoint, CheckpointPolicy, Erasure, NoSignatureCheck, SignatureCheck, SignatureRefused,
    Signer,
};
pub use consumer::{Consumer, Delivery, Transaction};
pub use error::BusError;
pub use metrics::{BusCollector, encode_gauge};
pub use producer::{Message, PendingReceipt, Producer, Receipt};

/// How a bus is opened.
#[derive(Debug, Clone)]
pub struct BusConfig {
    /// This node's id in its Raft group.
    pub node_id: u64,
    /// When a publish is acknowledged: after fsync (default) or once in
    /// the page cache.
    pub durability: Durability,
    /// Segment size of the log.
    pub segment_size: u64,
    /// Publishes a producer may have in flight before `send` waits.
    pub inflight_per_producer_max: usize,
    /// Events the batcher puts into one Raft entry at most.
    pub batch_events_max: usize,
    /// How long opening may take (election, replay) before it fails.
    pub open_timeout: Duration,
    /// How often the topics' retention is applied; `None`: only when
    /// `Bus::enforce_retention` is called.
    pub retention_interval: Option<Duration>,
    /// Whether retention may drop events a consumer group has not
    /// committed yet.
    pub unconsumed: Unconsumed,
    /// Whether log frames carry the SHA-256 hash chain (default: yes).
    pub chain: crate::log::ChainMode,
    /// Whether the log's next segment is written out with zeros in the
    /// background, so that appends overwrite instead of growing the file
    /// and each sync skips a journal commit (`log/spare.rs`; default: yes).
    pub prewrite: crate::log::Prewrite,
    /// Signed checkpoints of the chain head, written by policy while the
    /// bus is open (`Bus::start_checkpoints`); `None`: only when
    /// `Bus::checkpoint` is called.
    pub checkpoints: Option<(Arc<dyn Signer>, CheckpointPolicy)>,
    /// Verifies producer signatures and erasure requests; the default,
    /// [`NoSignatureCheck`], refuses every signed event and erasure.
    pub signatures: Arc<dyn SignatureCheck>,
    /// How often the leader sends heartbeats. openraft gives a heartbeat
    /// three quarters of this to come back, so across slow links it must
    /// exceed the round trip by a third, or the leader's lease lapses and
    /// writes are refused (`LeaseExpired`) for as long as that lasts (found
    /// by the simulator's `dc-failover` scenario). Elections time out
    /// after 3 to 6 intervals.
    pub heartbeat_interval: Duration,
}

/// What retention does with events a consumer group still needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Unconsumed {
    /// Keep them: retention waits for every group's committed offsets.
    #[default]
    Keep,
    /// Drop them once the topics' policies allow (Kafka's behaviour).
    Drop,
}

impl Default for BusConfig {
    fn default() -> Self {
        BusConfig {
            node_id: 1,
            durability: Durability::Sync,
            segment_size: sluice_model::constants::SEGMENT_SIZE_DEFAULT,
            inflight_per_producer_max: 64,
            batch_events_max: 4096,
            open_timeout: Duration::from_secs(30),
            retention_interval: Some(Duration::from_secs(60)),
            unconsumed: Unconsumed::Keep,
            chain: crate::log::ChainMode::Sha256,
            prewrite: crate::log::Prewrite::Spare,
            checkpoints: None,
            signatures: Arc::new(NoSignatureCheck),
            heartbeat_interval: Duration::from_millis(50),
        }
    }
}

/// A topic as the bus describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicDescription {
    /// Its name.
    pub name: String,
    /// Its configuration.
    pub config: TopicConfig,
    /// First and next offset of each partition.
    pub partitions: Vec<(u64, u64)>,
}

pub(crate) struct Inner<E: Env> {
    pub(crate) raft: Raft<E>,
    pub(crate) reader: LogStoreReader<E::Disk>,
    pub(crate) view: StateView<E>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) batcher: MpscSenderOf<TypeConfig<E>, batcher::Request<E>>,
    /// Counts events relayed for remote producers ([`Bus::send_stamped`]);
    /// their in-flight bound is the connection's, not this gauge's.
    pub(crate) relay: Arc<producer::Gauge<E>>,
    pub(crate) config: BusConfig,
}

/// The embedded event bus; cheap to clone (all clones share one node).
pub struct Bus<E: Env = OsEnv> {
    inner: Arc<Inner<E>>,
}

impl<E: Env> Clone for Bus<E> {
    fn clone(&self) -> Self {
        Bus {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<E: Env> fmt::Debug for Bus<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bus")
            .field("node_id", &self.inner.config.node_id)
            .finish_non_exhaustive()
    }
}

impl Bus {
    /// Opens (or creates) a durable bus in `dir` on real files and tokio.
    /// Must be called inside a tokio runtime, of either flavour: the bus's
    /// tasks run on the runtime that opens it, and its `fdatasync` on that
    /// runtime's blocking pool. On a machine with few cores a
    /// current-thread runtime shared with the producers answers sooner
    /// (a publish's hand-offs are task switches, not thread wake-ups);
    /// a multi-thread runtime carries more pipelined load (`bus_report`
    /// in `benches/` measures both).
    pub async fn open(dir: impl AsRef<Path>) -> Result<Bus, BusError> {
        Bus::open_with_config(dir, BusConfig::default()).await
    }

    /// [`Bus::open`] with a configuration.
    pub async fn open_with_config(
        dir: impl AsRef<Path>,
        config: BusConfig,
    ) -> Result<Bus, BusError> {
        let disk = OsDisk::open(dir.as_ref()).map_err(|source| crate::log::Error::Io {
            op: "open data directory",
            file: dir.as_ref().display().to_string(),
            source,
        })?;
        Bus::open_on(disk, Arc::new(OsClock::new()), config).await
    }
}

impl<E: Env> Bus<E> {
    /// Opens a bus on any disk, clock and runtime: a one-member Raft
    /// cluster, initialised on first use, replayed on later opens.
    pub async fn open_on(
        disk: E::Disk,
        clock: Arc<E::Clock>,
        config: BusConfig,
    ) -> Result<Self, BusError> {
        let bus = Bus::open_inner(disk, clock, config, SingleNodeNetwork::default()).await?;
        start(&bus.inner.raft, &bus.inner.reader, &bus.inner.config).await?;
        Ok(bus)
    }

    /// Opens this node of a replicated cluster: Raft reaches the other
    /// members through `network`. Unlike [`Bus::open_on`] it neither
    /// initialises the cluster ([`Bus::initialize`] does, once, on one
    /// node) nor waits for a leader: writes on a node that is not the
    /// leader fail with [`BusError::NotLeader`], naming the leader when
    /// known.
    pub async fn open_member<N>(
        disk: E::Disk,
        clock: Arc<E::Clock>,
        config: BusConfig,
        network: N,
    ) -> Result<Self, BusError>
    where
        N: RaftNetworkFactory<TypeConfig<E>>,
        N::Network: NetSnapshot<TypeConfig<E>, SnapshotData = crate::raft::SnapshotData>,
    {
        Bus::open_inner(disk, clock, config, network).await
    }

    async fn open_inner<N>(
        disk: E::Disk,
        clock: Arc<dyn Clock>,
        config: BusConfig,
        network: N,
    ) -> Result<Self, BusError>
    where
        N: RaftNetworkFactory<TypeConfig<E>>,
        N::Network: NetSnapshot<TypeConfig<E>, SnapshotData = crate::raft::SnapshotData>,
    {
        if config.inflight_per_producer_max == 0 || config.batch_events_max == 0 {
            return Err(BusError::Invalid(
                "in-flight and batch bounds must be positive".into(),
            ));
        }
        let log_options = crate::log::Options {
            segment_size: config.segment_size,
            chain: config.chain,
            prewrite: config.prewrite,
            ..crate::log::Options::default()
        };
        let store =
            LogStore::<E>::open(disk.clone(), clock.clone(), log_options, config.durability)?;
        let reader = store.reader();
        let mut machine = StateMachineStore::<E>::new(disk);
        machine.link_chain(reader.clone());
        let view = machine.view();
        let raft_config = raft_config(config.heartbeat_interval);
        let raft_config = Arc::new(raft_config.validate().map_err(BusError::raft)?);
        let raft = openraft::Raft::new(config.node_id, raft_config, network, store, machine)
            .await
            .map_err(BusError::raft)?;
        let (batcher, requests) = TypeConfig::<E>::mpsc(sluice_model::constants::BATCHER_QUEUE_MAX);
        // Detached: the batcher ends when the last sender (the bus) drops.
        drop(TypeConfig::<E>::spawn(batcher::run::<E>(
            raft.clone(),
            view.clone(),
            clock.clone(),
            requests,
            batcher::Settings {
                batch_events_max: config.batch_events_max,
                chain: config.chain,
                durability: config.durability,
            },
        )));
        let (relay_released, _) = TypeConfig::<E>::watch_channel(0u64);
        let inner = Inner {
            raft,
            reader,
            view,
            clock,
            batcher,
            relay: Arc::new(producer::Gauge::new(relay_released)),
            config,
        };
        let inner = Arc::new(inner);
        if let Some(interval) = inner.config.retention_interval {
            // Detached: ends once every clone of the bus is dropped.
            drop(TypeConfig::<E>::spawn(retention::run(
                Arc::downgrade(&inner),
                interval,
            )));
        }
        let bus = Bus { inner };
        if let Some((signer, policy)) = bus.inner.config.checkpoints.clone() {
            bus.start_checkpoints(signer, policy);
        }
        Ok(bus)
    }

    /// Initialises a new cluster with `members` (id → address) as its
    /// voters. Call it once, on one member opened with
    /// [`Bus::open_member`]; the others learn the membership from it.
    /// Initialising a cluster that already has a membership fails.
    pub async fn initialize(&self, members: BTreeMap<NodeId, Node>) -> Result<(), BusError> {
        self.inner
            .raft
            .initialize(members)
            .await
            .map_err(BusError::raft)
    }

    /// The clock the bus reads time from.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.inner.clock
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.inner.config.node_id
    }

    /// Creates a topic with `partitions` partitions; creating it again with
    /// the same configuration is a no-op.
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: u32,
        config: TopicConfig,
    ) -> Result<(), BusError> {
        let op = Op::CreateTopic {
            name: name.to_owned(),
            partitions,
            config,
        };
        match self.write(op).await? {
            Response::Error(error) => Err(error.into()),
            _ => Ok(()),
        }
    }

    /// Changes a topic's retention: each `Some` replaces that limit
    /// (`Some(None)` removes it). Returns the topic's configuration after
    /// the change, which the leader's next retention round applies.
    pub async fn alter_topic(
        &self,
        name: &str,
        retention_ms: Option<Option<u64>>,
        retention_bytes: Option<Option<u64>>,
    ) -> Result<TopicConfig, BusError> {
        let op = Op::AlterTopic {
            name: name.to_owned(),
            retention_ms,
            retention_bytes,
        };
        match self.write(op).await? {
            Response::TopicAltered { config } => Ok(config),
            Response::Error(error) => Err(error.into()),
            other => Err(BusError::Invalid(format!(
                "the state machine answered {other:?} to altering topic {name}"
            ))),
        }
    }

    /// The log's segments, oldest first (the last is the active one).
    pub fn segments(&self) -> Vec<crate::log::SegmentInfo> {
        self.inner.reader.segments()
    }

    /// A topic's configuration and partition bounds.
    pub fn describe_topic(&self, name: &str) -> Option<TopicDescription> {
        let state = self.inner.view.read();
        let topic = state.topic(name)?;
        let partitions = (0..topic.partitions)
            .map(|p| state.partition_range(name, p).unwrap_or((0, 0)))
            .collect();
        Some(TopicDescription {
            name: name.to_owned(),
            config: topic.config,
            partitions,
        })
    }

    /// The offset `group` has committed for a partition (the next offset it
    /// will consume), if any.
    pub fn committed(&self, group: &str, topic: &str, partition: u32) -> Option<u64> {
        self.inner.view.read().committed(group, topic, partition)
    }

    /// Every topic's name.
    pub fn topics(&self) -> Vec<String> {
        self.inner
            .view
            .read()
            .topics()
            .map(|topic| topic.name.clone())
            .collect()
    }

    /// A new idempotent producer with a fresh id.
    pub async fn producer(&self) -> Result<Producer<E>, BusError> {
        Producer::init(self.clone(), None).await
    }

    /// A producer with a stable name: opening it again fences the previous
    /// instance (its later publishes fail with `ProducerFenced`).
    pub async fn producer_named(&self, name: &str) -> Result<Producer<E>, BusError> {
        Producer::init(self.clone(), Some(name.to_owned())).await
    }

    /// Joins `group` as `member`, consuming `topics`.
    pub async fn consumer(
        &self,
        group: &str,
        member: &str,
        topics: &[&str],
    ) -> Result<Consumer<E>, BusError> {
        Consumer::join(self.clone(), group, member, topics).await
    }

    /// Stops the node; data on disk stays.
    pub async fn close(self) -> Result<(), BusError> {
        self.inner
            .raft
            .shutdown()
            .await
            .map_err(|error| BusError::raft(format!("shutting down: {error:?}")))
    }

    /// A read lock on this node's applied state: topics, partitions,
    /// groups, producers. Hold it briefly; apply waits for it.
    pub fn state(&self) -> crate::raft::StateGuard<'_> {
        self.inner.view.read()
    }

    /// The Raft handle, for metrics and management.
    pub fn raft(&self) -> &Raft<E> {
        &self.inner.raft
    }

    pub(crate) fn inner(&self) -> &Inner<E> {
        &self.inner
    }

    /// Proposes one operation a client may ask for (create a topic, init a
    /// producer, join or leave a group, commit offsets, a transaction) and
    /// waits for the state machine's answer. Publishes go through
    /// producers or [`Bus::send_stamped`], which batch them; internal
    /// operations (retention, no-ops) are refused.
    pub async fn propose(&self, op: Op) -> Result<Response, BusError> {
        match op {
            Op::CreateTopic { .. }
            | Op::InitProducer { .. }
            | Op::JoinGroup { .. }
            | Op::LeaveGroup { .. }
            | Op::CommitOffsets(_)
            | Op::Heartbeat { .. }
            | Op::Transaction { .. }
            | Op::AlterTopic { .. } => self.write(op).await,
            // A client's erasure request carries its own signature; it is
            // checked before anything is appended.
            Op::Erase(ref erasure) => {
                self.inner
                    .config
                    .signatures
                    .check_erasure(erasure)
                    .map_err(BusError::Signature)?;
                self.write(op).await
            }
            // An admin entry records who made the change it carries: the
            // same checks as the change proposed alone.
            Op::Admin {
                action: AdminAction::Apply(ref inner),
                ..
            } => {
                if let Op::Erase(erasure) = &**inner {
                    self.inner
                        .config
                        .signatures
                        .check_erasure(erasure)
                        .map_err(BusError::Signature)?;
                }
                self.write(op).await
            }
            Op::Admin { .. } => self.write(op).await,
            Op::Publish(_) => Err(BusError::Invalid(
                "publish through a producer or Bus::send_stamped, which batch events".into(),
            )),
            Op::Retention { .. } | Op::Noop | Op::Checkpoint(_) => Err(BusError::Invalid(format!(
                "{} is internal to the bus and cannot be proposed by a client",
                Command {
                    timestamp_ms: 0,
                    op
                }
            ))),
        }
    }

    /// Proposes one command and waits for its response.
    pub(crate) async fn write(&self, op: Op) -> Result<Response, BusError> {
        let mut command = Command {
            timestamp_ms: wall_unix_ms(&*self.inner.clock),
            op,
        };
        if self.inner.config.chain == crate::log::ChainMode::Sha256 {
            // Off the Raft core (see `raft::codec`).
            crate::raft::codec::prepare_digest(&mut command);
        }
        let written = self
            .inner
            .raft
            .client_write(command)
            .await
            .map_err(BusError::from_write)?;
        Ok(written.data)
    }
}

/// Initialises the one-member cluster on first open; otherwise waits to be
/// leader and to have applied everything in the log.
async fn start<E: Env>(
    raft: &Raft<E>,
    reader: &LogStoreReader<E::Disk>,
    config: &BusConfig,
) -> Result<(), BusError> {
    let id = config.node_id;
    if !raft.is_initialized().await.map_err(BusError::raft)? {
        let members = BTreeMap::from([(id, Node::new("embedded"))]);
        raft.initialize(members).await.map_err(BusError::raft)?;
    }
    let wait = || raft.wait(Some(config.open_timeout));
    wait()
        .current_leader(id, "bus open: become the leader")
        .await
        .map_err(BusError::raft)?;
    let (_, next) = reader.bounds();
    if let Some(last) = next.checked_sub(1) {
        wait()
            .applied_index_at_least(Some(last), "bus open: apply the log")
            .await
            .map_err(BusError::raft)?;
    }
    Ok(())
}

/// Raft settings for a bus. Snapshots hold only the state machine; the log
/// is never purged by openraft itself (retention decides, through the log).
fn raft_config(heartbeat: Duration) -> openraft::Config {
    let heartbeat_ms = u64::try_from(heartbeat.as_millis())
        .unwrap_or(u64::MAX)
        .max(1);
    openraft::Config {
        cluster_name: "sluice".into(),
        heartbeat_interval: heartbeat_ms,
        election_timeout_min: heartbeat_ms.saturating_mul(3),
        election_timeout_max: heartbeat_ms.saturating_mul(6),
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(100_000),
        max_in_snapshot_log_to_keep: u64::MAX / 2,
        max_payload_entries: 1024,
        // A restarted leader must win an election before serving: the
        // state machine is rebuilt in memory and the commit index is not
        // persisted, so a restored leader could answer reads from a state
        // behind what the cluster committed (the simulator's `crash`
        // scenario, seed 45, is its regression; openraft's docs warn of
        // exactly this).
        enable_leader_restore: Some(false),
        // A follower may come back with a shorter log than it had
        // acknowledged: its newest segment cut (a damaged device, an
        // operator, a repair), or a power failure under buffered
        // durability. Without this the leader keeps sending entries after
        // the follower's old end, which the follower refuses, and the
        // follower never catches up (release builds; debug builds panic
        // the leader's core). With it, the leader searches the follower's
        // log again from its start; what a quorum accepted stays committed.
        allow_log_reversion: Some(true),
        ..openraft::Config::default()
    }
}

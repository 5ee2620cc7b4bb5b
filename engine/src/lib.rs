//! Sluice: a durable, Raft-replicated event bus to embed.
//!
//! Open a [`Bus`] on a directory and it is a one-member Raft cluster on
//! real files: [`Producer`]s publish idempotently (a retried publish never
//! appears twice), [`Consumer`]s read in groups whose offsets are committed
//! through Raft and fenced by the group's generation, and a
//! [`Transaction`] publishes outputs and commits the inputs it consumed in
//! one step, all or nothing. An acknowledged event is never lost,
//! duplicated or reordered.
//!
//! ```no_run
//! use sluice::{Bus, Message, TopicConfig};
//! # async fn run() -> Result<(), sluice::Error> {
//! let bus = Bus::open("data").await?;
//! bus.create_topic("payments", 4, TopicConfig::default()).await?;
//! let mut producer = bus.producer().await?;
//! let receipt = producer.publish(Message::new("payments", "debit 100").key("account-7")).await?;
//! # Ok(()) }
//! ```
//!
//! Beyond the bus itself: [`dispatch`] delivers typed events to typed
//! handlers, with retries, dead letters, deadlines, cancellation and SLA
//! classes, durably through the bus or in process; [`audit`] signs the
//! log's hash chain (SM2), verifies a data directory, exports a subject's
//! history, erases a subject and masks fields by the reader's clearance.
//!
//! This crate's API is small on purpose and names no dependency's type
//! except [`Bytes`](bytes::Bytes), the zero-copy buffer events are served
//! in. The engine underneath lives in `sluice-core` and `sluice-model`,
//! which serve Sluice's own crates (the cluster node, the simulator) and
//! make no stability promise.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sluice_core::bus::Bus as CoreBus;
use sluice_core::io::os::OsEnv;
use sluice_dispatch::{DurableBus, DurableConfig, Encoding, EventOptions, Handler, TypedEvent};

pub use sluice_core::bus::{
    CheckpointPolicy, Delivery, Message, Receipt, TopicDescription, Unconsumed,
};
pub use sluice_core::raft::Durability;
pub use sluice_model::event::{Event, Headers, ProducerStamp, Sensitivity};
pub use sluice_model::state::TopicConfig;

/// What can go wrong; every message says what to do.
pub use sluice_core::bus::BusError as Error;

/// An idempotent producer: each event carries the producer's id, epoch and
/// a sequence number per partition, so a resend is appended at most once.
pub type Producer = sluice_core::bus::Producer<OsEnv>;
/// A publish queued by [`Producer::send`]; [`PendingReceipt::wait`] for it.
pub type PendingReceipt = sluice_core::bus::PendingReceipt<OsEnv>;
/// A member of a consumer group.
pub type Consumer = sluice_core::bus::Consumer<OsEnv>;
/// Outputs published and inputs committed in one Raft entry.
pub type Transaction<'a> = sluice_core::bus::Transaction<'a, OsEnv>;
/// A durable subscription started by [`Bus::subscribe`].
pub type Subscription = sluice_dispatch::DurableSubscription<OsEnv>;

/// Typed dispatch: handlers for typed events, in process or durably
/// through the bus ([`Bus::subscribe`]).
pub mod dispatch {
    pub use sluice_dispatch::*;
}

/// Audit: SM2 keys, signed checkpoints, the verifier, subject export,
/// erasure and field-level masking.
pub mod audit {
    pub use sluice_audit::*;
}

/// How a bus is opened.
#[derive(Debug, Clone)]
pub struct Config {
    /// When a publish is acknowledged: after `fdatasync` (default) or once
    /// in the page cache.
    pub durability: Durability,
    /// Size of each log segment file, in bytes.
    pub segment_size: u64,
    /// Publishes one producer may have in flight before `send` waits.
    pub inflight_per_producer_max: usize,
    /// Events one Raft entry holds at most.
    pub batch_events_max: usize,
    /// How long opening may take (replaying the log) before it fails.
    pub open_timeout: Duration,
    /// How often the topics' retention is applied; `None`: only when
    /// [`Bus::enforce_retention`] is called.
    pub retention_interval: Option<Duration>,
    /// Whether retention may drop events a consumer group has not
    /// committed yet.
    pub unconsumed: Unconsumed,
    /// Signed checkpoints of the hash chain head, written by policy while
    /// the bus is open.
    pub checkpoints: Option<(audit::KeyPair, CheckpointPolicy)>,
}

impl Default for Config {
    fn default() -> Self {
        let core = sluice_core::bus::BusConfig::default();
        Config {
            durability: core.durability,
            segment_size: core.segment_size,
            inflight_per_producer_max: core.inflight_per_producer_max,
            batch_events_max: core.batch_events_max,
            open_timeout: core.open_timeout,
            retention_interval: core.retention_interval,
            unconsumed: core.unconsumed,
            checkpoints: None,
        }
    }
}

impl Config {
    fn into_core(self) -> sluice_core::bus::BusConfig {
        sluice_core::bus::BusConfig {
            durability: self.durability,
            segment_size: self.segment_size,
            inflight_per_producer_max: self.inflight_per_producer_max,
            batch_events_max: self.batch_events_max,
            open_timeout: self.open_timeout,
            retention_interval: self.retention_interval,
            unconsumed: self.unconsumed,
            checkpoints: self
                .checkpoints
                .map(|(key, policy)| (Arc::new(key) as Arc<dyn sluice_core::bus::Signer>, policy)),
            signatures: Arc::new(audit::Sm2Signatures),
            ..sluice_core::bus::BusConfig::default()
        }
    }
}

/// The embedded event bus; cheap to clone (all clones share one node).
#[derive(Clone)]
pub struct Bus {
    inner: CoreBus<OsEnv>,
}

impl fmt::Debug for Bus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

impl Bus {
    /// Opens (or creates) a durable bus in `dir`. Call it inside a tokio
    /// runtime of either flavour: the bus's tasks run on the runtime that
    /// opens it, and its `fdatasync` on that runtime's blocking pool. On a
    /// machine with few cores a current-thread runtime shared with the
    /// producers answers sooner (a publish's hand-offs are task switches,
    /// not thread wake-ups); a multi-thread runtime carries more pipelined
    /// load.
    pub async fn open(dir: impl AsRef<Path>) -> Result<Bus, Error> {
        Bus::open_with_config(dir, Config::default()).await
    }

    /// [`Bus::open`] with a configuration.
    pub async fn open_with_config(dir: impl AsRef<Path>, config: Config) -> Result<Bus, Error> {
        let inner = CoreBus::open_with_config(dir, config.into_core()).await?;
        Ok(Bus { inner })
    }

    /// Creates a topic with `partitions` partitions; creating it again with
    /// the same configuration does nothing.
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: u32,
        config: TopicConfig,
    ) -> Result<(), Error> {
        self.inner.create_topic(name, partitions, config).await
    }

    /// Changes a topic's retention: each `Some` replaces that limit
    /// (`Some(None)` removes it); returns the topic's configuration now.
    pub async fn alter_topic(
        &self,
        name: &str,
        retention_ms: Option<Option<u64>>,
        retention_bytes: Option<Option<u64>>,
    ) -> Result<TopicConfig, Error> {
        self.inner
            .alter_topic(name, retention_ms, retention_bytes)
            .await
    }

    /// A topic's configuration and the first and next offset of each of
    /// its partitions.
    pub fn describe_topic(&self, name: &str) -> Option<TopicDescription> {
        self.inner.describe_topic(name)
    }

    /// Every topic's name.
    pub fn topics(&self) -> Vec<String> {
        self.inner.topics()
    }

    /// The offset `group` has committed for a partition (the next offset
    /// it will consume), if any.
    pub fn committed(&self, group: &str, topic: &str, partition: u32) -> Option<u64> {
        self.inner.committed(group, topic, partition)
    }

    /// A new idempotent producer with a fresh id.
    pub async fn producer(&self) -> Result<Producer, Error> {
        self.inner.producer().await
    }

    /// A producer with a stable name: opening it again fences the previous
    /// instance (its later publishes fail with a fenced error).
    pub async fn producer_named(&self, name: &str) -> Result<Producer, Error> {
        self.inner.producer_named(name).await
    }

    /// Joins `group` as `member`, consuming `topics`.
    pub async fn consumer(
        &self,
        group: &str,
        member: &str,
        topics: &[&str],
    ) -> Result<Consumer, Error> {
        self.inner.consumer(group, member, topics).await
    }

    /// Up to `max` events of one partition from `offset` on, without a
    /// group; also the next offset to read.
    pub fn read(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        max: usize,
    ) -> Result<(Vec<Delivery>, u64), Error> {
        self.inner.read(topic, partition, offset, max)
    }

    /// Applies every topic's retention now; returns the log index the log
    /// now starts at.
    pub async fn enforce_retention(&self) -> Result<u64, Error> {
        self.inner.enforce_retention().await
    }

    /// The bus's metrics in the Prometheus text format.
    pub fn metrics_text(&self) -> String {
        self.inner.metrics_text()
    }

    /// Signs the hash chain head at the last applied entry with `key` and
    /// appends the checkpoint to the log; returns the index of its entry.
    pub async fn checkpoint(&self, key: &audit::KeyPair) -> Result<u64, Error> {
        Ok(self.inner.checkpoint(key).await?.1)
    }

    /// Erases `subject`: appends a tombstone signed with `key`, after which
    /// every read masks the subject's payloads; returns the index of its
    /// entry. The stored records keep their bytes and still verify.
    pub async fn erase(
        &self,
        key: &audit::KeyPair,
        subject: &str,
        reason: &str,
    ) -> Result<u64, Error> {
        Ok(self.inner.erase(key, subject, reason).await?.1)
    }

    /// Subscribes `handler` to the durable topic `T::TYPE_NAME` as a member
    /// of `group`: retries with backoff, dead letters with their cause,
    /// deadlines and cancellation, each outcome recorded in the log.
    pub async fn subscribe<T: TypedEvent, H: Handler<T>>(
        &self,
        group: &str,
        handler: H,
    ) -> Result<Subscription, Error> {
        self.inner.subscribe(group, handler).await
    }

    /// [`Bus::subscribe`] with settings.
    pub async fn subscribe_with<T: TypedEvent, H: Handler<T>>(
        &self,
        group: &str,
        handler: H,
        config: DurableConfig,
    ) -> Result<Subscription, Error> {
        self.inner.subscribe_with(group, handler, config).await
    }

    /// Publishes a typed event to its durable topic through `producer`.
    pub async fn publish_typed<T: TypedEvent>(
        &self,
        producer: &mut Producer,
        value: &T,
        encoding: Encoding,
    ) -> Result<Receipt, Error> {
        self.inner.publish_typed(producer, value, encoding).await
    }

    /// Publishes a typed event with a deadline or an SLA class for every
    /// delivery, carried in its headers (`sluice-deadline-ms`,
    /// `sluice-sla-class`).
    pub async fn publish_typed_with<T: TypedEvent>(
        &self,
        producer: &mut Producer,
        value: &T,
        encoding: Encoding,
        options: EventOptions,
    ) -> Result<Receipt, Error> {
        self.inner
            .publish_typed_with(producer, value, encoding, options)
            .await
    }

    /// Cancels, on every node, the durable deliveries of the events of
    /// `business_id` published before this call (never later ones), with a
    /// reason their lifecycle records carry.
    pub async fn cancel(&self, business_id: impl Into<Bytes>, reason: &str) -> Result<(), Error> {
        self.inner.cancel(business_id, reason).await
    }

    /// The dead letters of `group` on `topic` not yet replayed, oldest
    /// first (at most `max`).
    pub fn dead_letters(
        &self,
        topic: &str,
        group: &str,
        max: usize,
    ) -> Result<Vec<Delivery>, Error> {
        self.inner.dead_letters(topic, group, max)
    }

    /// Publishes the dead letters of `group` on `topic` back into `topic`,
    /// exactly once; returns how many.
    pub async fn replay_dead_letters(&self, topic: &str, group: &str) -> Result<u64, Error> {
        self.inner.replay_dead_letters(topic, group).await
    }

    /// Stops the bus; the data on disk stays.
    pub async fn close(self) -> Result<(), Error> {
        self.inner.close().await
    }
}

/// The README's code blocks, compiled and run as doc tests.
#[doc = include_str!("../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

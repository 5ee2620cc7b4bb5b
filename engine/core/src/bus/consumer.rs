//! Consumers in groups, and consume-transform-produce transactions.
//!
//! A consumer reads its partitions' events through the state machine's
//! partition index (offset → log index) and the log (event bodies as
//! zero-copy slices). Group membership, generations, assignments and
//! committed offsets live in the replicated state: when a member joins or
//! leaves, every member sees the new generation and assignment on its next
//! poll and continues each newly assigned partition from its committed
//! offset. A commit carrying an old generation is refused (a zombie is
//! fenced); the events it had processed are delivered again to the new
//! owner (at-least-once). Exactly-once processing is the transactional
//! path: outputs and the input offsets commit in one Raft entry.

use crate::io::os::OsEnv;
use crate::io::{Disk, Env};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use openraft::Instant as _;
use openraft::alias::{InstantOf, WatchReceiverOf};
use openraft::async_runtime::WatchReceiver;
use openraft::type_config::TypeConfigExt;

use crate::raft::{Applied, LogStoreReader, TypeConfig, codec_decode_command};
use sluice_model::event::{EventBatch, EventView, Headers, ProducerStamp};
use sluice_model::state::{Command, OffsetCommit, Op, Response, Run, SESSION_TIMEOUT_MS, State};

use super::producer::{Message, Producer, Receipt};
use super::{Bus, BusError};

/// One delivered event with its context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: u32,
    /// Offset in the partition.
    pub offset: u64,
    /// Business key.
    pub key: Bytes,
    /// Body, a zero-copy slice of the log.
    pub payload: Bytes,
    /// Business context.
    pub headers: Headers,
    /// Who published it, with which sequence.
    pub producer: ProducerStamp,
    /// When the producer published it (its clock).
    pub timestamp_ms: u64,
}

type TopicPartition = (String, u32);

/// A member of a consumer group; see the module docs.
pub struct Consumer<E: Env = OsEnv> {
    bus: Bus<E>,
    group: String,
    member: String,
    generation: u64,
    assignment: Vec<TopicPartition>,
    /// Next offset to deliver, per assigned partition.
    positions: BTreeMap<TopicPartition, u64>,
    cursor: usize,
    applied: WatchReceiverOf<TypeConfig<E>, Applied>,
    /// When this member last told the group it is alive.
    heartbeat_at: InstantOf<TypeConfig<E>>,
}

impl<E: Env> fmt::Debug for Consumer<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer")
            .field("group", &self.group)
            .field("member", &self.member)
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

impl<E: Env> Consumer<E> {
    pub(crate) async fn join(
        bus: Bus<E>,
        group: &str,
        member: &str,
        topics: &[&str],
    ) -> Result<Self, BusError> {
        let op = Op::JoinGroup {
            group: group.to_owned(),
            member: member.to_owned(),
            topics: topics.iter().map(|t| (*t).to_owned()).collect(),
        };
        match bus.write(op).await? {
            Response::Joined { .. } => {}
            Response::Error(error) => return Err(error.into()),
            other => {
                return Err(BusError::raft(format!(
                    "unexpected answer to JoinGroup: {other:?}"
                )));
            }
        }
        let applied = bus.inner().view.applied();
        let mut consumer = Consumer {
            bus,
            group: group.to_owned(),
            member: member.to_owned(),
            generation: 0,
            assignment: Vec::new(),
            positions: BTreeMap::new(),
            cursor: 0,
            applied,
            heartbeat_at: TypeConfig::<E>::now(),
        };
        consumer.refresh()?;
        Ok(consumer)
    }

    /// The group generation this consumer works in.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The partitions assigned to this consumer.
    pub fn assignment(&self) -> &[TopicPartition] {
        &self.assignment
    }

    /// Picks up a new generation: new assignment, positions of newly
    /// assigned partitions from the committed offsets.
    fn refresh(&mut self) -> Result<(), BusError> {
        let state = self.bus.inner().view.read();
        let group = state
            .group(&self.group)
            .ok_or_else(|| BusError::Invalid(format!("group {:?} is gone", self.group)))?;
        if group.generation == self.generation {
            return Ok(());
        }
        let assignment = group.assignment.get(&self.member).cloned().ok_or_else(|| {
            BusError::Invalid(format!(
                "member {:?} is no longer in group {:?}; join again",
                self.member, self.group
            ))
        })?;
        self.generation = group.generation;
        self.assignment = assignment;
        let mut positions = BTreeMap::new();
        for tp in &self.assignment {
            let position = match self.positions.get(tp) {
                Some(&kept) => kept,
                None => start_position(&state, &self.group, tp),
            };
            positions.insert(tp.clone(), position);
        }
        self.positions = positions;
        self.cursor = 0;
        Ok(())
    }

    /// Waits up to `timeout` for events and returns at most `max` of them,
    /// in offset order per partition.
    ///
    /// Polling is also how the member stays in its group: every third of
    /// `SESSION_TIMEOUT_MS` a poll sends a heartbeat, and a member that
    /// neither polls nor commits for longer than the timeout is removed
    /// (its partitions go to the others; its next poll fails, and it must
    /// join again), as Kafka's `max.poll.interval.ms` does.
    pub async fn poll(&mut self, max: usize, timeout: Duration) -> Result<Vec<Delivery>, BusError> {
        let started = TypeConfig::<E>::now();
        self.heartbeat_if_due().await?;
        loop {
            self.refresh()?;
            let mut out = Vec::new();
            self.fetch(max, &mut out)?;
            if !out.is_empty() {
                return Ok(out);
            }
            let remaining = timeout.saturating_sub(started.elapsed());
            if remaining.is_zero() {
                return Ok(out);
            }
            match TypeConfig::<E>::timeout(remaining, self.applied.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(BusError::Closed),
                Err(_) => return Ok(out),
            }
        }
    }

    async fn heartbeat_if_due(&mut self) -> Result<(), BusError> {
        let interval = Duration::from_millis(SESSION_TIMEOUT_MS / 3);
        if self.heartbeat_at.elapsed() < interval {
            return Ok(());
        }
        let op = Op::Heartbeat {
            group: self.group.clone(),
            member: self.member.clone(),
        };
        match self.bus.write(op).await? {
            Response::Error(error) => Err(error.into()),
            _ => {
                self.heartbeat_at = TypeConfig::<E>::now();
                Ok(())
            }
        }
    }

    fn fetch(&mut self, max: usize, out: &mut Vec<Delivery>) -> Result<(), BusError> {
        let count = self.assignment.len();
        for step in 0..count {
            if out.len() >= max {
                break;
            }
            let tp = self.assignment[(self.cursor + step) % count].clone();
            let position = self.positions[&tp];
            let next = read_partition(&self.bus, &tp, position, max - out.len(), usize::MAX, out)?;
            self.positions.insert(tp, next);
        }
        if count > 0 {
            self.cursor = (self.cursor + 1) % count;
        }
        Ok(())
    }

    /// Commits the positions of everything delivered so far.
    pub async fn commit(&mut self) -> Result<(), BusError> {
        let commit = self.offset_commit();
        match self.bus.write(Op::CommitOffsets(commit)).await? {
            Response::Error(error) => Err(error.into()),
            _ => {
                // A commit is a sign of life too.
                self.heartbeat_at = TypeConfig::<E>::now();
                Ok(())
            }
        }
    }

    fn offset_commit(&self) -> OffsetCommit {
        OffsetCommit {
            group: self.group.clone(),
            member: self.member.clone(),
            generation: self.generation,
            offsets: self
                .positions
                .iter()
                .map(|((t, p), &o)| (t.clone(), *p, o))
                .collect(),
        }
    }

    /// Picks up the group's current generation and assignment (as `poll`
    /// does), then moves to the end of every assigned partition: only
    /// events published from now on are delivered (Kafka's
    /// `auto.offset.reset=latest`).
    pub fn seek_to_end(&mut self) -> Result<(), BusError> {
        self.refresh()?;
        let state = self.bus.inner().view.read();
        for ((topic, partition), position) in self.positions.iter_mut() {
            *position = state
                .partition_range(topic, *partition)
                .map_or(0, |(_, next)| next);
        }
        Ok(())
    }

    /// Goes back to the committed offsets (after an aborted transaction).
    pub fn rewind(&mut self) {
        let state = self.bus.inner().view.read();
        for (tp, position) in self.positions.iter_mut() {
            *position = start_position(&state, &self.group, tp);
        }
    }

    /// Leaves the group; its partitions move to the other members.
    pub async fn leave(self) -> Result<(), BusError> {
        let op = Op::LeaveGroup {
            group: self.group.clone(),
            member: self.member.clone(),
        };
        match self.bus.write(op).await? {
            Response::Error(error) => Err(error.into()),
            _ => Ok(()),
        }
    }

    /// Starts a consume-transform-produce transaction: outputs published
    /// through it and this consumer's positions commit together, or not at
    /// all.
    pub fn transaction<'a>(&'a mut self, producer: &'a mut Producer<E>) -> Transaction<'a, E> {
        let saved = producer.sequences();
        Transaction {
            consumer: self,
            producer,
            events: Vec::new(),
            saved,
        }
    }
}

/// Where a consumer starts in a partition: its group's committed offset,
/// else the first retained offset.
impl<E: Env> Bus<E> {
    /// Reads up to `max` events of one partition from `offset` on, outside
    /// any group (a tail, or a node serving a remote consumer). Offsets
    /// before the first retained one are skipped. Returns the events and
    /// the offset to read next; no events when `offset` is at the end.
    pub fn read(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        max: usize,
    ) -> Result<(Vec<Delivery>, u64), BusError> {
        self.read_bytes(topic, partition, offset, max, usize::MAX)
    }

    /// As [`Bus::read`], and also stops before the events' encoded size
    /// (their records in the log,
    /// [`EventView::record`](sluice_model::event::EventView::record)) would
    /// pass `max_bytes`; the first event is returned whatever its size, so
    /// a reader always moves on.
    pub fn read_bytes(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        max: usize,
        max_bytes: usize,
    ) -> Result<(Vec<Delivery>, u64), BusError> {
        let tp = (topic.to_owned(), partition);
        {
            let state = self.inner().view.read();
            let known = state.topic(topic).ok_or_else(|| BusError::UnknownTopic {
                topic: topic.to_owned(),
            })?;
            if partition >= known.partitions {
                return Err(BusError::Invalid(format!(
                    "partition {partition} of topic {topic:?}, which has {}",
                    known.partitions
                )));
            }
        }
        let mut out = Vec::new();
        let next = read_partition(self, &tp, offset, max, max_bytes, &mut out)?;
        Ok((out, next))
    }

    /// Waits until this node applies another entry, or `timeout` passes;
    /// returns whether something was applied. A reader that found nothing
    /// new waits here instead of polling.
    pub async fn wait_applied(&self, timeout: Duration) -> Result<bool, BusError> {
        let mut applied = self.inner().view.applied();
        match TypeConfig::<E>::timeout(timeout, applied.changed()).await {
            Ok(Ok(())) => Ok(true),
            Ok(Err(_)) => Err(BusError::Closed),
            Err(_) => Ok(false),
        }
    }
}

fn start_position(state: &State, group: &str, (topic, partition): &TopicPartition) -> u64 {
    let first = state
        .partition_range(topic, *partition)
        .map_or(0, |(first, _)| first);
    state
        .committed(group, topic, *partition)
        .unwrap_or(first)
        .max(first)
}

/// Reads up to `max` events of one partition from `position`, and up to
/// `max_bytes` of their records once one event is taken; returns the next
/// position.
fn read_partition<E: Env>(
    bus: &Bus<E>,
    (topic, partition): &TopicPartition,
    position: u64,
    max: usize,
    max_bytes: usize,
    out: &mut Vec<Delivery>,
) -> Result<u64, BusError> {
    let inner = bus.inner();
    let Some(plan) = plan_read(&inner.view.read(), topic, *partition, position, max) else {
        return Ok(position.max(first_offset(bus, topic, *partition)));
    };
    let mut position = plan.position;
    let mut taken = 0;
    let mut bytes = 0usize;
    let mut records = Vec::new();
    for run in &plan.runs {
        let command = read_entry(&inner.reader, run.log_index(), &mut records)?;
        let batch = command.batch().ok_or_else(|| {
            BusError::Corrupt(format!(
                "the partition index points at entry {}, which holds no events: {command}",
                run.log_index()
            ))
        })?;
        for (offset, view) in run.select(topic, *partition, batch) {
            if offset < position {
                continue;
            }
            let size = view.record().len();
            if taken >= max || (taken > 0 && bytes.saturating_add(size) > max_bytes) {
                return Ok(position);
            }
            out.push(delivery(
                topic,
                *partition,
                offset,
                &view,
                plan.erased.as_ref(),
            ));
            position = offset + 1;
            taken += 1;
            bytes = bytes.saturating_add(size);
        }
    }
    Ok(position)
}

/// What a read takes from the state, under its lock: where to start, the
/// runs of log entries that hold the events, and the erased subjects.
struct ReadPlan {
    position: u64,
    runs: Vec<Run>,
    erased: Option<std::collections::BTreeSet<String>>,
}

/// `None` when the partition does not exist or holds nothing from
/// `position` on.
fn plan_read(
    state: &State,
    topic: &str,
    partition: u32,
    position: u64,
    max: usize,
) -> Option<ReadPlan> {
    let (first, next) = state.partition_range(topic, partition)?;
    let position = position.max(first);
    if position >= next {
        return None;
    }
    let mut covered = 0u64;
    let runs = state
        .runs_from(topic, partition, position)
        .take_while(|run| {
            let take = covered < max as u64;
            covered += run.offset_next() - run.offset_first().max(position);
            take
        })
        .cloned()
        .collect();
    let erased = state
        .has_erasures()
        .then(|| state.erased_subjects().clone());
    Some(ReadPlan {
        position,
        runs,
        erased,
    })
}

/// The first retained offset of a partition (0 if it does not exist).
fn first_offset<E: Env>(bus: &Bus<E>, topic: &str, partition: u32) -> u64 {
    bus.inner()
        .view
        .read()
        .partition_range(topic, partition)
        .map_or(0, |(first, _)| first)
}

/// Reads and decodes the command of log entry `index`, which the
/// partition index says holds events.
fn read_entry<D: Disk>(
    reader: &LogStoreReader<D>,
    index: u64,
    records: &mut Vec<crate::log::Record>,
) -> Result<Command, BusError> {
    records.clear();
    reader.read_records(index, index + 1, records)?;
    let record = records.first().ok_or_else(|| {
        BusError::Corrupt(format!(
            "the partition index points at entry {index}, which is not in the log"
        ))
    })?;
    codec_decode_command(&record.payload)
        .map_err(|error| BusError::Corrupt(format!("entry {index} does not decode: {error}")))
}

/// The delivery of one event, its payload masked if its subject is erased.
fn delivery(
    topic: &str,
    partition: u32,
    offset: u64,
    view: &EventView<'_>,
    erased: Option<&std::collections::BTreeSet<String>>,
) -> Delivery {
    let mut delivery = Delivery {
        topic: topic.to_owned(),
        partition,
        offset,
        key: view.key(),
        payload: view.payload(),
        headers: view.headers(),
        producer: view.producer(),
        timestamp_ms: view.timestamp_ms(),
    };
    if let Some(subjects) = erased {
        sluice_model::records::mask_erased(
            subjects,
            view,
            &mut delivery.payload,
            &mut delivery.headers,
        );
    }
    delivery
}

/// A consume-transform-produce transaction; see [`Consumer::transaction`].
pub struct Transaction<'a, E: Env> {
    consumer: &'a mut Consumer<E>,
    producer: &'a mut Producer<E>,
    events: Vec<sluice_model::event::Event>,
    saved: HashMap<TopicPartition, u64>,
}

impl<E: Env> fmt::Debug for Transaction<'_, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transaction")
            .field("events", &self.events.len())
            .finish_non_exhaustive()
    }
}

impl<E: Env> Transaction<'_, E> {
    /// Adds an output event.
    pub fn publish(&mut self, message: Message) -> Result<(), BusError> {
        let event = self.producer.stamp(message)?;
        if let Err(error) = event.validate() {
            self.producer.unstamp(&event);
            return Err(error.into());
        }
        self.events.push(event);
        Ok(())
    }

    /// Publishes the outputs and commits the consumer's positions in one
    /// Raft entry. On refusal nothing is applied, the producer's sequences
    /// are rolled back and the consumer rewinds to its committed offsets.
    pub async fn commit(self) -> Result<Vec<Receipt>, BusError> {
        // Earlier plain publishes of this producer must land first, or the
        // transaction's sequences would arrive out of order.
        self.producer.flush().await?;
        let events = match EventBatch::encode(&self.events) {
            Ok(events) => events,
            Err(error) => {
                self.abort();
                return Err(error.into());
            }
        };
        let op = Op::Transaction {
            events,
            commit: self.consumer.offset_commit(),
        };
        let outcome = match self.consumer.bus.write(op).await {
            Ok(Response::Transaction(Ok(outcomes))) => Ok(outcomes),
            Ok(Response::Transaction(Err(error))) => Err(BusError::Transaction(error)),
            Ok(Response::Error(error)) => Err(error.into()),
            Ok(other) => Err(BusError::raft(format!(
                "unexpected answer to a transaction: {other:?}"
            ))),
            Err(error) => Err(error),
        };
        match outcome {
            Ok(outcomes) => outcomes.into_iter().map(super::batcher::receipt).collect(),
            Err(error) => {
                self.producer.restore_sequences(self.saved);
                self.consumer.rewind();
                Err(error)
            }
        }
    }

    /// Drops the outputs and rewinds the consumer.
    pub fn abort(self) {
        self.producer.restore_sequences(self.saved);
        self.consumer.rewind();
    }
}

//! One pass over the paired history that records, for every (topic, value)
//! and every (topic, partition, offset), what was written, acknowledged and
//! observed. The rules then read this index instead of rescanning.
//!
//! A value's *write status* folds all attempts that wrote it (retries of a
//! send reuse the value; a transaction retried after an abort recomputes
//! the same outputs): acknowledged if any attempt was `ok`, else
//! indeterminate if any was `info` (or never completed), else failed if
//! any was `fail`, else unwritten (only ever observed).
//!
//! Observations come from three sources: an `ok` send's acknowledgement,
//! an `ok` poll, and an `ok` final read. Several final reads of one topic
//! are merged. Strings are borrowed from the history, never copied.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap, HashSet};

use super::Findings;
use super::pairing::{Outcome, Pair};
use crate::history::{Event, History, Op, Payload, ProducerStamp, SendOp, TxnOp};
use crate::report::{AnomalyClass, Example, Outcomes, Stats};

pub(crate) type TopicId = u32;
pub(crate) type ValueId = usize;

/// A consumer group's partition: (group, topic, partition).
pub(crate) type GroupPartition<'h> = (&'h str, TopicId, u32);

/// One final-read entry that a group's highest commit covers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Covered<'h> {
    pub(crate) group: &'h str,
    pub(crate) topic: TopicId,
    pub(crate) partition: u32,
    /// The committed offset (next to consume) and the op that committed it.
    pub(crate) next: u64,
    pub(crate) commit_op: usize,
    pub(crate) offset: u64,
    pub(crate) id: ValueId,
}

/// A place in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Pos {
    pub(crate) topic: TopicId,
    pub(crate) partition: u32,
    pub(crate) offset: u64,
}

/// What an observation came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Ack,
    Poll,
    FinalRead,
}

/// The folded outcome of every attempt to write one value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WriteStatus {
    Unwritten,
    Acknowledged,
    Indeterminate,
    Failed,
}

/// A list that is almost always of length one: kept inline until the
/// second item, so that a million clean values cost no extra allocation.
#[derive(Debug, Clone)]
pub(crate) struct Few<T> {
    first: Option<T>,
    more: Vec<T>,
}

impl<T: Copy> Few<T> {
    fn new() -> Self {
        Self {
            first: None,
            more: Vec::new(),
        }
    }

    fn push(&mut self, item: T) {
        if self.first.is_none() {
            self.first = Some(item);
        } else {
            self.more.push(item);
        }
    }

    pub(crate) fn len(&self) -> usize {
        usize::from(self.first.is_some()) + self.more.len()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = T> + '_ {
        self.first.iter().copied().chain(self.more.iter().copied())
    }
}

/// The first acknowledgement of a value.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ack {
    pub(crate) pos: Pos,
    pub(crate) op: usize,
    pub(crate) time_ns: u64,
}

/// Everything known about one (topic, value).
#[derive(Debug)]
pub(crate) struct ValueInfo<'h> {
    pub(crate) topic: TopicId,
    pub(crate) value: &'h str,
    writes: Outcomes,
    /// Whether a transaction (rather than a send) wrote it.
    pub(crate) by_txn: bool,
    /// The earliest invocation that wrote it, and that invocation's time.
    pub(crate) write: Option<(usize, u64)>,
    pub(crate) ack: Option<Ack>,
    pub(crate) producer: Option<ProducerStamp>,
    /// Distinct positions observed (acks and reads), each with the first
    /// op that observed it there.
    pub(crate) positions: Few<(Pos, usize)>,
    /// The first poll or final read that observed it.
    pub(crate) read_op: Option<usize>,
    /// Distinct positions holding it in the final reads.
    pub(crate) final_count: u32,
}

impl ValueInfo<'_> {
    pub(crate) fn status(&self) -> WriteStatus {
        if self.writes.ok > 0 {
            WriteStatus::Acknowledged
        } else if self.writes.info > 0 {
            WriteStatus::Indeterminate
        } else if self.writes.fail > 0 {
            WriteStatus::Failed
        } else {
            WriteStatus::Unwritten
        }
    }

    fn note_write(&mut self, pair: Pair, time_ns: u64, by_txn: bool) {
        count(&mut self.writes, pair.outcome);
        self.by_txn |= by_txn;
        // Pairs arrive in completion order, so keep the earliest invocation.
        if self.write.is_none_or(|(op, _)| pair.invoke < op) {
            self.write = Some((pair.invoke, time_ns));
        }
    }
}

/// Every distinct value observed at one position.
#[derive(Debug)]
pub(crate) struct PositionInfo {
    pub(crate) pos: Pos,
    /// Distinct values, each with the first op that observed it here.
    pub(crate) values: Few<(ValueId, usize)>,
}

/// The index the rules read.
#[derive(Debug)]
pub(crate) struct Index<'h> {
    pub(crate) history: &'h History,
    /// In completion order; see [`super::pairing`].
    pub(crate) pairs: Vec<Pair>,
    topic_ids: HashMap<&'h str, TopicId>,
    topics: Vec<&'h str>,
    value_ids: HashMap<(TopicId, &'h str), ValueId>,
    /// In order of first mention, so iteration is deterministic.
    pub(crate) values: Vec<ValueInfo<'h>>,
    position_ids: HashMap<Pos, usize>,
    /// In order of first observation.
    pub(crate) positions: Vec<PositionInfo>,
    /// Per (topic, partition): (offset, value) sorted and distinct.
    pub(crate) final_log: BTreeMap<(TopicId, u32), Vec<(u64, ValueId)>>,
    /// Topics with an ok final read, and the first such read.
    final_reads: HashMap<TopicId, usize>,
    /// Topics that must have a final read, with the op that requires it.
    pub(crate) final_read_needed: BTreeMap<TopicId, usize>,
    /// Groups that used the transactional path.
    pub(crate) txn_groups: HashSet<&'h str>,
    pub(crate) stats: Stats,
}

pub(crate) fn count(outcomes: &mut Outcomes, outcome: Outcome) {
    match outcome {
        Outcome::Ok => outcomes.ok += 1,
        Outcome::Fail => outcomes.fail += 1,
        Outcome::Info => outcomes.info += 1,
    }
}

impl<'h> Index<'h> {
    pub(crate) fn build(history: &'h History, pairs: Vec<Pair>, findings: &mut Findings) -> Self {
        let mut index = Index {
            history,
            pairs: Vec::new(),
            topic_ids: HashMap::new(),
            topics: Vec::new(),
            value_ids: HashMap::new(),
            values: Vec::new(),
            position_ids: HashMap::new(),
            positions: Vec::new(),
            final_log: BTreeMap::new(),
            final_reads: HashMap::new(),
            final_read_needed: BTreeMap::new(),
            txn_groups: HashSet::new(),
            stats: Stats::default(),
        };
        index.stats.ops = history.ops.len() as u64;
        index.stats.nemesis_ops = history
            .ops
            .iter()
            .filter(|op| matches!(op.f, Payload::Nemesis(_)))
            .count() as u64;
        for pair in &pairs {
            index.add(*pair, findings);
        }
        index.pairs = pairs;
        index.finish();
        index
    }

    pub(crate) fn topic_name(&self, topic: TopicId) -> &'h str {
        self.topics[topic as usize]
    }

    pub(crate) fn find_topic(&self, name: &str) -> Option<TopicId> {
        self.topic_ids.get(name).copied()
    }

    pub(crate) fn find_value(&self, topic: TopicId, value: &str) -> Option<ValueId> {
        self.value_ids.get(&(topic, value)).copied()
    }

    pub(crate) fn has_final_read(&self, topic: TopicId) -> bool {
        self.final_reads.contains_key(&topic)
    }

    /// The first ok final read of `topic`, if any.
    pub(crate) fn final_read_op(&self, topic: TopicId) -> Option<usize> {
        self.final_reads.get(&topic).copied()
    }

    /// The final read of one partition, sorted by offset; empty if none.
    /// Every final-read entry each group's highest commit covers: from the
    /// lowest offset the group was delivered (without a delivery its
    /// starting point is unknown, so nothing is judged) up to the
    /// committed offset.
    pub(crate) fn covered<'a>(
        &'a self,
        committed: &'a BTreeMap<GroupPartition<'h>, (u64, usize)>,
        lowest: &'a HashMap<GroupPartition<'h>, u64>,
    ) -> impl Iterator<Item = Covered<'h>> + 'a {
        committed
            .iter()
            .flat_map(move |(&(group, topic, partition), &(next, commit_op))| {
                let entries = match lowest.get(&(group, topic, partition)) {
                    Some(&lowest) => {
                        let entries = self.final_partition(topic, partition);
                        &entries[entries.partition_point(|(offset, _)| *offset < lowest)..]
                    }
                    None => &[],
                };
                entries
                    .iter()
                    .take_while(move |(offset, _)| *offset < next)
                    .map(move |&(offset, id)| Covered {
                        group,
                        topic,
                        partition,
                        next,
                        commit_op,
                        offset,
                        id,
                    })
            })
    }

    pub(crate) fn final_partition(&self, topic: TopicId, partition: u32) -> &[(u64, ValueId)] {
        self.final_log
            .get(&(topic, partition))
            .map_or(&[], Vec::as_slice)
    }

    fn topic_id(&mut self, name: &'h str) -> TopicId {
        let next = TopicId::try_from(self.topics.len()).expect("fewer than 2^32 topics");
        let id = *self.topic_ids.entry(name).or_insert(next);
        if id == next {
            self.topics.push(name);
        }
        id
    }

    fn value_id(&mut self, topic: TopicId, value: &'h str) -> ValueId {
        let next = self.values.len();
        let id = *self.value_ids.entry((topic, value)).or_insert(next);
        if id == next {
            self.values.push(ValueInfo {
                topic,
                value,
                writes: Outcomes::default(),
                by_txn: false,
                write: None,
                ack: None,
                producer: None,
                positions: Few::new(),
                read_op: None,
                final_count: 0,
            });
        }
        id
    }

    fn add(&mut self, pair: Pair, findings: &mut Findings) {
        let history = self.history;
        let invoked = &history.ops[pair.invoke];
        let observed = match (pair.outcome, pair.completion) {
            (Outcome::Ok, Some(completion)) => Some((completion, &history.ops[completion])),
            _ => None,
        };
        match (&invoked.f, observed.map(|(index, op)| (index, &op.f))) {
            (Payload::Send(send), _) => {
                self.add_send(pair, invoked.time_ns, send, observed, findings);
            }
            (Payload::Txn(txn), _) => self.add_txn(pair, invoked.time_ns, txn),
            (Payload::Poll(poll), read) => {
                count(&mut self.stats.polls, pair.outcome);
                self.topic_id(&poll.topic);
                if let Some((index, Payload::Poll(done))) = read {
                    self.stats.events_polled += done.events.len() as u64;
                    self.add_read(index, &done.topic, &done.events, Source::Poll);
                }
            }
            (Payload::FinalRead(_), Some((index, Payload::FinalRead(done)))) => {
                let topic = self.add_read(index, &done.topic, &done.events, Source::FinalRead);
                self.final_reads.entry(topic).or_insert(index);
            }
            (Payload::Commit(_), _) => count(&mut self.stats.commits, pair.outcome),
            (Payload::FinalRead(_) | Payload::Seek(_) | Payload::Nemesis(_), _) => {}
        }
    }

    fn add_send(
        &mut self,
        pair: Pair,
        invoke_ns: u64,
        send: &'h SendOp,
        observed: Option<(usize, &'h Op)>,
        findings: &mut Findings,
    ) {
        count(&mut self.stats.sends, pair.outcome);
        let topic = self.topic_id(&send.topic);
        let id = self.value_id(topic, &send.value);
        let info = &mut self.values[id];
        info.note_write(pair, invoke_ns, false);
        info.producer = info.producer.or(send.producer);
        let Some((index, op)) = observed else { return };
        let Payload::Send(ack) = &op.f else {
            unreachable!("pairing matched the variants")
        };
        let (Some(partition), Some(offset)) = (ack.partition, ack.offset) else {
            findings.record(AnomalyClass::Malformed, || {
                let message = format!("op {index}: send ok without a partition and offset");
                Example::new(message)
                    .ops([pair.invoke, index])
                    .values([send.value.as_str()])
            });
            return;
        };
        if ack.topic != send.topic || ack.value != send.value {
            findings.record(AnomalyClass::Malformed, || {
                let message = format!(
                    "op {index}: send ok acknowledges {}/{:?}, but op {} sent {}/{:?}",
                    ack.topic, ack.value, pair.invoke, send.topic, send.value
                );
                Example::new(message).ops([pair.invoke, index])
            });
            return;
        }
        let pos = Pos {
            topic,
            partition,
            offset,
        };
        let info = &mut self.values[id];
        info.ack = info.ack.or(Some(Ack {
            pos,
            op: index,
            time_ns: op.time_ns,
        }));
        self.final_read_needed.entry(topic).or_insert(index);
        self.observe(pos, id, index, Source::Ack);
    }

    fn add_txn(&mut self, pair: Pair, invoke_ns: u64, txn: &'h TxnOp) {
        count(&mut self.stats.txns, pair.outcome);
        self.txn_groups.insert(&txn.group);
        let input = self.topic_id(&txn.input_topic);
        let output = self.topic_id(&txn.output_topic);
        for out in &txn.outputs {
            let id = self.value_id(output, &out.value);
            self.values[id].note_write(pair, invoke_ns, true);
        }
        if let (Outcome::Ok, Some(completion)) = (pair.outcome, pair.completion) {
            // Judging exactly-once needs both logs in full.
            self.final_read_needed.entry(input).or_insert(completion);
            self.final_read_needed.entry(output).or_insert(completion);
        }
    }

    fn add_read(
        &mut self,
        op: usize,
        topic: &'h str,
        events: &'h [Event],
        source: Source,
    ) -> TopicId {
        let topic = self.topic_id(topic);
        for event in events {
            let id = self.value_id(topic, &event.value);
            let pos = Pos {
                topic,
                partition: event.partition,
                offset: event.offset,
            };
            self.observe(pos, id, op, source);
        }
        topic
    }

    fn observe(&mut self, pos: Pos, id: ValueId, op: usize, source: Source) {
        if source != Source::Ack {
            // Completions arrive in history order, so the first is the earliest.
            self.values[id].read_op.get_or_insert(op);
        }
        if source == Source::FinalRead {
            self.final_log
                .entry((pos.topic, pos.partition))
                .or_default()
                .push((pos.offset, id));
        }
        let position = match self.position_ids.entry(pos) {
            Entry::Occupied(entry) => *entry.get(),
            Entry::Vacant(entry) => {
                entry.insert(self.positions.len());
                let mut values = Few::new();
                values.push((id, op));
                self.positions.push(PositionInfo { pos, values });
                self.values[id].positions.push((pos, op));
                return;
            }
        };
        // Scan the shorter of the two lists: both are one item long unless
        // something is already wrong, and neither scan can go quadratic.
        let here = &self.positions[position].values;
        let there = &self.values[id].positions;
        let known = if here.len() <= there.len() {
            here.iter().any(|(value, _)| value == id)
        } else {
            there.iter().any(|(at, _)| at == pos)
        };
        if !known {
            self.positions[position].values.push((id, op));
            self.values[id].positions.push((pos, op));
        }
    }

    fn finish(&mut self) {
        for entries in self.final_log.values_mut() {
            entries.sort_unstable();
            entries.dedup();
            for (_, id) in entries.iter() {
                self.values[*id].final_count += 1;
            }
            self.stats.final_read_events += entries.len() as u64;
        }
        self.stats.final_read_topics = self.final_reads.len() as u64;
        for value in &self.values {
            let status = value.status();
            self.stats.values_written += u64::from(status != WriteStatus::Unwritten);
            self.stats.values_acknowledged += u64::from(status == WriteStatus::Acknowledged);
        }
    }
}

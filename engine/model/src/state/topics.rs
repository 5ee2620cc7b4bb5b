//! Topics and the partition index: which log entry holds which offsets.
//!
//! The Raft log is the event log; the state machine keeps no event
//! bodies. For each partition it keeps runs `(offset_first, count,
//! log_index)`: offsets `[offset_first, offset_first + count)` are events of
//! that partition in the entry at `log_index`, in batch order.
//!
//! Invariants, per partition:
//! - runs are contiguous: each starts where the previous ends, the first
//!   starts at `offset_first` and the last ends at `offset_next`; with no
//!   runs, `offset_first == offset_next`;
//! - runs' log indexes strictly increase (one run per partition per entry);
//! - `count > 0`, and `skipped` lists, ascending and without repeats, the
//!   positions of this partition's events in the entry that were not
//!   appended (duplicates, rejections), so a reader can tell them apart.
//!
//! Topics are never deleted and their partition count never changes, so a
//! topic's id (its creation order) is stable and keys producer sessions.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::event::{EventBatch, EventView, check_topic_name};

use super::command::TopicConfig;
use super::response::{PublishError, StateError};
use super::runs::{Run, Runs};
use super::{PARTITIONS_MAX, PARTITIONS_TOTAL_MAX, TOPICS_MAX, ensure};

/// A topic's metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicInfo {
    /// Its name.
    pub name: String,
    /// Partition count, fixed at creation.
    pub partitions: u32,
    /// Retention policy, as created or last altered.
    pub config: TopicConfig,
    /// The creating command's timestamp.
    pub created_ms: u64,
}

/// Where one event lives in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Location {
    /// The entry holding the event.
    pub log_index: u64,
    /// Index of the event among the events of its (topic, partition) in
    /// that entry's batch, counting every such event, appended or not.
    pub position: u32,
}

impl Location {
    /// Finds the event in the entry's batch.
    pub fn select<'a>(
        &self,
        topic: &str,
        partition: u32,
        batch: &'a EventBatch,
    ) -> Option<EventView<'a>> {
        batch
            .iter()
            .filter(|view| view.partition() == partition && view.topic() == topic)
            .nth(self.position as usize)
    }
}

/// The index of one partition.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct PartitionIndex {
    offset_first: u64,
    offset_next: u64,
    runs: Runs,
}

impl PartitionIndex {
    pub(super) fn range(&self) -> (u64, u64) {
        (self.offset_first, self.offset_next)
    }

    /// Hands out the next offset. The run is pushed when the entry ends.
    pub(super) fn offset_take(&mut self) -> u64 {
        let offset = self.offset_next;
        self.offset_next += 1;
        offset
    }

    pub(super) fn push_run(
        &mut self,
        log_index: u64,
        offset_first: u64,
        count: u32,
        skipped: Vec<u32>,
    ) {
        assert!(count > 0);
        assert_eq!(offset_first + u64::from(count), self.offset_next);
        match self.runs.back() {
            Some(last) => {
                assert_eq!(last.offset_next(), offset_first);
                assert!(last.log_index < log_index);
            }
            None => assert_eq!(self.offset_first, offset_first),
        }
        self.runs.push_back(Run {
            offset_first,
            count,
            log_index,
            skipped: skipped.into_boxed_slice(),
        });
    }

    /// Index of the run holding `offset`, or of the first run after it.
    fn run_at(&self, offset: u64) -> usize {
        self.runs.partition_point(|run| run.offset_next() <= offset)
    }

    pub(super) fn locate(&self, offset: u64) -> Option<Location> {
        if offset < self.offset_first || offset >= self.offset_next {
            return None;
        }
        let run = self
            .runs
            .get(self.run_at(offset))
            .expect("the offset is held");
        Some(Location {
            log_index: run.log_index,
            position: run.position(offset).expect("the run holds the offset"),
        })
    }

    pub(super) fn runs_from(&self, offset: u64) -> impl Iterator<Item = &Run> {
        self.runs.iter_from(self.run_at(offset))
    }

    /// Drops runs in entries below `log_index_before`.
    pub(super) fn retain(&mut self, log_index_before: u64) {
        while self
            .runs
            .front()
            .is_some_and(|run| run.log_index < log_index_before)
        {
            self.runs.pop_front();
        }
        self.offset_first = self
            .runs
            .front()
            .map_or(self.offset_next, |run| run.offset_first);
    }

    fn check(&self, last_applied: Option<u64>, purged_before: u64) -> Result<(), String> {
        ensure!(self.offset_next < u64::MAX, "offsets exhausted");
        let mut offset = self.offset_first;
        let mut previous: Option<u64> = None;
        for run in self.runs.iter() {
            ensure!(run.count > 0, "empty run at index {}", run.log_index);
            ensure!(
                run.offset_first == offset,
                "runs not contiguous at offset {offset}"
            );
            // Checked before `offset_next` adds, which must not overflow.
            ensure!(
                offset <= self.offset_next && u64::from(run.count) <= self.offset_next - offset,
                "run at index {} passes the head",
                run.log_index
            );
            ensure!(
                previous.is_none_or(|p| p < run.log_index),
                "run log indexes not increasing at {}",
                run.log_index
            );
            ensure!(run.log_index >= purged_before, "run below the purge point");
            ensure!(
                last_applied.is_some_and(|last| run.log_index <= last),
                "run at index {} not yet applied",
                run.log_index
            );
            ensure!(
                run.skipped.windows(2).all(|w| w[0] < w[1]),
                "skipped positions not ascending at index {}",
                run.log_index
            );
            // The last position of the run is an appended event.
            let positions = u64::from(run.count) + run.skipped.len() as u64;
            ensure!(
                run.skipped
                    .last()
                    .is_none_or(|&p| u64::from(p) + 1 < positions),
                "skipped positions past the run's last event at index {}",
                run.log_index
            );
            offset = run.offset_next();
            previous = Some(run.log_index);
        }
        ensure!(
            offset == self.offset_next,
            "runs end at {offset}, head is {}",
            self.offset_next
        );
        Ok(())
    }
}

/// A topic and its partitions' indexes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Topic {
    pub(super) info: TopicInfo,
    pub(super) partitions: Vec<PartitionIndex>,
}

/// A partition, named by topic id (creation order) and partition number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub(super) struct Slot {
    pub(super) topic_id: u32,
    pub(super) partition: u32,
}

/// All topics.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Topics {
    ids: BTreeMap<String, u32>,
    list: Vec<Topic>,
    partitions_total: u32,
}

impl Topics {
    pub(super) fn create(
        &mut self,
        name: &str,
        partitions: u32,
        config: &TopicConfig,
        now_ms: u64,
    ) -> Result<(), StateError> {
        check_topic_name(name.as_bytes()).map_err(|error| StateError::TopicName {
            name: name.to_owned(),
            error,
        })?;
        if partitions == 0 || partitions > PARTITIONS_MAX {
            return Err(StateError::PartitionCount { partitions });
        }
        if let Some(existing) = self.get(name) {
            let info = &existing.info;
            if info.partitions == partitions && info.config == *config {
                return Ok(()); // A retried create: same answer as the first.
            }
            return Err(StateError::TopicExists {
                name: name.to_owned(),
                partitions: info.partitions,
                config: info.config,
            });
        }
        if self.list.len() >= TOPICS_MAX {
            return Err(StateError::TooManyTopics);
        }
        if partitions > PARTITIONS_TOTAL_MAX - self.partitions_total {
            return Err(StateError::TooManyPartitions {
                total: self.partitions_total,
                requested: partitions,
            });
        }
        let id = self.list.len() as u32;
        self.ids.insert(name.to_owned(), id);
        self.list.push(Topic {
            info: TopicInfo {
                name: name.to_owned(),
                partitions,
                config: *config,
                created_ms: now_ms,
            },
            partitions: vec![PartitionIndex::default(); partitions as usize],
        });
        self.partitions_total += partitions;
        Ok(())
    }

    /// Changes a topic's retention: each `Some` replaces that limit.
    /// Returns the topic's configuration after the change.
    pub(super) fn alter(
        &mut self,
        name: &str,
        retention_ms: Option<Option<u64>>,
        retention_bytes: Option<Option<u64>>,
    ) -> Result<TopicConfig, StateError> {
        let Some(&id) = self.ids.get(name) else {
            return Err(StateError::UnknownTopic {
                topic: name.to_owned(),
            });
        };
        let config = &mut self.list[id as usize].info.config;
        if let Some(retention_ms) = retention_ms {
            config.retention_ms = retention_ms;
        }
        if let Some(retention_bytes) = retention_bytes {
            config.retention_bytes = retention_bytes;
        }
        Ok(*config)
    }

    pub(super) fn get(&self, name: &str) -> Option<&Topic> {
        self.ids.get(name).map(|&id| &self.list[id as usize])
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = &TopicInfo> {
        self.ids.values().map(|&id| &self.list[id as usize].info)
    }

    pub(super) fn partition(&self, name: &str, partition: u32) -> Option<&PartitionIndex> {
        self.get(name)?.partitions.get(partition as usize)
    }

    pub(super) fn index(&self, slot: Slot) -> &PartitionIndex {
        &self.list[slot.topic_id as usize].partitions[slot.partition as usize]
    }

    pub(super) fn index_mut(&mut self, slot: Slot) -> &mut PartitionIndex {
        &mut self.list[slot.topic_id as usize].partitions[slot.partition as usize]
    }

    /// The slot of an event's partition, or why it has none.
    pub(super) fn slot(&self, topic: &str, partition: u32) -> Result<Slot, PublishError> {
        let Some(&topic_id) = self.ids.get(topic) else {
            return Err(PublishError::UnknownTopic {
                topic: topic.to_owned(),
            });
        };
        let partitions = self.list[topic_id as usize].info.partitions;
        if partition >= partitions {
            return Err(PublishError::UnknownPartition {
                topic: topic.to_owned(),
                partition,
                partitions,
            });
        }
        Ok(Slot {
            topic_id,
            partition,
        })
    }

    /// Whether `slot` names an existing partition.
    pub(super) fn contains(&self, slot: Slot) -> bool {
        self.list
            .get(slot.topic_id as usize)
            .is_some_and(|topic| slot.partition < topic.info.partitions)
    }

    pub(super) fn retain(&mut self, log_index_before: u64) {
        for topic in &mut self.list {
            for index in &mut topic.partitions {
                index.retain(log_index_before);
            }
        }
    }

    pub(super) fn check(
        &self,
        last_applied: Option<u64>,
        purged_before: u64,
    ) -> Result<(), String> {
        ensure!(
            self.ids.len() == self.list.len(),
            "topic name map and list differ"
        );
        ensure!(self.list.len() <= TOPICS_MAX, "too many topics");
        let mut total: u64 = 0;
        for (id, topic) in self.list.iter().enumerate() {
            let info = &topic.info;
            ensure!(
                self.ids.get(&info.name) == Some(&(id as u32)),
                "topic {} id mismatch",
                info.name
            );
            ensure!(
                check_topic_name(info.name.as_bytes()).is_ok(),
                "invalid topic name"
            );
            ensure!(
                (1..=PARTITIONS_MAX).contains(&info.partitions)
                    && topic.partitions.len() == info.partitions as usize,
                "topic {} partition count mismatch",
                info.name
            );
            total += u64::from(info.partitions);
            for (p, index) in topic.partitions.iter().enumerate() {
                index
                    .check(last_applied, purged_before)
                    .map_err(|reason| format!("{}/{p}: {reason}", info.name))?;
            }
        }
        ensure!(
            total == u64::from(self.partitions_total),
            "partition total mismatch"
        );
        ensure!(
            total <= u64::from(PARTITIONS_TOTAL_MAX),
            "too many partitions"
        );
        Ok(())
    }
}

/// The runs one entry is building, one per partition it touches.
#[derive(Debug, Default)]
pub(super) struct EntryRuns {
    pending: BTreeMap<Slot, PendingRun>,
}

#[derive(Debug, Default)]
struct PendingRun {
    /// Events of this partition seen so far in the entry.
    seen: u32,
    offset_first: Option<u64>,
    count: u32,
    position_last_appended: u32,
    skipped: Vec<u32>,
}

impl EntryRuns {
    /// Counts one more event of `slot`; returns its position.
    pub(super) fn next_position(&mut self, slot: Slot) -> u32 {
        let pending = self.pending.entry(slot).or_default();
        pending.seen += 1;
        pending.seen - 1
    }

    pub(super) fn appended(&mut self, slot: Slot, position: u32, offset: u64) {
        let pending = self.pending.get_mut(&slot).expect("position counted first");
        let first = *pending.offset_first.get_or_insert(offset);
        assert_eq!(
            first + u64::from(pending.count),
            offset,
            "offsets of one entry are consecutive"
        );
        pending.count += 1;
        pending.position_last_appended = position;
    }

    pub(super) fn skipped(&mut self, slot: Slot, position: u32) {
        let pending = self.pending.get_mut(&slot).expect("position counted first");
        pending.skipped.push(position);
    }

    /// Pushes the entry's runs into the index.
    pub(super) fn finish(self, log_index: u64, topics: &mut Topics) {
        for (slot, pending) in self.pending {
            if let Some(offset_first) = pending.offset_first {
                // Skipped events after the last appended one never need
                // telling apart: a reader stops after `count` events.
                let mut skipped = pending.skipped;
                let last = pending.position_last_appended;
                skipped.truncate(skipped.partition_point(|&p| p < last));
                let index = topics.index_mut(slot);
                index.push_run(log_index, offset_first, pending.count, skipped);
            }
        }
    }
}

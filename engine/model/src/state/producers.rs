//! Producer sessions: ids, epochs and per-partition sequences, for
//! idempotent publishing.
//!
//! A producer numbers its events per (topic, partition) from 0 within its
//! current epoch. The state machine appends sequence `next` and advances;
//! answers a lower sequence with the offset it got the first time (a
//! retry), as long as it is within the last [`DEDUPE_WINDOW`] sequences;
//! refuses a higher one (a gap). An `InitProducer` with a known name bumps
//! the epoch, fencing the older instance, and starts every sequence again
//! from 0.
//!
//! Invariants:
//! - ids are allocated from a counter that never goes back, so an id is
//!   never reused, even after its producer expired;
//! - a session's window covers exactly the sequences
//!   `[next - min(next, DEDUPE_WINDOW), next)`, in contiguous runs of
//!   (sequence, offset) pairs whose offsets both step by one;
//! - the name map and the producers' names agree.
//!
//! The table is bounded by [`PRODUCERS_MAX`]; when it is full, producers
//! idle for [`PRODUCER_IDLE_MS_MIN`] (judged by command timestamps) are
//! expired to make room. An expired producer's next event is refused as
//! `UnknownProducer`; it must initialise again.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::event::ProducerStamp;

use super::response::{NameKind, PublishError, StateError};
use super::topics::{Slot, Topics};
use super::{DEDUPE_WINDOW, PRODUCER_IDLE_MS_MIN, PRODUCERS_MAX, check_name, ensure};

/// What the state machine knows of a producer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProducerInfo {
    /// Current epoch; events with an older one are fenced.
    pub epoch: u32,
    /// The stable name it was initialised with, if any.
    pub name: Option<String>,
    /// Timestamp of the last command that initialised it or appended one
    /// of its events.
    pub last_active_ms: u64,
}

/// How an event's sequence relates to what was appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Sequencing {
    /// The next sequence: append it.
    Next,
    /// Appended before, at `offset`.
    Duplicate { offset: u64 },
    /// A repeat of an earlier event of the same, not yet applied, entry
    /// (only seen by dry runs).
    PendingDuplicate,
}

/// (sequence, offset) pairs `(sequence_first + i, offset_first + i)` for
/// `i < count`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct SequenceRun {
    sequence_first: u64,
    offset_first: u64,
    count: u32,
}

impl SequenceRun {
    fn sequence_next(&self) -> u64 {
        self.sequence_first + u64::from(self.count)
    }
}

/// One producer's state in one partition.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Session {
    sequence_next: u64,
    window: VecDeque<SequenceRun>,
}

impl Session {
    fn record(&mut self, sequence: u64, offset: u64) {
        assert_eq!(sequence, self.sequence_next);
        self.sequence_next += 1;
        match self.window.back_mut() {
            Some(run)
                if run.sequence_next() == sequence
                    && run.offset_first + u64::from(run.count) == offset =>
            {
                run.count += 1;
            }
            _ => self.window.push_back(SequenceRun {
                sequence_first: sequence,
                offset_first: offset,
                count: 1,
            }),
        }
        self.trim();
    }

    /// Forgets sequences older than the window.
    fn trim(&mut self) {
        let window_first = self.sequence_next.saturating_sub(DEDUPE_WINDOW);
        while let Some(front) = self.window.front_mut() {
            if front.sequence_next() <= window_first {
                self.window.pop_front();
            } else {
                let drop = window_first.saturating_sub(front.sequence_first);
                front.sequence_first += drop;
                front.offset_first += drop;
                front.count -= drop as u32;
                break;
            }
        }
    }

    /// The original offset of an appended `sequence` (below `next`).
    fn lookup(&self, sequence: u64) -> Result<Sequencing, PublishError> {
        debug_assert!(sequence < self.sequence_next);
        let window_first = self
            .window
            .front()
            .map_or(self.sequence_next, |run| run.sequence_first);
        if sequence < window_first {
            return Err(PublishError::DuplicateTooOld {
                sequence,
                window_first,
            });
        }
        let at = self
            .window
            .partition_point(|run| run.sequence_next() <= sequence);
        let run = &self.window[at];
        Ok(Sequencing::Duplicate {
            offset: run.offset_first + (sequence - run.sequence_first),
        })
    }

    fn check(&self) -> Result<(), String> {
        let covered = self.sequence_next.min(DEDUPE_WINDOW);
        let mut sequence = self.sequence_next - covered;
        for run in &self.window {
            ensure!(run.count > 0, "empty sequence run");
            ensure!(
                run.sequence_first == sequence,
                "sequence window not contiguous"
            );
            ensure!(
                u64::from(run.count) <= self.sequence_next - sequence,
                "sequence run passes next"
            );
            sequence = run.sequence_next();
        }
        ensure!(
            sequence == self.sequence_next,
            "sequence window does not end at next"
        );
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Producer {
    info: ProducerInfo,
    sessions: BTreeMap<Slot, Session>,
}

/// All producers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Producers {
    id_next: u64,
    by_id: BTreeMap<u64, Producer>,
    by_name: BTreeMap<String, u64>,
}

impl Default for Producers {
    fn default() -> Self {
        // Id 0 is never allocated, so a zeroed stamp is always refused.
        Producers {
            id_next: 1,
            by_id: BTreeMap::new(),
            by_name: BTreeMap::new(),
        }
    }
}

impl Producers {
    /// Allocates an id, or bumps the epoch of a named producer.
    pub(super) fn init(
        &mut self,
        name: Option<&str>,
        now_ms: u64,
    ) -> Result<(u64, u32), StateError> {
        if let Some(name) = name {
            check_name(NameKind::Producer, name)?;
            if let Some(&id) = self.by_name.get(name) {
                let producer = self.by_id.get_mut(&id).expect("names map to producers");
                let info = &mut producer.info;
                info.epoch = info
                    .epoch
                    .checked_add(1)
                    .ok_or(StateError::EpochExhausted { id })?;
                info.last_active_ms = now_ms;
                // The new instance cannot know the old one's sequences.
                producer.sessions.clear();
                return Ok((id, info.epoch));
            }
        }
        self.make_room(now_ms)?;
        let id = self.id_next;
        self.id_next += 1;
        let info = ProducerInfo {
            epoch: 0,
            name: name.map(str::to_owned),
            last_active_ms: now_ms,
        };
        self.by_id.insert(
            id,
            Producer {
                info,
                sessions: BTreeMap::new(),
            },
        );
        if let Some(name) = name {
            self.by_name.insert(name.to_owned(), id);
        }
        Ok((id, 0))
    }

    /// At the limit, expires every producer idle long enough.
    fn make_room(&mut self, now_ms: u64) -> Result<(), StateError> {
        if self.by_id.len() < PRODUCERS_MAX {
            return Ok(());
        }
        let idle =
            |p: &Producer| now_ms.saturating_sub(p.info.last_active_ms) >= PRODUCER_IDLE_MS_MIN;
        let expired: Vec<u64> = self
            .by_id
            .iter()
            .filter(|(_, producer)| idle(producer))
            .map(|(&id, _)| id)
            .collect();
        if expired.is_empty() {
            return Err(StateError::TooManyProducers);
        }
        for id in expired {
            let producer = self.by_id.remove(&id).expect("listed above");
            if let Some(name) = producer.info.name {
                self.by_name.remove(&name);
            }
        }
        Ok(())
    }

    pub(super) fn get(&self, id: u64) -> Option<&ProducerInfo> {
        self.by_id.get(&id).map(|producer| &producer.info)
    }

    pub(super) fn id_of(&self, name: &str) -> Option<u64> {
        self.by_name.get(name).copied()
    }

    /// The next sequence the producer may publish to `slot`.
    pub(super) fn sequence_next(&self, id: u64, slot: Slot) -> Option<u64> {
        let producer = self.by_id.get(&id)?;
        Some(producer.sessions.get(&slot).map_or(0, |s| s.sequence_next))
    }

    /// Classifies an event without changing anything. `pending_next`
    /// overrides the session's next sequence for dry runs that have
    /// accepted earlier events of the same entry.
    pub(super) fn check(
        &self,
        stamp: &ProducerStamp,
        slot: Slot,
        pending_next: Option<u64>,
    ) -> Result<Sequencing, PublishError> {
        let id = stamp.id;
        let producer = self
            .by_id
            .get(&id)
            .ok_or(PublishError::UnknownProducer { id })?;
        let (current, got) = (producer.info.epoch, stamp.epoch);
        if got < current {
            return Err(PublishError::ProducerFenced { id, current, got });
        }
        if got > current {
            return Err(PublishError::UnknownEpoch { id, current, got });
        }
        let session = producer.sessions.get(&slot);
        let recorded_next = session.map_or(0, |s| s.sequence_next);
        let expected = pending_next.unwrap_or(recorded_next);
        let sequence = stamp.sequence;
        if sequence == expected {
            Ok(Sequencing::Next)
        } else if sequence > expected {
            Err(PublishError::OutOfOrderSequence {
                expected,
                got: sequence,
            })
        } else if sequence >= recorded_next {
            Ok(Sequencing::PendingDuplicate)
        } else {
            session
                .expect("a recorded sequence has a session")
                .lookup(sequence)
        }
    }

    /// Records an appended event; `check` said `Next`.
    pub(super) fn record(&mut self, stamp: &ProducerStamp, slot: Slot, offset: u64, now_ms: u64) {
        let producer = self.by_id.get_mut(&stamp.id).expect("checked producer");
        assert_eq!(producer.info.epoch, stamp.epoch);
        producer.info.last_active_ms = now_ms;
        producer
            .sessions
            .entry(slot)
            .or_default()
            .record(stamp.sequence, offset);
    }

    pub(super) fn check_invariants(&self, topics: &Topics) -> Result<(), String> {
        ensure!(self.by_id.len() <= PRODUCERS_MAX, "too many producers");
        ensure!(self.id_next >= 1, "producer id 0 allocated");
        ensure!(self.id_next < u64::MAX, "producer ids exhausted");
        for (&id, producer) in &self.by_id {
            ensure!(
                id >= 1 && id < self.id_next,
                "producer id {id} not allocated"
            );
            if let Some(name) = &producer.info.name {
                ensure!(
                    self.by_name.get(name) == Some(&id),
                    "producer name {name} not mapped"
                );
            }
            for (&slot, session) in &producer.sessions {
                ensure!(
                    topics.contains(slot),
                    "producer {id} has a session on a missing partition"
                );
                let head = topics.index(slot).range().1;
                ensure!(
                    session.window.iter().all(|run| run
                        .offset_first
                        .checked_add(u64::from(run.count))
                        .is_some_and(|end| end <= head)),
                    "producer {id} remembers offsets past the head"
                );
                session
                    .check()
                    .map_err(|reason| format!("producer {id}: {reason}"))?;
            }
        }
        ensure!(
            self.by_name.len() <= self.by_id.len(),
            "more names than producers"
        );
        for (name, id) in &self.by_name {
            let named = self.by_id.get(id).and_then(|p| p.info.name.as_deref());
            ensure!(
                named == Some(name.as_str()),
                "name {name} maps to the wrong producer"
            );
        }
        Ok(())
    }
}

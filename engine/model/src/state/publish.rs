//! Applying events: plain publishes and transactions.
//!
//! A publish handles its events one by one, in batch order: each is
//! appended, answered as a duplicate, or rejected on its own, so FIFO order
//! within a partition is the batch order of the events that were appended.
//!
//! A transaction is all or nothing. It first classifies every event
//! without changing anything (a dry run that tracks the sequences its own
//! earlier events would consume), then:
//! - any event that would be rejected refuses the whole transaction;
//! - if every event is a duplicate, the transaction is a retry of one that
//!   was applied: its original offsets are answered and nothing is applied
//!   again. Its commit is neither checked nor re-applied: the original
//!   entry applied it together with the events, and applying it again
//!   could move the group's offsets back over later commits (or be
//!   refused as stale after a rebalance, wrongly reporting a failure);
//! - a mix of duplicates and new events is refused: it is not a retry of
//!   one transaction, so it cannot be applied atomically;
//! - otherwise the commit is checked, and only if it is valid are the
//!   events appended and the commit applied.
//!
//! A transaction without events is never a retry: its commit is checked
//! and applied like `CommitOffsets`.

use std::collections::BTreeMap;

use crate::event::{EventBatch, EventView};

use super::State;
use super::command::OffsetCommit;
use super::producers::Sequencing;
use super::response::{EventOutcome, TxnError};
use super::topics::{EntryRuns, Slot};
#[cfg(feature = "planted-bugs")]
use crate::testing::planted::{self, Bug};

impl State {
    /// Applies every event of `batch` that can be appended.
    pub(super) fn publish(
        &mut self,
        log_index: u64,
        now_ms: u64,
        batch: &EventBatch,
    ) -> Vec<EventOutcome> {
        let mut entry = EntryRuns::default();
        let mut outcomes = Vec::with_capacity(batch.len());
        for view in batch {
            outcomes.push(self.publish_one(&view, now_ms, &mut entry));
        }
        entry.finish(log_index, &mut self.topics);
        outcomes
    }

    fn publish_one(
        &mut self,
        view: &EventView<'_>,
        now_ms: u64,
        entry: &mut EntryRuns,
    ) -> EventOutcome {
        let partition = view.partition();
        let slot = match self.topics.slot(view.topic(), partition) {
            Ok(slot) => slot,
            Err(error) => return EventOutcome::Rejected(error),
        };
        let position = entry.next_position(slot);
        let stamp = view.producer();
        match self.producers.check(&stamp, slot, None) {
            Ok(Sequencing::Next) => {
                let offset = self.topics.index_mut(slot).offset_take();
                self.producers.record(&stamp, slot, offset, now_ms);
                entry.appended(slot, position, offset);
                EventOutcome::Appended { partition, offset }
            }
            Ok(Sequencing::Duplicate { offset }) => {
                #[cfg(feature = "planted-bugs")]
                if planted::is_planted(Bug::SkipProducerDedup) {
                    let offset = self.topics.index_mut(slot).offset_take();
                    entry.appended(slot, position, offset);
                    return EventOutcome::Appended { partition, offset };
                }
                entry.skipped(slot, position);
                EventOutcome::Duplicate { partition, offset }
            }
            Ok(Sequencing::PendingDuplicate) => {
                unreachable!("a publish records each event before checking the next")
            }
            Err(error) => {
                entry.skipped(slot, position);
                EventOutcome::Rejected(error)
            }
        }
    }

    /// Applies a transaction, all or nothing (see the module doc).
    pub(super) fn transaction(
        &mut self,
        log_index: u64,
        now_ms: u64,
        events: &EventBatch,
        commit: &OffsetCommit,
    ) -> Result<Vec<EventOutcome>, TxnError> {
        let verdicts = self.dry_run(events)?;
        let new = verdicts
            .iter()
            .filter(|v| matches!(v, Verdict::New))
            .count() as u32;
        let duplicates = verdicts.len() as u32 - new;
        if duplicates > 0 && new == 0 {
            // A retry. A pending duplicate needs a new event before it, so
            // every verdict here is a duplicate with its original offset.
            let originals = verdicts.iter().map(|verdict| match *verdict {
                Verdict::Duplicate { partition, offset } => {
                    EventOutcome::Duplicate { partition, offset }
                }
                Verdict::New | Verdict::PendingDuplicate => unreachable!("no new event"),
            });
            return Ok(originals.collect());
        }
        if duplicates > 0 {
            return Err(TxnError::PartialDuplicate { duplicates, new });
        }
        self.groups
            .check_commit(&self.topics, commit)
            .map_err(TxnError::Commit)?;
        let outcomes = self.publish(log_index, now_ms, events);
        assert!(
            outcomes
                .iter()
                .all(|o| matches!(o, EventOutcome::Appended { .. })),
            "the dry run accepted every event"
        );
        self.groups.apply_commit(commit, now_ms);
        Ok(outcomes)
    }

    /// Classifies every event of a transaction without changing anything.
    fn dry_run(&self, events: &EventBatch) -> Result<Vec<Verdict>, TxnError> {
        // Next sequence per (producer, partition) after this batch's own
        // earlier events.
        let mut pending: BTreeMap<(u64, Slot), u64> = BTreeMap::new();
        let mut verdicts = Vec::with_capacity(events.len());
        for (index, view) in (0u32..).zip(events) {
            let refuse = |error| TxnError::Event { index, error };
            let partition = view.partition();
            let slot = self.topics.slot(view.topic(), partition).map_err(refuse)?;
            let stamp = view.producer();
            let key = (stamp.id, slot);
            let sequencing = self
                .producers
                .check(&stamp, slot, pending.get(&key).copied())
                .map_err(refuse)?;
            verdicts.push(match sequencing {
                Sequencing::Next => {
                    pending.insert(key, stamp.sequence + 1);
                    Verdict::New
                }
                Sequencing::Duplicate { offset } => Verdict::Duplicate { partition, offset },
                Sequencing::PendingDuplicate => Verdict::PendingDuplicate,
            });
        }
        Ok(verdicts)
    }
}

/// What a dry run predicts for one event.
#[derive(Debug, Clone, Copy)]
enum Verdict {
    New,
    Duplicate { partition: u32, offset: u64 },
    PendingDuplicate,
}

//! A partition's runs, oldest first, in chunks shared behind `Arc`, so that
//! cloning the state (a snapshot does, under the state machine's lock)
//! copies at most one partly filled chunk per partition, not every run.
//!
//! Before this, a snapshot cloned and encoded every run of every partition
//! on the state machine's task: at 100,000 events/s that was 10–17 ms every
//! second or so (4–7 MB of runs), during which nothing was applied, and on
//! a current-thread runtime nothing else ran either.
//!
//! Invariants:
//! - every chunk in `sealed` holds exactly [`CHUNK`] runs and is never
//!   changed after it is sealed (clones share it);
//! - `skip < CHUNK` runs of `sealed[0]` are purged; `skip == 0` when
//!   `sealed` is empty;
//! - `open` holds fewer than [`CHUNK`] runs.
//!
//! Serialized as a plain sequence of runs, as the `VecDeque<Run>` it
//! replaces was, so snapshots keep their format.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::event::{EventBatch, EventView};

/// Runs per sealed chunk: a clone copies fewer than this many runs per
/// partition, and a partition holds about one chunk pointer per this many.
const CHUNK: usize = 128;

#[derive(Clone, Default)]
pub(super) struct Runs {
    sealed: VecDeque<Arc<[Run]>>,
    skip: usize,
    open: Vec<Run>,
}

impl Runs {
    pub(super) fn len(&self) -> usize {
        self.sealed.len() * CHUNK - self.skip + self.open.len()
    }

    pub(super) fn get(&self, index: usize) -> Option<&Run> {
        let at = index + self.skip;
        let sealed = self.sealed.len() * CHUNK;
        if at < sealed {
            Some(&self.sealed[at / CHUNK][at % CHUNK])
        } else {
            self.open.get(at - sealed)
        }
    }

    pub(super) fn front(&self) -> Option<&Run> {
        self.get(0)
    }

    pub(super) fn back(&self) -> Option<&Run> {
        // A sealed chunk is never fully purged while it is kept.
        self.open
            .last()
            .or_else(|| self.sealed.back().and_then(|chunk| chunk.last()))
    }

    pub(super) fn push_back(&mut self, run: Run) {
        self.open.push(run);
        if self.open.len() == CHUNK {
            let chunk: Arc<[Run]> = std::mem::take(&mut self.open).into();
            self.sealed.push_back(chunk);
        }
    }

    /// Drops the oldest run, if any.
    pub(super) fn pop_front(&mut self) {
        if self.sealed.is_empty() {
            if !self.open.is_empty() {
                self.open.remove(0);
            }
            return;
        }
        self.skip += 1;
        if self.skip == CHUNK {
            self.sealed.pop_front();
            self.skip = 0;
        }
    }

    /// The number of leading runs for which `pred` holds (`pred` must hold
    /// for a prefix and not after it), as `slice::partition_point`.
    pub(super) fn partition_point(&self, pred: impl Fn(&Run) -> bool) -> usize {
        let (mut low, mut high) = (0, self.len());
        while low < high {
            let middle = low + (high - low) / 2;
            if pred(self.get(middle).expect("below len")) {
                low = middle + 1;
            } else {
                high = middle;
            }
        }
        low
    }

    /// The runs from index `start` on.
    pub(super) fn iter_from(&self, start: usize) -> impl Iterator<Item = &Run> {
        (start..self.len()).map(|index| self.get(index).expect("below len"))
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = &Run> {
        self.iter_from(0)
    }
}

impl PartialEq for Runs {
    fn eq(&self, other: &Runs) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for Runs {}

impl fmt::Debug for Runs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl Serialize for Runs {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.iter())
    }
}

impl<'de> Deserialize<'de> for Runs {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Runs, D::Error> {
        let list = Vec::<Run>::deserialize(deserializer)?;
        let mut runs = Runs::default();
        for run in list {
            runs.push_back(run);
        }
        Ok(runs)
    }
}

/// Consecutive offsets of one partition that live in one log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Run {
    pub(super) offset_first: u64,
    pub(super) count: u32,
    pub(super) log_index: u64,
    pub(super) skipped: Box<[u32]>,
}

impl Run {
    #[cfg(test)]
    pub(super) fn new(offset_first: u64, count: u32, log_index: u64, skipped: Box<[u32]>) -> Run {
        Run {
            offset_first,
            count,
            log_index,
            skipped,
        }
    }

    /// The first offset of the run.
    pub fn offset_first(&self) -> u64 {
        self.offset_first
    }

    /// One past the last offset of the run.
    pub fn offset_next(&self) -> u64 {
        self.offset_first + u64::from(self.count)
    }

    /// Number of offsets (appended events) in the run.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// The entry holding the events.
    pub fn log_index(&self) -> u64 {
        self.log_index
    }

    /// Positions (among this partition's events in the entry) of events
    /// that were not appended, ascending.
    pub fn skipped(&self) -> &[u32] {
        &self.skipped
    }

    /// The position of `offset` among this partition's events in the
    /// entry, if the run holds it.
    pub fn position(&self, offset: u64) -> Option<u32> {
        if offset < self.offset_first || offset >= self.offset_next() {
            return None;
        }
        // The k-th appended event sits after every skipped position that
        // precedes it.
        let mut position = (offset - self.offset_first) as u32;
        for &skipped in self.skipped.iter() {
            if skipped > position {
                break;
            }
            position += 1;
        }
        Some(position)
    }

    /// The run's events with their offsets, picked out of the entry's
    /// batch (zero-copy views).
    pub fn select<'a>(
        &'a self,
        topic: &'a str,
        partition: u32,
        batch: &'a EventBatch,
    ) -> impl Iterator<Item = (u64, EventView<'a>)> + 'a {
        let mut skipped = self.skipped.iter().copied().peekable();
        batch
            .iter()
            .filter(move |view| view.partition() == partition && view.topic() == topic)
            .enumerate()
            .filter(move |&(position, _)| {
                let is_skipped = skipped.peek() == Some(&(position as u32));
                if is_skipped {
                    skipped.next();
                }
                !is_skipped
            })
            .take(self.count as usize)
            .zip(self.offset_first..)
            .map(|((_, view), offset)| (offset, view))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(offset_first: u64) -> Run {
        Run::new(offset_first, 1, offset_first + 1, Box::new([]))
    }

    fn three_chunks_and_five() -> Runs {
        let mut runs = Runs::default();
        for offset in 0..(3 * CHUNK as u64 + 5) {
            runs.push_back(run(offset));
        }
        runs
    }

    /// Random pushes, purges and lookups against a `VecDeque`, across chunk
    /// boundaries, with clones taken along the way that must not change
    /// when the original does.
    #[test]
    fn behaves_as_a_deque_and_clones_are_independent() {
        let mut runs = Runs::default();
        let mut model: VecDeque<Run> = VecDeque::new();
        let mut clones: Vec<(Runs, VecDeque<Run>)> = Vec::new();
        let mut next = 0u64;
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        for step in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            // Pushes outnumber purges, so chunks fill, seal and drain.
            if seed % 5 < 3 {
                runs.push_back(run(next));
                model.push_back(run(next));
                next += 1;
            } else {
                runs.pop_front();
                model.pop_front();
            }
            assert_eq!(runs.len(), model.len());
            assert_eq!(runs.front(), model.front());
            assert_eq!(runs.back(), model.back());
            if let Some(probe) = (seed >> 8).checked_rem(next.max(1)) {
                let expected = model.partition_point(|r| r.offset_first() < probe);
                assert_eq!(runs.partition_point(|r| r.offset_first() < probe), expected);
                assert!(runs.iter_from(expected).eq(model.range(expected..)));
            }
            if step % 997 == 0 {
                clones.push((runs.clone(), model.clone()));
            }
        }
        assert!(runs.iter().eq(model.iter()));
        for (clone, at_clone) in &clones {
            assert!(clone.iter().eq(at_clone.iter()));
        }
        let bytes = postcard::to_allocvec(&runs).expect("encodes");
        let as_deque = postcard::to_allocvec(&model).expect("encodes");
        assert_eq!(bytes, as_deque, "same wire format as VecDeque<Run>");
        let back: Runs = postcard::from_bytes(&bytes).expect("decodes");
        assert_eq!(back, runs);
    }

    /// What makes a snapshot cheap: a clone shares every sealed chunk.
    #[test]
    fn clones_share_sealed_chunks() {
        let mut runs = three_chunks_and_five();
        runs.pop_front();
        let clone = runs.clone();
        assert_eq!(clone.sealed.len(), 3);
        for (mine, theirs) in runs.sealed.iter().zip(&clone.sealed) {
            assert!(Arc::ptr_eq(mine, theirs));
        }
        assert_eq!(clone, runs);
    }

    #[test]
    fn purging_everything_leaves_it_empty_and_usable() {
        let mut runs = three_chunks_and_five();
        while runs.len() > 0 {
            runs.pop_front();
        }
        runs.pop_front();
        assert_eq!((runs.len(), runs.front(), runs.back()), (0, None, None));
        runs.push_back(run(7));
        assert_eq!(runs.front().map(Run::offset_first), Some(7));
    }
}

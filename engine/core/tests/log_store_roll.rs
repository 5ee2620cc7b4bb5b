//! The log store rolls to a new segment before an append that does not fit
//! in what is left of the active one (`Log::roll_due`, then `Log::roll` on
//! the blocking pool, off the Raft core's worker thread), so a batch of
//! entries never straddles two segments unless it is larger than a whole
//! segment; a roll inside `Log::append` would split it at the boundary.

use std::sync::Arc;

use openraft::storage::{IOFlushed, RaftLogStorage};
use sluice_core::io::os::{OsClock, OsDisk, OsEnv};
use sluice_core::log::{Log, Options, Prewrite, Record};
use sluice_core::raft::{Durability, Entry, LogStore, log_id};

const SEGMENT: u64 = 4096;
/// Entries per batch, in turn: segment boundaries that fall between
/// batches by chance cannot pass for batches kept whole.
const BATCH_SIZES: [u64; 4] = [2, 3, 5, 7];
const BATCHES: usize = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_that_does_not_fit_goes_whole_into_the_next_segment() {
    for prewrite in [Prewrite::Off, Prewrite::Spare] {
        let dir = tempfile::tempdir().unwrap();
        let options = Options {
            segment_size: SEGMENT,
            prewrite,
            ..Options::default()
        };
        let mut store = LogStore::<OsEnv>::open(
            OsDisk::open(dir.path()).unwrap(),
            Arc::new(OsClock::new()),
            options.clone(),
            Durability::Sync,
        )
        .unwrap();
        // The index each batch starts at, and the one after the last.
        let mut starts = vec![1];
        for batch in 0..BATCHES {
            let first = *starts.last().unwrap();
            let entries: Vec<Entry> = (0..BATCH_SIZES[batch % BATCH_SIZES.len()])
                .map(|i| Entry {
                    log_id: log_id(1, first + i),
                    payload: openraft::EntryPayload::Blank,
                })
                .collect();
            starts.push(first + entries.len() as u64);
            store.append(entries, IOFlushed::noop()).await.unwrap();
        }
        let end = *starts.last().unwrap();
        drop(store);

        let log = Log::open(
            OsDisk::open(dir.path()).unwrap(),
            Arc::new(OsClock::new()),
            options,
        )
        .unwrap();
        let segments = log.segments();
        let sealed: Vec<_> = segments.iter().filter(|s| s.sealed).collect();
        assert!(
            sealed.len() >= 5,
            "prewrite {prewrite:?}: {} segments",
            segments.len()
        );
        for segment in &sealed {
            assert!(
                starts.contains(&segment.first) && starts.contains(&segment.next),
                "prewrite {prewrite:?}: a batch split across segments: {segment:?}"
            );
            assert!(segment.size <= SEGMENT, "{segment:?}");
        }
        let mut records: Vec<Record> = Vec::new();
        log.read(1..log.next_index(), &mut records).unwrap();
        let indexes: Vec<u64> = records.iter().map(|r| r.index).collect();
        assert_eq!(indexes, (1..end).collect::<Vec<_>>());
    }
}

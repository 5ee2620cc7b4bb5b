//! Entry points for fuzz targets (feature `testing`). `fuzz/` drives them
//! with libFuzzer; `engine/tests/fuzz_corpus.rs` replays the checked-in
//! corpus through the same functions, so `cargo test` covers them on a
//! stable toolchain.
//!
//! Each function must return normally for every input: a panic is a bug.
//! Allocation is bounded by the input size (the frame decoder never trusts
//! a length field beyond the bytes it was given).

use std::sync::Arc;
use std::time::UNIX_EPOCH;

use crate::io::{CrashDisk, Disk, ManualClock};

use super::{Entry, Log, Options, PersistMode, RecoveryMode, frame, meta, segment};

/// Decodes arbitrary bytes as frames, one after another.
pub fn frame_decode(data: &[u8]) {
    let scan = segment::scan(data, 0);
    assert!(scan.end as usize <= data.len());
    if scan.stop.is_none() {
        assert_eq!(scan.end as usize, data.len());
    }
    if let Ok(header) = frame::decode(data) {
        assert!(header.size as usize <= data.len());
        assert_ne!(header.kind, 0);
    }
}

/// Opens a log whose segment files hold arbitrary bytes, in both recovery
/// modes, then reads, verifies, appends and reopens.
///
/// Input layout: byte 0 chooses where to split the rest into two segment
/// files (0 means one file); bytes 1..9, if present, give the second
/// segment's first index.
pub fn segment_recovery(data: &[u8]) {
    for mode in [RecoveryMode::TolerateCorruptTail, RecoveryMode::Repair] {
        let disk = plant(data);
        let clock = Arc::new(ManualClock::new(UNIX_EPOCH));
        let options = Options {
            recovery: mode,
            ..Options::default()
        };
        let mut log = match Log::open(disk.clone(), clock.clone(), options.clone()) {
            Ok(log) => log,
            // An old-format directory is refused in every mode: repair
            // must not cut a whole log it cannot read.
            Err(super::Error::FormatUnchained { .. } | super::Error::FormatWholePayload { .. }) => {
                continue;
            }
            Err(_) => {
                // Refusing to open damaged input is a correct outcome.
                assert_eq!(mode, RecoveryMode::TolerateCorruptTail, "repair must open");
                continue;
            }
        };
        let verified = log.verify();
        if mode == RecoveryMode::Repair {
            verified.expect("a repaired log verifies");
        }
        let mut records = Vec::new();
        let tail = log.segments().last().expect("a tail").first;
        let first = tail.max(log.first_index());
        log.read(first..log.next_index(), &mut records)
            .expect("the tail was verified on open");
        let next = log.next_index();
        let entry = Entry {
            index: next,
            term: 1,
            kind: 1,
            timestamp_ms: 0,
            payload: b"after recovery",
            payload_digest: None,
        };
        log.append(&[entry], PersistMode::SyncData)
            .expect("append after recovery");
        drop(log);
        let log = Log::open(disk, clock, options).expect("reopen after recovery");
        assert_eq!(log.next_index(), next + 1);
    }
}

fn plant(data: &[u8]) -> CrashDisk {
    let disk = CrashDisk::new(0);
    meta::store(&disk, &meta::Meta::default()).expect("store meta");
    let (selector, rest) = data.split_first().unwrap_or((&0, &[]));
    let split = *selector as usize * rest.len() / 256;
    if split == 0 || rest.len() < 8 {
        disk.write_file_raw(&segment::name(0), rest).expect("plant");
    } else {
        let second_first = u64::from_le_bytes(rest[..8].try_into().expect("8 bytes")) % (1 << 40);
        let split = split.max(8);
        disk.write_file_raw(&segment::name(0), &rest[8..split])
            .expect("plant");
        if second_first > 0 {
            disk.write_file_raw(&segment::name(second_first), &rest[split..])
                .expect("plant");
        }
    }
    disk.sync_dir().expect("sync_dir");
    disk
}

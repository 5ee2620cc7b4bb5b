//! `Log::open_read_only` over `OsDisk::open_read_only` changes nothing: a
//! directory with everything a writable open would repair (a torn tail,
//! leftovers of interrupted rewrites, a spare segment) is read whole while
//! another opener holds its lock, and afterwards every file is
//! byte-identical and no file came or went. A writable open then repairs
//! those very things, which shows there was something to leave alone.
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use sluice_core::io::os::{OsClock, OsDisk};
use sluice_core::log::{Entry, Error, Log, Options, PersistMode, SPARE_NAME};

const SEGMENT: u64 = 4096;

fn options() -> Options {
    Options {
        segment_size: SEGMENT,
        ..Options::default()
    }
}

/// Every file in `dir` with its bytes, the lock file included.
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap())
        .map(|entry| {
            let name = entry.file_name().into_string().unwrap();
            (name, std::fs::read(entry.path()).unwrap())
        })
        .collect()
}

fn append(log: &mut Log<OsDisk>, count: u64) {
    let first = log.next_index();
    let payloads: Vec<Vec<u8>> = (first..first + count)
        .map(|i| format!("entry {i} {}", "x".repeat(300)).into_bytes())
        .collect();
    let entries: Vec<Entry<'_>> = payloads
        .iter()
        .zip(first..)
        .map(|(payload, index)| Entry {
            index,
            term: 1,
            kind: 1,
            timestamp_ms: 1_700_000_000_000 + index,
            payload,
            payload_digest: None,
        })
        .collect();
    log.append(&entries, PersistMode::SyncData).unwrap();
}

/// A directory with several segments, a finished spare, leftovers of an
/// interrupted segment rewrite and metadata replacement, and a torn tail.
fn damaged_directory(dir: &Path) -> u64 {
    let disk = OsDisk::open(dir).unwrap();
    let mut log = Log::open(disk, Arc::new(OsClock::new()), options()).unwrap();
    append(&mut log, 40);
    let mut job = log.spare_job().expect("a spare is wanted after a segment");
    while !job.step().unwrap() {}
    log.complete_spare(job, Ok(()));
    assert!(log.spare_ready());
    append(&mut log, 3);
    let active = log.segments().last().unwrap().clone();
    let next = log.next_index();
    drop(log);
    // The roll onto the spare made a new one wanted; make sure a spare
    // file is there whatever the timing.
    if !dir.join(SPARE_NAME).exists() {
        std::fs::write(dir.join(SPARE_NAME), vec![0u8; SEGMENT as usize]).unwrap();
    }
    std::fs::write(dir.join("00000000000000000005.seg.tmp"), b"half a rewrite").unwrap();
    std::fs::write(dir.join("log.meta.tmp"), b"half a metadata file").unwrap();
    // The last frame torn: a few bytes cut off the active segment's frames.
    let path = dir.join(&active.name);
    let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    file.set_len(active.size - 7).unwrap();
    next
}

#[test]
fn a_read_only_open_leaves_every_file_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    let next = damaged_directory(dir.path());

    // Another opener (a running node) holds the lock meanwhile.
    let holder = OsDisk::open(dir.path()).unwrap();
    assert!(OsDisk::in_use(dir.path()).unwrap());
    let before = files(dir.path());

    let disk = OsDisk::open_read_only(dir.path()).unwrap();
    let mut log = Log::open_read_only(disk, Arc::new(OsClock::new()), options()).unwrap();
    assert!(log.is_read_only());
    assert_eq!(log.next_index(), next - 1, "read up to the torn frame");
    let mut records = Vec::new();
    log.read(log.first_index()..log.next_index(), &mut records)
        .unwrap();
    assert_eq!(records.len() as u64, log.next_index() - log.first_index());
    log.verify().unwrap();
    let report = log.recovery_report().clone();
    assert!(report.read_only);
    assert!(report.torn_tail.is_some(), "{report:?}");
    for leftover in [SPARE_NAME, "00000000000000000005.seg.tmp", "log.meta.tmp"] {
        assert!(
            report.removed.iter().any(|name| name == leftover),
            "{leftover} not reported: {report:?}"
        );
    }
    let refused = log.append(
        &[Entry {
            index: log.next_index(),
            term: 1,
            kind: 1,
            timestamp_ms: 0,
            payload: b"no",
            payload_digest: None,
        }],
        PersistMode::SyncData,
    );
    assert!(
        matches!(refused, Err(Error::ReadOnly { .. })),
        "{refused:?}"
    );
    assert!(matches!(log.sync(), Err(Error::ReadOnly { .. })));
    assert!(matches!(log.purge_before(2), Err(Error::ReadOnly { .. })));
    assert!(log.spare_job().is_none());
    drop(log);

    assert_eq!(files(dir.path()), before, "a read-only open changed files");

    // A writable open repairs what the read-only one left alone.
    drop(holder);
    let disk = OsDisk::open(dir.path()).unwrap();
    let log = Log::open(disk, Arc::new(OsClock::new()), options()).unwrap();
    assert!(log.recovery_report().torn_tail.is_some());
    drop(log);
    let after = files(dir.path());
    assert!(!after.contains_key(SPARE_NAME));
    assert!(!after.contains_key("log.meta.tmp"));
    assert_ne!(after, before);
}

#[test]
fn a_read_only_open_refuses_what_it_cannot_do_without_writing() {
    let empty = tempfile::tempdir().unwrap();
    let disk = OsDisk::open_read_only(empty.path()).unwrap();
    let refused = Log::open_read_only(disk, Arc::new(OsClock::new()), options());
    assert!(
        matches!(refused, Err(Error::ReadOnly { .. })),
        "{refused:?}"
    );
    assert!(files(empty.path()).is_empty(), "nothing was created");

    let disk = OsDisk::open_read_only(empty.path()).unwrap();
    let repair = Options {
        recovery: sluice_core::log::RecoveryMode::Repair,
        ..options()
    };
    let refused = Log::open_read_only(disk, Arc::new(OsClock::new()), repair);
    assert!(
        matches!(refused, Err(Error::InvalidOptions(_))),
        "{refused:?}"
    );
}

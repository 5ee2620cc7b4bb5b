//! Unit tests of the log on `CrashDisk`.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use super::*;
use crate::io::{CrashDisk, CrashPolicy, FaultOp, ManualClock};

const SEGMENT: u64 = 4096;

fn clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(
        UNIX_EPOCH + Duration::from_secs(1_700_000_000),
    ))
}

fn options() -> Options {
    Options {
        segment_size: SEGMENT,
        ..Options::default()
    }
}

fn open(disk: &CrashDisk) -> Log<CrashDisk> {
    Log::open(disk.clone(), clock(), options()).expect("open")
}

fn payload(index: u64) -> Vec<u8> {
    let mut bytes = format!("entry {index} ").into_bytes();
    bytes.resize(40 + (index as usize * 37) % 200, b'x');
    bytes
}

fn append(log: &mut Log<CrashDisk>, count: u64, persist: PersistMode) {
    let first = log.next_index();
    let payloads: Vec<Vec<u8>> = (first..first + count).map(payload).collect();
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
    log.append(&entries, persist).expect("append");
}

fn read_all(log: &Log<CrashDisk>) -> Vec<Record> {
    let mut out = Vec::new();
    log.read(log.first_index()..log.next_index(), &mut out)
        .expect("read");
    out
}

fn assert_contents(log: &Log<CrashDisk>, first: u64, next: u64) {
    assert_eq!((log.first_index(), log.next_index()), (first, next));
    let records = read_all(log);
    assert_eq!(records.len() as u64, next - first);
    for (record, index) in records.iter().zip(first..) {
        assert_eq!(record.index, index);
        assert_eq!(record.payload, payload(index));
    }
}

#[test]
fn append_read_and_reopen_across_segments() {
    let disk = CrashDisk::new(1);
    let mut log = open(&disk);
    for _ in 0..20 {
        append(&mut log, 7, PersistMode::Buffer);
    }
    log.sync().unwrap();
    assert!(log.segments().len() > 5, "small segments roll over");
    assert_contents(&log, 0, 140);
    let mut middle = Vec::new();
    log.read(33..97, &mut middle).unwrap();
    assert_eq!(middle.first().unwrap().index, 33);
    assert_eq!(middle.len(), 64);
    drop(log);
    let log = open(&disk);
    assert_eq!(log.recovery_report().torn_tail, None);
    assert_contents(&log, 0, 140);
    assert_eq!(log.verify().unwrap().frames, 140);
}

#[test]
fn reads_past_the_end_are_clipped_and_purged_reads_are_errors() {
    let disk = CrashDisk::new(2);
    let mut log = open(&disk);
    append(&mut log, 50, PersistMode::SyncData);
    let mut out = Vec::new();
    log.read(45..1000, &mut out).unwrap();
    assert_eq!(out.len(), 5);
    log.purge_before(30).unwrap();
    let error = log.read(10..20, &mut out).unwrap_err();
    assert!(
        matches!(
            error,
            Error::Purged {
                index: 10,
                first: 30
            }
        ),
        "{error}"
    );
}

#[test]
fn unsynced_appends_vanish_in_a_crash_and_synced_ones_survive() {
    let disk = CrashDisk::new(3);
    let mut log = open(&disk);
    append(&mut log, 5, PersistMode::SyncData);
    append(&mut log, 5, PersistMode::Buffer);
    drop(log);
    disk.crash_with(CrashPolicy::DropAll);
    let log = open(&disk);
    assert_contents(&log, 0, 5);
}

#[test]
fn a_bit_flip_in_the_unsynced_tail_is_corruption_not_a_tear() {
    let disk = CrashDisk::new(4);
    let mut log = open(&disk);
    append(&mut log, 5, PersistMode::SyncData);
    append(&mut log, 3, PersistMode::Buffer);
    let active = log.segments().last().unwrap().clone();
    drop(log);
    // A crash writes a sector whole or not at all; it never flips a bit.
    let bytes = disk.read_file(&active.name).unwrap();
    disk.flip_bit(&active.name, (bytes.len() as u64 - 3) * 8)
        .unwrap();
    let error = Log::open(disk.clone(), clock(), options()).unwrap_err();
    assert_eq!(error.as_corruption().unwrap().index, Some(7));
}

#[test]
fn a_torn_tail_is_cut_and_reported() {
    let disk = CrashDisk::new(4);
    let mut log = open(&disk);
    append(&mut log, 5, PersistMode::SyncData);
    append(&mut log, 3, PersistMode::Buffer);
    let active = log.segments().last().unwrap().clone();
    drop(log);
    // A crash kept the unsynced tail only in part: the file ends inside
    // the last frame.
    let bytes = disk.read_file(&active.name).unwrap();
    disk.write_file_raw(&active.name, &bytes[..bytes.len() - 3])
        .unwrap();
    let log = open(&disk);
    let torn = log
        .recovery_report()
        .torn_tail
        .clone()
        .expect("torn tail reported");
    assert_eq!(torn.index, 7);
    assert_eq!(torn.file, active.name);
    assert_contents(&log, 0, 7);
}

#[test]
fn damage_to_an_acknowledged_frame_refuses_to_open_and_repair_cuts_it() {
    let disk = CrashDisk::new(5);
    let mut log = open(&disk);
    append(&mut log, 3, PersistMode::SyncData);
    append(&mut log, 3, PersistMode::SyncData);
    let active = log.segments().last().unwrap().clone();
    drop(log);
    // Frame 1 lies after frame 0's header and payload; flip a payload
    // byte of it.
    let offset_1 = (sluice_model::constants::FRAME_HEADER_SIZE + payload(0).len()) as u64;
    disk.flip_bit(&active.name, (offset_1 + 120) * 8).unwrap();
    let error = Log::open(disk.clone(), clock(), options()).unwrap_err();
    let corruption = error.as_corruption().expect("a corruption error");
    assert_eq!(corruption.file, active.name);
    assert_eq!(corruption.offset, offset_1);
    assert_eq!(corruption.index, Some(1));
    assert!(
        error.to_string().contains("RecoveryMode::Repair"),
        "{error}"
    );
    let repair_options = Options {
        recovery: RecoveryMode::Repair,
        ..options()
    };
    let log = Log::open(disk.clone(), clock(), repair_options).unwrap();
    let repair = log
        .recovery_report()
        .repair
        .clone()
        .expect("repair reported");
    assert_eq!(repair.corruption.index, Some(1));
    assert_contents(&log, 0, 1);
}

#[test]
fn damage_in_a_sealed_segment_is_named_on_read_and_by_verify() {
    let disk = CrashDisk::new(6);
    let mut log = open(&disk);
    append(&mut log, 60, PersistMode::SyncData);
    let sealed = log.segments()[1].clone();
    assert!(sealed.sealed);
    drop(log);
    disk.flip_bit(&sealed.name, 100 * 8).unwrap();
    let log = open(&disk);
    let error = log.verify().unwrap_err();
    assert_eq!(error.as_corruption().unwrap().file, sealed.name);
    let mut out = Vec::new();
    let error = log.read(sealed.first..sealed.next, &mut out).unwrap_err();
    assert_eq!(error.as_corruption().unwrap().index, Some(sealed.first));
    // Repair cuts the log at the damaged frame and drops later segments.
    drop(log);
    let repair_options = Options {
        recovery: RecoveryMode::Repair,
        ..options()
    };
    let log = Log::open(disk.clone(), clock(), repair_options).unwrap();
    assert!(log.recovery_report().repair.is_some());
    assert_contents(&log, 0, sealed.first);
}

#[test]
fn truncate_inside_the_active_and_inside_a_sealed_segment() {
    let disk = CrashDisk::new(7);
    let mut log = open(&disk);
    append(&mut log, 60, PersistMode::SyncData);
    log.truncate_after(57).unwrap();
    assert_contents(&log, 0, 58);
    let sealed = log.segments()[2].clone();
    let mut held = Vec::new();
    log.read(sealed.first..sealed.next, &mut held).unwrap();
    let cut = sealed.first + 2;
    log.truncate_from(cut).unwrap();
    assert_contents(&log, 0, cut);
    // Payloads read before the rewrite stay valid (the old map lives on).
    assert_eq!(held[0].payload, payload(sealed.first));
    append(&mut log, 10, PersistMode::SyncData);
    drop(log);
    disk.crash_with(CrashPolicy::Random);
    let log = open(&disk);
    assert_contents(&log, 0, cut + 10);
}

#[test]
fn purge_removes_whole_segments_and_purge_past_the_end_restarts_the_log() {
    let disk = CrashDisk::new(8);
    let mut log = open(&disk);
    append(&mut log, 60, PersistMode::SyncData);
    let segments = log.segments().len();
    log.purge_before(25).unwrap();
    assert!(log.segments().len() < segments);
    assert_contents(&log, 25, 60);
    log.purge_before(100).unwrap();
    assert_eq!((log.first_index(), log.next_index()), (100, 100));
    append(&mut log, 3, PersistMode::SyncData);
    drop(log);
    disk.crash_with(CrashPolicy::DropAll);
    let log = open(&disk);
    assert_contents(&log, 100, 103);
}

#[test]
fn reset_begins_the_log_anywhere_with_its_anchor_and_app_bytes() {
    for (seed, first) in [(21, 10), (22, 500)] {
        let disk = CrashDisk::new(seed);
        let mut log = open(&disk);
        append(&mut log, 60, PersistMode::SyncData);
        log.purge_before(20).unwrap();
        // Before the log's first index or past its end, over any layout.
        log.reset(first, Some([7; 32]), b"vote and purge point")
            .unwrap();
        assert_eq!((log.first_index(), log.next_index()), (first, first));
        assert_eq!(log.chain_head(), [7; 32]);
        append(&mut log, 30, PersistMode::SyncData);
        assert_chain(&log, [7; 32]);
        drop(log);
        disk.crash_with(CrashPolicy::DropAll);
        let log = open(&disk);
        assert_contents(&log, first, first + 30);
        assert_chain(&log, [7; 32]);
        assert_eq!(log.app_meta(), b"vote and purge point");
    }
}

#[test]
fn purge_with_app_bytes_is_one_atomic_step() {
    let disk = CrashDisk::new(23);
    let mut log = open(&disk);
    append(&mut log, 60, PersistMode::SyncData);
    let anchor = log.chain_hash_at(24).unwrap();
    log.purge_before_with_app(25, None, b"purged to 24")
        .unwrap();
    assert_eq!(log.meta.anchor, Some(anchor));
    // Nothing left to purge: the bytes are replaced all the same.
    log.purge_before_with_app(10, None, b"again").unwrap();
    drop(log);
    disk.crash_with(CrashPolicy::DropAll);
    let log = open(&disk);
    assert_eq!(log.app_meta(), b"again");
    assert_contents(&log, 25, 60);
}

#[test]
fn app_meta_is_replaced_atomically() {
    let disk = CrashDisk::new(9);
    let mut log = open(&disk);
    assert_eq!(log.app_meta(), b"");
    log.set_app_meta(b"vote: term 3 for node 2").unwrap();
    drop(log);
    disk.crash_with(CrashPolicy::DropAll);
    let log = open(&disk);
    assert_eq!(log.app_meta(), b"vote: term 3 for node 2");
}

#[test]
fn a_failed_sync_poisons_the_log_and_synced_data_survives() {
    let disk = CrashDisk::new(10);
    let mut log = open(&disk);
    append(&mut log, 5, PersistMode::SyncData);
    append(&mut log, 5, PersistMode::Buffer);
    disk.fail_next(FaultOp::Sync, "");
    assert!(matches!(
        log.sync(),
        Err(Error::Io {
            op: "sync_data",
            ..
        })
    ));
    // Never retried: every later call is refused.
    assert!(matches!(log.sync(), Err(Error::Poisoned { .. })));
    let refused = log.append(
        &[Entry {
            index: 10,
            term: 1,
            kind: 1,
            timestamp_ms: 0,
            payload: b"x",
            payload_digest: None,
        }],
        PersistMode::SyncData,
    );
    assert!(matches!(refused, Err(Error::Poisoned { .. })));
    drop(log);
    disk.crash_with(CrashPolicy::DropAll);
    let log = open(&disk);
    assert_contents(&log, 0, 5);
}

#[test]
fn a_full_disk_fails_the_append_and_loses_nothing_acknowledged() {
    let disk = CrashDisk::new(11);
    let mut log = open(&disk);
    append(&mut log, 5, PersistMode::SyncData);
    disk.set_capacity(Some(disk_usage(&disk) + 100));
    let big = vec![7u8; 4000];
    let result = log.append(
        &[Entry {
            index: 5,
            term: 1,
            kind: 1,
            timestamp_ms: 0,
            payload: &big,
            payload_digest: None,
        }],
        PersistMode::SyncData,
    );
    let error = result.unwrap_err();
    assert!(error.to_string().contains("write"), "{error}");
    drop(log);
    disk.set_capacity(None);
    disk.crash();
    let log = open(&disk);
    assert_contents(&log, 0, 5);
}

fn disk_usage(disk: &CrashDisk) -> u64 {
    disk.list()
        .unwrap()
        .iter()
        .map(|name| disk.read_file(name).unwrap().len() as u64)
        .sum()
}

#[test]
fn too_large_a_payload_is_refused_before_anything_is_written() {
    let disk = CrashDisk::new(12);
    let mut log = open(&disk);
    let big = vec![0u8; sluice_model::constants::PAYLOAD_SIZE_MAX + 1];
    let entries = [
        Entry {
            index: 0,
            term: 1,
            kind: 1,
            timestamp_ms: 0,
            payload: b"small",
            payload_digest: None,
        },
        Entry {
            index: 1,
            term: 1,
            kind: 1,
            timestamp_ms: 0,
            payload: &big,
            payload_digest: None,
        },
    ];
    let error = log.append(&entries, PersistMode::SyncData).unwrap_err();
    assert!(matches!(error, Error::PayloadTooLarge { index: 1, .. }));
    assert_eq!(log.next_index(), 0);
}

#[test]
fn group_commit_through_a_sync_handle() {
    let disk = CrashDisk::new(13);
    let mut log = open(&disk);
    append(&mut log, 4, PersistMode::Buffer);
    append(&mut log, 4, PersistMode::Buffer);
    assert_eq!(log.durable_next(), 0);
    let handle = log.sync_handle().unwrap();
    let result = handle.sync();
    assert_eq!(log.complete_sync(handle, result).unwrap(), 8);
    // A handle taken before a truncation proves nothing afterwards.
    append(&mut log, 4, PersistMode::Buffer);
    let stale = log.sync_handle().unwrap();
    log.truncate_from(10).unwrap();
    append(&mut log, 4, PersistMode::Buffer);
    assert_eq!(log.complete_sync(stale, Ok(())).unwrap(), 8);
    drop(log);
    disk.crash_with(CrashPolicy::DropAll);
    assert_contents(&open(&disk), 0, 10);
}

#[test]
fn retention_by_size_and_by_age_drops_whole_old_segments() {
    let disk = CrashDisk::new(14);
    let clock = clock();
    let mut log = Log::open(disk.clone(), clock.clone(), options()).unwrap();
    let first_batch_ms = crate::io::wall_unix_ms(&*clock);
    let entry_payload = vec![1u8; 300];
    for index in 0..40 {
        let entry = Entry {
            index,
            term: 1,
            kind: 1,
            timestamp_ms: first_batch_ms + index * 1000,
            payload: &entry_payload,
            payload_digest: None,
        };
        log.append(&[entry], PersistMode::Buffer).unwrap();
    }
    log.sync().unwrap();
    let size = log.size();
    let by_size = Retention {
        size_max: Some(size / 2),
        age_max: None,
    };
    let first = log.apply_retention(&by_size).unwrap();
    assert!(
        first > 0 && log.size() <= size / 2 + SEGMENT,
        "first {first}"
    );
    assert!(
        log.size() >= size / 2,
        "the newest {} bytes are kept, the log holds {}",
        size / 2,
        log.size()
    );
    // Nothing is old yet by the clock.
    let by_age = Retention {
        size_max: None,
        age_max: Some(Duration::from_secs(3600)),
    };
    assert_eq!(log.apply_retention(&by_age).unwrap(), first);
    clock.advance(Duration::from_secs(3600 + 60));
    let aged = log.apply_retention(&by_age).unwrap();
    assert!(
        aged > first,
        "segments with newest record older than an hour go"
    );
    assert!(aged < 40, "the active segment is never dropped");
}

/// Flips every bit of one stored record, one at a time, in a sealed segment
/// and in the active segment: each flip is reported (on open, on read or by
/// `verify`) and never read back as data.
#[test]
fn every_flipped_bit_in_a_stored_record_is_detected() {
    for sealed in [true, false] {
        let disk = CrashDisk::new(15);
        let mut log = open(&disk);
        append(&mut log, 40, PersistMode::SyncData);
        let segments = log.segments();
        let target = if sealed {
            &segments[0]
        } else {
            segments.last().unwrap()
        };
        assert_eq!(target.sealed, sealed);
        // The second record of the segment; in the active segment later
        // records prove it was durable, so damage there is not a torn tail.
        let index = target.first + 1;
        let offset =
            (sluice_model::constants::FRAME_HEADER_SIZE + payload(target.first).len()) as u64;
        let size = (sluice_model::constants::FRAME_HEADER_SIZE + payload(index).len()) as u64;
        let name = target.name.clone();
        drop(log);
        for bit in (offset * 8)..((offset + size) * 8) {
            disk.flip_bit(&name, bit).unwrap();
            let detected = match Log::open(disk.clone(), clock(), options()) {
                Err(error) => error.as_corruption().is_some(),
                Ok(log) => {
                    let mut out = Vec::new();
                    let read = log.read(index..index + 1, &mut out);
                    read.is_err() && log.verify().is_err()
                }
            };
            assert!(
                detected,
                "flip of bit {bit} in {name} (sealed: {sealed}) went unnoticed"
            );
            disk.flip_bit(&name, bit).unwrap();
        }
        assert_contents(&open(&disk), 0, 40);
    }
}

/// Checks that every readable record links to the one before it, starting
/// from `link`, and returns the chain hash of the last one.
fn assert_chain(log: &Log<CrashDisk>, mut link: frame::Hash) -> frame::Hash {
    for record in read_all(log) {
        let expected = frame::chain_hash(
            &link,
            record.kind,
            record.index,
            record.term,
            record.timestamp_ms,
            &frame::payload_digest(&record.payload),
        );
        assert_eq!(
            record.hash, expected,
            "chain hash of index {}",
            record.index
        );
        link = record.hash;
    }
    assert_eq!(log.chain_head(), link);
    link
}

#[test]
fn the_chain_survives_reopen_truncation_and_purge() {
    let disk = CrashDisk::new(41);
    let mut log = open(&disk);
    for _ in 0..20 {
        append(&mut log, 7, PersistMode::Buffer);
    }
    log.sync().unwrap();
    let head = assert_chain(&log, frame::GENESIS);
    drop(log);
    let mut log = open(&disk);
    assert_eq!(log.chain_head(), head);
    // Conflict truncation into a sealed segment re-links to entry 50.
    let hash_50 = log.chain_hash_at(50).unwrap();
    log.truncate_after(50).unwrap();
    assert_eq!(log.chain_head(), hash_50);
    append(&mut log, 30, PersistMode::SyncData);
    assert_chain(&log, frame::GENESIS);
    // Truncating to a segment boundary leaves an empty active segment;
    // reopening finds the head in the last sealed segment.
    let boundary = log.segments()[3].first;
    let hash_before = log.chain_hash_at(boundary - 1).unwrap();
    log.truncate_from(boundary).unwrap();
    drop(log);
    let mut log = open(&disk);
    assert_eq!(log.next_index(), boundary);
    assert_eq!(log.chain_head(), hash_before);
    append(&mut log, 20, PersistMode::SyncData);
    // A purge anchors the first retained frame in log.meta.
    let point = log.segments()[2].first;
    let anchor = log.chain_hash_at(point - 1).unwrap();
    log.purge_before(point).unwrap();
    assert_eq!(log.meta.anchor, Some(anchor));
    assert_chain(&log, anchor);
    drop(log);
    let mut log = open(&disk);
    assert_chain(&log, anchor);
    // Truncating everything retained falls back to the anchor.
    log.truncate_from(log.first_index()).unwrap();
    assert_eq!(log.chain_head(), anchor);
    // A purge past the end (a snapshot installed) has no anchor.
    let next = log.next_index();
    log.purge_before(next + 10).unwrap();
    assert_eq!(log.meta.anchor, None);
    assert_eq!(log.chain_head(), frame::GENESIS);
    append(&mut log, 3, PersistMode::SyncData);
    assert_chain(&log, frame::GENESIS);
}

#[test]
fn chain_off_writes_zeros() {
    let disk = CrashDisk::new(42);
    let mut log = Log::open(
        disk.clone(),
        clock(),
        Options {
            chain: ChainMode::Off,
            ..options()
        },
    )
    .unwrap();
    append(&mut log, 5, PersistMode::SyncData);
    assert!(read_all(&log).iter().all(|r| r.hash == frame::GENESIS));
}

/// A log on `disk` written to enough to want a spare: three segments.
fn written_to(disk: &CrashDisk) -> Log<CrashDisk> {
    let mut log = open(disk);
    while log.segments().len() < 3 {
        append(&mut log, 3, PersistMode::SyncData);
    }
    log
}

/// Runs a spare job from `log` to the end and hands it back.
fn make_spare(log: &mut Log<CrashDisk>) {
    let mut job = log.spare_job().expect("the log wants a spare");
    while !job.step().expect("zeros written") {}
    log.complete_spare(job, Ok(()));
    assert!(log.spare_ready());
}

fn file_len(disk: &CrashDisk, name: &str) -> u64 {
    disk.read_file(name).unwrap().len() as u64
}

#[test]
fn a_spare_becomes_the_next_segment_and_its_zeros_are_a_clean_end() {
    let disk = CrashDisk::new(21);
    let mut log = open(&disk);
    append(&mut log, 2, PersistMode::SyncData);
    // A log barely written to wants no segment of zeros.
    assert!(log.spare_job().is_none());
    while log.segments().len() < 3 {
        append(&mut log, 3, PersistMode::SyncData);
    }
    make_spare(&mut log);
    assert!(log.spare_job().is_none(), "one spare at a time");
    let plain = log.segments().last().unwrap().clone();
    // The next append moves onto the spare at once, sealing the growing
    // segment early.
    append(&mut log, 1, PersistMode::SyncData);
    let segments = log.segments();
    let sealed = &segments[segments.len() - 2];
    let active = segments.last().unwrap().clone();
    assert_eq!(
        (sealed.name.as_str(), sealed.next),
        (plain.name.as_str(), plain.next)
    );
    assert_eq!(active.first, plain.next);
    assert_eq!(
        file_len(&disk, &active.name),
        SEGMENT,
        "made from the spare"
    );
    assert!(!log.spare_ready());
    assert!(
        disk.read_file(SPARE_NAME).is_err(),
        "renamed to the segment"
    );
    append(&mut log, 2, PersistMode::SyncData);
    let next = log.next_index();

    // Unsynced frames over the zeros vanish in a power cut; recovery reads
    // the zeros after the synced ones as a clean end, not a torn tail, and
    // keeps the segment written out.
    append(&mut log, 2, PersistMode::Buffer);
    drop(log);
    disk.crash_with(CrashPolicy::DropAll);
    let mut log = open(&disk);
    assert_eq!(log.recovery_report().torn_tail, None);
    assert_contents(&log, 0, next);
    assert_eq!(file_len(&disk, &active.name), SEGMENT);
    log.verify().unwrap();

    // Filling it seals it trimmed to its frames: a sealed segment holds
    // exactly its frames (its view is checked on read).
    while log.segments().last().unwrap().name == active.name {
        append(&mut log, 3, PersistMode::SyncData);
    }
    let sealed = log
        .segments()
        .into_iter()
        .find(|s| s.name == active.name)
        .unwrap();
    assert_eq!(file_len(&disk, &active.name), sealed.size);
    assert!(sealed.size < SEGMENT);
    let end = log.next_index();
    drop(log);
    let log = open(&disk);
    assert_contents(&log, 0, end);
    log.verify().unwrap();
}

#[test]
fn a_torn_frame_over_a_spares_zeros_is_cut_and_reported() {
    let disk = CrashDisk::new(22);
    let mut log = written_to(&disk);
    make_spare(&mut log);
    append(&mut log, 2, PersistMode::SyncData);
    let synced = log.next_index();
    let active = log.segments().last().unwrap().clone();
    let end = active.size;
    append(&mut log, 1, PersistMode::Buffer);
    let frame_end = log.segments().last().unwrap().size;
    drop(log);
    // The crash kept the first sector of the unsynced frame, not the rest.
    let mut bytes = disk.read_file(&active.name).unwrap();
    let kept = (end / 512 + 1) * 512;
    assert!(kept < frame_end, "the frame crosses a sector boundary");
    bytes[kept as usize..frame_end as usize].fill(0);
    disk.write_file_raw(&active.name, &bytes).unwrap();
    let log = open(&disk);
    let torn = log.recovery_report().torn_tail.clone().expect("reported");
    assert_eq!((torn.index, torn.offset), (synced, end));
    assert_contents(&log, 0, synced);
}

#[test]
fn a_spare_that_fails_is_given_up_and_the_log_goes_on() {
    let disk = CrashDisk::new(23);
    let mut log = written_to(&disk);
    let job = log.spare_job().unwrap();
    log.complete_spare(job, Err(std::io::Error::other("no space left on device")));
    assert!(!log.spare_ready());
    assert!(
        log.spare_job().is_none(),
        "not retried before the next roll"
    );
    let segments = log.segments().len();
    while log.segments().len() == segments {
        append(&mut log, 3, PersistMode::SyncData);
    }
    let active = log.segments().last().unwrap().clone();
    assert!(
        file_len(&disk, &active.name) < SEGMENT,
        "an ordinary segment"
    );
    assert!(log.spare_job().is_some(), "asked again after the roll");
}

/// Digests handed in with the entries (computed where the payload was
/// made, off the Raft core) give the same frames as digests the log
/// computes itself.
#[test]
fn given_payload_digests_write_the_same_frames() {
    let payloads: Vec<Vec<u8>> = (0..30).map(payload).collect();
    let write = |given: bool| {
        let disk = CrashDisk::new(7);
        let mut log = open(&disk);
        for (index, payload) in (0..30u64).zip(&payloads) {
            let entry = Entry {
                index,
                term: 1,
                kind: 1,
                timestamp_ms: 1_700_000_000_000 + index,
                payload,
                payload_digest: given.then(|| frame::payload_digest(payload)),
            };
            log.append(&[entry], PersistMode::SyncData).unwrap();
        }
        assert_chain(&log, frame::GENESIS);
        let segments = log.segments();
        assert!(segments.len() > 1, "the test spans segments");
        let files: Vec<Vec<u8>> = segments
            .iter()
            .map(|s| disk.read_file(&s.name).unwrap())
            .collect();
        files
    };
    assert!(write(true) == write(false), "the segment files differ");
}

/// A wrong digest is a bug of the caller: debug builds refuse it before
/// anything is written.
#[test]
#[cfg(debug_assertions)]
fn a_wrong_payload_digest_panics_in_debug_builds() {
    let disk = CrashDisk::new(8);
    let mut log = open(&disk);
    let entry = Entry {
        index: 0,
        term: 1,
        kind: 1,
        timestamp_ms: 0,
        payload: b"the payload",
        payload_digest: Some(frame::payload_digest(b"another payload")),
    };
    let appended = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        log.append(&[entry], PersistMode::SyncData)
    }));
    assert!(appended.is_err());
    drop(log);
    assert_eq!(open(&disk).next_index(), 0);
}

/// A data directory in frame format 2 (the chain over whole payloads) is
/// refused by name in every recovery mode, not cut as damage.
#[test]
fn a_format_2_directory_is_named() {
    let disk = CrashDisk::new(9);
    let mut log = open(&disk);
    append(&mut log, 3, PersistMode::SyncData);
    let name = log.segments()[0].name.clone();
    drop(log);
    let mut bytes = disk.read_file(&name).unwrap();
    bytes[8] = frame::VERSION_WHOLE_PAYLOAD;
    disk.write_file_raw(&name, &bytes).unwrap();
    for recovery in [RecoveryMode::TolerateCorruptTail, RecoveryMode::Repair] {
        let opened = Log::open(
            disk.clone(),
            clock(),
            Options {
                recovery,
                ..options()
            },
        );
        match opened {
            Err(Error::FormatWholePayload { file }) => assert_eq!(file, name),
            other => panic!("expected FormatWholePayload, got {other:?}"),
        }
    }
    assert_eq!(disk.read_file(&name).unwrap(), bytes, "nothing was cut");
}

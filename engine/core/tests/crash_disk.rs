//! What `CrashDisk` does that a real disk only does on a bad day: crashes,
//! torn writes, lost directory entries, injected errors, a full disk and
//! bit rot. The behaviour every `Disk` shares is in `disk_conformance.rs`.
//!
//! Each test states the part of the crash contract in `sluice_core::io::Disk`
//! it checks. Loops over seeds print the failing seed.

use std::io;

use sluice_core::io::{CrashDisk, CrashFile, CrashOutcome, CrashPolicy, Disk, DiskFile, FaultOp};
use sluice_model::constants::SECTOR_SIZE;

const POLICIES: [CrashPolicy; 3] = [
    CrashPolicy::Random,
    CrashPolicy::KeepAll,
    CrashPolicy::DropAll,
];

/// Enough seeds that every random fate shows up many times.
const SEEDS: u64 = 200;

const EIO: i32 = 5;
const ENOSPC: i32 = 28;

fn read_all(file: &CrashFile) -> Vec<u8> {
    let size = usize::try_from(file.size().unwrap()).unwrap();
    let mut buf = vec![0; size];
    file.read_at(0, &mut buf).unwrap();
    buf
}

fn assert_raw_os_error<T: std::fmt::Debug>(result: io::Result<T>, code: i32) {
    match result {
        Err(error) => assert_eq!(error.raw_os_error(), Some(code), "{error}"),
        Ok(value) => panic!("expected OS error {code}, got Ok({value:?})"),
    }
}

/// A pattern that differs from byte to byte and from one `tag` to another,
/// so a byte shows where it came from.
fn pattern(tag: u8, size: usize) -> Vec<u8> {
    (0..size)
        .map(|i| tag.wrapping_add((i % 7) as u8) | 0x80)
        .collect()
}

#[test]
fn synced_data_survives_every_policy() {
    for seed in 0..SEEDS {
        for policy in POLICIES {
            let disk = CrashDisk::new(seed);
            let file = disk.create("f").unwrap();
            let data = pattern(1, 5000);
            file.write_at(0, &data).unwrap();
            file.set_len(4000).unwrap();
            file.sync_data().unwrap();
            disk.sync_dir().unwrap();
            disk.crash_with(policy);
            let file = disk.open("f").unwrap();
            assert_eq!(read_all(&file), data[..4000], "seed {seed}, {policy:?}");
        }
    }
}

#[test]
fn unsynced_writes_vanish_under_drop_all_and_survive_under_keep_all() {
    for policy in [CrashPolicy::KeepAll, CrashPolicy::DropAll] {
        let disk = CrashDisk::new(7);
        let file = disk.create("f").unwrap();
        file.write_at(0, &pattern(1, 1000)).unwrap();
        file.sync_data().unwrap();
        disk.sync_dir().unwrap();
        let synced = disk.read_file("f").unwrap();
        file.write_at(100, &pattern(2, 2000)).unwrap();
        file.write_at(4000, b"far").unwrap();
        let unsynced = disk.read_file("f").unwrap();
        assert_eq!(disk.durable_file("f").unwrap(), synced);

        let outcome = disk.crash_with(policy);
        let expected = match policy {
            CrashPolicy::KeepAll => &unsynced,
            _ => &synced,
        };
        assert_eq!(&disk.read_file("f").unwrap(), expected, "{policy:?}");
        assert_eq!(&read_all(&disk.open("f").unwrap()), expected, "{policy:?}");
        let (kept, dropped) = if policy == CrashPolicy::KeepAll {
            (2, 0)
        } else {
            (0, 2)
        };
        assert_eq!(outcome.writes_kept, kept);
        assert_eq!(outcome.writes_dropped, dropped);
        assert_eq!(outcome.writes_torn, 0);
    }
}

#[test]
fn unsynced_set_len_follows_the_policy() {
    for policy in [CrashPolicy::KeepAll, CrashPolicy::DropAll] {
        let disk = CrashDisk::new(7);
        let file = disk.create("f").unwrap();
        file.write_at(0, b"0123456789").unwrap();
        file.sync_data().unwrap();
        disk.sync_dir().unwrap();
        file.set_len(4).unwrap();
        let outcome = disk.crash_with(policy);
        let expected: &[u8] = match policy {
            CrashPolicy::KeepAll => b"0123",
            _ => b"0123456789",
        };
        assert_eq!(disk.read_file("f").unwrap(), expected, "{policy:?}");
        assert_eq!(outcome.set_lens_kept + outcome.set_lens_dropped, 1);
    }
}

/// Runs a fixed workload with unsynced writes and directory operations,
/// crashes at random, and returns what the crash did and left.
fn random_crash_scenario(seed: u64) -> (CrashOutcome, Vec<(String, Vec<u8>)>) {
    let disk = CrashDisk::new(seed);
    let base = disk.create("base").unwrap();
    base.write_at(0, &pattern(1, 4096)).unwrap();
    base.sync_data().unwrap();
    disk.sync_dir().unwrap();
    for (index, offset) in [0u64, 700, 1500, 3000, 5000].into_iter().enumerate() {
        let tag = u8::try_from(index).unwrap() + 10;
        base.write_at(offset, &pattern(tag, 1800)).unwrap();
    }
    base.write_at(20, b"tiny").unwrap();
    let other = disk.create("other").unwrap();
    other.write_at(0, &pattern(3, 3000)).unwrap();
    other.sync_data().unwrap();
    disk.create("empty").unwrap();
    disk.rename("other", "renamed").unwrap();
    let outcome = disk.crash();
    let files = disk
        .list()
        .unwrap()
        .into_iter()
        .map(|name| {
            let content = disk.read_file(&name).unwrap();
            (name, content)
        })
        .collect();
    (outcome, files)
}

#[test]
fn random_crash_is_deterministic_per_seed() {
    let mut distinct = std::collections::BTreeSet::new();
    for seed in 0..20 {
        let first = random_crash_scenario(seed);
        let second = random_crash_scenario(seed);
        assert_eq!(first, second, "seed {seed}");
        distinct.insert(format!("{first:?}"));
    }
    assert!(distinct.len() > 1, "every seed crashed the same way");
}

#[test]
fn random_crash_keeps_tears_and_drops() {
    let mut total = CrashOutcome::default();
    for seed in 0..SEEDS {
        let (outcome, _) = random_crash_scenario(seed);
        assert_eq!(
            outcome.writes_kept + outcome.writes_torn + outcome.writes_dropped,
            6
        );
        assert_eq!(outcome.dir_ops_kept + outcome.dir_ops_dropped, 3);
        total.writes_kept += outcome.writes_kept;
        total.writes_torn += outcome.writes_torn;
        total.writes_dropped += outcome.writes_dropped;
        total.dir_ops_kept += outcome.dir_ops_kept;
        total.dir_ops_dropped += outcome.dir_ops_dropped;
    }
    assert!(total.writes_kept > 0, "{total:?}");
    assert!(total.writes_torn > 0, "{total:?}");
    assert!(total.writes_dropped > 0, "{total:?}");
    assert!(total.dir_ops_kept > 0, "{total:?}");
    assert!(total.dir_ops_dropped > 0, "{total:?}");
}

/// The byte of `content` at `index`, or `None` past its end.
fn byte_at(content: &[u8], index: u64) -> Option<u8> {
    content.get(usize::try_from(index).unwrap()).copied()
}

#[test]
fn torn_writes_tear_only_at_sector_boundaries() {
    let sector = SECTOR_SIZE;
    let mut torn_seen = 0;
    for seed in 0..SEEDS {
        let disk = CrashDisk::new(seed);
        let file = disk.create("f").unwrap();
        let old = pattern(1, 2048);
        file.write_at(0, &old).unwrap();
        file.sync_data().unwrap();
        disk.sync_dir().unwrap();
        // Starts mid-sector and runs past the synced end, so each sector
        // of it must end up all new, or all old (or zeros, or absent,
        // past the old end).
        let (offset, size) = (300u64, 4000usize);
        let new = pattern(2, size);
        file.write_at(offset, &new).unwrap();
        let outcome = disk.crash();
        torn_seen += outcome.writes_torn;
        let content = disk.read_file("f").unwrap();
        assert_eq!(
            content[..300],
            old[..300],
            "seed {seed}: bytes before the write changed"
        );
        let end = offset + size as u64;
        for first in (offset / sector * sector..end).step_by(512) {
            let range = first.max(offset)..(first + sector).min(end);
            let is_new = range
                .clone()
                .all(|i| byte_at(&content, i) == Some(new[(i - offset) as usize]));
            let is_old = range
                .clone()
                .all(|i| byte_at(&content, i) == old.get(i as usize).copied().or(Some(0)));
            let is_absent = range.clone().all(|i| byte_at(&content, i).is_none());
            assert!(
                is_new || is_old || is_absent,
                "seed {seed}: sector at {first} mixes old and new bytes ({outcome:?})"
            );
        }
    }
    assert!(torn_seen > 0, "no write was torn in {SEEDS} seeds");
}

#[test]
fn unsynced_create_vanishes_under_drop_all() {
    let disk = CrashDisk::new(1);
    let file = disk.create("new").unwrap();
    file.write_at(0, b"data").unwrap();
    // Syncing the data does not make the name durable.
    file.sync_data().unwrap();
    assert_eq!(disk.durable_file("new"), None);
    let outcome = disk.crash_with(CrashPolicy::DropAll);
    assert_eq!(outcome.dir_ops_dropped, 1);
    assert!(disk.list().unwrap().is_empty());
    assert_eq!(
        disk.open("new").unwrap_err().kind(),
        io::ErrorKind::NotFound
    );

    let disk = CrashDisk::new(1);
    disk.create("new").unwrap().write_at(0, b"data").unwrap();
    disk.crash_with(CrashPolicy::KeepAll);
    assert_eq!(disk.read_file("new").unwrap(), b"data");
}

#[test]
fn unsynced_remove_and_rename_are_undone_under_drop_all() {
    let disk = CrashDisk::new(1);
    for name in ["a", "b"] {
        let file = disk.create(name).unwrap();
        file.write_at(0, name.as_bytes()).unwrap();
        file.sync_data().unwrap();
    }
    disk.sync_dir().unwrap();
    disk.remove("a").unwrap();
    disk.rename("b", "c").unwrap();
    assert_eq!(disk.list().unwrap(), ["c"]);
    disk.crash_with(CrashPolicy::DropAll);
    assert_eq!(disk.list().unwrap(), ["a", "b"]);
    assert_eq!(disk.read_file("a").unwrap(), b"a");
    assert_eq!(disk.read_file("b").unwrap(), b"b");
}

#[test]
fn directory_survives_as_a_prefix_of_its_operations() {
    // The directory after each prefix of the operations below.
    let prefixes: [&[&str]; 6] = [
        &[],
        &["a"],
        &["a", "b"],
        &["a", "b", "c"],
        &["b", "c"],
        &["c", "d"],
    ];
    let mut seen = [false; 6];
    for seed in 0..SEEDS {
        let disk = CrashDisk::new(seed);
        disk.create("a").unwrap();
        disk.create("b").unwrap();
        disk.create("c").unwrap();
        disk.remove("a").unwrap();
        disk.rename("b", "d").unwrap();
        let outcome = disk.crash();
        let list = disk.list().unwrap();
        let kept = usize::try_from(outcome.dir_ops_kept).unwrap();
        assert_eq!(list, prefixes[kept], "seed {seed}");
        seen[kept] = true;
    }
    assert!(
        seen.iter().all(|&s| s),
        "some prefixes never survived: {seen:?}"
    );
}

#[test]
fn synced_directory_survives_drop_all() {
    let disk = CrashDisk::new(1);
    disk.create("a").unwrap();
    disk.create("b").unwrap();
    disk.rename("b", "c").unwrap();
    disk.sync_dir().unwrap();
    let outcome = disk.crash_with(CrashPolicy::DropAll);
    assert_eq!(outcome.dir_ops_dropped, 0);
    assert_eq!(disk.list().unwrap(), ["a", "c"]);
}

#[test]
fn handles_fail_after_crash() {
    let disk = CrashDisk::new(1);
    let file = disk.create("f").unwrap();
    file.write_at(0, b"data").unwrap();
    file.sync_data().unwrap();
    disk.sync_dir().unwrap();
    disk.crash();
    let mut buf = [0u8; 4];
    assert!(file.read_at(0, &mut buf).is_err());
    assert!(file.write_at(0, b"x").is_err());
    assert!(file.size().is_err());
    assert!(file.set_len(0).is_err());
    assert!(file.sync_data().is_err());
    assert!(file.map().is_err());
    // The disk itself works, as for the process that restarts.
    let reopened = disk.open("f").unwrap();
    assert_eq!(read_all(&reopened), b"data");
    drop(file);
    assert_eq!(read_all(&reopened), b"data");
}

#[test]
fn removed_file_held_open_is_gone_after_crash() {
    let disk = CrashDisk::new(1);
    let file = disk.create("f").unwrap();
    disk.sync_dir().unwrap();
    disk.remove("f").unwrap();
    disk.sync_dir().unwrap();
    file.write_at(0, b"orphan").unwrap();
    file.sync_data().unwrap();
    disk.crash();
    assert!(disk.list().unwrap().is_empty());
    assert!(file.size().is_err());
}

#[test]
fn fail_next_write_poisons_only_the_matching_file() {
    let disk = CrashDisk::new(1);
    let meta = disk.create("meta").unwrap();
    let segment = disk.create("segment-1").unwrap();
    disk.fail_next(FaultOp::Write, "segment-");
    meta.write_at(0, b"meta").unwrap();
    assert_raw_os_error(segment.write_at(0, b"lost"), EIO);
    // The failed write changed nothing, and the handle is poisoned.
    assert_eq!(disk.read_file("segment-1").unwrap(), b"");
    let mut buf = [0u8; 0];
    assert!(segment.read_at(0, &mut buf).is_err());
    assert!(segment.size().is_err());
    assert!(segment.sync_data().is_err());
    // The fault fired once: other handles and later writes work.
    let reopened = disk.open("segment-1").unwrap();
    reopened.write_at(0, b"ok").unwrap();
    assert_eq!(read_all(&reopened), b"ok");
    meta.sync_data().unwrap();
}

#[test]
fn fail_next_read_and_set_len_poison() {
    let disk = CrashDisk::new(1);
    let file = disk.create("f").unwrap();
    file.write_at(0, b"data").unwrap();
    disk.fail_next(FaultOp::Read, "");
    let mut buf = [0u8; 4];
    assert_raw_os_error(file.read_at(0, &mut buf), EIO);
    assert!(file.size().is_err());

    let file = disk.open("f").unwrap();
    disk.fail_next(FaultOp::SetLen, "f");
    assert_raw_os_error(file.set_len(1), EIO);
    assert!(file.map().is_err());
    assert_eq!(disk.read_file("f").unwrap(), b"data");
}

#[test]
fn failed_sync_leaves_writes_to_the_crash() {
    let disk = CrashDisk::new(1);
    let file = disk.create("f").unwrap();
    file.write_at(0, b"synced").unwrap();
    file.sync_data().unwrap();
    disk.sync_dir().unwrap();
    file.write_at(0, b"SYNCED but lost").unwrap();
    disk.fail_next(FaultOp::Sync, "f");
    assert_raw_os_error(file.sync_data(), EIO);
    // Poisoned: the engine cannot retry the sync on this handle.
    assert!(file.sync_data().is_err());
    assert_eq!(disk.durable_file("f").unwrap(), b"synced");
    assert_eq!(disk.read_file("f").unwrap(), b"SYNCED but lost");
    disk.crash_with(CrashPolicy::DropAll);
    assert_eq!(disk.read_file("f").unwrap(), b"synced");
}

#[test]
fn fail_next_sync_dir_matches_pending_names() {
    let disk = CrashDisk::new(1);
    disk.fail_next(FaultOp::SyncDir, "segment-");
    disk.create("meta").unwrap();
    // No pending operation names a segment: the fault waits.
    disk.sync_dir().unwrap();
    disk.create("segment-1").unwrap();
    assert_raw_os_error(disk.sync_dir(), EIO);
    assert_eq!(disk.durable_file("segment-1"), None);
    disk.crash_with(CrashPolicy::DropAll);
    assert_eq!(disk.list().unwrap(), ["meta"]);
    // A failed sync_dir poisons nothing: the next one works.
    disk.create("segment-2").unwrap();
    disk.sync_dir().unwrap();
    assert!(disk.durable_file("segment-2").is_some());
}

/// Which of `count` writes fail with `per_million` as the write fail rate.
fn write_failures(seed: u64, per_million: u32, count: usize) -> Vec<bool> {
    let disk = CrashDisk::new(seed);
    disk.create("f").unwrap();
    disk.set_fail_rate(FaultOp::Write, per_million);
    (0..count)
        .map(|_| {
            let file = disk.open("f").unwrap();
            match file.write_at(0, b"x") {
                Ok(()) => false,
                Err(error) => {
                    assert_eq!(error.raw_os_error(), Some(EIO));
                    true
                }
            }
        })
        .collect()
}

#[test]
fn fail_rate_is_seeded() {
    let half = write_failures(3, 500_000, 200);
    assert_eq!(half, write_failures(3, 500_000, 200));
    let failed = half.iter().filter(|&&f| f).count();
    assert!(
        (50..150).contains(&failed),
        "{failed} of 200 writes failed at rate 1/2"
    );
    assert!(write_failures(3, 1_000_000, 50).iter().all(|&f| f));
    assert!(write_failures(3, 0, 50).iter().all(|&f| !f));
}

#[test]
fn capacity_fails_growth_with_enospc() {
    let disk = CrashDisk::new(1);
    disk.set_capacity(Some(1000));
    let first = disk.create("first").unwrap();
    first.write_at(0, &[1; 600]).unwrap();
    let second = disk.create("second").unwrap();
    second.write_at(0, &[2; 400]).unwrap();
    let error = second.write_at(400, &[2; 1]).unwrap_err();
    assert_eq!(error.raw_os_error(), Some(ENOSPC));
    assert_eq!(error.kind(), io::ErrorKind::StorageFull);
    assert!(second.size().is_err(), "ENOSPC must poison the handle");
    assert_eq!(disk.read_file("second").unwrap().len(), 400);
    // Overwrites and shrinking need no space.
    first.write_at(0, &[3; 600]).unwrap();
    first.set_len(100).unwrap();
    let second = disk.open("second").unwrap();
    second.write_at(400, &[2; 500]).unwrap();
    assert_raw_os_error(second.set_len(901), ENOSPC);
    disk.set_capacity(None);
    disk.open("second").unwrap().set_len(1 << 20).unwrap();
}

#[test]
fn flip_bit_is_visible_now_and_after_crash() {
    let disk = CrashDisk::new(1);
    let file = disk.create("f").unwrap();
    file.write_at(0, &[0u8; 16]).unwrap();
    file.sync_data().unwrap();
    disk.sync_dir().unwrap();
    disk.flip_bit("f", 9).unwrap();
    let mut buf = [0u8; 2];
    file.read_at(0, &mut buf).unwrap();
    assert_eq!(buf, [0, 2]);
    assert_eq!(disk.durable_file("f").unwrap()[1], 2);
    assert_eq!(file.map().unwrap()[1], 2);
    disk.crash_with(CrashPolicy::DropAll);
    assert_eq!(disk.read_file("f").unwrap()[1], 2);
    let error = disk.flip_bit("f", 16 * 8).unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
    assert_eq!(
        disk.flip_bit("g", 0).unwrap_err().kind(),
        io::ErrorKind::NotFound
    );
}

#[test]
fn write_file_raw_plants_durable_content() {
    let disk = CrashDisk::new(1);
    let old = disk.create("segment").unwrap();
    old.write_at(0, b"old").unwrap();
    disk.write_file_raw("segment", b"planted").unwrap();
    disk.write_file_raw("fresh", b"also planted").unwrap();
    // Like an atomic replace: the old handle keeps the old file.
    assert_eq!(read_all(&old), b"old");
    assert_eq!(read_all(&disk.open("segment").unwrap()), b"planted");
    disk.crash_with(CrashPolicy::DropAll);
    assert_eq!(disk.list().unwrap(), ["fresh", "segment"]);
    assert_eq!(disk.read_file("segment").unwrap(), b"planted");
    assert_eq!(disk.read_file("fresh").unwrap(), b"also planted");
    assert_eq!(
        disk.write_file_raw("a/b", b"").unwrap_err().kind(),
        io::ErrorKind::InvalidInput
    );
}

#[test]
fn clones_share_one_disk() {
    let disk = CrashDisk::new(1);
    let clone = disk.clone();
    clone.create("f").unwrap().write_at(0, b"shared").unwrap();
    assert_eq!(disk.read_file("f").unwrap(), b"shared");
    disk.crash_with(CrashPolicy::DropAll);
    assert!(clone.list().unwrap().is_empty());
}

#[test]
fn handles_work_from_several_threads() {
    let disk = CrashDisk::new(1);
    let file = std::sync::Arc::new(disk.create("f").unwrap());
    std::thread::scope(|scope| {
        for index in 0..4u64 {
            let file = &file;
            scope.spawn(move || {
                let byte = u8::try_from(index).unwrap();
                file.write_at(index * 512, &[byte; 512]).unwrap();
                file.sync_data().unwrap();
            });
        }
    });
    let content = disk.read_file("f").unwrap();
    assert_eq!(content.len(), 2048);
    for (index, chunk) in content.chunks(512).enumerate() {
        assert!(chunk.iter().all(|&b| usize::from(b) == index));
    }
}

#[test]
#[allow(clippy::disallowed_methods)] // A test drives the disk from two threads.
fn held_syncs_wait_for_release_and_fail_after_a_crash() {
    let disk = CrashDisk::new(11);
    let file = disk.create("held").unwrap();
    disk.sync_dir().unwrap();
    file.write_at(0, b"data").unwrap();
    disk.hold_syncs();
    let released = {
        let disk = disk.clone();
        std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(50));
            disk.release_syncs();
        })
    };
    file.sync_data().unwrap();
    released.join().unwrap();
    assert_eq!(disk.durable_file("held").as_deref(), Some(&b"data"[..]));

    file.write_at(4, b"more").unwrap();
    disk.hold_syncs();
    let syncing = std::thread::spawn(move || file.sync_data());
    std::thread::sleep(std::time::Duration::from_millis(50));
    disk.crash_with(CrashPolicy::DropAll);
    assert!(
        syncing.join().unwrap().is_err(),
        "a sync held across a crash fails"
    );
    assert_eq!(disk.read_file("held").unwrap(), b"data");
}

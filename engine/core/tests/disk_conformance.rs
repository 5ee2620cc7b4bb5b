//! The conformance suite every [`Disk`] passes: one generic function per
//! behaviour of the trait, run against [`OsDisk`] in a temporary directory
//! and against [`CrashDisk`]. A case that passes on one and fails on the
//! other means the simulation lies about the real thing (or the reverse).
//!
//! Crash behaviour is not here: the OS cannot be crashed from a test. It is
//! in `crash_disk.rs` for `CrashDisk`, and in the real-process crash tests.

use std::io;

use sluice_core::io::os::OsDisk;
use sluice_core::io::{CrashDisk, Disk, DiskFile};

/// The seed of every `CrashDisk` here; no case injects faults or crashes,
/// so the seed changes nothing and one is enough.
const SEED: u64 = 0x5EED;

/// Generates, for each case, one test on `OsDisk` and one on `CrashDisk`.
macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod os {
            $(
                #[test]
                fn $case() {
                    let dir = tempfile::tempdir().unwrap();
                    let disk = super::OsDisk::open(dir.path()).unwrap();
                    super::$case(&disk);
                }
            )*
        }

        mod crash {
            $(
                #[test]
                fn $case() {
                    super::$case(&super::CrashDisk::new(super::SEED));
                }
            )*
        }
    };
}

conformance!(
    create_open_list,
    create_existing_fails,
    missing_file_fails,
    invalid_names_rejected,
    write_then_read,
    write_past_end_fills_gap_with_zeros,
    write_empty_changes_nothing,
    read_past_end_is_eof_and_does_not_poison,
    set_len_extends_with_zeros_and_shrinks,
    handles_share_content,
    sync_succeeds,
    write_back_changes_nothing_visible,
    map_returns_content,
    remove_keeps_open_handles,
    rename_moves_content,
    rename_replaces_target,
    rename_onto_itself_changes_nothing,
    create_after_remove,
);

fn assert_kind<T: std::fmt::Debug>(result: io::Result<T>, kind: io::ErrorKind) {
    match result {
        Err(error) => assert_eq!(error.kind(), kind, "{error}"),
        Ok(value) => panic!("expected {kind:?}, got Ok({value:?})"),
    }
}

fn read_all<F: DiskFile>(file: &F) -> Vec<u8> {
    let size = usize::try_from(file.size().unwrap()).unwrap();
    let mut buf = vec![0; size];
    file.read_at(0, &mut buf).unwrap();
    buf
}

fn create_open_list<D: Disk>(disk: &D) {
    assert!(disk.list().unwrap().is_empty());
    let b = disk.create("b").unwrap();
    disk.create("a").unwrap();
    disk.create("c.tmp").unwrap();
    assert_eq!(disk.list().unwrap(), ["a", "b", "c.tmp"]);
    assert_eq!(b.size().unwrap(), 0);
    b.write_at(0, b"bee").unwrap();
    drop(b);
    let b = disk.open("b").unwrap();
    assert_eq!(read_all(&b), b"bee");
}

fn create_existing_fails<D: Disk>(disk: &D) {
    let file = disk.create("a").unwrap();
    file.write_at(0, b"kept").unwrap();
    assert_kind(disk.create("a"), io::ErrorKind::AlreadyExists);
    assert_eq!(read_all(&disk.open("a").unwrap()), b"kept");
    assert_eq!(disk.list().unwrap(), ["a"]);
}

fn missing_file_fails<D: Disk>(disk: &D) {
    disk.create("present").unwrap();
    assert_kind(disk.open("absent"), io::ErrorKind::NotFound);
    assert_kind(disk.remove("absent"), io::ErrorKind::NotFound);
    assert_kind(disk.rename("absent", "other"), io::ErrorKind::NotFound);
    assert_kind(disk.rename("absent", "present"), io::ErrorKind::NotFound);
    assert_eq!(disk.list().unwrap(), ["present"]);
}

fn invalid_names_rejected<D: Disk>(disk: &D) {
    disk.create("valid").unwrap();
    let too_long = "x".repeat(256);
    let invalid = [
        "",
        ".",
        "..",
        "a/b",
        "/abs",
        "a\\b",
        "a\0b",
        too_long.as_str(),
    ];
    for name in invalid {
        assert_kind(disk.create(name), io::ErrorKind::InvalidInput);
        assert_kind(disk.open(name), io::ErrorKind::InvalidInput);
        assert_kind(disk.remove(name), io::ErrorKind::InvalidInput);
        assert_kind(disk.rename("valid", name), io::ErrorKind::InvalidInput);
        assert_kind(disk.rename(name, "valid"), io::ErrorKind::InvalidInput);
    }
    let longest = "y".repeat(255);
    disk.create(&longest).unwrap();
    assert_eq!(disk.list().unwrap(), ["valid".to_owned(), longest]);
}

fn write_then_read<D: Disk>(disk: &D) {
    let file = disk.create("f").unwrap();
    let data: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
    file.write_at(0, &data).unwrap();
    assert_eq!(file.size().unwrap(), 3000);
    let mut middle = [0u8; 100];
    file.read_at(1000, &mut middle).unwrap();
    assert_eq!(middle, data[1000..1100]);
    // An overwrite in the middle changes only its bytes.
    file.write_at(10, b"overwrite").unwrap();
    let mut expected = data.clone();
    expected[10..19].copy_from_slice(b"overwrite");
    assert_eq!(read_all(&file), expected);
    assert_eq!(file.size().unwrap(), 3000);
    let mut empty = [0u8; 0];
    file.read_at(3000, &mut empty).unwrap();
}

fn write_past_end_fills_gap_with_zeros<D: Disk>(disk: &D) {
    let file = disk.create("f").unwrap();
    file.write_at(0, b"head").unwrap();
    file.write_at(5000, b"tail").unwrap();
    assert_eq!(file.size().unwrap(), 5004);
    let content = read_all(&file);
    assert_eq!(&content[..4], b"head");
    assert!(content[4..5000].iter().all(|&b| b == 0));
    assert_eq!(&content[5000..], b"tail");
}

fn write_empty_changes_nothing<D: Disk>(disk: &D) {
    let file = disk.create("f").unwrap();
    file.write_at(0, b"abc").unwrap();
    file.write_at(100, &[]).unwrap();
    assert_eq!(file.size().unwrap(), 3);
    assert_eq!(read_all(&file), b"abc");
}

fn read_past_end_is_eof_and_does_not_poison<D: Disk>(disk: &D) {
    let file = disk.create("f").unwrap();
    file.write_at(0, b"0123456789").unwrap();
    let mut buf = [0u8; 4];
    assert_kind(file.read_at(8, &mut buf), io::ErrorKind::UnexpectedEof);
    assert_kind(file.read_at(10, &mut buf), io::ErrorKind::UnexpectedEof);
    assert_kind(
        file.read_at(1 << 50, &mut buf),
        io::ErrorKind::UnexpectedEof,
    );
    // The handle still works for everything.
    file.read_at(6, &mut buf).unwrap();
    assert_eq!(&buf, b"6789");
    file.write_at(10, b"ab").unwrap();
    file.sync_data().unwrap();
    assert_eq!(read_all(&file), b"0123456789ab");
}

fn set_len_extends_with_zeros_and_shrinks<D: Disk>(disk: &D) {
    let file = disk.create("f").unwrap();
    file.write_at(0, b"abcdef").unwrap();
    file.set_len(3).unwrap();
    assert_eq!(file.size().unwrap(), 3);
    assert_eq!(read_all(&file), b"abc");
    file.set_len(1024).unwrap();
    assert_eq!(file.size().unwrap(), 1024);
    let content = read_all(&file);
    assert_eq!(&content[..3], b"abc");
    // The bytes cut off before must not come back.
    assert!(content[3..].iter().all(|&b| b == 0));
    file.set_len(0).unwrap();
    assert_eq!(file.size().unwrap(), 0);
    let mut buf = [0u8; 1];
    assert_kind(file.read_at(0, &mut buf), io::ErrorKind::UnexpectedEof);
}

fn handles_share_content<D: Disk>(disk: &D) {
    let writer = disk.create("f").unwrap();
    let reader = disk.open("f").unwrap();
    writer.write_at(0, b"shared").unwrap();
    assert_eq!(reader.size().unwrap(), 6);
    assert_eq!(read_all(&reader), b"shared");
    reader.set_len(2).unwrap();
    assert_eq!(read_all(&writer), b"sh");
}

fn sync_succeeds<D: Disk>(disk: &D) {
    disk.sync_dir().unwrap();
    let file = disk.create("f").unwrap();
    file.sync_data().unwrap();
    file.write_at(0, b"data").unwrap();
    file.sync_data().unwrap();
    file.set_len(2).unwrap();
    file.sync_data().unwrap();
    disk.sync_dir().unwrap();
    disk.rename("f", "g").unwrap();
    disk.sync_dir().unwrap();
    assert_eq!(read_all(&file), b"da");
    assert_eq!(disk.list().unwrap(), ["g"]);
}

/// Starting a write-back is a hint: it succeeds on written, unwritten
/// and empty ranges and changes neither content nor length.
fn write_back_changes_nothing_visible<D: Disk>(disk: &D) {
    let file = disk.create("f").unwrap();
    file.start_write_back(0, 0).unwrap();
    file.write_at(0, &[7; 10_000]).unwrap();
    file.start_write_back(0, 4096).unwrap();
    file.start_write_back(4096, 100_000).unwrap();
    assert_eq!(file.size().unwrap(), 10_000);
    assert_eq!(read_all(&file), vec![7; 10_000]);
    file.sync_data().unwrap();
    assert_eq!(read_all(&file), vec![7; 10_000]);
    assert_kind(
        file.start_write_back(u64::MAX, 1),
        io::ErrorKind::InvalidInput,
    );
    // A hint that failed leaves the handle usable.
    file.write_at(0, b"after").unwrap();
    file.sync_data().unwrap();
    assert_eq!(&read_all(&file)[..5], b"after");
}

fn map_returns_content<D: Disk>(disk: &D) {
    let file = disk.create("f").unwrap();
    assert!(file.map().unwrap().is_empty());
    let data: Vec<u8> = (0..10_000u32).map(|i| (i % 253) as u8).collect();
    file.write_at(0, &data).unwrap();
    file.sync_data().unwrap();
    let map = file.map().unwrap();
    assert_eq!(map.len(), data.len());
    assert_eq!(map[..], data[..]);
    let slice = map.slice(4096..4200);
    assert_eq!(slice[..], data[4096..4200]);
    // A map taken later sees later writes.
    file.write_at(10_000, b"more").unwrap();
    assert_eq!(file.map().unwrap().len(), 10_004);
    // A map outlives its handle.
    drop(file);
    assert_eq!(slice[..], data[4096..4200]);
}

fn remove_keeps_open_handles<D: Disk>(disk: &D) {
    let file = disk.create("f").unwrap();
    file.write_at(0, b"before").unwrap();
    let map = file.map().unwrap();
    disk.remove("f").unwrap();
    assert!(disk.list().unwrap().is_empty());
    assert_kind(disk.open("f"), io::ErrorKind::NotFound);
    assert_kind(disk.remove("f"), io::ErrorKind::NotFound);
    // POSIX unlink: the open handle and the map still work.
    assert_eq!(&map[..], b"before");
    drop(map);
    assert_eq!(read_all(&file), b"before");
    file.write_at(6, b" and after").unwrap();
    file.sync_data().unwrap();
    assert_eq!(read_all(&file), b"before and after");
}

fn rename_moves_content<D: Disk>(disk: &D) {
    let file = disk.create("source").unwrap();
    file.write_at(0, b"payload").unwrap();
    disk.rename("source", "target").unwrap();
    assert_eq!(disk.list().unwrap(), ["target"]);
    assert_kind(disk.open("source"), io::ErrorKind::NotFound);
    assert_eq!(read_all(&disk.open("target").unwrap()), b"payload");
    // The handle opened under the old name follows the file.
    file.write_at(7, b"!").unwrap();
    assert_eq!(read_all(&disk.open("target").unwrap()), b"payload!");
}

fn rename_replaces_target<D: Disk>(disk: &D) {
    let old = disk.create("segment").unwrap();
    old.write_at(0, b"old content").unwrap();
    let old_map = old.map().unwrap();
    let new = disk.create("segment.tmp").unwrap();
    new.write_at(0, b"new").unwrap();
    new.sync_data().unwrap();
    disk.rename("segment.tmp", "segment").unwrap();
    disk.sync_dir().unwrap();
    assert_eq!(disk.list().unwrap(), ["segment"]);
    assert_eq!(read_all(&disk.open("segment").unwrap()), b"new");
    // The replaced file lives on through its handle and its map.
    assert_eq!(read_all(&old), b"old content");
    assert_eq!(&old_map[..], b"old content");
    // Writing under a live map is allowed but its effect on the map is not
    // specified; drop it first so the case does not depend on it.
    drop(old_map);
    old.write_at(0, b"OLD").unwrap();
    assert_eq!(read_all(&old), b"OLD content");
    assert_eq!(read_all(&disk.open("segment").unwrap()), b"new");
}

fn rename_onto_itself_changes_nothing<D: Disk>(disk: &D) {
    disk.create("f").unwrap().write_at(0, b"same").unwrap();
    disk.rename("f", "f").unwrap();
    assert_eq!(disk.list().unwrap(), ["f"]);
    assert_eq!(read_all(&disk.open("f").unwrap()), b"same");
}

fn create_after_remove<D: Disk>(disk: &D) {
    let first = disk.create("f").unwrap();
    first.write_at(0, b"first").unwrap();
    disk.remove("f").unwrap();
    let second = disk.create("f").unwrap();
    assert_eq!(second.size().unwrap(), 0);
    second.write_at(0, b"2").unwrap();
    assert_eq!(read_all(&first), b"first");
    assert_eq!(read_all(&disk.open("f").unwrap()), b"2");
}

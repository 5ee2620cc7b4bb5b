//! Tiny runs of every helper, so a broken benchmark shows up in
//! `cargo test` rather than in the middle of a long run.

use crate::workload::{self, AppendSpec};
use crate::{MIB, PersistMode, bench_root, probe, scratch};

#[test]
fn probes_measure_something() {
    let root = bench_root().unwrap();
    let dir = scratch(&root, "test-probe-").unwrap();
    for bandwidth in [
        probe::seq_write_synced(dir.path(), MIB, 64 * 1024).unwrap(),
        probe::buffered_write(dir.path(), MIB, 64 * 1024).unwrap(),
        probe::cached_read(dir.path(), MIB, 64 * 1024).unwrap(),
    ] {
        assert_eq!(bandwidth.bytes, MIB);
        assert!(bandwidth.bytes_per_s() > 0.0);
    }
    let latency = probe::append_sync_latency(dir.path(), 5, 4096).unwrap();
    assert_eq!(latency.samples, 5);
    assert!(latency.p50_ns <= latency.p99_ns);
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "probes clean up"
    );
}

#[test]
fn append_rolls_and_counts() {
    let root = bench_root().unwrap();
    let dir = scratch(&root, "test-append-").unwrap();
    let spec = AppendSpec {
        payload_size: 256,
        batch_len: 16,
        size: 64 * 1024,
        persist: PersistMode::SyncData,
        segment_size: 16 * 1024,
    };
    let result = workload::append(dir.path(), &spec).unwrap();
    assert_eq!(result.records, spec.record_count());
    assert_eq!(
        result.bytes,
        spec.record_count() * (256 + sluice_core::log::FRAME_OVERHEAD as u64)
    );
    assert!(result.segments >= 4);
    let log = workload::open(dir.path(), spec.segment_size).unwrap();
    assert_eq!(log.next_index(), spec.record_count());
}

#[test]
fn sealed_reads_are_zero_copy_and_open_is_clean() {
    let root = bench_root().unwrap();
    let dir = scratch(&root, "test-read-").unwrap();
    let built = workload::build(dir.path(), 256, 1000, 16 * 1024).unwrap();
    assert!(built.segments > 2);
    let log = workload::open(dir.path(), 16 * 1024).unwrap();
    let zero_copy = workload::check_zero_copy(&log, 100).unwrap();
    assert!(zero_copy.holds(), "{zero_copy:?}");
    let read = workload::read_sealed(&log, 64).unwrap();
    assert_eq!(read.records, workload::sealed_range(&log).end);
    drop(log);
    workload::drop_cache(dir.path()).unwrap();
    let (_, segments) = workload::open_time(dir.path(), 16 * 1024).unwrap();
    assert_eq!(segments, built.segments);
    let latency = workload::append_sync_latency(dir.path(), 3, 256).unwrap();
    assert_eq!(latency.samples, 3);
}

//! Criterion benchmarks of the log and of the disk limits they are
//! compared with. Sizes are kept small so that
//! `cargo bench -p sluice-benches` finishes in a few minutes; the ratio
//! report (`log_report`) runs larger, median-of-three measurements.
//!
//! Every iteration of a file-writing benchmark starts from a fresh
//! directory (set up and removed outside the clock) and times only the
//! writes, through `iter_custom`.

#![allow(clippy::disallowed_methods)]

use std::time::{Duration, Instant};

use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};

use sluice_benches::workload::{self, AppendSpec};
use sluice_benches::{MIB, PersistMode, bench_root, probe, scratch};
use sluice_model::constants::{SEGMENT_SIZE_DEFAULT, SEGMENT_SIZE_MAX};

/// Bytes written by each iteration of a streaming benchmark.
const STREAM_SIZE: u64 = 32 * MIB;

fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
}

/// The disk's own limits: sequential write with one final fdatasync,
/// buffered write, and one 4 KiB append + fdatasync.
fn limits(c: &mut Criterion) {
    let root = bench_root().expect("bench dir");
    let mut group = c.benchmark_group("limits");
    group.sampling_mode(SamplingMode::Flat);
    group.throughput(Throughput::Bytes(STREAM_SIZE));
    group.bench_function("seq_write_1MiB_writes_fdatasync", |b| {
        b.iter_custom(|iters| {
            let dir = scratch(&root, "bench-").expect("scratch");
            (0..iters)
                .map(|_| {
                    let bandwidth = probe::seq_write_synced(dir.path(), STREAM_SIZE, MIB as usize)
                        .expect("probe");
                    Duration::from_secs_f64(bandwidth.seconds)
                })
                .sum()
        })
    });
    group.bench_function("buffered_write_1MiB_writes", |b| {
        b.iter_custom(|iters| {
            let dir = scratch(&root, "bench-").expect("scratch");
            (0..iters)
                .map(|_| {
                    let bandwidth = probe::buffered_write(dir.path(), STREAM_SIZE, MIB as usize)
                        .expect("probe");
                    Duration::from_secs_f64(bandwidth.seconds)
                })
                .sum()
        })
    });
    group.throughput(Throughput::Bytes(4096));
    group.bench_function("append_4KiB_fdatasync", |b| {
        b.iter_custom(|iters| {
            let dir = scratch(&root, "bench-").expect("scratch");
            let start = Instant::now();
            probe::append_sync_latency(dir.path(), iters, 4096).expect("probe");
            start.elapsed()
        })
    });
    group.finish();
}

fn append(c: &mut Criterion) {
    let root = bench_root().expect("bench dir");
    let mut group = c.benchmark_group("append");
    group.sampling_mode(SamplingMode::Flat);
    let specs = [
        (
            "256B_batch1024_buffer",
            256,
            1024,
            PersistMode::Buffer,
            SEGMENT_SIZE_MAX,
        ),
        (
            "4KiB_batch256_syncdata",
            4096,
            256,
            PersistMode::SyncData,
            SEGMENT_SIZE_DEFAULT,
        ),
        (
            "4KiB_batch16_syncdata",
            4096,
            16,
            PersistMode::SyncData,
            SEGMENT_SIZE_DEFAULT,
        ),
    ];
    for (name, payload_size, batch_len, persist, segment_size) in specs {
        let spec = AppendSpec {
            payload_size,
            batch_len,
            size: STREAM_SIZE,
            persist,
            segment_size,
        };
        group.throughput(Throughput::Bytes(spec.record_count() * spec.frame_size()));
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| {
                        let dir = scratch(&root, "bench-").expect("scratch");
                        let result = workload::append(dir.path(), &spec).expect("append");
                        Duration::from_secs_f64(result.seconds)
                    })
                    .sum()
            })
        });
    }
    group.throughput(Throughput::Elements(1));
    group.bench_function("256B_single_syncdata", |b| {
        b.iter_custom(|iters| {
            let dir = scratch(&root, "bench-").expect("scratch");
            let start = Instant::now();
            workload::append_sync_latency(dir.path(), iters, 256).expect("append");
            start.elapsed()
        })
    });
    group.finish();
}

/// Sequential read of sealed segments (mapped, zero-copy) of a 128 MiB log
/// of 256 B records, 4096 records per `read` call.
fn read(c: &mut Criterion) {
    let root = bench_root().expect("bench dir");
    let dir = scratch(&root, "bench-read-").expect("scratch");
    workload::build(dir.path(), 256, 128 * MIB / 304, 16 * MIB).expect("build");
    let log = workload::open(dir.path(), 16 * MIB).expect("open");
    let records = workload::read_sealed(&log, 4096).expect("read").records;
    assert!(workload::check_zero_copy(&log, 100).expect("check").holds());
    let mut group = c.benchmark_group("read");
    group.throughput(Throughput::Elements(records));
    group.bench_function("sealed_256B_records", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    let result = workload::read_sealed(&log, 4096).expect("read");
                    Duration::from_secs_f64(result.seconds)
                })
                .sum()
        })
    });
    group.finish();
}

/// Opening a 1 GiB log with a clean, nearly full 64 MiB tail, page cache
/// warm.
fn open(c: &mut Criterion) {
    let root = bench_root().expect("bench dir");
    let dir = scratch(&root, "bench-open-").expect("scratch");
    let per_segment = SEGMENT_SIZE_DEFAULT / (4096 + 48);
    workload::build(dir.path(), 4096, 16 * per_segment - 1, SEGMENT_SIZE_DEFAULT).expect("build");
    let mut group = c.benchmark_group("open");
    group.sampling_mode(SamplingMode::Flat);
    group.bench_function("1GiB_clean_tail_warm", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    workload::open_time(dir.path(), SEGMENT_SIZE_DEFAULT)
                        .expect("open")
                        .0
                })
                .sum()
        })
    });
    group.finish();
}

/// Building 1024 frames of 256 B in memory, no I/O: the CPU share of a
/// buffered append.
fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode");
    group.throughput(Throughput::Elements(1024));
    group.bench_function("256B_frames_batch1024", |b| {
        b.iter_custom(|iters| Duration::from_secs_f64(workload::encode_only(256, 1024 * iters)))
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = config();
    targets = limits, encode, append, read, open
}
criterion_main!(benches);

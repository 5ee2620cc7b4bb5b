//! Measures the machine's limits and the log's workloads in one run, and
//! prints each figure as a ratio to the limit it is compared with.
//!
//! `cargo run --release -p sluice-benches --bin log_report [-- --quick]`.
//! Progress goes to stderr; the table (or JSON with `--json`) to stdout.

#![allow(clippy::disallowed_methods)]

use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Parser;
use serde::Serialize;

use sluice_benches::workload::{self, AppendResult, AppendSpec, ReadResult};
use sluice_benches::{
    Bandwidth, BenchResult, Latency, MIB, Mount, PersistMode, bench_root, median_by, mount_of,
    probe, scratch,
};
use sluice_model::constants::{SEGMENT_SIZE_DEFAULT, SEGMENT_SIZE_MAX};

/// Measure the disk's limits and the log's workloads, and print the ratios.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// A small run (well under a minute): smaller files, fewer samples, one
    /// repetition. Its figures are noisier and its open is of a smaller log.
    #[arg(long)]
    quick: bool,
    /// Print JSON instead of markdown tables.
    #[arg(long)]
    json: bool,
    /// Directory for the benchmark files [default: $SLUICE_BENCH_DIR, else
    /// target/sluice-bench of the workspace].
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Skip the cold-cache open (which drops the log's files from the page
    /// cache with `dd iflag=nocache`).
    #[arg(long)]
    no_cold_open: bool,
}

/// How much work each measurement does.
#[derive(Debug, Clone, Copy, Serialize)]
struct Sizes {
    /// Repetitions of each throughput measurement; the median is reported.
    repetitions: usize,
    /// Bytes of each bandwidth probe and of each append workload.
    stream_size: u64,
    /// Write size of the bandwidth probes.
    chunk_size: usize,
    /// Samples of each latency measurement.
    latency_samples: u64,
    /// Bytes of the log read back.
    read_log_size: u64,
    /// Bytes of the log opened.
    open_log_size: u64,
    /// Opens timed with a warm cache.
    open_repetitions: usize,
}

impl Sizes {
    fn new(quick: bool) -> Self {
        if quick {
            Sizes {
                repetitions: 1,
                stream_size: 32 * MIB,
                chunk_size: MIB as usize,
                latency_samples: 100,
                read_log_size: 64 * MIB,
                open_log_size: 128 * MIB,
                open_repetitions: 2,
            }
        } else {
            Sizes {
                repetitions: 5,
                stream_size: 256 * MIB,
                chunk_size: MIB as usize,
                latency_samples: 1000,
                read_log_size: 512 * MIB,
                open_log_size: 1024 * MIB,
                open_repetitions: 5,
            }
        }
    }
}

#[derive(Debug, Serialize)]
struct Machine {
    cores: usize,
    load_average_start: String,
    load_average_end: String,
    dir: PathBuf,
    mount: Option<Mount>,
    seconds: f64,
}

#[derive(Debug, Serialize)]
struct Limits {
    seq_write_synced: Bandwidth,
    buffered_write: Bandwidth,
    append_4k_fdatasync: Latency,
    /// The same inside a file written in full beforehand (no journal
    /// commit): what preallocated segments would pay.
    overwrite_4k_fdatasync: Latency,
    cached_read: Bandwidth,
}

/// One line of the workloads table.
#[derive(Debug, Serialize)]
struct Row {
    workload: String,
    figure: String,
    limit: String,
    ratio: Option<f64>,
    ratio_text: String,
    target: String,
    met: Option<bool>,
}

#[derive(Debug, Serialize)]
struct Report {
    machine: Machine,
    sizes: Sizes,
    limits: Limits,
    rows: Vec<Row>,
}

fn main() -> BenchResult<()> {
    let args = Args::parse();
    let sizes = Sizes::new(args.quick);
    let root = match &args.dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            dir.canonicalize()?
        }
        None => bench_root()?,
    };
    let mount = mount_of(&root);
    if mount.as_ref().is_some_and(|m| m.fs_type == "tmpfs") {
        eprintln!(
            "warning: {} is on tmpfs: the 'disk' is memory",
            root.display()
        );
    }
    let start = Instant::now();
    let load_average_start = load_average();
    let mut rows = Vec::new();
    let limits = measure(&root, &sizes, !args.no_cold_open, &mut rows)?;
    let machine = Machine {
        cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_average_start,
        load_average_end: load_average(),
        dir: root,
        mount,
        seconds: start.elapsed().as_secs_f64(),
    };
    let report = Report {
        machine,
        sizes,
        limits,
        rows,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_markdown(&report);
    }
    Ok(())
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|_| "unknown".to_owned())
}

fn progress(what: &str) {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let start = START.get_or_init(Instant::now);
    eprintln!(
        "[{:6.1} s] measuring: {what}",
        start.elapsed().as_secs_f64()
    );
}

/// Runs every measurement, limits next to the workloads compared with them
/// so that both see the same load from other processes.
fn measure(
    root: &Path,
    sizes: &Sizes,
    cold_open: bool,
    rows: &mut Vec<Row>,
) -> BenchResult<Limits> {
    let dir = scratch(root, "report-")?;
    let dir = dir.path();

    progress("sequential write with one final fdatasync");
    let seq = repeat(sizes.repetitions, || {
        probe::seq_write_synced(dir, sizes.stream_size, sizes.chunk_size)
    })?;
    let seq = median_by(&seq, Bandwidth::bytes_per_s);
    for (batch_len, target) in [(1024, true), (256, true), (64, false), (16, false)] {
        let spec = AppendSpec {
            payload_size: 4096,
            batch_len,
            size: sizes.stream_size,
            persist: PersistMode::SyncData,
            segment_size: SEGMENT_SIZE_DEFAULT,
        };
        progress(&format!(
            "append 4 KiB records, batches of {batch_len}, synced"
        ));
        let result = append_median(root, &spec, sizes.repetitions)?;
        rows.push(append_row(
            &format!(
                "append 4 KiB records, batches of {batch_len} ({} KiB), `SyncData` per batch",
                batch_len * (4096 + 48) / 1024
            ),
            &result,
            "sequential write + 1 fdatasync",
            &seq,
            target,
        ));
    }

    progress("buffered write into the page cache");
    let buffered = repeat(sizes.repetitions, || {
        probe::buffered_write(dir, sizes.stream_size, sizes.chunk_size)
    })?;
    let buffered = median_by(&buffered, Bandwidth::bytes_per_s);
    for (segment_size, what, target) in [
        (SEGMENT_SIZE_MAX, "one 1 GiB segment", true),
        (
            SEGMENT_SIZE_DEFAULT,
            "64 MiB segments; each roll syncs",
            false,
        ),
    ] {
        let spec = AppendSpec {
            payload_size: 256,
            batch_len: 1024,
            size: sizes.stream_size,
            persist: PersistMode::Buffer,
            segment_size,
        };
        progress(&format!("append 256 B records, buffered, {what}"));
        let result = append_median(root, &spec, sizes.repetitions)?;
        rows.push(append_row(
            &format!("append 256 B records, batches of 1024, `Buffer` ({what})"),
            &result,
            "buffered write (page cache)",
            &buffered,
            target,
        ));
    }

    progress("encode 256 B frames, no I/O");
    let records = sizes.stream_size / 304;
    let seconds = median_by(
        &(0..sizes.repetitions.max(3))
            .map(|_| workload::encode_only(256, records))
            .collect::<Vec<_>>(),
        |s| *s,
    );
    rows.push(Row {
        workload:
            "encode 256 B frames into a reused buffer, no I/O (CPU cost inside a buffered append)"
                .to_owned(),
        figure: format!(
            "{} ({}; {:.0} ns per record)",
            records_per_s(records as f64 / seconds),
            mb_per_s((records * 304) as f64 / seconds),
            seconds * 1e9 / records as f64
        ),
        limit: format!(
            "buffered write (page cache): {}",
            mb_per_s(buffered.bytes_per_s())
        ),
        ratio: Some((records * 304) as f64 / seconds / buffered.bytes_per_s()),
        ratio_text: percent((records * 304) as f64 / seconds / buffered.bytes_per_s()),
        target: "—".to_owned(),
        met: None,
    });

    progress("4 KiB append + fdatasync latency");
    let sync = probe::append_sync_latency(dir, sizes.latency_samples, 4096)?;
    progress("4 KiB overwrite + fdatasync latency, in a file written beforehand");
    let overwrite_sync = probe::overwrite_sync_latency(dir, sizes.latency_samples, 4096)?;
    progress("log append of one record with SyncData, latency");
    let log_sync = {
        let dir = scratch(root, "sync-latency-")?;
        workload::append_sync_latency(dir.path(), sizes.latency_samples, 256)?
    };
    rows.extend(latency_rows(&log_sync, &sync));

    progress("cached sequential read");
    let cached = repeat(sizes.repetitions, || {
        probe::cached_read(dir, sizes.stream_size, sizes.chunk_size)
    })?;
    let cached = median_by(&cached, Bandwidth::bytes_per_s);
    read_rows(root, sizes, &cached, rows)?;
    open_rows(root, sizes, cold_open, rows)?;
    Ok(Limits {
        seq_write_synced: seq,
        buffered_write: buffered,
        append_4k_fdatasync: sync,
        overwrite_4k_fdatasync: overwrite_sync,
        cached_read: cached,
    })
}

fn repeat<T>(count: usize, mut run: impl FnMut() -> std::io::Result<T>) -> BenchResult<Vec<T>> {
    let mut results = Vec::with_capacity(count);
    for _ in 0..count {
        results.push(run()?);
    }
    Ok(results)
}

/// Runs an append workload `count` times, each in a fresh log, and returns
/// the median by throughput.
fn append_median(root: &Path, spec: &AppendSpec, count: usize) -> BenchResult<AppendResult> {
    let mut results = Vec::with_capacity(count);
    for _ in 0..count {
        let dir = scratch(root, "append-")?;
        results.push(workload::append(dir.path(), spec)?);
    }
    Ok(median_by(&results, AppendResult::bytes_per_s))
}

fn append_row(
    workload: &str,
    result: &AppendResult,
    limit_name: &str,
    limit: &Bandwidth,
    target: bool,
) -> Row {
    let ratio = result.bytes_per_s() / limit.bytes_per_s();
    Row {
        workload: workload.to_owned(),
        figure: format!(
            "{} ({})",
            records_per_s(result.records as f64 / result.seconds),
            mb_per_s(result.bytes_per_s())
        ),
        limit: format!("{limit_name}: {}", mb_per_s(limit.bytes_per_s())),
        ratio: Some(ratio),
        ratio_text: percent(ratio),
        target: if target {
            "≥ 70 %".to_owned()
        } else {
            "—".to_owned()
        },
        met: target.then_some(ratio >= 0.70),
    }
}

fn latency_rows(log: &Latency, disk: &Latency) -> Vec<Row> {
    let row = |quantile: &str, log_ns: u64, disk_ns: u64| {
        let ratio = log_ns as f64 / disk_ns as f64;
        Row {
            workload: format!("append 1 record of 256 B, `SyncData`: latency {quantile}"),
            figure: duration(log_ns),
            limit: format!("4 KiB append + fdatasync {quantile}: {}", duration(disk_ns)),
            ratio: Some(ratio),
            ratio_text: format!("{ratio:.2} ×"),
            target: "—".to_owned(),
            met: None,
        }
    };
    vec![
        row("p50", log.p50_ns, disk.p50_ns),
        row("p99", log.p99_ns, disk.p99_ns),
    ]
}

fn read_rows(
    root: &Path,
    sizes: &Sizes,
    cached: &Bandwidth,
    rows: &mut Vec<Row>,
) -> BenchResult<()> {
    const CHUNK_LEN: u64 = 4096;
    const TARGET: f64 = 5e6;
    for (payload_size, target) in [(256usize, true), (4096, false)] {
        let dir = scratch(root, "read-")?;
        let frame_size = (payload_size + 48) as u64;
        progress(&format!("build a log of {payload_size} B records to read"));
        let built = workload::build(
            dir.path(),
            payload_size,
            sizes.read_log_size / frame_size,
            SEGMENT_SIZE_DEFAULT.min(sizes.read_log_size / 8),
        )?;
        let log = workload::open(dir.path(), SEGMENT_SIZE_DEFAULT)?;
        progress(&format!("read sealed segments of {payload_size} B records"));
        let first = workload::read_sealed(&log, CHUNK_LEN)?;
        let zero_copy = workload::check_zero_copy(&log, 1000)?;
        let steady = repeat(sizes.repetitions.max(3), || {
            workload::read_sealed(&log, CHUNK_LEN).map_err(std::io::Error::other)
        })?;
        let steady = median_by(&steady, ReadResult::bytes_per_s);
        let size = format!(
            "{payload_size} B records, {} MiB in {} sealed segments",
            first.bytes / MIB,
            built.segments - 1
        );
        let copy = if zero_copy.holds() {
            format!(
                "zero-copy: {} of {} pairs one frame apart in the map",
                zero_copy.pairs_one_frame_apart, zero_copy.pairs
            )
        } else {
            format!("NOT zero-copy: {zero_copy:?}")
        };
        for (what, result) in [
            ("first pass: map + verify every checksum", &first),
            ("steady, segments mapped", &steady),
        ] {
            let ratio = result.bytes_per_s() / cached.bytes_per_s();
            let records = result.records_per_s();
            rows.push(Row {
                workload: format!("read {size}, {what}; {copy}"),
                figure: format!(
                    "{} ({})",
                    records_per_s(records),
                    mb_per_s(result.bytes_per_s())
                ),
                limit: format!("cached sequential read: {}", mb_per_s(cached.bytes_per_s())),
                ratio: Some(ratio),
                ratio_text: percent(ratio),
                target: if target {
                    "≥ 5 M rec/s".to_owned()
                } else {
                    "—".to_owned()
                },
                met: target.then_some(records >= TARGET),
            });
        }
    }
    Ok(())
}

fn open_rows(root: &Path, sizes: &Sizes, cold_open: bool, rows: &mut Vec<Row>) -> BenchResult<()> {
    const TARGET_S: f64 = 1.5;
    const PAYLOAD_SIZE: u64 = 4096;
    let frame_size = PAYLOAD_SIZE + 48;
    let segment_size = SEGMENT_SIZE_DEFAULT.min(sizes.open_log_size / 16);
    // Fill all segments but the last, which gets one frame less than a
    // full one: the tail that open scans is as large as it gets.
    let per_segment = segment_size / frame_size;
    let segments = (sizes.open_log_size / (per_segment * frame_size)).max(2);
    let records = segments * per_segment - 1;
    let dir = scratch(root, "open-")?;
    progress(&format!(
        "build a {} MiB log to open",
        sizes.open_log_size / MIB
    ));
    let built = workload::build(dir.path(), PAYLOAD_SIZE as usize, records, segment_size)?;
    let what = format!(
        "open a {:.2} GiB log ({} segments, clean {} MiB tail)",
        built.bytes as f64 / (1024 * MIB) as f64,
        built.segments,
        built.tail_bytes / MIB
    );
    progress("open, warm cache");
    let mut warm = Vec::new();
    for _ in 0..sizes.open_repetitions {
        warm.push(
            workload::open_time(dir.path(), segment_size)?
                .0
                .as_secs_f64(),
        );
    }
    let warm = median_by(&warm, |s| *s);
    let mut times = vec![("page cache warm", warm)];
    if cold_open {
        progress("open, cold cache");
        workload::drop_cache(dir.path())?;
        times.push((
            "log's files dropped from the page cache",
            workload::open_time(dir.path(), segment_size)?
                .0
                .as_secs_f64(),
        ));
    }
    for (cache, seconds) in times {
        rows.push(Row {
            workload: format!("{what}, {cache}"),
            figure: format!("{:.3} s", seconds),
            limit: "—".to_owned(),
            ratio: None,
            ratio_text: "—".to_owned(),
            target: format!("≤ {TARGET_S} s"),
            met: Some(seconds <= TARGET_S),
        });
    }
    Ok(())
}

fn records_per_s(value: f64) -> String {
    format!("{:.2} M rec/s", value / 1e6)
}

fn mb_per_s(bytes_per_s: f64) -> String {
    format!("{:.0} MB/s", bytes_per_s / 1e6)
}

fn percent(ratio: f64) -> String {
    format!("{:.0} %", ratio * 100.0)
}

fn duration(nanos: u64) -> String {
    if nanos >= 1_000_000 {
        format!("{:.2} ms", nanos as f64 / 1e6)
    } else {
        format!("{:.0} µs", nanos as f64 / 1e3)
    }
}

fn print_markdown(report: &Report) {
    let machine = &report.machine;
    let limits = &report.limits;
    let mount = machine
        .mount
        .as_ref()
        .map_or("unknown file system".to_owned(), |m| {
            format!("{} on {} ({})", m.fs_type, m.device, m.mount_point)
        });
    println!("# Sluice log: figures as ratios to this machine's limits\n");
    println!(
        "{} cores; load average {} at start, {} at end; files in {} ({mount}); run took {:.0} s{}.\n",
        machine.cores,
        machine.load_average_start,
        machine.load_average_end,
        machine.dir.display(),
        machine.seconds,
        if report.sizes.repetitions == 1 {
            "; --quick"
        } else {
            ""
        },
    );
    println!(
        "MB = 10^6 bytes. Byte rates of the log count whole frames (48 B header + payload).\n"
    );
    println!("| limit (plain std::fs, same file system) | figure |");
    println!("|---|---|");
    println!(
        "| sequential write, {} MiB in 1 MiB writes, one final fdatasync | {} |",
        limits.seq_write_synced.bytes / MIB,
        mb_per_s(limits.seq_write_synced.bytes_per_s())
    );
    println!(
        "| buffered write into the page cache, {} MiB in 1 MiB writes, no sync | {} |",
        limits.buffered_write.bytes / MIB,
        mb_per_s(limits.buffered_write.bytes_per_s())
    );
    let sync = &limits.append_4k_fdatasync;
    println!(
        "| 4 KiB append + fdatasync, {} samples | p50 {}, p99 {}, max {} |",
        sync.samples,
        duration(sync.p50_ns),
        duration(sync.p99_ns),
        duration(sync.max_ns)
    );
    let overwrite = &limits.overwrite_4k_fdatasync;
    println!(
        "| 4 KiB overwrite + fdatasync in a file written beforehand, {} samples | p50 {}, p99 {}, max {} |",
        overwrite.samples,
        duration(overwrite.p50_ns),
        duration(overwrite.p99_ns),
        duration(overwrite.max_ns)
    );
    println!(
        "| cached sequential read, {} MiB in 1 MiB reads | {} |",
        limits.cached_read.bytes / MIB,
        mb_per_s(limits.cached_read.bytes_per_s())
    );
    println!();
    println!("| workload | figure | compared with | ratio | target | met |");
    println!("|---|---|---|---|---|---|");
    for row in &report.rows {
        let met = match row.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "—",
        };
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            row.workload, row.figure, row.limit, row.ratio_text, row.target, met
        );
    }
}

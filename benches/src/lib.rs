//! Benchmarks for Sluice; see `benches/README.md`.
//!
//! Two kinds of helpers, used by the criterion benches (`benches/log.rs`)
//! and by the ratio report (`src/bin/log_report.rs`):
//!
//! - [`probe`]: the machine's own limits, measured with plain `std::fs`
//!   calls on the same file system as the log: sequential write bandwidth
//!   with one final `fdatasync`, buffered (page cache) write bandwidth, the
//!   latency of a small append plus `fdatasync`, and cached read bandwidth.
//! - [`workload`]: the log doing the same jobs through its public API on
//!   [`OsDisk`]: appends in batches, buffered or synced per batch; reads of
//!   sealed segments; opening a large log.
//!
//! Every figure is meant to be read as a ratio to a limit measured in the
//! same run (see `benches/README.md`, "The machine"): the limits move by a factor of ten with the load other processes put on the
//! disk.
//!
//! Everything runs on real files under [`bench_root`], never in `/tmp`
//! (which may be tmpfs, whose "disk" is memory).

// Benchmarks are not engine code: they time with `Instant` and call
// `std::fs` directly, to measure the machine without the engine's seams.
#![allow(clippy::disallowed_methods)]

use std::path::{Path, PathBuf};

pub use sluice_core::log::PersistMode;

/// One mebibyte.
pub const MIB: u64 = 1024 * 1024;

/// A boxed error: the helpers report I/O and log errors alike.
pub type BenchError = Box<dyn std::error::Error + Send + Sync>;

/// A result with a [`BenchError`].
pub type BenchResult<T> = Result<T, BenchError>;

/// Where benchmark files go: `$SLUICE_BENCH_DIR`, or `target/sluice-bench`
/// of the workspace (a real file system, unlike a tmpfs `/tmp`). Created
/// if missing.
pub fn bench_root() -> std::io::Result<PathBuf> {
    let root = match std::env::var_os("SLUICE_BENCH_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/sluice-bench"),
    };
    std::fs::create_dir_all(&root)?;
    root.canonicalize()
}

/// A fresh, empty directory under `root`, removed when dropped.
pub fn scratch(root: &Path, prefix: &str) -> std::io::Result<tempfile::TempDir> {
    tempfile::Builder::new().prefix(prefix).tempdir_in(root)
}

/// The mount that holds `path`, from `/proc/self/mounts`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Mount {
    /// The device, e.g. `/dev/vda`.
    pub device: String,
    /// The mount point.
    pub mount_point: String,
    /// The file system type, e.g. `ext4` or `tmpfs`.
    pub fs_type: String,
}

/// The mount holding `path` (the longest mount point that prefixes it), if
/// `/proc/self/mounts` can be read.
pub fn mount_of(path: &Path) -> Option<Mount> {
    let path = path.canonicalize().ok()?;
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let device = fields.next()?;
            let mount_point = fields.next()?.replace("\\040", " ");
            let fs_type = fields.next()?;
            path.starts_with(&mount_point).then(|| Mount {
                device: device.to_owned(),
                mount_point,
                fs_type: fs_type.to_owned(),
            })
        })
        .max_by_key(|mount| mount.mount_point.len())
}

/// A deterministic, non-constant byte pattern, so no layer can shortcut
/// runs of zeros.
pub fn pattern(size: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..size)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// Bytes moved in some time.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Bandwidth {
    /// Bytes moved.
    pub bytes: u64,
    /// Wall time taken, in seconds.
    pub seconds: f64,
}

impl Bandwidth {
    /// Bytes per second.
    pub fn bytes_per_s(&self) -> f64 {
        self.bytes as f64 / self.seconds
    }
}

/// Latency quantiles, in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Latency {
    /// Number of samples.
    pub samples: u64,
    /// Median.
    pub p50_ns: u64,
    /// 99th percentile.
    pub p99_ns: u64,
    /// Largest sample.
    pub max_ns: u64,
}

impl Latency {
    /// The quantiles of a histogram of nanoseconds.
    pub fn of(histogram: &hdrhistogram::Histogram<u64>) -> Self {
        Latency {
            samples: histogram.len(),
            p50_ns: histogram.value_at_quantile(0.50),
            p99_ns: histogram.value_at_quantile(0.99),
            max_ns: histogram.max(),
        }
    }
}

// The flags every report binary takes (a plain comment: clap would show
// a doc comment here as each binary's description).
#[derive(Debug, clap::Parser)]
pub struct ReportArgs {
    /// Shorter runs, for a smoke test.
    #[arg(long)]
    pub quick: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

// `--only TEXT`, for a report binary whose rows have descriptions (a
// plain comment: clap would take a doc comment here as the binary's about).
#[derive(Debug, clap::Args)]
pub struct RowFilter {
    /// Run only the rows whose description (as the table prints it, with
    /// the durability) contains this text, e.g. "16 producers" or
    /// "durable".
    #[arg(long)]
    pub only: Option<String>,
}

impl RowFilter {
    /// Whether the row described by `description` runs.
    pub fn wants(&self, description: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|text| description.contains(text.as_str()))
    }
}

/// Lets every other task that is ready on this thread run once, without a
/// system call: a load generator's wait when it shares the measured
/// thread. (`tokio::task::yield_now` also polls the I/O driver, an
/// `epoll_wait` per yield, too coarse for a schedule of a few µs.)
pub async fn let_others_run() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            return std::task::Poll::Ready(());
        }
        yielded = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    })
    .await
}

/// A histogram of nanoseconds from 1 ns to 100 s, 3 significant digits.
pub fn latency_histogram() -> hdrhistogram::Histogram<u64> {
    hdrhistogram::Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("valid bounds")
}

/// The median of some measurements (the upper one of an even count).
pub fn median_by<T: Copy>(values: &[T], key: impl Fn(&T) -> f64) -> T {
    assert!(!values.is_empty());
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| key(a).total_cmp(&key(b)));
    sorted[sorted.len() / 2]
}

/// Longest warm-up a benchmark waits for spare segments before it measures
/// anyway (and says so).
pub const WARMUP_MAX: std::time::Duration = std::time::Duration::from_secs(20);

/// Whether every bus's log has moved onto a segment written out ahead
/// (`sluice_core::log::SegmentInfo::capacity`): the steady state of a log that
/// has been written to for a while.
pub fn prewritten<'a>(buses: impl IntoIterator<Item = &'a sluice_core::bus::Bus>) -> bool {
    buses
        .into_iter()
        .all(|bus| bus.segments().last().is_some_and(|s| s.capacity > 0))
}

/// Runs `load` (which must end soon after its flag is set) until `ready()`
/// or [`WARMUP_MAX`]; returns the seconds it took and whether it got there.
pub async fn warm_up<F>(
    ready: impl Fn() -> bool,
    load: impl FnOnce(std::sync::Arc<std::sync::atomic::AtomicBool>) -> F,
) -> BenchResult<(f64, bool)>
where
    F: std::future::Future<Output = BenchResult<()>>,
{
    let started = std::time::Instant::now();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let running = load(std::sync::Arc::clone(&stop));
    let watch = async {
        while !ready() && started.elapsed() < WARMUP_MAX {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    };
    let ((), loaded) = tokio::join!(watch, running);
    loaded?;
    let ok = ready();
    if !ok {
        eprintln!("warning: no written-out segment after {WARMUP_MAX:?} of warm-up");
    }
    Ok((started.elapsed().as_secs_f64(), ok))
}

/// Warms `bus` up for [`warm_up`]: 16 closed-loop producers publish
/// 256 B events to `topic` (latencies discarded) until its log is on a
/// segment written out ahead. Returns the seconds it took.
pub async fn warm_up_bus(bus: &sluice_core::bus::Bus, topic: &str) -> BenchResult<f64> {
    let load = |stop: std::sync::Arc<std::sync::atomic::AtomicBool>| async move {
        let mut tasks = Vec::new();
        for p in 0u64..16 {
            let (bus, stop, topic) = (bus.clone(), stop.clone(), topic.to_owned());
            tasks.push(tokio::spawn(async move {
                let mut producer = bus.producer().await?;
                let payload = bytes::Bytes::from(vec![b'w'; 256]);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let message = sluice_core::bus::Message::new(topic.as_str(), payload.clone())
                        .key(p.to_le_bytes().to_vec());
                    producer.publish(message).await?;
                }
                Ok::<(), sluice_core::bus::BusError>(())
            }));
        }
        for task in tasks {
            task.await??;
        }
        Ok(())
    };
    Ok(warm_up(|| prewritten([bus]), load).await?.0)
}

pub mod cluster;
pub mod probe;
pub mod workload;

#[cfg(test)]
mod tests;

//! Audit benchmark, every figure from one run and printed as a ratio:
//!
//! 1. publish throughput of the embedded bus with the hash chain on and
//!    off (`ChainMode`), pipelined, buffer-only (the CPU-bound case, where
//!    the chain's cost shows most) and durable; rounds alternate off/on so
//!    drift in the machine's load hits both alike; the median round counts.
//!    Also the process's CPU time per event (from `/proc/self/stat`), which
//!    other processes' load disturbs less than wall-clock throughput.
//!    Target: the chain costs at most 10 %.
//! 2. the frame encoder alone with and without the chain (CPU per byte);
//! 3. the offline verifier (`audit::verify`) over the chained run's data
//!    directory, from the page cache and after dropping it, beside this
//!    disk's synced sequential write bandwidth. Target: 200 MB/s.
//! 4. one signed checkpoint: SM2 sign, SM2 verify, and `Bus::checkpoint`
//!    end to end (sign plus a durable Raft entry).
//!
//! ```sh
//! cargo run --release -p sluice-benches --bin audit_report [-- --quick]
//! # more rounds of the publish rows only, or one chain mode (for perf):
//! cargo run --release -p sluice-benches --bin audit_report -- --publish-only --rounds 9
//! cargo run --release -p sluice-benches --bin audit_report -- --buffer-only --chain on
//! ```

#![allow(clippy::disallowed_methods)]

use std::collections::VecDeque;
use std::error::Error;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use sluice_audit::{KeyPair, VerifyOptions, VerifySignature as _, keys};
use sluice_benches::{bench_root, probe, scratch, workload};
use sluice_core::bus::{Bus, BusConfig, Message};
use sluice_core::log::ChainMode;
use sluice_core::log::frame;
use sluice_core::raft::Durability;
use sluice_model::state::TopicConfig;

#[derive(Debug, Parser)]
struct Args {
    /// Shorter runs, for a smoke test.
    #[arg(long)]
    quick: bool,
    /// Off/on round pairs per durability (default 5, 1 with --quick).
    #[arg(long)]
    rounds: Option<usize>,
    /// Seconds each publish run lasts (default 2, 1 with --quick).
    #[arg(long)]
    seconds: Option<f64>,
    /// Only the publish rows (for profiling, and for more rounds in the
    /// same time).
    #[arg(long)]
    publish_only: bool,
    /// Only this chain mode (for profiling one side with `perf record`);
    /// no ratio is printed.
    #[arg(long, value_enum)]
    chain: Option<ChainArg>,
    /// Only the buffer-only rows.
    #[arg(long)]
    buffer_only: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ChainArg {
    Off,
    On,
}

const PAYLOAD: usize = 256;
const TOPIC: &str = "bench";
const PRODUCERS: u64 = 16;
const INFLIGHT: usize = 64;

fn main() -> Result<(), Box<dyn Error>> {
    let args = Args::parse();
    let root = bench_root()?;
    let (seconds, rounds) = if args.quick { (1.0, 1) } else { (2.0, 5) };
    let (seconds, rounds) = (
        args.seconds.unwrap_or(seconds),
        args.rounds.unwrap_or(rounds).max(1),
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    println!(
        "audit report: {PAYLOAD} B events, {PRODUCERS} producers x {INFLIGHT} in flight, \
         {rounds} round(s) of {seconds} s per mode"
    );
    println!("load at start: {}", load_average());
    let durabilities: &[Durability] = if args.buffer_only {
        &[Durability::Buffer]
    } else {
        &[Durability::Buffer, Durability::Sync]
    };
    let mut kept = None;
    for &durability in durabilities {
        kept = publish_rows(&runtime, &root, &args, durability, seconds, rounds)?.or(kept);
    }
    if args.publish_only || args.chain.is_some() {
        println!("load at end: {}", load_average());
        return Ok(());
    }
    encoder(args.quick);
    let dir = kept.expect("a chained run");
    verifier(&root, dir.path())?;
    checkpoint_cost(&runtime, &root, if args.quick { 20 } else { 200 })?;
    println!("load at end: {}", load_average());
    Ok(())
}

/// The publish rows of one durability: rounds alternate chain off and on;
/// prints medians and ratios; returns the last chained run's directory.
fn publish_rows(
    runtime: &tokio::runtime::Runtime,
    root: &Path,
    args: &Args,
    durability: Durability,
    seconds: f64,
    rounds: usize,
) -> Result<Option<tempfile::TempDir>, Box<dyn Error>> {
    let modes: &[ChainMode] = match args.chain {
        Some(ChainArg::Off) => &[ChainMode::Off],
        Some(ChainArg::On) => &[ChainMode::Sha256],
        None => &[ChainMode::Off, ChainMode::Sha256],
    };
    let name = match durability {
        Durability::Sync => "durable",
        Durability::Buffer => "buffer-only",
    };
    // [mode] -> (rates, CPU per event) of every round.
    let mut results: Vec<(Vec<f64>, Vec<f64>)> = vec![(Vec::new(), Vec::new()); modes.len()];
    let mut kept = None;
    let mut bytes_per_event = 0.0;
    for round in 0..rounds {
        let mut pair = Vec::new();
        for (slot, &mode) in modes.iter().enumerate() {
            let (rate, cpu, bytes, dir) =
                runtime.block_on(publish(root, mode, durability, seconds))?;
            bytes_per_event = bytes;
            results[slot].0.push(rate);
            results[slot].1.push(cpu);
            pair.push((rate, cpu));
            if mode == ChainMode::Sha256 {
                kept = Some(dir);
            }
        }
        if let [(off_rate, off_cpu), (on_rate, on_cpu)] = pair[..] {
            println!(
                "  round {round}: {name:<11} off {off_rate:>9.0} ev/s {off_cpu:.3} us/ev   \
                 on {on_rate:>9.0} ev/s {on_cpu:.3} us/ev   throughput cost {:+.1} %, CPU cost {:+.1} %",
                (1.0 - on_rate / off_rate) * 100.0,
                (on_cpu / off_cpu - 1.0) * 100.0
            );
        }
    }
    if modes.len() == 1 {
        let (rates, cpus) = &mut results[0];
        println!(
            "publish {name:<11} chain {:?}: {:>9.0} ev/s, process CPU {:.3} us per event (medians)",
            modes[0],
            median(rates),
            median(cpus)
        );
        return Ok(kept);
    }
    let [(off, off_cpu), (on, on_cpu)] = &mut results[..] else {
        unreachable!("two modes");
    };
    let (off, on) = (median(off), median(on));
    let (off_cpu, on_cpu) = (median(off_cpu), median(on_cpu));
    println!(
        "publish {:<11} chain off {:>9.0} ev/s   chain on {:>9.0} ev/s   on/off {:.3}  (throughput cost {:+.1} %, target <= 10 %)",
        name,
        off,
        on,
        on / off,
        (1.0 - on / off) * 100.0
    );
    println!(
        "        {:<11} process CPU per event: off {off_cpu:.3} us, on {on_cpu:.3} us   on/off {:.3}  (CPU cost {:+.1} %; less sensitive to other load)",
        "",
        on_cpu / off_cpu,
        (on_cpu / off_cpu - 1.0) * 100.0
    );
    let floor_us = bytes_per_event / sha256_bytes_per_us();
    println!(
        "        {:<11} the chain hashes {bytes_per_event:.0} log bytes per event: {:.3} us at this CPU's SHA-256 speed \
         (SHA-NI {}) = {:.1} % of chain-off CPU per event, the floor of the CPU cost",
        "",
        floor_us,
        if has_sha_ni() {
            "present: sha2 uses it"
        } else {
            "absent"
        },
        floor_us / off_cpu * 100.0
    );
    Ok(kept)
}

/// SHA-256 over 64 KiB inputs through the chain's own hash function
/// (`frame::payload_digest`, then `frame::chain_hash`), single stream: bytes per microsecond of this
/// thread's CPU time (wall time would count other processes' turns).
fn sha256_bytes_per_us() -> f64 {
    let payload = vec![0x5au8; 64 * 1024];
    let mut link = frame::GENESIS;
    let rounds = 16_384u64;
    let before = thread_cpu_seconds();
    for index in 0..rounds {
        link = frame::chain_hash(&link, 2, index, 1, 0, &frame::payload_digest(&payload));
    }
    std::hint::black_box(link);
    let cpu = (thread_cpu_seconds() - before).max(0.01);
    (rounds as f64 * payload.len() as f64) / (cpu * 1e6)
}

/// User plus system CPU seconds of the calling thread (clock ticks).
fn thread_cpu_seconds() -> f64 {
    std::fs::read_to_string("/proc/thread-self/stat")
        .ok()
        .and_then(|stat| ticks_after_name(&stat))
        .map_or(0.0, |ticks| ticks as f64 / 100.0)
}

/// utime + stime from a `/proc/.../stat` line.
fn ticks_after_name(stat: &str) -> Option<u64> {
    let after_name = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Fields 14 and 15 of the whole line are utime and stime; after the
    // name they are the 12th and 13th.
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// Whether this CPU has the SHA extensions, which `sha2` 0.10 detects at
/// run time (cpufeatures) and uses on x86-64 unless built `force-soft`.
fn has_sha_ni() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("sha")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Publishes for `seconds`; returns events per second, process CPU
/// microseconds per event, log bytes per event, and the data directory.
async fn publish(
    root: &Path,
    chain: ChainMode,
    durability: Durability,
    seconds: f64,
) -> Result<(f64, f64, f64, tempfile::TempDir), Box<dyn Error>> {
    let dir = scratch(root, "audit")?;
    let config = BusConfig {
        durability,
        chain,
        inflight_per_producer_max: INFLIGHT,
        retention_interval: None,
        ..BusConfig::default()
    };
    let bus = Bus::open_with_config(dir.path(), config).await?;
    bus.create_topic(TOPIC, 16, TopicConfig::default()).await?;
    let until = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let cpu_before = cpu_seconds()?;
    let mut tasks = Vec::new();
    for p in 0..PRODUCERS {
        let bus = bus.clone();
        tasks.push(tokio::spawn(async move { pipelined(bus, p, until).await }));
    }
    let mut events = 0;
    for task in tasks {
        events += task.await??;
    }
    let elapsed = started.elapsed();
    let cpu = cpu_seconds()? - cpu_before;
    // Bytes of frames, not of files: the active segment may be written out
    // with zeros ahead of its frames (`log/spare.rs`).
    let log_bytes: u64 = bus.segments().iter().map(|s| s.size).sum();
    bus.close().await?;
    let events = events as f64;
    Ok((
        events / elapsed.as_secs_f64(),
        cpu * 1e6 / events,
        log_bytes as f64 / events,
        dir,
    ))
}

async fn pipelined(bus: Bus, p: u64, until: Instant) -> Result<u64, sluice_core::bus::BusError> {
    let mut producer = bus.producer().await?;
    let payload = Bytes::from(vec![b'x'; PAYLOAD]);
    let mut pending = VecDeque::with_capacity(INFLIGHT);
    let mut events = 0;
    while Instant::now() < until {
        if pending.len() >= INFLIGHT {
            let receipt: sluice_core::bus::PendingReceipt = pending.pop_front().expect("full");
            receipt.wait().await?;
            events += 1;
        }
        let message = Message::new(TOPIC, payload.clone()).key(p.to_le_bytes().to_vec());
        pending.push_back(producer.send(message).await?);
    }
    while let Some(receipt) = pending.pop_front() {
        receipt.wait().await?;
        events += 1;
    }
    Ok(events)
}

/// The frame encoder alone: MB/s with and without the chain hash.
fn encoder(quick: bool) {
    for payload_size in [256usize, 64 * 1024] {
        let bytes_total: u64 = if quick { 64 << 20 } else { 512 << 20 };
        let records = bytes_total / payload_size as u64;
        let payload = vec![7u8; payload_size];
        let mut rates = [0.0; 2];
        for (slot, flags) in [(0, 0), (1, frame::FLAG_CHAINED)] {
            let mut buffer = Vec::with_capacity((payload_size + 200) * 256);
            let mut link = frame::GENESIS;
            let started = Instant::now();
            for index in 0..records {
                if index % 256 == 0 {
                    buffer.clear();
                }
                let header = frame::Header {
                    size: frame::frame_size(payload_size) as u32,
                    kind: 2,
                    index,
                    term: 1,
                    durable_next: 0,
                    timestamp_ms: 0,
                    flags,
                    link,
                    hash: frame::GENESIS,
                };
                link = frame::encode(&mut buffer, &header, &payload, None);
            }
            std::hint::black_box(&buffer);
            rates[slot] = bytes_total as f64 / started.elapsed().as_secs_f64() / 1e6;
        }
        println!(
            "encode {:>6} B frames  chain off {:>7.0} MB/s   chain on {:>7.0} MB/s   on/off {:.3}",
            payload_size,
            rates[0],
            rates[1],
            rates[1] / rates[0]
        );
    }
}

/// The verifier over a real data directory, cached and cold.
fn verifier(root: &Path, dir: &Path) -> Result<(), Box<dyn Error>> {
    let disk = probe::seq_write_synced(root, 256 << 20, 1 << 20)?;
    let options = VerifyOptions::default();
    let started = Instant::now();
    let cpu_before = cpu_seconds()?;
    let report = sluice_audit::verify(dir, &options)?;
    let cached = report.segment_bytes as f64 / started.elapsed().as_secs_f64() / 1e6;
    let cpu = (cpu_seconds()? - cpu_before).max(0.01);
    let per_cpu = report.segment_bytes as f64 / cpu / 1e6;
    workload::drop_cache(dir).map_err(|e| e.to_string())?;
    let started = Instant::now();
    let report = sluice_audit::verify(dir, &options)?;
    let cold = report.segment_bytes as f64 / started.elapsed().as_secs_f64() / 1e6;
    let disk_mb_s = disk.bytes_per_s() / 1e6;
    println!(
        "verify {:.0} MB ({} records, {} events): cached {:.0} MB/s ({:.0} MB per CPU second), cold {:.0} MB/s; disk synced write {:.0} MB/s; cold/disk {:.2} (target >= 200 MB/s)",
        report.segment_bytes as f64 / 1e6,
        report.records,
        report.events,
        cached,
        per_cpu,
        cold,
        disk_mb_s,
        cold / disk_mb_s
    );
    Ok(())
}

/// SM2 sign and verify of one checkpoint, and `Bus::checkpoint` end to end.
fn checkpoint_cost(
    runtime: &tokio::runtime::Runtime,
    root: &Path,
    samples: u32,
) -> Result<(), Box<dyn Error>> {
    let key = KeyPair::generate(keys::DISTID_DEFAULT)?;
    let started = Instant::now();
    let mut last = None;
    for i in 0..samples {
        last = Some(sluice_audit::checkpoint::sign(
            &key,
            u64::from(i),
            [i as u8; 32],
        ));
    }
    let sign_us = started.elapsed().as_secs_f64() * 1e6 / f64::from(samples);
    let checkpoint = last.expect("samples > 0");
    let started = Instant::now();
    for _ in 0..samples {
        checkpoint.verify_signature()?;
    }
    let verify_us = started.elapsed().as_secs_f64() * 1e6 / f64::from(samples);
    let dir = scratch(root, "audit-checkpoint")?;
    let (write_us, publish_us) = runtime.block_on(async {
        let bus = Bus::open_with_config(dir.path(), BusConfig::default()).await?;
        bus.create_topic(TOPIC, 1, TopicConfig::default()).await?;
        let mut producer = bus.producer().await?;
        let started = Instant::now();
        for _ in 0..samples {
            producer
                .publish(Message::new(TOPIC, vec![b'x'; PAYLOAD]))
                .await?;
        }
        let publish_us = started.elapsed().as_secs_f64() * 1e6 / f64::from(samples);
        let started = Instant::now();
        for _ in 0..samples {
            bus.checkpoint(&key).await?;
        }
        let write_us = started.elapsed().as_secs_f64() * 1e6 / f64::from(samples);
        bus.close().await?;
        Ok::<_, Box<dyn Error>>((write_us, publish_us))
    })?;
    println!(
        "checkpoint: SM2 sign {sign_us:.0} us, verify {verify_us:.0} us; Bus::checkpoint {write_us:.0} us \
         vs one durable closed-loop publish {publish_us:.0} us (ratio {:.2})",
        write_us / publish_us
    );
    Ok(())
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

/// User plus system CPU seconds of this process, from `/proc/self/stat`
/// (clock ticks of 10 ms).
fn cpu_seconds() -> Result<f64, Box<dyn Error>> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    let ticks = ticks_after_name(&stat).ok_or("malformed /proc/self/stat")?;
    Ok(ticks as f64 / 100.0)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

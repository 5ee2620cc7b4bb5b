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
//! ```

#![allow(clippy::disallowed_methods)]

use std::collections::VecDeque;
use std::error::Error;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use sluice::audit::{Checkpoint, KeyPair, VerifyOptions, keys};
use sluice::bus::{Bus, BusConfig, Message};
use sluice::log::ChainMode;
use sluice::log::frame;
use sluice::raft::Durability;
use sluice::state::TopicConfig;
use sluice_benches::{bench_root, probe, scratch, workload};

#[derive(Debug, Parser)]
struct Args {
    /// Shorter runs, for a smoke test.
    #[arg(long)]
    quick: bool,
}

const PAYLOAD: usize = 256;
const TOPIC: &str = "bench";
const PRODUCERS: u64 = 16;
const INFLIGHT: usize = 64;

fn main() -> Result<(), Box<dyn Error>> {
    let args = Args::parse();
    let root = bench_root()?;
    let (seconds, rounds) = if args.quick { (1.0, 1) } else { (2.0, 5) };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    println!("audit report: {PAYLOAD} B events, {PRODUCERS} producers x {INFLIGHT} in flight");
    println!("load at start: {}", load_average());
    let mut kept = None;
    for durability in [Durability::Buffer, Durability::Sync] {
        let (mut off, mut on) = (Vec::new(), Vec::new());
        let (mut off_cpu, mut on_cpu) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            let (rate, cpu, _) =
                runtime.block_on(publish(&root, ChainMode::Off, durability, seconds))?;
            off.push(rate);
            off_cpu.push(cpu);
            let (rate, cpu, dir) =
                runtime.block_on(publish(&root, ChainMode::Sha256, durability, seconds))?;
            on.push(rate);
            on_cpu.push(cpu);
            if durability == Durability::Sync {
                kept = Some(dir);
            }
        }
        let (off, on) = (median(&mut off), median(&mut on));
        let (off_cpu, on_cpu) = (median(&mut off_cpu), median(&mut on_cpu));
        println!(
            "publish {:<11} chain off {:>9.0} ev/s   chain on {:>9.0} ev/s   on/off {:.3}  (throughput cost {:+.1} %, target <= 10 %)",
            match durability {
                Durability::Sync => "durable",
                Durability::Buffer => "buffer-only",
            },
            off,
            on,
            on / off,
            (1.0 - on / off) * 100.0
        );
        println!(
            "        {:<11} process CPU per event: off {off_cpu:.2} us, on {on_cpu:.2} us   on/off {:.3}  (CPU cost {:+.1} %; less sensitive to other load)",
            "",
            on_cpu / off_cpu,
            (on_cpu / off_cpu - 1.0) * 100.0
        );
    }
    encoder(args.quick);
    let dir = kept.expect("a chained durable run");
    verifier(&root, dir.path())?;
    checkpoint_cost(&runtime, &root, if args.quick { 20 } else { 200 })?;
    println!("load at end: {}", load_average());
    Ok(())
}

/// Publishes for `seconds`; returns events per second, process CPU
/// microseconds per event, and the data directory.
async fn publish(
    root: &Path,
    chain: ChainMode,
    durability: Durability,
    seconds: f64,
) -> Result<(f64, f64, tempfile::TempDir), Box<dyn Error>> {
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
    bus.close().await?;
    let events = events as f64;
    Ok((events / elapsed.as_secs_f64(), cpu * 1e6 / events, dir))
}

async fn pipelined(bus: Bus, p: u64, until: Instant) -> Result<u64, sluice::bus::BusError> {
    let mut producer = bus.producer().await?;
    let payload = Bytes::from(vec![b'x'; PAYLOAD]);
    let mut pending = VecDeque::with_capacity(INFLIGHT);
    let mut events = 0;
    while Instant::now() < until {
        if pending.len() >= INFLIGHT {
            let receipt: sluice::bus::PendingReceipt = pending.pop_front().expect("full");
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
                link = frame::encode(&mut buffer, &header, &payload);
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
    let report = sluice::audit::verify(dir, &options)?;
    let cached = report.segment_bytes as f64 / started.elapsed().as_secs_f64() / 1e6;
    let cpu = (cpu_seconds()? - cpu_before).max(0.01);
    let per_cpu = report.segment_bytes as f64 / cpu / 1e6;
    workload::drop_cache(dir).map_err(|e| e.to_string())?;
    let started = Instant::now();
    let report = sluice::audit::verify(dir, &options)?;
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
        last = Some(Checkpoint::sign(&key, u64::from(i), [i as u8; 32]));
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
    let after_name = stat.rsplit_once(')').ok_or("malformed /proc/self/stat")?.1;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Fields 14 and 15 of the whole line are utime and stime; after the
    // name they are the 12th and 13th.
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    Ok(ticks as f64 / 100.0)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

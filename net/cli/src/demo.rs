//! `sluice demo`: the main job on the embedded default.
//!
//! Opens a bus in a data directory, publishes events from several
//! pipelined producers while a consumer group reads them, closes and
//! reopens the bus halfway, then checks that every acknowledged event was
//! consumed exactly once. Reports throughput, publish→ack and
//! publish→deliver latency, and this disk's own `fdatasync` latency
//! measured in the same run.
//!
//! Each event's payload starts with the run id, its number and its publish
//! time, so a second run on the same directory judges only its own events.

#![allow(clippy::disallowed_methods)]

use std::collections::VecDeque;
use std::error::Error;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use sluice_core::bus::{Bus, BusConfig, Message};
use sluice_core::raft::Durability;
use sluice_model::state::TopicConfig;

const TOPIC: &str = "demo";

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Data directory (created if missing; reused if it holds a bus).
    #[arg(long, default_value = "./sluice-data")]
    data_dir: PathBuf,
    /// Events to publish in all.
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    /// Concurrent producers.
    #[arg(long, default_value_t = 16)]
    producers: u64,
    /// Publishes each producer keeps in flight.
    #[arg(long, default_value_t = 64)]
    inflight: usize,
    /// Consumers in the group.
    #[arg(long, default_value_t = 2)]
    consumers: usize,
    /// Partitions of the demo topic (when it is created).
    #[arg(long, default_value_t = 8)]
    partitions: u32,
    /// Payload size in bytes (at least 24).
    #[arg(long, default_value_t = 128)]
    payload_size: usize,
    /// Acknowledge after fsync (`sync`) or once in the page cache (`buffer`).
    #[arg(long, value_enum, default_value_t = DurabilityArg::Sync)]
    durability: DurabilityArg,
    /// Print one JSON object instead of the human report.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum DurabilityArg {
    Sync,
    Buffer,
}

/// Everything the producers and consumers record.
struct Tally {
    run: u64,
    start: Instant,
    /// How many times each event was consumed.
    seen: Vec<AtomicU8>,
    acked: AtomicU64,
    consumed: AtomicU64,
    unexpected: AtomicU64,
    ack_us: Mutex<Histogram<u64>>,
    deliver_us: Mutex<Histogram<u64>>,
}

pub(crate) fn run(args: Args) -> Result<ExitCode, Box<dyn Error>> {
    if args.payload_size < 24 || args.producers == 0 || args.consumers == 0 || args.events == 0 {
        return Err(
            "need --payload-size >= 24 and at least one event, producer and consumer".into(),
        );
    }
    std::fs::create_dir_all(&args.data_dir).map_err(|e| {
        format!(
            "cannot create data directory {}: {e}",
            args.data_dir.display()
        )
    })?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run_async(args))
}

async fn run_async(args: Args) -> Result<ExitCode, Box<dyn Error>> {
    let fsync = fsync_latency(&args.data_dir, 200)?;
    let tally = Arc::new(Tally {
        run: SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos() as u64,
        start: Instant::now(),
        seen: (0..args.events).map(|_| AtomicU8::new(0)).collect(),
        acked: AtomicU64::new(0),
        consumed: AtomicU64::new(0),
        unexpected: AtomicU64::new(0),
        ack_us: Mutex::new(Histogram::new_with_bounds(1, 600_000_000, 3)?),
        deliver_us: Mutex::new(Histogram::new_with_bounds(1, 600_000_000, 3)?),
    });
    let progress = progress_bar(args.events, args.json);
    let half = args.events / 2;
    let mut publishing = Duration::ZERO;
    let mut reopen = Duration::ZERO;
    for (phase, range) in [(0, 0..half), (1, half..args.events)].into_iter() {
        let opened = Instant::now();
        let bus = open(&args).await?;
        if phase == 1 {
            reopen = opened.elapsed();
        }
        bus.create_topic(TOPIC, args.partitions, TopicConfig::default())
            .await?;
        publishing += run_phase(&bus, &args, &tally, range, phase == 0, &progress).await?;
        bus.close().await?;
    }
    progress.finish_and_clear();
    report(&args, &tally, publishing, reopen, &fsync)
}

async fn open(args: &Args) -> Result<Bus, Box<dyn Error>> {
    let config = BusConfig {
        durability: match args.durability {
            DurabilityArg::Sync => Durability::Sync,
            DurabilityArg::Buffer => Durability::Buffer,
        },
        inflight_per_producer_max: args.inflight,
        ..BusConfig::default()
    };
    Ok(Bus::open_with_config(&args.data_dir, config).await?)
}

/// Publishes `range` while the group consumes; returns the publishing time.
async fn run_phase(
    bus: &Bus,
    args: &Args,
    tally: &Arc<Tally>,
    range: std::ops::Range<u64>,
    first: bool,
    progress: &ProgressBar,
) -> Result<Duration, Box<dyn Error>> {
    let consumers = join_group(bus, args, tally, first).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let consuming: Vec<_> = consumers
        .into_iter()
        .map(|consumer| {
            tokio::spawn(consume(
                consumer,
                Arc::clone(tally),
                Arc::clone(&stop),
                progress.clone(),
            ))
        })
        .collect();
    let started = Instant::now();
    let producing: Vec<_> = (0..args.producers)
        .map(|p| {
            let numbers: Vec<u64> = range.clone().filter(|g| g % args.producers == p).collect();
            tokio::spawn(produce(
                bus.clone(),
                numbers,
                args.payload_size,
                args.inflight,
                Arc::clone(tally),
            ))
        })
        .collect();
    for task in producing {
        task.await??;
    }
    let elapsed = started.elapsed();
    wait_consumed(tally).await;
    stop.store(true, Ordering::Release);
    for task in consuming {
        task.await??;
    }
    Ok(elapsed)
}

/// The run's consumer group, `--consumers` members; in the first phase
/// each starts at the end of what earlier runs left in the topic.
async fn join_group(
    bus: &Bus,
    args: &Args,
    tally: &Tally,
    first: bool,
) -> Result<Vec<sluice_core::bus::Consumer>, Box<dyn Error>> {
    let group = format!("demo-{:x}", tally.run);
    let mut consumers = Vec::new();
    for member in 0..args.consumers {
        consumers.push(
            bus.consumer(&group, &format!("c{member}"), &[TOPIC])
                .await?,
        );
    }
    if first {
        for consumer in &mut consumers {
            consumer.seek_to_end()?;
            commit(consumer).await?;
        }
    }
    Ok(consumers)
}

/// Waits (two minutes at most) until the group consumed as many events
/// as were acknowledged.
async fn wait_consumed(tally: &Tally) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while tally.consumed.load(Ordering::Acquire) < tally.acked.load(Ordering::Acquire)
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn produce(
    bus: Bus,
    numbers: Vec<u64>,
    payload_size: usize,
    inflight: usize,
    tally: Arc<Tally>,
) -> Result<(), sluice_core::bus::BusError> {
    let mut producer = bus.producer().await?;
    let mut pending = VecDeque::with_capacity(inflight);
    for number in numbers {
        if pending.len() >= inflight {
            let (sent, receipt): (Instant, sluice_core::bus::PendingReceipt<_>) =
                pending.pop_front().expect("non-empty");
            receipt.wait().await?;
            acked(&tally, sent);
        }
        let sent = Instant::now();
        let mut payload = vec![0u8; payload_size];
        payload[0..8].copy_from_slice(&tally.run.to_le_bytes());
        payload[8..16].copy_from_slice(&number.to_le_bytes());
        let micros = tally.start.elapsed().as_micros() as u64;
        payload[16..24].copy_from_slice(&micros.to_le_bytes());
        let message = Message::new(TOPIC, Bytes::from(payload)).key(number.to_le_bytes().to_vec());
        pending.push_back((sent, producer.send(message).await?));
    }
    while let Some((sent, receipt)) = pending.pop_front() {
        receipt.wait().await?;
        acked(&tally, sent);
    }
    Ok(())
}

fn acked(tally: &Tally, sent: Instant) {
    tally.acked.fetch_add(1, Ordering::AcqRel);
    let micros = sent.elapsed().as_micros() as u64;
    tally
        .ack_us
        .lock()
        .unwrap()
        .saturating_record(micros.max(1));
}

async fn consume(
    mut consumer: sluice_core::bus::Consumer,
    tally: Arc<Tally>,
    stop: Arc<AtomicBool>,
    progress: ProgressBar,
) -> Result<(), sluice_core::bus::BusError> {
    while !stop.load(Ordering::Acquire) {
        let deliveries = consumer.poll(4096, Duration::from_millis(50)).await?;
        if deliveries.is_empty() {
            continue;
        }
        let now = tally.start.elapsed().as_micros() as u64;
        let mut latencies = Vec::with_capacity(deliveries.len());
        for delivery in &deliveries {
            let payload = &delivery.payload;
            let run = u64::from_le_bytes(payload[0..8].try_into().expect("8 bytes"));
            let number = u64::from_le_bytes(payload[8..16].try_into().expect("8 bytes"));
            let published = u64::from_le_bytes(payload[16..24].try_into().expect("8 bytes"));
            match tally.seen.get(number as usize) {
                Some(count) if run == tally.run => {
                    count.fetch_add(1, Ordering::AcqRel);
                    latencies.push(now.saturating_sub(published).max(1));
                }
                _ => {
                    tally.unexpected.fetch_add(1, Ordering::AcqRel);
                }
            }
        }
        {
            let mut histogram = tally.deliver_us.lock().unwrap();
            for micros in latencies {
                histogram.saturating_record(micros);
            }
        }
        tally
            .consumed
            .fetch_add(deliveries.len() as u64, Ordering::AcqRel);
        progress.inc(deliveries.len() as u64);
        commit(&mut consumer).await?;
    }
    commit(&mut consumer).await
}

/// Commits what was delivered. A rebalance in between (another member
/// joined) refuses the commit; the consumer then picks up the new
/// generation, as a poll does, and commits what it still owns.
async fn commit(
    consumer: &mut sluice_core::bus::Consumer,
) -> Result<(), sluice_core::bus::BusError> {
    loop {
        match consumer.commit().await {
            Err(sluice_core::bus::BusError::State(sluice_model::state::StateError::Commit(
                sluice_model::state::CommitError::StaleGeneration { .. },
            ))) => {
                consumer.poll(0, Duration::ZERO).await?;
            }
            other => return other,
        }
    }
}

/// p50 and p99 of `fdatasync` after a 4 KiB append, in microseconds.
struct FsyncLatency {
    p50_us: u64,
    p99_us: u64,
}

fn fsync_latency(dir: &Path, samples: usize) -> Result<FsyncLatency, Box<dyn Error>> {
    let path = dir.join("fsync-probe.tmp");
    let file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)?;
    let block = [0x5au8; 4096];
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    for sample in 0..samples {
        file.write_all_at(&block, (sample * block.len()) as u64)?;
        let started = Instant::now();
        file.sync_data()?;
        histogram.saturating_record(started.elapsed().as_micros() as u64);
    }
    drop(file);
    std::fs::remove_file(&path)?;
    Ok(FsyncLatency {
        p50_us: histogram.value_at_quantile(0.5),
        p99_us: histogram.value_at_quantile(0.99),
    })
}

fn progress_bar(events: u64, hidden: bool) -> ProgressBar {
    if hidden {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(events);
    let style = ProgressStyle::with_template(
        "{spinner} consumed {pos}/{len} events [{bar:40}] {per_sec} ({eta})",
    )
    .expect("valid template")
    .progress_chars("=> ");
    bar.set_style(style);
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

fn report(
    args: &Args,
    tally: &Tally,
    publishing: Duration,
    reopen: Duration,
    fsync: &FsyncLatency,
) -> Result<ExitCode, Box<dyn Error>> {
    let summary = Summary::of(tally, publishing);
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", summary.json(args, reopen, fsync))?;
    } else {
        summary.write_human(&mut out, args, reopen, fsync)?;
    }
    Ok(if summary.exactly_once() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// p50, p99 and p99.9 of a latency histogram, in microseconds.
struct Quantiles {
    p50: u64,
    p99: u64,
    p999: u64,
}

impl Quantiles {
    fn of(histogram: &Histogram<u64>) -> Quantiles {
        Quantiles {
            p50: histogram.value_at_quantile(0.5),
            p99: histogram.value_at_quantile(0.99),
            p999: histogram.value_at_quantile(0.999),
        }
    }
}

/// What the run measured, for the report.
struct Summary {
    published: u64,
    consumed: u64,
    /// Acknowledged events never consumed.
    lost: u64,
    /// Deliveries beyond the first of an event.
    duplicates: u64,
    /// Deliveries of events this run did not publish.
    unexpected: u64,
    events_per_sec: f64,
    ack: Quantiles,
    deliver: Quantiles,
}

impl Summary {
    fn of(tally: &Tally, publishing: Duration) -> Summary {
        let published = tally.acked.load(Ordering::Acquire);
        let lost = tally
            .seen
            .iter()
            .filter(|c| c.load(Ordering::Acquire) == 0)
            .count() as u64;
        let duplicates: u64 = tally
            .seen
            .iter()
            .map(|c| u64::from(c.load(Ordering::Acquire)).saturating_sub(1))
            .sum();
        Summary {
            published,
            consumed: tally.consumed.load(Ordering::Acquire),
            lost,
            duplicates,
            unexpected: tally.unexpected.load(Ordering::Acquire),
            events_per_sec: published as f64 / publishing.as_secs_f64(),
            ack: Quantiles::of(&tally.ack_us.lock().unwrap()),
            deliver: Quantiles::of(&tally.deliver_us.lock().unwrap()),
        }
    }

    /// Every acknowledged event consumed once, and nothing else.
    fn exactly_once(&self) -> bool {
        self.lost == 0 && self.duplicates == 0 && self.unexpected == 0
    }

    fn json(&self, args: &Args, reopen: Duration, fsync: &FsyncLatency) -> serde_json::Value {
        serde_json::json!({
            "published": self.published,
            "consumed": self.consumed,
            "lost": self.lost,
            "duplicates": self.duplicates,
            "unexpected": self.unexpected,
            "events_per_sec": self.events_per_sec.round(),
            "ack_p50_us": self.ack.p50,
            "ack_p99_us": self.ack.p99,
            "ack_p999_us": self.ack.p999,
            "deliver_p50_us": self.deliver.p50,
            "deliver_p99_us": self.deliver.p99,
            "deliver_p999_us": self.deliver.p999,
            "fsync_p50_us": fsync.p50_us,
            "fsync_p99_us": fsync.p99_us,
            "reopen_ms": reopen.as_millis() as u64,
            "producers": args.producers,
            "inflight_per_producer": args.inflight,
            "payload_bytes": args.payload_size,
            "durability": format!("{:?}", args.durability).to_lowercase(),
        })
    }

    fn write_human(
        &self,
        out: &mut impl Write,
        args: &Args,
        reopen: Duration,
        fsync: &FsyncLatency,
    ) -> std::io::Result<()> {
        let Summary {
            published,
            consumed,
            lost,
            duplicates,
            unexpected,
            events_per_sec,
            ack,
            deliver,
        } = self;
        writeln!(out, "sluice demo in {}", args.data_dir.display())?;
        writeln!(
            out,
            "  published  {published} events ({} producers × {} in flight, {} B payloads, {:?} durability)",
            args.producers, args.inflight, args.payload_size, args.durability
        )?;
        writeln!(
            out,
            "  consumed   {consumed} events; lost {lost}, duplicated {duplicates}, unexpected {unexpected}"
        )?;
        writeln!(out, "  throughput {events_per_sec:.0} events/s")?;
        writeln!(
            out,
            "  publish→ack      p50 {} µs  p99 {} µs  p99.9 {} µs",
            ack.p50, ack.p99, ack.p999
        )?;
        writeln!(
            out,
            "  publish→deliver  p50 {} µs  p99 {} µs  p99.9 {} µs",
            deliver.p50, deliver.p99, deliver.p999
        )?;
        writeln!(
            out,
            "  disk fdatasync   p50 {} µs  p99 {} µs (same run, 4 KiB appends)",
            fsync.p50_us, fsync.p99_us
        )?;
        writeln!(
            out,
            "  closed and reopened midway; reopen took {} ms",
            reopen.as_millis()
        )
    }
}

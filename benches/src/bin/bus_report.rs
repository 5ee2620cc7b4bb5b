//! Embedded bus benchmark: publish throughput and publish→ack latency for
//! 256 B events, durable and buffer-only, printed beside this disk's own
//! `fdatasync` latency measured in the same run.
//!
//! ```sh
//! cargo run --release -p sluice-benches --bin bus_report [-- --quick] [--json]
//! ```
//!
//! Rows: closed loop (each producer awaits every publish) with 1, 16 and 64
//! producers; pipelined (64 producers, 64 publishes in flight each); and a
//! fixed offered rate, whose latency is measured from each publish's
//! scheduled time, so a stall is charged to every publish it delayed
//! (corrected for coordinated omission). The paced publishes come from one
//! thread outside the runtime (timer slack 1 ns), which polls the receipts
//! itself, so the generator adds no task or wake-up per event to the
//! runtime it measures; it reports how late it sent, and the latency from
//! each send to its answer (the bus's own share). On the current-thread
//! runtime the paced row runs a second time with the generator as a task
//! on the bus's thread, as an application publishing from its own event
//! loop would.
//!
//! Every row runs on both of tokio's runtimes, the application's choice
//! when it embeds the bus (`--runtime` picks one): multi-thread (a worker
//! per core; the producers' tasks and the bus's share them) and
//! current-thread (the producers and the bus on one thread; `fdatasync`
//! still runs on the blocking pool's threads, as it does on both).
//!
//! Each row runs on a fresh bus. With spare segments on (`--prewrite on`,
//! the default, as in production) the row first warms up until the log has
//! moved onto a segment written out with zeros, so that it measures the
//! steady state of a log that has been written to for a while, not a fresh
//! log's first, growing segment; `--prewrite both` runs every row both
//! ways, for a comparison within one run.

#![allow(clippy::disallowed_methods)]

use std::collections::VecDeque;
use std::error::Error;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use hdrhistogram::Histogram;
use sluice_benches::{
    ReportArgs, RowFilter, bench_root, latency_histogram, let_others_run, probe, scratch,
};
use sluice_core::bus::{Bus, BusConfig, Message};
use sluice_core::raft::Durability;
use sluice_model::state::TopicConfig;

#[derive(Debug, Clone, Copy, serde::Serialize)]
enum Load {
    /// Each producer awaits every publish.
    Closed { producers: u64 },
    /// Each producer keeps `inflight` publishes in flight.
    Pipelined { producers: u64, inflight: usize },
    /// Publishes offered at a fixed total rate.
    Rate {
        producers: u64,
        per_sec: u64,
        generator: Generator,
    },
}

#[derive(Debug, serde::Serialize)]
struct Row {
    load: Load,
    durability: &'static str,
    runtime: Flavor,
    events: u64,
    events_per_sec: f64,
    p50_us: f64,
    p99_us: f64,
    p999_us: f64,
    /// For a paced row: how late the load generator sent, and the latency
    /// from each send (not its scheduled time) to the answer.
    paced: Option<PacedFigures>,
    /// Whether the log wrote spare segments out ahead.
    prewrite: bool,
    /// Seconds of warm-up until the log was on a written-out segment.
    warmup_s: f64,
}

/// A paced row's split of its latency: the generator's lateness (its own
/// error, included in the row's figures) and the bus's share.
#[derive(Debug, serde::Serialize)]
struct PacedFigures {
    sender_late_p50_us: f64,
    sender_late_p99_us: f64,
    send_to_ack_p50_us: f64,
    send_to_ack_p99_us: f64,
}

/// Where a paced row's load generator runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
enum Generator {
    /// On an OS thread of its own, sleeping between passes.
    OwnThread,
    /// As a task on the bus's current-thread runtime, yielding between
    /// passes (the application's own thread publishing).
    BusThread,
}

/// The tokio runtime a row runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
enum Flavor {
    MultiThread,
    CurrentThread,
}

impl Flavor {
    fn name(self) -> &'static str {
        match self {
            Flavor::MultiThread => "multi-thread",
            Flavor::CurrentThread => "current-thread",
        }
    }

    fn build(self) -> std::io::Result<tokio::runtime::Runtime> {
        match self {
            Flavor::MultiThread => tokio::runtime::Builder::new_multi_thread(),
            Flavor::CurrentThread => tokio::runtime::Builder::new_current_thread(),
        }
        .enable_all()
        .build()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Prewrite {
    On,
    Off,
    Both,
}

const PAYLOAD: usize = 256;
const TOPIC: &str = "bench";

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    report: ReportArgs,
    #[command(flatten)]
    filter: RowFilter,
    /// Spare segments written out ahead of the log (production default:
    /// on), off, or both (every row twice, off first).
    #[arg(long, value_enum, default_value = "on")]
    prewrite: Prewrite,
    /// Run every row on this runtime only (default: both, multi-thread
    /// first).
    #[arg(long, value_enum)]
    runtime: Option<Flavor>,
}

fn main() -> Result<(), Box<dyn Error>> {
    let Args {
        report: args,
        filter,
        prewrite,
        runtime,
    } = Args::parse();
    let flavors = match runtime {
        Some(flavor) => vec![flavor],
        None => vec![Flavor::MultiThread, Flavor::CurrentThread],
    };
    let prewrites: &[bool] = match prewrite {
        Prewrite::On => &[true],
        Prewrite::Off => &[false],
        Prewrite::Both => &[false, true],
    };
    let wanted = |load: Load, durability: Durability, flavor: Flavor| {
        let durability = match durability {
            Durability::Sync => "durable",
            Durability::Buffer => "buffer-only",
        };
        filter.wants(&format!(
            "{} {durability} {}",
            describe(load),
            flavor.name()
        ))
    };
    let root = bench_root()?;
    let seconds = if args.quick { 1.0 } else { 4.0 };
    let fsync_before = probe::append_sync_latency(&root, 500, 4096)?;
    let overwrite_before = probe::overwrite_sync_latency(&root, 500, 4096)?;
    let loads = [
        Load::Closed { producers: 1 },
        Load::Closed { producers: 16 },
        Load::Closed { producers: 64 },
        Load::Pipelined {
            producers: 64,
            inflight: 64,
        },
    ];
    let rate = |generator| Load::Rate {
        producers: 16,
        per_sec: 100_000,
        generator,
    };
    let mut rows = Vec::new();
    for flavor in flavors {
        let runtime = flavor.build()?;
        let mut cells = Vec::new();
        for durability in [Durability::Sync, Durability::Buffer] {
            for load in loads {
                cells.push((load, durability));
            }
        }
        cells.push((rate(Generator::OwnThread), Durability::Buffer));
        if flavor == Flavor::CurrentThread {
            cells.push((rate(Generator::BusThread), Durability::Buffer));
        }
        for (load, durability) in cells {
            for &prewrite in prewrites {
                if wanted(load, durability, flavor) {
                    let row = run(&root, load, durability, prewrite, seconds, flavor);
                    rows.push(runtime.block_on(row)?);
                }
            }
        }
    }
    let fsync_after = probe::append_sync_latency(&root, 500, 4096)?;
    let overwrite_after = probe::overwrite_sync_latency(&root, 500, 4096)?;
    let fsync_p99_us = fsync_before.p99_ns.max(fsync_after.p99_ns) as f64 / 1000.0;
    let fsync_p50_us = fsync_before.p50_ns.max(fsync_after.p50_ns) as f64 / 1000.0;
    let overwrite = Fsync {
        p50_us: overwrite_before.p50_ns.max(overwrite_after.p50_ns) as f64 / 1000.0,
        p99_us: overwrite_before.p99_ns.max(overwrite_after.p99_ns) as f64 / 1000.0,
    };
    if args.json {
        let out = serde_json::json!({
            "fsync_p50_us": fsync_p50_us,
            "fsync_p99_us": fsync_p99_us,
            "overwrite_fsync_p50_us": overwrite.p50_us,
            "overwrite_fsync_p99_us": overwrite.p99_us,
            "rows": rows,
        });
        println!("{out}");
    } else {
        print_table(&rows, fsync_p50_us, fsync_p99_us, overwrite);
    }
    Ok(())
}

async fn run(
    root: &std::path::Path,
    load: Load,
    durability: Durability,
    prewrite: bool,
    seconds: f64,
    runtime: Flavor,
) -> Result<Row, Box<dyn Error>> {
    let dir = scratch(root, "bus")?;
    let config = BusConfig {
        durability,
        inflight_per_producer_max: 64,
        prewrite: if prewrite {
            sluice_core::log::Prewrite::Spare
        } else {
            sluice_core::log::Prewrite::Off
        },
        ..BusConfig::default()
    };
    let bus = Bus::open_with_config(dir.path(), config).await?;
    bus.create_topic(TOPIC, 16, TopicConfig::default()).await?;
    let warmup_s = if prewrite {
        let warmed = sluice_benches::warm_up_bus(&bus, TOPIC).await;
        warmed.map_err(|e| -> Box<dyn Error> { e })?
    } else {
        0.0
    };
    let histogram = Arc::new(Mutex::new(latency_histogram()));
    let duration = Duration::from_secs_f64(seconds);
    // Drops what the warm-up recorded.
    #[cfg(feature = "stage-trace")]
    let _ = sluice_model::trace::take_report("warm-up");
    let started = Instant::now();
    let producers = match load {
        Load::Closed { producers }
        | Load::Pipelined { producers, .. }
        | Load::Rate { producers, .. } => producers,
    };
    let mut paced = None;
    if let Load::Rate {
        per_sec, generator, ..
    } = load
    {
        let pacer = Pacer {
            bus: bus.clone(),
            producers,
            interval: Duration::from_secs_f64(1.0 / per_sec as f64),
            until: started + duration,
            histogram: Arc::clone(&histogram),
            generator,
        };
        let measured = match generator {
            Generator::OwnThread => {
                let handle = tokio::runtime::Handle::current();
                tokio::task::spawn_blocking(move || handle.block_on(pacer.run())).await?
            }
            Generator::BusThread => pacer.run().await,
        };
        let measured = measured.map_err(|e| -> Box<dyn Error> { e })?;
        let us = |histogram: &Histogram<u64>, q| histogram.value_at_quantile(q) as f64 / 1000.0;
        paced = Some(PacedFigures {
            sender_late_p50_us: us(&measured.late, 0.5),
            sender_late_p99_us: us(&measured.late, 0.99),
            send_to_ack_p50_us: us(&measured.from_send, 0.5),
            send_to_ack_p99_us: us(&measured.from_send, 0.99),
        });
    }
    let mut tasks = Vec::new();
    for p in 0..producers {
        if matches!(load, Load::Rate { .. }) {
            break;
        }
        let bus = bus.clone();
        let histogram = Arc::clone(&histogram);
        tasks.push(tokio::spawn(async move {
            match load {
                Load::Closed { .. } => closed(bus, p, started + duration, histogram).await,
                Load::Pipelined { inflight, .. } => {
                    pipelined(bus, p, inflight, started + duration, histogram).await
                }
                Load::Rate { .. } => unreachable!("paced by the pacer"),
            }
        }));
    }
    for task in tasks {
        task.await??;
    }
    let elapsed = started.elapsed();
    #[cfg(feature = "stage-trace")]
    eprintln!(
        "{}",
        sluice_model::trace::take_report(&format!("{} {durability:?}", describe(load)))
    );
    bus.close().await?;
    let histogram = histogram.lock().unwrap();
    let us = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
    Ok(Row {
        load,
        durability: match durability {
            Durability::Sync => "durable",
            Durability::Buffer => "buffer-only",
        },
        runtime,
        events: histogram.len(),
        events_per_sec: histogram.len() as f64 / elapsed.as_secs_f64(),
        p50_us: us(0.5),
        p99_us: us(0.99),
        p999_us: us(0.999),
        paced,
        prewrite,
        warmup_s,
    })
}

fn message(producer: u64) -> Message {
    let payload = Bytes::from(vec![b'x'; PAYLOAD]);
    Message::new(TOPIC, payload).key(producer.to_le_bytes().to_vec())
}

type Shared = Arc<Mutex<Histogram<u64>>>;

async fn closed(
    bus: Bus,
    p: u64,
    until: Instant,
    histogram: Shared,
) -> Result<(), sluice_core::bus::BusError> {
    let mut producer = bus.producer().await?;
    let mut local = latency_histogram();
    while Instant::now() < until {
        let sent = Instant::now();
        producer.publish(message(p)).await?;
        local.saturating_record(sent.elapsed().as_nanos() as u64);
    }
    histogram.lock().unwrap().add(&local).expect("same bounds");
    Ok(())
}

async fn pipelined(
    bus: Bus,
    p: u64,
    inflight: usize,
    until: Instant,
    histogram: Shared,
) -> Result<(), sluice_core::bus::BusError> {
    let mut producer = bus.producer().await?;
    let mut local = latency_histogram();
    let mut pending = VecDeque::with_capacity(inflight);
    while Instant::now() < until {
        if pending.len() >= inflight {
            let (sent, receipt): (Instant, sluice_core::bus::PendingReceipt) =
                pending.pop_front().expect("full");
            receipt.wait().await?;
            local.saturating_record(sent.elapsed().as_nanos() as u64);
        }
        pending.push_back((Instant::now(), producer.send(message(p)).await?));
    }
    while let Some((sent, receipt)) = pending.pop_front() {
        receipt.wait().await?;
        local.saturating_record(sent.elapsed().as_nanos() as u64);
    }
    histogram.lock().unwrap().add(&local).expect("same bounds");
    Ok(())
}

/// Offers publishes at a fixed rate, round-robin over the producers, from
/// an OS thread of its own (sleeping at least [`PACE_STEP`] between
/// passes) or from a task on the bus's current-thread runtime (yielding to
/// the bus's tasks between passes). Each pass sends everything that has
/// come due; each publish's latency counts from
/// when it was due, not when it went out, so pacing lag and stalls are
/// charged to the bus's figure, never hidden.
struct Pacer {
    bus: Bus,
    producers: u64,
    interval: Duration,
    until: Instant,
    histogram: Shared,
    generator: Generator,
}

/// How long the pacer sleeps at least between passes. Waking once per
/// 10 µs interval (100,000 events/s) cost the generator about half of one
/// of this machine's two cores in the kernel's sleep and wake path (perf:
/// 35 % of all samples), which it took from the bus it measures: the row's
/// p99 was 0.9–1.6 ms, mostly the bus waiting for a core. Steps of 20, 35,
/// 40, 50 and 70 µs, four runs each, gave p99 572–1,407, 185–303,
/// 190–213, 258–646 and 224–266 µs; a pass sends the events that came due
/// during its sleep, each charged its wait.
const PACE_STEP: Duration = Duration::from_micros(40);

/// A publish's receipt, as the pacer polls it.
type Pending = std::pin::Pin<
    Box<
        dyn std::future::Future<
                Output = Result<sluice_core::bus::Receipt, sluice_core::bus::BusError>,
            > + Send,
    >,
>;

/// The waker a pending receipt is polled with: it notes when the bus
/// answered (the first wake), so a completion is timed exactly however late
/// the pacer polls it, and waking it wakes no thread.
struct Answered {
    origin: Instant,
    /// Nanoseconds after `origin`, plus one; 0 until woken.
    at: std::sync::atomic::AtomicU64,
}

impl std::task::Wake for Answered {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let at = self.origin.elapsed().as_nanos() as u64 + 1;
        let _ = self.at.compare_exchange(
            0,
            at,
            std::sync::atomic::Ordering::Relaxed,
            std::sync::atomic::Ordering::Relaxed,
        );
    }
}

/// One publish in flight: when it was due and when it went out, its
/// receipt, and its waker.
struct InFlight {
    due: Instant,
    sent: Instant,
    receipt: Pending,
    answered: Arc<Answered>,
    waker: std::task::Waker,
}

/// An answered publish's latency, from when it was due (the row's figure)
/// and from when the pacer sent it (the bus's own share).
struct Answer {
    from_due: Duration,
    from_send: Duration,
}

/// What the pacer measured besides the row's latencies.
struct Paced {
    /// How late each publish went out.
    late: Histogram<u64>,
    /// From send to answer: the latency without the generator's lateness.
    from_send: Histogram<u64>,
}

impl Paced {
    fn record(&mut self, histogram: &mut Histogram<u64>, answer: &Answer) {
        histogram.saturating_record(answer.from_due.as_nanos() as u64);
        self.from_send
            .saturating_record(answer.from_send.as_nanos() as u64);
    }
}

impl InFlight {
    /// The publish's latencies once answered: to the receipt's wake, or to
    /// `now` if it was ready before it was first polled.
    fn poll(&mut self, now: Instant) -> Option<Result<Answer, Box<dyn Error + Send + Sync>>> {
        let mut context = std::task::Context::from_waker(&self.waker);
        let answer = match self.receipt.as_mut().poll(&mut context) {
            std::task::Poll::Ready(answer) => answer,
            std::task::Poll::Pending => return None,
        };
        if let Err(error) = answer {
            return Some(Err(error.into()));
        }
        let at = self.answered.at.load(std::sync::atomic::Ordering::Relaxed);
        let answered = if at == 0 {
            now
        } else {
            self.answered.origin + Duration::from_nanos(at - 1)
        };
        Some(Ok(Answer {
            from_due: answered.saturating_duration_since(self.due),
            from_send: answered.saturating_duration_since(self.sent),
        }))
    }
}

impl Pacer {
    /// Offers the load; returns how late each send was and the bus's share
    /// of each latency.
    async fn run(self) -> Result<Paced, Box<dyn Error + Send + Sync>> {
        if self.generator == Generator::OwnThread {
            // Linux stretches a sleep by the thread's timer slack, 50 µs by
            // default, on top of the pacer's own step.
            nix::sys::prctl::set_timerslack(1)?;
        }
        let mut paced = Paced {
            late: latency_histogram(),
            from_send: latency_histogram(),
        };
        let mut producers = Vec::new();
        for _ in 0..self.producers {
            producers.push(self.bus.producer().await?);
        }
        // Receipts are polled here rather than awaited by a task spawned per
        // event, each with a waker that only notes the time: answering them
        // wakes no thread, and the generator adds no task per event to the
        // runtime it measures.
        let origin = Instant::now();
        let mut waiting: Vec<InFlight> = Vec::new();
        let mut histogram = latency_histogram();
        let mut due = origin;
        let mut turn = 0;
        loop {
            let now = Instant::now();
            let mut failed = None;
            waiting.retain_mut(|in_flight| match in_flight.poll(now) {
                Some(Ok(answer)) => {
                    paced.record(&mut histogram, &answer);
                    false
                }
                Some(Err(error)) => {
                    failed = Some(error);
                    false
                }
                None => true,
            });
            if let Some(error) = failed {
                return Err(error);
            }
            if due >= self.until && waiting.is_empty() {
                break;
            }
            while due <= now && due < self.until {
                let sent = Instant::now();
                paced.late.saturating_record((sent - due).as_nanos() as u64);
                let p = turn % producers.len();
                turn += 1;
                let receipt = producers[p].send(message(p as u64)).await?;
                let answered = Arc::new(Answered {
                    origin,
                    at: std::sync::atomic::AtomicU64::new(0),
                });
                let mut in_flight = InFlight {
                    due,
                    sent,
                    // Outside tokio's cooperative budget: the pacer polls
                    // every receipt of a pass within one poll of its own
                    // future, and a receipt polled past the budget would
                    // stay pending (the loop hung) and wake its waker,
                    // noting a false answer time.
                    receipt: Box::pin(tokio::task::unconstrained(receipt.wait())),
                    waker: std::task::Waker::from(Arc::clone(&answered)),
                    answered,
                };
                // The first poll hands the receipt its waker.
                match in_flight.poll(Instant::now()) {
                    Some(Ok(answer)) => paced.record(&mut histogram, &answer),
                    Some(Err(error)) => return Err(error),
                    None => waiting.push(in_flight),
                }
                due += self.interval;
            }
            match self.generator {
                // Blocks this thread only: it runs nothing but the pacer.
                Generator::OwnThread => {
                    std::thread::sleep(due.saturating_duration_since(Instant::now()).max(PACE_STEP))
                }
                Generator::BusThread => let_others_run().await,
            }
        }
        self.histogram
            .lock()
            .unwrap()
            .add(&histogram)
            .expect("same bounds");
        Ok(paced)
    }
}

/// The disk's `fdatasync` after an overwrite inside a written file: what a
/// sync costs the log on a segment written out ahead.
#[derive(Debug, Clone, Copy)]
struct Fsync {
    p50_us: f64,
    p99_us: f64,
}

fn print_table(rows: &[Row], fsync_p50_us: f64, fsync_p99_us: f64, overwrite: Fsync) {
    println!(
        "disk fdatasync after a 4 KiB append, same run: p50 {fsync_p50_us:.0} µs, p99 {fsync_p99_us:.0} µs"
    );
    println!(
        "disk fdatasync after a 4 KiB overwrite in a written file: p50 {:.0} µs, p99 {:.0} µs\n",
        overwrite.p50_us, overwrite.p99_us
    );
    println!(
        "| load | durability | runtime | spare segments | events/s | p50 µs | p99 µs | p99.9 µs | p99 / fsync p99 | p99 / overwrite fsync p99 |"
    );
    println!("|---|---|---|---|---:|---:|---:|---:|---:|---:|");
    for row in rows {
        let load = describe(row.load);
        let prewrite = if row.prewrite {
            format!("on (warm-up {:.1} s)", row.warmup_s)
        } else {
            "off".to_owned()
        };
        println!(
            "| {load} | {} | {} | {prewrite} | {:.0} | {:.0} | {:.0} | {:.0} | {:.2} | {:.2} |",
            row.durability,
            row.runtime.name(),
            row.events_per_sec,
            row.p50_us,
            row.p99_us,
            row.p999_us,
            row.p99_us / fsync_p99_us,
            row.p99_us / overwrite.p99_us
        );
    }
    for row in rows {
        if let Some(paced) = &row.paced {
            println!(
                "\n{} ({}): the load generator itself sent p50 {:.0} µs, \
                 p99 {:.0} µs late (included above: latency counts from each event's scheduled \
                 time); from send to answer, the bus took p50 {:.0} µs, p99 {:.0} µs.",
                describe(row.load),
                row.runtime.name(),
                paced.sender_late_p50_us,
                paced.sender_late_p99_us,
                paced.send_to_ack_p50_us,
                paced.send_to_ack_p99_us,
            );
        }
    }
}

fn describe(load: Load) -> String {
    match load {
        Load::Closed { producers } => {
            let s = if producers == 1 { "" } else { "s" };
            format!("{producers} producer{s}, closed loop")
        }
        Load::Pipelined {
            producers,
            inflight,
        } => format!("{producers} producers × {inflight} in flight"),
        Load::Rate {
            producers,
            per_sec,
            generator,
        } => {
            let by = match generator {
                Generator::OwnThread => "",
                Generator::BusThread => " from the bus's thread",
            };
            format!("{producers} producers, {per_sec} events/s offered{by}")
        }
    }
}

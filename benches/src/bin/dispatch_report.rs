//! Dispatch core benchmark: a local topic with 1 listener and with 8
//! listeners (fan-out, one group each).
//!
//! ```sh
//! cargo run --release -p sluice-benches --bin dispatch_report [-- --quick] [--workers N] [--layout shared|split|both]
//! ```
//!
//! Two thread layouts, both by default:
//! - `split`: the publisher runs on the main thread and the handlers on
//!   the runtime's `--workers` threads (1 by default: on a 2-core machine,
//!   one core publishes and one handles);
//! - `shared`: the publisher and the handlers share one thread (a
//!   current-thread runtime); while the publisher waits for an event's
//!   scheduled time it yields, so the handlers run in its gaps. One core
//!   stays free for everything else on the machine.
//!
//! For each layout and listener count:
//! - saturation: one publisher publishes as fast as back-pressure lets it;
//!   events/s is events published per second until every listener has
//!   handled the last one (deliveries/s is that times the listeners);
//! - fixed rate: events offered at `--rate` per second (1 M by default);
//!   latency runs from each event's *scheduled* publish time to its
//!   handler, so a stall is charged to every event it delayed (corrected
//!   for coordinated omission);
//! - allocations: a counting global allocator (`stats_alloc`) counts every
//!   heap allocation in the process during each measured phase (after a
//!   warm-up), divided by the events published. Events come from a pool
//!   of prebuilt `Arc`s, so the count is the dispatcher's own.

#![allow(clippy::disallowed_methods)]

use std::alloc::System;
use std::error::Error;
use std::future::{Ready, ready};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use sluice_dispatch::DurableBus as _;
use sluice_dispatch::{
    Context, Dispatcher, DispatcherConfig, HandlerError, LocalTopic, SubscriptionHandle, TypedEvent,
};
use stats_alloc::{INSTRUMENTED_SYSTEM, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Prebuilt events, reused round-robin; larger than any queue, so a slot's
/// send time is not overwritten before every listener has read it.
const POOL_SIZE: usize = 1 << 16;

#[derive(Debug, Parser)]
struct Args {
    /// Shorter runs, for a smoke test.
    #[arg(long)]
    quick: bool,
    /// Runtime worker threads of the split layout (handlers run there).
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Which thread layouts to measure.
    #[arg(long, value_enum, default_value_t = Layouts::Both)]
    layout: Layouts,
    /// Offered rate of the fixed-rate phase, events per second.
    #[arg(long, default_value_t = 1_000_000)]
    rate: u64,
    /// A second, lower offered rate for the 8-listener fan-out (8 handlers
    /// per event), which one handler thread cannot take at `--rate`.
    #[arg(long, default_value_t = 500_000)]
    fanout_rate: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Layouts {
    Shared,
    Split,
    Both,
}

/// Where the publisher and the handlers run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Layout {
    /// One thread for both (a current-thread runtime).
    Shared,
    /// The publisher on the main thread, handlers on the runtime's workers.
    Split,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Tick {
    slot: u32,
    key: Bytes,
}

impl TypedEvent for Tick {
    const TYPE_NAME: &'static str = "bench.tick";
    const SCHEMA_VERSION: u32 = 1;

    fn key(&self) -> Bytes {
        self.key.clone()
    }
}

/// What the benchmark and the handlers share.
struct Shared {
    epoch: Instant,
    pool: Vec<Arc<Tick>>,
    sent_ns: Vec<AtomicU64>,
    timing: AtomicBool,
}

impl Shared {
    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }
}

/// One listener's counters.
struct Sink {
    delivered: AtomicU64,
    target: AtomicU64,
    done_ns: AtomicU64,
    latency_ns: Mutex<Histogram<u64>>,
}

fn handler(
    shared: Arc<Shared>,
    sink: Arc<Sink>,
) -> impl Fn(Arc<Tick>, Context) -> Ready<Result<(), HandlerError>> + Send + Sync + 'static {
    move |tick, _context| {
        if shared.timing.load(Ordering::Relaxed) {
            let sent_ns = shared.sent_ns[tick.slot as usize].load(Ordering::Acquire);
            let latency_ns = shared.now_ns().saturating_sub(sent_ns).max(1);
            sink.latency_ns
                .lock()
                .unwrap()
                .saturating_record(latency_ns);
        }
        let delivered = sink.delivered.fetch_add(1, Ordering::Relaxed) + 1;
        if delivered == sink.target.load(Ordering::Relaxed) {
            sink.done_ns.store(shared.now_ns(), Ordering::Release);
        }
        ready(Ok(()))
    }
}

struct Row {
    layout: Layout,
    listeners: usize,
    saturation: Phase,
    rate: Phase,
    offered_per_sec: u64,
    p50_us: f64,
    p99_us: f64,
    p999_us: f64,
}

struct Phase {
    events: u64,
    events_per_sec: f64,
    allocations: usize,
    bytes: usize,
}

struct Setup {
    topic: LocalTopic<Tick>,
    sinks: Vec<Arc<Sink>>,
    handles: Vec<SubscriptionHandle<Tick>>,
}

fn setup(dispatcher: &Dispatcher, shared: &Arc<Shared>, listeners: usize) -> Setup {
    let topic = dispatcher.topic::<Tick>();
    let sinks: Vec<_> = (0..listeners)
        .map(|_| {
            Arc::new(Sink {
                delivered: AtomicU64::new(0),
                target: AtomicU64::new(u64::MAX),
                done_ns: AtomicU64::new(0),
                latency_ns: Mutex::new(Histogram::new_with_bounds(1, 60_000_000_000, 3).unwrap()),
            })
        })
        .collect();
    let handles = sinks
        .iter()
        .enumerate()
        .map(|(index, sink)| {
            let group = format!("listener-{index}");
            let handler = handler(Arc::clone(shared), Arc::clone(sink));
            topic.subscribe(&group, handler).expect("valid group")
        })
        .collect();
    Setup {
        topic,
        sinks,
        handles,
    }
}

/// Publishes `events` (paced to `rate_per_sec` if given) and waits until
/// every listener has handled them.
async fn run_phase(
    layout: Layout,
    shared: &Shared,
    setup: &Setup,
    events: u64,
    rate_per_sec: Option<u64>,
) -> Phase {
    for sink in &setup.sinks {
        let delivered = sink.delivered.load(Ordering::Relaxed);
        sink.target.store(delivered + events, Ordering::Relaxed);
    }
    let before = INSTRUMENTED_SYSTEM.stats();
    let start_ns = shared.now_ns();
    for index in 0..events {
        let slot = index as usize % POOL_SIZE;
        if let Some(rate) = rate_per_sec {
            let scheduled_ns = start_ns + index * 1_000_000_000 / rate;
            while shared.now_ns() < scheduled_ns {
                match layout {
                    Layout::Shared => sluice_benches::let_others_run().await,
                    Layout::Split => std::hint::spin_loop(),
                }
            }
            shared.sent_ns[slot].store(scheduled_ns, Ordering::Release);
        }
        let tick = Arc::clone(&shared.pool[slot]);
        setup.topic.publish(tick).await.expect("publish");
    }
    let mut done_ns = 0;
    for sink in &setup.sinks {
        while sink.delivered.load(Ordering::Relaxed) < sink.target.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        done_ns = done_ns.max(sink.done_ns.load(Ordering::Acquire));
    }
    let after = INSTRUMENTED_SYSTEM.stats();
    let elapsed_secs = (done_ns - start_ns) as f64 / 1e9;
    Phase {
        events,
        events_per_sec: events as f64 / elapsed_secs,
        allocations: after.allocations - before.allocations,
        bytes: after.bytes_allocated - before.bytes_allocated,
    }
}

async fn measure(
    args: &Args,
    layout: Layout,
    shared: &Arc<Shared>,
    listeners: usize,
    offered_per_sec: u64,
) -> Row {
    let dispatcher: Dispatcher = Dispatcher::new(DispatcherConfig::default());
    let setup = setup(&dispatcher, shared, listeners);
    let scale = if args.quick { 10 } else { 1 };
    let saturation_events = 4_000_000 / scale / listeners as u64;
    let rate_events = offered_per_sec.min(2_000_000) / scale;
    // Warm up: queues, timer wheel, histograms, the allocator's caches.
    run_phase(layout, shared, &setup, 200_000 / scale, None).await;
    let saturation = run_phase(layout, shared, &setup, saturation_events, None).await;
    let rate = Some(offered_per_sec);
    run_phase(layout, shared, &setup, rate_events / 4, rate).await;
    for sink in &setup.sinks {
        sink.latency_ns.lock().unwrap().reset();
    }
    shared.timing.store(true, Ordering::Relaxed);
    let rate = run_phase(layout, shared, &setup, rate_events, rate).await;
    shared.timing.store(false, Ordering::Relaxed);
    let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
    for sink in &setup.sinks {
        latency.add(&*sink.latency_ns.lock().unwrap()).unwrap();
    }
    for handle in setup.handles {
        setup.topic.unsubscribe(handle).await.expect("unsubscribe");
    }
    let us = |q| latency.value_at_quantile(q) as f64 / 1e3;
    Row {
        layout,
        listeners,
        saturation,
        offered_per_sec,
        p50_us: us(0.5),
        p99_us: us(0.99),
        p999_us: us(0.999),
        rate,
    }
}

fn print(args: &Args, rows: &[Row]) {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("dispatch_report: {cores} cores\n");
    println!(
        "| layout | listeners | saturation events/s | deliveries/s | allocs/event (sat.) | offered events/s | achieved events/s | p50 µs | p99 µs | p99.9 µs | allocs/event (rate) | bytes/event (rate) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for row in rows {
        let per_event = |phase: &Phase, value: usize| value as f64 / phase.events as f64;
        let layout = match row.layout {
            Layout::Shared => "shared: 1 thread".to_string(),
            Layout::Split => format!("split: main + {} worker(s)", args.workers),
        };
        println!(
            "| {layout} | {} | {:.0} | {:.0} | {:.4} | {} | {:.0} | {:.1} | {:.1} | {:.1} | {:.4} | {:.2} |",
            row.listeners,
            row.saturation.events_per_sec,
            row.saturation.events_per_sec * row.listeners as f64,
            per_event(&row.saturation, row.saturation.allocations),
            row.offered_per_sec,
            row.rate.events_per_sec,
            row.p50_us,
            row.p99_us,
            row.p999_us,
            per_event(&row.rate, row.rate.allocations),
            per_event(&row.rate, row.rate.bytes),
        );
    }
}

fn main() -> Result<(), Box<dyn Error>> {
    let args = Args::parse();
    let split = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.workers)
        .enable_all()
        .build()?;
    let shared = Arc::new(Shared {
        epoch: Instant::now(),
        pool: (0..POOL_SIZE)
            .map(|slot| {
                let key = Bytes::from(format!("account-{}", slot % 1024));
                Arc::new(Tick {
                    slot: slot as u32,
                    key,
                })
            })
            .collect(),
        sent_ns: (0..POOL_SIZE).map(|_| AtomicU64::new(0)).collect(),
        timing: AtomicBool::new(false),
    });
    let layouts: &[Layout] = match args.layout {
        Layouts::Shared => &[Layout::Shared],
        Layouts::Split => &[Layout::Split],
        Layouts::Both => &[Layout::Shared, Layout::Split],
    };
    let mut rows = Vec::new();
    for &layout in layouts {
        let shared_thread;
        let runtime = match layout {
            Layout::Shared => {
                shared_thread = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                &shared_thread
            }
            Layout::Split => &split,
        };
        runtime.block_on(async {
            for (listeners, rate) in [(1, args.rate), (8, args.rate), (8, args.fanout_rate)] {
                rows.push(measure(&args, layout, &shared, listeners, rate).await);
            }
        });
    }
    print(&args, &rows);
    let root = sluice_benches::bench_root()?;
    let fsync = sluice_benches::probe::append_sync_latency(&root, 300, 4096)?;
    let durable = split.block_on(durable_latency(&root, if args.quick { 300 } else { 3000 }))?;
    println!(
        "\ndurable topic (embedded bus, fsync before ack), one producer awaiting each publish, \
         publish → handler: {} events, p50 {:.0} µs, p99 {:.0} µs; the disk's fdatasync p99 in \
         the same run {:.0} µs (ratio {:.2})",
        durable.len(),
        durable.value_at_quantile(0.5) as f64 / 1000.0,
        durable.value_at_quantile(0.99) as f64 / 1000.0,
        fsync.p99_ns as f64 / 1000.0,
        durable.value_at_quantile(0.99) as f64 / fsync.p99_ns as f64,
    );
    Ok(())
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Stamped {
    sent_ns: u64,
}

impl TypedEvent for Stamped {
    const TYPE_NAME: &'static str = "bench.stamped";
    const SCHEMA_VERSION: u32 = 1;

    fn key(&self) -> Bytes {
        Bytes::new()
    }
}

/// Publish → handler latency of a durable typed subscription: one
/// producer publishes `events` one at a time (each awaited, so each waits
/// for its fsync), stamping the send time; the handler records the gap.
async fn durable_latency(
    root: &std::path::Path,
    events: u64,
) -> Result<Histogram<u64>, Box<dyn Error>> {
    use sluice_core::bus::Bus;
    use sluice_dispatch::{Context, Encoding};
    let dir = sluice_benches::scratch(root, "durable-dispatch")?;
    let bus = Bus::open(dir.path()).await?;
    let epoch = Instant::now();
    let histogram = Arc::new(Mutex::new(sluice_benches::latency_histogram()));
    let handled = Arc::new(AtomicU64::new(0));
    let handler = {
        let (histogram, handled) = (Arc::clone(&histogram), Arc::clone(&handled));
        move |event: Arc<Stamped>, _: Context| {
            let latency = (epoch.elapsed().as_nanos() as u64).saturating_sub(event.sent_ns);
            histogram.lock().unwrap().saturating_record(latency);
            handled.fetch_add(1, Ordering::Release);
            ready(Ok(()))
        }
    };
    let subscription = bus.subscribe::<Stamped, _>("bench", handler).await?;
    let mut producer = bus.producer().await?;
    for _ in 0..events {
        let event = Stamped {
            sent_ns: epoch.elapsed().as_nanos() as u64,
        };
        bus.publish_typed(&mut producer, &event, Encoding::Postcard)
            .await?;
    }
    while handled.load(Ordering::Acquire) < events {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    subscription.unsubscribe().await?;
    bus.close().await?;
    let histogram = histogram.lock().unwrap().clone();
    Ok(histogram)
}

//! `sluice bench`: drives a running cluster over the network, as
//! `kafka-producer-perf-test`, `nats bench` and `redis-benchmark` drive
//! theirs, and reports throughput and latency percentiles.
//!
//! Each producer has its own connection and sends one request at a time
//! (a single event, or a batch), waiting for its acknowledgement; with
//! `--rate` the producers pace their requests to that total event rate and
//! latency counts from when a request was due, not when it went out, so a
//! stalled node shows in the percentiles instead of slowing the load
//! (coordinated omission). Consumers, if asked for, read the topic as one
//! group and report their rate. A refused event fails the run.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use sluice_client::client::{Client, ClientError};
use sluice_client::consumer::{RemoteConsumer, Start};
use sluice_client::protocol::PublishOutcome;
use sluice_model::constants::{
    BENCH_DURATION_S_MAX, BENCH_PRODUCERS_MAX, EVENT_PAYLOAD_SIZE_MAX, FETCH_EVENTS_MAX,
};
use sluice_model::event::Headers;

use super::{ClusterArgs, Outcome, runtime};

mod plot;

/// The percentiles every report prints, as fractions.
const PERCENTILES: [f64; 5] = [0.5, 0.9, 0.99, 0.999, 0.9999];

/// Latencies above this are recorded as this (one minute, in µs).
const LATENCY_US_MAX: u64 = 60_000_000;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(flatten)]
    cluster: ClusterArgs,
    /// The topic to publish to; created with `--partitions` if missing.
    #[arg(long, default_value = "bench")]
    topic: String,
    /// Partitions of the topic when this run creates it.
    #[arg(long, default_value_t = 16)]
    partitions: u32,
    /// Producers, each on its own connection.
    #[arg(long, default_value_t = 16)]
    producers: usize,
    /// Consumers, as members of one group reading the topic.
    #[arg(long, default_value_t = 0)]
    consumers: usize,
    /// Payload bytes per event.
    #[arg(long, default_value_t = 256)]
    size: usize,
    /// Events per request (1: single sends).
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Total events per second across producers; without it each producer
    /// sends its next request as soon as the last is acknowledged.
    #[arg(long)]
    rate: Option<u64>,
    /// Seconds measured.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of load before measuring starts.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Print the report as one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Draw the latency-by-percentile curve into this SVG file.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
    /// Add the curve of an earlier run (its `--json` output) to the plot,
    /// labelled with its `label`; repeatable.
    #[arg(long, value_name = "REPORT.json", requires = "plot")]
    compare: Vec<PathBuf>,
    /// The label of this run's curve and report.
    #[arg(long, default_value = "sluice")]
    label: String,
    /// No progress bar (it is also hidden when stderr is not a terminal).
    #[arg(long)]
    no_progress: bool,
}

impl Args {
    fn check(&self) -> Result<(), String> {
        if !(1..=BENCH_PRODUCERS_MAX).contains(&self.producers) {
            return Err(format!(
                "--producers {} is out of range: use 1 to {BENCH_PRODUCERS_MAX}",
                self.producers
            ));
        }
        if self.consumers > BENCH_PRODUCERS_MAX {
            return Err(format!(
                "--consumers {} is out of range: use 0 to {BENCH_PRODUCERS_MAX}",
                self.consumers
            ));
        }
        if self.size > EVENT_PAYLOAD_SIZE_MAX {
            return Err(format!(
                "--size {} is larger than an event's payload may be ({EVENT_PAYLOAD_SIZE_MAX} bytes)",
                self.size
            ));
        }
        if !(1..=FETCH_EVENTS_MAX as usize).contains(&self.batch) {
            return Err(format!(
                "--batch {} is out of range: use 1 to {FETCH_EVENTS_MAX}",
                self.batch
            ));
        }
        for (name, seconds) in [("--duration", self.duration), ("--warmup", self.warmup)] {
            if !(0.0..=BENCH_DURATION_S_MAX).contains(&seconds) {
                return Err(format!(
                    "{name} {seconds} is out of range: use 0 to {BENCH_DURATION_S_MAX} seconds"
                ));
            }
        }
        if self.duration <= 0.0 {
            return Err("--duration must be more than 0 seconds".to_owned());
        }
        if self.rate == Some(0) {
            return Err("--rate 0 sends nothing: leave it out for a closed loop".to_owned());
        }
        Ok(())
    }
}

pub(crate) fn run(args: Args) -> Outcome {
    args.check()?;
    let report = runtime()?.block_on(bench(&args))?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", report.text());
    }
    if let Some(path) = &args.plot {
        let mut curves = vec![(report.label.clone(), report.curve.clone())];
        for other in &args.compare {
            let other = read_report(other)?;
            curves.push((other.label, other.curve));
        }
        plot::draw(path, &curves)?;
    }
    Ok(if report.errors == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn read_report(path: &Path) -> Result<Report, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| format!("cannot read {}: {error}", path.display()))?;
    serde_json::from_str(&text).map_err(|error| {
        format!(
            "{} is not a `sluice bench --json` report: {error}",
            path.display()
        )
    })
}

/// What the producers and consumers count while they run.
#[derive(Default)]
struct Counters {
    published: AtomicU64,
    consumed: AtomicU64,
    errors: AtomicU64,
}

/// One run's results.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Report {
    label: String,
    producers: usize,
    consumers: usize,
    payload_bytes: usize,
    batch: usize,
    rate: Option<u64>,
    seconds: f64,
    events: u64,
    events_per_second: f64,
    megabytes_per_second: f64,
    consumed_per_second: f64,
    errors: u64,
    first_error: Option<String>,
    /// Latency per request in µs at [`PERCENTILES`], then the maximum.
    latency_us: Vec<(String, u64)>,
    /// The latency-by-percentile curve: (percentile as a fraction, µs).
    curve: Vec<(f64, u64)>,
}

impl Report {
    fn text(&self) -> String {
        let load = match self.rate {
            Some(rate) => format!("{rate} events/s paced"),
            None => "closed loop".to_owned(),
        };
        let latency: Vec<String> = self
            .latency_us
            .iter()
            .map(|(name, us)| format!("{name} {}", thousands(*us)))
            .collect();
        let mut text = format!(
            "{}: {} producers, {} B events, {} per request, {load}, {:.1} s\n\
             published {} events: {} events/s, {:.1} MB/s\n\
             latency per request (µs): {}\n",
            self.label,
            self.producers,
            self.payload_bytes,
            self.batch,
            self.seconds,
            thousands(self.events),
            thousands(self.events_per_second as u64),
            self.megabytes_per_second,
            latency.join("  "),
        );
        if self.consumers > 0 {
            text += &format!(
                "consumed {} events/s ({} consumers)\n",
                thousands(self.consumed_per_second as u64),
                self.consumers
            );
        }
        text += &format!("errors: {}\n", self.errors);
        if let Some(error) = &self.first_error {
            text += &format!("first error: {error}\n");
        }
        text
    }
}

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

async fn bench(args: &Args) -> Result<Report, Box<dyn std::error::Error>> {
    let admin = args.cluster.client()?;
    ensure_topic(&admin, &args.topic, args.partitions).await?;
    let counters = Arc::new(Counters::default());
    let first_error = Arc::new(std::sync::Mutex::new(None::<String>));
    let started = Instant::now();
    let measure_from = started + Duration::from_secs_f64(args.warmup);
    let stop_at = measure_from + Duration::from_secs_f64(args.duration);

    let mut producers = Vec::new();
    for _ in 0..args.producers {
        let client = args.cluster.client()?;
        let producer = Producer {
            topic: args.topic.clone(),
            payload: Bytes::from(vec![b'x'; args.size]),
            batch: args.batch,
            interval: args.rate.map(|rate| {
                Duration::from_secs_f64(args.batch as f64 * args.producers as f64 / rate as f64)
            }),
            measure_from,
            stop_at,
            counters: Arc::clone(&counters),
            first_error: Arc::clone(&first_error),
        };
        producers.push(tokio::spawn(producer.run(client)));
    }
    let group = format!("sluice-bench-{}", std::process::id());
    let mut consumers = Vec::new();
    for member in 0..args.consumers {
        let client = args.cluster.client()?;
        let consumer = RemoteConsumer::join(
            client,
            &group,
            &format!("member-{member}"),
            &[&args.topic],
            Start::Latest,
        )
        .await?;
        consumers.push(tokio::spawn(consume(
            consumer,
            measure_from,
            stop_at,
            Arc::clone(&counters),
        )));
    }
    let progress = progress_bar(args, started, stop_at, &counters);
    let mut histogram = latency_histogram();
    for producer in producers {
        histogram.add(producer.await?)?;
    }
    for consumer in consumers {
        consumer.await??;
    }
    progress.finish_and_clear();
    let seconds = args.duration;
    let events = counters.published.load(Ordering::Relaxed);
    let mut latency_us: Vec<(String, u64)> = PERCENTILES
        .iter()
        .map(|&q| (percentile_name(q), histogram.value_at_quantile(q)))
        .collect();
    latency_us.push(("max".to_owned(), histogram.max()));
    let first_error = first_error.lock().expect("not poisoned").clone();
    Ok(Report {
        label: args.label.clone(),
        producers: args.producers,
        consumers: args.consumers,
        payload_bytes: args.size,
        batch: args.batch,
        rate: args.rate,
        seconds,
        events,
        events_per_second: events as f64 / seconds,
        megabytes_per_second: events as f64 * args.size as f64 / seconds / 1e6,
        consumed_per_second: counters.consumed.load(Ordering::Relaxed) as f64 / seconds,
        errors: counters.errors.load(Ordering::Relaxed),
        first_error,
        latency_us,
        curve: curve(&histogram),
    })
}

fn percentile_name(q: f64) -> String {
    let percent = format!("{}", q * 100.0);
    format!("p{percent}")
}

fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).expect("valid histogram bounds")
}

/// Points of the latency-by-percentile curve, denser towards the tail
/// (as HdrHistogram's percentile distribution prints them).
fn curve(histogram: &Histogram<u64>) -> Vec<(f64, u64)> {
    if histogram.is_empty() {
        return Vec::new();
    }
    let mut points = Vec::new();
    let mut remaining = 1.0_f64;
    // Halve the distance to 100 % each step, five points per halving,
    // down to one request's share of the whole.
    let resolution = 1.0 / histogram.len() as f64;
    while remaining > resolution {
        for step in 0..5 {
            let q = 1.0 - remaining * (1.0 - f64::from(step) / 10.0);
            points.push((q, histogram.value_at_quantile(q)));
        }
        remaining /= 2.0;
    }
    points.push((1.0, histogram.max()));
    points
}

async fn ensure_topic(client: &Client, topic: &str, partitions: u32) -> Result<(), ClientError> {
    let metadata = client.metadata().await?;
    if metadata.topics.iter().any(|(name, _)| name == topic) {
        return Ok(());
    }
    client.create_topic(topic, partitions).await
}

struct Producer {
    topic: String,
    payload: Bytes,
    batch: usize,
    /// Between one producer's requests, when paced.
    interval: Option<Duration>,
    measure_from: Instant,
    stop_at: Instant,
    counters: Arc<Counters>,
    first_error: Arc<std::sync::Mutex<Option<String>>>,
}

impl Producer {
    async fn run(self, client: Client) -> Histogram<u64> {
        let mut histogram = latency_histogram();
        let mut producer = match client.producer().await {
            Ok(producer) => producer,
            Err(error) => {
                self.failed(1, format!("cannot open a producer: {error}"));
                return histogram;
            }
        };
        let mut due = Instant::now();
        while due < self.stop_at {
            if self.interval.is_some() {
                tokio::time::sleep_until(due.into()).await;
            } else {
                due = Instant::now();
            }
            let mut events = Vec::with_capacity(self.batch);
            for _ in 0..self.batch {
                match producer
                    .stamp(
                        &self.topic,
                        Bytes::new(),
                        self.payload.clone(),
                        Headers::default(),
                    )
                    .await
                {
                    Ok(event) => events.push(event),
                    Err(error) => {
                        self.failed(1, format!("cannot stamp an event: {error}"));
                        return histogram;
                    }
                }
            }
            let outcome = producer.publish(events).await;
            let done = Instant::now();
            match outcome {
                Ok(outcomes) => {
                    let refused: Vec<&PublishOutcome> = outcomes
                        .iter()
                        .filter(|outcome| matches!(outcome, PublishOutcome::Refused { .. }))
                        .collect();
                    if let Some(PublishOutcome::Refused { message }) = refused.first() {
                        self.failed(refused.len() as u64, format!("refused: {message}"));
                    }
                    if due >= self.measure_from && done <= self.stop_at {
                        let micros = done.duration_since(due).as_micros() as u64;
                        histogram.saturating_record(micros.clamp(1, LATENCY_US_MAX));
                        let appended = (outcomes.len() - refused.len()) as u64;
                        self.counters
                            .published
                            .fetch_add(appended, Ordering::Relaxed);
                    }
                }
                Err(error) => {
                    self.failed(self.batch as u64, format!("publish failed: {error}"));
                    return histogram;
                }
            }
            if let Some(interval) = self.interval {
                due += interval;
            }
        }
        histogram
    }

    fn failed(&self, events: u64, error: String) {
        self.counters.errors.fetch_add(events, Ordering::Relaxed);
        self.first_error
            .lock()
            .expect("not poisoned")
            .get_or_insert(error);
    }
}

async fn consume(
    mut consumer: RemoteConsumer,
    measure_from: Instant,
    stop_at: Instant,
    counters: Arc<Counters>,
) -> Result<(), ClientError> {
    while Instant::now() < stop_at {
        let polled = consumer.poll().await?;
        let now = Instant::now();
        if now >= measure_from && now <= stop_at {
            counters
                .consumed
                .fetch_add(polled.len() as u64, Ordering::Relaxed);
        }
        if !polled.is_empty() {
            consumer.commit().await?;
        }
    }
    consumer.leave().await
}

/// Elapsed time against the whole run, and the events/s since the last
/// tick; hidden with `--json`, `--no-progress` or off a terminal.
fn progress_bar(
    args: &Args,
    started: Instant,
    stop_at: Instant,
    counters: &Arc<Counters>,
) -> ProgressBar {
    if args.json || args.no_progress {
        return ProgressBar::hidden();
    }
    let total = stop_at.duration_since(started).as_millis() as u64;
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {elapsed}/{duration} {msg}")
            .expect("a valid template"),
    );
    let ticking = bar.clone();
    let counters = Arc::clone(counters);
    tokio::spawn(async move {
        let mut last = 0;
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        while !ticking.is_finished() {
            tick.tick().await;
            let now = counters.published.load(Ordering::Relaxed);
            ticking.set_message(format!("{} events/s", thousands((now - last) * 2)));
            last = now;
            ticking.set_position(started.elapsed().as_millis() as u64);
        }
    });
    bar
}

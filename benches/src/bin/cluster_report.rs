//! Cluster benchmark: a 3-node Sluice cluster on loopback beside a 1-node
//! one, both in this process and driven through the same client protocol
//! (`sluice_client::client`), with 256 B events, durable and buffer-only,
//! printed beside this disk's own `fdatasync` latency from the same run.
//!
//! ```sh
//! cargo run --release -p sluice-benches --bin cluster_report [-- --quick] [--json] [--only TEXT]
//! ```
//!
//! `--only "1 node, 16 producers"` runs only the rows whose description
//! (`{nodes} node(s), {load}, {durability}`) contains the text.
//!
//! `--tls on` secures every connection (clients and nodes) with TLS and
//! certificates made for the run; `--tls compare` runs each row plain and
//! with TLS, alternating, `--rounds` times (2 by default), and prints the
//! ratios TLS / plain of each pair.
//!
//! Loads:
//! - closed loop: 16 producers, each publishing one event per request and
//!   awaiting it;
//! - pipelined: 64 producers, each keeping 64 events in flight (one
//!   request of 64 events at a time, the network equivalent of the
//!   embedded benchmark's 64 publishes in flight; a request is the unit
//!   the client resends after a failover).
//!
//! Every node writes to the same disk and runs on the same cores as the
//! others and the clients: a 3-node figure here pays three fsyncs and three
//! state machines on one machine, which a real cluster spreads out.
//!
//! Each row warms up (16 closed-loop producers, latencies discarded) until
//! every node's log has moved onto a segment written out ahead
//! (`log/spare.rs`): the steady state of a cluster that has been running.

#![allow(clippy::disallowed_methods)]

use std::error::Error;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use hdrhistogram::Histogram;
use sluice_benches::cluster::Transport;
use sluice_benches::{ReportArgs, RowFilter, bench_root, latency_histogram, probe};
use sluice_client::client::RemoteProducer;
use sluice_client::protocol::PublishOutcome;
use sluice_core::raft::Durability;
use sluice_model::event::Headers;

#[derive(Debug, Clone, Copy, serde::Serialize)]
enum Load {
    /// Each producer sends one event per request and awaits it.
    Closed { producers: u64 },
    /// Each producer keeps `batch` events in flight in one request.
    Pipelined { producers: u64, batch: usize },
}

#[derive(Debug, serde::Serialize)]
struct Row {
    nodes: u64,
    transport: Transport,
    /// Which alternation of `--tls compare` (0 otherwise).
    round: u32,
    load: Load,
    durability: &'static str,
    events: u64,
    events_per_sec: f64,
    p50_us: f64,
    p99_us: f64,
    p999_us: f64,
    /// Seconds of warm-up until every node's log was on a written-out
    /// segment.
    warmup_s: f64,
}

const PAYLOAD: usize = 256;
const TOPIC: &str = "bench";
const PARTITIONS: u32 = 16;

type Shared = Arc<Mutex<Histogram<u64>>>;
type Outcome<T> = Result<T, Box<dyn Error + Send + Sync>>;

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    report: ReportArgs,
    #[command(flatten)]
    filter: RowFilter,
    /// Plain TCP (off), TLS on every connection (on), or each row both
    /// ways, alternating (compare).
    #[arg(long, value_enum, default_value = "off")]
    tls: TlsMode,
    /// With `--tls compare`: how many plain/TLS pairs per row.
    #[arg(long, default_value_t = 2)]
    rounds: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum TlsMode {
    Off,
    On,
    Compare,
}

fn main() -> Result<(), Box<dyn Error>> {
    let Args {
        report: args,
        filter,
        tls,
        rounds,
    } = Args::parse();
    // Each configuration, in the order run: alternating when comparing, so
    // that a change in the shared machine's load falls on both.
    let variants: Vec<(Transport, u32)> = match tls {
        TlsMode::Off => vec![(Transport::Plain, 0)],
        TlsMode::On => vec![(Transport::Tls, 0)],
        TlsMode::Compare => (0..rounds.max(1))
            .flat_map(|round| [(Transport::Plain, round), (Transport::Tls, round)])
            .collect(),
    };
    let root = bench_root()?;
    let seconds = if args.quick { 1.0 } else { 4.0 };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let fsync_before = probe::append_sync_latency(&root, 500, 4096)?;
    let overwrite_before = probe::overwrite_sync_latency(&root, 500, 4096)?;
    let loads = [
        Load::Closed { producers: 16 },
        Load::Pipelined {
            producers: 64,
            batch: 64,
        },
    ];
    let mut rows = Vec::new();
    for durability in [Durability::Sync, Durability::Buffer] {
        for nodes in [1, 3] {
            for load in loads {
                if !filter.wants(&describe(nodes, load, durability)) {
                    continue;
                }
                for &(transport, round) in &variants {
                    let config = Config {
                        nodes,
                        load,
                        durability,
                        transport,
                        round,
                    };
                    let row = runtime.block_on(run(&root, config, seconds));
                    rows.push(row.map_err(|e| e.to_string())?);
                }
            }
        }
    }
    let fsync_after = probe::append_sync_latency(&root, 500, 4096)?;
    let overwrite_after = probe::overwrite_sync_latency(&root, 500, 4096)?;
    let fsync_p99_us = fsync_before.p99_ns.max(fsync_after.p99_ns) as f64 / 1000.0;
    let fsync_p50_us = fsync_before.p50_ns.max(fsync_after.p50_ns) as f64 / 1000.0;
    let overwrite_p99_us = overwrite_before.p99_ns.max(overwrite_after.p99_ns) as f64 / 1000.0;
    let overwrite_p50_us = overwrite_before.p50_ns.max(overwrite_after.p50_ns) as f64 / 1000.0;
    if args.json {
        let out = serde_json::json!({
            "fsync_p50_us": fsync_p50_us,
            "fsync_p99_us": fsync_p99_us,
            "overwrite_fsync_p50_us": overwrite_p50_us,
            "overwrite_fsync_p99_us": overwrite_p99_us,
            "rows": rows,
        });
        println!("{out}");
    } else {
        let overwrite = (overwrite_p50_us, overwrite_p99_us);
        print_table(&rows, fsync_p50_us, fsync_p99_us, overwrite);
        if tls == TlsMode::Compare {
            print_comparison(&rows);
        }
    }
    Ok(())
}

/// One row's configuration.
#[derive(Debug, Clone, Copy)]
struct Config {
    nodes: u64,
    load: Load,
    durability: Durability,
    transport: Transport,
    round: u32,
}

async fn run(root: &std::path::Path, config: Config, seconds: f64) -> Outcome<Row> {
    let Config {
        nodes,
        load,
        durability,
        transport,
        round,
    } = config;
    let (_dir, members, client) =
        sluice_benches::cluster::start_with(root, nodes, durability, transport).await?;
    client.create_topic(TOPIC, PARTITIONS).await?;
    let warmup_s = sluice_benches::cluster::warm_up(&client, &members, TOPIC).await?;
    let histogram = Arc::new(Mutex::new(latency_histogram()));
    let (producers, batch) = match load {
        Load::Closed { producers } => (producers, 1),
        Load::Pipelined { producers, batch } => (producers, batch),
    };
    let mut ready = Vec::new();
    for _ in 0..producers {
        ready.push(client.producer().await?);
    }
    let started = Instant::now();
    let until = started + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::new();
    for (p, producer) in ready.into_iter().enumerate() {
        let histogram = Arc::clone(&histogram);
        tasks.push(tokio::spawn(produce(
            producer, p as u64, batch, until, histogram,
        )));
    }
    for task in tasks {
        task.await??;
    }
    let elapsed = started.elapsed();
    #[cfg(feature = "stage-trace")]
    eprintln!(
        "{}",
        sluice_model::trace::take_report(&describe(nodes, load, durability))
    );
    for member in members {
        member.shutdown().await?;
    }
    let histogram = histogram.lock().unwrap();
    let us = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
    Ok(Row {
        nodes,
        transport,
        round,
        load,
        durability: match durability {
            Durability::Sync => "durable",
            Durability::Buffer => "buffer-only",
        },
        events: histogram.len(),
        events_per_sec: histogram.len() as f64 / elapsed.as_secs_f64(),
        p50_us: us(0.5),
        p99_us: us(0.99),
        p999_us: us(0.999),
        warmup_s,
    })
}

/// Publishes `batch` events per request until `until`, recording each
/// event's latency (the request's) in `histogram`.
async fn produce(
    mut producer: RemoteProducer,
    p: u64,
    batch: usize,
    until: Instant,
    histogram: Shared,
) -> Outcome<()> {
    let payload = Bytes::from(vec![b'x'; PAYLOAD]);
    let key = Bytes::from(p.to_le_bytes().to_vec());
    let mut local = latency_histogram();
    while Instant::now() < until {
        let mut events = Vec::with_capacity(batch);
        for _ in 0..batch {
            let event = producer
                .stamp(TOPIC, key.clone(), payload.clone(), Headers::default())
                .await?;
            events.push(event);
        }
        let sent = Instant::now();
        let outcomes = producer.publish(events).await?;
        let latency = sent.elapsed().as_nanos() as u64;
        for outcome in outcomes {
            if let PublishOutcome::Refused { message } = outcome {
                return Err(format!("refused: {message}").into());
            }
        }
        local.saturating_record_n(latency, batch as u64);
    }
    histogram.lock().unwrap().add(&local).expect("same bounds");
    Ok(())
}

/// A row as `--only` matches it: "3 nodes, 16 producers, closed loop, durable".
fn describe(nodes: u64, load: Load, durability: Durability) -> String {
    let nodes = if nodes == 1 {
        "1 node".to_owned()
    } else {
        format!("{nodes} nodes")
    };
    let durability = match durability {
        Durability::Sync => "durable",
        Durability::Buffer => "buffer-only",
    };
    format!("{nodes}, {}, {durability}", describe_load(load))
}

fn describe_load(load: Load) -> String {
    match load {
        Load::Closed { producers } => format!("{producers} producers, closed loop"),
        Load::Pipelined { producers, batch } => {
            format!("{producers} producers × {batch} in flight")
        }
    }
}

fn print_table(rows: &[Row], fsync_p50_us: f64, fsync_p99_us: f64, overwrite: (f64, f64)) {
    let (overwrite_p50_us, overwrite_p99_us) = overwrite;
    println!(
        "disk fdatasync after a 4 KiB append, same run: p50 {fsync_p50_us:.0} µs, p99 {fsync_p99_us:.0} µs"
    );
    println!(
        "disk fdatasync after a 4 KiB overwrite in a written file: p50 {overwrite_p50_us:.0} µs, p99 {overwrite_p99_us:.0} µs\n"
    );
    println!(
        "| nodes | load | durability | transport | events/s | vs 1 node | p50 µs | p99 µs | p99.9 µs | p99 / fsync p99 | p99 / overwrite fsync p99 | warm-up s |"
    );
    println!("|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for row in rows {
        let load = describe_load(row.load);
        let single = rows
            .iter()
            .find(|r| {
                r.nodes == 1
                    && r.transport == row.transport
                    && r.round == row.round
                    && r.durability == row.durability
                    && std::mem::discriminant(&r.load) == std::mem::discriminant(&row.load)
            })
            .map_or(f64::NAN, |r| row.events_per_sec / r.events_per_sec);
        let transport = match row.transport {
            Transport::Plain => "plain",
            Transport::Tls => "TLS",
        };
        println!(
            "| {} | {load} | {} | {transport} | {:.0} | {:.2} | {:.0} | {:.0} | {:.0} | {:.2} | {:.2} | {:.1} |",
            row.nodes,
            row.durability,
            row.events_per_sec,
            single,
            row.p50_us,
            row.p99_us,
            row.p999_us,
            row.p99_us / fsync_p99_us,
            row.p99_us / overwrite_p99_us,
            row.warmup_s
        );
    }
}

/// For `--tls compare`: each row's TLS run against the plain run just
/// before it, as ratios.
fn print_comparison(rows: &[Row]) {
    println!("\n| nodes | load | durability | round | TLS / plain events/s | TLS / plain p99 |");
    println!("|---:|---|---|---:|---:|---:|");
    for pair in rows.windows(2) {
        let [plain, tls] = pair else { continue };
        let same = plain.transport == Transport::Plain
            && tls.transport == Transport::Tls
            && plain.round == tls.round
            && plain.nodes == tls.nodes
            && plain.durability == tls.durability
            && std::mem::discriminant(&plain.load) == std::mem::discriminant(&tls.load);
        if !same {
            continue;
        }
        println!(
            "| {} | {} | {} | {} | {:.2} | {:.2} |",
            tls.nodes,
            describe_load(tls.load),
            tls.durability,
            tls.round + 1,
            tls.events_per_sec / plain.events_per_sec,
            tls.p99_us / plain.p99_us
        );
    }
}

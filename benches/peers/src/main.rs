//! Sluice beside Redis Streams and NATS JetStream, in one run, through one
//! load generator (see `README.md` beside this crate).
//!
//! For each system and durability setting, and each workload (event size,
//! events per send, offered rate), `--producers` concurrent producers
//! publish into a fresh topic for `--seconds`; each send is awaited until
//! every event in it is acknowledged. Then one consumer reads the topic
//! back from the start. Rows run workload by workload (every system, then
//! the next workload), so the rows compared with each other run close
//! together in time, in `--rounds` rounds, each round starting the block at
//! the next system; each figure is the median of the rounds. Before each
//! row, `sync` writes back what earlier rows left dirty in the page cache. The disk's own `fdatasync` latency (before the rows and
//! after each round) and sequential bandwidth are measured in the same run.
//!
//! Latency: at full speed, each event's latency is its send's (closed
//! loop). At a fixed offered rate, a pacing thread hands out send times
//! on a fixed schedule and each latency counts from the scheduled time, so
//! a stall is charged to every send it delayed (corrected for coordinated
//! omission). A batch's latency is recorded once per event in it.

// A benchmark times with `Instant` directly.
#![allow(clippy::disallowed_methods)]

mod systems;

use std::error::Error;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use hdrhistogram::Histogram;
use sluice_benches::{latency_histogram, pattern, probe};
use sluice_core::raft::Durability;
use systems::{Class, Sender, Target};

pub(crate) type Outcome<T> = Result<T, Box<dyn Error + Send + Sync>>;
type Shared = Arc<Mutex<Histogram<u64>>>;

#[derive(Debug, Parser)]
struct Args {
    /// One round of 1 s rows, for a smoke run.
    #[arg(long)]
    quick: bool,
    /// Seconds each row publishes for (default 3; 1 with --quick).
    #[arg(long)]
    seconds: Option<f64>,
    /// Rounds over every row; each figure is the median of the rounds.
    #[arg(long)]
    rounds: Option<usize>,
    /// Concurrent producers.
    #[arg(long, default_value_t = 16)]
    producers: u32,
    /// Offered rate of the fixed-rate row, events/s over all producers.
    #[arg(long, default_value_t = 2000)]
    rate: u64,
    /// A Redis server to compare with, as SETTING=ADDRESS, SETTING being
    /// its `appendfsync` (`always`, `everysec`); repeatable.
    #[arg(long)]
    redis: Vec<String>,
    /// A NATS server with JetStream, as SETTING=ADDRESS, SETTING being its
    /// `sync_interval` (`always`, `default`); repeatable.
    #[arg(long)]
    nats: Vec<String>,
    /// Running `sluice node` processes to drive over the network, as
    /// SETTING=ADDRESS[,ADDRESS...], SETTING being `durable` or
    /// `buffer-only` as they were started; repeatable.
    #[arg(long)]
    sluice_node: Vec<String>,
    /// Leave out the in-process Sluice rows (for trying a peer alone).
    #[arg(long)]
    no_sluice: bool,
    /// Where Sluice's data directories and the disk probes go.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Also write the rows as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// What the producers do.
#[derive(Debug, Clone, Copy, serde::Serialize)]
struct Workload {
    /// Payload bytes per event.
    size: usize,
    /// Events per send (each send awaited).
    batch: usize,
    /// Offered events/s over all producers; `None`: as fast as possible.
    rate: Option<u64>,
}

impl Workload {
    fn label(&self) -> String {
        let size = if self.size.is_multiple_of(1024) {
            format!("{} KiB", self.size / 1024)
        } else {
            format!("{} B", self.size)
        };
        let sends = if self.batch == 1 {
            "single sends".to_owned()
        } else {
            format!("batches of {}", self.batch)
        };
        match self.rate {
            Some(rate) => format!("{size}, {sends}, {rate}/s offered"),
            None => format!("{size}, {sends}"),
        }
    }

    fn same(&self, other: &Workload) -> bool {
        self.size == other.size && self.batch == other.batch && self.rate == other.rate
    }
}

#[derive(Debug, serde::Serialize)]
struct Row {
    system: &'static str,
    setting: String,
    class: Class,
    workload: Workload,
    events: u64,
    events_per_sec: f64,
    p50_us: f64,
    p99_us: f64,
    p999_us: f64,
    read_back: u64,
    read_per_sec: f64,
    /// Whether every round read back all its events.
    read_all: bool,
    /// The acknowledged events of the round with the smallest read back.
    read_events: u64,
}

fn median(mut values: Vec<f64>) -> f64 {
    assert!(!values.is_empty());
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// One row from the rounds of the same system and workload: the median of
/// each figure (the upper one of an even count); the read back is the
/// round that read the fewest of its events.
fn median_row(rounds: Vec<Row>) -> Row {
    let of = |f: fn(&Row) -> f64| median(rounds.iter().map(f).collect());
    let worst = rounds
        .iter()
        .min_by_key(|r| (r.read_back == r.events, r.read_back))
        .expect("at least one round");
    Row {
        system: worst.system,
        setting: worst.setting.clone(),
        class: worst.class,
        workload: worst.workload,
        events: of(|r| r.events as f64) as u64,
        events_per_sec: of(|r| r.events_per_sec),
        p50_us: of(|r| r.p50_us),
        p99_us: of(|r| r.p99_us),
        p999_us: of(|r| r.p999_us),
        read_back: worst.read_back,
        read_per_sec: of(|r| r.read_per_sec),
        read_all: rounds.iter().all(|r| r.read_back == r.events),
        read_events: worst.events,
    }
}

fn main() -> Result<(), Box<dyn Error>> {
    let args = Args::parse();
    // `RUST_LOG` as usual; by default warnings and errors, so a Sluice node
    // that stops says why (openraft: errors only; it logs a warning for
    // each write whose progress nobody awaits, 100,000 lines a minute here).
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,openraft=error")),
        )
        .with_writer(std::io::stderr)
        .init();
    let root = match &args.dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            dir.canonicalize()?
        }
        None => sluice_benches::bench_root()?,
    };
    let seconds = args.seconds.unwrap_or(if args.quick { 1.0 } else { 3.0 });
    let rounds = args.rounds.unwrap_or(if args.quick { 1 } else { 3 });
    assert!(rounds > 0, "--rounds must be at least 1");
    let targets = targets(&args)?;
    let workloads = [
        Workload {
            size: 256,
            batch: 1,
            rate: None,
        },
        Workload {
            size: 256,
            batch: 100,
            rate: None,
        },
        Workload {
            size: 4096,
            batch: 1,
            rate: None,
        },
        Workload {
            size: 4096,
            batch: 100,
            rate: None,
        },
        Workload {
            size: 256,
            batch: 1,
            rate: Some(args.rate),
        },
    ];
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let load_start = load_average();
    let started = Instant::now();
    let sequential = probe::seq_write_synced(&root, 256 * sluice_benches::MIB, 1 << 20)?;
    let mut probes = vec![probe::append_sync_latency(&root, 500, 4096)?];
    // Workload-major order, so the rows to compare run close together in
    // time on a machine whose disk changes speed by the minute.
    let mut samples: Vec<Vec<Row>> = Vec::new();
    for round in 0..rounds {
        for (w, workload) in workloads.iter().enumerate() {
            // Each round starts the block at another system, so no system
            // always runs right after the same neighbour.
            for step in 0..targets.len() {
                let t = (step + round) % targets.len();
                let target = &targets[t];
                let what = format!(
                    "{} ({}), {}",
                    target.system(),
                    target.setting(),
                    workload.label()
                );
                eprintln!("round {}/{rounds}: {what}", round + 1);
                let topic = format!("r{round}w{w}t{t}");
                settle()?;
                let row = runtime
                    .block_on(run(
                        &root,
                        target,
                        &topic,
                        *workload,
                        args.producers,
                        seconds,
                    ))
                    .map_err(|e| format!("{what}: {e}"))?;
                let slot = w * targets.len() + t;
                if samples.len() <= slot {
                    samples.push(Vec::new());
                }
                samples[slot].push(row);
            }
        }
        probes.push(probe::append_sync_latency(&root, 500, 4096)?);
    }
    let rows: Vec<Row> = samples.into_iter().map(median_row).collect();
    let p99s: Vec<f64> = probes.iter().map(|l| l.p99_ns as f64 / 1000.0).collect();
    let disk = Disk {
        fsync_p50_us: median(probes.iter().map(|l| l.p50_ns as f64 / 1000.0).collect()),
        fsync_p99_us: median(p99s.clone()),
        fsync_p99_min_us: p99s.iter().copied().fold(f64::INFINITY, f64::min),
        fsync_p99_max_us: p99s.iter().copied().fold(0.0, f64::max),
        fsync_probes: probes.len(),
        sequential_mb_per_sec: sequential.bytes_per_s() / 1e6,
    };
    let header = Header {
        date: utc_now(),
        cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_start,
        load_end: load_average(),
        mount: sluice_benches::mount_of(&root).map_or_else(
            || "?".to_owned(),
            |m| format!("{} on {}", m.fs_type, m.device),
        ),
        producers: args.producers,
        seconds,
        rounds,
        took_sec: started.elapsed().as_secs_f64(),
    };
    if let Some(path) = &args.json {
        let out = serde_json::json!({ "header": header, "disk": disk, "rows": rows });
        std::fs::write(path, out.to_string())?;
    }
    print_report(&header, &disk, &rows);
    Ok(())
}

fn targets(args: &Args) -> Result<Vec<Target>, Box<dyn Error>> {
    let mut targets = Vec::new();
    if !args.no_sluice {
        for durability in [Durability::Sync, Durability::Buffer] {
            targets.push(Target::Embedded(durability));
            targets.push(Target::Cluster(durability));
        }
    }
    let split = |spec: &String| -> Result<(String, String), Box<dyn Error>> {
        let (setting, address) = spec
            .split_once('=')
            .ok_or_else(|| format!("expected SETTING=ADDRESS, got {spec:?}"))?;
        Ok((setting.to_owned(), address.to_owned()))
    };
    for spec in &args.sluice_node {
        let (setting, list) = split(spec)?;
        if setting != "durable" && setting != "buffer-only" {
            return Err(
                format!("--sluice-node {spec:?}: the setting is durable or buffer-only").into(),
            );
        }
        let addresses = list
            .split(',')
            .map(|address| {
                address
                    .parse()
                    .map_err(|e| format!("--sluice-node {spec:?}: {address:?}: {e}"))
            })
            .collect::<Result<Vec<std::net::SocketAddr>, String>>()?;
        targets.push(Target::Node { setting, addresses });
    }
    for spec in &args.redis {
        let (setting, address) = split(spec)?;
        targets.push(Target::Redis { setting, address });
    }
    for spec in &args.nats {
        let (setting, address) = split(spec)?;
        targets.push(Target::Nats { setting, address });
    }
    Ok(targets)
}

/// Writes back every dirty page on the machine (`sync`), so that no row
/// pays for the writeback of what an earlier row left in the page cache
/// (a buffer-only row can leave a gigabyte behind).
fn settle() -> Result<(), Box<dyn Error>> {
    let status = std::process::Command::new("sync").status()?;
    if !status.success() {
        return Err(format!("sync: {status}").into());
    }
    Ok(())
}

/// One row: a fresh topic, producers for `seconds`, then the read back.
async fn run(
    root: &Path,
    target: &Target,
    topic: &str,
    workload: Workload,
    producers: u32,
    seconds: f64,
) -> Outcome<Row> {
    let session = target.open(root, topic).await?;
    let mut senders = Vec::new();
    for p in 0..producers {
        senders.push(session.producer(p).await?);
    }
    let (histogram, elapsed) = drive(senders, workload, Duration::from_secs_f64(seconds)).await?;
    let events = histogram.len();
    let reading = Instant::now();
    let read_back = session.read_back(events).await?;
    let read_sec = reading.elapsed().as_secs_f64();
    session.close().await?;
    let us = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
    Ok(Row {
        system: target.system(),
        setting: target.setting(),
        class: target.class(),
        workload,
        events,
        events_per_sec: events as f64 / elapsed.as_secs_f64(),
        p50_us: us(0.5),
        p99_us: us(0.99),
        p999_us: us(0.999),
        read_back,
        read_per_sec: read_back as f64 / read_sec,
        read_all: read_back == events,
        read_events: events,
    })
}

/// The load generator, the same for every system: each producer sends
/// `workload.batch` events and awaits them, until `duration` is over; at
/// a fixed rate it sends when the pacer says so, and its latency counts
/// from then. Returns the latency of every event and the time taken.
async fn drive(
    senders: Vec<Sender>,
    workload: Workload,
    duration: Duration,
) -> Outcome<(Histogram<u64>, Duration)> {
    let payload = Bytes::from(pattern(workload.size, 7));
    let histogram: Shared = Arc::new(Mutex::new(latency_histogram()));
    let started = Instant::now();
    let until = started + duration;
    let mut schedules = Vec::new();
    let mut tasks = Vec::new();
    for mut sender in senders {
        let payload = payload.clone();
        let histogram = Arc::clone(&histogram);
        let mut schedule = if workload.rate.is_some() {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
            schedules.push(tx);
            Some(rx)
        } else {
            None
        };
        tasks.push(tokio::spawn(async move {
            let mut local = latency_histogram();
            loop {
                let start = match &mut schedule {
                    Some(rx) => match rx.recv().await {
                        Some(due) => due,
                        None => break,
                    },
                    None if Instant::now() < until => Instant::now(),
                    None => break,
                };
                sender.send(&payload, workload.batch).await?;
                let nanos = start.elapsed().as_nanos() as u64;
                local.saturating_record_n(nanos.max(1), workload.batch as u64);
            }
            histogram
                .lock()
                .expect("histogram lock")
                .add(&local)
                .expect("same bounds");
            Outcome::Ok(())
        }));
    }
    if let Some(rate) = workload.rate {
        let sends_per_sec = rate as f64 / workload.batch as f64;
        let interval = Duration::from_secs_f64(1.0 / sends_per_sec);
        tokio::task::spawn_blocking(move || pace(schedules, interval, until)).await?;
    }
    for task in tasks {
        task.await??;
    }
    let elapsed = started.elapsed();
    let histogram = Arc::try_unwrap(histogram)
        .expect("tasks are done")
        .into_inner()
        .expect("histogram lock");
    Ok((histogram, elapsed))
}

/// Hands out send times every `interval` until `until`, in turn to each
/// producer, from an OS thread that sleeps until each send time with a
/// timer slack of 1 ns (a tokio timer has 1 ms resolution; the default
/// slack of 50 µs would hand them out late). A producer still busy with its
/// previous send finds its next send time waiting, already late: that
/// lateness is counted in its latency.
fn pace(
    schedules: Vec<tokio::sync::mpsc::UnboundedSender<Instant>>,
    interval: Duration,
    until: Instant,
) {
    if let Err(error) = nix::sys::prctl::set_timerslack(1) {
        eprintln!("the pacer keeps the default timer slack: {error}");
    }
    let mut due = Instant::now();
    let mut turn = 0;
    while due < until {
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
            continue;
        }
        // A producer that failed has dropped its receiver; its error comes
        // out when its task is joined.
        let _ = schedules[turn % schedules.len()].send(due);
        turn += 1;
        due += interval;
    }
}

#[derive(Debug, serde::Serialize)]
struct Disk {
    fsync_p50_us: f64,
    fsync_p99_us: f64,
    fsync_p99_min_us: f64,
    fsync_p99_max_us: f64,
    fsync_probes: usize,
    sequential_mb_per_sec: f64,
}

#[derive(Debug, serde::Serialize)]
struct Header {
    date: String,
    cores: usize,
    load_start: String,
    load_end: String,
    mount: String,
    producers: u32,
    seconds: f64,
    rounds: usize,
    took_sec: f64,
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".to_owned())
}

/// The current UTC time as `YYYY-MM-DD HH:MM`, from the system clock
/// (civil-from-days, so no date crate is needed).
fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let days = (secs / 86_400) as i64;
    let (hour, minute) = ((secs % 86_400) / 3600, (secs % 3600) / 60);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {hour:02}:{minute:02} UTC")
}

/// The row of Sluice embedded with the same workload and durability class.
fn sluice_row<'a>(rows: &'a [Row], row: &Row) -> Option<&'a Row> {
    rows.iter().find(|r| {
        r.system == "Sluice embedded" && r.class == row.class && r.workload.same(&row.workload)
    })
}

fn print_report(header: &Header, disk: &Disk, rows: &[Row]) {
    println!(
        "{}; {} cores; load average {} at start, {} at end; Sluice's files and the disk probes on {}; {} producers; each figure the median of {} round(s) of {} s per row; run took {:.0} s.\n",
        header.date,
        header.cores,
        header.load_start,
        header.load_end,
        header.mount,
        header.producers,
        header.rounds,
        header.seconds,
        header.took_sec
    );
    println!(
        "Disk, same run: fdatasync after a 4 KiB append p50 {:.0} µs, p99 {:.0} µs (medians of {} probes of 500 samples, one before the rows and one after each round; p99 ranged {:.0}–{:.0} µs); sequential write of 256 MiB + one fdatasync {:.0} MB/s.\n",
        disk.fsync_p50_us,
        disk.fsync_p99_us,
        disk.fsync_probes,
        disk.fsync_p99_min_us,
        disk.fsync_p99_max_us,
        disk.sequential_mb_per_sec
    );
    println!(
        "| system | durability | workload | events/s | MB/s | events/s × Sluice | p50 µs | p99 µs | p99.9 µs | p99 × Sluice | p99 / fsync p99 | read back events/s |"
    );
    println!("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for row in rows {
        let sluice = sluice_row(rows, row);
        let ratio = |f: fn(&Row) -> f64| {
            sluice.map_or_else(|| "—".to_owned(), |s| format!("{:.2}", f(row) / f(s)))
        };
        let (throughput, p99) = (ratio(|r| r.events_per_sec), ratio(|r| r.p99_us));
        let read = if row.read_all {
            format!("{:.0}", row.read_per_sec)
        } else {
            format!("**read {} of {}**", row.read_back, row.read_events)
        };
        println!(
            "| {} | {} | {} | {:.0} | {:.1} | {throughput} | {:.0} | {:.0} | {:.0} | {p99} | {:.2} | {read} |",
            row.system,
            row.setting,
            row.workload.label(),
            row.events_per_sec,
            row.events_per_sec * row.workload.size as f64 / 1e6,
            row.p50_us,
            row.p99_us,
            row.p999_us,
            row.p99_us / disk.fsync_p99_us,
        );
    }
    println!();
    print_targets(disk, rows);
}

fn find<'a>(rows: &'a [Row], system: &str, class: Class, workload: &Workload) -> Option<&'a Row> {
    rows.iter()
        .find(|r| r.system == system && r.class == class && r.workload.same(workload))
}

/// The targets, judged from this run's rows.
fn print_targets(disk: &Disk, rows: &[Row]) {
    let single = Workload {
        size: 256,
        batch: 1,
        rate: None,
    };
    let batched = Workload {
        size: 256,
        batch: 100,
        rate: None,
    };
    let verdict = |met: bool| if met { "met" } else { "**missed**" };
    println!("Targets (fsync before ack, 16 producers, 256 B):\n");
    let pair = |w: &Workload| {
        Some((
            find(rows, "Sluice embedded", Class::Fsync, w)?,
            find(rows, "Redis Streams", Class::Fsync, w)?,
        ))
    };
    if let Some((s, r)) = pair(&single) {
        let ratio = s.events_per_sec / r.events_per_sec;
        println!(
            "- single sends, Sluice embedded ≥ 1.5 × Redis with a lower p99: {:.2} × ({:.0} vs {:.0} events/s), p99 {:.0} vs {:.0} µs: {}",
            ratio,
            s.events_per_sec,
            r.events_per_sec,
            s.p99_us,
            r.p99_us,
            verdict(ratio >= 1.5 && s.p99_us < r.p99_us)
        );
    }
    if let Some((s, r)) = pair(&batched) {
        let ratio = s.events_per_sec / r.events_per_sec;
        let mb = s.events_per_sec * s.workload.size as f64 / 1e6;
        let share = mb / disk.sequential_mb_per_sec;
        println!(
            "- batches of 100, Sluice embedded ≥ 2 × Redis: {:.2} × ({:.0} vs {:.0} events/s): {}",
            ratio,
            s.events_per_sec,
            r.events_per_sec,
            verdict(ratio >= 2.0)
        );
        println!(
            "- batches of 100, ≥ 70 % of the disk's sequential bandwidth: {:.1} MB/s of payload = {:.1} % of {:.0} MB/s: {}",
            mb,
            share * 100.0,
            disk.sequential_mb_per_sec,
            verdict(share >= 0.7)
        );
    }
    print_server_targets(rows, &single, &batched);
    let nats: Vec<&Row> = rows
        .iter()
        .filter(|r| r.system == "NATS JetStream")
        .collect();
    if !nats.is_empty() {
        let behind: Vec<String> = nats
            .iter()
            .filter_map(|n| {
                let s = find(rows, "Sluice embedded", n.class, &n.workload)?;
                (s.events_per_sec <= n.events_per_sec).then(|| {
                    format!(
                        "{} ({}): {:.2} ×",
                        n.workload.label(),
                        n.setting,
                        s.events_per_sec / n.events_per_sec
                    )
                })
            })
            .collect();
        println!(
            "- Sluice embedded ahead of NATS JetStream in every row (throughput): {}",
            if behind.is_empty() {
                "met".to_owned()
            } else {
                format!("**missed** in {}", behind.join("; "))
            }
        );
        let behind: Vec<String> = nats
            .iter()
            .filter(|n| n.class == Class::Fsync)
            .filter_map(|n| {
                let c = find(rows, "Sluice 3-node cluster", Class::Fsync, &n.workload)?;
                (c.events_per_sec <= n.events_per_sec).then(|| {
                    format!(
                        "{}: {:.2} ×",
                        n.workload.label(),
                        c.events_per_sec / n.events_per_sec
                    )
                })
            })
            .collect();
        println!(
            "- Sluice 3-node cluster (durable) ahead of single-node NATS JetStream (sync_interval always): {}",
            if behind.is_empty() {
                "met".to_owned()
            } else {
                format!("**missed** in {}", behind.join("; "))
            }
        );
    }
}

/// The server path's targets: a `sluice node` process driven over the
/// network against Redis driven the same way.
fn print_server_targets(rows: &[Row], single: &Workload, batched: &Workload) {
    let verdict = |met: bool| if met { "met" } else { "**missed**" };
    let node = "Sluice node (process)";
    let nodes = "Sluice 3 nodes (processes)";
    let redis = "Redis Streams";
    let checks = [
        (
            node,
            Class::Fsync,
            single,
            1.5,
            true,
            "single sends, durable node",
        ),
        (
            node,
            Class::Memory,
            single,
            1.2,
            false,
            "single sends, buffer-only node",
        ),
        (
            nodes,
            Class::Fsync,
            single,
            1.0,
            false,
            "single sends, durable 3 nodes",
        ),
        (
            node,
            Class::Fsync,
            batched,
            2.0,
            false,
            "batches of 100, durable node",
        ),
    ];
    for (system, class, workload, ratio_min, p99_too, what) in checks {
        let (Some(s), Some(r)) = (
            find(rows, system, class, workload),
            find(rows, redis, class, workload),
        ) else {
            continue;
        };
        let ratio = s.events_per_sec / r.events_per_sec;
        let p99 = if p99_too {
            format!(", p99 {:.0} vs {:.0} µs (no higher)", s.p99_us, r.p99_us)
        } else {
            String::new()
        };
        let met = ratio >= ratio_min && (!p99_too || s.p99_us <= r.p99_us);
        println!(
            "- {what} ≥ {ratio_min} × Redis ({}): {ratio:.2} × ({:.0} vs {:.0} events/s){p99}: {}",
            r.setting,
            s.events_per_sec,
            r.events_per_sec,
            verdict(met)
        );
    }
}

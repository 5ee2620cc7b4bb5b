//! `sluice-jepsen`: Jepsen-style runs of a real Sluice cluster. See
//! [`runner`] and ARCHITECTURE.md "Jepsen runs".
//!
//! ```text
//! cargo run --release -p sluice-jepsen -- --nodes 5 --time-limit 60 --seed 1 [--nemesis all] [--no-netns]
//! cargo run --release -p sluice-jepsen -- cleanup
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod runner;

use runner::schedule::Kind;
use runner::supervisor::{self, RunArgs};

/// Runs a cluster of real `sluice node` processes under a seeded nemesis,
/// records a client workload and checks the history for exactly-once
/// anomalies. Exits non-zero on any anomaly.
#[derive(Debug, Parser)]
#[command(name = "sluice-jepsen", args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Sub>,
    /// Cluster size.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=50))]
    nodes: u64,
    /// Seconds of workload under the nemesis.
    #[arg(long, default_value_t = 60)]
    time_limit: u64,
    /// Seed of the nemesis schedule and the workload's choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Nemesis kinds, comma-separated: partition-halves, partition-leader,
    /// partition-bridge, one-way, loss, kill, pause, skew, disk; or
    /// `partition` (the three partitions), `all`, `none`.
    #[arg(long, default_value = "all")]
    nemesis: String,
    /// Run without root: nodes on 127.0.0.x behind a fault-injecting TCP
    /// proxy instead of network namespaces.
    #[arg(long)]
    no_netns: bool,
    /// The `sluice` binary (default: beside this one, built if missing).
    #[arg(long)]
    sluice: Option<PathBuf>,
    /// Where history.jsonl, nemesis.jsonl, results.json and the nodes'
    /// data and logs go (default: target/jepsen/run-<time>-seed<S>).
    #[arg(long)]
    run_dir: Option<PathBuf>,
    /// A planted bug for the nodes (exported to them as
    /// SLUICE_PLANTED_BUG; only a node built with the engine's
    /// `planted-bugs` feature acts on it).
    #[arg(long)]
    planted_bug: Option<String>,
    /// Size of each node's tmpfs data directory (disk nemesis), in MiB.
    #[arg(long, default_value_t = 256)]
    disk_mib: u64,
    /// Producer processes at once.
    #[arg(long, default_value_t = 4)]
    producers: u32,
    /// Plain consumer group members at once.
    #[arg(long, default_value_t = 2)]
    consumers: u32,
    /// Transactional (consume-transform-produce) members at once.
    #[arg(long, default_value_t = 2)]
    transactors: u32,
    /// Seconds a client request may take, failovers included, before its
    /// outcome is unknown (`info`) and the client takes a new identity.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=300))]
    request_timeout: u64,
    /// The libfaketime library for the skew nemesis (libfaketimeMT.so.1;
    /// default: where Debian's `faketime` package puts it).
    #[arg(long)]
    libfaketime: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Sub {
    /// Removes what an interrupted run left: namespaces, mounts.
    Cleanup,
    /// Internal: the workload side of a run (started by the supervisor).
    #[command(hide = true)]
    Worker {
        /// The run's config.json.
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Sub::Cleanup) => supervisor::cleanup(),
        Some(Sub::Worker { config }) => runner::worker::run(&config),
        None => match Kind::parse_list(&cli.nemesis) {
            Ok(nemesis) => supervisor::run(RunArgs {
                nodes: cli.nodes,
                time_limit_secs: cli.time_limit,
                seed: cli.seed,
                nemesis,
                no_netns: cli.no_netns,
                sluice: cli.sluice,
                run_dir: cli.run_dir,
                planted_bug: cli.planted_bug,
                disk_mib: cli.disk_mib,
                producers: cli.producers,
                consumers: cli.consumers,
                transactors: cli.transactors,
                request_timeout_secs: cli.request_timeout,
                libfaketime: cli.libfaketime,
            }),
            Err(error) => Err(error),
        },
    };
    match result {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(2)
        }
    }
}

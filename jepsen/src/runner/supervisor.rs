//! The supervisor: the process the user starts. It refuses to start over
//! leftovers, builds the network (namespace mode) and the tmpfs data
//! directories, starts the worker, and tears everything down when the
//! worker ends, when it is interrupted (Ctrl-C, SIGTERM) or when it
//! panics.
//!
//! ### Why a worker process in the clients' namespace
//! A network namespace belongs to a thread, and tokio moves tasks between
//! worker threads that it spawns itself; a `setns` on one thread would
//! leave the others in the host's namespace, and the blocking pool's
//! threads would inherit whichever namespace their spawner had. Running
//! the whole workload as a separate process under `ip netns exec` puts
//! every thread, socket and child of it in the clients' namespace for its
//! whole life, and gives teardown one process group to kill. In loopback
//! mode the same worker runs without `ip netns exec`.
//!
//! ### Teardown
//! [`Teardown`] (a drop guard) kills the worker's process group (nodes in
//! loopback mode are in it), kills every process left in each namespace,
//! deletes the namespaces (which removes their interfaces, addresses and
//! iptables rules) and unmounts the tmpfs data directories. It runs on a
//! normal end, on an error, on a panic (unwinding), and on SIGINT/SIGTERM.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::signal::unix::{SignalKind, signal};

use super::config::{Mode, WorkerConfig};
use super::nemesis;
use super::netns::{self, Leftovers, WithoutIp};
use super::preflight;
use super::schedule::{self, Kind, Schedule};

/// The command line of a run, checked.
#[derive(Debug, Clone)]
pub(crate) struct RunArgs {
    pub(crate) nodes: u64,
    pub(crate) time_limit_secs: u64,
    pub(crate) seed: u64,
    pub(crate) nemesis: Vec<Kind>,
    pub(crate) no_netns: bool,
    pub(crate) sluice: Option<PathBuf>,
    pub(crate) run_dir: Option<PathBuf>,
    pub(crate) planted_bug: Option<String>,
    pub(crate) disk_mib: u64,
    pub(crate) producers: u32,
    pub(crate) consumers: u32,
    pub(crate) transactors: u32,
    pub(crate) request_timeout_secs: u64,
    pub(crate) libfaketime: Option<PathBuf>,
}

/// Everything a run created that must go at its end.
#[derive(Debug, Default)]
pub(crate) struct Teardown {
    namespaces: Vec<String>,
    mounts: Vec<PathBuf>,
    worker_group: Option<i32>,
}

impl Teardown {
    fn run(&mut self) {
        if let Some(group) = self.worker_group.take() {
            let group = Pid::from_raw(group);
            let _ = killpg(group, Signal::SIGCONT);
            let _ = killpg(group, Signal::SIGKILL);
        }
        for namespace in std::mem::take(&mut self.namespaces).into_iter().rev() {
            for failure in netns::delete_namespace(&namespace) {
                eprintln!("teardown: {failure}");
            }
        }
        for mount in std::mem::take(&mut self.mounts) {
            if let Err(failure) = netns::unmount(&mount) {
                eprintln!("teardown: {failure}");
            }
        }
    }
}

impl Drop for Teardown {
    fn drop(&mut self) {
        self.run();
    }
}

/// Removes an earlier run's leftovers (the `cleanup` subcommand).
pub(crate) fn cleanup() -> Result<i32, String> {
    let leftovers = netns::find_leftovers(WithoutIp::Refuse)?;
    if leftovers.is_empty() {
        println!("nothing to clean up");
        return Ok(0);
    }
    let mut teardown = Teardown {
        namespaces: leftovers.namespaces.clone(),
        mounts: leftovers.mounts.clone(),
        worker_group: None,
    };
    teardown.run();
    let left = netns::find_leftovers(WithoutIp::Refuse)?;
    for command in netns::cleanup_commands(&leftovers) {
        println!("done: {command}");
    }
    if left.is_empty() {
        Ok(0)
    } else {
        Err(format!("still left after cleanup: {left:?}"))
    }
}

fn refuse_leftovers(leftovers: &Leftovers) -> String {
    let mut text = String::from(
        "an earlier run left namespaces or mounts behind; refusing to start over them.\n\
         Remove them with:\n  cargo run --release -p sluice-jepsen -- cleanup\nor by hand:\n",
    );
    for command in netns::cleanup_commands(leftovers) {
        text.push_str("  ");
        text.push_str(&command);
        text.push('\n');
    }
    text
}

/// Runs a whole run; returns the exit code.
pub(crate) fn run(args: RunArgs) -> Result<i32, String> {
    let root = nix_is_root();
    let mode = if args.no_netns {
        Mode::Loopback
    } else {
        Mode::Netns
    };
    // Before anything is created: a run that cannot inject every fault it
    // was asked for does not start.
    let needs = preflight::needs(mode, &args.nemesis);
    let path = std::env::var_os("PATH");
    let found = preflight::check(&needs, path.as_deref(), args.libfaketime.as_deref())?;
    check_schedule(&args)?;
    let tmpfs_data = args.nemesis.contains(&Kind::Disk);
    check_privileges(mode, tmpfs_data, root)?;
    check_proxy_faults(mode, &args.nemesis)?;
    let without_ip = match mode {
        Mode::Netns => WithoutIp::Refuse,
        Mode::Loopback => WithoutIp::NoNamespaces,
    };
    let leftovers = netns::find_leftovers(without_ip)?;
    if !leftovers.is_empty() {
        eprint!("{}", refuse_leftovers(&leftovers));
        return Ok(2);
    }
    let sluice = locate_sluice(args.sluice.as_deref())?;
    if let Some(library) = &found.libfaketime {
        preflight::probe_libfaketime(&sluice, library)?;
    }
    let run_dir = create_run_dir(&args)?;
    let mut teardown = Teardown::default();
    if mode == Mode::Netns {
        teardown.namespaces = netns::namespaces(args.nodes);
        for words in netns::setup_commands(args.nodes) {
            netns::run(&words)?;
        }
        if needs.iter().any(|need| need.name == "iptables") {
            nemesis::probe_iptables(1, &args.nemesis)?;
        }
    }
    let config = worker_config(&args, mode, sluice, run_dir.clone(), tmpfs_data, found);
    if tmpfs_data {
        mount_data_dirs(&config, args.disk_mib, &mut teardown)?;
    }
    make_certificates(&config)?;
    let config_path = run_dir.join("config.json");
    let json = serde_json::to_string_pretty(&config).map_err(|error| error.to_string())?;
    write(&config_path, &json)?;
    eprintln!("run directory: {}", run_dir.display());
    let code = supervise(&mut teardown, mode, &config_path)?;
    teardown.run();
    Ok(code)
}

/// `sluice certs` for the run: a CA, every node's certificate (valid for
/// its namespace address too), the `admin` client (the nodes' default
/// superuser) and the workload's `jepsen` client.
fn make_certificates(config: &WorkerConfig) -> Result<(), String> {
    let ids: Vec<String> = (1..=config.nodes).map(|id| id.to_string()).collect();
    let mut command = std::process::Command::new(&config.sluice);
    command
        .arg("certs")
        .arg("--dir")
        .arg(&config.tls_dir)
        .args(["--nodes", &ids.join(",")])
        .args(["--clients", "admin,jepsen"]);
    if config.mode == Mode::Netns {
        for id in 1..=config.nodes {
            command.args(["--host", &netns::node_ip(id).to_string()]);
        }
    }
    let output = command
        .output()
        .map_err(|error| format!("cannot run {} certs: {error}", config.sluice.display()))?;
    if !output.status.success() {
        return Err(format!(
            "sluice certs failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(())
}

/// Refuses a time limit whose schedule leaves a chosen kind no turn: a
/// run must inject every kind it was asked for.
fn check_schedule(args: &RunArgs) -> Result<(), String> {
    let limit = std::time::Duration::from_secs(args.time_limit_secs);
    let schedule = Schedule::new(args.seed, &args.nemesis, args.nodes, limit);
    let unscheduled = schedule.unscheduled(&args.nemesis);
    if unscheduled.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = unscheduled.iter().map(|kind| kind.name()).collect();
    let minimum = schedule::time_limit_min(&args.nemesis, args.nodes)
        .map_or("more".to_owned(), |min| {
            format!("at least {}", min.as_secs())
        });
    Err(format!(
        "--time-limit {} leaves no turn for the {} nemesis (each kind needs a fault and a \
         heal of at least {} s); use --time-limit {minimum}, or fewer kinds",
        args.time_limit_secs,
        names.join(", "),
        schedule::PERIOD_MIN.as_secs()
    ))
}

/// Refuses network faults in loopback mode: its proxy tells a connection's
/// source node by reading the first frame, which TLS now encrypts, so it
/// could not aim a partition, and the run would count faults that never
/// took effect.
fn check_proxy_faults(mode: Mode, kinds: &[Kind]) -> Result<(), String> {
    let network: Vec<&str> = kinds
        .iter()
        .filter(|kind| preflight::IPTABLES_KINDS.contains(kind))
        .map(|kind| kind.name())
        .collect();
    if mode == Mode::Loopback && !network.is_empty() {
        return Err(format!(
            "--no-netns cannot inject {}: the loopback proxy learns a connection's source \
             node from its first frame, which TLS encrypts; run in network namespaces (as \
             root, without --no-netns), or choose kill, pause, skew",
            network.join(", ")
        ));
    }
    Ok(())
}

/// Refuses a run that needs root (namespaces, tmpfs mounts) without it.
fn check_privileges(mode: Mode, tmpfs_data: bool, root: bool) -> Result<(), String> {
    if mode == Mode::Netns && !root {
        return Err("network namespaces need root; run as root or pass --no-netns".into());
    }
    if tmpfs_data && !root {
        return Err(
            "the disk nemesis mounts a small tmpfs per node, which needs root; \
             run as root or leave `disk` out of --nemesis"
                .into(),
        );
    }
    Ok(())
}

/// Creates the run directory (given, or one named by the time and seed)
/// and returns its canonical path.
fn create_run_dir(args: &RunArgs) -> Result<PathBuf, String> {
    let run_dir = match &args.run_dir {
        Some(dir) => dir.clone(),
        None => default_run_dir(args.seed),
    };
    std::fs::create_dir_all(&run_dir)
        .map_err(|error| format!("cannot create {}: {error}", run_dir.display()))?;
    run_dir
        .canonicalize()
        .map_err(|error| format!("{}: {error}", run_dir.display()))
}

/// What the worker is told about the run.
fn worker_config(
    args: &RunArgs,
    mode: Mode,
    sluice: PathBuf,
    run_dir: PathBuf,
    tmpfs_data: bool,
    found: preflight::Found,
) -> WorkerConfig {
    WorkerConfig {
        nodes: args.nodes,
        time_limit_secs: args.time_limit_secs,
        seed: args.seed,
        nemesis: args.nemesis.iter().map(|k| k.name().to_owned()).collect(),
        mode,
        sluice,
        tls_dir: run_dir.join("tls"),
        run_dir,
        libfaketime: found.libfaketime,
        tmpfs_data,
        planted_bug: args.planted_bug.clone(),
        producers: args.producers,
        consumers: args.consumers,
        transactors: args.transactors,
        request_timeout_secs: args.request_timeout_secs,
    }
}

/// Mounts a tmpfs of `disk_mib` MiB over each node's directory (which
/// holds its data directory), for the disk nemesis to fill.
fn mount_data_dirs(
    config: &WorkerConfig,
    disk_mib: u64,
    teardown: &mut Teardown,
) -> Result<(), String> {
    for id in 1..=config.nodes {
        let target = config
            .data_dir(id)
            .parent()
            .expect("node-N/data")
            .to_path_buf();
        netns::mount_tmpfs(&target, disk_mib)?;
        teardown.mounts.push(target);
    }
    Ok(())
}

/// Starts the worker and waits for it, or for a signal.
fn supervise(teardown: &mut Teardown, mode: Mode, config_path: &Path) -> Result<i32, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| format!("tokio: {error}"))?;
    runtime.block_on(async {
        let me = std::env::current_exe().map_err(|error| format!("current exe: {error}"))?;
        let mut command = match mode {
            Mode::Netns => {
                let mut command = tokio::process::Command::new("ip");
                command
                    .args(["netns", "exec", &netns::client_namespace()])
                    .arg(&me);
                command
            }
            Mode::Loopback => tokio::process::Command::new(&me),
        };
        command.arg("worker").arg(config_path).process_group(0);
        let mut interrupt = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
        let mut terminate = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
        let mut child = command
            .spawn()
            .map_err(|error| format!("cannot start the worker: {error}"))?;
        teardown.worker_group = child.id().map(|id| id as i32);
        tokio::select! {
            status = child.wait() => {
                let status = status.map_err(|error| format!("waiting for the worker: {error}"))?;
                Ok(status.code().unwrap_or(1))
            }
            _ = interrupt.recv() => {
                eprintln!("interrupted: tearing down");
                Ok(130)
            }
            _ = terminate.recv() => {
                eprintln!("terminated: tearing down");
                Ok(143)
            }
        }
    })
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|error| format!("{}: {error}", path.display()))
}

fn nix_is_root() -> bool {
    // Effective uid 0; read from /proc to keep nix's `user` feature out.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with("Uid:"))
                .and_then(|line| line.split_whitespace().nth(2).map(|uid| uid == "0"))
        })
        .unwrap_or(false)
}

/// `target/jepsen/run-<unix seconds>-seed<S>` in the workspace.
fn default_run_dir(seed: u64) -> PathBuf {
    let seconds = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs());
    workspace_target()
        .join("jepsen")
        .join(format!("run-{seconds}-seed{seed}"))
}

fn workspace_target() -> PathBuf {
    if let Ok(dir) = std::env::var("CARGO_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("target")
}

/// The `sluice` binary: `--sluice`, else beside this binary (both are in
/// `target/release` after `cargo build --release`), else built now.
fn locate_sluice(given: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(path) = given {
        return path
            .canonicalize()
            .map_err(|error| format!("--sluice {}: {error}", path.display()));
    }
    let me = std::env::current_exe().map_err(|error| format!("current exe: {error}"))?;
    let beside = me.with_file_name("sluice");
    if beside.exists() {
        return Ok(beside);
    }
    eprintln!("building the sluice binary (cargo build --release -p sluice-cli --bin sluice)");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let status = Command::new(cargo)
        .args(["build", "--release", "-p", "sluice-cli", "--bin", "sluice"])
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
        .status()
        .map_err(|error| format!("cannot run cargo: {error}"))?;
    if status.success() && beside.exists() {
        Ok(beside)
    } else {
        Err(format!(
            "no sluice binary at {}; build it with cargo build --release -p sluice-cli, \
             or pass --sluice PATH",
            beside.display()
        ))
    }
}

//! The `sluice node` processes of a run: start, `kill -9`, restart, pause,
//! resume. Each node has its own data directory and log file in the run
//! directory; restarts append to the same log.
//!
//! In namespace mode a node runs as `ip netns exec NAMESPACE sluice node
//! ...` (`ip` enters the namespace and execs, so the child's pid is the
//! node's). With wall-clock skew enabled every node runs under libfaketime
//! from its start, reading its offset from a file the nemesis rewrites
//! (`FAKETIME_TIMESTAMP_FILE`, re-read every second); monotonic clocks are
//! not faked (`FAKETIME_DONT_FAKE_MONOTONIC=1`), so only the wall clock
//! jumps. A planted bug (`--planted-bug NAME`) reaches every node as the
//! environment variable [`PLANTED_BUG_ENV`].

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::config::{Mode, WorkerConfig};
use super::netns;

/// The environment variable that names a planted bug to the nodes.
pub(crate) const PLANTED_BUG_ENV: &str = "SLUICE_PLANTED_BUG";

/// The node processes.
#[derive(Debug)]
pub(crate) struct Nodes {
    config: WorkerConfig,
    children: Mutex<BTreeMap<u64, Child>>,
    /// The highest resident set size (`VmHWM`, KiB) seen per node, over
    /// its processes so far: read before each kill and by
    /// [`Nodes::peak_rss_kib`] (a process that exits on its own takes its
    /// peak with it).
    peaks: Mutex<BTreeMap<u64, u64>>,
}

impl Nodes {
    /// No node started yet.
    pub(crate) fn new(config: WorkerConfig) -> Nodes {
        Nodes {
            config,
            children: Mutex::new(BTreeMap::new()),
            peaks: Mutex::new(BTreeMap::new()),
        }
    }

    /// Keeps the peak RSS of node `id`'s process `child`.
    fn note_peak(&self, id: u64, child: &Child) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", child.id()));
        if let Some(kib) = status.ok().as_deref().and_then(vm_hwm_kib) {
            let mut peaks = self.peaks.lock().expect("peaks lock");
            let peak = peaks.entry(id).or_insert(0);
            *peak = (*peak).max(kib);
        }
    }

    /// The highest resident set size of each node's processes, in KiB,
    /// the live ones read now.
    pub(crate) fn peak_rss_kib(&self) -> BTreeMap<u64, u64> {
        {
            let children = self.children.lock().expect("children lock");
            for (&id, child) in children.iter() {
                self.note_peak(id, child);
            }
        }
        self.peaks.lock().expect("peaks lock").clone()
    }

    /// The bytes of the files in each node's data directory, now.
    pub(crate) fn data_dir_bytes(&self) -> BTreeMap<u64, u64> {
        self.ids()
            .into_iter()
            .map(|id| (id, tree_bytes(&self.data_dir(id))))
            .collect()
    }

    /// Node ids, 1..=N.
    pub(crate) fn ids(&self) -> Vec<u64> {
        (1..=self.config.nodes).collect()
    }

    /// Where node `id` listens.
    pub(crate) fn listen_address(&self, id: u64) -> SocketAddr {
        self.config.listen_address(id)
    }

    /// Node `id`'s data directory.
    pub(crate) fn data_dir(&self, id: u64) -> PathBuf {
        self.config.data_dir(id)
    }

    /// The file libfaketime reads node `id`'s clock offset from.
    pub(crate) fn faketime_file(&self, id: u64) -> PathBuf {
        self.config.run_dir.join(format!("node-{id}.faketime"))
    }

    /// Starts every node.
    pub(crate) fn start_all(&self) -> Result<(), String> {
        for id in self.ids() {
            if self.config.skew() {
                self.set_skew(id, 0)?;
            }
            self.start(id)?;
        }
        Ok(())
    }

    /// Starts node `id` (again).
    pub(crate) fn start(&self, id: u64) -> Result<(), String> {
        let log_path = self.config.run_dir.join(format!("node-{id}.log"));
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|error| format!("cannot open {}: {error}", log_path.display()))?;
        let child = self
            .command(id)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|error| format!("cannot start node {id}: {error}"))?;
        let mut children = self.children.lock().expect("children lock");
        if let Some(mut old) = children.insert(id, child) {
            self.note_peak(id, &old);
            let _ = old.kill();
            let _ = old.wait();
        }
        Ok(())
    }

    /// The command line and environment that start node `id`.
    pub(crate) fn command(&self, id: u64) -> Command {
        let mut command = match self.config.mode {
            Mode::Netns => {
                let mut command = Command::new("ip");
                command
                    .args(["netns", "exec", &netns::node_namespace(id)])
                    .arg(&self.config.sluice);
                command
            }
            Mode::Loopback => Command::new(&self.config.sluice),
        };
        command
            .args(["node", "--id", &id.to_string(), "--listen"])
            .arg(self.listen_address(id).to_string())
            .arg("--data-dir")
            .arg(self.data_dir(id))
            .arg("--tls-dir")
            .arg(&self.config.tls_dir)
            .env("SLUICE_LOG", "info");
        if let Some(library) = &self.config.libfaketime {
            command
                .env("LD_PRELOAD", library)
                .env("FAKETIME_TIMESTAMP_FILE", self.faketime_file(id))
                .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
                .env("FAKETIME_CACHE_DURATION", "1");
        }
        if let Some(bug) = &self.config.planted_bug {
            command.env(PLANTED_BUG_ENV, bug);
        }
        command
    }

    /// Sends `signal` to node `id`.
    pub(crate) fn signal(&self, id: u64, signal: Signal) -> Result<(), String> {
        let children = self.children.lock().expect("children lock");
        let child = children
            .get(&id)
            .ok_or_else(|| format!("node {id} was never started"))?;
        kill(Pid::from_raw(child.id() as i32), signal)
            .map_err(|error| format!("{signal} to node {id}: {error}"))
    }

    /// `kill -9` node `id` and reaps it.
    pub(crate) fn kill(&self, id: u64) -> Result<(), String> {
        let mut children = self.children.lock().expect("children lock");
        let child = children
            .get_mut(&id)
            .ok_or_else(|| format!("node {id} was never started"))?;
        self.note_peak(id, child);
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
        child
            .wait()
            .map(drop)
            .map_err(|error| format!("reaping node {id}: {error}"))
    }

    /// Nodes that exited (not by this runner's kill), with their status;
    /// each is reaped and reported once.
    pub(crate) fn exited(&self) -> Vec<(u64, String)> {
        let mut children = self.children.lock().expect("children lock");
        let mut exited = Vec::new();
        for (&id, child) in children.iter_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                exited.push((id, status.to_string()));
            }
        }
        for (id, _) in &exited {
            children.remove(id);
        }
        exited
    }

    /// Whether node `id` has a live process (started and not reaped).
    pub(crate) fn is_running(&self, id: u64) -> bool {
        let mut children = self.children.lock().expect("children lock");
        match children.get_mut(&id) {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Writes node `id`'s clock offset; libfaketime picks it up within a
    /// second.
    pub(crate) fn set_skew(&self, id: u64, seconds: i64) -> Result<(), String> {
        let path = self.faketime_file(id);
        let spec = if seconds >= 0 {
            format!("+{seconds}s\n")
        } else {
            format!("{seconds}s\n")
        };
        std::fs::write(&path, spec).map_err(|error| format!("{}: {error}", path.display()))
    }

    /// Kills every node (the end of a run).
    pub(crate) fn kill_all(&self) {
        let mut children = self.children.lock().expect("children lock");
        for (&id, child) in children.iter_mut() {
            self.note_peak(id, child);
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGCONT);
            let _ = child.kill();
            let _ = child.wait();
        }
        children.clear();
    }
}

/// `VmHWM` (the peak resident set size, KiB) from `/proc/PID/status`.
fn vm_hwm_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The total length of the files under `dir` (0 if it is gone).
fn tree_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.file_type() {
            Ok(kind) if kind.is_dir() => tree_bytes(&entry.path()),
            Ok(_) => entry.metadata().map_or(0, |meta| meta.len()),
            Err(_) => 0,
        })
        .sum()
}

impl Drop for Nodes {
    fn drop(&mut self) {
        self.kill_all();
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;

    use super::*;

    fn config(mode: Mode, skew: bool, planted_bug: Option<&str>) -> WorkerConfig {
        WorkerConfig {
            nodes: 3,
            time_limit_secs: 10,
            seed: 1,
            nemesis: Vec::new(),
            mode,
            sluice: PathBuf::from("/bin/sluice"),
            run_dir: PathBuf::from("/runs/r"),
            tls_dir: PathBuf::from("/runs/r/tls"),
            libfaketime: skew.then(|| PathBuf::from("/lib/libfaketimeMT.so.1")),
            tmpfs_data: false,
            planted_bug: planted_bug.map(str::to_owned),
            producers: 1,
            consumers: 1,
            transactors: 1,
            request_timeout_secs: 10,
        }
    }

    fn env(command: &Command, name: &str) -> Option<String> {
        command
            .get_envs()
            .find(|(key, _)| *key == OsStr::new(name))
            .and_then(|(_, value)| value.map(|v| v.to_string_lossy().into_owned()))
    }

    #[test]
    fn a_planted_bug_and_the_clock_file_reach_the_node_through_its_environment() {
        let nodes = Nodes::new(config(Mode::Netns, true, Some("skip-producer-dedup")));
        let command = nodes.command(2);
        assert_eq!(command.get_program(), "ip");
        let args: Vec<String> = command
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args[..4],
            ["netns", "exec", "sluice-jepsen-n2", "/bin/sluice"]
        );
        assert!(
            args.windows(2)
                .any(|w| w == ["--listen", "10.77.0.12:7000"])
        );
        assert!(
            args.windows(2)
                .any(|w| w == ["--data-dir", "/runs/r/node-2/data"])
        );
        assert!(args.windows(2).any(|w| w == ["--tls-dir", "/runs/r/tls"]));
        assert!(!args.iter().any(|a| a == "--insecure"));
        assert_eq!(
            env(&command, PLANTED_BUG_ENV).as_deref(),
            Some("skip-producer-dedup")
        );
        assert_eq!(
            env(&command, "LD_PRELOAD").as_deref(),
            Some("/lib/libfaketimeMT.so.1")
        );
        assert_eq!(
            env(&command, "FAKETIME_TIMESTAMP_FILE").as_deref(),
            Some("/runs/r/node-2.faketime")
        );
        assert_eq!(
            env(&command, "FAKETIME_DONT_FAKE_MONOTONIC").as_deref(),
            Some("1")
        );
    }

    #[test]
    fn the_peak_rss_is_read_from_proc_status_and_data_dirs_are_summed() {
        let status = "Name:\tsluice\nVmPeak:\t  900 kB\nVmHWM:\t   51234 kB\nVmRSS:\t 100 kB\n";
        assert_eq!(vm_hwm_kib(status), Some(51_234));
        assert_eq!(vm_hwm_kib("Name:\tx\n"), None);
        let own = std::fs::read_to_string("/proc/self/status").unwrap();
        assert!(vm_hwm_kib(&own).unwrap() > 0);
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("log")).unwrap();
        std::fs::write(dir.path().join("log").join("a"), [0u8; 1000]).unwrap();
        std::fs::write(dir.path().join("b"), [0u8; 24]).unwrap();
        assert_eq!(tree_bytes(dir.path()), 1024);
        assert_eq!(tree_bytes(&dir.path().join("gone")), 0);
    }

    #[test]
    fn without_skew_or_bug_the_node_runs_plainly_on_loopback() {
        let nodes = Nodes::new(config(Mode::Loopback, false, None));
        let command = nodes.command(1);
        assert_eq!(command.get_program(), "/bin/sluice");
        assert_eq!(env(&command, PLANTED_BUG_ENV), None);
        assert_eq!(env(&command, "LD_PRELOAD"), None);
        let args: Vec<String> = command
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert!(
            args.windows(2)
                .any(|w| w == ["--listen", "127.0.0.11:27000"])
        );
        assert!(!args.iter().any(|a| a == "--insecure"));
    }
}

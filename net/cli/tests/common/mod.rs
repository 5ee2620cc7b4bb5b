//! Real `sluice node` processes on loopback for the process tests: one
//! node ([`Node`]) or several ([`Nodes`]), and the `sluice` tool run as
//! an operator would. Each test binary uses a part of this.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

pub(crate) const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");

/// A node process; killed when dropped, also on a failed assertion.
pub(crate) struct Node {
    pub(crate) root: tempfile::TempDir,
    pub(crate) address: String,
    child: Option<Child>,
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Node {
    /// Starts node 1 on a free loopback port and initialises a cluster of
    /// it alone.
    pub(crate) fn start_initialised() -> Node {
        let node = Node::spawned(&[]);
        node.initialise();
        node
    }

    /// Starts node 1 on a free loopback port, with `extra` arguments.
    pub(crate) fn spawned(extra: &[&str]) -> Node {
        let root = tempfile::tempdir().expect("tempdir");
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let mut node = Node {
            root,
            address: format!("127.0.0.1:{port}"),
            child: None,
        };
        node.spawn(extra);
        node
    }

    pub(crate) fn dir(&self) -> PathBuf {
        self.root.path().join("node-1")
    }

    fn log_path(&self) -> PathBuf {
        self.root.path().join("node-1.log")
    }

    /// Starts the process again (after [`Node::kill`]), with `extra`
    /// arguments; its log starts afresh.
    pub(crate) fn spawn(&mut self, extra: &[&str]) {
        assert!(self.child.is_none(), "the node runs already");
        let log = std::fs::File::create(self.log_path()).expect("log file");
        let child = Command::new(SLUICE)
            .args(["node", "--id", "1", "--listen", &self.address, "--data-dir"])
            .arg(self.dir())
            .args(extra)
            .env("SLUICE_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn sluice node");
        self.child = Some(child);
    }

    /// Kills the process (SIGKILL) and reaps it.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits up to `limit` for the process to exit on its own.
    pub(crate) fn exited_within(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        let child = self.child.as_mut().expect("the node was started");
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Starts node 1 with `extra` flags and initialises a cluster of it
    /// alone.
    pub(crate) fn start_single(extra: &[&str]) -> Node {
        let node = Node::spawned(extra);
        node.initialise();
        node
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// The process's resident set size in bytes (`VmRSS` of
    /// `/proc/<pid>/status`).
    pub(crate) fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("the node process is running");
        let line = status
            .lines()
            .find(|line| line.starts_with("VmRSS:"))
            .expect("a VmRSS line");
        let kib: u64 = line
            .split_whitespace()
            .nth(1)
            .and_then(|n| n.parse().ok())
            .expect("VmRSS in kB");
        kib * 1024
    }

    /// `cluster init` of this node alone, retried while it starts to
    /// listen.
    pub(crate) fn initialise(&self) {
        let members = format!("1={}", self.address);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let init = sluice(&["cluster", "init", "--nodes", &members], None);
            if init.status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "cluster init kept failing: {}\n{}",
                text(&init.stderr),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Creates `topic` with `partitions` partitions.
    pub(crate) fn create_topic(&self, topic: &str, partitions: u32) {
        let created = sluice(
            &[
                "topics",
                "create",
                topic,
                "--partitions",
                &partitions.to_string(),
                "--cluster",
                &self.address,
            ],
            None,
        );
        assert!(created.status.success(), "{}", text(&created.stderr));
    }
}

/// Runs `sluice ARGS`, feeding `stdin`, and waits for it.
pub(crate) fn sluice(args: &[&str], stdin: Option<&[u8]>) -> Output {
    sluice_with_env(args, stdin, &[])
}

/// [`sluice`] with environment variables set (`SLUICE_TLS_DIR`, say).
pub(crate) fn sluice_with_env(
    args: &[&str],
    stdin: Option<&[u8]>,
    env: &[(&str, &Path)],
) -> Output {
    let mut command = Command::new(SLUICE);
    command
        .env_remove("SLUICE_TLS_DIR")
        .env_remove("SLUICE_TOKEN");
    for (name, value) in env {
        command.env(name, value);
    }
    let mut child = command
        .args(args)
        .env("SLUICE_LOG", "warn")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sluice");
    // Fed from a thread, so that a command writing much while it reads
    // cannot block on a full output pipe.
    let feeder = stdin.map(|input| {
        let mut pipe = child.stdin.take().expect("stdin");
        let input = input.to_vec();
        std::thread::spawn(move || {
            // The command may stop reading early (it refuses the input): a
            // broken pipe here is its answer, read from its output.
            let _ = pipe.write_all(&input);
        })
    });
    let output = child.wait_with_output().expect("sluice runs");
    if let Some(feeder) = feeder {
        feeder.join().expect("stdin feeder");
    }
    output
}

pub(crate) fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs the CLI and fails the test unless it succeeds; returns stdout.
pub(crate) fn sluice_ok(args: &[&str], stdin: Option<&str>) -> String {
    let output = sluice(args, stdin.map(str::as_bytes));
    assert!(
        output.status.success(),
        "sluice {args:?} failed: {}",
        text(&output.stderr)
    );
    text(&output.stdout)
}

/// `count` lines `k<i>\tv<i>` from `from` on, for `sluice publish`.
pub(crate) fn lines(from: usize, count: usize) -> String {
    (from..from + count)
        .map(|i| format!("k{i}\tv{i}\n"))
        .collect()
}

/// The payloads `tail --from-beginning --json` prints for `topic`.
pub(crate) fn tail_payloads(cluster: &str, topic: &str) -> Vec<String> {
    let out = sluice_ok(
        &[
            "tail",
            topic,
            "--cluster",
            cluster,
            "--from-beginning",
            "--idle-exit",
            "1",
            "--json",
        ],
        None,
    );
    out.lines()
        .map(|line| {
            let event: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
            event["payload"]
                .as_str()
                .expect("a UTF-8 payload")
                .to_owned()
        })
        .collect()
}

/// A free loopback address: bind, read it, let go.
pub(crate) fn free_address() -> String {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    format!("127.0.0.1:{port}")
}

/// Node processes; kills every one still running when dropped, also on a
/// failed assertion.
pub(crate) struct Nodes {
    pub(crate) root: tempfile::TempDir,
    pub(crate) children: BTreeMap<u64, Child>,
    pub(crate) addresses: BTreeMap<u64, String>,
    /// Passed to every node and every command, if set.
    pub(crate) secret_file: Option<PathBuf>,
    /// The TLS directory (`sluice certs`) every node and command uses, if
    /// set.
    pub(crate) tls_dir: Option<PathBuf>,
}

impl Drop for Nodes {
    fn drop(&mut self) {
        for child in self.children.values_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Nodes {
    /// Starts nodes `ids`, each on a free port and its own directory.
    pub(crate) fn start(ids: &[u64]) -> Nodes {
        Nodes::start_with_secret(ids, None)
    }

    /// [`Nodes::start`] with TLS: `sluice certs` writes a CA, the nodes'
    /// certificates and the client `admin`'s into `certs/` under the root,
    /// which every node and command uses.
    pub(crate) fn start_tls(ids: &[u64]) -> Nodes {
        let root = tempfile::tempdir().expect("tempdir");
        let certs = root.path().join("certs");
        let list: Vec<String> = ids.iter().map(u64::to_string).collect();
        sluice_ok(
            &[
                "certs",
                "--dir",
                certs.to_str().expect("UTF-8 path"),
                "--nodes",
                &list.join(","),
            ],
            None,
        );
        Nodes::start_in(root, ids, None, Some(certs))
    }

    /// [`Nodes::start`] with a cluster secret (written to a file).
    pub(crate) fn start_with_secret(ids: &[u64], secret: Option<&str>) -> Nodes {
        let root = tempfile::tempdir().expect("tempdir");
        let secret_file = secret.map(|secret| {
            let path = root.path().join("secret");
            std::fs::write(&path, secret).expect("secret file");
            path
        });
        Nodes::start_in(root, ids, secret_file, None)
    }

    fn start_in(
        root: tempfile::TempDir,
        ids: &[u64],
        secret_file: Option<PathBuf>,
        tls_dir: Option<PathBuf>,
    ) -> Nodes {
        let mut nodes = Nodes {
            root,
            children: BTreeMap::new(),
            addresses: BTreeMap::new(),
            secret_file,
            tls_dir,
        };
        for &id in ids {
            nodes.addresses.insert(id, free_address());
            nodes.spawn(id);
        }
        nodes
    }

    pub(crate) fn dir(&self, id: u64) -> PathBuf {
        self.root.path().join(format!("node-{id}"))
    }

    pub(crate) fn log_path(&self, id: u64) -> PathBuf {
        self.root.path().join(format!("node-{id}.log"))
    }

    /// `sluice node` for `id` on its address and directory, its standard
    /// error appended to its log file.
    pub(crate) fn command(&self, id: u64) -> Command {
        self.command_with_secret(id, self.secret_file.as_deref())
    }

    /// [`Nodes::command`] with its own secret file, if any.
    pub(crate) fn command_with_secret(&self, id: u64, secret_file: Option<&Path>) -> Command {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(id))
            .expect("log file");
        let mut command = Command::new(SLUICE);
        command
            .args(["node", "--id", &id.to_string(), "--listen"])
            .arg(&self.addresses[&id])
            .arg("--data-dir")
            .arg(self.dir(id))
            .env("SLUICE_LOG", "info")
            .env_remove("SLUICE_SECRET_FILE")
            .env_remove("SLUICE_TLS_DIR")
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(secret) = secret_file {
            command.arg("--secret-file").arg(secret);
        }
        if let Some(dir) = &self.tls_dir {
            command.arg("--tls-dir").arg(dir);
        }
        command
    }

    pub(crate) fn spawn(&mut self, id: u64) {
        let child = self.command(id).spawn().expect("spawn sluice node");
        self.children.insert(id, child);
    }

    /// Stops node `id` with SIGTERM and waits for it to exit.
    pub(crate) fn stop(&mut self, id: u64) -> ExitStatus {
        let mut child = self.children.remove(&id).expect("running");
        let killed = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("kill -TERM");
        assert!(killed.success());
        wait_exit(&mut child, Duration::from_secs(30)).expect("the node stops on SIGTERM")
    }

    /// Whether node `id` still runs; its exit status if not.
    pub(crate) fn exited(&mut self, id: u64) -> Option<ExitStatus> {
        self.children
            .get_mut(&id)
            .and_then(|child| child.try_wait().expect("try_wait"))
    }

    /// Every node's address, comma-separated.
    pub(crate) fn cluster(&self) -> String {
        let list: Vec<_> = self.addresses.values().cloned().collect();
        list.join(",")
    }

    /// The addresses of nodes `ids`, comma-separated.
    pub(crate) fn cluster_of(&self, ids: &[u64]) -> String {
        let list: Vec<_> = ids.iter().map(|id| self.addresses[id].clone()).collect();
        list.join(",")
    }

    pub(crate) fn log(&self, id: u64) -> String {
        std::fs::read_to_string(self.log_path(id)).unwrap_or_default()
    }

    /// `sluice` with this cluster's secret, if any.
    pub(crate) fn sluice(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut all: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
        if let Some(secret) = &self.secret_file {
            let takes_secret = matches!(args.first(), Some(&"cluster" | &"publish" | &"topics"));
            if takes_secret {
                all.push("--secret-file".to_owned());
                all.push(secret.to_str().expect("UTF-8 path").to_owned());
            }
        }
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        let env: Vec<(&str, &Path)> = self
            .tls_dir
            .iter()
            .map(|dir| ("SLUICE_TLS_DIR", dir.as_path()))
            .collect();
        sluice_with_env(&all, stdin.map(str::as_bytes), &env)
    }

    /// Initialises the cluster of every node started, retrying while the
    /// nodes begin to listen.
    pub(crate) fn init(&self) {
        let members: Vec<String> = self
            .addresses
            .iter()
            .map(|(id, address)| format!("{id}={address}"))
            .collect();
        let members = members.join(",");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let init = self.sluice(&["cluster", "init", "--nodes", &members], None);
            if init.status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "cluster init kept failing: {}",
                text(&init.stderr)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Every reachable node's `cluster status --json` line, by node id.
    pub(crate) fn status(&self) -> BTreeMap<u64, serde_json::Value> {
        let cluster = self.cluster();
        let output = self.sluice(
            &["cluster", "status", "--cluster", &cluster, "--json"],
            None,
        );
        text(&output.stdout)
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter_map(|node| Some((node["node"].as_u64()?, node)))
            .collect()
    }

    /// The leader's id, waiting up to 30 s for one.
    pub(crate) fn leader(&self) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let status = self.status();
            let leader = status
                .values()
                .find(|node| node["role"] == "leader")
                .and_then(|node| node["node"].as_u64());
            if let Some(leader) = leader {
                return leader;
            }
            assert!(Instant::now() < deadline, "no leader: {status:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Creates `topic` with `partitions`.
    pub(crate) fn create_topic(&self, topic: &str, partitions: u32) {
        let cluster = self.cluster();
        let partitions = partitions.to_string();
        let created = self.sluice(
            &[
                "topics",
                "create",
                topic,
                "--partitions",
                &partitions,
                "--cluster",
                &cluster,
            ],
            None,
        );
        assert!(created.status.success(), "{}", text(&created.stderr));
    }

    /// Publishes `lines` to `topic`, `batch` per request; asserts that
    /// every one was acknowledged.
    pub(crate) fn publish(&self, topic: &str, lines: &str, batch: usize) {
        let cluster = self.cluster();
        let batch = batch.to_string();
        let published = self.sluice(
            &["publish", topic, "--cluster", &cluster, "--batch", &batch],
            Some(lines),
        );
        assert!(published.status.success(), "{}", text(&published.stderr));
        let count = lines.lines().count();
        assert_eq!(
            text(&published.stdout).trim(),
            format!("{count} of {count} events acknowledged")
        );
    }
}

/// Waits up to `bound` for `child` to exit.
pub(crate) fn wait_exit(child: &mut Child, bound: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + bound;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every file in `dir` (not recursing) with its bytes.
pub(crate) fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .expect("read the directory")
        .map(|entry| entry.expect("directory entry"))
        .filter(|entry| entry.file_type().expect("file type").is_file())
        .map(|entry| {
            let name = entry.file_name().into_string().expect("UTF-8 name");
            let bytes = std::fs::read(entry.path()).expect("read a file");
            (name, bytes)
        })
        .collect()
}

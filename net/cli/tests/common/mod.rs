//! One `sluice node` process on loopback, driven by the CLI, for the
//! process tests that need a cluster but not several nodes.

#![allow(dead_code)]

use std::io::Write;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
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
    let mut child = Command::new(SLUICE)
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

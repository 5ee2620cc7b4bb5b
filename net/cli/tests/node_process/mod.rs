//! Starting `sluice node` processes on loopback and running the `sluice`
//! CLI against them, for the process tests that include this module.

#![allow(dead_code)] // Each test uses what it needs.

use std::io::Write;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub(crate) const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");

/// One `sluice node` process; killed when dropped, also on a failed
/// assertion.
pub(crate) struct Node {
    pub(crate) root: tempfile::TempDir,
    pub(crate) id: u64,
    pub(crate) address: String,
    child: Option<Child>,
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A free loopback port: bind, read it, let go.
pub(crate) fn free_address() -> String {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    format!("127.0.0.1:{port}")
}

impl Node {
    /// Starts node 1 with `extra` flags and initialises it as a one-node
    /// cluster.
    pub(crate) fn start_single(extra: &[&str]) -> Node {
        let mut node = Node {
            root: tempfile::tempdir().expect("tempdir"),
            id: 1,
            address: free_address(),
            child: None,
        };
        node.spawn(extra);
        let members = format!("1={}", node.address);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let init = sluice(&["cluster", "init", "--nodes", &members], None);
            if init.status.success() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "cluster init kept failing: {}\n{}",
                text(&init.stderr),
                node.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        node
    }

    pub(crate) fn dir(&self) -> PathBuf {
        self.root.path().join(format!("node-{}", self.id))
    }

    fn spawn(&mut self, extra: &[&str]) {
        let log = std::fs::File::create(self.root.path().join("node.log")).expect("log file");
        let child = Command::new(SLUICE)
            .args(["node", "--id", &self.id.to_string(), "--listen"])
            .arg(&self.address)
            .arg("--data-dir")
            .arg(self.dir())
            .args(extra)
            .env("SLUICE_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn sluice node");
        self.child = Some(child);
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.root.path().join("node.log")).unwrap_or_default()
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
}

/// Runs the `sluice` CLI with `args`, feeding it `stdin`.
pub(crate) fn sluice(args: &[&str], stdin: Option<&str>) -> Output {
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
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin");
        pipe.write_all(input.as_bytes()).expect("write stdin");
    }
    child.wait_with_output().expect("sluice runs")
}

/// Runs the CLI and fails the test unless it succeeds; returns stdout.
pub(crate) fn sluice_ok(args: &[&str], stdin: Option<&str>) -> String {
    let output = sluice(args, stdin);
    assert!(
        output.status.success(),
        "sluice {args:?} failed: {}",
        text(&output.stderr)
    );
    text(&output.stdout)
}

pub(crate) fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
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

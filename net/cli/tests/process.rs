//! A 3-node cluster of real `sluice node` processes on loopback, driven by
//! the CLI exactly as an operator would, with TLS on (`sluice certs`, then
//! `--tls-dir` everywhere): init, create a topic, publish, kill -9 the
//! leader, publish again, tail everything back. Every acknowledged line
//! must come back exactly once.

mod common;

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{SLUICE, sluice, sluice_ok, sluice_with_env, text};

/// Kills every node it started when dropped, also on a failed assertion.
struct Nodes {
    root: tempfile::TempDir,
    /// The CA and certificates every node and command uses.
    certs: PathBuf,
    children: HashMap<u64, Child>,
    addresses: HashMap<u64, String>,
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
    fn start(ids: &[u64]) -> Nodes {
        let root = tempfile::tempdir().expect("tempdir");
        let certs = root.path().join("certs");
        let list: Vec<String> = ids.iter().map(u64::to_string).collect();
        let dir = certs.to_str().expect("UTF-8 path");
        sluice_ok(&["certs", "--dir", dir, "--nodes", &list.join(",")], None);
        let mut nodes = Nodes {
            root,
            certs,
            children: HashMap::new(),
            addresses: HashMap::new(),
        };
        for &id in ids {
            // A free port: bind, read it, let go.
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("free port")
                .port();
            nodes.addresses.insert(id, format!("127.0.0.1:{port}"));
            nodes.spawn(id);
        }
        nodes
    }

    fn dir(&self, id: u64) -> PathBuf {
        self.root.path().join(format!("node-{id}"))
    }

    fn spawn(&mut self, id: u64) {
        let log = std::fs::File::create(self.root.path().join(format!("node-{id}.log")))
            .expect("log file");
        let child = Command::new(SLUICE)
            .args(["node", "--id", &id.to_string(), "--listen"])
            .arg(&self.addresses[&id])
            .arg("--data-dir")
            .arg(self.dir(id))
            .arg("--tls-dir")
            .arg(&self.certs)
            .env("SLUICE_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn sluice node");
        self.children.insert(id, child);
    }

    fn kill(&mut self, id: u64) {
        let mut child = self.children.remove(&id).expect("running");
        child.kill().expect("kill -9");
        child.wait().expect("reap");
    }

    fn cluster(&self) -> String {
        let mut ids: Vec<_> = self.addresses.keys().copied().collect();
        ids.sort_unstable();
        let list: Vec<_> = ids.iter().map(|id| self.addresses[id].clone()).collect();
        list.join(",")
    }

    /// `sluice ARGS` as the client `admin` of this cluster.
    fn sluice(&self, args: &[&str], stdin: Option<&[u8]>) -> std::process::Output {
        sluice_with_env(args, stdin, &[("SLUICE_TLS_DIR", &self.certs)])
    }

    fn log(&self, id: u64) -> String {
        std::fs::read_to_string(self.root.path().join(format!("node-{id}.log"))).unwrap_or_default()
    }
}

fn lines(from: usize, to: usize) -> String {
    (from..to).map(|i| format!("k{}\tv{i}\n", i % 13)).collect()
}

/// The leader's id, from `cluster status --json`.
fn leader(nodes: &Nodes, cluster: &str) -> Option<u64> {
    let output = nodes.sluice(&["cluster", "status", "--cluster", cluster, "--json"], None);
    text(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|node| node["role"] == "leader")
        .and_then(|node| node["node"].as_u64())
}

#[test]
fn a_cluster_of_processes_survives_kill_9_of_its_leader() {
    let mut nodes = Nodes::start(&[1, 2, 3]);
    let cluster = nodes.cluster();
    let members = format!(
        "1={},2={},3={}",
        nodes.addresses[&1], nodes.addresses[&2], nodes.addresses[&3]
    );
    // The nodes need a moment to listen.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let init = nodes.sluice(&["cluster", "init", "--nodes", &members], None);
        if init.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "cluster init kept failing: {}\n{}",
            text(&init.stderr),
            nodes.log(1)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let created = nodes.sluice(
        &[
            "topics",
            "create",
            "orders",
            "--partitions",
            "3",
            "--cluster",
            &cluster,
        ],
        None,
    );
    assert!(created.status.success(), "{}", text(&created.stderr));

    let published = nodes.sluice(
        &["publish", "orders", "--cluster", &cluster],
        Some(lines(0, 500).as_bytes()),
    );
    assert!(published.status.success(), "{}", text(&published.stderr));
    assert_eq!(
        text(&published.stdout).trim(),
        "500 of 500 events acknowledged"
    );

    let first = leader(&nodes, &cluster).expect("a leader");
    nodes.kill(first);

    let published = nodes.sluice(
        &["publish", "orders", "--cluster", &cluster, "--batch", "50"],
        Some(lines(500, 1000).as_bytes()),
    );
    assert!(
        published.status.success(),
        "publish after kill -9 of the leader: {}",
        text(&published.stderr)
    );
    assert_eq!(
        text(&published.stdout).trim(),
        "500 of 500 events acknowledged"
    );
    let second = leader(&nodes, &cluster).expect("a new leader");
    assert_ne!(first, second);

    let tailed = nodes.sluice(
        &[
            "tail",
            "orders",
            "--cluster",
            &cluster,
            "--from-beginning",
            "--idle-exit",
            "1",
            "--json",
        ],
        None,
    );
    assert!(tailed.status.success(), "{}", text(&tailed.stderr));
    let mut seen: HashMap<String, u32> = HashMap::new();
    for line in text(&tailed.stdout).lines() {
        let event: serde_json::Value = serde_json::from_str(line).expect("JSON line");
        assert!(event["partition"].is_u64() && event["offset"].is_u64());
        let payload = event["payload"].as_str().expect("UTF-8 payload").to_owned();
        let key = event["key"].as_str().expect("UTF-8 key");
        let i: usize = payload[1..].parse().expect("v<i>");
        assert_eq!(key, format!("k{}", i % 13));
        *seen.entry(payload).or_default() += 1;
    }
    for i in 0..1000 {
        assert_eq!(seen.get(&format!("v{i}")), Some(&1), "event v{i}");
    }
    assert_eq!(seen.len(), 1000);

    // TLS was on: a client without the TLS directory is not served.
    let plain = sluice(
        &["topics", "list", "--cluster", &cluster, "--timeout", "2"],
        None,
    );
    assert!(!plain.status.success());
    assert!(
        text(&plain.stderr).contains("the peer speaks TLS"),
        "{}",
        text(&plain.stderr)
    );

    // The killed leader's directory is readable offline.
    let inspected = sluice(&["inspect", nodes.dir(first).to_str().unwrap()], None);
    assert!(inspected.status.success(), "{}", text(&inspected.stderr));
    let report = text(&inspected.stdout);
    assert!(
        report.contains("segments:") && report.contains("orders/0"),
        "{report}"
    );
}

#[test]
fn operator_mistakes_get_named_errors_and_failing_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let open = sluice(
        &[
            "node",
            "--id",
            "1",
            "--listen",
            "0.0.0.0:0",
            "--data-dir",
            data.to_str().unwrap(),
        ],
        None,
    );
    assert!(!open.status.success());
    assert!(
        text(&open.stderr).contains("without TLS")
            && text(&open.stderr).contains("--tls-dir")
            && text(&open.stderr).contains("--insecure"),
        "{}",
        text(&open.stderr)
    );

    let zero = sluice(
        &[
            "node",
            "--id",
            "0",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().unwrap(),
        ],
        None,
    );
    assert!(!zero.status.success());
    assert!(
        text(&zero.stderr).contains("reserved for clients"),
        "{}",
        text(&zero.stderr)
    );

    let nobody = sluice(
        &["publish", "t", "--cluster", "127.0.0.1:1", "--timeout", "1"],
        Some(b"x\n"),
    );
    assert!(!nobody.status.success());
    assert!(
        text(&nobody.stderr).contains("no node of the cluster"),
        "{}",
        text(&nobody.stderr)
    );

    let bad = sluice(&["cluster", "init", "--nodes", "one=127.0.0.1:1"], None);
    assert!(!bad.status.success());
    assert!(
        text(&bad.stderr).contains("is not a node id"),
        "{}",
        text(&bad.stderr)
    );

    let missing = sluice(
        &[
            "inspect",
            Path::new("/nonexistent/sluice").to_str().unwrap(),
        ],
        None,
    );
    assert!(!missing.status.success());
}

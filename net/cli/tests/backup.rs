//! `sluice backup` of a running node, taken while a publisher keeps
//! writing: a node started on the copy serves every event acknowledged
//! before the backup began, in order, and nothing that was never
//! published.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{Node, sluice, text};

#[test]
fn a_backup_of_a_running_node_holds_every_event_acknowledged_before_it() {
    let mut node = Node::start_initialised();
    node.create_topic("ledger", 1);
    let before: String = (0..300).map(|i| format!("k{i}\tbefore-{i}\n")).collect();
    let published = sluice(
        &[
            "publish",
            "ledger",
            "--cluster",
            &node.address,
            "--batch",
            "10",
        ],
        Some(before.as_bytes()),
    );
    assert!(published.status.success(), "{}", text(&published.stderr));

    // A publisher keeps the log moving while the backup copies it.
    let address = node.address.clone();
    let during = std::thread::spawn(move || {
        let lines: String = (0..3000).map(|i| format!("k{i}\tduring-{i}\n")).collect();
        sluice(
            &["publish", "ledger", "--cluster", &address, "--batch", "5"],
            Some(lines.as_bytes()),
        )
    });
    std::thread::sleep(Duration::from_millis(100));
    let copy = node.root.path().join("copy");
    let backup = sluice(
        &[
            "backup",
            "--data-dir",
            node.dir().to_str().expect("utf-8 path"),
            "--to",
            copy.to_str().expect("utf-8 path"),
        ],
        None,
    );
    assert!(
        backup.status.success(),
        "{}{}",
        text(&backup.stdout),
        text(&backup.stderr)
    );
    assert!(text(&backup.stdout).contains("copied log entries"));
    let during = during.join().expect("publisher");
    assert!(during.status.success(), "{}", text(&during.stderr));

    // The node is replaced by one started on the copy (same id, address).
    node.kill();
    std::fs::remove_dir_all(node.dir()).expect("remove the node's directory");
    std::fs::rename(&copy, node.dir()).expect("the copy in its place");
    node.spawn(&[]);
    let tail = read_all(&node);
    let payloads: Vec<&str> = tail.iter().map(String::as_str).collect();
    let expected: Vec<String> = (0..300).map(|i| format!("before-{i}")).collect();
    assert!(
        payloads.len() >= 300,
        "the copy serves {} events, fewer than the 300 acknowledged before the backup\n{}",
        payloads.len(),
        node.log()
    );
    assert_eq!(payloads[..300], expected, "the first 300 events, in order");
    let published: BTreeSet<String> = (0..3000)
        .map(|i| format!("during-{i}"))
        .chain(expected.iter().cloned())
        .collect();
    let mut seen = BTreeSet::new();
    for payload in &payloads {
        assert!(published.contains(*payload), "never published: {payload}");
        assert!(seen.insert(*payload), "served twice: {payload}");
    }
}

/// Every payload of `ledger` on `node`, in offset order; retried while the
/// node starts.
fn read_all(node: &Node) -> Vec<String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let tail = sluice(
            &[
                "tail",
                "ledger",
                "--from-beginning",
                "--idle-exit",
                "2",
                "--json",
                "--cluster",
                &node.address,
            ],
            None,
        );
        if tail.status.success() {
            return text(&tail.stdout)
                .lines()
                .map(|line| {
                    let event: serde_json::Value = serde_json::from_str(line).expect("json line");
                    event["payload"].as_str().expect("utf-8 payload").to_owned()
                })
                .collect();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "tail kept failing on the restored node: {}\n{}",
            text(&tail.stderr),
            node.log()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

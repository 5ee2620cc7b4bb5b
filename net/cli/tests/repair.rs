//! A node whose log is damaged in the middle refuses to start and names
//! the flag that repairs it; `sluice node --repair` cuts the log at the
//! damage, says what it cut, and starts.

mod common;

use std::io::{Read, Seek, SeekFrom, Write};
use std::time::Duration;

use common::{Node, sluice, text};

/// The active segment's file and the bytes of log it holds, from
/// `sluice inspect --json`.
fn active_segment(node: &Node) -> (std::path::PathBuf, u64) {
    let inspected = sluice(&["inspect", node.dir().to_str().unwrap(), "--json"], None);
    assert!(inspected.status.success(), "{}", text(&inspected.stderr));
    let report: serde_json::Value =
        serde_json::from_str(text(&inspected.stdout).trim()).expect("one JSON object");
    let segments = report["segments"].as_array().expect("segments");
    assert_eq!(segments.len(), 1, "{report}");
    let name = segments[0]["name"].as_str().expect("a name");
    let size = segments[0]["size"].as_u64().expect("a size");
    (node.dir().join(name), size)
}

#[test]
fn a_damaged_log_is_refused_naming_repair_and_repair_starts_the_node() {
    let mut node = Node::start_initialised();
    node.create_topic("t", 1);
    // 60 entries of 10 kB: the middle of the log is a record that later
    // ones record as durable, so damage there is not a torn tail.
    let lines: String = (0..60)
        .map(|i| format!("{i}-{}\n", "x".repeat(10_000)))
        .collect();
    let published = sluice(
        &["publish", "t", "--cluster", &node.address, "--batch", "1"],
        Some(lines.as_bytes()),
    );
    assert!(published.status.success(), "{}", text(&published.stderr));
    node.kill();

    let (segment, size) = active_segment(&node);
    assert!(size > 600_000, "the log holds {size} bytes");
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&segment)
        .expect("open the segment");
    let middle = size / 2;
    let mut byte = [0u8];
    file.seek(SeekFrom::Start(middle)).unwrap();
    file.read_exact(&mut byte).unwrap();
    file.seek(SeekFrom::Start(middle)).unwrap();
    file.write_all(&[byte[0] ^ 0x5a]).unwrap();
    file.sync_all().unwrap();
    drop(file);

    node.spawn(&[]);
    let status = node
        .exited_within(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("a node over a damaged log kept running:\n{}", node.log()));
    assert!(!status.success());
    let log = node.log();
    assert!(log.contains("corruption in"), "{log}");
    assert!(
        log.contains("--repair"),
        "the refusal names the flag: {log}"
    );

    node.spawn(&["--repair"]);
    assert!(
        node.exited_within(Duration::from_secs(3)).is_none(),
        "the node did not start with --repair:\n{}",
        node.log()
    );
    let log = node.log();
    assert!(
        log.contains("--repair cut the log") && log.contains("corruption in"),
        "--repair says what it cut: {log}"
    );
    let status = sluice(
        &["cluster", "status", "--cluster", &node.address, "--json"],
        None,
    );
    assert!(
        status.status.success(),
        "{}\n{}",
        text(&status.stderr),
        node.log()
    );
    let line: serde_json::Value =
        serde_json::from_str(text(&status.stdout).trim()).expect("one JSON line");
    assert_eq!(line["node"], 1, "{line}");
}

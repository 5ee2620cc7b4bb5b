//! Retention on a cluster built with the CLI: a `sluice node` process with
//! small segments and a quick retention round, a topic created with
//! `--retention-bytes`, and a steady publish load. The data directory must
//! stay bounded, the topic's first retained offset must advance, and every
//! event still within retention must read back intact. A topic created
//! with `--retention unlimited` pins the shared log until `sluice topics
//! alter` gives it a limit.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{Node, sluice_ok, tail_payloads};

const SEGMENT_BYTES: u64 = 64 * 1024;
const RETENTION_BYTES: u64 = 256 * 1024;
const PAYLOAD_BYTES: usize = 1000;
const EVENTS_PER_ROUND: usize = 100;
/// What the data directory may hold under the load: the retained bytes,
/// the active segment and the one written ahead, a segment more for
/// rounding, and room for the snapshot and metadata.
const DIR_BYTES_BOUND: u64 = RETENTION_BYTES + 4 * SEGMENT_BYTES + 256 * 1024;

/// The bytes of every file under `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).expect("readable data directory") {
        let entry = entry.expect("a directory entry");
        let meta = entry.metadata().expect("metadata");
        total += if meta.is_dir() {
            dir_bytes(&entry.path())
        } else {
            meta.len()
        };
    }
    total
}

/// `count` events numbered from `from`, each with a payload of
/// `PAYLOAD_BYTES` that starts with its number.
fn events(from: usize, count: usize) -> String {
    (from..from + count)
        .map(|i| {
            let number = format!("v{i}-");
            let padding = "x".repeat(PAYLOAD_BYTES - number.len());
            format!("k\t{number}{padding}\n")
        })
        .collect()
}

fn publish(cluster: &str, from: usize) {
    let out = sluice_ok(
        &["publish", "logs", "--cluster", cluster],
        Some(&events(from, EVENTS_PER_ROUND)),
    );
    assert_eq!(
        out.trim(),
        format!("{EVENTS_PER_ROUND} of {EVENTS_PER_ROUND} events acknowledged")
    );
}

/// The event numbers `tail --from-beginning` reads from `logs`, checking
/// each payload whole.
fn retained(cluster: &str) -> Vec<usize> {
    tail_payloads(cluster, "logs")
        .iter()
        .map(|payload| {
            let (number, padding) = payload.split_once('-').expect("v<i>-xxx");
            assert_eq!(padding.len() + number.len() + 1, PAYLOAD_BYTES, "{number}");
            assert!(padding.bytes().all(|b| b == b'x'), "{number}'s payload");
            number[1..].parse().expect("a number")
        })
        .collect()
}

/// Waits for two retention rounds (at 200 ms each).
fn let_retention_run() {
    std::thread::sleep(Duration::from_millis(600));
}

#[test]
fn a_cli_cluster_trims_its_log_under_a_steady_load() {
    let node = Node::start_single(&[
        "--segment-bytes",
        &SEGMENT_BYTES.to_string(),
        "--retention-interval-ms",
        "200",
    ]);
    let cluster = node.address.clone();
    let created = sluice_ok(
        &[
            "topics",
            "create",
            "logs",
            "--retention-bytes",
            &RETENTION_BYTES.to_string(),
            "--cluster",
            &cluster,
        ],
        None,
    );
    assert_eq!(
        created.trim(),
        format!(
            "topic logs has 1 partition(s), retention-ms 604800000, retention-bytes \
             {RETENTION_BYTES}"
        )
    );
    let pinning = sluice_ok(
        &[
            "topics",
            "create",
            "audit",
            "--retention",
            "unlimited",
            "--cluster",
            &cluster,
        ],
        None,
    );
    assert!(pinning.contains("retention-ms unlimited, retention-bytes unlimited"));

    // While `audit` keeps everything, nothing is trimmed.
    let mut next = 0;
    for _ in 0..8 {
        publish(&cluster, next);
        next += EVENTS_PER_ROUND;
    }
    let_retention_run();
    let kept = retained(&cluster);
    assert_eq!(
        kept,
        (0..next).collect::<Vec<_>>(),
        "an unlimited topic pins the log"
    );
    let pinned_bytes = dir_bytes(&node.dir());
    assert!(pinned_bytes > 8 * (EVENTS_PER_ROUND * PAYLOAD_BYTES) as u64);

    // Giving `audit` a limit through Raft lets the log go.
    let altered = sluice_ok(
        &[
            "topics",
            "alter",
            "audit",
            "--retention-bytes",
            &RETENTION_BYTES.to_string(),
            "--cluster",
            &cluster,
        ],
        None,
    );
    assert_eq!(
        altered.trim(),
        format!("topic audit now has retention-ms unlimited, retention-bytes {RETENTION_BYTES}")
    );

    // A steady load of 40 rounds of 100 KB: the directory stays bounded
    // and the first retained event moves up.
    let started = Instant::now();
    let mut largest = 0;
    let mut firsts = Vec::new();
    for _ in 0..40 {
        publish(&cluster, next);
        next += EVENTS_PER_ROUND;
        std::thread::sleep(Duration::from_millis(100));
        // The backlog the unlimited topic pinned goes in the first
        // retention rounds; from then on the load is steady.
        if started.elapsed() > Duration::from_secs(1) {
            largest = largest.max(dir_bytes(&node.dir()));
            if firsts.len() < 4 {
                firsts.push(retained(&cluster)[0]);
            }
        }
    }
    let_retention_run();
    let kept = retained(&cluster);
    let first = kept[0];
    firsts.push(first);
    eprintln!(
        "published {next} events of {PAYLOAD_BYTES} bytes; the directory held at most {largest} \
         bytes (pinned: {pinned_bytes}); first retained event over time: {firsts:?}"
    );
    assert!(
        largest <= DIR_BYTES_BOUND,
        "the data directory reached {largest} bytes, over the bound of {DIR_BYTES_BOUND}"
    );
    assert!(
        firsts.windows(2).all(|w| w[0] <= w[1]) && firsts.first() < firsts.last(),
        "the first retained event did not advance: {firsts:?}"
    );
    assert!(first > 0, "nothing was trimmed");
    // Everything from the first retained event on is there, once, in
    // order, and at least the newest RETENTION_BYTES of payloads.
    assert_eq!(kept, (first..next).collect::<Vec<_>>());
    assert!(
        (kept.len() * PAYLOAD_BYTES) as u64 >= RETENTION_BYTES,
        "only {} events ({} bytes of payloads) are retained, less than the {RETENTION_BYTES} \
         bytes asked for",
        kept.len(),
        kept.len() * PAYLOAD_BYTES
    );
    // Trimming drops events, never topics.
    let listed = sluice_ok(&["topics", "list", "--cluster", &cluster], None);
    assert_eq!(listed.trim(), "audit\t1\nlogs\t1");
}

//! Events of tens or hundreds of kilobytes through `sluice` processes, as
//! an operator runs them: `tail` reads them in fetches bounded by bytes (so
//! it never asks for more than a frame holds), `publish` splits its
//! batches by bytes and refuses an event over the format's limit at once,
//! naming the limit. The client library's side is in
//! `net/server/tests/big_events.rs`.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{Node, sluice, text};
use sluice_model::event::EVENT_PAYLOAD_SIZE_MAX;

/// `count` lines of `size` hex characters each; line `i` starts with `i`
/// in 8 digits.
fn hex_lines(count: usize, size: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(count * (size + 1));
    for i in 0..count {
        let line = format!("{i:08}");
        out.extend_from_slice(line.as_bytes());
        out.extend((line.len()..size).map(|j| b"0123456789abcdef"[(i + j) % 16]));
        out.push(b'\n');
    }
    out
}

/// 300 acknowledged events of 75 kB are 22 MB: more than one frame holds
/// (16 MiB). `tail` used to ask for 1,000 events whatever their size, so
/// every fetch failed and it printed none of them.
#[test]
fn tail_reads_every_acknowledged_event_however_large_they_are_together() {
    let node = Node::start_initialised();
    node.create_topic("big", 1);
    let published = sluice(
        &[
            "publish",
            "big",
            "--cluster",
            &node.address,
            "--batch",
            "100",
        ],
        Some(&hex_lines(300, 75_000)),
    );
    assert!(published.status.success(), "{}", text(&published.stderr));
    assert_eq!(
        text(&published.stdout).trim(),
        "300 of 300 events acknowledged"
    );

    let tailed = sluice(
        &[
            "tail",
            "big",
            "--cluster",
            &node.address,
            "--from-beginning",
            "--idle-exit",
            "3",
            "--timeout",
            "15",
        ],
        None,
    );
    assert!(
        tailed.status.success(),
        "tail failed: {}\n{}",
        text(&tailed.stderr),
        node.log()
    );
    let mut offsets = BTreeSet::new();
    for line in text(&tailed.stdout).lines() {
        let fields: Vec<&str> = line.split('\t').collect();
        assert_eq!(fields.len(), 4, "partition, offset, key, payload");
        let offset: u64 = fields[1].parse().expect("an offset");
        assert_eq!(fields[3].len(), 75_000);
        assert_eq!(&fields[3][..8], format!("{offset:08}"), "event {offset}");
        assert!(offsets.insert(offset), "offset {offset} printed twice");
    }
    assert_eq!(offsets.len(), 300, "tail printed {} of 300", offsets.len());
}

/// 300 lines of 100 kB are 30 MB, more than one request may carry: the
/// CLI splits its batches by bytes. A line over the event format's
/// payload limit is refused at once, naming the limit, and the lines
/// around it are still published.
#[test]
fn publish_splits_batches_by_bytes_and_refuses_an_oversized_line_at_once() {
    let node = Node::start_initialised();
    node.create_topic("big", 3);
    let published = sluice(
        &["publish", "big", "--cluster", &node.address],
        Some(&hex_lines(300, 100_000)),
    );
    assert!(
        published.status.success(),
        "{}\n{}",
        text(&published.stderr),
        node.log()
    );
    assert_eq!(
        text(&published.stdout).trim(),
        "300 of 300 events acknowledged"
    );

    let mut input = b"before\n".to_vec();
    input.extend(std::iter::repeat_n(b'x', 17_000_000));
    input.extend_from_slice(b"\nafter\n");
    let started = Instant::now();
    let oversized = sluice(
        &[
            "publish",
            "big",
            "--cluster",
            &node.address,
            "--timeout",
            "20",
        ],
        Some(&input),
    );
    let took = started.elapsed();
    assert!(!oversized.status.success(), "an oversized line succeeded");
    let stderr = text(&oversized.stderr);
    assert!(
        stderr.contains("line 2") && stderr.contains(&format!("limit of {EVENT_PAYLOAD_SIZE_MAX}")),
        "the refusal names the line and the limit: {stderr}"
    );
    assert_eq!(
        text(&oversized.stdout).trim(),
        "2 of 3 events acknowledged",
        "{stderr}"
    );
    assert!(
        took < Duration::from_secs(10),
        "the refusal took {took:?}: it must not wait for the request timeout"
    );
}

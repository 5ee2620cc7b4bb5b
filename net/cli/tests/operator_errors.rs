//! What an operator sees when a command cannot do what was asked:
//! `publish` says how far it got. Through `sluice` processes, as an
//! operator runs them.

mod common;

use common::{Node, sluice, text};

#[test]
fn publish_counts_what_was_acknowledged_before_bad_input_and_takes_base64() {
    let node = Node::start_initialised();
    node.create_topic("bin", 1);

    // Line 3 is not UTF-8: the two lines before it are published, and the
    // error says so.
    let stopped = sluice(
        &["publish", "bin", "--cluster", &node.address],
        Some(b"one\ntwo\n\xff\xfe\nfour\n"),
    );
    let stderr = text(&stopped.stderr);
    assert!(!stopped.status.success());
    assert!(
        stderr.contains("line 3")
            && stderr.contains("2 of the 2 event(s) read before were acknowledged"),
        "{stderr}"
    );
    assert_eq!(text(&stopped.stdout).trim(), "2 of 2 events acknowledged");

    // Binary keys and payloads, as base64.
    let published = sluice(
        &["publish", "bin", "--cluster", &node.address, "--base64"],
        Some(b"AAEC/w==\n//79\tgICA\n"),
    );
    assert!(published.status.success(), "{}", text(&published.stderr));
    assert_eq!(text(&published.stdout).trim(), "2 of 2 events acknowledged");
    let bad = sluice(
        &["publish", "bin", "--cluster", &node.address, "--base64"],
        Some(b"not base64!\n"),
    );
    let stderr = text(&bad.stderr);
    assert!(!bad.status.success());
    assert!(
        stderr.contains("line 1: the payload is not base64"),
        "{stderr}"
    );

    let tailed = sluice(
        &[
            "tail",
            "bin",
            "--cluster",
            &node.address,
            "--from-beginning",
            "--idle-exit",
            "1",
            "--json",
        ],
        None,
    );
    assert!(tailed.status.success(), "{}", text(&tailed.stderr));
    let events: Vec<serde_json::Value> = text(&tailed.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("JSON line"))
        .collect();
    assert_eq!(events.len(), 4, "{events:?}");
    assert_eq!(events[0]["payload"], "one");
    assert_eq!(events[1]["payload"], "two");
    assert_eq!(events[2]["payload_base64"], "AAEC/w==");
    assert_eq!(events[2]["key"], "");
    assert_eq!(events[3]["key_base64"], "//79");
    assert_eq!(events[3]["payload_base64"], "gICA");
}

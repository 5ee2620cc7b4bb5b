//! What an operator sees when a command cannot do what was asked: the
//! membership commands refuse by name, `publish` says how far it got, and
//! a closed standard output ends a command quietly. Through `sluice`
//! processes, as an operator runs them.

mod common;

use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Node, SLUICE, sluice, text};

#[test]
fn cluster_init_twice_and_removing_a_non_member_are_refused_by_name() {
    let node = Node::start_initialised();
    let members = format!("1={}", node.address);

    let started = Instant::now();
    let again = sluice(&["cluster", "init", "--nodes", &members], None);
    let stderr = text(&again.stderr);
    assert!(!again.status.success(), "a second init succeeded: {stderr}");
    assert!(
        stderr.contains(&format!(
            "cluster already initialised with members 1={}",
            node.address
        )),
        "{stderr}"
    );
    assert!(
        !stderr.contains("retry") && !stderr.contains("Error {"),
        "no retry advice, no Debug struct: {stderr}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));

    let removed = sluice(
        &[
            "cluster",
            "remove",
            "--id",
            "42",
            "--cluster",
            &node.address,
        ],
        None,
    );
    let stderr = text(&removed.stderr);
    assert!(!removed.status.success(), "removing a non-member succeeded");
    assert!(stderr.contains("node 42 is not a member"), "{stderr}");
    assert!(
        !text(&removed.stdout).contains("no longer a member"),
        "{}",
        text(&removed.stdout)
    );

    // The cluster is untouched: node 1 still leads it alone.
    let status = sluice(
        &["cluster", "status", "--cluster", &node.address, "--json"],
        None,
    );
    let line: serde_json::Value =
        serde_json::from_str(text(&status.stdout).trim()).expect("one JSON line");
    assert_eq!(line["members"], serde_json::json!([members]));
}

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

/// `sluice verify DIR | head -2`: once the reader is gone, the command
/// ends without a panic or an error message.
#[test]
fn a_closed_standard_output_ends_a_command_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    for args in [["verify", data], ["inspect", data]] {
        // A socket whose other end is closed: every write fails with
        // EPIPE, as a pipe's does after its reader exits.
        let (reader, writer) = UnixStream::pair().expect("socket pair");
        drop(reader);
        let output = Command::new(SLUICE)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(std::os::fd::OwnedFd::from(writer)))
            .stderr(Stdio::piped())
            .output()
            .expect("sluice runs");
        let stderr = text(&output.stderr);
        assert_ne!(
            output.status.code(),
            Some(101),
            "{args:?} panicked: {stderr}"
        );
        assert!(stderr.is_empty(), "{args:?} said: {stderr}");
    }
}

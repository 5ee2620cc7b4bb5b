//! `sluice audit export|erase --cluster` against a running node's audit
//! API: the online export has the same lines as the offline export of the
//! stopped node's directory, ends with a summary signed by the node's key
//! (checked by the command against `--trust`), and an erasure through the
//! API is committed and masks later reads.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{Node, free_address, sluice, sluice_ok, text};

const TOPIC: &str = "accounts";

/// `sluice audit export --cluster HTTP --subject SUBJECT --trust PEM`.
fn export_online(http: &str, subject: &str, trust: &Path) -> std::process::Output {
    sluice(
        &[
            "audit",
            "export",
            "--cluster",
            http,
            "--subject",
            subject,
            "--trust",
            trust.to_str().unwrap(),
        ],
        None,
    )
}

fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect()
}

#[test]
fn the_online_export_matches_the_offline_one_and_erasure_goes_through_the_api() {
    let keys = tempfile::tempdir().unwrap();
    let out = keys.path().to_str().unwrap();
    sluice_ok(&["keys", "gen", "--out", out, "--name", "node"], None);
    sluice_ok(&["keys", "gen", "--out", out, "--name", "other"], None);
    let (secret, public) = (
        keys.path().join("node.key.pem"),
        keys.path().join("node.pub.pem"),
    );
    let http = free_address();
    let args = [
        "--http-listen",
        &http,
        "--signing-key",
        secret.to_str().unwrap(),
    ];
    let mut node = Node::spawned(&args);
    node.initialise();
    node.create_topic(TOPIC, 2);
    let events = "alice\t{\"owner\":\"alice\",\"n\":1}\nbob\t{\"owner\":\"bob\"}\n\
                  alice\t{\"owner\":\"alice\",\"n\":2}\n";
    let published = sluice_ok(
        &["publish", TOPIC, "--cluster", &node.address],
        Some(events),
    );
    assert_eq!(published.trim(), "3 of 3 events acknowledged");

    // Wait until a signed checkpoint covers both events: after it the
    // log no longer grows, so the directory read later holds what the
    // online export read.
    let deadline = Instant::now() + Duration::from_secs(60);
    let online = loop {
        let exported = export_online(&http, "alice", &public);
        assert!(exported.status.success(), "{}", text(&exported.stderr));
        let lines = json_lines(&text(&exported.stdout));
        assert_eq!(lines.len(), 3, "two events and the summary");
        if lines[..2]
            .iter()
            .all(|line| !line["verification"]["checkpoint"].is_null())
        {
            break text(&exported.stdout);
        }
        assert!(
            Instant::now() < deadline,
            "no checkpoint covered the events"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    let checked = sluice_audit::summary::check_export(online.as_bytes()).unwrap();
    assert_eq!(checked.statement.events, 2);
    assert!(checked.statement.directory_verified);

    // A summary signed by a key --trust does not name fails the command.
    let other = keys.path().join("other.pub.pem");
    let untrusted = export_online(&http, "alice", &other);
    assert!(!untrusted.status.success(), "{}", text(&untrusted.stderr));
    assert!(text(&untrusted.stderr).contains("which no --trust key names"));

    // The node stopped, the offline export of its directory: the same
    // lines, without the summary.
    node.kill();
    let dir = node.dir();
    let offline = sluice_ok(
        &[
            "audit",
            "export",
            "--dir",
            dir.to_str().unwrap(),
            "--subject",
            "alice",
        ],
        None,
    );
    let online_lines: Vec<&str> = online.lines().collect();
    let offline_lines: Vec<&str> = offline.lines().collect();
    assert_eq!(online_lines[..online_lines.len() - 1], offline_lines[..]);

    // Erasure through the API, then reads are masked.
    node.spawn(&args);
    let deadline = Instant::now() + Duration::from_secs(60);
    let erased = loop {
        let erased = sluice(
            &[
                "audit",
                "erase",
                "--cluster",
                &http,
                "--subject",
                "alice",
                "--reason",
                "gdpr-1",
            ],
            None,
        );
        if erased.status.success() || Instant::now() >= deadline {
            break erased;
        }
        // The restarted node elects itself first.
        std::thread::sleep(Duration::from_millis(300));
    };
    assert!(erased.status.success(), "{}", text(&erased.stderr));
    let record: serde_json::Value = serde_json::from_str(text(&erased.stdout).trim()).unwrap();
    assert_eq!(record["subject"], "alice");
    assert_eq!(record["reason"], "gdpr-1");
    let tail = sluice_ok(
        &[
            "tail",
            TOPIC,
            "--cluster",
            &node.address,
            "--from-beginning",
            "--idle-exit",
            "1",
            "--json",
        ],
        None,
    );
    let payloads: Vec<String> = json_lines(&tail)
        .iter()
        .map(|event| event["payload"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(payloads.len(), 3, "{tail}");
    assert!(
        !payloads.iter().any(|payload| payload.contains("alice")),
        "an erased payload was read: {payloads:?}"
    );
    assert!(payloads.iter().any(|payload| payload.contains("bob")));
    let after = export_online(&http, "alice", &public);
    let lines = json_lines(&text(&after.stdout));
    assert_eq!(lines[0]["erased"], true, "{}", text(&after.stdout));
}

//! `sluice inspect` on a running node's data directory changes nothing:
//! the node keeps its spare segment, rolls onto it when it is written out,
//! and goes on acknowledging. (Inspection once ran the node's recovery,
//! which removed the spare, and the node stopped with exit code 3 at its
//! next segment roll.)

mod common;

use std::time::{Duration, Instant};

use common::{Nodes, files, text};

const TOPIC: &str = "big";
const PAYLOAD_SIZE: usize = 75_000;
/// Segment rolls the publishing after the inspection must cause: the
/// first may come with a full segment while the spare is still being
/// written (it is written out at about twice the rate the log fills);
/// by the second the spare is finished and the log rolls onto it.
const ROLLS: usize = 2;
/// Bounds of that publishing: two segments of 64 MiB and some.
const ROLL_WAIT_MAX: Duration = Duration::from_secs(240);
const ROLL_BYTES_MAX: usize = 200 * 1024 * 1024;
/// Events per `sluice publish` run.
const ROUND: usize = 40;

fn events(from: usize, to: usize) -> String {
    (from..to)
        .map(|i| {
            let mut line = format!("k{i}\tv{i}-");
            line.extend(std::iter::repeat_n(
                char::from(b'a' + (i % 26) as u8),
                PAYLOAD_SIZE,
            ));
            line.push('\n');
            line
        })
        .collect()
}

fn segments(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|entry| {
            let name = entry.as_ref().unwrap().file_name();
            name.to_string_lossy().ends_with(".seg")
        })
        .count()
}

#[test]
fn inspecting_a_live_node_changes_nothing_and_the_node_rolls_on() {
    let mut nodes = Nodes::start(&[1]);
    nodes.init();
    nodes.create_topic(TOPIC, 1);
    let dir = nodes.dir(1);

    // Past a megabyte of appends the node writes a spare segment out.
    let mut published = 0;
    nodes.publish(TOPIC, &events(0, 20), 10);
    published += 20;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !dir.join("log.spare").exists() {
        assert!(Instant::now() < deadline, "no spare segment appeared");
        std::thread::sleep(Duration::from_millis(50));
    }

    let before = files(&dir);
    let inspected = nodes.sluice(&["inspect", dir.to_str().unwrap()], None);
    assert!(inspected.status.success(), "{}", text(&inspected.stderr));
    let report = text(&inspected.stdout);
    assert!(report.contains("in use by a running node"), "{report}");
    assert!(report.contains(&format!("{TOPIC}/0")), "{report}");
    let json = nodes.sluice(&["inspect", dir.to_str().unwrap(), "--json"], None);
    assert!(json.status.success(), "{}", text(&json.stderr));
    let json: serde_json::Value = serde_json::from_slice(&json.stdout).expect("one JSON object");
    assert_eq!(json["in_use"], true);
    // Whatever verify makes of a moving tail, it reads without the lock
    // and touches no file.
    let verified = nodes.sluice(&["verify", dir.to_str().unwrap()], None);
    assert!(
        !text(&verified.stderr).contains("in use"),
        "{}",
        text(&verified.stderr)
    );
    let after = files(&dir);
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>(),
        "inspection added or removed files"
    );
    assert!(after.contains_key("log.spare"), "the spare is gone");

    // Publish until the node has rolled twice.
    let rolled_from = segments(&dir);
    let deadline = Instant::now() + ROLL_WAIT_MAX;
    while segments(&dir) < rolled_from + ROLLS {
        if let Some(status) = nodes.exited(1) {
            panic!("the node stopped with {status}:\n{}", nodes.log(1));
        }
        assert!(
            Instant::now() < deadline && published * PAYLOAD_SIZE < ROLL_BYTES_MAX,
            "fewer than {ROLLS} segment rolls after {published} events"
        );
        let cluster = nodes.cluster();
        let lines = events(published, published + ROUND);
        let publish = ["publish", TOPIC, "--cluster", &cluster, "--batch", "10"];
        let run = nodes.sluice(&publish, Some(&lines));
        if !run.status.success() {
            let node = match nodes.exited(1) {
                Some(status) => format!("the node stopped with {status}"),
                None => "the node runs".to_owned(),
            };
            panic!(
                "publishing failed ({node}): {}\n{}",
                text(&run.stderr),
                nodes.log(1)
            );
        }
        published += ROUND;
    }
    nodes.publish(TOPIC, &events(published, published + ROUND), 10);
    assert!(nodes.exited(1).is_none(), "{}", nodes.log(1));
}

//! A follower whose newest segment was cut to a third, as an operator
//! found it: three `sluice node` processes, 75 kB events, the follower
//! stopped, its newest segment truncated, the follower started again. It
//! cuts the torn tail on open and must then catch up with the leader, and
//! no node may stop on the way.

mod common;

use std::time::{Duration, Instant};

use common::Nodes;

const TOPIC: &str = "big";
/// The operator's event size.
const PAYLOAD_SIZE: usize = 75_000;
/// How long the follower may take to catch up.
const CATCH_UP_MAX: Duration = Duration::from_secs(30);

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

fn applied(nodes: &Nodes, id: u64) -> Option<u64> {
    nodes
        .status()
        .get(&id)
        .and_then(|node| node["applied"].as_u64())
}

/// Truncates the newest segment of `dir` to a third of its frames (a
/// segment made from a spare is zeros past its frames, and cutting only
/// zeros would lose nothing). Returns its name, old and new length.
fn truncate_newest_segment(dir: &std::path::Path) -> (String, u64, u64) {
    let newest = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.ends_with(".seg"))
        .max()
        .expect("a segment");
    let path = dir.join(&newest);
    let bytes = std::fs::read(&path).unwrap();
    let frames = bytes
        .iter()
        .rposition(|&b| b != 0)
        .map_or(0, |last| last + 1);
    let cut = (frames / 3) as u64;
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(cut).unwrap();
    file.sync_all().unwrap();
    (newest, bytes.len() as u64, cut)
}

#[test]
fn a_follower_whose_newest_segment_was_cut_catches_up() {
    let mut nodes = Nodes::start(&[1, 2, 3]);
    nodes.init();
    nodes.create_topic(TOPIC, 1);
    nodes.publish(TOPIC, &events(0, 120), 10);

    let leader = nodes.leader();
    let follower = if leader == 1 { 2 } else { 1 };
    let target = applied(&nodes, leader).expect("the leader's applied index");
    let deadline = Instant::now() + CATCH_UP_MAX;
    while applied(&nodes, follower) < Some(target) {
        assert!(
            Instant::now() < deadline,
            "the follower never caught up at first"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = nodes.stop(follower);
    assert!(status.success(), "the follower stopped with {status}");

    let (segment, size, cut) = truncate_newest_segment(&nodes.dir(follower));
    nodes.spawn(follower);
    nodes.publish(TOPIC, &events(120, 140), 10);

    let deadline = Instant::now() + CATCH_UP_MAX;
    let mut target = None;
    loop {
        for id in [1, 2, 3] {
            if let Some(status) = nodes.exited(id) {
                panic!("node {id} stopped with {status}:\n{}", nodes.log(id));
            }
        }
        target = target.or_else(|| applied(&nodes, leader));
        let at = applied(&nodes, follower);
        if target.is_some() && at >= target {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the follower ({segment} cut from {size} to {cut} bytes) is at {at:?} after \
             {CATCH_UP_MAX:?}, the leader at {target:?}; its log:\n{}",
            nodes.log(follower)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        nodes.log(follower).contains("cut a torn tail"),
        "the cut lost no frame: {}",
        nodes.log(follower)
    );
}

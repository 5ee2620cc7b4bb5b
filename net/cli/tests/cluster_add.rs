//! `sluice cluster add` makes a voter only of a node that answers as the
//! id given, with the cluster's secret, and has caught up: id 0, a
//! member's id or address, an address where nothing listens, a node with
//! another secret, and a learner that does not catch up in time are all
//! refused (exit code non-zero) and leave the membership as it was. The
//! operator's finding: each of those was reported "a voting member", and
//! with one such phantom in a 4-voter cluster, stopping one real node
//! stopped every write.

mod common;

use std::process::Output;
use std::time::Duration;

use common::{Nodes, free_address, text};

const SECRET: &str = "correct horse battery staple, and more bytes";
const OTHER_SECRET: &str = "a different secret of enough bytes for a node";

fn add(nodes: &Nodes, id: u64, address: &str, extra: &[&str]) -> Output {
    let cluster = nodes.cluster_of(&[1, 2, 3]);
    let id = id.to_string();
    let mut args = vec![
        "cluster",
        "add",
        "--id",
        &id,
        "--address",
        address,
        "--cluster",
        &cluster,
    ];
    args.extend_from_slice(extra);
    nodes.sluice(&args, None)
}

/// The members (id, voter) as node 1 sees them.
fn members(nodes: &Nodes) -> Vec<(u64, bool)> {
    let status = nodes.status();
    let node = status.values().find(|node| node["role"] == "leader");
    let node = node.unwrap_or_else(|| panic!("no leader: {status:?}"));
    node["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|member| {
            let member = member.as_str().expect("ID=ADDRESS");
            let (id, rest) = member.split_once('=').expect("ID=ADDRESS");
            (id.parse().expect("id"), !rest.ends_with("(learner)"))
        })
        .collect()
}

fn refused(output: &Output, what: &str) {
    let stderr = text(&output.stderr);
    assert!(
        !output.status.success(),
        "exit {}; stdout {}; stderr {stderr}",
        output.status,
        text(&output.stdout)
    );
    assert!(stderr.contains(what), "expected {what:?} in: {stderr}");
    assert!(
        !text(&output.stdout).contains("voting member"),
        "{}",
        text(&output.stdout)
    );
}

#[test]
fn only_a_node_that_answers_and_catches_up_becomes_a_voter() {
    let mut nodes = Nodes::start_with_secret(&[1, 2, 3], Some(SECRET));
    nodes.init();
    nodes.create_topic("t", 1);
    // A log longer than a learner can catch up with in no time: 300
    // entries and 20 MB, so that replicating it takes far longer than
    // committing the learner's membership entry, even on a loaded machine.
    let payload = "x".repeat(64 * 1024);
    let lines: String = (0..300).map(|i| format!("k\tv{i}{payload}\n")).collect();
    nodes.publish("t", &lines, 1);
    let voters = vec![(1, true), (2, true), (3, true)];
    assert_eq!(members(&nodes), voters);

    refused(
        &add(&nodes, 0, &free_address(), &[]),
        "reserved for clients",
    );
    let address_2 = nodes.addresses[&2].clone();
    refused(&add(&nodes, 2, &address_2, &[]), "already a member");
    let address_1 = nodes.addresses[&1].clone();
    refused(&add(&nodes, 7, &address_1, &[]), "the address of node 1");
    refused(&add(&nodes, 5, &free_address(), &[]), "did not answer");

    // A node with another secret cannot prove this cluster's.
    let other = nodes.root.path().join("other-secret");
    std::fs::write(&other, OTHER_SECRET).unwrap();
    nodes.addresses.insert(6, free_address());
    let child = nodes
        .command_with_secret(6, Some(&other))
        .spawn()
        .expect("spawn node 6");
    nodes.children.insert(6, child);
    std::thread::sleep(Duration::from_millis(500));
    let address_6 = nodes.addresses[&6].clone();
    refused(&add(&nodes, 6, &address_6, &[]), "did not answer");

    // A real node that is given no time to catch up is removed again.
    nodes.addresses.insert(4, free_address());
    nodes.spawn(4);
    std::thread::sleep(Duration::from_millis(500));
    let address_4 = nodes.addresses[&4].clone();
    let hurried = add(&nodes, 4, &address_4, &["--catch-up-timeout", "0"]);
    refused(&hurried, "did not catch up");
    assert!(
        text(&hurried.stderr).contains("removed again"),
        "{}",
        text(&hurried.stderr)
    );
    assert_eq!(members(&nodes), voters);

    // Given time, it catches up and votes.
    let added = add(&nodes, 4, &address_4, &[]);
    assert!(added.status.success(), "{}", text(&added.stderr));
    assert!(
        text(&added.stdout).contains("node 4 caught up and is a voting member"),
        "{}",
        text(&added.stdout)
    );
    let mut expected = voters.clone();
    expected.push((4, true));
    assert_eq!(members(&nodes), expected);

    // Four real voters: one of them stopped, writes go on.
    let leader = nodes.leader();
    let follower = [1, 2, 3, 4].into_iter().find(|id| *id != leader).unwrap();
    nodes.stop(follower);
    let cluster = nodes.cluster_of(&[1, 2, 3, 4]);
    let published = nodes.sluice(
        &["publish", "t", "--cluster", &cluster, "--timeout", "20"],
        Some("k\tafter\n"),
    );
    assert!(published.status.success(), "{}", text(&published.stderr));
    assert_eq!(text(&published.stdout).trim(), "1 of 1 events acknowledged");
}

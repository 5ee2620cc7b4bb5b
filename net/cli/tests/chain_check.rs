//! Tamper evidence across nodes: three nodes sign checkpoints
//! (`--signing-key`) and compare their chain hash at the latest checkpoint
//! with each other's. Node 3's log is then changed on disk while it is
//! stopped, carefully: a record's timestamp altered and every later frame
//! re-chained and re-checksummed, so that node 3 opens and runs as usual
//! and its own log still verifies alone. Its peers and node 3 itself see
//! the divergence: `sluice_chain_divergent` and an error in the log.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{Nodes, free_address, lines, sluice_ok, text};
use sluice_core::log::frame::{self, HASH_AT, LINK_AT};
use sluice_core::log::{all_zero, segment};
use sluice_model::constants::FRAME_HEADER_SIZE;

const TOPIC: &str = "ledger";

/// The metrics page of the node serving HTTP at `http`.
fn metrics(http: &str) -> String {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    match agent.get(format!("http://{http}/metrics")).call() {
        Ok(mut response) => response.body_mut().read_to_string().unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// The value of the sample `line` starts (name and labels), if present.
fn sample(page: &str, line: &str) -> Option<u64> {
    page.lines()
        .find_map(|l| l.strip_prefix(line)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
}

/// Waits up to `bound` for `check` to hold on node `id`'s metrics.
fn wait_metrics(http: &str, bound: Duration, what: &str, check: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + bound;
    loop {
        let page = metrics(http);
        if check(&page) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}; metrics:\n{page}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Changes the timestamp of the first frame of the log in `dir` and
/// re-chains every frame after it, fixing each link, hash and checksum:
/// a forger's edit that leaves the log consistent with itself.
fn rechain_with_changed_timestamp(dir: &Path) {
    let mut firsts: Vec<(u64, std::path::PathBuf)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap())
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            Some((segment::parse_name(&name)?, entry.path()))
        })
        .collect();
    firsts.sort();
    assert!(!firsts.is_empty(), "no segment in {}", dir.display());
    let mut link = None::<frame::Hash>;
    let mut changed = 0;
    for (_, path) in firsts {
        let mut bytes = std::fs::read(&path).unwrap();
        let mut offset = 0;
        while offset + FRAME_HEADER_SIZE <= bytes.len() && !all_zero(&bytes[offset..]) {
            let header = frame::decode(&bytes[offset..]).expect("an intact frame");
            let size = header.size as usize;
            let frame = &mut bytes[offset..offset + size];
            match link {
                // The first frame: its timestamp changed.
                None => {
                    let timestamp = header.timestamp_ms + 1;
                    frame[40..48].copy_from_slice(&timestamp.to_le_bytes());
                }
                Some(link) => frame[LINK_AT..LINK_AT + 32].copy_from_slice(&link),
            }
            let header = frame::decode_header(frame).unwrap();
            let hash = frame::recompute_hash(&header, frame);
            frame[HASH_AT..HASH_AT + 32].copy_from_slice(&hash);
            let checksum = frame::checksum(frame);
            frame[4..8].copy_from_slice(&checksum.to_le_bytes());
            link = Some(hash);
            changed += 1;
            offset += size;
        }
        std::fs::write(&path, &bytes).unwrap();
    }
    assert!(changed > 3, "only {changed} frames re-chained");
}

#[test]
fn a_node_whose_log_was_changed_on_disk_is_seen_by_its_peers() {
    let mut nodes = Nodes::start(&[]);
    let keys = nodes.root.path().join("keys");
    let keys_dir = keys.to_str().unwrap();
    sluice_ok(
        &["keys", "gen", "--out", keys_dir, "--name", "cluster"],
        None,
    );
    let key = keys.join("cluster.key.pem");
    let mut http = std::collections::BTreeMap::new();
    for id in [1, 2, 3] {
        nodes.addresses.insert(id, free_address());
        http.insert(id, free_address());
    }
    let args = |id: u64| {
        vec![
            "--http-listen".to_owned(),
            http[&id].clone(),
            "--signing-key".to_owned(),
            key.to_str().unwrap().to_owned(),
            "--chain-check-interval-ms".to_owned(),
            "200".to_owned(),
        ]
    };
    let spawn = |nodes: &mut Nodes, id: u64| {
        let child = nodes.command(id).args(args(id)).spawn().unwrap();
        nodes.children.insert(id, child);
    };
    for id in [1, 2, 3] {
        spawn(&mut nodes, id);
    }
    nodes.init();
    nodes.create_topic(TOPIC, 1);
    nodes.publish(TOPIC, &lines(0, 50), 10);

    // Every node compares, and finds its peers agree.
    for id in [1, 2, 3] {
        wait_metrics(
            &http[&id],
            Duration::from_secs(60),
            "no chain check",
            |page| {
                sample(page, "sluice_chain_checks_total").is_some_and(|checks| checks > 0)
                    && sample(page, "sluice_chain_checked_index").is_some_and(|index| index > 0)
            },
        );
        let page = metrics(&http[&id]);
        assert!(!page.contains("sluice_chain_divergent{"), "{page}");
        assert_eq!(sample(&page, "sluice_chain_checkpoint_mismatch"), Some(0));
    }

    // Node 3's log changed while it is stopped; it starts and runs.
    let stopped = nodes.stop(3);
    assert!(stopped.success());
    rechain_with_changed_timestamp(&nodes.dir(3));
    spawn(&mut nodes, 3);
    nodes.publish(TOPIC, &lines(50, 10), 10);

    for (id, peer) in [(1, 3), (2, 3), (3, 1)] {
        let line = format!("sluice_chain_divergent{{peer=\"{peer}\"}}");
        wait_metrics(
            &http[&id],
            Duration::from_secs(60),
            &format!("node {id} sees no divergence of node {peer}"),
            |page| sample(page, &line) == Some(1),
        );
    }
    let page = metrics(&http[&3]);
    assert_eq!(
        sample(&page, "sluice_chain_checkpoint_mismatch"),
        Some(1),
        "{page}"
    );
    assert!(sample(&page, "sluice_chain_divergences_total").is_some_and(|n| n > 0));
    let log = nodes.log(1);
    assert!(
        log.contains("chain divergence") && log.contains("peer 3"),
        "{}",
        text(log.as_bytes())
    );
}

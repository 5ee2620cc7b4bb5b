//! A second `sluice node` on a running node's data directory is refused
//! and exits non-zero with a named error; the first goes on serving. A
//! node killed with SIGKILL leaves no stale lock behind.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{Nodes, free_address, text, wait_exit};

#[test]
fn a_second_node_on_a_data_directory_is_refused() {
    let mut nodes = Nodes::start(&[1]);
    nodes.init();
    nodes.create_topic("t", 1);
    nodes.publish("t", "a\nb\n", 10);

    let dir = nodes.dir(1);
    let mut second = std::process::Command::new(common::SLUICE)
        .args([
            "node",
            "--id",
            "2",
            "--listen",
            &free_address(),
            "--data-dir",
        ])
        .arg(&dir)
        .env("SLUICE_LOG", "warn")
        .env_remove("SLUICE_SECRET_FILE")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn a second node");
    let status = wait_exit(&mut second, Duration::from_secs(20));
    if status.is_none() {
        let _ = second.kill();
    }
    let output = second.wait_with_output().expect("reap");
    let stderr = text(&output.stderr);
    let status = status.unwrap_or_else(|| panic!("the second node kept running: {stderr}"));
    assert!(!status.success(), "the second node exited with {status}");
    let expected = format!(
        "data directory {} is in use by another process (lock file {})",
        dir.display(),
        dir.join("LOCK").display()
    );
    assert!(stderr.contains(&expected), "{stderr}");

    // The first node goes on.
    assert!(nodes.exited(1).is_none(), "{}", nodes.log(1));
    nodes.publish("t", "c\n", 10);

    // Killed, it leaves the directory free: a new node starts on it and
    // serves what the old one wrote.
    let mut first = nodes.children.remove(&1).expect("running");
    first.kill().expect("kill -9");
    first.wait().expect("reap");
    nodes.spawn(1);
    nodes.leader();
    nodes.publish("t", "d\n", 10);
    assert!(nodes.exited(1).is_none(), "{}", nodes.log(1));
}

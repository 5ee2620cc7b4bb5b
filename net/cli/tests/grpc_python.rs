//! The node's gRPC API driven by a client nobody here wrote: Python's
//! grpcio, with stubs grpcio-tools generates from net/grpc/proto at run
//! time (net/grpc/tests/python/publish_check.py). The Python producer
//! publishes through the Publisher, resends a batch, and checks the
//! error codes; this test then reads the topic back with the native
//! `sluice tail` and checks every acknowledged event is there exactly
//! once, at the place it was acknowledged. A second principal, bob, calls
//! with a bearer token made by `sluice token create`, held to an access
//! rule and a quota set with `sluice acl` and `sluice quota`.
//!
//! Python and the packages go into a venv under the target directory,
//! made on first use. If that cannot be done the test fails when `CI`
//! is set, and skips with the reason otherwise.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Node, free_address, sluice_ok, text};

/// The packages, pinned: the stub generator and the runtime it targets.
const PACKAGES: [&str; 2] = ["grpcio==1.85.4", "grpcio-tools==1.85.4"];

/// Events the Python producer publishes.
const EVENTS: usize = 1_000;

/// A Python with grpcio and grpcio-tools, or why there is none.
fn python() -> Result<PathBuf, String> {
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("grpc-python-venv");
    let python = venv.join("bin/python");
    let ready = |python: &Path| {
        Command::new(python)
            .args(["-c", "import grpc, grpc_tools"])
            .output()
            .is_ok_and(|output| output.status.success())
    };
    if ready(&python) {
        return Ok(python);
    }
    let system = std::env::var("SLUICE_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let made = Command::new(&system)
        .args(["-m", "venv"])
        .arg(&venv)
        .output()
        .map_err(|error| format!("cannot run {system} ({error}); install Python 3"))?;
    if !made.status.success() {
        return Err(format!(
            "`{system} -m venv {}` failed: {}",
            venv.display(),
            text(&made.stderr)
        ));
    }
    let installed = Command::new(venv.join("bin/pip"))
        .args(["install", "--quiet", "--disable-pip-version-check"])
        .args(PACKAGES)
        .output()
        .map_err(|error| format!("cannot run pip in {} ({error})", venv.display()))?;
    if !installed.status.success() {
        return Err(format!(
            "pip install {} failed: {}",
            PACKAGES.join(" "),
            text(&installed.stderr)
        ));
    }
    if !ready(&python) {
        return Err(format!(
            "{} cannot import grpc and grpc_tools after installing them",
            python.display()
        ));
    }
    Ok(python)
}

#[test]
fn a_python_grpc_producer_publishes_once_and_resends_deduplicated() {
    let python = match python() {
        Ok(python) => python,
        Err(reason) if std::env::var_os("CI").is_some() => {
            panic!("CI is set, and Python with grpcio cannot be set up: {reason}")
        }
        Err(reason) => {
            eprintln!("SKIPPED: Python with grpcio cannot be set up: {reason}");
            return;
        }
    };
    let grpc = free_address();
    let node = Node::start_single(&["--grpc-listen", &grpc]);
    // bob: a token, one rule (publish on py-orders), one request a second.
    let cluster = ["--cluster", node.address.as_str()];
    let created = sluice_ok(
        &[&["token", "create", "--principal", "bob"][..], &cluster[..]].concat(),
        None,
    );
    let token = created
        .split_whitespace()
        .find(|word| word.starts_with("sluice-token."))
        .unwrap_or_else(|| panic!("no token in {created:?}"))
        .to_owned();
    sluice_ok(
        &[
            &[
                "acl",
                "add",
                "User:bob",
                "topic:py-orders",
                "publish",
                "allow",
            ][..],
            &cluster[..],
        ]
        .concat(),
        None,
    );
    sluice_ok(
        &[
            &["quota", "set", "User:bob", "--requests-per-second", "1"][..],
            &cluster[..],
        ]
        .concat(),
        None,
    );
    let other_grpc = free_address();
    let _other = Node::spawned(&["--grpc-listen", &other_grpc, "--superuser", "User:admin"]);

    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let grpc_crate = manifest.join("../grpc");
    let work = tempfile::tempdir().expect("tempdir");
    let acked_path = work.path().join("acked.json");
    let run = Command::new(&python)
        .arg(grpc_crate.join("tests/python/publish_check.py"))
        .arg(grpc_crate.join("proto"))
        .arg(work.path())
        .arg(&grpc)
        .arg(&other_grpc)
        .arg(EVENTS.to_string())
        .arg(&acked_path)
        .arg(&token)
        .output()
        .expect("python runs");
    assert!(
        run.status.success(),
        "the Python client failed:\n{}\n{}\nnode log:\n{}",
        text(&run.stdout),
        text(&run.stderr),
        node.log()
    );
    eprintln!("{}", text(&run.stdout));

    let acked: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(&acked_path).expect("the acknowledgements"))
            .expect("JSON");
    // The producer's events and the one bob published with his token.
    assert_eq!(acked.len(), EVENTS + 1);
    let acked: BTreeMap<String, (u64, u64)> = acked
        .iter()
        .map(|ack| {
            (
                ack["payload"].as_str().expect("payload").to_owned(),
                (
                    ack["partition"].as_u64().expect("partition"),
                    ack["offset"].as_u64().expect("offset"),
                ),
            )
        })
        .collect();
    assert_eq!(
        acked.len(),
        EVENTS + 1,
        "every acknowledged payload is distinct"
    );

    let out = sluice_ok(
        &[
            "tail",
            "py-orders",
            "--cluster",
            &node.address,
            "--from-beginning",
            "--idle-exit",
            "1",
            "--json",
        ],
        None,
    );
    let mut seen: BTreeMap<String, Vec<(u64, u64)>> = BTreeMap::new();
    for line in out.lines() {
        let event: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
        seen.entry(event["payload"].as_str().expect("payload").to_owned())
            .or_default()
            .push((
                event["partition"].as_u64().expect("partition"),
                event["offset"].as_u64().expect("offset"),
            ));
    }
    for (payload, place) in &acked {
        assert_eq!(
            seen.get(payload).map(Vec::as_slice),
            Some(&[*place][..]),
            "acknowledged event {payload} at {place:?} is not in the log exactly once there"
        );
    }
    assert_eq!(
        seen.len(),
        acked.len(),
        "the log holds events nobody acknowledged"
    );
}

//! The admin trail: admin entries are counted by the verifier, the
//! erasures they carry are checked like any erasure, a changed byte in
//! one is named at its index, and `export_admin` lists every entry with
//! its principal, time, action and outcome.

// The test edits segment files behind the engine's back.
#![allow(clippy::disallowed_methods)]

use std::sync::Arc;

use serde_json::Value;

use sluice_audit::{KeyPair, Sm2Signatures, VerifyOptions, erasure, export_admin, verify};
use sluice_core::bus::{Bus, BusConfig};
use sluice_model::security::{Principal, Rule, SecurityOp};
use sluice_model::state::{AdminAction, Op, Response, TopicConfig};

/// A principal name found nowhere else in the log, to find its entry's
/// bytes.
const AUDITOR: &str = "auditor-7f3a9c";

async fn admin(bus: &Bus, principal: &str, action: AdminAction) -> Response {
    let op = Op::Admin {
        principal: Principal::user(principal),
        action,
    };
    bus.propose(op).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_entries_are_verified_and_exported_with_their_principal() {
    let dir = tempfile::tempdir().unwrap();
    let config = BusConfig {
        retention_interval: None,
        signatures: Arc::new(Sm2Signatures),
        ..BusConfig::default()
    };
    let bus = Bus::open_with_config(dir.path(), config).await.unwrap();
    let key = KeyPair::generate("dpo@sluice.test").unwrap();
    let rule = Rule::parse("User:alice", "topic:orders", "publish", "allow").unwrap();
    let create = Op::CreateTopic {
        name: "orders".into(),
        partitions: 1,
        config: TopicConfig::default(),
    };
    let erase = Op::Erase(erasure::sign(&key, "alice", "ticket 7", 1));
    let answers = [
        admin(
            &bus,
            "root",
            AdminAction::Security(SecurityOp::AddRule(rule)),
        )
        .await,
        admin(&bus, "root", AdminAction::Apply(Box::new(create))).await,
        admin(&bus, AUDITOR, AdminAction::Apply(Box::new(erase))).await,
        admin(
            &bus,
            "root",
            AdminAction::Record("add node 2 at 10.0.0.2:7000".into()),
        )
        .await,
        admin(
            &bus,
            "root",
            AdminAction::Security(SecurityOp::RevokeToken {
                id: "0000000000000000".into(),
            }),
        )
        .await,
    ];
    assert_eq!(answers[1], Response::TopicCreated);
    assert!(matches!(answers[4], Response::Error(_)), "{answers:?}");
    assert!(bus.state().is_erased("alice"));
    bus.close().await.unwrap();

    let pinned = VerifyOptions {
        trusted_keys: vec![key.public_key()],
    };
    let report = verify(dir.path(), &pinned).unwrap();
    assert_eq!(report.admin_entries, 5);
    assert_eq!(report.erasures, 1);
    assert_eq!(report.signatures, 1);
    // The erasure an admin entry carries is held to the trusted keys.
    let stranger = VerifyOptions {
        trusted_keys: vec![KeyPair::generate("x").unwrap().public_key()],
    };
    let error = verify(dir.path(), &stranger).unwrap_err();
    assert!(
        error.to_string().contains("erasure is signed by key"),
        "{error}"
    );

    let mut out = Vec::new();
    let summary = export_admin(dir.path(), &pinned, &mut out).unwrap();
    assert_eq!(summary.events, 5);
    assert!(summary.directory_verified);
    let lines: Vec<Value> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let principals: Vec<&str> = lines
        .iter()
        .map(|l| l["principal"].as_str().unwrap())
        .collect();
    assert_eq!(
        principals,
        [
            "User:root",
            "User:root",
            &format!("User:{AUDITOR}"),
            "User:root",
            "User:root"
        ]
    );
    let kinds: Vec<&str> = lines.iter().map(|l| l["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["security", "apply", "apply", "record", "security"]);
    assert_eq!(
        lines[0]["action"],
        "add rule User:alice topic:orders publish allow"
    );
    assert_eq!(lines[3]["action"], "add node 2 at 10.0.0.2:7000");
    assert!(lines[..4].iter().all(|l| l["outcome"] == "applied"));
    let refused = lines[4]["outcome"].as_str().unwrap();
    assert!(refused.starts_with("refused: "), "{refused}");
    let mut previous = 0;
    for line in &lines {
        let at_ms = line["at_ms"].as_u64().unwrap();
        assert!(at_ms >= previous && at_ms > 1_600_000_000_000, "{line}");
        assert!(line["time"].as_str().unwrap().ends_with('Z'), "{line}");
        assert_eq!(line["verified"], true);
        previous = at_ms;
    }

    // One changed byte in the auditor's name: the verifier names that
    // entry, and the export no longer vouches for it.
    let auditor_index = lines[2]["entry_index"].as_u64().unwrap();
    let mut changed = false;
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "seg") {
            let mut bytes = std::fs::read(&path).unwrap();
            if let Some(at) = bytes
                .windows(AUDITOR.len())
                .position(|w| w == AUDITOR.as_bytes())
            {
                bytes[at] ^= 0x01;
                std::fs::write(&path, bytes).unwrap();
                changed = true;
            }
        }
    }
    assert!(changed, "the auditor's name is in a segment");
    let error = verify(dir.path(), &pinned).unwrap_err();
    let sluice_audit::VerifyError::Tampered { findings, .. } = error else {
        panic!("{error}");
    };
    assert_eq!(findings[0].index, Some(auditor_index), "{}", findings[0]);
    let mut out = Vec::new();
    let summary = export_admin(dir.path(), &pinned, &mut out).unwrap();
    assert!(!summary.directory_verified);
    let lines: Vec<Value> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(lines[1]["verified"], true);
    assert!(lines[2..].iter().all(|l| l["verified"] == false));
}

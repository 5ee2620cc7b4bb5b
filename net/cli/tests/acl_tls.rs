//! Access control with real principals: a `sluice node --tls-dir` whose
//! superuser is the default `User:admin`; clients authenticate with
//! certificates (`User:alice`, `User:admin`) or a token (`User:bob`).
//! Tenants isolate alice from bob in listings, publishes and creates; a
//! quota slows alice's publishes to its rate with every event stored once;
//! a revoked token no longer authenticates; every change is in the admin
//! trail as `User:admin`.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{Node, sluice, sluice_ok, text};

/// `sluice ARGS --cluster ADDR` plus the credentials of `who`.
fn as_who(node: &Node, who: &[&str], args: &[&str]) -> Vec<String> {
    let mut all: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    all.extend(["--cluster".to_owned(), node.address.clone()]);
    all.extend(who.iter().map(|a| (*a).to_owned()));
    all
}

fn ok(node: &Node, who: &[&str], args: &[&str]) -> String {
    let args = as_who(node, who, args);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    sluice_ok(&args, None)
}

fn refused(node: &Node, who: &[&str], args: &[&str]) -> String {
    let args = as_who(node, who, args);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = sluice(&args, None);
    assert!(!output.status.success(), "{args:?} succeeded");
    text(&output.stderr)
}

fn dir(certs: &Path, name: &str) -> String {
    certs.join(name).to_str().unwrap().to_owned()
}

#[test]
fn principals_from_certificates_and_tokens_are_held_to_rules_tenants_and_quotas() {
    let certs = tempfile::tempdir().unwrap();
    let certs = certs.path();
    sluice_ok(
        &[
            "certs",
            "--dir",
            certs.to_str().unwrap(),
            "--nodes",
            "1",
            "--clients",
            "admin,alice",
        ],
        None,
    );
    let mut node = Node::spawned(&["--tls-dir", certs.to_str().unwrap()]);
    let admin_dir = dir(certs, "admin");
    let alice_dir = dir(certs, "alice");
    let admin = ["--tls-dir", admin_dir.as_str()];
    let alice = ["--tls-dir", alice_dir.as_str()];

    let members = format!("1={}", node.address);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let init = sluice(
            &[
                "cluster",
                "init",
                "--nodes",
                &members,
                "--tls-dir",
                &admin_dir,
            ],
            None,
        );
        if init.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "cluster init kept failing: {}\n{}",
            text(&init.stderr),
            node.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // Before any rule, alice may do nothing but list (nothing).
    let denied = refused(&node, &alice, &["topics", "create", "acme.orders"]);
    assert!(
        denied.contains("User:alice may not create on topic \"acme.orders\": no rule allows it"),
        "{denied}"
    );
    for topic in ["acme.orders", "globex.orders"] {
        ok(&node, &admin, &["topics", "create", topic]);
    }
    assert_eq!(ok(&node, &alice, &["topics", "list"]).trim(), "");
    ok(
        &node,
        &admin,
        &["tenant", "set", "acme", "--prefix", "acme."],
    );
    ok(
        &node,
        &admin,
        &["tenant", "set", "globex", "--prefix", "globex."],
    );
    ok(&node, &admin, &["tenant", "assign", "User:alice", "acme"]);
    ok(&node, &admin, &["tenant", "assign", "User:bob", "globex"]);
    ok(
        &node,
        &admin,
        &["acl", "add", "*", "topic:*", "all", "allow"],
    );
    ok(
        &node,
        &admin,
        &["acl", "add", "*", "group:*", "all", "allow"],
    );
    let token = ok(&node, &admin, &["token", "create", "--principal", "bob"]);
    let token = token.trim().to_owned();
    let ca_only = certs.to_str().unwrap().to_owned();
    let bob = ["--tls-dir", ca_only.as_str(), "--token", token.as_str()];

    // Each tenant lists, publishes and reads only its own.
    assert_eq!(
        ok(&node, &alice, &["topics", "list"]).trim(),
        "acme.orders\t1"
    );
    assert_eq!(
        ok(&node, &bob, &["topics", "list"]).trim(),
        "globex.orders\t1"
    );
    let publish = |who: &[&str], topic: &str, input: &str| {
        let args = as_who(&node, who, &["publish", topic, "--batch", "1"]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        sluice(&args, Some(input.as_bytes()))
    };
    assert!(
        publish(&bob, "globex.orders", "k\tbob-1\n")
            .status
            .success()
    );
    let crossed = publish(&alice, "globex.orders", "k\tx\n");
    assert!(!crossed.status.success());
    assert!(
        text(&crossed.stderr).contains("unknown topic \"globex.orders\""),
        "{}",
        text(&crossed.stderr)
    );
    // Creating another tenant's topic, existing or not: the same refusal.
    let existing = refused(&node, &alice, &["topics", "create", "globex.orders"]);
    let missing = refused(&node, &alice, &["topics", "create", "globex.nothing"]);
    assert!(existing.contains("outside tenant \"acme\""), "{existing}");
    assert_eq!(
        existing.replace("globex.orders", "NAME"),
        missing.replace("globex.nothing", "NAME")
    );
    let admin_only = refused(&node, &alice, &["acl", "list"]);
    assert!(
        admin_only.contains("User:alice may not admin on the cluster"),
        "{admin_only}"
    );

    // A quota of 5 requests a second: 20 one-event publishes take at
    // least 3 s after the first second's burst, and all arrive once.
    ok(
        &node,
        &admin,
        &["quota", "set", "alice", "--requests-per-second", "5"],
    );
    let input: String = (0..20).map(|n| format!("k{n}\talice-{n}\n")).collect();
    let started = Instant::now();
    let published = publish(&alice, "acme.orders", &input);
    let elapsed = started.elapsed();
    assert!(published.status.success(), "{}", text(&published.stderr));
    // The producer id and the metadata are requests too: 22 in all.
    assert!(
        elapsed >= Duration::from_millis(2_900),
        "22 requests at 5/s after a burst of 5 took only {elapsed:?}"
    );
    println!("alice published 20 events under a 5 requests/s quota in {elapsed:?}");
    ok(&node, &admin, &["quota", "remove", "alice"]);
    let tail = as_who(
        &node,
        &alice,
        &[
            "tail",
            "acme.orders",
            "--from-beginning",
            "--idle-exit",
            "1",
            "--json",
        ],
    );
    let tail: Vec<&str> = tail.iter().map(String::as_str).collect();
    let payloads: Vec<String> = sluice_ok(&tail, None)
        .lines()
        .map(|line| {
            let event: serde_json::Value = serde_json::from_str(line).unwrap();
            event["payload"].as_str().unwrap().to_owned()
        })
        .collect();
    let expected: Vec<String> = (0..20).map(|n| format!("alice-{n}")).collect();
    assert_eq!(payloads, expected);

    // A revoked token no longer gets in.
    let id = token.split('.').nth(1).unwrap().to_owned();
    ok(&node, &admin, &["token", "revoke", &id]);
    let shut_out = refused(&node, &bob, &["topics", "list"]);
    assert!(!shut_out.is_empty());

    // The admin trail names admin for every change.
    node.kill();
    let node_dir = node.dir();
    let exported = sluice_ok(
        &[
            "audit",
            "export",
            "--admin",
            "--dir",
            node_dir.to_str().unwrap(),
        ],
        None,
    );
    let lines: Vec<serde_json::Value> = exported
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    // init, 2 topics, 2 tenants, 2 assignments, 2 rules, token, quota,
    // quota removed, revoke.
    assert_eq!(lines.len(), 13, "{exported}");
    for line in &lines {
        assert_eq!(line["principal"], "User:admin", "{line}");
        assert_eq!(line["outcome"], "applied", "{line}");
    }
}

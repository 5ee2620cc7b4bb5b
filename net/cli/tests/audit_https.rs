//! The audit API over HTTPS: a node started with `--tls-dir` serves its
//! HTTP listener with TLS only, and a client certificate names the
//! caller when no token does (the superuser `admin` passes, `auditor`
//! without a rule and a caller without a certificate are refused by
//! name). Plain HTTP gets nothing from it.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{Node, free_address, sluice, sluice_ok, text};

fn export(http: &str, tls_dir: Option<&Path>) -> std::process::Output {
    let mut args = vec![
        "audit",
        "export",
        "--cluster",
        http,
        "--subject",
        "alice",
        "--timeout",
        "10",
    ];
    if let Some(dir) = tls_dir {
        args.extend(["--tls-dir", dir.to_str().unwrap()]);
    }
    sluice(&args, None)
}

#[test]
fn the_http_listener_is_https_and_knows_callers_by_certificate() {
    let root = tempfile::tempdir().unwrap();
    let tls = root.path().join("tls");
    let tls_arg = tls.to_str().unwrap();
    sluice_ok(
        &[
            "certs",
            "--dir",
            tls_arg,
            "--nodes",
            "1",
            "--clients",
            "admin,auditor",
        ],
        None,
    );
    let keys = root.path().join("keys");
    sluice_ok(
        &[
            "keys",
            "gen",
            "--out",
            keys.to_str().unwrap(),
            "--name",
            "node",
        ],
        None,
    );
    let http = free_address();
    let key = keys.join("node.key.pem");
    let node = Node::spawned(&[
        "--tls-dir",
        tls_arg,
        "--http-listen",
        &http,
        "--signing-key",
        key.to_str().unwrap(),
    ]);
    // The node may not listen yet: try until it answers.
    let members = format!("1={}", node.address);
    let init = ["cluster", "init", "--nodes", &members, "--tls-dir", tls_arg];
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = sluice(&init, None);
        if out.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{}\n{}",
            text(&out.stderr),
            node.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // The default superuser of a TLS node is the `admin` certificate.
    let exported = export(&http, Some(&tls));
    assert!(exported.status.success(), "{}", text(&exported.stderr));
    let summary = text(&exported.stdout);
    assert!(summary.contains("\"summary\""), "{summary}");

    // Plain HTTP to the same port gets no answer it can use.
    let plain = export(&http, None);
    assert!(!plain.status.success(), "plain HTTP must fail");

    // Another certificate is that principal, refused without a rule.
    let auditor = export(&http, Some(&tls.join("auditor")));
    assert!(!auditor.status.success());
    let refusal = text(&auditor.stderr);
    assert!(
        refusal.contains("403") && refusal.contains("User:auditor"),
        "{refusal}"
    );

    // No certificate and no token: Anonymous, refused by name.
    let anonymous = root.path().join("anonymous");
    std::fs::create_dir(&anonymous).unwrap();
    std::fs::copy(tls.join("ca.pem"), anonymous.join("ca.pem")).unwrap();
    let nobody = export(&http, Some(&anonymous));
    assert!(!nobody.status.success());
    let refusal = text(&nobody.stderr);
    assert!(
        refusal.contains("403") && refusal.contains("Anonymous"),
        "{refusal}"
    );
}

#[test]
fn a_plaintext_http_listener_beyond_loopback_is_refused_without_insecure() {
    let root = tempfile::tempdir().unwrap();
    let listen = free_address();
    let port = free_address().rsplit(':').next().unwrap().to_owned();
    let http = format!("0.0.0.0:{port}");
    let dir = root.path().join("node-1");
    let args = [
        "node",
        "--id",
        "1",
        "--listen",
        &listen,
        "--data-dir",
        dir.to_str().unwrap(),
        "--http-listen",
        &http,
    ];
    let refused = sluice(&args, None);
    assert!(!refused.status.success());
    let stderr = text(&refused.stderr);
    assert!(
        stderr.contains(&format!("refusing to listen on {http} without TLS")),
        "{stderr}"
    );
}

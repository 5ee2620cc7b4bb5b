//! The security commands against a real `sluice node`: rules, tokens,
//! tenants and quotas set and listed as the Anonymous superuser of a
//! plaintext node; the node restarted with another superuser then holds
//! Anonymous to the rules (refusals name the principal, the operation and
//! the resource; metadata lists only what it may see); `audit export
//! --admin` lists every change with its principal and `verify` counts
//! them.

mod common;

use common::{Node, sluice, sluice_ok, text};

#[test]
fn security_commands_change_what_a_principal_may_do_and_leave_an_admin_trail() {
    let mut node = Node::start_initialised();
    let cluster = node.address.clone();
    let at = |args: &[&str]| -> Vec<String> {
        let mut all: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        all.extend(["--cluster".to_owned(), cluster.clone()]);
        all
    };
    let ok = |args: &[&str]| {
        let args = at(args);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        sluice_ok(&args, None)
    };
    let run = |args: &[&str]| {
        let args = at(args);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        sluice(&args, None)
    };

    node.create_topic("orders", 1);
    node.create_topic("secret", 1);
    ok(&[
        "acl",
        "add",
        "Anonymous",
        "topic:orders",
        "publish",
        "allow",
    ]);
    ok(&[
        "acl",
        "add",
        "Anonymous",
        "topic:orders",
        "consume",
        "allow",
    ]);
    ok(&["acl", "add", "*", "topic:secret", "all", "deny"]);
    let rules = ok(&["acl", "list"]);
    assert_eq!(
        rules.lines().collect::<Vec<_>>(),
        // In the rules' order: everyone's first, then by principal.
        [
            "* topic:secret all deny",
            "Anonymous topic:orders publish allow",
            "Anonymous topic:orders consume allow",
        ],
        "{rules}"
    );

    ok(&["acl", "add", "User:bob", "group:x*", "consume", "allow"]);
    assert!(
        ok(&["acl", "list", "--principal", "User:bob"]).contains("User:bob group:x* consume allow")
    );
    ok(&["acl", "remove", "User:bob", "group:x*", "consume", "allow"]);
    assert_eq!(ok(&["acl", "list"]).lines().count(), 3);

    let token = ok(&["token", "create", "--principal", "svc"]);
    let token = token.trim();
    assert!(token.starts_with("sluice-token."), "{token}");
    let id = token.split('.').nth(1).unwrap();
    let listed = ok(&["token", "list"]);
    assert!(listed.contains(&format!("{id}\tUser:svc\t")), "{listed}");
    assert!(listed.trim_end().ends_with("active"), "{listed}");
    assert!(!listed.contains(token.split('.').nth(2).unwrap()));
    ok(&["token", "revoke", id]);
    assert!(ok(&["token", "list"]).trim_end().ends_with("revoked"));

    ok(&["tenant", "set", "acme", "--prefix", "acme."]);
    ok(&["tenant", "assign", "User:svc", "acme"]);
    assert_eq!(ok(&["tenant", "list"]).trim(), "acme\tacme.\tUser:svc");
    let overlapping = run(&["tenant", "set", "acme-eu", "--prefix", "acme.eu."]);
    assert!(!overlapping.status.success());
    assert!(
        text(&overlapping.stderr).contains("overlaps"),
        "{}",
        text(&overlapping.stderr)
    );

    ok(&["quota", "set", "svc", "--requests-per-second", "100"]);
    assert_eq!(
        ok(&["quota", "list"]).trim(),
        "User:svc\tunlimited bytes/s, 100 requests/s"
    );
    let zero = run(&["quota", "set", "svc", "--bytes-per-second", "0"]);
    assert!(!zero.status.success());
    ok(&["quota", "remove", "svc"]);
    assert_eq!(ok(&["quota", "list"]).trim(), "");

    // Restarted with another superuser, Anonymous is held to the rules.
    node.kill();
    node.spawn(&["--superuser", "User:admin"]);
    common::sluice_ok(
        &["publish", "orders", "--cluster", &node.address],
        Some("k1\tv1\n"),
    );
    assert_eq!(common::tail_payloads(&node.address, "orders"), ["v1"]);
    let listed = ok(&["topics", "list"]);
    assert_eq!(listed.trim(), "orders\t1", "only what Anonymous may see");
    for (args, refusal) in [
        (
            vec!["topics", "create", "payments"],
            "access denied: Anonymous may not create on topic \"payments\": no rule allows it",
        ),
        (
            vec!["acl", "add", "Anonymous", "cluster", "admin", "allow"],
            "access denied: Anonymous may not admin on the cluster: no rule allows it",
        ),
        (
            vec!["acl", "list"],
            "access denied: Anonymous may not admin on the cluster: no rule allows it",
        ),
    ] {
        let refused = run(&args);
        assert!(!refused.status.success(), "{args:?}");
        assert!(
            text(&refused.stderr).contains(refusal),
            "{args:?}: {}",
            text(&refused.stderr)
        );
    }
    let secret = sluice(
        &["publish", "secret", "--cluster", &node.address],
        Some(b"k\tv\n"),
    );
    assert!(!secret.status.success());
    // A topic it may not see is unknown to it, as if it did not exist.
    assert!(
        text(&secret.stderr).contains("unknown topic \"secret\""),
        "{}",
        text(&secret.stderr)
    );
    node.kill();

    // The admin trail: every change, with its principal, in order.
    let dir = node.dir();
    let dir = dir.to_str().unwrap();
    let exported = sluice_ok(&["audit", "export", "--admin", "--dir", dir], None);
    let lines: Vec<serde_json::Value> = exported
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let actions: Vec<&str> = lines
        .iter()
        .map(|line| {
            assert_eq!(line["principal"], "Anonymous", "{line}");
            assert_eq!(line["verified"], true, "{line}");
            line["action"].as_str().unwrap()
        })
        .collect();
    let expected = [
        "initialise the cluster with members 1 at ",
        "create topic orders",
        "create topic secret",
        "add rule Anonymous topic:orders publish allow",
        "add rule Anonymous topic:orders consume allow",
        "add rule * topic:secret all deny",
        "add rule User:bob group:x* consume allow",
        "remove rule User:bob group:x* consume allow",
        "create token ",
        "revoke token ",
        "set tenant acme",
        "put User:svc in tenant acme",
        "set tenant acme-eu",
        "set the quota of User:svc",
        "set the quota of User:svc",
        "remove the quota of User:svc",
    ];
    assert_eq!(actions.len(), expected.len(), "{actions:#?}");
    for (action, want) in actions.iter().zip(expected) {
        assert!(action.starts_with(want), "{action} vs {want}");
    }
    // The refused changes are in the trail, marked refused.
    for at in [12, 14] {
        let outcome = lines[at]["outcome"].as_str().unwrap();
        assert!(outcome.starts_with("refused: "), "{}", lines[at]);
    }
    let verified = sluice_ok(&["verify", dir], None);
    assert!(
        verified.contains(&format!("admin entries {}", expected.len())),
        "{verified}"
    );
}

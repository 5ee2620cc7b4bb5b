//! The node's audit API over HTTP, in process: who may use it (bearer
//! tokens, superusers, the audit ACLs; 401 and 403 with a JSON body), the
//! online export's signed summary, and an erasure committed through
//! `DELETE /api/subjects/{id}` that later reads see.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use sluice_audit::{KeyPair, keys};
use sluice_client::protocol::{CLIENT_GROUP, ClientRequest, ClientResponse, decode, encode};
use sluice_core::bus::Message;
use sluice_model::security::{Principal, Rule, SecurityOp, Token};
use sluice_model::state::{AdminAction, Op, Response, TopicConfig};
use sluice_model::transport::{Caller, Handler, MessageKind, Request};
use sluice_server::node::{ClusterNode, NodeConfig};

const TOPIC: &str = "accounts";

/// An HTTP answer: status and body.
struct Answer {
    status: u16,
    body: String,
}

impl Answer {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|error| {
            panic!("not JSON ({error}): {}", self.body);
        })
    }
}

/// `method` on `http://address{path}` with an optional bearer token.
async fn call(
    method: &'static str,
    address: SocketAddr,
    path: &str,
    token: Option<&str>,
) -> Answer {
    let url = format!("http://{address}{path}");
    let authorization = token.map(|token| format!("Bearer {token}"));
    tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into();
        let mut request = match method {
            "GET" => agent.get(&url).force_send_body(),
            "DELETE" => agent.delete(&url).force_send_body(),
            other => panic!("no method {other}"),
        };
        if let Some(value) = &authorization {
            request = request.header("Authorization", value);
        }
        let mut response = request.send_empty().expect("the node answers HTTP");
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .with_config()
            .limit(64 * 1024 * 1024)
            .read_to_string()
            .expect("a body");
        Answer { status, body }
    })
    .await
    .expect("the request ran")
}

/// A node alone, with a signing key and HTTP, initialised (by the first
/// superuser), with `TOPIC` created and events of subjects alice and bob
/// published.
async fn node(dir: &std::path::Path, superusers: Vec<Principal>) -> (ClusterNode, Arc<KeyPair>) {
    let admin = superusers[0].clone();
    let key = Arc::new(KeyPair::generate(keys::DISTID_DEFAULT).unwrap());
    let config = NodeConfig {
        http_listen: Some("127.0.0.1:0".parse().unwrap()),
        signing_key: Some(Arc::clone(&key)),
        superusers,
        ..NodeConfig::new(1, "127.0.0.1:0".parse().unwrap(), dir)
    };
    let node = ClusterNode::start(config).await.unwrap();
    let address = node.local_address();
    let members = vec![(1, address.to_string())];
    let done = ask(&node, &admin, &ClientRequest::Initialize { members }).await;
    assert_eq!(done, ClientResponse::Done);
    let create = ClientRequest::Write(Op::CreateTopic {
        name: TOPIC.into(),
        partitions: 2,
        config: TopicConfig::default(),
    });
    let created = ask(&node, &admin, &create).await;
    assert_eq!(created, ClientResponse::Written(Response::TopicCreated));
    let mut producer = node.bus().producer().await.unwrap();
    for (i, subject) in ["alice", "bob", "alice"].into_iter().enumerate() {
        let payload = format!("{{\"owner\":\"{subject}\",\"n\":{i}}}");
        let message = Message::new(TOPIC, Bytes::from(payload)).key(subject.to_owned());
        producer.publish(message).await.unwrap();
    }
    (node, key)
}

/// What `principal` gets for `request` from the node's handler.
async fn ask(node: &ClusterNode, principal: &Principal, request: &ClientRequest) -> ClientResponse {
    let caller = Caller {
        source: 0,
        principal: principal.clone(),
    };
    let request = Request {
        kind: MessageKind::Client as u8,
        group: CLIENT_GROUP,
        body: encode(request),
    };
    let body = node.handler().handle(caller, request).await.unwrap();
    decode(&body, "response").unwrap()
}

/// A token for `user`, created through the admin trail.
async fn token(node: &ClusterNode, user: &str, seed: u8) -> Token {
    let token = Token::new([seed; 8], [seed.wrapping_add(1); 32]);
    let record = token.record(user, [seed; 16], 0).unwrap();
    admin(node, SecurityOp::CreateToken(record)).await;
    token
}

async fn admin(node: &ClusterNode, op: SecurityOp) {
    let op = Op::Admin {
        principal: Principal::Anonymous,
        action: AdminAction::Security(op),
    };
    let answer = node.bus().propose(op).await.unwrap();
    assert_eq!(answer, Response::Ok, "the security change applies");
}

async fn bounded<T>(test: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(120), test)
        .await
        .expect("the test took longer than 120 s")
}

const EXPORT_ALICE: &str = "/api/audit/export?subject=alice";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_api_refuses_whom_the_acls_refuse() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        // Anonymous is no superuser: it passes nothing.
        let (node, _) = node(dir.path(), vec![Principal::user("root")]).await;
        let http = node.http_address().expect("HTTP served");
        let auditor = token(&node, "auditor", 1).await;
        let stranger = token(&node, "stranger", 2).await;
        let rule = Rule::parse("User:auditor", "audit", "audit-export", "allow").unwrap();
        admin(&node, SecurityOp::AddRule(rule)).await;

        // No credentials: Anonymous, refused by the rules.
        let anonymous = call("GET", http, EXPORT_ALICE, None).await;
        assert_eq!(anonymous.status, 403, "{}", anonymous.body);
        let body = anonymous.json();
        assert_eq!(body["principal"], "Anonymous");
        assert_eq!(body["operation"], "audit-export");
        assert_eq!(body["resource"], "the audit trail");

        // Credentials naming nobody: 401.
        let malformed = call("GET", http, EXPORT_ALICE, Some("letmein")).await;
        assert_eq!(malformed.status, 401, "{}", malformed.body);
        assert_eq!(malformed.json()["operation"], "audit-export");
        let unknown = Token::new([9; 8], [9; 32]).expose();
        let unknown = call("GET", http, EXPORT_ALICE, Some(&unknown)).await;
        assert_eq!(unknown.status, 401, "{}", unknown.body);
        let forged = Token::new([1; 8], [7; 32]).expose();
        let forged = call("GET", http, EXPORT_ALICE, Some(&forged)).await;
        assert_eq!(forged.status, 401, "a wrong secret: {}", forged.body);

        // A real principal without a rule: 403 naming it.
        let refused = call("GET", http, EXPORT_ALICE, Some(&stranger.expose())).await;
        assert_eq!(refused.status, 403, "{}", refused.body);
        assert_eq!(refused.json()["principal"], "User:stranger");

        // The auditor may export, not erase.
        let exported = call("GET", http, EXPORT_ALICE, Some(&auditor.expose())).await;
        assert_eq!(exported.status, 200, "{}", exported.body);
        assert_eq!(exported.body.lines().count(), 3, "{}", exported.body);
        let erase = call(
            "DELETE",
            http,
            "/api/subjects/alice",
            Some(&auditor.expose()),
        )
        .await;
        assert_eq!(erase.status, 403, "{}", erase.body);
        assert_eq!(erase.json()["operation"], "erase");
        assert!(!node.bus().state().is_erased("alice"));

        // A revoked token no longer authenticates.
        admin(
            &node,
            SecurityOp::RevokeToken {
                id: auditor.id().to_owned(),
            },
        )
        .await;
        let revoked = call("GET", http, EXPORT_ALICE, Some(&auditor.expose())).await;
        assert_eq!(revoked.status, 401, "{}", revoked.body);
        node.shutdown().await.unwrap();
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_online_export_is_signed_and_an_erasure_is_committed() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let (node, key) = node(dir.path(), vec![Principal::Anonymous]).await;
        let http = node.http_address().expect("HTTP served");

        let exported = call("GET", http, EXPORT_ALICE, None).await;
        assert_eq!(exported.status, 200, "{}", exported.body);
        let lines: Vec<&str> = exported.body.lines().collect();
        assert_eq!(
            lines.len(),
            3,
            "two events and the summary: {}",
            exported.body
        );
        for line in &lines[..2] {
            let event: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(event["subject"], "alice");
            assert_eq!(event["erased"], false);
        }
        let checked = sluice_audit::summary::check_export(exported.body.as_bytes())
            .expect("the summary verifies");
        assert_eq!(checked.public_key, key.public_key());
        assert_eq!(checked.statement.events, 2);
        assert_eq!(checked.statement.node, 1);
        assert!(checked.statement.directory_verified);
        // A line changed after the node signed is caught.
        let changed = exported.body.replacen("\\\"n\\\":0", "\\\"n\\\":5", 1);
        assert_ne!(changed, exported.body);
        assert!(sluice_audit::summary::check_export(changed.as_bytes()).is_err());

        let missing = call("GET", http, "/api/audit/export", None).await;
        assert_eq!(missing.status, 400, "{}", missing.body);

        let erased = call("DELETE", http, "/api/subjects/alice?reason=ticket-7", None).await;
        assert_eq!(erased.status, 200, "{}", erased.body);
        let record = erased.json();
        assert_eq!(record["subject"], "alice");
        assert_eq!(record["reason"], "ticket-7");
        assert_eq!(record["principal"], "Anonymous");
        assert_eq!(record["signer"], keys::fingerprint(&key.public_key()));

        // Later reads mask the subject: the state, a fetch, the export.
        assert!(node.bus().state().is_erased("alice"));
        let (deliveries, _) = node.bus().read_bytes(TOPIC, 0, 0, 100, 1 << 20).unwrap();
        let (more, _) = node.bus().read_bytes(TOPIC, 1, 0, 100, 1 << 20).unwrap();
        let alice: Vec<_> = deliveries
            .iter()
            .chain(&more)
            .filter(|delivery| delivery.key.as_ref() == b"alice")
            .collect();
        assert_eq!(alice.len(), 2);
        for delivery in alice {
            assert!(
                !String::from_utf8_lossy(&delivery.payload).contains("owner"),
                "an erased payload was read"
            );
        }
        let after = call("GET", http, EXPORT_ALICE, None).await;
        assert_eq!(after.status, 200, "{}", after.body);
        let first: serde_json::Value =
            serde_json::from_str(after.body.lines().next().unwrap()).unwrap();
        assert_eq!(first["erased"], true, "{first}");
        assert!(first["payload"].is_null());
        let steps = first["history"].as_array().unwrap();
        let erasure = steps.iter().find(|step| step["state"] == "erased");
        assert_eq!(erasure.expect("an erased step")["reason"], "ticket-7");
        sluice_audit::summary::check_export(after.body.as_bytes()).unwrap();
        node.shutdown().await.unwrap();

        // The erasure is in the log, signed: the directory still verifies.
        let report = sluice_audit::verify(dir.path(), &Default::default()).unwrap();
        assert_eq!(report.erasures, 1);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_served_in_the_prometheus_text_format() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let (node, _) = node(dir.path(), vec![Principal::Anonymous]).await;
        let http = node.http_address().expect("HTTP served");
        let page = call("GET", http, "/metrics", None).await;
        assert_eq!(page.status, 200);
        for line in [
            "sluice_raft_leader{node=\"1\"} 1",
            "sluice_partition_next_offset{topic=\"accounts\",partition=\"0\"}",
            "# TYPE sluice_server_connections_refused_total counter",
            "sluice_server_connections_open ",
            "sluice_chain_checks_total ",
        ] {
            assert!(page.body.contains(line), "no {line:?} in {}", page.body);
        }
        let missing = call("GET", http, "/other", None).await;
        assert_eq!(missing.status, 404);
        node.shutdown().await.unwrap();
    })
    .await
}

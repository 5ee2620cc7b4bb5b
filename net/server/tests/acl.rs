//! Authorization at the client protocol's entry point, against nodes in
//! this process. Requests are handed to the node's handler with a chosen
//! principal (as an authenticated connection would name it): every
//! request without its rule is refused by name and changes nothing; deny
//! wins; a tenant cannot tell another tenant's names from names that do
//! not exist; a quota slows a publish loop to its rate through the real
//! client, which loses and duplicates nothing; every admin change is in
//! the admin trail with its principal.

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use openraft::async_runtime::WatchReceiver;
use tokio::net::TcpListener;

use sluice_audit::{KeyPair, VerifyOptions, erasure, export_admin, verify};
use sluice_client::client::{Client, ClientConfig};
use sluice_client::protocol::{
    CLIENT_GROUP, ClientRequest, ClientResponse, PublishOutcome, SecuritySection, decode, encode,
};
use sluice_client::tcp::{ServerConfig, TcpServer};
use sluice_model::event::{Event, EventBatch, Headers, ProducerStamp};
use sluice_model::names::REPLAY_GROUP;
use sluice_model::security::{Principal, Quota, Rule, SecurityOp, Tenant};
use sluice_model::state::{OffsetCommit, Op, Response, TopicConfig};
use sluice_model::transport::{Caller, Handler, HandlerError, MessageKind, NodeId, Request};
use sluice_server::node::{ClusterNode, NodeConfig, NodeHandler};

async fn bounded<T>(test: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(120), test)
        .await
        .expect("the test took longer than 120 s")
}

fn root() -> Principal {
    Principal::user("root")
}

fn alice() -> Principal {
    Principal::user("alice")
}

/// Node `id` with `root` as its only superuser: `Anonymous` is not one,
/// so every request is checked.
async fn start(dir: &tempfile::TempDir, id: NodeId) -> ClusterNode {
    let mut config = NodeConfig::new(
        id,
        "127.0.0.1:0".parse().unwrap(),
        dir.path().join(format!("n{id}")),
    );
    config.superusers = vec![root()];
    ClusterNode::start(config).await.expect("node starts")
}

/// One node, initialised by root.
async fn one_node(dir: &tempfile::TempDir) -> ClusterNode {
    let node = start(dir, 1).await;
    let members = vec![(1, node.local_address().to_string())];
    let answer = ask(&node, &root(), &ClientRequest::Initialize { members }).await;
    assert_eq!(answer, ClientResponse::Done);
    node
}

/// What `principal` gets for `request`, from the node's own handler.
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
    let body = node
        .handler()
        .handle(caller, request)
        .await
        .expect("handled");
    decode(&body, "response").expect("a response")
}

/// `request` as root, which must succeed.
async fn write(node: &ClusterNode, op: Op) -> Response {
    match ask(node, &root(), &ClientRequest::Write(op)).await {
        ClientResponse::Written(response) => {
            assert!(!matches!(response, Response::Error(_)), "{response:?}");
            response
        }
        other => panic!("{other:?}"),
    }
}

async fn security(node: &ClusterNode, principal: &Principal, op: SecurityOp) {
    let answer = ask(node, principal, &ClientRequest::Security(op)).await;
    assert_eq!(answer, ClientResponse::Written(Response::Ok));
}

fn rule(principal: &str, resource: &str, operation: &str, effect: &str) -> SecurityOp {
    SecurityOp::AddRule(Rule::parse(principal, resource, operation, effect).unwrap())
}

fn topic(name: &str, partitions: u32) -> Op {
    Op::CreateTopic {
        name: name.into(),
        partitions,
        config: TopicConfig::default(),
    }
}

fn event(topic: &str, producer: u64, sequence: u64, payload: &str) -> Event {
    Event {
        topic: topic.into(),
        partition: 0,
        producer: ProducerStamp {
            id: producer,
            epoch: 0,
            sequence,
        },
        payload: Bytes::from(payload.to_owned()),
        ..Event::default()
    }
}

/// The applied state's bytes and the log's last index: unchanged means
/// nothing was appended or applied.
fn fingerprint(node: &ClusterNode) -> (Vec<u8>, Option<u64>) {
    let last = node.bus().raft().metrics().borrow_watched().last_log_index;
    (node.bus().state().snapshot(), last)
}

async fn producer(node: &ClusterNode) -> u64 {
    match write(node, Op::InitProducer { name: None }).await {
        Response::ProducerInit { id, .. } => id,
        other => panic!("{other:?}"),
    }
}

async fn join(node: &ClusterNode, group: &str, member: &str, topics: &[&str]) -> u64 {
    let op = Op::JoinGroup {
        group: group.into(),
        member: member.into(),
        topics: topics.iter().map(|t| (*t).to_owned()).collect(),
    };
    match write(node, op).await {
        Response::Joined { generation, .. } => generation,
        other => panic!("{other:?}"),
    }
}

/// Every request of the protocol, with the access a principal without
/// rules is refused first (operation, resource), on a node where root
/// made topic `orders` (2 partitions), the dead-letter topic
/// `orders.dlq.g`, and group `g` with member `m1`.
fn requests(
    address: &str,
    producer: u64,
    generation: u64,
    erasure: Op,
) -> Vec<(ClientRequest, &'static str, &'static str)> {
    let batch = EventBatch::encode(&[event("orders", producer, 0, "x")]).unwrap();
    let commit = OffsetCommit {
        group: "g".into(),
        member: "m1".into(),
        generation,
        offsets: vec![("orders".into(), 0, 0)],
    };
    let replay_commit = OffsetCommit {
        group: REPLAY_GROUP.into(),
        member: "r1".into(),
        generation: 1,
        offsets: vec![("orders.dlq.g".into(), 0, 1)],
    };
    let write = ClientRequest::Write;
    vec![
        (
            ClientRequest::Initialize {
                members: vec![(1, address.to_owned())],
            },
            "admin",
            "the cluster",
        ),
        (
            ClientRequest::AddNode {
                id: 2,
                address: "127.0.0.1:9".into(),
                catch_up_ms: 0,
            },
            "admin",
            "the cluster",
        ),
        (ClientRequest::RemoveNode { id: 2 }, "admin", "the cluster"),
        (write(topic("payments", 1)), "create", "topic \"payments\""),
        (
            write(Op::AlterTopic {
                name: "orders".into(),
                retention_ms: Some(None),
                retention_bytes: None,
            }),
            "alter",
            "topic \"orders\"",
        ),
        (write(erasure), "erase", "the audit trail"),
        (
            write(Op::JoinGroup {
                group: "g".into(),
                member: "a1".into(),
                topics: vec!["orders".into()],
            }),
            "consume",
            "group \"g\"",
        ),
        (
            write(Op::LeaveGroup {
                group: "g".into(),
                member: "m1".into(),
            }),
            "consume",
            "group \"g\"",
        ),
        (
            write(Op::Heartbeat {
                group: "g".into(),
                member: "m1".into(),
            }),
            "consume",
            "group \"g\"",
        ),
        (
            write(Op::CommitOffsets(commit.clone())),
            "consume",
            "group \"g\"",
        ),
        (
            write(Op::Transaction {
                events: batch.clone(),
                commit,
            }),
            "publish",
            "topic \"orders\"",
        ),
        (
            ClientRequest::Publish(vec![event("orders", producer, 0, "x")]),
            "publish",
            "topic \"orders\"",
        ),
        (
            ClientRequest::Fetch {
                topic: "orders".into(),
                partition: 0,
                offset: 0,
                max: 10,
                wait_ms: 0,
            },
            "consume",
            "topic \"orders\"",
        ),
        (
            ClientRequest::FetchBounded {
                topic: "orders".into(),
                partition: 0,
                offset: 0,
                max: 10,
                max_bytes: 1000,
                wait_ms: 0,
            },
            "consume",
            "topic \"orders\"",
        ),
        (
            ClientRequest::Group {
                group: "g".into(),
                member: "m1".into(),
            },
            "consume",
            "group \"g\"",
        ),
        (
            ClientRequest::Committed {
                group: "g".into(),
                topic: "orders".into(),
                partition: 0,
            },
            "consume",
            "group \"g\"",
        ),
        (
            ClientRequest::Security(rule("alice", "cluster", "admin", "allow")),
            "admin",
            "the cluster",
        ),
        (
            ClientRequest::SecurityList {
                section: SecuritySection::Rules,
                from: 0,
            },
            "admin",
            "the cluster",
        ),
        (write(Op::Noop), "admin", "the cluster"),
        (
            ClientRequest::ChainHash { index: 1 },
            "audit-export",
            "the audit trail",
        ),
        (
            write(Op::JoinGroup {
                group: REPLAY_GROUP.into(),
                member: "r1".into(),
                topics: vec!["orders.dlq.g".into()],
            }),
            "replay",
            "topic \"orders.dlq.g\"",
        ),
        (
            write(Op::CommitOffsets(replay_commit.clone())),
            "replay",
            "topic \"orders.dlq.g\"",
        ),
        (
            write(Op::Transaction {
                events: EventBatch::encode(&[event("payments", producer, 0, "x")]).unwrap(),
                commit: replay_commit,
            }),
            "publish",
            "topic \"payments\"",
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_without_its_rule_is_refused_by_name_and_changes_nothing() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let node = one_node(&dir).await;
        write(&node, topic("orders", 2)).await;
        write(&node, topic("orders.dlq.g", 1)).await;
        let generation = join(&node, "g", "m1", &["orders"]).await;
        let producer = producer(&node).await;
        let key = KeyPair::generate("dpo@sluice.test").unwrap();
        let erase = Op::Erase(erasure::sign(&key, "alice", "ticket 1", 1));
        let address = node.local_address().to_string();
        let cases = requests(&address, producer, generation, erase);

        for (request, operation, resource) in &cases {
            let before = fingerprint(&node);
            let answer = ask(&node, &alice(), request).await;
            let ClientResponse::Denied(denied) = answer else {
                panic!("{request:?} was answered {answer:?}");
            };
            assert_eq!(denied.principal, "User:alice", "{request:?}");
            assert_eq!(denied.operation, *operation, "{request:?}");
            assert_eq!(denied.resource, *resource, "{request:?}");
            assert_eq!(denied.reason, "no rule allows it");
            assert!(
                denied
                    .to_string()
                    .starts_with(&format!("User:alice may not {operation} on {resource}")),
                "{denied}"
            );
            assert_eq!(fingerprint(&node), before, "{request:?} changed something");
        }

        // Alice sees no topic; root (a superuser) sees both.
        let ClientResponse::Metadata(metadata) =
            ask(&node, &alice(), &ClientRequest::Metadata).await
        else {
            panic!("metadata");
        };
        assert!(metadata.topics.is_empty(), "{:?}", metadata.topics);
        let ClientResponse::Metadata(metadata) =
            ask(&node, &root(), &ClientRequest::Metadata).await
        else {
            panic!("metadata");
        };
        assert_eq!(metadata.topics.len(), 2);

        // A node is served metadata (the probe of `cluster add`) and chain
        // hashes (the chain check), nothing else, whatever the rules.
        security(&node, &root(), rule("*", "topic:*", "all", "allow")).await;
        let node2 = Principal::Node(2);
        assert!(matches!(
            ask(&node, &node2, &ClientRequest::Metadata).await,
            ClientResponse::Metadata(_)
        ));
        assert!(matches!(
            ask(&node, &node2, &ClientRequest::ChainHash { index: 1 }).await,
            ClientResponse::ChainHash(Some(_))
        ));
        let fetch = &cases[12].0;
        let ClientResponse::Denied(denied) = ask(&node, &node2, fetch).await else {
            panic!("a node fetched");
        };
        assert_eq!(denied.principal, "Node:2");
        assert_eq!(denied.resource, "the client protocol");

        // With the rules that allow them, the same requests pass the
        // check (the state may still refuse some: node 2 does not exist).
        for op in [
            rule("alice", "group:*", "all", "allow"),
            rule("alice", "cluster", "admin", "allow"),
            rule("alice", "audit", "all", "allow"),
        ] {
            security(&node, &root(), op).await;
        }
        for (request, ..) in &cases {
            let answer = ask(&node, &alice(), request).await;
            assert!(
                !matches!(answer, ClientResponse::Denied(_)),
                "{request:?}: {answer:?}"
            );
        }
        node.shutdown().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deny_wins_over_allow_and_appends_nothing() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let node = one_node(&dir).await;
        write(&node, topic("orders", 1)).await;
        let producer = producer(&node).await;
        security(
            &node,
            &root(),
            rule("alice", "topic:orders*", "all", "allow"),
        )
        .await;
        security(&node, &root(), rule("*", "topic:orders", "publish", "deny")).await;
        let publish = ClientRequest::Publish(vec![event("orders", producer, 0, "x")]);
        let before = fingerprint(&node);
        let ClientResponse::Denied(denied) = ask(&node, &alice(), &publish).await else {
            panic!("published");
        };
        assert_eq!(denied.reason, "a deny rule matches");
        assert_eq!(fingerprint(&node), before);
        let fetch = ClientRequest::Fetch {
            topic: "orders".into(),
            partition: 0,
            offset: 0,
            max: 10,
            wait_ms: 0,
        };
        assert!(matches!(
            ask(&node, &alice(), &fetch).await,
            ClientResponse::Fetched { .. }
        ));
        node.shutdown().await.unwrap();
    })
    .await;
}

/// The answers to `existing` and `missing`, with each request's own name
/// replaced by `NAME`: a tenant must not tell them apart.
async fn indistinguishable(
    node: &ClusterNode,
    principal: &Principal,
    existing: (&ClientRequest, &[&str]),
    missing: (&ClientRequest, &[&str]),
) {
    let normalise = |answer: ClientResponse, names: &[&str]| {
        let mut text = format!("{answer:?}");
        for name in names {
            text = text.replace(name, "NAME");
        }
        text
    };
    let before = fingerprint(node);
    let seen = normalise(ask(node, principal, existing.0).await, existing.1);
    let unseen = normalise(ask(node, principal, missing.0).await, missing.1);
    assert_eq!(seen, unseen);
    assert!(seen.contains("Denied"), "{seen}");
    assert_eq!(fingerprint(node), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_cannot_tell_another_tenants_names_from_missing_ones() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let node = one_node(&dir).await;
        for (name, prefix, member) in [("acme", "acme.", "alice"), ("globex", "globex.", "bob")] {
            let tenant = Tenant {
                name: name.into(),
                prefix: prefix.into(),
            };
            security(&node, &root(), SecurityOp::SetTenant(tenant)).await;
            let assign = SecurityOp::AssignTenant {
                principal: member.into(),
                tenant: Some(name.into()),
            };
            security(&node, &root(), assign).await;
        }
        security(&node, &root(), rule("*", "topic:*", "all", "allow")).await;
        security(&node, &root(), rule("*", "group:*", "all", "allow")).await;
        write(&node, topic("acme.orders", 1)).await;
        write(&node, topic("globex.orders", 1)).await;
        let bob = Principal::user("bob");
        let join = ClientRequest::Write(Op::JoinGroup {
            group: "globex.g".into(),
            member: "b1".into(),
            topics: vec!["globex.orders".into()],
        });
        let ClientResponse::Written(Response::Joined { generation, .. }) =
            ask(&node, &bob, &join).await
        else {
            panic!("bob joins his own group");
        };

        // Metadata lists only the tenant's own topics.
        for (who, expected) in [(alice(), "acme.orders"), (bob.clone(), "globex.orders")] {
            let ClientResponse::Metadata(metadata) =
                ask(&node, &who, &ClientRequest::Metadata).await
            else {
                panic!("metadata");
            };
            assert_eq!(metadata.topics, vec![(expected.to_owned(), 1)]);
        }
        // Alice reaches her own topic.
        let fetch = |topic: &str| ClientRequest::Fetch {
            topic: topic.into(),
            partition: 0,
            offset: 0,
            max: 10,
            wait_ms: 0,
        };
        assert!(matches!(
            ask(&node, &alice(), &fetch("acme.orders")).await,
            ClientResponse::Fetched { .. }
        ));

        // Bob's names and names nobody has look the same to her.
        let existing = ["globex.orders", "globex.g", "b1"];
        let missing = ["globex.nothing", "globex.none", "b9"];
        let pairs: Vec<(ClientRequest, ClientRequest)> = vec![
            (fetch("globex.orders"), fetch("globex.nothing")),
            (
                ClientRequest::Group {
                    group: "globex.g".into(),
                    member: "b1".into(),
                },
                ClientRequest::Group {
                    group: "globex.none".into(),
                    member: "b9".into(),
                },
            ),
            (
                ClientRequest::Committed {
                    group: "globex.g".into(),
                    topic: "globex.orders".into(),
                    partition: 0,
                },
                ClientRequest::Committed {
                    group: "globex.none".into(),
                    topic: "globex.nothing".into(),
                    partition: 0,
                },
            ),
            (
                ClientRequest::Write(Op::JoinGroup {
                    group: "globex.g".into(),
                    member: "a1".into(),
                    topics: vec!["globex.orders".into()],
                }),
                ClientRequest::Write(Op::JoinGroup {
                    group: "globex.none".into(),
                    member: "a1".into(),
                    topics: vec!["globex.nothing".into()],
                }),
            ),
            (
                ClientRequest::Write(Op::Heartbeat {
                    group: "globex.g".into(),
                    member: "b1".into(),
                }),
                ClientRequest::Write(Op::Heartbeat {
                    group: "globex.none".into(),
                    member: "b9".into(),
                }),
            ),
            (
                ClientRequest::Write(Op::CommitOffsets(OffsetCommit {
                    group: "globex.g".into(),
                    member: "b1".into(),
                    generation,
                    offsets: vec![("globex.orders".into(), 0, 0)],
                })),
                ClientRequest::Write(Op::CommitOffsets(OffsetCommit {
                    group: "globex.none".into(),
                    member: "b9".into(),
                    generation,
                    offsets: vec![("globex.nothing".into(), 0, 0)],
                })),
            ),
            (
                ClientRequest::Write(topic("globex.orders", 1)),
                ClientRequest::Write(topic("globex.nothing", 1)),
            ),
            (
                ClientRequest::Write(Op::InitProducer {
                    name: Some("globex.orders".into()),
                }),
                ClientRequest::Write(Op::InitProducer {
                    name: Some("globex.nothing".into()),
                }),
            ),
        ];
        for (seen, unseen) in &pairs {
            indistinguishable(&node, &alice(), (seen, &existing), (unseen, &missing)).await;
        }
        node.shutdown().await.unwrap();
    })
    .await;
}

/// Serves a node's handler with every connection taken as `principal`,
/// as an authenticated listener would name it.
#[derive(Clone)]
struct As {
    handler: NodeHandler,
    principal: Principal,
}

impl Handler for As {
    fn handle(
        &self,
        caller: Caller,
        request: Request,
    ) -> impl Future<Output = Result<Bytes, HandlerError>> + Send {
        let caller = Caller {
            principal: self.principal.clone(),
            ..caller
        };
        self.handler.handle(caller, request)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quota_slows_a_publish_loop_to_its_rate_without_loss_or_duplicates() {
    bounded(async {
        const RATE: u64 = 20;
        const EVENTS: u64 = 80;
        let dir = tempfile::tempdir().unwrap();
        let node = one_node(&dir).await;
        write(&node, topic("metered", 1)).await;
        security(
            &node,
            &root(),
            rule("alice", "topic:metered", "all", "allow"),
        )
        .await;
        let quota = SecurityOp::SetQuota {
            principal: "alice".into(),
            quota: Some(Quota {
                bytes_per_second: None,
                requests_per_second: Some(RATE),
            }),
        };
        security(&node, &root(), quota).await;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let as_alice = As {
            handler: node.handler(),
            principal: alice(),
        };
        let server = TcpServer::serve_with(listener, 1, as_alice, ServerConfig::default()).unwrap();
        let address: SocketAddr = server.local_address();
        let mut config = ClientConfig::new(vec![address]);
        // Shorter than the loop takes: throttled waits must not count.
        config.request_timeout = Duration::from_secs(2);
        let client = Client::new(config).unwrap();

        let started = Instant::now();
        let mut producer = client.producer().await.unwrap();
        for n in 0..EVENTS {
            let event = producer
                .stamp(
                    "metered",
                    Bytes::new(),
                    Bytes::from(format!("event-{n}")),
                    Headers::default(),
                )
                .await
                .unwrap();
            let outcomes = producer.publish(vec![event]).await.unwrap();
            assert!(
                matches!(
                    outcomes[..],
                    [PublishOutcome::Appended {
                        duplicate: false,
                        ..
                    }]
                ),
                "{outcomes:?}"
            );
        }
        let elapsed = started.elapsed();
        // Requests: the producer's id, the topic's metadata, one per event.
        // A second's burst passes at once, the rest at RATE a second.
        let requests = EVENTS + 2;
        let floor = Duration::from_secs_f64((requests - RATE) as f64 / RATE as f64);
        assert!(
            elapsed >= floor.mul_f64(0.95),
            "{requests} requests in {elapsed:?}: faster than {RATE}/s"
        );
        let rate = (requests - RATE) as f64 / elapsed.as_secs_f64();
        println!(
            "{requests} requests in {elapsed:?}: {rate:.1}/s after the burst (quota {RATE}/s)"
        );

        // Every event is there once, in order (read as root: no quota).
        let fetch = ClientRequest::Fetch {
            topic: "metered".into(),
            partition: 0,
            offset: 0,
            max: 1000,
            wait_ms: 0,
        };
        let ClientResponse::Fetched { events, .. } = ask(&node, &root(), &fetch).await else {
            panic!("fetch");
        };
        let payloads: Vec<String> = events
            .iter()
            .map(|e| String::from_utf8(e.payload.to_vec()).unwrap())
            .collect();
        let expected: Vec<String> = (0..EVENTS).map(|n| format!("event-{n}")).collect();
        assert_eq!(payloads, expected);
        server.shutdown().await;
        node.shutdown().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_admin_change_is_in_the_admin_trail_with_its_principal() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let node = one_node(&dir).await;
        write(&node, topic("orders", 1)).await;
        write(&node, topic("orders.dlq.g", 1)).await;
        security(&node, &root(), rule("alice", "cluster", "admin", "allow")).await;
        let tenant = Tenant {
            name: "acme".into(),
            prefix: "acme.".into(),
        };
        security(&node, &alice(), SecurityOp::SetTenant(tenant)).await;
        write(
            &node,
            Op::AlterTopic {
                name: "orders".into(),
                retention_ms: Some(None),
                retention_bytes: None,
            },
        )
        .await;
        let key = KeyPair::generate("dpo@sluice.test").unwrap();
        write(
            &node,
            Op::Erase(erasure::sign(&key, "carol", "ticket 2", 1)),
        )
        .await;

        // A second node joins and leaves (each recorded before).
        let other = start(&dir, 2).await;
        let add = ClientRequest::AddNode {
            id: 2,
            address: other.local_address().to_string(),
            catch_up_ms: 30_000,
        };
        assert_eq!(ask(&node, &alice(), &add).await, ClientResponse::Done);
        let remove = ClientRequest::RemoveNode { id: 2 };
        assert_eq!(ask(&node, &root(), &remove).await, ClientResponse::Done);
        other.shutdown().await.unwrap();

        // A dead letter replayed into its topic.
        let producer = producer(&node).await;
        let letter = ClientRequest::Publish(vec![event("orders.dlq.g", producer, 0, "letter")]);
        assert!(matches!(
            ask(&node, &root(), &letter).await,
            ClientResponse::Published(_)
        ));
        let generation = join(&node, REPLAY_GROUP, "r1", &["orders.dlq.g"]).await;
        let replay = Op::Transaction {
            events: EventBatch::encode(&[event("orders", producer, 0, "letter")]).unwrap(),
            commit: OffsetCommit {
                group: REPLAY_GROUP.into(),
                member: "r1".into(),
                generation,
                offsets: vec![("orders.dlq.g".into(), 0, 1)],
            },
        };
        write(&node, replay).await;
        node.shutdown().await.unwrap();

        let dir1 = dir.path().join("n1");
        let options = VerifyOptions {
            trusted_keys: vec![key.public_key()],
        };
        let mut out = Vec::new();
        let summary = export_admin(&dir1, &options, &mut out).unwrap();
        assert!(summary.directory_verified);
        let lines: Vec<serde_json::Value> = String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        let trail: Vec<(String, String)> = lines
            .iter()
            .map(|l| {
                assert_eq!(l["outcome"], "applied", "{l}");
                (
                    l["principal"].as_str().unwrap().to_owned(),
                    l["action"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        let expected = [
            ("User:root", "initialise the cluster with members 1 at "),
            ("User:root", "create topic orders with 1 partitions"),
            ("User:root", "create topic orders.dlq.g with 1 partitions"),
            ("User:root", "add rule User:alice cluster admin allow"),
            ("User:alice", "set tenant acme"),
            ("User:root", "alter the retention of topic orders"),
            ("User:root", "erase subject \"carol\""),
            ("User:alice", "add node 2 at "),
            ("User:root", "remove node 2"),
            (
                "User:root",
                "replay 1 dead letter(s) of orders.dlq.g/0 offsets 0..1 into orders",
            ),
        ];
        assert_eq!(trail.len(), expected.len(), "{trail:#?}");
        for ((principal, action), (want_principal, want_action)) in trail.iter().zip(expected) {
            assert_eq!(principal, want_principal, "{action}");
            assert!(action.starts_with(want_action), "{action} vs {want_action}");
        }
        let report = verify(&dir1, &options).unwrap();
        assert_eq!(report.admin_entries, expected.len() as u64);
        assert_eq!(report.erasures, 1);
    })
    .await;
}

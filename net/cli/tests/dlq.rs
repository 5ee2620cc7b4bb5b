//! `sluice dlq list` and `sluice dlq replay` against a node whose durable
//! subscription dead-letters an event: the letter is listed with its cause,
//! replayed once, and handled after the replay; then `sluice audit export`
//! of the node's data directory shows that whole history.

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sluice_client::client::{Client, ClientConfig};
use sluice_client::protocol::{ClientRequest, ClientResponse};
use sluice_dispatch::DurableBus as _;
use sluice_dispatch::{Context, DurableConfig, Encoding, RetryPolicy, TypedEvent};
use sluice_model::event::Headers;
use sluice_server::node::{ClusterNode, NodeConfig};

const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Refund {
    id: String,
}

impl TypedEvent for Refund {
    const TYPE_NAME: &'static str = "refund.issued";
    const SCHEMA_VERSION: u32 = 1;

    fn key(&self) -> Bytes {
        Bytes::from(self.id.clone())
    }
}

async fn sluice(args: Vec<String>) -> (bool, String, String) {
    tokio::task::spawn_blocking(move || {
        let output = Command::new(SLUICE)
            .args(&args)
            .output()
            .expect("sluice runs");
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_and_replayed_once_from_the_cli() {
    let run = async {
        let dir = tempfile::tempdir().unwrap();
        let config = NodeConfig::new(1, "127.0.0.1:0".parse().unwrap(), dir.path().join("n1"));
        let node = ClusterNode::start(config).await.unwrap();
        let address = node.local_address();
        let client = Client::new(ClientConfig::new(vec![address])).unwrap();
        let members = vec![(1, address.to_string())];
        let answer = client
            .request_from(address, &ClientRequest::Initialize { members })
            .await
            .unwrap();
        assert_eq!(answer, ClientResponse::Done);
        client.metadata().await.unwrap();
        // Wait until the node leads, so its bus takes writes.
        while client.metadata().await.unwrap().leader.is_none() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        let broken = Arc::new(AtomicBool::new(true));
        let handled: Arc<Mutex<Vec<String>>> = Arc::default();
        let handler = {
            let (broken, handled) = (broken.clone(), handled.clone());
            move |refund: Arc<Refund>, _: Context| {
                let (broken, handled) = (broken.clone(), handled.clone());
                async move {
                    if broken.load(Ordering::SeqCst) {
                        return Err("the payment provider is down".into());
                    }
                    handled.lock().unwrap().push(refund.id.clone());
                    Ok(())
                }
            }
        };
        let config = DurableConfig {
            retry: RetryPolicy {
                retries_max: 1,
                backoff_first: Duration::from_millis(1),
                backoff_max: Duration::from_millis(1),
            },
            ..DurableConfig::default()
        };
        let subscription = node
            .bus()
            .subscribe_with::<Refund, _>("refunds", handler, config)
            .await
            .unwrap();

        // Publish through the network, as a remote service would.
        let mut producer = client.producer().await.unwrap();
        let headers = Headers {
            event_type: Refund::TYPE_NAME.into(),
            schema_version: Refund::SCHEMA_VERSION,
            content_type: Encoding::Json.content_type().into(),
            ..Headers::default()
        };
        let payload = Encoding::Json.encode(&Refund { id: "r-7".into() }).unwrap();
        let event = producer
            .stamp(Refund::TYPE_NAME, Bytes::from("r-7"), payload, headers)
            .await
            .unwrap();
        producer.publish(vec![event]).await.unwrap();
        while node
            .bus()
            .dead_letters(Refund::TYPE_NAME, "refunds", 10)
            .unwrap()
            .is_empty()
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        let cluster = address.to_string();
        let args = |verb: &str| {
            let mut args: Vec<String> = vec!["dlq".into(), verb.into()];
            for a in [
                "--topic",
                Refund::TYPE_NAME,
                "--group",
                "refunds",
                "--cluster",
                &cluster,
            ] {
                args.push(a.to_owned());
            }
            args
        };
        let mut list = args("list");
        list.push("--json".into());
        let (ok, stdout, stderr) = sluice(list.clone()).await;
        assert!(ok, "{stderr}");
        let letters: Vec<serde_json::Value> = stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(letters.len(), 1, "{stdout}");
        assert_eq!(letters[0]["key"], "r-7");
        assert_eq!(letters[0]["cause"], "the payment provider is down");
        assert_eq!(letters[0]["attempts"], "2");

        broken.store(false, Ordering::SeqCst);
        let (ok, stdout, stderr) = sluice(args("replay")).await;
        assert!(ok, "{stderr}");
        assert_eq!(
            stdout.trim(),
            "replayed 1 dead letter(s) into refund.issued"
        );
        let (ok, stdout, _) = sluice(args("replay")).await;
        assert!(ok);
        assert_eq!(
            stdout.trim(),
            "replayed 0 dead letter(s) into refund.issued"
        );
        let (ok, stdout, _) = sluice(list).await;
        assert!(ok && stdout.is_empty(), "nothing left to replay: {stdout}");

        while handled.lock().unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(*handled.lock().unwrap(), vec!["r-7".to_owned()]);
        subscription.unsubscribe().await.unwrap();
        node.shutdown().await.unwrap();
        audit_export_shows_the_history(&dir.path().join("n1")).await;
    };
    tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the test took longer than 60 s");
}

/// `sluice audit export` of the stopped node's directory: the refund's
/// two failed attempts, its dead letter and the replay (whose sluice dlq
/// replay transaction went through the client protocol), and the replayed
/// event handled.
async fn audit_export_shows_the_history(dir: &std::path::Path) {
    let args = [
        "audit",
        "export",
        "--dir",
        &dir.display().to_string(),
        "--subject",
        "r-7",
    ];
    let (ok, stdout, stderr) = sluice(args.iter().map(|a| a.to_string()).collect()).await;
    assert!(ok, "{stderr}");
    assert!(stderr.contains("exported 2 events"), "{stderr}");
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    let states = |line: &serde_json::Value| -> Vec<String> {
        line["history"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["state"].as_str().unwrap().to_owned())
            .collect()
    };
    let (original, replayed) = (&lines[0], &lines[1]);
    assert_eq!(
        states(original),
        [
            "published",
            "appended",
            "delivered",
            "retried",
            "failed",
            "dead_lettered",
            "committed",
            "replayed"
        ],
        "{original:#}"
    );
    let history = original["history"].as_array().unwrap();
    assert_eq!(history[3]["error"], "the payment provider is down");
    assert_eq!(history[5]["topic"], "refund.issued.dlq.refunds");
    assert_eq!(history[7]["offset"], replayed["offset"]);
    assert_eq!(replayed["replay_of"]["offset"], original["offset"]);
    assert_eq!(
        states(replayed),
        [
            "published",
            "appended",
            "delivered",
            "processed",
            "committed"
        ],
        "{replayed:#}"
    );
}

async fn http_get(address: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_serves_prometheus_metrics() {
    let run = async {
        let dir = tempfile::tempdir().unwrap();
        let config = NodeConfig {
            http_listen: Some("127.0.0.1:0".parse().unwrap()),
            ..NodeConfig::new(1, "127.0.0.1:0".parse().unwrap(), dir.path().join("n1"))
        };
        let node = ClusterNode::start(config).await.unwrap();
        let address = node.local_address();
        let client = Client::new(ClientConfig::new(vec![address])).unwrap();
        let members = vec![(1, address.to_string())];
        client
            .request_from(address, &ClientRequest::Initialize { members })
            .await
            .unwrap();
        client.create_topic("orders", 2).await.unwrap();
        let metrics = node.http_address().expect("metrics served");
        let page = http_get(metrics, "/metrics").await;
        assert!(page.starts_with("HTTP/1.1 200 OK"), "{page}");
        assert!(page.contains("sluice_raft_leader{node=\"1\"} 1"), "{page}");
        assert!(
            page.contains("sluice_partition_next_offset{topic=\"orders\",partition=\"1\"} 0"),
            "{page}"
        );
        let missing = http_get(metrics, "/other").await;
        assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
        node.shutdown().await.unwrap();
    };
    tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the test took longer than 60 s");
}

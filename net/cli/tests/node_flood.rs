//! A `sluice node` process under connection floods from strangers (no
//! cluster secret), at a small scale: 40 connections each sending the
//! first 8 MiB of a 15 MiB frame must not grow the node's resident memory
//! past 150 MB (without a bound it holds all 320 MiB), the node must keep
//! serving a real client during and after the flood, and connections
//! beyond `--connections-max` must be closed as they arrive and counted in
//! the metrics.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use common::{Node, free_address, lines, sluice_ok, tail_payloads};
use sluice_client::wire::{self, HEADER_SIZE, Header, Role};
use sluice_model::transport::MessageKind;

/// The resident memory the node may reach during the flood.
const RSS_BOUND: u64 = 150 * 1000 * 1000;
const FLOOD_CONNECTIONS: usize = 40;
const FRAME_BODY: usize = 15 * 1024 * 1024;
const SENT_PER_CONNECTION: usize = 8 * 1024 * 1024;
const CONNECTIONS_MAX: usize = 100;

/// A connection to `server` from the loopback address `from`.
async fn connect_from(from: &str, server: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(format!("{from}:0").parse().expect("an address"))?;
    socket.connect(server).await
}

/// A well-formed 15 MiB request frame: its header declares the whole body.
fn large_frame() -> Bytes {
    let header = Header {
        role: Role::Request,
        kind: MessageKind::Client as u8,
        group: 0,
        request_id: 1,
        source: 0,
    };
    let mut buf = BytesMut::new();
    wire::encode_into(&mut buf, &header, &vec![0xAB; FRAME_BODY]);
    buf.freeze()
}

/// The value of metric `name` in the node's `/metrics` text.
async fn metric(metrics: &str, name: &str) -> u64 {
    let mut stream = TcpStream::connect(metrics).await.expect("metrics endpoint");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{name} ")))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("no metric {name} in {response}"))
}

#[test]
fn a_node_flooded_by_strangers_stays_bounded_and_serves_its_clients() {
    let metrics = free_address();
    let node = Node::start_single(&[
        "--metrics-listen",
        &metrics,
        "--connections-max",
        &CONNECTIONS_MAX.to_string(),
    ]);
    let cluster = node.address.clone();
    sluice_ok(&["topics", "create", "flood", "--cluster", &cluster], None);
    sluice_ok(
        &["publish", "flood", "--cluster", &cluster],
        Some(&lines(0, 100)),
    );
    let baseline = node.rss_bytes();
    let server: SocketAddr = cluster.parse().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        // The partial-frame flood: each connection sends 8 MiB of a 15 MiB
        // frame and then nothing; the writes that the node does not read
        // stay blocked in their tasks.
        let frame = large_frame();
        let mut flood = Vec::new();
        for _ in 0..FLOOD_CONNECTIONS {
            let stream = connect_from("127.0.0.2", server).await.expect("connect");
            let (read, mut write) = stream.into_split();
            let frame = frame.clone();
            let writer = tokio::spawn(async move {
                let _ = write
                    .write_all(&frame[..HEADER_SIZE + SENT_PER_CONNECTION])
                    .await;
                write
            });
            flood.push((read, writer));
        }
        // Resident memory while the node takes in what it will take.
        let mut peak = baseline;
        let deadline = Instant::now() + Duration::from_secs(4);
        while Instant::now() < deadline {
            peak = peak.max(node.rss_bytes());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // A real client during the flood.
        let client = cluster.clone();
        let during = tokio::task::spawn_blocking(move || {
            let cluster = client;
            let published = sluice_ok(
                &["publish", "flood", "--cluster", &cluster],
                Some(&lines(100, 100)),
            );
            (published, tail_payloads(&cluster, "flood"))
        })
        .await
        .unwrap();
        peak = peak.max(node.rss_bytes());
        assert_eq!(during.0.trim(), "100 of 100 events acknowledged");
        assert_eq!(during.1.len(), 200, "events read back during the flood");
        assert!(
            peak < RSS_BOUND,
            "the node's resident memory reached {} MB under the flood (baseline {} MB, bound {} \
             MB)",
            peak / 1_000_000,
            baseline / 1_000_000,
            RSS_BOUND / 1_000_000
        );
        eprintln!(
            "RSS: baseline {} MB, peak under the flood {} MB",
            baseline / 1_000_000,
            peak / 1_000_000
        );

        // The connection flood: idle connections beyond --connections-max
        // are closed as they arrive.
        let mut idle = Vec::new();
        let mut closed = 0;
        for _ in 0..CONNECTIONS_MAX {
            let Ok(mut stream) = connect_from("127.0.0.3", server).await else {
                closed += 1;
                continue;
            };
            let mut byte = [0u8; 1];
            match tokio::time::timeout(Duration::from_millis(50), stream.read(&mut byte)).await {
                Err(_still_open) => idle.push(stream),
                Ok(Ok(0) | Err(_)) => closed += 1,
                Ok(Ok(_)) => panic!("the node sent bytes to an idle stranger"),
            }
        }
        let held = FLOOD_CONNECTIONS + idle.len();
        assert!(
            held <= CONNECTIONS_MAX,
            "the node holds {held} connections, beyond --connections-max {CONNECTIONS_MAX}"
        );
        assert!(
            closed >= FLOOD_CONNECTIONS,
            "only {closed} connections were refused"
        );
        let refused = metric(&metrics, "sluice_server_connections_refused_total").await;
        assert!(
            refused >= closed as u64,
            "the metric counts {refused} refusals, {closed} were seen"
        );

        // After the flood.
        drop(idle);
        for (read, writer) in flood {
            writer.abort();
            drop(read);
        }
        let client = cluster.clone();
        let after = tokio::task::spawn_blocking(move || {
            let cluster = client;
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let output = common::sluice(
                    &["publish", "flood", "--cluster", &cluster],
                    Some(lines(200, 100).as_bytes()),
                );
                if output.status.success() {
                    break (
                        common::text(&output.stdout),
                        tail_payloads(&cluster, "flood"),
                    );
                }
                // The node may still hold the flood's slots for a moment.
                assert!(
                    Instant::now() < deadline,
                    "publishing after the flood fails"
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        })
        .await
        .unwrap();
        assert_eq!(after.0.trim(), "100 of 100 events acknowledged");
        let expected: Vec<String> = (0..300).map(|i| format!("v{i}")).collect();
        assert_eq!(after.1, expected, "every event, once, in order");
    });
}

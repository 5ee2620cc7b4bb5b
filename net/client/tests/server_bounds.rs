//! `TcpServer`'s bounds against floods, on loopback at a small scale:
//! connections beyond the per-node and per-address bounds are closed as
//! they arrive, a slowloris connection is closed after the frame-read
//! timeout, an idle one after the idle timeout, a frame that waits for the
//! read budget is not read meanwhile, and well-behaved peers are served
//! throughout. Every test runs under a time bound and binds port 0 only.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::time::Instant;

use sluice_client::tcp::{ServerConfig, TcpServer};
use sluice_client::wire::{self, FRAME_SIZE_MAX, HEADER_SIZE, Header, Role};
use sluice_model::transport::{Caller, Handler, HandlerError, NodeId, Request};

const CLIENT: NodeId = 1;
const SERVER: NodeId = 2;

/// Echoes the body.
#[derive(Debug)]
struct Echo;

impl Handler for Echo {
    async fn handle(&self, _caller: Caller, request: Request) -> Result<Bytes, HandlerError> {
        Ok(request.body)
    }
}

/// Runs `test` and fails if it takes longer than 30 s.
async fn bounded<T>(test: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(30), test)
        .await
        .expect("the test took longer than 30 s")
}

async fn server(config: ServerConfig) -> TcpServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    TcpServer::serve_with(listener, SERVER, Echo, config).unwrap()
}

/// A connection to `server` from the loopback address `from`.
async fn connect_from(from: &str, server: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    socket.connect(server).await.unwrap()
}

fn frame(request_id: u64, body: &[u8]) -> BytesMut {
    let header = Header {
        role: Role::Request,
        kind: 1,
        group: 0,
        request_id,
        source: CLIENT,
    };
    let mut buf = BytesMut::new();
    wire::encode_into(&mut buf, &header, body);
    buf
}

/// Sends one request on `stream` and reads its echo; fails the test if
/// the connection does not answer within 2 s.
async fn echo(stream: &mut TcpStream, request_id: u64, body: &[u8]) {
    stream.write_all(&frame(request_id, body)).await.unwrap();
    let mut answer = vec![0; HEADER_SIZE + body.len()];
    tokio::time::timeout(Duration::from_secs(2), stream.read_exact(&mut answer))
        .await
        .expect("no answer within 2 s")
        .expect("the connection failed");
    assert_eq!(&answer[HEADER_SIZE..], body);
}

/// Whether the server closes `stream` within `limit` (EOF or reset);
/// anything the server sends is a failure.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
    let mut byte = [0u8; 1];
    match tokio::time::timeout(limit, stream.read(&mut byte)).await {
        Err(_elapsed) => false,
        Ok(Ok(0)) => true,
        Ok(Ok(_)) => panic!("the server sent bytes on a connection it should close"),
        Ok(Err(error)) => {
            assert_eq!(error.kind(), io::ErrorKind::ConnectionReset, "{error}");
            true
        }
    }
}

/// Waits until `condition` holds, for at most 2 s.
async fn eventually(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(2);
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within 2 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_node_bound_are_closed_as_they_arrive() {
    bounded(async {
        let server = server(ServerConfig {
            connections_max: 8,
            ..ServerConfig::default()
        })
        .await;
        let stats = server.stats();
        let address = server.local_address();
        let mut held = Vec::new();
        for i in 0..8 {
            let mut stream = TcpStream::connect(address).await.unwrap();
            echo(&mut stream, i, b"held").await;
            held.push(stream);
        }
        assert_eq!(stats.connections_open(), 8);
        // A flood beyond the bound: each is closed at once.
        for _ in 0..20 {
            let mut extra = TcpStream::connect(address).await.unwrap();
            assert!(
                closed_within(&mut extra, Duration::from_secs(2)).await,
                "a connection beyond the bound of 8 was held"
            );
        }
        assert_eq!(stats.connections_refused(), 20);
        assert_eq!(stats.connections_open(), 8);
        // The held ones are still served.
        for (i, stream) in held.iter_mut().enumerate() {
            echo(stream, 100 + i as u64, b"still served").await;
        }
        // Closing one makes room for one more.
        drop(held.pop());
        eventually("the closed connection's slot freed", || {
            stats.connections_open() == 7
        })
        .await;
        let mut next = TcpStream::connect(address).await.unwrap();
        echo(&mut next, 200, b"admitted").await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_address_bound_are_closed_and_other_addresses_served() {
    bounded(async {
        let server = server(ServerConfig {
            connections_per_address_max: 4,
            ..ServerConfig::default()
        })
        .await;
        let stats = server.stats();
        let address = server.local_address();
        let mut held = Vec::new();
        for i in 0..4 {
            let mut stream = connect_from("127.0.0.2", address).await;
            echo(&mut stream, i, b"from .2").await;
            held.push(stream);
        }
        for _ in 0..10 {
            let mut extra = connect_from("127.0.0.2", address).await;
            assert!(
                closed_within(&mut extra, Duration::from_secs(2)).await,
                "a fifth connection from one address was held"
            );
        }
        assert_eq!(stats.connections_refused(), 10);
        // Another address is not affected by the first one's flood.
        for i in 0..4 {
            let mut other = connect_from("127.0.0.3", address).await;
            echo(&mut other, 10 + i, b"from .3").await;
            held.push(other);
        }
        assert_eq!(stats.connections_refused(), 10);
        assert_eq!(stats.connections_open(), 8);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowloris_connection_is_closed_after_the_frame_read_timeout() {
    bounded(async {
        let frame_read = Duration::from_millis(400);
        let server = server(ServerConfig {
            frame_read_time_max: frame_read,
            ..ServerConfig::default()
        })
        .await;
        let stats = server.stats();
        let address = server.local_address();
        // A frame sent whole, if slowly, within the bound is served.
        let mut patient = TcpStream::connect(address).await.unwrap();
        let whole = frame(1, b"in two parts");
        patient.write_all(&whole[..10]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
        patient.write_all(&whole[10..]).await.unwrap();
        let mut answer = vec![0; whole.len()];
        patient.read_exact(&mut answer).await.unwrap();
        // Slowloris: one byte every 50 ms of a 1 KiB frame, which would
        // take 54 s to arrive.
        let mut slow = Vec::new();
        for request_id in 0..5 {
            slow.push((
                TcpStream::connect(address).await.unwrap(),
                frame(request_id, &[7; 1024]),
            ));
        }
        let started = Instant::now();
        let mut sent = 0;
        let mut open = slow.len();
        while open > 0 {
            assert!(
                started.elapsed() < frame_read * 5,
                "{open} slowloris connections still open after {:?}",
                started.elapsed()
            );
            for (stream, bytes) in &mut slow {
                // A write fails once the server has closed and reset it.
                let _ = stream.write_all(&bytes[sent..sent + 1]).await;
            }
            sent += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
            open = 0;
            for (stream, _) in &mut slow {
                if !closed_within(stream, Duration::from_millis(1)).await {
                    open += 1;
                }
            }
        }
        let elapsed = started.elapsed();
        assert!(
            elapsed >= frame_read,
            "closed after {elapsed:?}, before the frame-read bound of {frame_read:?}"
        );
        assert_eq!(stats.closed_slow_frame(), 5);
        // The patient connection is still served.
        echo(&mut patient, 9, b"still here").await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_is_closed_after_the_idle_timeout() {
    bounded(async {
        let idle = Duration::from_millis(400);
        let server = server(ServerConfig {
            idle_time_max: idle,
            ..ServerConfig::default()
        })
        .await;
        let stats = server.stats();
        let address = server.local_address();
        let mut idlers = Vec::new();
        for _ in 0..10 {
            idlers.push(TcpStream::connect(address).await.unwrap());
        }
        let mut busy = TcpStream::connect(address).await.unwrap();
        let started = Instant::now();
        // The busy connection sends a request every 100 ms, for three
        // idle bounds: it stays open.
        let mut request_id = 0;
        while started.elapsed() < idle * 3 {
            echo(&mut busy, request_id, b"busy").await;
            request_id += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for idler in &mut idlers {
            assert!(
                closed_within(idler, Duration::from_millis(10)).await,
                "an idle connection was still open after {:?}",
                started.elapsed()
            );
        }
        assert_eq!(stats.closed_idle(), 10);
        assert_eq!(stats.connections_open(), 1);
        echo(&mut busy, request_id, b"busy").await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_frame_waits_for_the_read_budget_and_small_ones_pass() {
    bounded(async {
        let server = server(ServerConfig {
            // Room for one frame of the largest size at a time.
            unauthenticated_read_bytes_max: FRAME_SIZE_MAX,
            ..ServerConfig::default()
        })
        .await;
        let stats = server.stats();
        let address = server.local_address();
        let body_size = FRAME_SIZE_MAX - HEADER_SIZE - 1024;
        let large = |request_id| frame(request_id, &vec![1; body_size]);
        // `first` takes the whole budget and sends half its frame.
        let first_frame = large(1);
        let mut first = TcpStream::connect(address).await.unwrap();
        first
            .write_all(&first_frame[..first_frame.len() / 2])
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        // `second` finds no budget: its frame is not read, so its writes
        // stall once the sockets' buffers are full, long before 16 MiB.
        let second_frame = large(2);
        let second_size = second_frame.len();
        let second = TcpStream::connect(address).await.unwrap();
        let (mut second_read, mut second_write) = second.into_split();
        let writing = tokio::spawn(async move {
            second_write.write_all(&second_frame).await.unwrap();
            second_write
        });
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(
            !writing.is_finished(),
            "a whole 16 MiB frame was taken in while the budget was spent"
        );
        // Small frames pass meanwhile.
        let mut small = TcpStream::connect(address).await.unwrap();
        echo(&mut small, 3, b"small frames need no budget").await;
        // Once `first` is whole it gives the budget back, and `second` is
        // read and answered.
        first
            .write_all(&first_frame[first_frame.len() / 2..])
            .await
            .unwrap();
        let mut answer = vec![0; first_frame.len()];
        first.read_exact(&mut answer).await.unwrap();
        let _second_write = writing.await.unwrap();
        let mut answer = vec![0; second_size];
        second_read.read_exact(&mut answer).await.unwrap();
        assert_eq!(stats.closed_slow_frame(), 0);
        echo(&mut small, 4, b"still served").await;
    })
    .await;
}

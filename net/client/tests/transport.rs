//! `TcpTransport` and `TcpServer` over loopback: calls, concurrency,
//! reconnection, dead and silent peers, and hostile bytes written with a
//! raw socket. Every test runs under a time bound and binds port 0 only.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use sluice_client::tcp::{TcpConfig, TcpServer, TcpTransport};
use sluice_client::wire::{self, BODY_SIZE_MAX, Header, Role};
use sluice_model::transport::{
    Caller, Handler, HandlerError, NodeId, Request, Transport, TransportError,
};

const CLIENT: NodeId = 1;
const SERVER: NodeId = 2;

/// Answers `"<source>/<kind>/<group>:"` followed by the body.
const KIND_ECHO: u8 = 1;
/// Fails with a message.
const KIND_FAIL: u8 = 2;
/// Sleeps for the milliseconds in the body's first 8 bytes (little-endian),
/// then echoes the body.
const KIND_SLOW: u8 = 3;
/// Panics.
const KIND_PANIC: u8 = 4;
/// Counts the call in `BIG_ANSWERS` and answers `BIG_ANSWER_SIZE` bytes.
const KIND_BIG: u8 = 5;

static BIG_ANSWERS: AtomicUsize = AtomicUsize::new(0);
const BIG_ANSWER_SIZE: usize = 64 * 1024;

#[derive(Debug)]
struct TestHandler;

impl Handler for TestHandler {
    async fn handle(&self, caller: Caller, request: Request) -> Result<Bytes, HandlerError> {
        match request.kind {
            KIND_ECHO => {
                let prefix = format!("{}/{}/{}:", caller.source, request.kind, request.group);
                Ok(Bytes::from([prefix.as_bytes(), &request.body].concat()))
            }
            KIND_SLOW => {
                let mut ms = [0; 8];
                ms.copy_from_slice(&request.body[..8]);
                tokio::time::sleep(Duration::from_millis(u64::from_le_bytes(ms))).await;
                Ok(request.body)
            }
            KIND_PANIC => panic!("a handler panics on purpose"),
            KIND_BIG => {
                BIG_ANSWERS.fetch_add(1, Ordering::SeqCst);
                Ok(Bytes::from(vec![7; BIG_ANSWER_SIZE]))
            }
            _ => Err(HandlerError::new("refused on purpose")),
        }
    }
}

/// Runs `test` and fails if it takes longer than 20 s.
async fn bounded<T>(test: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), test)
        .await
        .expect("the test took longer than 20 s")
}

fn config() -> TcpConfig {
    TcpConfig {
        call_timeout: Duration::from_secs(3),
        connect_timeout: Duration::from_millis(500),
        backoff_initial: Duration::from_millis(10),
        backoff_max: Duration::from_millis(100),
        ..TcpConfig::default()
    }
}

async fn server() -> TcpServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    TcpServer::serve(listener, SERVER, TestHandler).unwrap()
}

fn client(address: SocketAddr, config: TcpConfig) -> TcpTransport {
    let transport = TcpTransport::new(CLIENT, config);
    transport.set_address(SERVER, address);
    transport
}

fn request(kind: u8, body: impl Into<Bytes>) -> Request {
    Request {
        kind,
        group: 9,
        body: body.into(),
    }
}

fn slow(ms: u64, tag: u64) -> Request {
    let body = [ms.to_le_bytes(), tag.to_le_bytes()].concat();
    request(KIND_SLOW, body)
}

#[tokio::test]
async fn round_trip() {
    bounded(async {
        let server = server().await;
        let transport = client(server.local_address(), config());
        let response = transport.call(SERVER, request(KIND_ECHO, "hello")).await;
        assert_eq!(response.unwrap(), Bytes::from("1/1/9:hello"));
        let empty = transport.call(SERVER, request(KIND_ECHO, "")).await;
        assert_eq!(empty.unwrap(), Bytes::from("1/1/9:"));
    })
    .await;
}

/// Forwards every connection accepted on a new loopback address to
/// `target`, counting them.
async fn counting_proxy(target: SocketAddr) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut outbound = TcpStream::connect(target).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            });
        }
    });
    (address, accepted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_share_one_connection_and_match() {
    bounded(async {
        let server = server().await;
        let (proxy, accepted) = counting_proxy(server.local_address()).await;
        let transport = client(proxy, config());
        // Delays vary so that responses come back out of order.
        let calls = (0..300u64).map(|tag| {
            let transport = transport.clone();
            tokio::spawn(async move {
                let request = slow(tag * 7 % 23, tag);
                let expected = request.body.clone();
                (transport.call(SERVER, request).await.unwrap(), expected)
            })
        });
        for call in calls.collect::<Vec<_>>() {
            let (response, expected) = call.await.unwrap();
            assert_eq!(response, expected);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_leaves_only_its_own_call_unanswered() {
    bounded(async {
        let server = server().await;
        let (proxy, accepted) = counting_proxy(server.local_address()).await;
        let short = TcpConfig {
            call_timeout: Duration::from_millis(500),
            ..config()
        };
        let transport = client(proxy, short);
        let slow_call = {
            let transport = transport.clone();
            tokio::spawn(async move { transport.call(SERVER, slow(300, 1)).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        // A small request is handled on the connection's task, a large one
        // on a task of its own: neither panic takes the connection down.
        for body in [Bytes::from("boom"), Bytes::from(vec![0; 64 * 1024])] {
            let panicked = transport.call(SERVER, request(KIND_PANIC, body)).await;
            assert!(
                matches!(panicked, Err(TransportError::TimedOut { .. })),
                "{panicked:?}"
            );
        }
        // The call in flight beside it and later calls are answered on the
        // same connection.
        assert!(slow_call.await.unwrap().is_ok());
        let response = transport.call(SERVER, request(KIND_ECHO, "after")).await;
        assert_eq!(response.unwrap(), Bytes::from("1/1/9:after"));
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_does_not_read_its_answers_is_not_served_without_bound() {
    bounded(async {
        let server = server().await;
        let mut raw = TcpStream::connect(server.local_address()).await.unwrap();
        const REQUESTS: usize = 1000;
        let mut frames = BytesMut::new();
        for request_id in 0..REQUESTS as u64 {
            let header = Header {
                role: Role::Request,
                kind: KIND_BIG,
                group: 9,
                request_id,
                source: CLIENT,
            };
            wire::encode_into(&mut frames, &header, b"");
        }
        raw.write_all(&frames).await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        // 1000 answers of 64 KiB would be 64 MiB; the server stops reading
        // once about 1 MiB waits beyond what the sockets hold.
        let answered = BIG_ANSWERS.load(Ordering::SeqCst);
        assert!(answered > 0, "the server answered nothing");
        assert!(
            answered < REQUESTS / 2,
            "{answered} of {REQUESTS} requests were handled for a peer that reads nothing"
        );
        // Reading the answers lets the server go on.
        let mut sink = vec![0; 1 << 20];
        let deadline = Instant::now() + Duration::from_secs(10);
        while BIG_ANSWERS.load(Ordering::SeqCst) < REQUESTS && Instant::now() < deadline {
            let read = raw.read(&mut sink).await.unwrap();
            assert!(read > 0, "the server closed the connection");
        }
        assert_eq!(BIG_ANSWERS.load(Ordering::SeqCst), REQUESTS);
    })
    .await;
}

#[tokio::test]
async fn inflight_bound_makes_extra_calls_wait() {
    bounded(async {
        let server = server().await;
        let narrow = TcpConfig {
            inflight_per_connection_max: 2,
            ..config()
        };
        let transport = client(server.local_address(), narrow);
        let started = Instant::now();
        let calls = (0..4u64).map(|tag| {
            let transport = transport.clone();
            tokio::spawn(async move { transport.call(SERVER, slow(150, tag)).await })
        });
        for call in calls.collect::<Vec<_>>() {
            assert!(call.await.unwrap().is_ok());
        }
        // Four 150 ms calls, two at a time: two rounds at least.
        assert!(started.elapsed() >= Duration::from_millis(300));
    })
    .await;
}

#[tokio::test]
async fn late_response_after_timeout_is_dropped() {
    bounded(async {
        let server = server().await;
        let short = TcpConfig {
            call_timeout: Duration::from_millis(100),
            ..config()
        };
        let transport = client(server.local_address(), short);
        let error = transport.call(SERVER, slow(300, 1)).await.unwrap_err();
        assert!(
            matches!(error, TransportError::TimedOut { target: SERVER, .. }),
            "{error}"
        );
        // The late response arrives on the same connection meanwhile; the
        // next calls get their own.
        tokio::time::sleep(Duration::from_millis(300)).await;
        for tag in 2..5 {
            let request = slow(0, tag);
            let expected = request.body.clone();
            assert_eq!(transport.call(SERVER, request).await.unwrap(), expected);
        }
    })
    .await;
}

#[tokio::test]
async fn client_reconnects_after_server_restart() {
    bounded(async {
        let first = server().await;
        let address = first.local_address();
        let transport = client(address, config());
        assert!(
            transport
                .call(SERVER, request(KIND_ECHO, "a"))
                .await
                .is_ok()
        );
        first.shutdown().await;
        let error = transport
            .call(SERVER, request(KIND_ECHO, "b"))
            .await
            .unwrap_err();
        assert!(
            matches!(
                error,
                TransportError::Closed { .. } | TransportError::Unreachable { .. }
            ),
            "{error}"
        );
        let listener = TcpListener::bind(address).await.unwrap();
        let _second = TcpServer::serve(listener, SERVER, TestHandler).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match transport.call(SERVER, request(KIND_ECHO, "c")).await {
                Ok(response) => break assert_eq!(response, Bytes::from("1/1/9:c")),
                Err(error) if Instant::now() < deadline => {
                    assert!(!matches!(error, TransportError::Remote { .. }), "{error}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(error) => panic!("no reconnection within 5 s: {error}"),
            }
        }
    })
    .await;
}

#[tokio::test]
async fn dead_peer_is_unreachable_quickly() {
    bounded(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        drop(listener);
        let transport = client(address, config());
        for attempt in 0..3 {
            let started = Instant::now();
            let error = transport
                .call(SERVER, request(KIND_ECHO, "x"))
                .await
                .unwrap_err();
            assert!(
                matches!(error, TransportError::Unreachable { target: SERVER, .. }),
                "attempt {attempt}: {error}"
            );
            assert!(
                started.elapsed() < Duration::from_secs(1),
                "attempt {attempt}"
            );
        }
        let error = transport
            .call(7, request(KIND_ECHO, "x"))
            .await
            .unwrap_err();
        assert!(
            matches!(error, TransportError::Unreachable { target: 7, .. }),
            "{error}"
        );
    })
    .await;
}

#[tokio::test]
async fn silent_peer_times_out() {
    bounded(async {
        // Accepts and reads, never answers.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut sink = Vec::new();
            let _ = stream.read_to_end(&mut sink).await;
        });
        let short = TcpConfig {
            call_timeout: Duration::from_millis(200),
            ..config()
        };
        let transport = client(address, short);
        let started = Instant::now();
        let error = transport
            .call(SERVER, request(KIND_ECHO, "x"))
            .await
            .unwrap_err();
        assert!(
            matches!(error, TransportError::TimedOut { target: SERVER, .. }),
            "{error}"
        );
        assert!(started.elapsed() < Duration::from_secs(2));
    })
    .await;
}

#[tokio::test]
async fn handler_error_comes_back_as_remote() {
    bounded(async {
        let server = server().await;
        let transport = client(server.local_address(), config());
        let error = transport
            .call(SERVER, request(KIND_FAIL, "x"))
            .await
            .unwrap_err();
        match &error {
            TransportError::Remote { target, message } => {
                assert_eq!(*target, SERVER);
                assert_eq!(message, "refused on purpose");
            }
            other => panic!("expected a remote error, got {other}"),
        }
        // The connection still serves.
        assert!(
            transport
                .call(SERVER, request(KIND_ECHO, "y"))
                .await
                .is_ok()
        );
    })
    .await;
}

#[tokio::test]
async fn oversized_request_is_refused_before_sending() {
    bounded(async {
        let transport = client("127.0.0.1:9".parse().unwrap(), config());
        let body = Bytes::from(vec![0; BODY_SIZE_MAX + 1]);
        let error = transport
            .call(SERVER, request(KIND_ECHO, body))
            .await
            .unwrap_err();
        assert!(
            matches!(error, TransportError::FrameTooLarge { .. }),
            "{error}"
        );
    })
    .await;
}

/// A log sink for the server's warnings in this test's thread.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

fn valid_frame(body: &[u8]) -> BytesMut {
    let header = Header {
        role: Role::Request,
        kind: KIND_ECHO,
        group: 9,
        request_id: 1,
        source: CLIENT,
    };
    let mut buf = BytesMut::new();
    wire::encode_into(&mut buf, &header, body);
    buf
}

/// Writes `bytes` on a raw connection (then half-closes it if `finish`),
/// and checks that the server closes the connection, logs `reason` with
/// the client's address, and keeps serving a well-behaved client.
async fn server_rejects(bytes: &[u8], finish: bool, reason: &str) {
    let log = Captured::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let server = server().await;
    let mut raw = TcpStream::connect(server.local_address()).await.unwrap();
    let raw_address = raw.local_addr().unwrap();
    raw.write_all(bytes).await.unwrap();
    if finish {
        raw.shutdown().await.unwrap();
    }
    let mut rest = Vec::new();
    match raw.read_to_end(&mut rest).await {
        Ok(_) => assert!(rest.is_empty(), "the server answered {rest:?}"),
        Err(error) => assert_eq!(error.kind(), io::ErrorKind::ConnectionReset, "{error}"),
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while !log.text().contains(reason) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let text = log.text();
    assert!(text.contains("WARN"), "{text}");
    assert!(text.contains(reason), "expected {reason:?} in {text}");
    assert!(text.contains(&raw_address.to_string()), "{text}");
    let transport = client(server.local_address(), config());
    let response = transport.call(SERVER, request(KIND_ECHO, "ok")).await;
    assert_eq!(response.unwrap(), Bytes::from("1/1/9:ok"));
}

#[tokio::test]
async fn bad_magic_closes_the_connection() {
    bounded(async {
        let mut frame = valid_frame(b"payload");
        frame[0..4].copy_from_slice(b"GET ");
        server_rejects(&frame, false, "bad magic").await;
    })
    .await;
}

#[tokio::test]
async fn truncated_frame_closes_the_connection() {
    bounded(async {
        let frame = valid_frame(b"a body that is cut short");
        server_rejects(&frame[..frame.len() - 5], true, "truncated frame").await;
    })
    .await;
}

#[tokio::test]
async fn oversized_frame_closes_the_connection() {
    bounded(async {
        let mut frame = valid_frame(b"small");
        frame[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        server_rejects(&frame, false, "exceeds the bound").await;
    })
    .await;
}

#[tokio::test]
async fn bad_checksum_closes_the_connection() {
    bounded(async {
        let mut frame = valid_frame(b"payload");
        let last = frame.len() - 1;
        frame[last] ^= 0x40;
        server_rejects(&frame, false, "checksum mismatch").await;
    })
    .await;
}

#[tokio::test]
async fn response_frame_sent_to_a_server_closes_the_connection() {
    bounded(async {
        let header = Header {
            role: Role::Response,
            kind: KIND_ECHO,
            group: 9,
            request_id: 1,
            source: CLIENT,
        };
        let mut frame = BytesMut::new();
        wire::encode_into(&mut frame, &header, b"");
        server_rejects(&frame, false, "frame arrived on a server connection").await;
    })
    .await;
}

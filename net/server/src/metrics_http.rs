//! The node's optional metrics endpoint: `GET /metrics` answers the bus's
//! Prometheus text ([`sluice_core::bus::Bus::metrics_text`]) and the
//! server's connection counters ([`ServerStats::metrics_text`]); anything else is
//! 404. HTTP/1.0-style: one request per connection, then close. It reads
//! at most 8 KiB of request and gives a slow client 5 s.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tracing::debug;

use sluice_core::bus::Bus;

use sluice_client::tcp::ServerStats;

const REQUEST_SIZE_MAX: usize = 8 * 1024;
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves `/metrics` for `bus` and `server` on `listener` until the task
/// is aborted.
pub fn serve(listener: TcpListener, bus: Bus, server: Arc<ServerStats>) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, peer)) => {
                    let bus = bus.clone();
                    let server = Arc::clone(&server);
                    tokio::spawn(async move {
                        let answer = answer(stream, &bus, &server);
                        let answered = tokio::time::timeout(CLIENT_TIMEOUT, answer);
                        match answered.await {
                            Ok(Ok(())) => {}
                            Ok(Err(error)) => debug!(%peer, %error, "metrics request failed"),
                            Err(_) => debug!(%peer, "metrics client too slow"),
                        }
                    });
                }
                Err(error) => {
                    debug!(%error, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    })
}

async fn answer(mut stream: TcpStream, bus: &Bus, server: &ServerStats) -> io::Result<()> {
    let mut request = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        let read = stream.read(&mut chunk).await?;
        if read == 0 || request.len() + read > REQUEST_SIZE_MAX {
            break;
        }
        request.extend_from_slice(&chunk[..read]);
    }
    let line = request.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let (method, path) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    let (status, content_type, body) = if method == b"GET" && path == b"/metrics" {
        let body = bus.metrics_text() + &server.metrics_text();
        ("200 OK", "text/plain; version=0.0.4", body)
    } else {
        (
            "404 Not Found",
            "text/plain",
            "only GET /metrics is served here\n".to_owned(),
        )
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

/// Binds `address` for [`serve`].
pub async fn bind(address: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::bind(address).await.map_err(|error| {
        io::Error::new(
            error.kind(),
            format!("cannot listen for metrics on {address}: {error}"),
        )
    })
}

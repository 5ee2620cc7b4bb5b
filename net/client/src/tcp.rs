//! The engine's [`Transport`] over TCP, on tokio: [`TcpTransport`] calls,
//! [`TcpServer`] serves.
//!
//! Each peer gets one connection, reused by every call and shared by calls
//! in flight: a request carries a request id, unique on its connection, and
//! its response carries the same id back, so responses may come in any
//! order. Per connection, at most [`TcpConfig::inflight_per_connection_max`]
//! calls are in flight; further calls wait for room (within their
//! timeout). A connection that breaks fails every call waiting on it; the
//! next call connects again. A failed connection attempt starts a backoff
//! (doubling from [`TcpConfig::backoff_initial`] up to
//! [`TcpConfig::backoff_max`]) during which calls to that peer fail at once
//! with [`TransportError::Unreachable`] instead of piling up on a dead
//! address.
//!
//! The server serves each connection on one task, with no channel per
//! request: it reads requests, polls the handlers' futures of small ones
//! beside each other on that task (no task per request), and writes the
//! responses that are ready together in one write. A request of 8 KiB or
//! more (a batch of events, a Raft append with entries) is handled on a
//! task of its own, so that decoding it runs beside the reading; a handler
//! with long work of its own runs it on a task too (the node does so for
//! fetches). Reading waits while
//! [`INFLIGHT_PER_CONNECTION_MAX`] requests are handled or about 1 MiB of
//! responses waits to be written.
//!
//! ### Fault model
//! - The network may lose, delay or cut anything; every call is bounded by
//!   [`TcpConfig::call_timeout`], connection attempts by
//!   [`TcpConfig::connect_timeout`], and nothing waits beyond them.
//! - TCP does not duplicate or reorder bytes within a connection, but a
//!   call that fails with `Closed` or `TimedOut` may have been applied, and
//!   a retry above this layer sends it again: the layer above handles
//!   duplicates (see `sluice_model::transport`).
//! - A peer may send anything. The server reads through the wire codec,
//!   which bounds what it buffers by [`wire::FRAME_SIZE_MAX`]; a malformed,
//!   truncated, oversized or damaged frame closes that connection with a
//!   warning naming the peer and the reason, and nothing else is affected.
//!   A client closes its connection the same way on a bad response.
//! - A handler that panics leaves its call unanswered: the caller times
//!   out, and the panic is logged; the connection's other calls carry on.
//! - Anyone who can reach the port may connect, many times, and send
//!   slowly or not at all. A server holds at most
//!   [`ServerConfig::connections_max`] connections, and
//!   [`ServerConfig::connections_per_address_max`] from one IP address,
//!   closing more as they are accepted; it closes a connection idle for
//!   [`ServerConfig::idle_time_max`] and one whose frame has not arrived
//!   whole [`ServerConfig::frame_read_time_max`] after its first byte. Its
//!   read buffers grow as bytes arrive, and frames larger than
//!   [`UNBUDGETED_FRAME_SIZE_MAX`] on connections that have not
//!   authenticated share a budget of
//!   [`ServerConfig::unauthenticated_read_bytes_max`] bytes, so strangers
//!   cannot make a node hold more than the budget plus a read chunk per
//!   connection. With a cluster secret, a connection sends nothing but the
//!   small handshake frames until it has authenticated.

use sluice_model::constants::COALESCE_BYTES_MAX;
use sluice_model::constants::RESPONSE_BYTES_SOFT_MAX;
use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::task::{JoinError, JoinHandle, JoinSet};
use tokio::time::Instant;
use tracing::{debug, warn};

use rustls_pki_types::ServerName;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use sluice_model::security::{Principal, Token};
use sluice_model::transport::{
    Caller, Handler, HandlerError, MessageKind, NodeId, Request, Transport, TransportError,
};

use crate::auth::{self, AUTH_TIMEOUT, Authenticator, Secret, TOKEN_FRAME_BODY_MAX};
use crate::tls::{Tls, principal_of};
use crate::wire::{self, BODY_SIZE_MAX, Frame, HEADER_SIZE, Header, Role};

pub use sluice_model::constants::INFLIGHT_PER_CONNECTION_MAX;

/// How much a connection asks the socket for at a time. The read buffer
/// never holds more than one frame plus this.
const READ_CHUNK_SIZE: usize = 64 * 1024;

/// The pause after a failed `accept` (out of file descriptors, say)
/// before accepting again.
const ACCEPT_RETRY_DELAY: Duration = Duration::from_millis(100);

/// Bounds of a [`TcpTransport`].
#[derive(Debug, Clone)]
pub struct TcpConfig {
    /// The longest one call may take, from connecting to the response.
    pub call_timeout: Duration,
    /// The longest one connection attempt may take.
    pub connect_timeout: Duration,
    /// The pause after the first failed connection attempt to a peer.
    pub backoff_initial: Duration,
    /// The longest pause between connection attempts to a peer.
    pub backoff_max: Duration,
    /// Calls in flight on one connection at most.
    pub inflight_per_connection_max: usize,
    /// The cluster secret to answer nodes' challenges with; `None` for a
    /// cluster that runs without one (see [`crate::auth`]). Not used with
    /// TLS.
    pub secret: Option<Secret>,
    /// TLS material: every connection is made over TLS, checked against
    /// the CA, presenting this side's certificate if it has one (see
    /// [`crate::tls`]).
    pub tls: Option<Arc<Tls>>,
    /// With TLS and no certificate of this side's own: the token presented
    /// right after the handshake.
    pub token: Option<Token>,
}

impl Default for TcpConfig {
    fn default() -> Self {
        TcpConfig {
            call_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(1),
            backoff_initial: Duration::from_millis(50),
            backoff_max: Duration::from_secs(5),
            inflight_per_connection_max: INFLIGHT_PER_CONNECTION_MAX,
            secret: None,
            tls: None,
            token: None,
        }
    }
}

/// The pause before the next connection attempt after `failures`
/// consecutive failed ones: doubling, capped at `backoff_max`.
fn backoff_delay(config: &TcpConfig, failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(20);
    config
        .backoff_initial
        .saturating_mul(1 << exponent)
        .min(config.backoff_max)
}

/// Calls other nodes over TCP. Cheap to clone; clones share connections.
/// Calls must run inside a tokio runtime (with the `time` driver), which
/// also runs each connection's reader and writer task.
#[derive(Debug, Clone)]
pub struct TcpTransport {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    source: NodeId,
    config: TcpConfig,
    peers: Mutex<HashMap<NodeId, Arc<tokio::sync::Mutex<Peer>>>>,
}

/// What the transport knows about one peer. Its async mutex is held while
/// connecting, so concurrent calls make one attempt, not many.
#[derive(Debug)]
struct Peer {
    address: SocketAddr,
    connection: Option<Arc<Connection>>,
    failures: u32,
    retry_at: Option<Instant>,
}

impl TcpTransport {
    /// A transport for node `source` (the id its requests carry), knowing
    /// no peers yet.
    ///
    /// # Panics
    /// If `config.inflight_per_connection_max` is 0.
    pub fn new(source: NodeId, config: TcpConfig) -> Self {
        assert!(config.inflight_per_connection_max > 0);
        TcpTransport {
            inner: Arc::new(Inner {
                source,
                config,
                peers: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Sets the address of node `node`. A changed address drops the old
    /// connection (calls already on it finish there) and its backoff.
    pub fn set_address(&self, node: NodeId, address: SocketAddr) {
        let mut peers = self.inner.peers.lock().expect("peer map lock poisoned");
        if let Some(peer) = peers.get(&node) {
            if peer.try_lock().is_ok_and(|peer| peer.address == address) {
                return;
            }
        }
        let peer = Peer {
            address,
            connection: None,
            failures: 0,
            retry_at: None,
        };
        peers.insert(node, Arc::new(tokio::sync::Mutex::new(peer)));
    }
}

impl Transport for TcpTransport {
    fn call(
        &self,
        target: NodeId,
        request: Request,
    ) -> impl Future<Output = Result<Bytes, TransportError>> + Send {
        let inner = Arc::clone(&self.inner);
        async move {
            if request.body.len() > BODY_SIZE_MAX {
                return Err(TransportError::FrameTooLarge {
                    size_bytes: request.body.len() as u64,
                    size_bytes_max: BODY_SIZE_MAX as u64,
                });
            }
            let after = inner.config.call_timeout;
            match tokio::time::timeout(after, inner.call(target, request)).await {
                Ok(result) => result,
                Err(_elapsed) => Err(TransportError::TimedOut { target, after }),
            }
        }
    }
}

impl Inner {
    async fn call(&self, target: NodeId, request: Request) -> Result<Bytes, TransportError> {
        let connection = self.connection(target).await?;
        connection.call(self.source, target, request).await
    }

    /// The live connection to `target`, connecting if there is none.
    async fn connection(&self, target: NodeId) -> Result<Arc<Connection>, TransportError> {
        let unreachable = |source: io::Error| TransportError::Unreachable {
            target,
            source: Arc::new(source),
        };
        let peer = self
            .peers
            .lock()
            .expect("peer map lock poisoned")
            .get(&target)
            .cloned();
        let Some(peer) = peer else {
            return Err(unreachable(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no address is known for node {target}; set one with set_address"),
            )));
        };
        let mut peer = peer.lock().await;
        if let Some(connection) = &peer.connection {
            if !connection.shared.is_closed() {
                return Ok(Arc::clone(connection));
            }
        }
        peer.connection = None;
        let now = Instant::now();
        if let Some(retry_at) = peer.retry_at.filter(|&at| now < at) {
            return Err(unreachable(io::Error::other(format!(
                "{} connection attempts to {} failed; the next one is in {:?}",
                peer.failures,
                peer.address,
                retry_at - now
            ))));
        }
        let connected = self.open(peer.address, target).await;
        match connected {
            Ok(stream) => {
                peer.failures = 0;
                peer.retry_at = None;
                let connection = Connection::start(stream, peer.address, &self.config);
                peer.connection = Some(Arc::clone(&connection));
                Ok(connection)
            }
            Err(error) => {
                peer.failures = peer.failures.saturating_add(1);
                peer.retry_at = Some(Instant::now() + backoff_delay(&self.config, peer.failures));
                Err(unreachable(error))
            }
        }
    }

    /// Connects to `target` at `address` and authenticates both ends: by
    /// TLS (and a token) if configured, else by the cluster secret if there
    /// is one.
    async fn open(&self, address: SocketAddr, target: NodeId) -> io::Result<Stream> {
        let mut stream = self.connect(address).await?;
        let limit = self.config.connect_timeout.max(Duration::from_secs(1));
        if let Some(tls) = &self.config.tls {
            let secured = self.secure(stream, address, target, tls);
            return match tokio::time::timeout(limit + AUTH_TIMEOUT, secured).await {
                Ok(result) => result,
                Err(_elapsed) => Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "the TLS handshake with {address} did not finish within {:?}; is it a \
                         node running without TLS?",
                        limit + AUTH_TIMEOUT
                    ),
                )),
            };
        }
        let Some(secret) = &self.config.secret else {
            return Ok(Stream::Plain(stream));
        };
        let answered = answer_challenge(&mut stream, self.source, secret);
        match tokio::time::timeout(limit, answered).await {
            Ok(Ok(())) => Ok(Stream::Plain(stream)),
            Ok(Err(error)) => Err(error),
            Err(_elapsed) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "{address} sent no authentication challenge within {limit:?}; is it a node \
                     running without a cluster secret?"
                ),
            )),
        }
    }

    /// The TLS handshake with the node at `address`, the check that it
    /// presents a node certificate (node `target`'s, when this side is a
    /// node), the token if this side has no certificate, and the node's
    /// confirmation of who this side is.
    async fn secure(
        &self,
        stream: TcpStream,
        address: SocketAddr,
        target: NodeId,
        tls: &Tls,
    ) -> io::Result<Stream> {
        let token = match (&self.config.token, tls.has_identity()) {
            (_, true) => None,
            (Some(token), false) => Some(token),
            (None, false) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "TLS is configured without a client certificate and without a token: \
                     give a TLS directory holding client.pem and client-key.pem, or a token \
                     (--token / SLUICE_TOKEN)",
                ));
            }
        };
        let connector = TlsConnector::from(tls.client_config());
        let name = ServerName::IpAddress(address.ip().into());
        let mut stream = connector
            .connect(name, stream)
            .await
            .map_err(|error| tls_failure(error, &format!("the TLS handshake with {address}")))?;
        let presented = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map(principal_of);
        match presented {
            Some(Ok(Principal::Node(id))) if self.source == 0 || id == target => {}
            Some(Ok(other)) => {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!(
                        "{address} presented a certificate of {other}, not of {}; nothing was \
                         sent to it",
                        if self.source == 0 {
                            "a node".to_owned()
                        } else {
                            format!("node {target}")
                        }
                    ),
                ));
            }
            Some(Err(reason)) => {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!("{address} presented an unusable certificate: {reason}"),
                ));
            }
            None => {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!("{address} presented no certificate"),
                ));
            }
        }
        if let Some(token) = token {
            let header = Header {
                role: Role::Request,
                kind: MessageKind::Auth as u8,
                group: 0,
                request_id: 0,
                source: self.source,
            };
            let mut frame = BytesMut::new();
            wire::encode_into(&mut frame, &header, &auth::token_frame(token));
            stream.write_all(&frame).await?;
            stream.flush().await?;
        }
        confirmed(&mut stream, address).await?;
        Ok(Stream::Client(Box::new(stream)))
    }

    async fn connect(&self, address: SocketAddr) -> io::Result<TcpStream> {
        let limit = self.config.connect_timeout;
        let stream = match tokio::time::timeout(limit, TcpStream::connect(address)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => {
                return Err(io::Error::new(
                    error.kind(),
                    format!("cannot connect to {address}: {error}"),
                ));
            }
            Err(_elapsed) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("connecting to {address} took longer than {limit:?}"),
                ));
            }
        };
        stream.set_nodelay(true)?;
        Ok(stream)
    }
}

/// Reads the node's confirmation that it admitted this side (a response
/// of kind `Auth` naming the principal it sees), or its refusal.
async fn confirmed(
    stream: &mut (impl AsyncRead + Unpin),
    address: SocketAddr,
) -> io::Result<Principal> {
    let mut buf = BytesMut::new();
    let refused = |why: String| {
        io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("{address} refused this connection: {why}"),
        )
    };
    let frame = match read_auth_frame(stream, &mut buf, CONFIRMATION_BODY_MAX).await {
        Ok(Some(frame)) => frame,
        Ok(None) => return Err(refused("it closed the connection".to_owned())),
        // A refused certificate shows here, as the alert the node sent.
        Err(error) => return Err(tls_failure(error, &format!("the connection to {address}"))),
    };
    if frame.header.kind != MessageKind::Auth as u8 || !buf.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{address} did not confirm the connection; is it a Sluice node?"),
        ));
    }
    let text = String::from_utf8_lossy(&frame.body).into_owned();
    match frame.header.role {
        Role::Response => Principal::parse(&text).map_err(|error| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{address} confirmed the connection as {text:?}: {error}"),
            )
        }),
        _ => Err(refused(text)),
    }
}

/// `error` from a TLS stream, named: a failure of TLS itself (a
/// certificate refused by either side, an alert) becomes
/// `PermissionDenied`, which trying again does not fix; a failure of the
/// socket keeps its kind.
fn tls_failure(error: io::Error, what: &str) -> io::Error {
    let refused = error
        .get_ref()
        .is_some_and(|inner| inner.is::<rustls::Error>());
    let kind = if refused {
        io::ErrorKind::PermissionDenied
    } else {
        error.kind()
    };
    io::Error::new(kind, format!("{what} failed: {error}"))
}

/// The largest body of the node's confirmation or refusal.
const CONFIRMATION_BODY_MAX: usize = 1024;

/// A connection's byte stream: plain TCP, or TLS over it.
enum Stream {
    Plain(TcpStream),
    Client(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// One client connection: a writer task fed through `outgoing`, a reader
/// that hands responses to the calls waiting in `shared`.
#[derive(Debug)]
struct Connection {
    outgoing: mpsc::Sender<Bytes>,
    shared: Arc<Shared>,
    inflight: Semaphore,
    request_id_next: AtomicU64,
}

/// The calls waiting for responses and, once the connection has closed,
/// why. One lock, so that no call registers after the close.
#[derive(Debug, Default)]
struct Shared {
    state: Mutex<SharedState>,
}

#[derive(Debug, Default)]
struct SharedState {
    pending: HashMap<u64, oneshot::Sender<Frame>>,
    closed: Option<Arc<io::Error>>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, SharedState> {
        self.state.lock().expect("connection state lock poisoned")
    }

    fn is_closed(&self) -> bool {
        self.lock().closed.is_some()
    }

    fn register(
        &self,
        request_id: u64,
        waiter: oneshot::Sender<Frame>,
    ) -> Result<(), Arc<io::Error>> {
        let mut state = self.lock();
        if let Some(reason) = &state.closed {
            return Err(Arc::clone(reason));
        }
        let previous = state.pending.insert(request_id, waiter);
        assert!(previous.is_none(), "request id {request_id} reused");
        Ok(())
    }

    fn forget(&self, request_id: u64) {
        self.lock().pending.remove(&request_id);
    }

    /// Hands `frame` to the call waiting for it; a call that gave up has
    /// left no waiter, and its late response is dropped.
    fn complete(&self, frame: Frame) {
        let waiter = self.lock().pending.remove(&frame.header.request_id);
        match waiter {
            Some(waiter) => drop(waiter.send(frame)),
            None => debug!(
                request_id = frame.header.request_id,
                "late response dropped"
            ),
        }
    }

    /// Records why the connection closed and fails every waiting call.
    fn close(&self, reason: io::Error) {
        let mut state = self.lock();
        state.closed.get_or_insert(Arc::new(reason));
        state.pending.clear();
    }

    fn reason(&self) -> Arc<io::Error> {
        let closed = self.lock().closed.clone();
        closed.unwrap_or_else(|| Arc::new(io::Error::other("the connection is closing")))
    }
}

/// Removes a call's waiter when the call ends in any way, including by
/// being dropped at its timeout.
struct PendingGuard<'a> {
    shared: &'a Shared,
    request_id: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.shared.forget(self.request_id);
    }
}

impl Connection {
    fn start(stream: Stream, peer: SocketAddr, config: &TcpConfig) -> Arc<Connection> {
        let (outgoing, frames) = mpsc::channel(config.inflight_per_connection_max);
        let shared = Arc::new(Shared::default());
        let peer = Some(peer);
        match stream {
            Stream::Plain(stream) => {
                let (read, write) = stream.into_split();
                tokio::spawn(run_client(read, write, frames, Arc::clone(&shared), peer));
            }
            Stream::Client(stream) => {
                let (read, write) = tokio::io::split(stream);
                tokio::spawn(run_client(read, write, frames, Arc::clone(&shared), peer));
            }
        }
        Arc::new(Connection {
            outgoing,
            shared,
            inflight: Semaphore::new(config.inflight_per_connection_max),
            request_id_next: AtomicU64::new(0),
        })
    }

    async fn call(
        &self,
        source: NodeId,
        target: NodeId,
        request: Request,
    ) -> Result<Bytes, TransportError> {
        let closed = |source: Arc<io::Error>| TransportError::Closed { target, source };
        let _permit = self.inflight.acquire().await.expect("never closed");
        let request_id = self.request_id_next.fetch_add(1, Ordering::Relaxed);
        let (waiter, response) = oneshot::channel();
        let _traced = request.kind == MessageKind::Client as u8;
        if _traced {
            sluice_model::stage!(request_id, ClientCall);
        }
        self.shared.register(request_id, waiter).map_err(closed)?;
        let _guard = PendingGuard {
            shared: &self.shared,
            request_id,
        };
        let header = Header {
            role: Role::Request,
            kind: request.kind,
            group: request.group,
            request_id,
            source,
        };
        let mut frame = BytesMut::new();
        wire::encode_into(&mut frame, &header, &request.body);
        if self.outgoing.send(frame.freeze()).await.is_err() {
            return Err(closed(self.shared.reason()));
        }
        let Ok(frame) = response.await else {
            return Err(closed(self.shared.reason()));
        };
        if _traced {
            sluice_model::stage!(request_id, ClientDone);
        }
        match frame.header.role {
            Role::Response => Ok(frame.body),
            Role::Failure => Err(TransportError::Remote {
                target,
                message: String::from_utf8_lossy(&frame.body).into_owned(),
            }),
            Role::Request => unreachable!("the client read loop refuses requests"),
        }
    }
}

/// Runs one client connection until either direction fails or the
/// transport drops it, then fails the calls still waiting.
async fn run_client(
    read: impl AsyncRead + Unpin,
    write: impl AsyncWrite + Unpin,
    frames: mpsc::Receiver<Bytes>,
    shared: Arc<Shared>,
    peer: Option<SocketAddr>,
) {
    let result = tokio::select! {
        result = write_loop(write, frames) => result.map(|()| "this node dropped the connection"),
        result = client_read_loop(read, &shared) => result.map(|()| "the peer closed the connection"),
    };
    let reason = match result {
        Ok(why) => io::Error::new(io::ErrorKind::ConnectionAborted, why),
        Err(error) => {
            warn!(peer = ?peer, reason = %error, "closing the connection");
            error
        }
    };
    shared.close(reason);
}

/// Reads responses until the stream ends or breaks. A failure is recorded
/// as the connection's close reason before this returns, so that a call
/// whose send fails once the writer is dropped (right after) reports it.
async fn client_read_loop(read: impl AsyncRead + Unpin, shared: &Shared) -> io::Result<()> {
    let result = client_read_frames(read, shared).await;
    if let Err(error) = &result {
        shared.close(io::Error::new(error.kind(), error.to_string()));
    }
    result
}

async fn client_read_frames(mut read: impl AsyncRead + Unpin, shared: &Shared) -> io::Result<()> {
    let mut buf = BytesMut::new();
    while let Some(frame) = read_frame(&mut read, &mut buf).await? {
        if frame.header.role == Role::Request && frame.header.kind == MessageKind::Auth as u8 {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "the node requires authentication: configure the cluster secret \
                 (--secret-file) on this side too",
            ));
        }
        if frame.header.role == Role::Request {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the server sent a request on a client connection; it is not a Sluice node",
            ));
        }
        if frame.header.kind == MessageKind::Client as u8 {
            sluice_model::stage!(frame.header.request_id, ClientRead);
        }
        shared.complete(frame);
    }
    Ok(())
}

/// Writes each frame from `frames`, whole, until the senders are gone;
/// the frames already queued when it wakes go out together, small ones
/// copied into one write. Frames are never cut: a call that gives up has
/// handed over its frame already or not at all.
async fn write_loop(
    mut write: impl AsyncWrite + Unpin,
    mut frames: mpsc::Receiver<Bytes>,
) -> io::Result<()> {
    let mut batch = BytesMut::new();
    while let Some(mut frame) = frames.recv().await {
        loop {
            if frame.len() >= COALESCE_BYTES_MAX {
                flush(&mut write, &mut batch).await?;
                write.write_all(&frame).await?;
                #[cfg(feature = "stage-trace")]
                trace_written(&frame);
            } else {
                batch.extend_from_slice(&frame);
            }
            if batch.len() >= COALESCE_BYTES_MAX {
                flush(&mut write, &mut batch).await?;
            }
            match frames.try_recv() {
                Ok(next) => frame = next,
                Err(_) => break,
            }
        }
        flush(&mut write, &mut batch).await?;
        // TLS holds what it could not send at once until flushed; plain
        // TCP flushes at no cost.
        write.flush().await?;
    }
    Ok(())
}

async fn flush(write: &mut (impl AsyncWrite + Unpin), batch: &mut BytesMut) -> io::Result<()> {
    if !batch.is_empty() {
        write.write_all(batch).await?;
        #[cfg(feature = "stage-trace")]
        trace_written(batch);
        batch.clear();
    }
    Ok(())
}

#[cfg(feature = "stage-trace")]
tokio::task_local! {
    /// The request id of the client request a handler serves.
    pub static TRACE_REQUEST: u64;
}

/// Records the client frames in `frames` (whole frames, back to back) as
/// written.
#[cfg(feature = "stage-trace")]
fn trace_written(mut frames: &[u8]) {
    while frames.len() >= wire::HEADER_SIZE {
        let length = u32::from_le_bytes(frames[4..8].try_into().unwrap()) as usize;
        if frames[13] == MessageKind::Client as u8 {
            let request_id = u64::from_le_bytes(frames[20..28].try_into().unwrap());
            if frames[14] == 0 {
                sluice_model::stage!(request_id, ClientWritten);
            } else {
                sluice_model::stage!(request_id, ServerWritten);
            }
        }
        frames = &frames[(wire::HEADER_SIZE + length).min(frames.len())..];
    }
}

/// Reads what has arrived into `buf`; 0 at the end of the stream. A TLS
/// peer that closes without TLS's close_notify ends the stream too: frames
/// carry their own lengths and checksums, so a cut inside a frame is still
/// caught (as a truncated frame) and one between frames loses nothing.
async fn read_some(
    read: &mut (impl AsyncRead + Unpin),
    buf: &mut impl bytes::BufMut,
) -> io::Result<usize> {
    match read.read_buf(buf).await {
        Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => Ok(0),
        result => result,
    }
}

/// Reads the next frame; `None` at a clean end of the stream (between
/// frames). A stream cut inside a frame, or a frame the codec refuses, is
/// an error that names the reason.
async fn read_frame(
    read: &mut (impl AsyncRead + Unpin),
    buf: &mut BytesMut,
) -> io::Result<Option<Frame>> {
    loop {
        let decoded =
            wire::decode(buf).map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error))?;
        if let Some(frame) = decoded {
            return Ok(Some(frame));
        }
        buf.reserve(READ_CHUNK_SIZE);
        if read_some(read, buf).await? == 0 {
            if buf.is_empty() {
                return Ok(None);
            }
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "truncated frame: the peer closed the connection after {} bytes of a frame",
                    buf.len()
                ),
            ));
        }
    }
}

/// The largest body of a handshake frame: a proof and a challenge.
const AUTH_BODY_MAX: usize = 2 * auth::NONCE_SIZE;

/// [`read_frame`] for the authentication handshake: a frame that declares a
/// body larger than `body_max` is refused before its body is read, so a
/// peer that has proved nothing cannot make a node buffer a large frame.
async fn read_auth_frame(
    read: &mut (impl AsyncRead + Unpin),
    buf: &mut BytesMut,
    body_max: usize,
) -> io::Result<Option<Frame>> {
    while wire::declared_body_size(buf).is_none() {
        buf.reserve(64);
        if read_some(read, buf).await? == 0 {
            break;
        }
    }
    if let Some(size) = wire::declared_body_size(buf).filter(|&size| size > body_max) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "the peer's handshake frame declares a body of {size} bytes; one has at most \
                 {body_max}: it is not authenticating the way this side is configured to, or \
                 speaks another version"
            ),
        ));
    }
    read_frame(read, buf).await
}

pub use sluice_model::constants::CONNECTIONS_MAX;

pub use sluice_model::constants::CONNECTIONS_PER_ADDRESS_MAX;

pub use sluice_model::constants::IDLE_TIME_MAX;

pub use sluice_model::constants::FRAME_READ_TIME_MAX;

pub use sluice_model::constants::UNAUTHENTICATED_READ_BYTES_MAX;

/// Frames up to this size are read without taking from the budget above:
/// each connection reads at most this much beyond the frames the budget
/// covers, so the budget, the connection bounds and this bound the memory
/// of frames being read.
pub const UNBUDGETED_FRAME_SIZE_MAX: usize = READ_CHUNK_SIZE;

/// The shortest pause between two warnings about refused connections: a
/// flood of them is logged as a count, not line by line.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(1);

/// What a [`TcpServer`] admits and how long it waits: bounds on the
/// connections and memory that peers which have proved nothing can hold.
/// [`ServerConfig::default`] takes the `*_MAX` constants above.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The cluster secret every connection must prove before its requests
    /// are read; `None` admits every connection (see [`crate::auth`]). Not
    /// used with TLS.
    pub secret: Option<Secret>,
    /// TLS material with this node's certificate: every connection is
    /// TLS, and its peer authenticates by certificate or token (see
    /// [`crate::tls`]).
    pub tls: Option<Arc<Tls>>,
    /// Checks the tokens of clients without a certificate; without one,
    /// tokens are refused.
    pub authenticator: Option<Arc<dyn Authenticator>>,
    /// Connections held at once; further ones are closed as they are
    /// accepted (logged, counted in [`ServerStats::connections_refused`]).
    pub connections_max: usize,
    /// Connections from one IP address held at once; further ones are
    /// closed as they are accepted.
    pub connections_per_address_max: usize,
    /// A connection on which nothing happens for this long (no byte read
    /// or written, no request being handled) is closed.
    pub idle_time_max: Duration,
    /// Once the first byte of a frame is read, the whole frame must arrive
    /// within this (time spent waiting for the read budget below does not
    /// count); a slower peer is closed.
    pub frame_read_time_max: Duration,
    /// Bytes of frames larger than [`UNBUDGETED_FRAME_SIZE_MAX`] that
    /// connections which have not authenticated may be reading at once. A
    /// frame's declared size is taken from this budget before its body is
    /// read, and given back once it is whole; a connection that finds the
    /// budget spent waits (reading nothing more) until it is given back.
    /// Authenticated connections (with a secret, once proved) do not use
    /// it. At least one frame of the largest size.
    pub unauthenticated_read_bytes_max: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            secret: None,
            tls: None,
            authenticator: None,
            connections_max: CONNECTIONS_MAX,
            connections_per_address_max: CONNECTIONS_PER_ADDRESS_MAX,
            idle_time_max: IDLE_TIME_MAX,
            frame_read_time_max: FRAME_READ_TIME_MAX,
            unauthenticated_read_bytes_max: UNAUTHENTICATED_READ_BYTES_MAX,
        }
    }
}

impl ServerConfig {
    /// Checks that every bound admits something.
    fn check(&self) -> io::Result<()> {
        let invalid = |message: String| Err(io::Error::new(io::ErrorKind::InvalidInput, message));
        // TLS material without a certificate of this side's cannot serve:
        // refuse it rather than serve in clear.
        if let Some(tls) = self.tls.as_ref().filter(|tls| !tls.has_identity()) {
            return invalid(format!(
                "the TLS material {:?} has no certificate and key of this node's; a node serves \
                 TLS with its own certificate (node-ID.pem, node-ID-key.pem)",
                tls.files()
            ));
        }
        if self.connections_max == 0 || self.connections_per_address_max == 0 {
            return invalid(format!(
                "connections_max ({}) and connections_per_address_max ({}) must be at least 1",
                self.connections_max, self.connections_per_address_max
            ));
        }
        if self.idle_time_max.is_zero() || self.frame_read_time_max.is_zero() {
            return invalid(format!(
                "idle_time_max ({:?}) and frame_read_time_max ({:?}) must be positive",
                self.idle_time_max, self.frame_read_time_max
            ));
        }
        let budget_range = wire::FRAME_SIZE_MAX..=Semaphore::MAX_PERMITS;
        if !budget_range.contains(&self.unauthenticated_read_bytes_max) {
            return invalid(format!(
                "unauthenticated_read_bytes_max ({}) must be between {} (one frame of the \
                 largest size) and {}",
                self.unauthenticated_read_bytes_max,
                budget_range.start(),
                budget_range.end()
            ));
        }
        Ok(())
    }
}

/// Counts of what a [`TcpServer`] admitted and closed, for metrics and
/// tests. Counters only grow; `connections_open` is a gauge.
#[derive(Debug, Default)]
pub struct ServerStats {
    open: AtomicU64,
    refused: AtomicU64,
    closed_idle: AtomicU64,
    closed_slow_frame: AtomicU64,
}

impl ServerStats {
    /// Connections held now.
    pub fn connections_open(&self) -> u64 {
        self.open.load(Ordering::Relaxed)
    }

    /// Connections closed at accept because a connection bound was
    /// reached.
    pub fn connections_refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Connections closed after [`ServerConfig::idle_time_max`] with
    /// nothing happening.
    pub fn closed_idle(&self) -> u64 {
        self.closed_idle.load(Ordering::Relaxed)
    }

    /// Connections closed because a frame did not arrive whole within
    /// [`ServerConfig::frame_read_time_max`].
    pub fn closed_slow_frame(&self) -> u64 {
        self.closed_slow_frame.load(Ordering::Relaxed)
    }
}

/// What every connection of one server shares: its bounds, counters, the
/// open connections by address, and the read budget.
#[derive(Debug)]
struct ServerShared {
    config: ServerConfig,
    secret: Option<Arc<Secret>>,
    stats: Arc<ServerStats>,
    admitted: Mutex<Admitted>,
    budget: Arc<Semaphore>,
    refusals: Mutex<RefusalLog>,
}

#[derive(Debug, Default)]
struct Admitted {
    total: usize,
    by_address: HashMap<IpAddr, usize>,
}

#[derive(Debug, Default)]
struct RefusalLog {
    logged_at: Option<Instant>,
    unlogged: u64,
}

/// Which bound refused a connection.
#[derive(Debug, Clone, Copy)]
enum Refusal {
    Node { max: usize },
    Address { max: usize },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Node { max } => write!(
                f,
                "the node holds {max} connections, its bound (--connections-max)"
            ),
            Refusal::Address { max } => write!(
                f,
                "the node holds {max} connections from this address, its bound \
                 (--connections-per-address-max)"
            ),
        }
    }
}

/// A held connection's place in the counts; gives it back when dropped.
struct Slot {
    server: Arc<ServerShared>,
    address: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut admitted = self.server.admitted.lock().expect("admitted lock poisoned");
        admitted.total -= 1;
        if let Some(count) = admitted.by_address.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                admitted.by_address.remove(&self.address);
            }
        }
        self.server.stats.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl ServerShared {
    /// Takes a slot for a connection from `address`, or says which bound
    /// refuses it.
    fn admit(self: &Arc<Self>, address: IpAddr) -> Result<Slot, Refusal> {
        let mut admitted = self.admitted.lock().expect("admitted lock poisoned");
        if admitted.total >= self.config.connections_max {
            return Err(Refusal::Node {
                max: self.config.connections_max,
            });
        }
        let from_address = admitted.by_address.entry(address).or_insert(0);
        if *from_address >= self.config.connections_per_address_max {
            return Err(Refusal::Address {
                max: self.config.connections_per_address_max,
            });
        }
        *from_address += 1;
        admitted.total += 1;
        self.stats.open.fetch_add(1, Ordering::Relaxed);
        Ok(Slot {
            server: Arc::clone(self),
            address,
        })
    }

    /// Counts a refused connection and logs it, at most once per
    /// [`REFUSAL_LOG_INTERVAL`] (with how many went unlogged).
    fn refused(&self, peer: SocketAddr, refusal: Refusal) {
        self.stats.refused.fetch_add(1, Ordering::Relaxed);
        let mut log = self.refusals.lock().expect("refusal log lock poisoned");
        let now = Instant::now();
        if log
            .logged_at
            .is_some_and(|at| now.duration_since(at) < REFUSAL_LOG_INTERVAL)
        {
            log.unlogged += 1;
            return;
        }
        let unlogged = std::mem::take(&mut log.unlogged);
        log.logged_at = Some(now);
        drop(log);
        warn!(
            %peer,
            reason = %refusal,
            refused_since_last_warning = unlogged,
            "refused a connection; raise the bound if the load is legitimate"
        );
    }
}

/// Serves a [`Handler`] on a listener until shut down or dropped; dropping
/// it closes the listener and every connection.
#[derive(Debug)]
pub struct TcpServer {
    local_address: SocketAddr,
    stats: Arc<ServerStats>,
    task: JoinHandle<()>,
}

impl TcpServer {
    /// Starts serving `handler` on `listener` as node `node` (the id its
    /// responses carry), with the default bounds. Must be called inside a
    /// tokio runtime.
    pub fn serve<H: Handler>(listener: TcpListener, node: NodeId, handler: H) -> io::Result<Self> {
        TcpServer::serve_with(listener, node, handler, ServerConfig::default())
    }

    /// [`TcpServer::serve`], admitting only connections that answer a
    /// challenge with `secret` when one is given (see [`crate::auth`]).
    pub fn serve_secured<H: Handler>(
        listener: TcpListener,
        node: NodeId,
        handler: H,
        secret: Option<Secret>,
    ) -> io::Result<Self> {
        let config = ServerConfig {
            secret,
            ..ServerConfig::default()
        };
        TcpServer::serve_with(listener, node, handler, config)
    }

    /// [`TcpServer::serve`] with the secret and bounds of `config`; fails
    /// if a bound admits nothing.
    pub fn serve_with<H: Handler>(
        listener: TcpListener,
        node: NodeId,
        handler: H,
        config: ServerConfig,
    ) -> io::Result<Self> {
        config.check()?;
        let local_address = listener.local_addr()?;
        let stats = Arc::new(ServerStats::default());
        let shared = Arc::new(ServerShared {
            secret: config.secret.clone().map(Arc::new),
            budget: Arc::new(Semaphore::new(config.unauthenticated_read_bytes_max)),
            config,
            stats: Arc::clone(&stats),
            admitted: Mutex::new(Admitted::default()),
            refusals: Mutex::new(RefusalLog::default()),
        });
        let task = tokio::spawn(accept_loop(listener, node, Arc::new(handler), shared));
        Ok(TcpServer {
            local_address,
            stats,
            task,
        })
    }

    /// The address the server listens on.
    pub fn local_address(&self) -> SocketAddr {
        self.local_address
    }

    /// The server's counters (shared: they keep counting).
    pub fn stats(&self) -> Arc<ServerStats> {
        Arc::clone(&self.stats)
    }

    /// Stops accepting, closes every connection and returns once they are
    /// closed. Calls in flight on them fail with `Closed` at the caller.
    pub async fn shutdown(mut self) {
        self.task.abort();
        if let Err(error) = (&mut self.task).await {
            log_task_end(&error);
        }
    }
}

impl Drop for TcpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn log_task_end(error: &JoinError) {
    if error.is_panic() {
        warn!(%error, "a server task panicked");
    }
}

async fn accept_loop<H: Handler>(
    listener: TcpListener,
    node: NodeId,
    handler: Arc<H>,
    server: Arc<ServerShared>,
) {
    // Dropping the set (when this task is aborted) aborts every connection.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => match server.admit(peer.ip()) {
                    Ok(slot) => {
                        let handler = Arc::clone(&handler);
                        connections.spawn(serve_connection(stream, peer, node, handler, slot));
                    }
                    Err(refusal) => {
                        // Closed before anything is read: the peer sees
                        // the connection end.
                        drop(stream);
                        server.refused(peer, refusal);
                    }
                },
                Err(error) => {
                    warn!(%error, "accept failed; retrying after {ACCEPT_RETRY_DELAY:?}");
                    tokio::time::sleep(ACCEPT_RETRY_DELAY).await;
                }
            },
            Some(Err(error)) = connections.join_next(), if !connections.is_empty() => {
                log_task_end(&error);
            }
        }
    }
}

/// Serves one connection until the peer closes it, breaks the protocol or
/// overstays a bound; `slot` is its place in the connection counts.
async fn serve_connection<H: Handler>(
    stream: TcpStream,
    peer: SocketAddr,
    node: NodeId,
    handler: Arc<H>,
    slot: Slot,
) {
    let server = Arc::clone(&slot.server);
    if let Err(error) = stream.set_nodelay(true) {
        debug!(%peer, %error, "cannot set TCP_NODELAY");
    }
    let connection = ServedConnection {
        peer,
        node,
        server: &server,
    };
    let result = match server
        .config
        .tls
        .as_ref()
        .and_then(|tls| tls.server_config())
    {
        Some(tls) => connection.serve_tls(stream, tls, &handler).await,
        None => connection.serve_plain(stream, &handler).await,
    };
    match result {
        Ok(()) => debug!(%peer, "the peer closed the connection"),
        Err(Closed::Idle(after)) => {
            server.stats.closed_idle.fetch_add(1, Ordering::Relaxed);
            debug!(%peer, "closing a connection idle for {after:?}");
        }
        Err(Closed::SlowFrame { after, read }) => {
            server
                .stats
                .closed_slow_frame
                .fetch_add(1, Ordering::Relaxed);
            warn!(
                %peer,
                "closing the connection: {read} bytes of a frame arrived in {after:?}, and a \
                 frame must arrive whole within that (--frame-read-timeout-ms)"
            );
        }
        Err(Closed::Failed(error)) => warn!(%peer, reason = %error, "closing the connection"),
        Err(Closed::Refused) => {}
    }
    drop(slot);
}

/// One accepted connection being served.
struct ServedConnection<'a> {
    peer: SocketAddr,
    node: NodeId,
    server: &'a Arc<ServerShared>,
}

impl ServedConnection<'_> {
    /// A connection without TLS: the cluster secret's handshake if the node
    /// has a secret (nodes prove their id, clients are anonymous), then
    /// requests.
    async fn serve_plain<H: Handler>(
        &self,
        mut stream: TcpStream,
        handler: &Arc<H>,
    ) -> Result<(), Closed> {
        let peer = self.peer;
        let mut buf = BytesMut::new();
        let mut principal = Principal::Anonymous;
        if let Some(secret) = &self.server.secret {
            let challenged = challenge_peer(&mut stream, &mut buf, self.node, secret);
            let refused = match tokio::time::timeout(AUTH_TIMEOUT, challenged).await {
                Ok(Ok(source)) => {
                    debug!(%peer, source, "the peer authenticated");
                    if source != 0 {
                        principal = Principal::Node(source);
                    }
                    None
                }
                Ok(Err(error)) => Some(error.to_string()),
                Err(_elapsed) => Some(format!(
                    "no answer to the challenge within {AUTH_TIMEOUT:?}"
                )),
            };
            if let Some(reason) = refused {
                warn!(%peer, %reason, "refused a connection that did not authenticate");
                close_gracefully(&mut stream).await;
                return Err(Closed::Refused);
            }
        }
        // An authenticated peer is a member of the cluster: its frames do
        // not wait for the budget that bounds what strangers make the node
        // hold.
        let budget = self
            .server
            .secret
            .is_none()
            .then(|| Arc::clone(&self.server.budget));
        let reader = FrameReader::new(buf, budget);
        let (read, write) = stream.into_split();
        let connection = Authenticated {
            peer,
            node: self.node,
            principal,
            raft_from_nodes_only: self.server.secret.is_some(),
            flush: false,
        };
        connection
            .serve(read, write, reader, handler, &self.server.config)
            .await
    }

    /// A TLS connection: the handshake, the principal from the peer's
    /// certificate or from the token it presents next, the confirmation
    /// naming it, then requests. A refusal is logged and the connection
    /// closed.
    async fn serve_tls<H: Handler>(
        &self,
        stream: TcpStream,
        config: Arc<rustls::ServerConfig>,
        handler: &Arc<H>,
    ) -> Result<(), Closed> {
        let peer = self.peer;
        let mut buf = BytesMut::new();
        let accepted = async {
            let mut stream = TlsAcceptor::from(config)
                .accept(stream)
                .await
                .map_err(|error| (None, format!("the TLS handshake failed: {error}")))?;
            match self.authenticate(&mut stream, &mut buf).await {
                Ok(principal) => Ok((stream, principal)),
                Err(reason) => Err((Some(stream), reason)),
            }
        };
        let (mut stream, principal) = match tokio::time::timeout(AUTH_TIMEOUT, accepted).await {
            Ok(Ok(accepted)) => accepted,
            Ok(Err((stream, reason))) => {
                warn!(%peer, %reason, "refused a TLS connection");
                if let Some(mut stream) = stream {
                    self.send_refusal(&mut stream, &reason).await;
                }
                return Err(Closed::Refused);
            }
            Err(_elapsed) => {
                warn!(
                    %peer,
                    "refused a TLS connection: the handshake and authentication did not \
                     finish within {AUTH_TIMEOUT:?}"
                );
                return Err(Closed::Refused);
            }
        };
        debug!(%peer, %principal, "the peer authenticated");
        let confirmation = Header {
            role: Role::Response,
            kind: MessageKind::Auth as u8,
            group: 0,
            request_id: 0,
            source: self.node,
        };
        let mut frame = BytesMut::new();
        wire::encode_into(&mut frame, &confirmation, principal.to_string().as_bytes());
        stream.write_all(&frame).await?;
        stream.flush().await?;
        let reader = FrameReader::new(buf, None);
        let (read, write) = tokio::io::split(stream);
        let connection = Authenticated {
            peer,
            node: self.node,
            principal,
            raft_from_nodes_only: true,
            flush: true,
        };
        connection
            .serve(read, write, reader, handler, &self.server.config)
            .await
    }

    /// Who the peer of a TLS connection is: its certificate's principal,
    /// or, without a certificate, the principal of the token it sends
    /// first. Why not, if neither.
    async fn authenticate(
        &self,
        stream: &mut tokio_rustls::server::TlsStream<TcpStream>,
        buf: &mut BytesMut,
    ) -> Result<Principal, String> {
        let certificate = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first());
        if let Some(certificate) = certificate {
            return principal_of(certificate)
                .map_err(|reason| format!("its certificate names no principal: {reason}"));
        }
        let frame = read_auth_frame(stream, buf, TOKEN_FRAME_BODY_MAX)
            .await
            .map_err(|error| format!("no token frame: {error}"))?
            .ok_or("it presented no certificate and closed before sending a token")?;
        if frame.header.kind != MessageKind::Auth as u8 || frame.header.role != Role::Request {
            return Err(
                "it presented no client certificate and no token; a client needs one or \
                 the other (--tls-dir with client.pem, or --token)"
                    .to_owned(),
            );
        }
        let token = auth::decode_token_frame(&frame.body)?;
        let Some(authenticator) = &self.server.config.authenticator else {
            return Err("this node accepts no tokens; present a client certificate".to_owned());
        };
        authenticator
            .token(&token)
            .map_err(|reason| format!("token {} refused: {reason}", token.id()))
    }

    /// Tells a peer refused after the handshake why, then closes.
    async fn send_refusal(
        &self,
        stream: &mut tokio_rustls::server::TlsStream<TcpStream>,
        reason: &str,
    ) {
        let header = Header {
            role: Role::Failure,
            kind: MessageKind::Auth as u8,
            group: 0,
            request_id: 0,
            source: self.node,
        };
        let body = &reason.as_bytes()[..reason.len().min(CONFIRMATION_BODY_MAX)];
        let mut frame = BytesMut::new();
        wire::encode_into(&mut frame, &header, body);
        if stream.write_all(&frame).await.is_ok() {
            let _ = stream.flush().await;
        }
        close_gracefully(stream).await;
    }
}

/// Closes gracefully: a close with the peer's bytes still unread would
/// reset the connection, and the peer could lose the frame that tells it
/// why it was refused.
async fn close_gracefully(stream: &mut (impl AsyncRead + AsyncWrite + Unpin)) {
    let _ = stream.shutdown().await;
    let mut sink = [0u8; 4096];
    let drain = async { while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {} };
    let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
}

/// A connection whose peer is known: every request it sends is handled as
/// from `principal`.
struct Authenticated {
    peer: SocketAddr,
    node: NodeId,
    principal: Principal,
    /// Whether Raft's messages are refused unless the principal is the
    /// node the frame names as its source (on a node that authenticates
    /// connections at all).
    raft_from_nodes_only: bool,
    /// Whether written bytes need a flush (TLS) to leave.
    flush: bool,
}

/// Why the server closed a connection.
#[derive(Debug)]
enum Closed {
    /// Nothing happened for this long.
    Idle(Duration),
    /// A frame was still incomplete this long after its first byte.
    SlowFrame { after: Duration, read: usize },
    /// The socket failed or the peer broke the protocol.
    Failed(io::Error),
    /// The peer did not authenticate (logged already).
    Refused,
}

impl From<io::Error> for Closed {
    fn from(error: io::Error) -> Self {
        Closed::Failed(error)
    }
}

/// Reads a server connection's frames, one at a time, into a buffer that
/// grows as bytes arrive (never from a frame's declared length). With a
/// budget, a frame larger than [`UNBUDGETED_FRAME_SIZE_MAX`] takes its
/// size from it before more of it is read, and gives it back once whole.
/// [`FrameReader::next`] may be cancelled at any await and called again:
/// its state lives here.
struct FrameReader {
    buf: BytesMut,
    /// When the first byte of the frame being read arrived, or when it got
    /// its budget; `None` between frames.
    started: Option<Instant>,
    budget: Option<Arc<Semaphore>>,
    permit: Option<OwnedSemaphorePermit>,
    /// Reads that returned bytes, so far: activity inside a frame.
    reads: u64,
}

impl FrameReader {
    fn new(buf: BytesMut, budget: Option<Arc<Semaphore>>) -> FrameReader {
        let started = (!buf.is_empty()).then(Instant::now);
        FrameReader {
            buf,
            started,
            budget,
            permit: None,
            reads: 0,
        }
    }

    /// The next frame; `None` at a clean end of the stream (between
    /// frames).
    async fn next(&mut self, read: &mut (impl AsyncRead + Unpin)) -> io::Result<Option<Frame>> {
        loop {
            let decoded = wire::decode(&mut self.buf)
                .map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error))?;
            if let Some(frame) = decoded {
                self.permit = None;
                self.started = (!self.buf.is_empty()).then(Instant::now);
                return Ok(Some(frame));
            }
            self.take_budget().await;
            // Room for one read; the buffer grows only as bytes arrive
            // (pages a read does not fill are never touched).
            self.buf.reserve(READ_CHUNK_SIZE);
            let mut limited = (&mut self.buf).limit(READ_CHUNK_SIZE);
            if read_some(read, &mut limited).await? == 0 {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "truncated frame: the peer closed the connection after {} bytes of a \
                         frame",
                        self.buf.len()
                    ),
                ));
            }
            self.reads += 1;
            self.started.get_or_insert_with(Instant::now);
        }
    }

    /// Waits until the frame being read holds its share of the budget, if
    /// it needs one (a frame whose header says it is larger than
    /// [`UNBUDGETED_FRAME_SIZE_MAX`], on a connection with a budget).
    async fn take_budget(&mut self) {
        let Some(budget) = &self.budget else { return };
        if self.permit.is_some() {
            return;
        }
        // `decode` has refused a declared size above the frame bound.
        let Some(body_size) = wire::declared_body_size(&self.buf) else {
            return;
        };
        let frame_size = HEADER_SIZE + body_size;
        if frame_size <= UNBUDGETED_FRAME_SIZE_MAX {
            return;
        }
        let permits = u32::try_from(frame_size).expect("a frame's size fits in u32");
        let permit = Arc::clone(budget)
            .acquire_many_owned(permits)
            .await
            .expect("the budget is never closed");
        self.permit = Some(permit);
        // The peer was not slow while the node made it wait.
        self.started = Some(Instant::now());
    }

    /// Forgets how long the frame being read has taken so far: reading
    /// paused on the node's side, not the peer's.
    fn restart_clock(&mut self) {
        if self.started.is_some() {
            self.started = Some(Instant::now());
        }
    }
}

/// Serves one connection's requests in this one task: reads frames, runs
/// each request's handler here (its future polled beside the others, no
/// task per request), and writes responses as they are ready, all that
/// are ready in one write. Reading waits while
/// [`INFLIGHT_PER_CONNECTION_MAX`] requests are being handled or more than
/// [`RESPONSE_BYTES_SOFT_MAX`] of responses wait to be written (a peer
/// that sends but does not read is not answered into unbounded memory).
/// A connection on which nothing happens for `config.idle_time_max`
/// while no request is handled, or whose frame takes longer than
/// `config.frame_read_time_max` to arrive, is closed.
impl Authenticated {
    async fn serve<H: Handler>(
        &self,
        mut read: impl AsyncRead + Unpin,
        mut write: impl AsyncWrite + Unpin,
        mut reader: FrameReader,
        handler: &Arc<H>,
        config: &ServerConfig,
    ) -> Result<(), Closed> {
        let node = self.node;
        // Dropping the set (when the connection ends) drops unfinished calls
        // (and aborts the spawned ones).
        let mut calls = FuturesUnordered::<BoxFuture<'_, Option<Answered>>>::new();
        // Responses encoded and not yet written, whole frames back to back.
        let mut out = BytesMut::new();
        // Bytes written that TLS may still hold until a flush.
        let mut unflushed = false;
        let mut watchdog = Watchdog::new(config);
        let check = tokio::time::sleep(watchdog.tick);
        tokio::pin!(check);
        loop {
            let reading =
                calls.len() < INFLIGHT_PER_CONNECTION_MAX && out.len() <= RESPONSE_BYTES_SOFT_MAX;
            if !reading {
                reader.restart_clock();
            }
            tokio::select! {
                // Answers first, then writing them, then more requests: a
                // burst of answers goes out in one write.
                biased;
                Some(response) = calls.next(), if !calls.is_empty() => {
                    watchdog.activity += 1;
                    if let Some(response) = response {
                        encode_response(&mut out, node, response);
                    }
                }
                written = write_or_flush(&mut write, &out), if !out.is_empty() || unflushed => {
                    let written = written?;
                    if out.is_empty() {
                        unflushed = false;
                        continue;
                    }
                    if written == 0 {
                        return Err(io::Error::from(io::ErrorKind::WriteZero).into());
                    }
                    unflushed = self.flush;
                    watchdog.activity += 1;
                    #[cfg(feature = "stage-trace")]
                    trace_written(&out[..written]);
                    out.advance(written);
                }
                frame = reader.next(&mut read), if reading => {
                    watchdog.activity += 1;
                    let Some(frame) = frame? else {
                        return Ok(());
                    };
                    calls.push(self.call(handler, frame)?);
                }
                () = &mut check => {
                    let next = watchdog.check(config, &reader, reading, !calls.is_empty())?;
                    check.as_mut().reset(next);
                }
            }
        }
    }
}

/// Writes some of `out`, or, with nothing left to write, flushes.
async fn write_or_flush(write: &mut (impl AsyncWrite + Unpin), out: &[u8]) -> io::Result<usize> {
    if out.is_empty() {
        write.flush().await?;
        return Ok(0);
    }
    write.write(out).await
}

/// The bounds of one connection's time: closes a connection idle for too
/// long, or whose frame is too slow to arrive. Checked on a tick rather
/// than by a timer per frame, which would cost a timer update on every
/// request: a slow frame is caught within a quarter of its bound past it.
struct Watchdog {
    tick: Duration,
    /// Bumped by everything that happens; compared on each tick.
    activity: u64,
    activity_seen: u64,
    active_at: Instant,
}

impl Watchdog {
    fn new(config: &ServerConfig) -> Self {
        let tick = (config.frame_read_time_max.min(config.idle_time_max) / 4)
            .max(Duration::from_millis(1));
        Watchdog {
            tick,
            activity: 0,
            activity_seen: 0,
            active_at: Instant::now(),
        }
    }

    /// Checks both bounds; returns when to check next.
    fn check(
        &mut self,
        config: &ServerConfig,
        reader: &FrameReader,
        reading: bool,
        calls_pending: bool,
    ) -> Result<Instant, Closed> {
        let now = Instant::now();
        let activity = self.activity + reader.reads;
        if activity != self.activity_seen || calls_pending {
            self.activity_seen = activity;
            self.active_at = now;
        }
        let idle = now.duration_since(self.active_at);
        if idle >= config.idle_time_max {
            return Err(Closed::Idle(idle));
        }
        if let Some(started) = reader.started.filter(|_| reading) {
            let after = now.duration_since(started);
            if after >= config.frame_read_time_max {
                return Err(Closed::SlowFrame {
                    after,
                    read: reader.buf.len(),
                });
            }
        }
        Ok(now + self.tick)
    }
}

impl Authenticated {
    /// Starts handling one request frame: on the connection's task, or, for a
    /// large body, on a task of its own (decoding it is work another worker
    /// can do while the connection reads on). A Raft message from anyone but
    /// the node it names as its source is refused here (and logged), before
    /// any handler sees it.
    fn call<'a, H: Handler>(
        &self,
        handler: &'a Arc<H>,
        frame: Frame,
    ) -> Result<BoxFuture<'a, Option<Answered>>, Closed> {
        if frame.header.role != Role::Request {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "a {:?} frame arrived on a server connection",
                    frame.header.role
                ),
            )
            .into());
        }
        if frame.header.kind == MessageKind::Client as u8 {
            sluice_model::stage!(frame.header.request_id, ServerRead);
        } else if self.raft_from_nodes_only
            && self.principal != Principal::Node(frame.header.source)
        {
            let header = frame.header;
            warn!(
                peer = %self.peer,
                principal = %self.principal,
                kind = header.kind,
                source = header.source,
                "refused a Raft message: Raft messages are accepted only from the node the frame \
                 names as its source, authenticated as that node"
            );
            let refusal = HandlerError::new(format!(
                "refused: {} may not send Raft messages as node {}; only node {} may",
                self.principal, header.source, header.source
            ));
            return Ok(Box::pin(std::future::ready(Some((header, Err(refusal))))));
        }
        let caller = Caller {
            source: frame.header.source,
            principal: self.principal.clone(),
        };
        if frame.body.len() < SPAWN_BODY_BYTES_MIN {
            return Ok(Box::pin(answer(&**handler, caller, frame)));
        }
        let handler = Arc::clone(handler);
        let spawned = tokio::spawn(async move { answer(&*handler, caller, frame).await });
        Ok(Box::pin(AbortOnDrop(spawned).map(|joined| match joined {
            Ok(answered) => answered,
            Err(error) => {
                log_task_end(&error);
                None
            }
        })))
    }
}

/// Requests with a body of this size or more (batches of events, Raft
/// appends carrying entries) are handled on a task of their own; smaller
/// ones on the connection's task.
const SPAWN_BODY_BYTES_MIN: usize = 8 * 1024;

/// A spawned task, aborted when dropped unfinished.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Future for AbortOnDrop<T> {
    type Output = Result<T, JoinError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx)
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Sends a challenge, checks the answer, and proves this node to the peer
/// in turn (see [`crate::auth`]); returns the node id the peer proved.
/// Bytes the peer sent after its answer stay in `buf`.
async fn challenge_peer(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    node: NodeId,
    secret: &Secret,
) -> io::Result<NodeId> {
    let challenge = auth::challenge()?;
    let header = Header {
        role: Role::Request,
        kind: MessageKind::Auth as u8,
        group: 0,
        request_id: 0,
        source: node,
    };
    let mut frame = BytesMut::new();
    wire::encode_into(&mut frame, &header, &challenge);
    stream.write_all(&frame).await?;
    let Some(answer) = read_auth_frame(stream, buf, AUTH_BODY_MAX).await? else {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the peer closed the connection instead of answering the challenge",
        ));
    };
    if answer.header.kind != MessageKind::Auth as u8 || answer.header.role != Role::Response {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "the peer sent a {:?} of kind {} instead of answering the challenge; \
                 it has no cluster secret configured",
                answer.header.role, answer.header.kind
            ),
        ));
    }
    let source = answer.header.source;
    if answer.body.len() != 2 * auth::NONCE_SIZE {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "the peer (claiming node {source}) answered the challenge with {} bytes, not \
                 its proof and a challenge of its own ({} bytes); is it an older version?",
                answer.body.len(),
                2 * auth::NONCE_SIZE
            ),
        ));
    }
    let (proof, theirs) = answer.body.split_at(auth::NONCE_SIZE);
    if !secret.verify(&challenge, source, proof) {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "the peer (claiming node {source}) answered with a wrong proof: its cluster secret differs"
            ),
        ));
    }
    let header = Header {
        role: Role::Response,
        kind: MessageKind::Auth as u8,
        group: 0,
        request_id: answer.header.request_id,
        source: node,
    };
    let mut frame = BytesMut::new();
    wire::encode_into(&mut frame, &header, &secret.node_proof(theirs, node));
    stream.write_all(&frame).await?;
    Ok(source)
}

/// Reads a node's challenge, answers it as node `source` with a challenge
/// of its own, and checks the node's proof: nothing is sent on a
/// connection to a node that has not proved it holds the secret.
async fn answer_challenge(
    stream: &mut TcpStream,
    source: NodeId,
    secret: &Secret,
) -> io::Result<()> {
    let address = stream
        .peer_addr()
        .map_or_else(|_| "the node".to_owned(), |a| a.to_string());
    let mut buf = BytesMut::new();
    let Some(challenge) = read_auth_frame(stream, &mut buf, AUTH_BODY_MAX).await? else {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the node closed the connection before sending its challenge",
        ));
    };
    if challenge.header.kind != MessageKind::Auth as u8
        || challenge.header.role != Role::Request
        || challenge.body.len() != auth::NONCE_SIZE
        || !buf.is_empty()
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the node's first frame is not an authentication challenge",
        ));
    }
    let node = challenge.header.source;
    let ours = auth::challenge()?;
    let header = Header {
        role: Role::Response,
        kind: MessageKind::Auth as u8,
        group: 0,
        request_id: challenge.header.request_id,
        source,
    };
    let mut body = Vec::with_capacity(2 * auth::NONCE_SIZE);
    body.extend_from_slice(&secret.proof(&challenge.body, source));
    body.extend_from_slice(&ours);
    let mut frame = BytesMut::new();
    wire::encode_into(&mut frame, &header, &body);
    stream.write_all(&frame).await?;
    let Some(proof) = read_auth_frame(stream, &mut buf, AUTH_BODY_MAX).await? else {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{address} closed the connection after our proof: it refused it; does our \
                 cluster secret match the cluster's?"
            ),
        ));
    };
    let proved = proof.header.kind == MessageKind::Auth as u8
        && proof.header.role == Role::Response
        && proof.header.source == node
        && buf.is_empty()
        && secret.verify_node(&ours, node, &proof.body);
    if !proved {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{address} (claiming node {node}) did not prove it holds the cluster secret; \
                 nothing was sent to it. Is the address right, and does it run with this \
                 cluster's secret?"
            ),
        ));
    }
    Ok(())
}

/// A handled request: its header and the handler's result.
type Answered = (Header, Result<Bytes, HandlerError>);

/// Runs the handler on one request. `None` if the handler panicked: the
/// panic is logged and the call left unanswered (the caller times out);
/// the connection and its other calls carry on.
async fn answer<H: Handler>(handler: &H, caller: Caller, frame: Frame) -> Option<Answered> {
    let header = frame.header;
    let request = Request {
        kind: header.kind,
        group: header.group,
        body: frame.body,
    };
    if header.kind == MessageKind::Client as u8 {
        sluice_model::stage!(header.request_id, HandlerStart);
    }
    let handled = AssertUnwindSafe(handler.handle(caller, request)).catch_unwind();
    #[cfg(feature = "stage-trace")]
    let handled = TRACE_REQUEST.scope(header.request_id, handled);
    match handled.await {
        Ok(result) => Some((header, result)),
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            warn!(
                kind = header.kind,
                request_id = header.request_id,
                source = header.source,
                %message,
                "a request handler panicked; the request is left unanswered"
            );
            None
        }
    }
}

/// Appends the response frame of a handled request to `out`.
fn encode_response(out: &mut BytesMut, node: NodeId, (request, result): Answered) {
    let (role, body) = match result {
        Ok(body) if body.len() <= BODY_SIZE_MAX => (Role::Response, body),
        Ok(body) => (
            Role::Failure,
            Bytes::from(format!(
                "the response of {} bytes exceeds the frame bound of {BODY_SIZE_MAX} bytes; \
                 ask for less at once",
                body.len()
            )),
        ),
        Err(error) => (Role::Failure, Bytes::from(error.message)),
    };
    let body = body.slice(..body.len().min(BODY_SIZE_MAX));
    let header = Header {
        role,
        kind: request.kind,
        group: request.group,
        request_id: request.request_id,
        source: node,
    };
    wire::encode_into(out, &header, &body);
    if request.kind == MessageKind::Client as u8 {
        sluice_model::stage!(request.request_id, ResponseQueued);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    /// Records every write it is given, whole.
    #[derive(Default)]
    struct Writes(Vec<Vec<u8>>);

    impl AsyncWrite for Writes {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.0.push(buf.to_vec());
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn queued_frames_go_out_together_in_order_and_large_ones_alone() {
        let (sender, frames) = mpsc::channel(16);
        let large = Bytes::from(vec![9u8; COALESCE_BYTES_MAX]);
        for frame in [
            Bytes::from_static(b"one"),
            Bytes::from_static(b"two"),
            large.clone(),
            Bytes::from_static(b"three"),
        ] {
            sender.send(frame).await.unwrap();
        }
        drop(sender);
        let mut writes = Writes::default();
        write_loop(&mut writes, frames).await.unwrap();
        let expected: Vec<Vec<u8>> = vec![b"onetwo".to_vec(), large.to_vec(), b"three".to_vec()];
        assert_eq!(writes.0, expected);
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let config = TcpConfig {
            backoff_initial: Duration::from_millis(10),
            backoff_max: Duration::from_millis(100),
            ..TcpConfig::default()
        };
        let delays: Vec<u64> = (1..=6)
            .map(|failures| backoff_delay(&config, failures).as_millis() as u64)
            .collect();
        assert_eq!(delays, [10, 20, 40, 80, 100, 100]);
        assert_eq!(backoff_delay(&config, u32::MAX), config.backoff_max);
    }
}

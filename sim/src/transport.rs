//! [`SimTransport`] and [`SimServer`]: the engine's network seam over
//! madsim's simulated network, the counterparts of `TcpTransport` and
//! `TcpServer`.
//!
//! Node `n` lives at [`node_address`]`(n)` (IP `10.0.0.n`, one port). A
//! call binds a fresh ephemeral endpoint on the calling node, sends the
//! request to the target's server endpoint and waits for the one response
//! on its own endpoint, within [`SimTransportConfig::call_timeout`].
//! Requests and responses are madsim messages holding the Rust values
//! (nothing is serialised: the bodies are already bytes).
//!
//! ### Fault model
//! Everything madsim's network does applies, drawn from the seed: each
//! message gets a latency (1 to 10 ms by default) and may be lost
//! (`packet_loss_rate`); `NetSim::clog_node`, `clog_node_in`/`_out` and
//! `clog_link` drop every message across the cut silently, so a call
//! across a partition ends in [`TransportError::TimedOut`], as a TCP call
//! into a black hole does. Messages are not ordered across calls. A late
//! response lands on a closed endpoint and is dropped. A killed node's
//! server and in-flight handlers die with its tasks.
//!
//! On top of madsim's network, [`LinkFaults`] (shared by a cluster's
//! transports) adds what madsim lacks: an extra one-way delay per link
//! (the WAN between data centres; a call waits it before sending and again
//! after the response, one leg each) and duplication (a request sent twice,
//! each copy handled; the caller takes the first response).

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use madsim::net::Endpoint;
use madsim::rand::Rng as _;
use openraft_rt::AsyncRuntime;
use sluice_model::transport::{Caller, Handler, NodeId, Request, Transport, TransportError};

use crate::SimRuntime;

/// The port every node's server listens on.
const SERVER_PORT: u16 = 7000;

/// The madsim message tag of requests (to a server endpoint). A response
/// carries the tag its request named, unique per call, so a late response
/// to an earlier call that had the same ephemeral port is never taken for
/// this call's.
const TAG_REQUEST: u64 = 0;

/// The simulated address of node `node`: `10.0.0.<node>:7000`.
pub fn node_address(node: NodeId) -> SocketAddr {
    assert!(
        (1..=254).contains(&node),
        "simulated node ids are 1 to 254, got {node}"
    );
    let ip = Ipv4Addr::new(10, 0, 0, node as u8);
    SocketAddr::new(IpAddr::V4(ip), SERVER_PORT)
}

/// Faults of the simulated links beyond madsim's own (see the module
/// docs). Shared by every transport of a cluster; changes apply to calls
/// that start afterwards.
#[derive(Debug, Default)]
pub struct LinkFaults {
    inner: Mutex<LinkFaultsInner>,
}

#[derive(Debug, Default)]
struct LinkFaultsInner {
    /// Extra one-way delay from source to target.
    delay: BTreeMap<(NodeId, NodeId), Duration>,
    /// Probability that a request is sent twice.
    duplicate_rate: f64,
}

impl LinkFaults {
    fn lock(&self) -> std::sync::MutexGuard<'_, LinkFaultsInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets the extra one-way delay between `a` and `b`, both ways.
    pub fn set_delay(&self, a: NodeId, b: NodeId, delay: Duration) {
        let mut inner = self.lock();
        inner.delay.insert((a, b), delay);
        inner.delay.insert((b, a), delay);
    }

    /// Sets the probability (0 to 1) that a request is duplicated.
    pub fn set_duplicate_rate(&self, rate: f64) {
        assert!((0.0..=1.0).contains(&rate), "rate {rate} is not in [0, 1]");
        self.lock().duplicate_rate = rate;
    }

    fn delay(&self, source: NodeId, target: NodeId) -> Duration {
        self.lock()
            .delay
            .get(&(source, target))
            .copied()
            .unwrap_or_default()
    }

    /// Whether this request is sent twice; draws from the seed only while
    /// duplication is on, so turning it on changes no other draw before.
    fn duplicate(&self) -> bool {
        let rate = self.lock().duplicate_rate;
        rate > 0.0 && madsim::rand::thread_rng().gen_bool(rate)
    }
}

/// A request in flight.
#[derive(Clone)]
struct Envelope {
    source: NodeId,
    request: Request,
    reply_tag: u64,
}

/// A response in flight: the body, or the handler's refusal.
type Reply = Result<Bytes, String>;

/// How calls are bounded.
#[derive(Debug, Clone)]
pub struct SimTransportConfig {
    /// A call without a response after this long fails with `TimedOut`.
    pub call_timeout: Duration,
    /// The largest request body sent; larger ones fail with
    /// `FrameTooLarge` and are not sent.
    pub body_size_max: u64,
    /// Extra delay and duplication, shared with the cluster's other
    /// transports.
    pub faults: Arc<LinkFaults>,
}

impl Default for SimTransportConfig {
    fn default() -> Self {
        SimTransportConfig {
            call_timeout: Duration::from_millis(500),
            body_size_max: 64 << 20,
            faults: Arc::default(),
        }
    }
}

/// The client side of node `source`'s network. Calls must run in tasks of
/// the madsim node that `source` runs on (its IP is the source address
/// that partitions act on).
#[derive(Debug, Clone)]
pub struct SimTransport {
    source: NodeId,
    config: SimTransportConfig,
    /// The reply tag of the next call (1 and up; 0 is [`TAG_REQUEST`]).
    reply_tag_next: Arc<AtomicU64>,
}

impl SimTransport {
    /// The transport of node `source`.
    pub fn new(source: NodeId, config: SimTransportConfig) -> Self {
        SimTransport {
            source,
            config,
            reply_tag_next: Arc::new(AtomicU64::new(1)),
        }
    }

    async fn call_once(&self, target: NodeId, request: Request) -> Result<Bytes, TransportError> {
        let size_bytes = request.body.len() as u64;
        if size_bytes > self.config.body_size_max {
            return Err(TransportError::FrameTooLarge {
                size_bytes,
                size_bytes_max: self.config.body_size_max,
            });
        }
        let unreachable = |source: io::Error| TransportError::Unreachable {
            target,
            source: Arc::new(source),
        };
        let delay = self.config.faults.delay(self.source, target);
        if !delay.is_zero() {
            madsim::time::sleep(delay).await;
        }
        let endpoint = Endpoint::bind("0.0.0.0:0").await.map_err(unreachable)?;
        let reply_tag = self.reply_tag_next.fetch_add(1, Ordering::Relaxed);
        let envelope = Envelope {
            source: self.source,
            request,
            reply_tag,
        };
        if self.config.faults.duplicate() {
            endpoint
                .send_to_raw(
                    node_address(target),
                    TAG_REQUEST,
                    Box::new(envelope.clone()),
                )
                .await
                .map_err(unreachable)?;
        }
        endpoint
            .send_to_raw(node_address(target), TAG_REQUEST, Box::new(envelope))
            .await
            .map_err(unreachable)?;
        let after = self.config.call_timeout;
        let response = endpoint.recv_from_raw(reply_tag);
        let (payload, _) = match SimRuntime::timeout(after, response).await {
            Ok(Ok(received)) => received,
            Ok(Err(source)) => {
                return Err(TransportError::Closed {
                    target,
                    source: Arc::new(source),
                });
            }
            Err(_elapsed) => return Err(TransportError::TimedOut { target, after }),
        };
        let reply = payload
            .downcast::<Reply>()
            .expect("a response endpoint receives only replies");
        if !delay.is_zero() {
            madsim::time::sleep(delay).await;
        }
        reply.map_err(|message| TransportError::Remote { target, message })
    }
}

impl Transport for SimTransport {
    fn call(
        &self,
        target: NodeId,
        request: Request,
    ) -> impl Future<Output = Result<Bytes, TransportError>> + Send {
        self.call_once(target, request)
    }
}

/// The server side of one node: answers requests with a [`Handler`], each
/// on its own task. Stops when dropped or when its node is killed.
pub struct SimServer {
    task: madsim::task::JoinHandle<()>,
}

impl fmt::Debug for SimServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimServer").finish_non_exhaustive()
    }
}

impl SimServer {
    /// Binds node `node`'s server address and serves `handler` there.
    /// Must run in a task of that node's madsim node.
    pub async fn serve<H: Handler>(node: NodeId, handler: H) -> io::Result<SimServer> {
        let address = SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), node_address(node).port());
        let endpoint = Endpoint::bind(address).await?;
        let handler = Arc::new(handler);
        let task = madsim::task::spawn(accept_loop(endpoint, handler));
        Ok(SimServer { task })
    }
}

impl Drop for SimServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop<H: Handler>(endpoint: Endpoint, handler: Arc<H>) {
    loop {
        let Ok((payload, from)) = endpoint.recv_from_raw(TAG_REQUEST).await else {
            return;
        };
        let envelope = *payload
            .downcast::<Envelope>()
            .expect("a server endpoint receives only requests");
        let endpoint = endpoint.clone();
        let handler = Arc::clone(&handler);
        drop(madsim::task::spawn(async move {
            let reply_tag = envelope.reply_tag;
            let reply: Reply = handler
                .handle(Caller::node(envelope.source), envelope.request)
                .await
                .map_err(|error| error.message);
            // A lost response is the caller's time-out; nothing to do here.
            let _ = endpoint.send_to_raw(from, reply_tag, Box::new(reply)).await;
        }));
    }
}

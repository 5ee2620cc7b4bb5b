//! The client: talks to a cluster through any of its nodes, follows the
//! leader, and fails over on its own.
//!
//! A [`Client`] knows a list of node addresses (seeds, plus leaders it
//! learns of). Each request goes to the node it currently prefers; a
//! `NotLeader` answer moves it to the leader named, and a node that does
//! not answer in time, refuses the connection or keeps failing moves it to
//! the next address. Requests are retried this way until
//! [`ClientConfig::request_timeout`]: every request of the protocol is safe
//! to send again (see [`crate::protocol`]), so a failover never loses or
//! duplicates an acknowledged event.
//!
//! [`RemoteProducer`] is the idempotent producer over the network: it
//! stamps events (id, epoch, per-partition sequence) on the client side,
//! so the state machine deduplicates a batch resent after a failover.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use sluice_model::constants::THROTTLE_WAIT_MS_MAX;
use sluice_model::event::{Event, EventError, Headers, ProducerStamp, partition_for};
use sluice_model::security::{Denied, SecurityOp};
use sluice_model::state::{Op, Response, TopicConfig};
use sluice_model::transport::{MessageKind, NodeId, Request, Transport, TransportError};

use sluice_model::security::Token;

use crate::auth::Secret;
use crate::protocol::{
    CLIENT_GROUP, ClientRequest, ClientResponse, FetchedEvent, Metadata, PUBLISH_BYTES_MAX,
    PublishOutcome, SecurityItems, SecuritySection, decode, encode, publish_size,
};
use crate::tcp::{TcpConfig, TcpTransport};
use crate::tls::Tls;
use crate::wire::BODY_SIZE_MAX;

/// How a client reaches a cluster.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Addresses of some of the cluster's nodes (any of them).
    pub seeds: Vec<SocketAddr>,
    /// The cluster secret, if the cluster has one (without TLS).
    pub secret: Option<Secret>,
    /// TLS material: the cluster's CA and, usually, this client's
    /// certificate (see [`crate::tls`]).
    pub tls: Option<Arc<Tls>>,
    /// With TLS material that holds no client certificate: the token to
    /// authenticate with.
    pub token: Option<Token>,
    /// How long one request may take, failovers and retries included.
    pub request_timeout: Duration,
    /// How long one attempt at one node may take before the client tries
    /// another (a fetch's wait is added to it).
    pub attempt_timeout: Duration,
}

impl ClientConfig {
    /// A client of the nodes at `seeds`, with default timeouts (30 s per
    /// request, 2 s per attempt).
    pub fn new(seeds: Vec<SocketAddr>) -> Self {
        ClientConfig {
            seeds,
            secret: None,
            tls: None,
            token: None,
            request_timeout: Duration::from_secs(30),
            attempt_timeout: Duration::from_secs(2),
        }
    }
}

/// Why a request failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// No addresses were given.
    #[error("no node addresses were given; pass at least one (--cluster HOST:PORT,...)")]
    NoSeeds,
    /// No node answered usefully within the request timeout.
    #[error(
        "no node of the cluster could serve the request within {after:?} (last: {last}); \
         check that a majority of the nodes run and reach each other"
    )]
    Unavailable {
        /// The request timeout.
        after: Duration,
        /// The last failure seen.
        last: String,
    },
    /// The cluster refused the request; sending it again will not help.
    #[error("refused: {0}")]
    Refused(String),
    /// The connection's principal may not do this (no rule allows it, a
    /// rule denies it, or the name lies outside its tenant); nothing was
    /// done. Ask an administrator for a rule (`sluice acl add`).
    #[error("access denied: {0}")]
    Denied(Denied),
    /// A node answered something this client did not expect.
    #[error("unexpected answer: {0}")]
    Unexpected(String),
    /// An event breaks a bound of the event format (payload, key, headers
    /// too large...); it was not sent, and no sequence was taken for it.
    #[error("event refused before sending: {0}")]
    Event(#[from] EventError),
    /// A request is larger than one frame may carry, or a publish larger
    /// than [`PUBLISH_BYTES_MAX`]; it was not sent.
    #[error(
        "a request of {size} bytes exceeds the limit of {max} bytes; nothing was sent: \
         send its events in several requests"
    )]
    RequestTooLarge {
        /// Its encoded size.
        size: usize,
        /// The limit.
        max: usize,
    },
}

/// Whether `error` is a node refusing this side's credentials, or this
/// side lacking any, rather than a node out of reach.
fn refuses_credentials(error: &TransportError) -> bool {
    matches!(
        error,
        TransportError::Unreachable { source, .. }
            if matches!(
                source.kind(),
                std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::InvalidInput
            )
    )
}

/// A connection to a cluster; cheap to clone (clones share connections).
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let book = self.inner.book.lock().expect("address book lock");
        f.debug_struct("Client")
            .field("addresses", &book.addresses)
            .field("preferred", &book.preferred)
            .finish_non_exhaustive()
    }
}

struct Inner {
    transport: TcpTransport,
    config: ClientConfig,
    book: Mutex<Book>,
}

/// The addresses known; address `i` is the transport's node `i + 1`.
struct Book {
    addresses: Vec<SocketAddr>,
    preferred: usize,
}

impl Client {
    /// A client of the cluster at `config.seeds`. Connects lazily.
    pub fn new(config: ClientConfig) -> Result<Client, ClientError> {
        if config.seeds.is_empty() {
            return Err(ClientError::NoSeeds);
        }
        let tcp = TcpConfig {
            // The client bounds each attempt itself.
            call_timeout: Duration::from_secs(3600),
            connect_timeout: config.attempt_timeout,
            backoff_initial: Duration::from_millis(20),
            backoff_max: Duration::from_millis(500),
            secret: config.secret.clone(),
            tls: config.tls.clone(),
            token: config.token.clone(),
            ..TcpConfig::default()
        };
        // Clients call themselves node 0.
        let transport = TcpTransport::new(0, tcp);
        let mut addresses = Vec::new();
        for &seed in &config.seeds {
            if !addresses.contains(&seed) {
                transport.set_address(addresses.len() as NodeId + 1, seed);
                addresses.push(seed);
            }
        }
        Ok(Client {
            inner: Arc::new(Inner {
                transport,
                config,
                book: Mutex::new(Book {
                    addresses,
                    preferred: 0,
                }),
            }),
        })
    }

    /// Sends `request`, following the leader and failing over, until a
    /// node answers it or the request timeout passes. A request the node
    /// throttles (its principal over quota) is sent again after the wait
    /// the node names, as often as it takes: the waits do not count
    /// against the request timeout, so a quota slows a client down and
    /// never fails or drops its request (a throttled request was not
    /// carried out, so sending it again duplicates nothing).
    pub async fn request(&self, request: &ClientRequest) -> Result<ClientResponse, ClientError> {
        let body = encode(request);
        // A frame this large would be refused by the transport on every
        // attempt until the timeout, as if the cluster were unreachable.
        if body.len() > BODY_SIZE_MAX {
            return Err(ClientError::RequestTooLarge {
                size: body.len(),
                max: BODY_SIZE_MAX,
            });
        }
        let wait = match request {
            ClientRequest::Fetch { wait_ms, .. } | ClientRequest::FetchBounded { wait_ms, .. } => {
                Duration::from_millis(u64::from(*wait_ms))
            }
            _ => Duration::ZERO,
        };
        let timeout = self.inner.config.request_timeout;
        let mut deadline = Instant::now() + timeout + wait;
        let mut attempt: u32 = 0;
        loop {
            let (last, pause) = match self.attempt(&body, wait).await {
                Attempt::Done(result) => return result,
                Attempt::Retry { last, pause } => (last, pause),
                Attempt::Throttled { retry_after } => {
                    tokio::time::sleep(retry_after).await;
                    deadline += retry_after;
                    continue;
                }
            };
            if Instant::now() >= deadline {
                return Err(ClientError::Unavailable {
                    after: timeout + wait,
                    last,
                });
            }
            if pause {
                attempt = attempt.saturating_add(1);
                let delay = Duration::from_millis(20 * u64::from(attempt.min(10)));
                tokio::time::sleep(delay).await;
            }
        }
    }

    /// Sends `body` once, to the node believed to lead, and says what to
    /// do next: done, or retry (at once when the answer named the leader).
    async fn attempt(&self, body: &Bytes, wait: Duration) -> Attempt {
        let (id, address) = self.current();
        let call = self.inner.transport.call(
            id,
            Request {
                kind: MessageKind::Client as u8,
                group: CLIENT_GROUP,
                body: body.clone(),
            },
        );
        let limit = self.inner.config.attempt_timeout + wait;
        let last = match tokio::time::timeout(limit, call).await {
            Ok(Ok(answer)) => return self.answered(&answer, id, address),
            // A node that refuses this client's credentials (certificate,
            // token, secret) will refuse them again: say so at once.
            Ok(Err(error)) if refuses_credentials(&error) => {
                return Attempt::Done(Err(ClientError::Refused(error.to_string())));
            }
            Ok(Err(error)) => error.to_string(),
            Err(_elapsed) => format!("node at {address} did not answer within {limit:?}"),
        };
        self.rotate(id);
        Attempt::Retry { last, pause: true }
    }

    /// What an answer from node `id` at `address` means for the request.
    fn answered(&self, answer: &Bytes, id: NodeId, address: SocketAddr) -> Attempt {
        let retry = |last: String| Attempt::Retry { last, pause: true };
        match decode::<ClientResponse>(answer, "response") {
            Ok(ClientResponse::NotLeader {
                leader: Some((leader, leader_address)),
            }) => {
                let last = format!("node at {address} named node {leader} as leader");
                match leader_address.parse::<SocketAddr>() {
                    Ok(leader_address) if leader_address != address => {
                        self.prefer(leader_address);
                        Attempt::Retry { last, pause: false }
                    }
                    _ => {
                        self.rotate(id);
                        retry(last)
                    }
                }
            }
            Ok(ClientResponse::NotLeader { leader: None }) => {
                self.rotate(id);
                retry(format!(
                    "node at {address} knows no leader (election under way)"
                ))
            }
            Ok(ClientResponse::Error {
                message,
                retry: true,
            }) => {
                self.rotate(id);
                retry(format!("node at {address}: {message}"))
            }
            Ok(ClientResponse::Error {
                message,
                retry: false,
            }) => Attempt::Done(Err(ClientError::Refused(message))),
            Ok(ClientResponse::Denied(denied)) => Attempt::Done(Err(ClientError::Denied(denied))),
            Ok(ClientResponse::Throttled { retry_after_ms }) => Attempt::Throttled {
                // At least a millisecond, so a confused node cannot make
                // the client spin; at most what a node ever asks for.
                retry_after: Duration::from_millis(retry_after_ms.clamp(1, THROTTLE_WAIT_MS_MAX)),
            },
            Ok(response) => Attempt::Done(Ok(response)),
            Err(message) => Attempt::Done(Err(ClientError::Unexpected(message))),
        }
    }

    /// Asks the node at `address` alone, without failover (for status).
    pub async fn request_from(
        &self,
        address: SocketAddr,
        request: &ClientRequest,
    ) -> Result<ClientResponse, ClientError> {
        let id = self.id_of(address);
        let call = self.inner.transport.call(
            id,
            Request {
                kind: MessageKind::Client as u8,
                group: CLIENT_GROUP,
                body: encode(request),
            },
        );
        let limit = self.inner.config.attempt_timeout;
        match tokio::time::timeout(limit, call).await {
            Ok(Ok(answer)) => decode(&answer, "response").map_err(ClientError::Unexpected),
            Ok(Err(error)) => Err(ClientError::Unavailable {
                after: limit,
                last: error.to_string(),
            }),
            Err(_elapsed) => Err(ClientError::Unavailable {
                after: limit,
                last: format!("node at {address} did not answer"),
            }),
        }
    }

    /// The cluster as some node sees it (the leader, when reachable).
    pub async fn metadata(&self) -> Result<Metadata, ClientError> {
        match self.request(&ClientRequest::Metadata).await? {
            ClientResponse::Metadata(metadata) => Ok(metadata),
            other => Err(unexpected(&other)),
        }
    }

    /// Proposes a state-machine operation through the leader; a refusal by
    /// the state machine is an error.
    pub async fn write(&self, op: Op) -> Result<Response, ClientError> {
        match self.request(&ClientRequest::Write(op)).await? {
            ClientResponse::Written(Response::Error(error)) => {
                Err(ClientError::Refused(error.to_string()))
            }
            ClientResponse::Written(response) => Ok(response),
            other => Err(unexpected(&other)),
        }
    }

    /// Changes the security settings (needs `admin` on the cluster); a
    /// refusal by the state machine (an unknown token, overlapping
    /// tenants...) is an error.
    pub async fn security(&self, op: SecurityOp) -> Result<(), ClientError> {
        match self.request(&ClientRequest::Security(op)).await? {
            ClientResponse::Written(Response::Error(error)) => {
                Err(ClientError::Refused(error.to_string()))
            }
            ClientResponse::Written(_) => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    /// Every item of one section of the security settings, page by page
    /// (needs `admin` on the cluster).
    pub async fn security_list(
        &self,
        section: SecuritySection,
    ) -> Result<Vec<SecurityItems>, ClientError> {
        let mut pages = Vec::new();
        let mut from = 0;
        loop {
            let request = ClientRequest::SecurityList { section, from };
            match self.request(&request).await? {
                ClientResponse::SecurityPage { items, next } => {
                    pages.push(items);
                    match next {
                        Some(next) if next > from => from = next,
                        Some(next) => {
                            return Err(ClientError::Unexpected(format!(
                                "a security page from item {from} named {next} as the next"
                            )));
                        }
                        None => return Ok(pages),
                    }
                }
                other => return Err(unexpected(&other)),
            }
        }
    }

    /// Creates a topic (a no-op if it exists with the same settings).
    pub async fn create_topic(&self, name: &str, partitions: u32) -> Result<(), ClientError> {
        self.write(Op::CreateTopic {
            name: name.to_owned(),
            partitions,
            config: TopicConfig::default(),
        })
        .await
        .map(drop)
    }

    /// A new idempotent producer.
    pub async fn producer(&self) -> Result<RemoteProducer, ClientError> {
        match self.write(Op::InitProducer { name: None }).await? {
            Response::ProducerInit { id, epoch } => Ok(RemoteProducer {
                client: self.clone(),
                id,
                epoch,
                sequences: HashMap::new(),
                partitions: HashMap::new(),
                next_partition: 0,
            }),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Reads up to `max` events of a partition from `offset` (and up to
    /// [`FETCH_BYTES_MAX`](crate::protocol::FETCH_BYTES_MAX) bytes of
    /// them), waiting up to `wait` for a first one. Returns the events, the
    /// offset to read next, and the partition's (first, next) offsets.
    pub async fn fetch(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        max: u32,
        wait: Duration,
    ) -> Result<(Vec<FetchedEvent>, u64, (u64, u64)), ClientError> {
        let request = ClientRequest::Fetch {
            topic: topic.to_owned(),
            partition,
            offset,
            max,
            wait_ms: u32::try_from(wait.as_millis()).unwrap_or(u32::MAX),
        };
        self.fetched(&request).await
    }

    /// As [`Client::fetch`], and also up to `max_bytes` of events (counted
    /// as their records in the log; capped at
    /// [`FETCH_BYTES_MAX`](crate::protocol::FETCH_BYTES_MAX)). The first
    /// event comes whatever its size, so a reader always moves on. Nodes
    /// older than this request answer that it does not decode.
    pub async fn fetch_bounded(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        max: u32,
        max_bytes: u32,
        wait: Duration,
    ) -> Result<(Vec<FetchedEvent>, u64, (u64, u64)), ClientError> {
        let request = ClientRequest::FetchBounded {
            topic: topic.to_owned(),
            partition,
            offset,
            max,
            max_bytes,
            wait_ms: u32::try_from(wait.as_millis()).unwrap_or(u32::MAX),
        };
        self.fetched(&request).await
    }

    async fn fetched(
        &self,
        request: &ClientRequest,
    ) -> Result<(Vec<FetchedEvent>, u64, (u64, u64)), ClientError> {
        match self.request(request).await? {
            ClientResponse::Fetched {
                events,
                next,
                range,
            } => Ok((events, next, range)),
            other => Err(unexpected(&other)),
        }
    }

    fn current(&self) -> (NodeId, SocketAddr) {
        let book = self.inner.book.lock().expect("address book lock");
        (book.preferred as NodeId + 1, book.addresses[book.preferred])
    }

    /// Moves on from node `id` to the next address, unless another call
    /// already moved on.
    fn rotate(&self, id: NodeId) {
        let mut book = self.inner.book.lock().expect("address book lock");
        if book.preferred as NodeId + 1 == id {
            book.preferred = (book.preferred + 1) % book.addresses.len();
        }
    }

    fn prefer(&self, address: SocketAddr) {
        let id = self.id_of(address);
        let mut book = self.inner.book.lock().expect("address book lock");
        book.preferred = id as usize - 1;
    }

    /// The transport id of `address`, learning it if new.
    fn id_of(&self, address: SocketAddr) -> NodeId {
        let mut book = self.inner.book.lock().expect("address book lock");
        if let Some(index) = book.addresses.iter().position(|&a| a == address) {
            return index as NodeId + 1;
        }
        book.addresses.push(address);
        let id = book.addresses.len() as NodeId;
        self.inner.transport.set_address(id, address);
        id
    }
}

fn unexpected(response: &ClientResponse) -> ClientError {
    ClientError::Unexpected(format!("{response:?}"))
}

/// An idempotent producer over the network; see the module docs.
#[derive(Debug)]
pub struct RemoteProducer {
    client: Client,
    id: u64,
    epoch: u32,
    sequences: HashMap<(String, u32), u64>,
    partitions: HashMap<String, u32>,
    next_partition: u32,
}

impl RemoteProducer {
    /// This producer's id and epoch.
    pub fn identity(&self) -> (u64, u32) {
        (self.id, self.epoch)
    }

    /// Stamps an event for `topic`: its partition (by key, or in turn when
    /// the key is empty) and the producer's next sequence there. An event
    /// breaking a bound of the event format is refused here
    /// ([`ClientError::Event`], naming the limit), before it takes a
    /// sequence.
    pub async fn stamp(
        &mut self,
        topic: &str,
        key: Bytes,
        payload: Bytes,
        headers: Headers,
    ) -> Result<Event, ClientError> {
        let mut event = Event {
            topic: topic.to_owned(),
            key,
            payload,
            headers,
            ..Event::default()
        };
        event.validate()?;
        let partitions = self.partitions(topic).await?;
        let partition = if event.key.is_empty() {
            self.next_partition = self.next_partition.wrapping_add(1);
            self.next_partition % partitions
        } else {
            partition_for(&event.key, partitions)
        };
        let slot = self
            .sequences
            .entry((topic.to_owned(), partition))
            .or_insert(0);
        let sequence = *slot;
        *slot += 1;
        event.producer = ProducerStamp {
            id: self.id,
            epoch: self.epoch,
            sequence,
        };
        event.partition = partition;
        Ok(event)
    }

    /// Publishes stamped events in one request and waits until each is
    /// durable (or refused). After a failover the whole request is sent
    /// again; events already appended come back as duplicates with their
    /// original offsets. Send one request at a time per producer, in
    /// stamp order. The events of one request take at most
    /// [`PUBLISH_BYTES_MAX`] encoded ([`publish_size`] of each): a larger
    /// request is refused at once ([`ClientError::RequestTooLarge`]),
    /// nothing sent.
    pub async fn publish(
        &mut self,
        events: Vec<Event>,
    ) -> Result<Vec<PublishOutcome>, ClientError> {
        let size: usize = events.iter().map(publish_size).sum();
        if size > PUBLISH_BYTES_MAX {
            return Err(ClientError::RequestTooLarge {
                size,
                max: PUBLISH_BYTES_MAX,
            });
        }
        let count = events.len();
        match self.client.request(&ClientRequest::Publish(events)).await? {
            ClientResponse::Published(outcomes) if outcomes.len() == count => Ok(outcomes),
            other => Err(unexpected(&other)),
        }
    }

    async fn partitions(&mut self, topic: &str) -> Result<u32, ClientError> {
        if let Some(&count) = self.partitions.get(topic) {
            return Ok(count);
        }
        let metadata = self.client.metadata().await?;
        for (name, count) in metadata.topics {
            self.partitions.insert(name, count);
        }
        self.partitions.get(topic).copied().ok_or_else(|| {
            ClientError::Refused(format!(
                "unknown topic {topic:?}: create it first (sluice topics create {topic} ...)"
            ))
        })
    }
}
/// The outcome of one attempt of a request.
enum Attempt {
    /// The request is answered (or refused for good).
    Done(Result<ClientResponse, ClientError>),
    /// Try again: `last` says why the attempt failed; without `pause`, at
    /// once (the answer named the leader).
    Retry { last: String, pause: bool },
    /// Over quota: send it again, to the same node, after `retry_after`.
    Throttled { retry_after: Duration },
}

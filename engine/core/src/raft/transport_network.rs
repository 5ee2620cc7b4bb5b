//! The Raft network over the engine's [`Transport`] seam: the client side
//! ([`TransportNetwork`], openraft's network factory) and the server side
//! ([`RaftService`], a [`Handler`] that hands requests to the node's
//! [`Raft`] handle).
//!
//! Every Raft RPC is one transport call. The request is a [`Request`] with
//! one of the kinds below, group [`RAFT_GROUP`], and a postcard body; the
//! response body is the postcard encoding of openraft's response. A request
//! the node refuses (it does not decode, a wrong group or kind, or the Raft
//! node has stopped) comes back as the handler's error with a message.
//!
//! | kind | request body | response body |
//! |---|---|---|
//! | [`MessageKind::AppendEntries`] | `AppendEntriesRequest` | `AppendEntriesResponse` |
//! | [`MessageKind::Vote`] | `VoteRequest` | `VoteResponse` |
//! | [`MessageKind::FullSnapshot`] | the leader's `Vote`, the `SnapshotMeta`, the snapshot bytes (a postcard byte sequence), in that order | `SnapshotResponse` |
//! | [`MessageKind::PreVote`] | `VoteRequest` | `VoteResponse` (only sent when openraft's pre-vote is enabled) |
//! | [`MessageKind::AppendStream`] | `StreamId`, sequence number, `AppendEntriesRequest` | `StreamAppendResult` (replication; see [`pipeline`]) |
//!
//! Node addresses are the transport's business: the factory ignores the
//! `Node` openraft passes and addresses peers by node id only.
//!
//! ### Fault model
//! - The transport may lose, delay, duplicate or reorder requests and may
//!   never answer (see [`sluice_model::transport`]). Raft's RPCs tolerate all
//!   of that: each carries the sender's vote and log position, and a stale
//!   or repeated one is answered, not applied twice.
//! - Every call is bounded by the transport's own per-call bound. Small,
//!   latency-bound messages (votes, pre-votes, and appends without
//!   entries, i.e. heartbeats) are also bounded by openraft's soft
//!   time-to-live for the RPC, on the Raft runtime's clock. Bulk messages
//!   (appends carrying entries, snapshots) are not: openraft derives their
//!   time-to-live from the heartbeat interval and the snapshot timeout,
//!   while their duration grows with their size and the follower's fsync,
//!   so cutting them there could stall replication for good.
//! - Transport errors become openraft's: `Unreachable` and `Closed` (the
//!   peer is down or its connection broke) are `Unreachable`, so openraft
//!   backs off before trying that peer again; a time-out is `Timeout`; a
//!   body too large for one frame is `Network`. A refusal by the remote
//!   handler and a response that does not decode also become
//!   `Unreachable`: the peer is up but cannot serve us (it stopped, or
//!   speaks another version), so retrying at once would only spin.
//! - A snapshot carries the bodies its follower will need (its tail,
//!   `raft/snapshot.rs`), read from the sender's log when it is sent; a
//!   failed read ends the attempt as `Unreachable`, and openraft tries
//!   again with the snapshot current then. A snapshot over
//!   [`SNAPSHOT_CHUNK_SIZE`] goes in pieces of [`MessageKind::SnapshotChunk`];
//!   its transfer stops when openraft cancels it (`ReplicationClosed`).
//! - The receiver checks a whole snapshot (checksum, and the tail's hash
//!   chain against the snapshot's chain head) before Raft sees it; a
//!   snapshot that fails is refused with the reason and changes nothing.
//! - The server decodes every body before touching Raft; a body that does
//!   not decode is refused with a message and changes nothing.

use crate::io::Env;
use crate::log::ChainMode;
use sluice_model::constants::SNAPSHOT_CHUNK_SIZE_MIN;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::{BoxFuture, Either, select};
use futures_util::stream::{BoxStream, Stream};
use openraft::OptionalSend;
use openraft::error::{
    NetworkError, RPCError, ReplicationClosed, StreamingError, Timeout, Unreachable,
};
use openraft::network::v2::RaftNetworkV2;
use openraft::network::{RPCOption, RPCTypes, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendResult, VoteRequest,
    VoteResponse,
};
use openraft::storage::{Snapshot, SnapshotMeta};
use openraft::type_config::TypeConfigExt;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::snapshot::{self, SnapshotData};
use super::{CommittedLeaderId, Node, NodeId, Raft, TypeConfig, Vote};
use super::{codec, pipeline};
use sluice_model::transport::{
    Caller, Handler, HandlerError, MessageKind, Request, Transport, TransportError,
};

pub use sluice_model::constants::SNAPSHOT_CHUNK_SIZE;

/// The group id of the one Raft group a cluster runs today.
pub const RAFT_GROUP: u32 = 0;

/// The snapshot's metadata as openraft names it for this configuration.
type Meta = SnapshotMeta<CommittedLeaderId, NodeId, Node>;

/// A snapshot as the state machine hands it out.
type FullSnapshot = Snapshot<CommittedLeaderId, NodeId, Node, SnapshotData>;

/// The body of a [`MessageKind::FullSnapshot`] request, as the leader writes it.
#[derive(Serialize)]
struct FullSnapshotOut<'a> {
    vote: &'a Vote,
    meta: &'a Meta,
    data: &'a [u8],
}

/// The body of a [`MessageKind::FullSnapshot`] request, as the follower reads it
/// (the same layout: `&[u8]` and `Vec<u8>` encode alike).
#[derive(serde::Deserialize)]
struct FullSnapshotIn {
    vote: Vote,
    meta: Meta,
    data: Vec<u8>,
}

/// The body of a [`MessageKind::SnapshotChunk`] request, as the leader writes it:
/// `total` bytes in all, this piece starting at `offset`. Every piece
/// carries the vote and the metadata (they are small), so the follower
/// can check each against the one it is assembling.
#[derive(Serialize)]
struct ChunkOut<'a> {
    vote: &'a Vote,
    meta: &'a Meta,
    total: u64,
    offset: u64,
    data: &'a [u8],
}

/// [`ChunkOut`] as the follower reads it.
#[derive(serde::Deserialize)]
struct ChunkIn {
    vote: Vote,
    meta: Meta,
    total: u64,
    offset: u64,
    data: Vec<u8>,
}

/// The follower's answer to a piece that is not the last.
#[derive(Debug, Serialize, serde::Deserialize)]
struct ChunkAck {
    /// The bytes the follower holds now.
    received: u64,
}

/// openraft's network factory over a [`Transport`]: one client per peer,
/// all sharing the transport.
pub struct TransportNetwork<E, T: Transport> {
    source: NodeId,
    transport: Arc<T>,
    snapshot_chunk_size: usize,
    /// Clients made so far; numbers each client's append streams.
    clients: u64,
    _runtime: PhantomData<fn() -> E>,
}

impl<E, T: Transport> TransportNetwork<E, T> {
    /// The network of node `source`, sending through `transport` (which
    /// must know the peers' addresses).
    pub fn new(source: NodeId, transport: Arc<T>) -> Self {
        TransportNetwork {
            source,
            transport,
            snapshot_chunk_size: SNAPSHOT_CHUNK_SIZE,
            clients: 0,
            _runtime: PhantomData,
        }
    }

    /// Sends snapshots larger than `size` bytes in pieces of `size` (at
    /// least 256); the default is [`SNAPSHOT_CHUNK_SIZE`]. Tests use a
    /// small size to exercise the pieces.
    pub fn with_snapshot_chunk_size(mut self, size: usize) -> Self {
        self.snapshot_chunk_size = size.max(SNAPSHOT_CHUNK_SIZE_MIN);
        self
    }
}

impl<E, T: Transport> fmt::Debug for TransportNetwork<E, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TransportNetwork")
            .field("source", &self.source)
            .field("transport", &self.transport)
            .finish()
    }
}

impl<E: Env, T: Transport> RaftNetworkFactory<TypeConfig<E>> for TransportNetwork<E, T> {
    type Network = TransportClient<E, T>;

    async fn new_client(&mut self, target: NodeId, _node: &Node) -> Self::Network {
        self.clients += 1;
        TransportClient {
            source: self.source,
            target,
            transport: Arc::clone(&self.transport),
            snapshot_chunk_size: self.snapshot_chunk_size,
            number: self.clients,
            streams: 0,
            _runtime: PhantomData,
        }
    }
}

/// The client of one peer: sends that peer openraft's RPCs.
pub struct TransportClient<E, T: Transport> {
    source: NodeId,
    target: NodeId,
    transport: Arc<T>,
    snapshot_chunk_size: usize,
    /// This client's number among its factory's ([`pipeline::StreamId`]).
    number: u64,
    /// Append streams started so far.
    streams: u64,
    _runtime: PhantomData<fn() -> E>,
}

impl<E, T: Transport> fmt::Debug for TransportClient<E, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TransportClient")
            .field("source", &self.source)
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

impl<E: Env, T: Transport> TransportClient<E, T> {
    /// Sends a snapshot too large for one message in pieces of
    /// `snapshot_chunk_size` (halved whenever the transport finds a piece
    /// too large), each acknowledged before the next; the follower installs
    /// it once the last piece is in.
    async fn send_in_pieces(
        &mut self,
        vote: &Vote,
        meta: &Meta,
        data: &[u8],
        mut cancel: std::pin::Pin<&mut impl Future<Output = ReplicationClosed>>,
    ) -> Result<SnapshotResponse<TypeConfig<E>>, StreamingError<TypeConfig<E>>> {
        let action = RPCTypes::InstallSnapshot;
        let mut offset = 0usize;
        let mut size = self.snapshot_chunk_size;
        loop {
            let end = (offset + size).min(data.len());
            let message = ChunkOut {
                vote,
                meta,
                total: data.len() as u64,
                offset: offset as u64,
                data: &data[offset..end],
            };
            let exchange = pin!(self.exchange(MessageKind::SnapshotChunk, &message, None));
            let answer = match select(exchange, cancel.as_mut()).await {
                Either::Left((answer, _)) => answer,
                Either::Right((closed, _)) => return Err(StreamingError::Closed(closed)),
            };
            let answer = match answer {
                Err(Failure::Transport(TransportError::FrameTooLarge { .. }))
                    if size > SNAPSHOT_CHUNK_SIZE_MIN =>
                {
                    size = (size / 2).max(SNAPSHOT_CHUNK_SIZE_MIN);
                    continue;
                }
                Err(failure) => {
                    return Err(StreamingError::from(self.failure_error(failure, action)));
                }
                Ok(answer) => answer,
            };
            if end == data.len() {
                return self.decode(&answer, action).map_err(StreamingError::from);
            }
            self.check_piece_received(&answer, end)?;
            offset = end;
        }
    }

    /// Checks a piece's acknowledgement: the follower must hold exactly
    /// the bytes sent so far, else the transfer starts over.
    fn check_piece_received(
        &self,
        answer: &Bytes,
        end: usize,
    ) -> Result<(), StreamingError<TypeConfig<E>>> {
        let ack: ChunkAck = self
            .decode(answer, RPCTypes::InstallSnapshot)
            .map_err(StreamingError::from)?;
        if ack.received == end as u64 {
            return Ok(());
        }
        Err(StreamingError::from(RPCError::Unreachable(
            Unreachable::from_string(format!(
                "node {} holds {} bytes of the snapshot after a piece ending at {end}; \
                 the transfer starts over",
                self.target, ack.received
            )),
        )))
    }

    /// One RPC: encodes `message`, calls the peer (within `ttl`, if given,
    /// besides the transport's bound), decodes the response.
    async fn call<Q: Serialize, P: DeserializeOwned>(
        &self,
        kind: MessageKind,
        action: RPCTypes,
        message: &Q,
        ttl: Option<Duration>,
    ) -> Result<P, RPCError<TypeConfig<E>>> {
        let response = self
            .exchange(kind, message, ttl)
            .await
            .map_err(|failure| self.failure_error(failure, action))?;
        self.decode(&response, action)
    }

    /// Sends one message and waits for the answer's bytes.
    async fn exchange<Q: Serialize>(
        &self,
        kind: MessageKind,
        message: &Q,
        ttl: Option<Duration>,
    ) -> Result<Bytes, Failure> {
        let body = postcard::to_allocvec(message).expect("a Raft message encodes into memory");
        let request = Request {
            kind: kind.into(),
            group: RAFT_GROUP,
            body: Bytes::from(body),
        };
        let call = self.transport.call(self.target, request);
        match ttl {
            Some(ttl) => match TypeConfig::<E>::timeout(ttl, call).await {
                Ok(response) => response.map_err(Failure::Transport),
                Err(_elapsed) => Err(Failure::Elapsed(ttl)),
            },
            None => call.await.map_err(Failure::Transport),
        }
    }

    /// One plain AppendEntries; if the entries do not fit in one message,
    /// sends the largest prefix that does (halving) and answers
    /// `PartialSuccess` with its last log id, so openraft sends the rest
    /// next. A request that never fits (one entry larger than a message)
    /// fails.
    async fn append_plain(
        &self,
        mut rpc: AppendEntriesRequest<TypeConfig<E>>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig<E>>, RPCError<TypeConfig<E>>> {
        // A heartbeat is bounded by openraft's time-to-live; replication of
        // entries only by the transport (see the module docs).
        let ttl = rpc.entries.is_empty().then(|| option.soft_ttl());
        let action = RPCTypes::AppendEntries;
        let mut shortened = false;
        loop {
            match self.exchange(MessageKind::AppendEntries, &rpc, ttl).await {
                Err(Failure::Transport(TransportError::FrameTooLarge { .. }))
                    if rpc.entries.len() > 1 =>
                {
                    let keep = rpc.entries.len() / 2;
                    rpc.entries.truncate(keep);
                    shortened = true;
                }
                Err(failure) => return Err(self.failure_error(failure, action)),
                Ok(response) => {
                    let response: AppendEntriesResponse<TypeConfig<E>> =
                        self.decode(&response, action)?;
                    return Ok(match response {
                        AppendEntriesResponse::Success if shortened => {
                            let last = rpc.entries.last().map(|entry| entry.log_id);
                            AppendEntriesResponse::PartialSuccess(last)
                        }
                        other => other,
                    });
                }
            }
        }
    }

    fn failure_error(&self, failure: Failure, action: RPCTypes) -> RPCError<TypeConfig<E>> {
        match failure {
            Failure::Transport(error) => self.rpc_error(error, action),
            Failure::Elapsed(after) => self.timeout(action, after),
        }
    }

    fn decode<P: DeserializeOwned>(
        &self,
        response: &[u8],
        action: RPCTypes,
    ) -> Result<P, RPCError<TypeConfig<E>>> {
        postcard::from_bytes(response).map_err(|error| {
            RPCError::Unreachable(Unreachable::from_string(format!(
                "node {} answered a {action} request with a body that does not decode: \
                 {error}; is it running another version?",
                self.target
            )))
        })
    }

    fn timeout(&self, action: RPCTypes, after: Duration) -> RPCError<TypeConfig<E>> {
        RPCError::Timeout(Timeout {
            action,
            id: self.source,
            target: self.target,
            timeout: after,
        })
    }

    /// Maps a transport failure to openraft's error; see the module docs.
    fn rpc_error(&self, error: TransportError, action: RPCTypes) -> RPCError<TypeConfig<E>> {
        match error {
            TransportError::Unreachable { .. }
            | TransportError::Closed { .. }
            | TransportError::Remote { .. } => {
                RPCError::Unreachable(Unreachable::from_string(error.to_string()))
            }
            TransportError::TimedOut { after, .. } => self.timeout(action, after),
            // A frame too large, and any failure a later transport adds,
            // is not a peer being down.
            _ => RPCError::Network(NetworkError::from_string(error.to_string())),
        }
    }
}

/// Why an exchange produced no answer.
#[derive(Debug)]
enum Failure {
    Transport(TransportError),
    Elapsed(Duration),
}

impl<E: Env, T: Transport> RaftNetworkV2<TypeConfig<E>> for TransportClient<E, T> {
    type SnapshotData = SnapshotData;

    /// One AppendEntries (openraft's probes; replication streams go through
    /// [`Self::stream_append`]); see `append_plain`.
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig<E>>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig<E>>, RPCError<TypeConfig<E>>> {
        self.append_plain(rpc, option).await
    }

    /// Pipelined replication; see `raft::pipeline`.
    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        option: RPCOption,
    ) -> BoxFuture<'s, Result<BoxStream<'s, StreamItem<E>>, RPCError<TypeConfig<E>>>>
    where
        S: Stream<Item = AppendEntriesRequest<TypeConfig<E>>> + OptionalSend + Unpin + 'static,
    {
        self.streams += 1;
        let (client, number) = (self.number, self.streams);
        let this: &'s Self = self;
        Box::pin(async move { Ok(pipeline::send(this, client, number, input, option)) })
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig<E>>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig<E>>, RPCError<TypeConfig<E>>> {
        let ttl = Some(option.soft_ttl());
        self.call(MessageKind::Vote, RPCTypes::Vote, &rpc, ttl)
            .await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig<E>>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig<E>>, RPCError<TypeConfig<E>>> {
        let ttl = Some(option.soft_ttl());
        self.call(MessageKind::PreVote, RPCTypes::Vote, &rpc, ttl)
            .await
    }

    /// Sends a snapshot whole when it fits in [`SNAPSHOT_CHUNK_SIZE`],
    /// otherwise in pieces; the last piece's answer is the follower's
    /// answer to the install. Bounded by the transport per message and
    /// cancellable by openraft, not by the time-to-live: a snapshot takes
    /// as long as its size demands.
    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: FullSnapshot,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig<E>>, StreamingError<TypeConfig<E>>> {
        let action = RPCTypes::InstallSnapshot;
        let cancel = pin!(cancel);
        // The tail (the bodies the follower will need) is read from the log
        // now, on the blocking pool. A failure ends this attempt; openraft
        // tries again with the snapshot current then.
        let meta = snapshot.meta;
        let data = snapshot.snapshot;
        let data = match TypeConfig::<E>::spawn_blocking(move || data.into_transfer_bytes()).await {
            Ok(Ok(bytes)) => bytes,
            Ok(Err(error)) | Err(error) => {
                return Err(StreamingError::Unreachable(Unreachable::from_string(
                    format!(
                        "cannot read the snapshot's log tail to send to node {}: {error}",
                        self.target
                    ),
                )));
            }
        };
        if data.len() <= self.snapshot_chunk_size {
            let message = FullSnapshotOut {
                vote: &vote,
                meta: &meta,
                data: &data,
            };
            let call = pin!(self.call(MessageKind::FullSnapshot, action, &message, None));
            return match select(call, cancel).await {
                Either::Left((result, _)) => result.map_err(StreamingError::from),
                Either::Right((closed, _)) => Err(StreamingError::Closed(closed)),
            };
        }
        self.send_in_pieces(&vote, &meta, &data, cancel).await
    }
}

type StreamItem<E> = Result<StreamAppendResult<TypeConfig<E>>, RPCError<TypeConfig<E>>>;

impl<E: Env, T: Transport> pipeline::StreamClient<E> for TransportClient<E, T> {
    async fn send_one(
        &self,
        stream: pipeline::StreamId,
        seq: u64,
        rpc: AppendEntriesRequest<TypeConfig<E>>,
        option: RPCOption,
    ) -> pipeline::Sent<E> {
        // Heartbeats are bounded by openraft's time-to-live, entries only
        // by the transport (see the module docs).
        let ttl = rpc.entries.is_empty().then(|| option.soft_ttl());
        let message = pipeline::StreamRequestOut::<E> {
            stream,
            seq,
            rpc: &rpc,
        };
        let action = RPCTypes::AppendEntries;
        match self
            .exchange(MessageKind::AppendStream, &message, ttl)
            .await
        {
            Err(Failure::Transport(TransportError::FrameTooLarge { .. })) => {
                pipeline::Sent::TooLarge(rpc)
            }
            Err(failure) => pipeline::Sent::Answer(Err(self.failure_error(failure, action))),
            Ok(response) => pipeline::Sent::Answer(self.decode(&response, action)),
        }
    }

    async fn send_plain(
        &self,
        rpc: AppendEntriesRequest<TypeConfig<E>>,
        option: RPCOption,
    ) -> StreamItem<E> {
        let prev = rpc.prev_log_id;
        let last = rpc.entries.last().map(|entry| entry.log_id).or(prev);
        let response = self.append_plain(rpc, option).await?;
        Ok(response.into_stream_result(prev, last))
    }
}

/// Serves openraft's RPCs to this node's [`Raft`]: the [`Handler`] a
/// node's server runs.
pub struct RaftService<E: Env> {
    raft: Raft<E>,
    /// Pipelined append streams from the leader(s).
    inbound: pipeline::Inbound<E>,
    /// The snapshot being received in pieces, if any.
    assembly: std::sync::Mutex<Option<Assembly>>,
    /// Whether the log chains, so received entries get their payload
    /// digests here (see `raft::codec`).
    chain: ChainMode,
}

/// A snapshot arriving in pieces: whose, which, and the bytes so far.
struct Assembly {
    vote: Vote,
    meta: Meta,
    total: u64,
    data: Vec<u8>,
}

impl<E: Env> RaftService<E> {
    /// A service answering for `raft`. It computes the payload digest of
    /// every received entry that carries an event batch, on the handler's
    /// task after decoding, so the hash chain's pass over the bytes runs
    /// off the Raft core (`raft::codec`); see
    /// [`RaftService::without_payload_digests`].
    pub fn new(raft: Raft<E>) -> Self {
        RaftService {
            raft,
            inbound: pipeline::Inbound::new(),
            assembly: std::sync::Mutex::new(None),
            chain: ChainMode::Sha256,
        }
    }

    /// Leaves received entries without payload digests: for a node whose
    /// log does not chain (`ChainMode::Off`, which exists to measure the
    /// chain's cost), where they would be a wasted pass over the bytes.
    pub fn without_payload_digests(mut self) -> Self {
        self.chain = ChainMode::Off;
        self
    }

    /// Adds one piece; returns the whole snapshot once the last one came.
    /// A first piece starts a new assembly (dropping an unfinished one); a
    /// piece that does not continue the current one is refused, and the
    /// leader starts over.
    fn assemble(
        &self,
        chunk: ChunkIn,
        source: NodeId,
    ) -> Result<Result<ChunkAck, Assembly>, HandlerError> {
        let mut slot = self.assembly.lock().expect("snapshot assembly lock");
        if chunk.offset == 0 {
            let capacity = usize::try_from(chunk.total)
                .unwrap_or(usize::MAX)
                .min(1 << 30);
            *slot = Some(Assembly {
                vote: chunk.vote,
                meta: chunk.meta.clone(),
                total: chunk.total,
                data: Vec::with_capacity(capacity),
            });
        }
        let continues = slot.as_ref().is_some_and(|a| {
            a.meta == chunk.meta
                && a.vote == chunk.vote
                && a.total == chunk.total
                && a.data.len() as u64 == chunk.offset
                && chunk.offset + chunk.data.len() as u64 <= chunk.total
        });
        if !continues {
            *slot = None;
            return Err(HandlerError::new(format!(
                "node {source} sent a snapshot piece at offset {} of {} that does not continue \
                 the snapshot being received; start the transfer over",
                chunk.offset, chunk.total
            )));
        }
        let assembly = slot.as_mut().expect("checked above");
        assembly.data.extend_from_slice(&chunk.data);
        if (assembly.data.len() as u64) < assembly.total {
            return Ok(Ok(ChunkAck {
                received: assembly.data.len() as u64,
            }));
        }
        Ok(Err(slot.take().expect("checked above")))
    }

    /// Checks a whole snapshot (its tail's chain included) and hands it to
    /// Raft. A snapshot that fails the check is refused with the reason
    /// and never reaches the state machine, where a failed install would
    /// stop the node: the leader tries again later.
    async fn install(
        &self,
        source: NodeId,
        vote: Vote,
        meta: Meta,
        data: Vec<u8>,
    ) -> Result<Bytes, HandlerError> {
        // Hashing the tail takes a while for a large one: off the runtime.
        let last = meta.last_log_id;
        let checked = TypeConfig::<E>::spawn_blocking(move || {
            let result = snapshot::check(&data, last).map(drop);
            (data, result)
        })
        .await;
        let (data, result) = checked.map_err(|error| {
            HandlerError::new(format!("this node cannot check a snapshot now: {error}"))
        })?;
        if let Err(error) = result {
            tracing::error!(%error, source, "refused a snapshot");
            return Err(HandlerError::new(format!(
                "node {source} sent a snapshot this node refuses: {error}"
            )));
        }
        let snapshot = FullSnapshot {
            meta,
            snapshot: SnapshotData::from_bytes(data),
        };
        answer(
            self.raft.install_full_snapshot(vote, snapshot).await,
            "full snapshot",
        )
    }

    async fn serve(&self, source: NodeId, request: Request) -> Result<Bytes, HandlerError> {
        if request.group != RAFT_GROUP {
            return Err(HandlerError::new(format!(
                "node {source} sent a Raft request for group {}, but this node runs only \
                 group {RAFT_GROUP}",
                request.group
            )));
        }
        let body = &request.body;
        match MessageKind::try_from(request.kind) {
            Ok(MessageKind::AppendEntries) => {
                let mut rpc: AppendEntriesRequest<TypeConfig<E>> =
                    decode(body, "append entries", source)?;
                if self.chain == ChainMode::Sha256 {
                    codec::prepare_digests(&mut rpc.entries);
                }
                answer(self.raft.append_entries(rpc).await, "append entries")
            }
            Ok(MessageKind::AppendStream) => {
                let mut request: pipeline::StreamRequestIn<E> =
                    decode(body, "append stream", source)?;
                if self.chain == ChainMode::Sha256 {
                    codec::prepare_digests(&mut request.rpc.entries);
                }
                let result = self.inbound.serve(&self.raft, source, request).await;
                answer(result, "append stream")
            }
            Ok(MessageKind::Vote) => {
                let rpc = decode(body, "vote", source)?;
                answer(self.raft.vote(rpc).await, "vote")
            }
            Ok(MessageKind::PreVote) => {
                let rpc = decode(body, "pre-vote", source)?;
                answer(self.raft.pre_vote(rpc).await, "pre-vote")
            }
            Ok(MessageKind::FullSnapshot) => {
                let message: FullSnapshotIn = decode(body, "full snapshot", source)?;
                self.install(source, message.vote, message.meta, message.data)
                    .await
            }
            Ok(MessageKind::SnapshotChunk) => {
                let chunk: ChunkIn = decode(body, "snapshot piece", source)?;
                match self.assemble(chunk, source)? {
                    Ok(ack) => answer(Ok::<_, HandlerError>(ack), "snapshot piece"),
                    Err(whole) => {
                        self.install(source, whole.vote, whole.meta, whole.data)
                            .await
                    }
                }
            }
            _ => Err(HandlerError::new(format!(
                "node {source} sent request kind {}, which a Raft peer does not send (known: \
                 {:?} to {:?}); is it running another version?",
                request.kind,
                MessageKind::AppendEntries,
                MessageKind::AppendStream
            ))),
        }
    }
}

impl<E: Env> fmt::Debug for RaftService<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RaftService").finish_non_exhaustive()
    }
}

impl<E: Env> Handler for RaftService<E> {
    fn handle(
        &self,
        caller: Caller,
        request: Request,
    ) -> impl Future<Output = Result<Bytes, HandlerError>> + Send {
        self.serve(caller.source, request)
    }
}

/// Decodes a request body of kind `what` from node `source`.
fn decode<M: DeserializeOwned>(body: &[u8], what: &str, source: NodeId) -> Result<M, HandlerError> {
    postcard::from_bytes(body).map_err(|error| {
        HandlerError::new(format!(
            "the {what} request from node {source} does not decode: {error}; \
             is it running another version?"
        ))
    })
}

/// Encodes Raft's answer to a `what` request, or refuses with its error.
fn answer<P: Serialize, E: fmt::Display>(
    result: Result<P, E>,
    what: &str,
) -> Result<Bytes, HandlerError> {
    match result {
        Ok(response) => {
            let body =
                postcard::to_allocvec(&response).expect("a Raft response encodes into memory");
            Ok(Bytes::from(body))
        }
        Err(error) => Err(HandlerError::new(format!(
            "this node cannot answer the {what} request: {error}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use std::io;

    use futures_util::StreamExt;
    use openraft::StoredMembership;

    use super::*;
    use crate::io::os::OsEnv;
    use crate::raft::log_id;

    type C = TypeConfig<OsEnv>;

    /// Answers every call the same way.
    #[derive(Debug)]
    enum Scripted {
        Fail(TransportError),
        Answer(Bytes),
        Hang,
    }

    impl Transport for Scripted {
        async fn call(&self, _target: NodeId, _request: Request) -> Result<Bytes, TransportError> {
            match self {
                Scripted::Fail(error) => Err(error.clone()),
                Scripted::Answer(body) => Ok(body.clone()),
                Scripted::Hang => std::future::pending().await,
            }
        }
    }

    fn client(transport: Scripted) -> TransportClient<OsEnv, Scripted> {
        TransportClient {
            source: 1,
            target: 2,
            transport: Arc::new(transport),
            snapshot_chunk_size: SNAPSHOT_CHUNK_SIZE,
            number: 1,
            streams: 0,
            _runtime: PhantomData,
        }
    }

    fn ttl() -> RPCOption {
        RPCOption::new(Duration::from_millis(40))
    }

    async fn vote(transport: Scripted) -> Result<VoteResponse<C>, RPCError<C>> {
        let rpc = VoteRequest {
            vote: Vote::new(1, 1),
            last_log_id: None,
            leadership_transfer: false,
        };
        client(transport).vote(rpc, ttl()).await
    }

    fn io_error() -> Arc<io::Error> {
        Arc::new(io::Error::from(io::ErrorKind::ConnectionRefused))
    }

    #[tokio::test]
    async fn transport_errors_become_raft_errors() {
        let source = io_error();
        let unreachable = TransportError::Unreachable { target: 2, source };
        let closed = TransportError::Closed {
            target: 2,
            source: io_error(),
        };
        let remote = TransportError::Remote {
            target: 2,
            message: "stopped".into(),
        };
        for error in [unreachable, closed, remote] {
            let result = vote(Scripted::Fail(error)).await;
            assert!(
                matches!(result, Err(RPCError::Unreachable(_))),
                "{result:?}"
            );
        }
        let after = Duration::from_secs(1);
        let timed_out = TransportError::TimedOut { target: 2, after };
        let result = vote(Scripted::Fail(timed_out)).await;
        assert!(matches!(result, Err(RPCError::Timeout(t)) if t.timeout == after));
        let too_large = TransportError::FrameTooLarge {
            size_bytes: 2,
            size_bytes_max: 1,
        };
        let result = vote(Scripted::Fail(too_large)).await;
        assert!(matches!(result, Err(RPCError::Network(_))), "{result:?}");
    }

    #[tokio::test]
    async fn silence_times_out_and_garbage_is_refused() {
        let result = vote(Scripted::Hang).await;
        assert!(matches!(result, Err(RPCError::Timeout(t)) if t.target == 2));
        let heartbeat = AppendEntriesRequest {
            vote: Vote::new_committed(1, 1),
            prev_log_id: None,
            entries: Vec::new(),
            leader_commit: None,
        };
        let result = client(Scripted::Hang)
            .append_entries(heartbeat, ttl())
            .await;
        assert!(matches!(result, Err(RPCError::Timeout(_))), "{result:?}");
        let garbage = Bytes::from_static(&[0xff, 0xff, 0xff]);
        let result = vote(Scripted::Answer(garbage)).await;
        assert!(
            matches!(result, Err(RPCError::Unreachable(_))),
            "{result:?}"
        );
        let granted = VoteResponse::<C>::new(Vote::new(1, 1), None, true);
        let body = postcard::to_allocvec(&granted).expect("encodes");
        let result = vote(Scripted::Answer(Bytes::from(body))).await;
        assert_eq!(result.expect("answered"), granted);
    }

    #[test]
    fn snapshot_body_reads_back_as_written() {
        let vote = Vote::new_committed(3, 1);
        let meta = Meta {
            last_log_id: Some(log_id(2, 7)),
            last_membership: StoredMembership::default(),
        };
        let data = vec![1, 2, 3, 0xff];
        let out = FullSnapshotOut {
            vote: &vote,
            meta: &meta,
            data: &data,
        };
        let body = postcard::to_allocvec(&out).expect("encodes");
        let back: FullSnapshotIn = postcard::from_bytes(&body).expect("decodes");
        assert_eq!((back.vote, back.meta, back.data), (vote, meta, data));
    }

    /// Refuses bodies above `max` bytes, as a transport bounds its frames,
    /// and otherwise accepts the append; records how many entries came.
    #[derive(Debug)]
    struct Bounded {
        max: usize,
        sent: std::sync::Mutex<Vec<usize>>,
    }

    impl Transport for Bounded {
        async fn call(&self, _target: NodeId, request: Request) -> Result<Bytes, TransportError> {
            let rpc: AppendEntriesRequest<C> = postcard::from_bytes(&request.body).unwrap();
            self.sent.lock().unwrap().push(rpc.entries.len());
            if request.body.len() > self.max {
                return Err(TransportError::FrameTooLarge {
                    size_bytes: request.body.len() as u64,
                    size_bytes_max: self.max as u64,
                });
            }
            let success = AppendEntriesResponse::<C>::Success;
            Ok(Bytes::from(postcard::to_allocvec(&success).unwrap()))
        }
    }

    #[tokio::test]
    async fn entries_too_large_for_one_message_go_as_a_prefix() {
        let entries: Vec<_> = (1..=8)
            .map(|index| crate::raft::Entry {
                log_id: log_id(1, index),
                payload: openraft::EntryPayload::Blank,
            })
            .collect();
        let rpc = |entries: Vec<crate::raft::Entry>| AppendEntriesRequest::<C> {
            vote: Vote::new_committed(1, 1),
            prev_log_id: Some(log_id(1, 0)),
            entries,
            leader_commit: None,
        };
        // Room for two entries, not three.
        let two = postcard::to_allocvec(&rpc(entries[..2].to_vec()))
            .unwrap()
            .len();
        let three = postcard::to_allocvec(&rpc(entries[..3].to_vec()))
            .unwrap()
            .len();
        assert!(two < three);
        let bounded = Bounded {
            max: two,
            sent: std::sync::Mutex::new(Vec::new()),
        };
        let mut client = TransportClient::<OsEnv, Bounded> {
            source: 1,
            target: 2,
            transport: Arc::new(bounded),
            snapshot_chunk_size: SNAPSHOT_CHUNK_SIZE,
            number: 1,
            streams: 0,
            _runtime: PhantomData,
        };
        let response = client
            .append_entries(rpc(entries.clone()), ttl())
            .await
            .unwrap();
        assert_eq!(
            response,
            AppendEntriesResponse::PartialSuccess(Some(log_id(1, 2)))
        );
        assert_eq!(*client.transport.sent.lock().unwrap(), vec![8, 4, 2]);
        // One entry that never fits still fails, as before.
        let one = Bounded {
            max: 1,
            sent: std::sync::Mutex::new(Vec::new()),
        };
        client.transport = Arc::new(one);
        let result = client
            .append_entries(rpc(entries[..1].to_vec()), ttl())
            .await;
        assert!(matches!(result, Err(RPCError::Network(_))), "{result:?}");
    }

    /// Holds every pipelined append until the test answers it.
    #[derive(Debug, Default)]
    struct Gate {
        held: std::sync::Mutex<Vec<(u64, tokio::sync::oneshot::Sender<Bytes>)>>,
        plain: std::sync::Mutex<Vec<usize>>,
        max: usize,
    }

    impl Transport for Gate {
        async fn call(&self, _target: NodeId, request: Request) -> Result<Bytes, TransportError> {
            if request.kind == MessageKind::AppendEntries as u8 {
                let rpc: AppendEntriesRequest<C> = postcard::from_bytes(&request.body).unwrap();
                self.plain.lock().unwrap().push(rpc.entries.len());
            }
            if request.body.len() > self.max {
                return Err(TransportError::FrameTooLarge {
                    size_bytes: request.body.len() as u64,
                    size_bytes_max: self.max as u64,
                });
            }
            if request.kind == MessageKind::AppendEntries as u8 {
                let success = AppendEntriesResponse::<C>::Success;
                return Ok(Bytes::from(postcard::to_allocvec(&success).unwrap()));
            }
            assert_eq!(request.kind, MessageKind::AppendStream as u8);
            let message: pipeline::StreamRequestIn<OsEnv> =
                postcard::from_bytes(&request.body).unwrap();
            let (answer, answered) = tokio::sync::oneshot::channel();
            self.held.lock().unwrap().push((message.seq, answer));
            answered.await.map_err(|_| TransportError::Closed {
                target: 2,
                source: io_error(),
            })
        }
    }

    fn gate(max: usize) -> TransportClient<OsEnv, Gate> {
        TransportClient {
            source: 1,
            target: 2,
            transport: Arc::new(Gate {
                max,
                ..Gate::default()
            }),
            snapshot_chunk_size: SNAPSHOT_CHUNK_SIZE,
            number: 1,
            streams: 0,
            _runtime: PhantomData,
        }
    }

    /// Request `k` (from 1) of a stream: one blank entry at index `k`.
    fn nth(k: u64) -> AppendEntriesRequest<C> {
        AppendEntriesRequest {
            vote: Vote::new_committed(1, 1),
            prev_log_id: Some(log_id(1, k - 1)),
            entries: vec![crate::raft::Entry {
                log_id: log_id(1, k),
                payload: openraft::EntryPayload::Blank,
            }],
            leader_commit: None,
        }
    }

    fn ok(k: u64) -> Bytes {
        let result: StreamAppendResult<C> = Ok(Some(log_id(1, k)));
        Bytes::from(postcard::to_allocvec(&result).unwrap())
    }

    async fn held_count(transport: &Gate, count: usize) {
        for _ in 0..2000 {
            if transport.held.lock().unwrap().len() >= count {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!("{count} requests never were in flight at once");
    }

    fn answer(transport: &Gate, seq: u64, body: Bytes) {
        let mut held = transport.held.lock().unwrap();
        let at = held.iter().position(|(s, _)| *s == seq).expect("held");
        let (_, sender) = held.remove(at);
        sender.send(body).unwrap();
    }

    #[tokio::test]
    async fn a_stream_keeps_requests_in_flight_and_answers_in_order() {
        let mut client = gate(usize::MAX);
        let transport = Arc::clone(&client.transport);
        let count = pipeline::STREAM_INFLIGHT_MAX as u64 + 2;
        let input = futures_util::stream::iter((1..=count).map(nth));
        let answers = tokio::spawn(async move {
            let stream = client.stream_append(input, ttl()).await.unwrap();
            stream.collect::<Vec<_>>().await
        });
        // As many as allowed go at once, before any answer; no more.
        held_count(&transport, pipeline::STREAM_INFLIGHT_MAX).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(
            transport.held.lock().unwrap().len(),
            pipeline::STREAM_INFLIGHT_MAX
        );
        // Answered out of order (the newest first): yielded in order.
        for seq in (0..pipeline::STREAM_INFLIGHT_MAX as u64).rev() {
            answer(&transport, seq, ok(seq + 1));
        }
        held_count(&transport, 2).await;
        answer(&transport, count - 1, ok(count));
        answer(&transport, count - 2, ok(count - 1));
        let answers = answers.await.unwrap();
        let indexes: Vec<_> = answers
            .into_iter()
            .map(|item| item.unwrap().unwrap().unwrap().index)
            .collect();
        assert_eq!(indexes, (1..=count).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_stream_ends_at_its_first_refusal() {
        let mut client = gate(usize::MAX);
        let transport = Arc::clone(&client.transport);
        let input = futures_util::stream::iter((1..=4).map(nth));
        let answers = tokio::spawn(async move {
            let stream = client.stream_append(input, ttl()).await.unwrap();
            stream.collect::<Vec<_>>().await
        });
        held_count(&transport, 4).await;
        let conflict: StreamAppendResult<C> =
            Err(openraft::raft::StreamAppendError::Conflict(log_id(1, 1)));
        answer(&transport, 3, ok(4));
        answer(&transport, 2, ok(3));
        answer(
            &transport,
            1,
            Bytes::from(postcard::to_allocvec(&conflict).unwrap()),
        );
        answer(&transport, 0, ok(1));
        let answers = answers.await.unwrap();
        assert_eq!(answers.len(), 2, "{answers:?}");
        assert_eq!(answers[0], Ok(Ok(Some(log_id(1, 1)))));
        assert_eq!(answers[1], Ok(conflict));
    }

    #[tokio::test]
    async fn a_request_too_large_for_the_stream_goes_plain_and_ends_it() {
        // One blank entry fits a stream message; eight do not, nor do they
        // as a plain message; two do as a plain one.
        let big = AppendEntriesRequest::<C> {
            vote: Vote::new_committed(1, 1),
            prev_log_id: Some(log_id(1, 1)),
            entries: (2..=9)
                .map(|index| crate::raft::Entry {
                    log_id: log_id(1, index),
                    payload: openraft::EntryPayload::Blank,
                })
                .collect(),
            leader_commit: None,
        };
        let two = AppendEntriesRequest::<C> {
            entries: big.entries[..2].to_vec(),
            ..big.clone()
        };
        let four = AppendEntriesRequest::<C> {
            entries: big.entries[..4].to_vec(),
            ..big.clone()
        };
        let first = pipeline::StreamRequestOut::<OsEnv> {
            stream: pipeline::StreamId {
                term: 1,
                client: 1,
                number: 1,
            },
            seq: 0,
            rpc: &nth(1),
        };
        let size = |bytes: Vec<u8>| bytes.len();
        let max = size(postcard::to_allocvec(&two).unwrap())
            .max(size(postcard::to_allocvec(&first).unwrap()));
        assert!(max < size(postcard::to_allocvec(&four).unwrap()));
        let mut client = gate(max);
        let transport = Arc::clone(&client.transport);
        let input = futures_util::stream::iter(vec![nth(1), big, nth(10)]);
        let answers = tokio::spawn(async move {
            let stream = client.stream_append(input, ttl()).await.unwrap();
            stream.collect::<Vec<_>>().await
        });
        held_count(&transport, 1).await;
        answer(&transport, 0, ok(1));
        let answers = answers.await.unwrap();
        assert_eq!(
            answers,
            vec![Ok(Ok(Some(log_id(1, 1)))), Ok(Ok(Some(log_id(1, 3))))]
        );
        assert_eq!(*transport.plain.lock().unwrap(), vec![8, 4, 2]);
    }
}

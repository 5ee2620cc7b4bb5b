//! Pipelined replication: openraft's `stream_append` over the transport.
//!
//! openraft replicates to a follower as a stream of AppendEntries
//! requests, produced as the leader submits entries to its log. Its default
//! network sends one request and waits for the answer (which comes after
//! the follower's `fdatasync`) before sending the next, so entries the
//! leader appends meanwhile wait for a whole round trip and a remote sync
//! before they even leave. Here a stream keeps up to
//! [`STREAM_INFLIGHT_MAX`] requests in flight; the follower feeds them to
//! its Raft core in order and its group commit covers several at once.
//!
//! **Client** ([`send`]): every request of a stream is one transport call
//! of kind [`MessageKind::AppendStream`](sluice_model::transport::MessageKind::AppendStream) carrying its [`StreamId`] and sequence
//! number. Answers are yielded in request order (openraft requires it);
//! the stream ends after the first answer that is not a success, since
//! the follower ends its side there too.
//!
//! **Server** ([`Inbound`]): the transport may deliver a stream's requests
//! in any order (the TCP server answers a connection's requests as they
//! finish, not in order; the simulated network reorders), so requests
//! wait in a reorder buffer until
//! their sequence number is next, then go, in order, into one
//! `Raft::stream_append` per stream, whose answers go back in the same
//! order. A client runs one stream at a time, so a newer stream of the
//! same client (same source node and client number) replaces the older
//! one: the older stream's input ends and its unanswered requests fail.
//! Requests of a stream older than the current one are refused.
//!
//! A request too large for one transport frame falls back to the plain
//! AppendEntries call (which sends the largest prefix that fits) once
//! every earlier request of the stream is answered, and ends the stream.

use crate::io::Env;
use sluice_model::constants::STREAM_REORDER_WINDOW;
use sluice_model::constants::STREAMS_PER_SOURCE_MAX;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use futures_util::future::{BoxFuture, Either, select};
use futures_util::stream::{BoxStream, FuturesOrdered, Stream, StreamExt};
use openraft::alias::OneshotSenderOf;
use openraft::async_runtime::OneshotSender;
use openraft::error::RPCError;
use openraft::network::RPCOption;
use openraft::raft::{AppendEntriesRequest, StreamAppendResult};
use openraft::type_config::TypeConfigExt;
use serde::{Deserialize, Serialize};

use super::{NodeId, Raft, TypeConfig};
use sluice_model::transport::HandlerError;

pub use sluice_model::constants::STREAM_INFLIGHT_MAX;

/// Names a stream: the leader's term, the client (one per follower and
/// purpose, numbered by the leader's network factory) and the stream's
/// number within that client. Ordered, so a stale stream is recognised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct StreamId {
    /// The leader's term when the stream began.
    pub term: u64,
    /// The client within the leader's process.
    pub client: u64,
    /// The stream within the client.
    pub number: u64,
}

/// What one request carries (the sending side borrows the request).
#[derive(Serialize)]
#[serde(bound = "")]
pub(crate) struct StreamRequestOut<'a, E: Env> {
    pub(crate) stream: StreamId,
    pub(crate) seq: u64,
    pub(crate) rpc: &'a AppendEntriesRequest<TypeConfig<E>>,
}

/// What one request carries (the receiving side).
#[derive(Deserialize)]
#[serde(bound = "")]
pub(crate) struct StreamRequestIn<E: Env> {
    pub(crate) stream: StreamId,
    pub(crate) seq: u64,
    pub(crate) rpc: AppendEntriesRequest<TypeConfig<E>>,
}

type Rpc<E> = AppendEntriesRequest<TypeConfig<E>>;
type Item<E> = Result<StreamAppendResult<TypeConfig<E>>, RPCError<TypeConfig<E>>>;

/// How one request of a stream ended, as its call reports it.
pub(crate) enum Sent<E: Env> {
    /// Answered (or failed): yield it; anything but a success ends the
    /// stream.
    Answer(Item<E>),
    /// Too large for one frame: send it the plain way, in order.
    TooLarge(Rpc<E>),
}

/// The calls a stream needs from the client it runs on.
pub(crate) trait StreamClient<E: Env>: Sync {
    /// Sends request `seq` of `stream`.
    fn send_one(
        &self,
        stream: StreamId,
        seq: u64,
        rpc: Rpc<E>,
        option: RPCOption,
    ) -> impl Future<Output = Sent<E>> + Send;

    /// Sends `rpc` as one plain AppendEntries (shortened to fit if need
    /// be) and converts the answer to a stream result.
    fn send_plain(&self, rpc: Rpc<E>, option: RPCOption) -> impl Future<Output = Item<E>> + Send;
}

struct Pipeline<'s, E: Env, S> {
    /// Set from the first request: its leader's term names the stream.
    stream: Option<StreamId>,
    input: S,
    input_done: bool,
    in_flight: FuturesOrdered<BoxFuture<'s, Sent<E>>>,
    seq: u64,
    stopped: bool,
}

/// The client side: sends `input` as stream `number` of client
/// `client_number` through `client`, [`STREAM_INFLIGHT_MAX`] requests at a
/// time, and yields the answers in order.
pub(crate) fn send<'s, E, C, S>(
    client: &'s C,
    client_number: u64,
    number: u64,
    input: S,
    option: RPCOption,
) -> BoxStream<'s, Item<E>>
where
    E: Env,
    C: StreamClient<E>,
    S: Stream<Item = Rpc<E>> + Send + Unpin + 'static,
{
    let pipeline = Pipeline::<E, S> {
        stream: None,
        input,
        input_done: false,
        in_flight: FuturesOrdered::new(),
        seq: 0,
        stopped: false,
    };
    Box::pin(futures_util::stream::unfold(pipeline, move |mut p| {
        let option = option.clone();
        async move {
            if p.stopped {
                return None;
            }
            loop {
                let step = if p.input_done || p.in_flight.len() >= STREAM_INFLIGHT_MAX {
                    Either::Right(p.in_flight.next().await)
                } else if p.in_flight.is_empty() {
                    Either::Left(p.input.next().await)
                } else {
                    // Dropping the losing `next()` loses nothing: both keep
                    // their state in the stream itself.
                    match select(p.input.next(), p.in_flight.next()).await {
                        Either::Left((rpc, _)) => Either::Left(rpc),
                        Either::Right((sent, _)) => Either::Right(sent),
                    }
                };
                match step {
                    Either::Left(Some(rpc)) => {
                        let stream = *p.stream.get_or_insert(StreamId {
                            term: rpc.vote.leader_id.term,
                            client: client_number,
                            number,
                        });
                        let seq = p.seq;
                        p.seq += 1;
                        let call = client.send_one(stream, seq, rpc, option.clone());
                        #[cfg(feature = "stage-trace")]
                        let call = {
                            let started = sluice_model::trace::start();
                            async move {
                                let sent = call.await;
                                sluice_model::trace::span(
                                    "replication: leader sends a request → its answer is back",
                                    started,
                                );
                                sent
                            }
                        };
                        p.in_flight.push_back(Box::pin(call));
                    }
                    Either::Left(None) => {
                        p.input_done = true;
                        if p.in_flight.is_empty() {
                            return None;
                        }
                    }
                    Either::Right(None) => return None,
                    Either::Right(Some(Sent::Answer(item))) => {
                        p.stopped = !matches!(item, Ok(Ok(_)));
                        return Some((item, p));
                    }
                    Either::Right(Some(Sent::TooLarge(rpc))) => {
                        // Every earlier request is answered (the set yields
                        // in order); later ones are abandoned with the
                        // stream, and openraft sends the rest next.
                        p.stopped = true;
                        let item = client.send_plain(rpc, option.clone()).await;
                        return Some((item, p));
                    }
                }
            }
        }
    }))
}

type Reply<E> = OneshotSenderOf<TypeConfig<E>, Result<StreamAppendResult<TypeConfig<E>>, String>>;

/// One stream on the server: requests waiting for their turn, requests
/// handed to Raft and not yet taken, and the replies owed, in order.
struct Shared<E: Env> {
    next_seq: u64,
    parked: BTreeMap<u64, (Rpc<E>, Reply<E>)>,
    ready: VecDeque<Rpc<E>>,
    replies: VecDeque<Reply<E>>,
    closed: bool,
    waker: Option<Waker>,
}

impl<E: Env> Shared<E> {
    /// Ends the stream: its input ends, and every request not yet answered
    /// fails (dropping a reply tells its waiting handler).
    fn close(&mut self) {
        self.closed = true;
        self.parked.clear();
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }
}

/// The input Raft reads a stream's requests from, in order.
struct Input<E: Env>(Arc<Mutex<Shared<E>>>);

impl<E: Env> Stream for Input<E> {
    type Item = Rpc<E>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Rpc<E>>> {
        let mut shared = self.0.lock().expect("stream lock");
        if let Some(rpc) = shared.ready.pop_front() {
            return Poll::Ready(Some(rpc));
        }
        if shared.closed {
            return Poll::Ready(None);
        }
        shared.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// A stream on the server, shared by its requests' handlers and its Raft
/// side.
type StreamRef<E> = Arc<Mutex<Shared<E>>>;

/// The server's streams: by (source node, client), the current stream and
/// when it was last used (a tick of [`Inbound`]).
type Streams<E> = HashMap<(NodeId, u64), (StreamId, StreamRef<E>, u64)>;

/// The server side: every inbound stream, by source node and client.
pub(crate) struct Inbound<E: Env> {
    streams: Mutex<Streams<E>>,
    ticks: std::sync::atomic::AtomicU64,
}

impl<E: Env> Inbound<E> {
    pub(crate) fn new() -> Self {
        Inbound {
            streams: Mutex::new(HashMap::new()),
            ticks: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Takes request `seq` of a stream from `source` and waits for Raft's
    /// answer to it (after the follower's sync).
    pub(crate) async fn serve(
        &self,
        raft: &Raft<E>,
        source: NodeId,
        request: StreamRequestIn<E>,
    ) -> Result<StreamAppendResult<TypeConfig<E>>, HandlerError> {
        #[cfg(feature = "stage-trace")]
        let started = sluice_model::trace::start();
        let StreamRequestIn { stream, seq, rpc } = request;
        let shared = self.stream(raft, source, stream)?;
        let (reply, answer) = TypeConfig::<E>::oneshot();
        {
            let mut shared = shared.lock().expect("stream lock");
            if shared.closed {
                return Err(HandlerError::new(format!(
                    "append stream {stream:?} from node {source} has ended; start a new one"
                )));
            }
            if seq < shared.next_seq || seq >= shared.next_seq + STREAM_REORDER_WINDOW {
                return Err(HandlerError::new(format!(
                    "request {seq} of append stream {stream:?} from node {source} is outside \
                     its window (next {}); start a new stream",
                    shared.next_seq
                )));
            }
            shared.parked.insert(seq, (rpc, reply));
            let mut moved = false;
            loop {
                let next = shared.next_seq;
                let Some((rpc, reply)) = shared.parked.remove(&next) else {
                    break;
                };
                shared.next_seq += 1;
                shared.replies.push_back(reply);
                shared.ready.push_back(rpc);
                moved = true;
            }
            if moved && let Some(waker) = shared.waker.take() {
                waker.wake();
            }
        }
        let answer = answer.await;
        #[cfg(feature = "stage-trace")]
        sluice_model::trace::span(
            "replication: follower has a request → Raft answers it (append, sync)",
            started,
        );
        match answer {
            Ok(Ok(result)) => Ok(result),
            Ok(Err(fatal)) => Err(HandlerError::new(format!(
                "this node cannot answer the append request: {fatal}"
            ))),
            Err(_) => Err(HandlerError::new(format!(
                "append stream {stream:?} from node {source} ended before request {seq} was \
                 answered (a newer stream replaced it, or an earlier request failed)"
            ))),
        }
    }

    /// The stream `stream` of `source`: the current one, or a new one that
    /// replaces an older stream of the same client.
    fn stream(
        &self,
        raft: &Raft<E>,
        source: NodeId,
        stream: StreamId,
    ) -> Result<StreamRef<E>, HandlerError> {
        let now = self
            .ticks
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut streams = self.streams.lock().expect("streams lock");
        let key = (source, stream.client);
        match streams.get_mut(&key) {
            Some((current, shared, used)) if *current == stream => {
                *used = now;
                return Ok(Arc::clone(shared));
            }
            Some((current, _, _)) if *current > stream => {
                return Err(HandlerError::new(format!(
                    "append stream {stream:?} from node {source} is older than its stream \
                     {current:?}; it was abandoned"
                )));
            }
            _ => {}
        }
        if let Some((_, old, _)) = streams.remove(&key) {
            old.lock().expect("stream lock").close();
        }
        let from_source: Vec<_> = streams
            .iter()
            .filter(|((node, _), _)| *node == source)
            .map(|(key, (_, _, used))| (*used, *key))
            .collect();
        if from_source.len() >= STREAMS_PER_SOURCE_MAX {
            let idle = from_source.iter().min().map(|(_, key)| *key);
            if let Some((_, old, _)) = idle.and_then(|key| streams.remove(&key)) {
                old.lock().expect("stream lock").close();
            }
        }
        let shared = Arc::new(Mutex::new(Shared {
            next_seq: 0,
            parked: BTreeMap::new(),
            ready: VecDeque::new(),
            replies: VecDeque::new(),
            closed: false,
            waker: None,
        }));
        streams.insert(key, (stream, Arc::clone(&shared), now));
        let output = raft.stream_append(Input(Arc::clone(&shared)));
        drop(TypeConfig::<E>::spawn(answer_in_order::<E>(
            output,
            Arc::clone(&shared),
        )));
        Ok(shared)
    }
}

/// Hands each of Raft's answers to the request it answers, in order; once
/// Raft ends the stream (a conflict, a higher vote, or it stopped), the
/// stream is closed and the requests still waiting fail.
async fn answer_in_order<E: Env>(
    output: impl Stream<
        Item = Result<StreamAppendResult<TypeConfig<E>>, openraft::error::Fatal<TypeConfig<E>>>,
    > + Send
    + 'static,
    shared: Arc<Mutex<Shared<E>>>,
) {
    let mut output = std::pin::pin!(output);
    while let Some(item) = output.next().await {
        let reply = shared.lock().expect("stream lock").replies.pop_front();
        if let Some(reply) = reply {
            let _ = reply.send(item.map_err(|fatal| fatal.to_string()));
        }
    }
    let mut shared = shared.lock().expect("stream lock");
    shared.close();
    shared.replies.clear();
}

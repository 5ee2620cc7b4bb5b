//! The network seam: request/response messages between node ids, and a way
//! to serve them.
//!
//! A [`Transport`] sends one [`Request`] to a node and returns the body of
//! its response; a [`Handler`] answers the requests a node receives. The
//! seam is a message pipe and nothing more: it knows node ids, a message
//! kind, a group id and opaque bodies, not Raft. It names no async runtime,
//! so the TCP transport (`sluice-client`, on tokio) and the simulated one
//! (`SimTransport`, on madsim) implement the same traits.
//!
//! ### Fault model
//! - A message may be lost, delayed, duplicated, or delivered after later
//!   ones: there is no ordering across calls, even to the same node.
//! - A response may never come. An implementation bounds every call (the
//!   TCP transport with a per-call timeout) and then reports
//!   [`TransportError::TimedOut`]; it never hangs forever.
//! - Per call, the transport delivers the request at most once to the
//!   handler and completes the call at most once. An error other than
//!   [`TransportError::Unreachable`] and [`TransportError::FrameTooLarge`]
//!   leaves it unknown whether the handler ran: retry only idempotent
//!   requests. A simulator may still duplicate a message in flight, so
//!   handlers must tolerate seeing a request twice (Raft's are).
//! - Retries, backoff between calls and deciding which node to ask live
//!   above this seam.

use std::fmt;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::security::Principal;

/// The id of a node in the cluster (the same as Raft's node id).
pub type NodeId = u64;

/// One request: a message kind and a group, both opaque to the transport,
/// and a body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// What the message is: a [`MessageKind`] as its wire byte, chosen
    /// and interpreted by the layer above.
    pub kind: u8,
    /// The Raft group the message belongs to (one group today).
    pub group: u32,
    /// The encoded message.
    pub body: Bytes,
}

/// What a message between nodes, or between a client and a node, is. The
/// transport carries the kind as one byte and does not interpret it; the
/// layers above dispatch on it. Values are fixed: they are on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MessageKind {
    /// The cluster-secret challenge and answer opening a connection.
    Auth = 0,
    /// Raft append entries (heartbeats, and replication without a stream).
    AppendEntries = 1,
    /// A Raft vote request.
    Vote = 2,
    /// A whole Raft snapshot in one message.
    FullSnapshot = 3,
    /// A Raft pre-vote request.
    PreVote = 4,
    /// One piece of a snapshot too large for one message.
    SnapshotChunk = 5,
    /// Pipelined replication: one request of an append stream.
    AppendStream = 6,
    /// A client protocol request.
    Client = 16,
}

impl MessageKind {
    /// Every kind, in wire order.
    pub const ALL: [MessageKind; 8] = [
        MessageKind::Auth,
        MessageKind::AppendEntries,
        MessageKind::Vote,
        MessageKind::FullSnapshot,
        MessageKind::PreVote,
        MessageKind::SnapshotChunk,
        MessageKind::AppendStream,
        MessageKind::Client,
    ];
}

impl From<MessageKind> for u8 {
    fn from(kind: MessageKind) -> u8 {
        kind as u8
    }
}

impl TryFrom<u8> for MessageKind {
    type Error = u8;

    /// The kind with this wire value; the value back if there is none.
    fn try_from(value: u8) -> Result<MessageKind, u8> {
        MessageKind::ALL
            .into_iter()
            .find(|kind| *kind as u8 == value)
            .ok_or(value)
    }
}

/// Sends requests to other nodes. See the module docs for the fault model.
pub trait Transport: Send + Sync + fmt::Debug + 'static {
    /// Sends `request` to node `target` and waits for the response body.
    ///
    /// Returns within the implementation's per-call bound, with a response
    /// or an error; never hangs. Dropping the future abandons the call (a
    /// late response is discarded).
    fn call(
        &self,
        target: NodeId,
        request: Request,
    ) -> impl Future<Output = Result<Bytes, TransportError>> + Send;
}

/// Answers the requests a node receives.
///
/// Calls may run concurrently, in any order, and the same request may
/// arrive twice (see the module docs).
pub trait Handler: Send + Sync + 'static {
    /// Answers `request` from `caller` with a response body, or fails
    /// it; the failure's message travels back to the caller as
    /// [`TransportError::Remote`].
    fn handle(
        &self,
        caller: Caller,
        request: Request,
    ) -> impl Future<Output = Result<Bytes, HandlerError>> + Send;
}

/// Who sent a request: the node id its frames carry (0 for a client) and
/// the principal its connection authenticated as. A handler trusts the
/// principal, never the id alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The sender's node id (0 for a client).
    pub source: NodeId,
    /// Who the connection authenticated as.
    pub principal: Principal,
}

impl Caller {
    /// Node `source`, authenticated as itself (by the simulator's network,
    /// or a node certificate).
    pub fn node(source: NodeId) -> Caller {
        Caller {
            source,
            principal: Principal::Node(source),
        }
    }
}

/// A handler's refusal of one request, sent back to the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct HandlerError {
    /// What went wrong and what the caller can do about it.
    pub message: String,
}

impl HandlerError {
    /// A refusal with `message`.
    pub fn new(message: impl Into<String>) -> Self {
        HandlerError {
            message: message.into(),
        }
    }
}

/// Why a call failed. Cloneable, so that one broken connection can fail
/// every call waiting on it.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// No connection to the node could be made (no address known, refused,
    /// or still backing off after a failed attempt). The request was not
    /// sent.
    #[error(
        "node {target} is unreachable: {source}; the request was not sent, \
         retry later or ask another node"
    )]
    Unreachable {
        /// The node called.
        target: NodeId,
        /// Why it could not be reached.
        #[source]
        source: Arc<io::Error>,
    },
    /// The connection broke after the request may have been sent.
    #[error(
        "the connection to node {target} closed before the response came: {source}; \
         the request may or may not have been applied, retry only if it is idempotent"
    )]
    Closed {
        /// The node called.
        target: NodeId,
        /// Why the connection closed.
        #[source]
        source: Arc<io::Error>,
    },
    /// No response within the per-call bound.
    #[error(
        "no response from node {target} within {after:?}; the request may still be \
         applied, retry only if it is idempotent"
    )]
    TimedOut {
        /// The node called.
        target: NodeId,
        /// The bound that passed.
        after: Duration,
    },
    /// The request does not fit in one frame. Nothing was sent.
    #[error(
        "a request body of {size_bytes} bytes exceeds the transport's bound of \
         {size_bytes_max} bytes; split it into smaller messages"
    )]
    FrameTooLarge {
        /// The body's size.
        size_bytes: u64,
        /// The largest body one frame carries.
        size_bytes_max: u64,
    },
    /// The node received the request and its handler failed it.
    #[error("node {target} failed the request: {message}")]
    Remote {
        /// The node called.
        target: NodeId,
        /// The handler's message.
        message: String,
    },
}

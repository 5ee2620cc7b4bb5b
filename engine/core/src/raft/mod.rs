//! openraft adapters: the type configuration, the log storage over the
//! segmented log, the state machine over [`sluice_model::state`], and the network
//! for a single-member cluster.
//!
//! Everything here is generic over openraft's `AsyncRuntime`: engine code
//! spawns, sleeps and runs blocking work only through it, so the same code
//! runs on tokio ([`crate::io::os::OsRuntime`]) in production and on madsim
//! in the simulator. Blocking disk work (fsync, metadata replacement,
//! snapshots) goes through `AsyncRuntime::spawn_blocking`, which
//! `OsRuntime` maps to tokio's blocking pool, so an fsync never stalls the
//! runtime's worker threads.

use crate::io::Env;
use sluice_model::constants::SYNC_GATHER_ROUNDS_MAX;
use sluice_model::constants::SYNC_GATHER_WAIT_MAX;
use std::cmp::Ordering;
use std::fmt;
use std::marker::PhantomData;

use openraft::{OptionalSend, RaftTypeConfig};

use sluice_model::state::{Command, Response};

mod client;
pub mod codec;
mod log_store;
mod network;
pub(crate) mod pipeline;
pub mod snapshot;
pub mod state_machine;
mod transport_network;

pub use client::{ProposeError, propose};
pub use codec::decode_command as codec_decode_command;
pub use log_store::{Durability, LogStore, LogStoreReader};
pub use network::SingleNodeNetwork;
pub use pipeline::{STREAM_INFLIGHT_MAX, StreamId};
pub use snapshot::{SnapshotData, SnapshotError};
pub use state_machine::{Applied, SnapshotBuilder, StateGuard, StateMachineStore, StateView};
pub use transport_network::{
    RAFT_GROUP, RaftService, SNAPSHOT_CHUNK_SIZE, TransportClient, TransportNetwork,
};

/// Node ids are plain integers.
pub type NodeId = u64;

/// What openraft knows about a node: its address.
pub type Node = openraft::impls::BasicNode;

/// Sluice's openraft type configuration, generic over the async runtime.
///
/// Standard Raft leader ids (one leader per term), so a log id is
/// (term, index) and the term is all a log frame needs to store.
pub struct TypeConfig<E = crate::io::os::OsEnv>(PhantomData<fn() -> E>);

/// The Raft handle of a Sluice node.
pub type Raft<E = crate::io::os::OsEnv> = openraft::Raft<TypeConfig<E>, StateMachineStore<E>>;

impl<E: Env> RaftTypeConfig for TypeConfig<E> {
    type D = Command;
    type R = Response;
    type NodeId = NodeId;
    type Node = Node;
    type Term = u64;
    type LeaderId = LeaderId;
    type Vote = Vote;
    type Payload = Payload;
    type Entry = Entry;
    type AsyncRuntime = E::Runtime;
    type Responder<T>
        = FnResponder<T>
    where
        T: OptionalSend + 'static;
    type Batch<T>
        = openraft::impls::InlineBatch<T>
    where
        T: OptionalSend + 'static;
    type ErrorSource = openraft::impls::BoxedErrorSource;
}

/// Sluice's answer to a client write: a function called once, in the
/// state machine's apply, with the result (`None` if Raft drops the
/// request unanswered, as when it stops). The batcher answers its
/// publishers from here directly, so an applied batch reaches its
/// producers without a hop through another task.
pub struct FnResponder<T>(Option<Box<dyn FnOnce(Option<T>) + Send>>);

impl<T> fmt::Debug for FnResponder<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FnResponder")
            .field("answered", &self.0.is_none())
            .finish()
    }
}

impl<T> FnResponder<T> {
    /// A responder that calls `answer` once.
    pub fn new(answer: impl FnOnce(Option<T>) + Send + 'static) -> Self {
        FnResponder(Some(Box::new(answer)))
    }
}

impl<C: RaftTypeConfig, T: OptionalSend + 'static> openraft::raft::responder::Responder<C, T>
    for FnResponder<T>
{
    fn on_complete(mut self, result: T) {
        if let Some(answer) = self.0.take() {
            answer(Some(result));
        }
    }
}

impl<T> Drop for FnResponder<T> {
    fn drop(&mut self) {
        if let Some(answer) = self.0.take() {
            answer(None);
        }
    }
}

// The marker carries no data, so every comparison is equality; written by
// hand because derives would demand the same traits of the runtime.
impl<E> fmt::Debug for TypeConfig<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TypeConfig")
    }
}
impl<E> Clone for TypeConfig<E> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<E> Copy for TypeConfig<E> {}
impl<E> Default for TypeConfig<E> {
    fn default() -> Self {
        TypeConfig(PhantomData)
    }
}
impl<E> PartialEq for TypeConfig<E> {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl<E> Eq for TypeConfig<E> {}
impl<E> PartialOrd for TypeConfig<E> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<E> Ord for TypeConfig<E> {
    fn cmp(&self, _: &Self) -> Ordering {
        Ordering::Equal
    }
}

/// Standard Raft leader ids: one leader per term.
pub type LeaderId = openraft::impls::leader_id_std::LeaderId<u64, NodeId>;

/// The part of a leader id a log id keeps: the term.
pub type CommittedLeaderId = openraft::vote::leader_id_std::CommittedLeaderId<u64>;

/// A log id: (term, index).
pub type LogId = openraft::impls::LogId<CommittedLeaderId>;

/// A vote.
pub type Vote = openraft::impls::Vote<LeaderId>;

/// What a Raft entry carries.
pub type Payload = openraft::EntryPayload<Command, NodeId, Node>;

/// A Raft entry; the same type whatever the runtime.
pub type Entry = openraft::Entry<CommittedLeaderId, Payload>;

/// The log id of `(term, index)`.
pub fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(term), index)
}

/// Lets every other task that is ready run once, then resumes: the gather
/// phase of group commit. Unlike a zero sleep (which timer-based runtimes
/// round up to a whole tick), this costs one trip through the run queue,
/// on any runtime, simulated or not.
pub(crate) async fn yield_now() {
    struct Yield(bool);
    impl std::future::Future for Yield {
        type Output = ();
        fn poll(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<()> {
            if self.0 {
                return std::task::Poll::Ready(());
            }
            self.0 = true;
            cx.waker().wake_by_ref();
            std::task::Poll::Pending
        }
    }
    Yield(false).await
}

/// The gather phase of group commit. `drain` takes everything queued and
/// returns how many requests the group now holds. Closed-loop clients send
/// their next request only after their answer, so they arrive spread over
/// the fan-out of the previous group; waiting (briefly, and only while the
/// group is smaller than the last one) keeps them in one sync instead of
/// splitting them into groups that each wait out the other's sync.
pub(crate) async fn gather<E: Env>(last_group: usize, mut drain: impl FnMut() -> usize) -> usize {
    use openraft::Instant as _;
    use openraft::type_config::TypeConfigExt;
    let started = TypeConfig::<E>::now();
    let mut size = drain();
    for _ in 0..SYNC_GATHER_ROUNDS_MAX {
        let waited = started.elapsed();
        if size >= last_group || waited >= SYNC_GATHER_WAIT_MAX {
            break;
        }
        yield_now().await;
        size = drain();
    }
    size
}

/// Converts an engine error into the `io::Error` openraft's storage traits
/// speak, keeping the kind of an underlying I/O error.
pub(crate) fn to_io(error: crate::log::Error) -> std::io::Error {
    let kind = match &error {
        crate::log::Error::Io { source, .. } => source.kind(),
        crate::log::Error::Corruption(_) => std::io::ErrorKind::InvalidData,
        _ => std::io::ErrorKind::Other,
    };
    std::io::Error::new(kind, error)
}

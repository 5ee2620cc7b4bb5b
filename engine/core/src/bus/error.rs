//! The bus's error type.

use openraft::RaftTypeConfig;
use openraft::error::{ClientWriteError, RaftError};

use sluice_model::state::{PublishError, StateError, TxnError};

/// What can go wrong using the bus. Messages say what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BusError {
    /// The data directory could not be opened or written.
    #[error("storage: {0}")]
    Storage(#[from] crate::log::Error),
    /// The topic does not exist.
    #[error("unknown topic {topic:?}: create it first with Bus::create_topic")]
    UnknownTopic {
        /// The topic named.
        topic: String,
    },
    /// The state machine refused the request.
    #[error(transparent)]
    State(#[from] StateError),
    /// An event is malformed or too large; it was not sent.
    #[error(transparent)]
    Event(#[from] sluice_model::event::EventError),
    /// A publish was refused; nothing was appended.
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// A transaction was refused; none of it was applied.
    #[error(transparent)]
    Transaction(#[from] TxnError),
    /// Raft could not take the request (no leader, node stopping). The
    /// outcome of a publish that fails this way is unknown: retry it with
    /// `Producer::resend`, which deduplicates. Keeps Raft's error as its
    /// source.
    #[error("replication: {0}; the outcome is unknown, retry (idempotent producers deduplicate)")]
    Raft(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The node stopped on a fatal error (its log storage failed, or it was
    /// shut down): it takes nothing more. Its log says why; fix the cause
    /// and restart it, and it recovers from its log.
    #[error("the node stopped: {0}")]
    Stopped(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// This node is not the leader, so it did not take the request (nothing
    /// was proposed): send it to the leader, named when this node knows it.
    #[error("{}", not_leader_message(*leader_id, leader_address.as_deref()))]
    NotLeader {
        /// The leader's id, if known.
        leader_id: Option<u64>,
        /// The leader's address, if known.
        leader_address: Option<String>,
    },
    /// The data directory is damaged: the log and the state built from it
    /// disagree. Nothing was changed; run `sluice verify` on the directory.
    #[error("the data directory is damaged: {0}; run `sluice verify` on it")]
    Corrupt(String),
    /// The bus was closed.
    #[error("the bus is closed")]
    Closed,
    /// Waiting took longer than allowed.
    #[error("timed out after {0:?}")]
    Timeout(std::time::Duration),
    /// An argument is out of bounds.
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// A producer signature does not verify; nothing was appended.
    #[error(transparent)]
    Signature(#[from] super::audit::SignatureRefused),
}

impl BusError {
    /// A failed replication, keeping `error` as the cause.
    pub fn raft(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        BusError::Raft(error.into())
    }

    /// Maps a failed proposal: a proposal refused before it was appended
    /// (this node is not the leader) becomes [`BusError::NotLeader`]; a
    /// node that stopped, [`BusError::Stopped`]; any other failure leaves
    /// the outcome unknown ([`BusError::Raft`]).
    pub(crate) fn from_write<C>(error: RaftError<C, ClientWriteError<C>>) -> Self
    where
        C: RaftTypeConfig<NodeId = u64, Node = crate::raft::Node>,
    {
        match error {
            RaftError::APIError(error) => BusError::from_write_error(error),
            RaftError::Fatal(fatal) => BusError::Stopped(Box::new(fatal)),
        }
    }

    /// [`BusError::from_write`] for the error openraft hands a responder.
    pub(crate) fn from_write_error<C>(error: ClientWriteError<C>) -> Self
    where
        C: RaftTypeConfig<NodeId = u64, Node = crate::raft::Node>,
    {
        match error {
            ClientWriteError::ForwardToLeader(forward) => BusError::NotLeader {
                leader_id: forward.leader_id,
                leader_address: forward.leader_node.map(|node| node.addr),
            },
            other => BusError::raft(other),
        }
    }

    /// Whether the request was certainly not applied, so that any request
    /// (idempotent or not) may be sent again, here or to another node.
    pub fn not_applied(&self) -> bool {
        matches!(self, BusError::NotLeader { .. })
    }
}

fn not_leader_message(leader_id: Option<u64>, leader_address: Option<&str>) -> String {
    match (leader_id, leader_address) {
        (Some(id), Some(address)) => format!(
            "this node is not the leader; nothing was proposed: send the request to the leader, \
             node {id} at {address}"
        ),
        (Some(id), None) => format!(
            "this node is not the leader; nothing was proposed: send the request to the leader, \
             node {id}"
        ),
        _ => "this node is not the leader and knows of none (an election is under way); \
              nothing was proposed: retry shortly"
            .to_owned(),
    }
}

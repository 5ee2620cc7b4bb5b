//! The bus's error type.

use crate::state::{PublishError, StateError, TxnError};

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
    Event(#[from] crate::event::EventError),
    /// A publish was refused; nothing was appended.
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// A transaction was refused; none of it was applied.
    #[error(transparent)]
    Transaction(#[from] TxnError),
    /// Raft could not take the request (no leader, node stopping). The
    /// outcome of a publish that fails this way is unknown: retry it with
    /// `Producer::resend`, which deduplicates.
    #[error("replication: {0}; the outcome is unknown, retry (idempotent producers deduplicate)")]
    Raft(String),
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
    Signature(#[from] crate::audit::signing::SignatureError),
}

impl BusError {
    pub(crate) fn raft(error: impl std::fmt::Display) -> Self {
        BusError::Raft(error.to_string())
    }
}

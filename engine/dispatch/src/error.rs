//! The dispatch core's expected failures.

use sluice_model::event::{EventError, TopicNameError};

use super::typed::CodecError;

/// A lookup in the registry of event types failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// No Rust type is registered under this type name.
    #[error(
        "unknown event type {type_name:?}: register its Rust type with Dispatcher::topic first"
    )]
    UnknownType {
        /// The type name asked for.
        type_name: String,
    },
    /// The type name is known, but not this schema version.
    #[error(
        "unknown schema version {version} of event type {type_name:?} (known: {known:?}): \
         register a Rust type with SCHEMA_VERSION = {version}, or upgrade the producer"
    )]
    UnknownVersion {
        /// The type name.
        type_name: String,
        /// The version asked for.
        version: u32,
        /// The versions registered, ascending.
        known: Vec<u32>,
    },
    /// Two Rust types claim the same type name and schema version.
    #[error(
        "event type {type_name:?} version {version} is already registered by another Rust \
         type: give one of them a new SCHEMA_VERSION or TYPE_NAME"
    )]
    Duplicate {
        /// The type name.
        type_name: &'static str,
        /// The version.
        version: u32,
    },
    /// This Rust type already has a topic.
    #[error(
        "event type {type_name:?} version {version} already has a topic: use Dispatcher::topic"
    )]
    AlreadyRegistered {
        /// The type name.
        type_name: &'static str,
        /// The version.
        version: u32,
    },
}

/// Why a dispatch call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DispatchError {
    /// The event type or version is not registered.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The payload could not be decoded.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// A delivery header (deadline, SLA class) does not parse.
    #[error(transparent)]
    Header(#[from] super::options::HeaderError),
    /// The `traceparent` given to a publish is not W3C trace context.
    #[error(transparent)]
    Traceparent(#[from] EventError),
    /// A group name is not valid (same rules as a topic name).
    #[error("invalid subscription group name: {0}")]
    GroupName(#[from] TopicNameError),
    /// The handle belongs to no subscription of this topic.
    #[error(
        "no subscription of this topic in group {group:?} matches the handle: was it made by another topic?"
    )]
    UnknownSubscription {
        /// The handle's group.
        group: String,
    },
    /// A subscription's worker task is gone or failed.
    #[error("the worker of group {group:?} failed: {reason}")]
    WorkerFailed {
        /// The subscription's group.
        group: String,
        /// What happened.
        reason: String,
    },
}

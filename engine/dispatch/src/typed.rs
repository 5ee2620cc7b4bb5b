//! Typed events and their codecs.
//!
//! A [`TypedEvent`] names its type and schema version as constants, so the
//! pair is known at compile time and a subscriber never downcasts. An
//! [`Encoding`] turns a typed event into payload bytes and back; the
//! content type travels in the event's headers, so a reader picks the
//! codec from the bytes it got, not from a guess.
//!
//! Invariants: `Encoding::from_content_type(e.content_type()) == Some(e)`
//! for every encoding, and `decode(encode(v)) == v` for every value.

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use sluice_model::event::{Event, Headers};

/// An event type the dispatch core can route, encode and decode.
///
/// Each schema version of a business event is its own Rust type (for
/// example `OrderPlacedV1` and `OrderPlacedV2` share a `TYPE_NAME` and
/// differ in `SCHEMA_VERSION`); the registry keys on the pair.
pub trait TypedEvent: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// What happened, e.g. `payment.settled`; the event's `event_type`.
    const TYPE_NAME: &'static str;
    /// Version of this type's schema; the event's `schema_version`.
    const SCHEMA_VERSION: u32;

    /// The business key (an order or account id): it orders events inside
    /// a group, spreads them over a group's members and names what
    /// [`super::CancelRegistry::cancel`] cancels. Called once per publish;
    /// keep it cheap (store the key as `Bytes`, whose clone copies nothing).
    fn key(&self) -> Bytes;
}

/// How a payload is encoded. Policy as an enum: the content type header
/// names it, so readers need no configuration to decode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Encoding {
    /// `application/json` through serde_json: readable, the default.
    #[default]
    Json,
    /// `application/x-postcard`: compact binary (postcard, varints), for
    /// small events on the wire.
    Postcard,
}

/// Why a payload could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// serde_json refused the value or the bytes.
    #[error("JSON codec failed for {type_name}: {source}")]
    Json {
        /// The event type.
        type_name: &'static str,
        /// serde_json's error.
        #[source]
        source: serde_json::Error,
    },
    /// postcard refused the value or the bytes.
    #[error("postcard codec failed for {type_name}: {source}")]
    Postcard {
        /// The event type.
        type_name: &'static str,
        /// postcard's error.
        #[source]
        source: postcard::Error,
    },
    /// The content type names no codec this build has.
    #[error(
        "unknown content type {content_type:?}: use {:?} or {:?}",
        Encoding::Json.content_type(),
        Encoding::Postcard.content_type()
    )]
    UnknownContentType {
        /// The content type found in the headers.
        content_type: String,
    },
}

impl Encoding {
    /// The MIME type written to `Headers::content_type`.
    pub const fn content_type(self) -> &'static str {
        match self {
            Encoding::Json => "application/json",
            Encoding::Postcard => "application/x-postcard",
        }
    }

    /// The encoding a content type names, if any.
    pub fn from_content_type(content_type: &str) -> Option<Encoding> {
        [Encoding::Json, Encoding::Postcard]
            .into_iter()
            .find(|e| e.content_type() == content_type)
    }

    /// Encodes `value`.
    pub fn encode<T: TypedEvent>(self, value: &T) -> Result<Bytes, CodecError> {
        let type_name = T::TYPE_NAME;
        match self {
            Encoding::Json => {
                serde_json::to_vec(value).map_err(|source| CodecError::Json { type_name, source })
            }
            Encoding::Postcard => postcard::to_stdvec(value)
                .map_err(|source| CodecError::Postcard { type_name, source }),
        }
        .map(Bytes::from)
    }

    /// Decodes a `T` from `bytes`.
    pub fn decode<T: TypedEvent>(self, bytes: &[u8]) -> Result<T, CodecError> {
        let type_name = T::TYPE_NAME;
        match self {
            Encoding::Json => serde_json::from_slice(bytes)
                .map_err(|source| CodecError::Json { type_name, source }),
            Encoding::Postcard => postcard::from_bytes(bytes)
                .map_err(|source| CodecError::Postcard { type_name, source }),
        }
    }
}

/// `value` as an [`Event`] for the durable bus: type, schema version,
/// content type, key and payload filled in; the rest left to the producer.
pub fn to_event<T: TypedEvent>(
    value: &T,
    topic: &str,
    encoding: Encoding,
) -> Result<Event, CodecError> {
    Ok(Event {
        topic: topic.to_owned(),
        key: value.key(),
        payload: encoding.encode(value)?,
        headers: Headers {
            event_type: T::TYPE_NAME.to_owned(),
            schema_version: T::SCHEMA_VERSION,
            content_type: encoding.content_type().to_owned(),
            ..Headers::default()
        },
        ..Event::default()
    })
}

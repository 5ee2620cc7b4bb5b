//! Events: what producers publish and consumers read, and the batch codec
//! that carries them inside one Raft entry.
//!
//! An [`EventBatch`] is the unit of replication: one encoded buffer holding
//! many events in a fixed little-endian layout (`state/BATCH_FORMAT.md`),
//! with a size prefix per event and one CRC-32 over the whole batch.
//! Consumers read events through [`EventView`]s, whose key and payload are
//! `Bytes` slices of the batch: nothing is copied on the read path.
//!
//! Invariants:
//! - an `EventBatch` value is always valid: the only ways to get one are
//!   [`BatchBuilder::finish`] (which validated every event it was given) and
//!   [`EventBatch::from_bytes`] (which validates every byte), so iterating a
//!   batch never fails;
//! - the encoder and the decoder enforce the same rules ([`check_topic_name`],
//!   the size bounds below, the W3C `traceparent` syntax), so whatever one
//!   accepts the other accepts too.
//!
//! Fault model: bytes handed to [`EventBatch::from_bytes`] may be anything
//! (a damaged disk, a hostile peer, a fuzzer). Decoding never panics, never
//! reads outside the input and never allocates: lengths are checked against
//! the bytes actually present before they are used.
//!
//! Everything here is pure: no clock, no randomness, no I/O.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use crate::constants::{
    BATCH_SIZE_MAX, CONTENT_TYPE_SIZE_MAX, EVENT_PAYLOAD_SIZE_MAX, EVENT_TYPE_SIZE_MAX,
    EVENTS_PER_BATCH_MAX, HEADER_COUNT_MAX, HEADER_NAME_SIZE_MAX, HEADERS_SIZE_MAX, KEY_SIZE_MAX,
    TOPIC_NAME_SIZE_MAX, TRACEPARENT_SIZE_MAX,
};

/// Size of the batch header; see `BATCH_FORMAT.md`.
pub const BATCH_HEADER_SIZE: usize = 16;

/// Size of the fixed part of each event record; see `BATCH_FORMAT.md`.
pub const EVENT_HEADER_SIZE: usize = 56;

/// Size of the prefix of each user header (name size u8, value size u32).
pub const USER_HEADER_PREFIX_SIZE: usize = 5;

/// The only batch format version this code writes and reads.
pub const BATCH_VERSION: u8 = 1;

/// Largest encoded event record.
pub const EVENT_SIZE_MAX: usize = EVENT_HEADER_SIZE
    + TOPIC_NAME_SIZE_MAX
    + EVENT_TYPE_SIZE_MAX
    + CONTENT_TYPE_SIZE_MAX
    + TRACEPARENT_SIZE_MAX
    + KEY_SIZE_MAX
    + HEADERS_SIZE_MAX
    + EVENT_PAYLOAD_SIZE_MAX;

const _: () = assert!(BATCH_HEADER_SIZE + EVENT_SIZE_MAX <= BATCH_SIZE_MAX);
const _: () = assert!(2 * BATCH_SIZE_MAX <= crate::constants::FRAME_SIZE_MAX);
const _: () = assert!(BATCH_SIZE_MAX <= u32::MAX as usize);
const _: () = assert!(TOPIC_NAME_SIZE_MAX <= u16::MAX as usize);
const _: () = assert!(HEADER_COUNT_MAX <= u16::MAX as usize);
const _: () = assert!(HEADER_NAME_SIZE_MAX <= u8::MAX as usize);
const _: () = assert!(EVENT_TYPE_SIZE_MAX <= u8::MAX as usize);
const _: () = assert!(CONTENT_TYPE_SIZE_MAX <= u8::MAX as usize);
const _: () = assert!(TRACEPARENT_SIZE_MAX <= u8::MAX as usize);
// Length 0 encodes "no traceparent"; a present one is never that short.
const _: () = assert!(TRACEPARENT_SIZE_MIN > 0);

const TRACEPARENT_SIZE_MIN: usize = 55;

/// How sensitive an event's content is; masking policies key on it.
/// Ordered from least to most sensitive.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[repr(u8)]
pub enum Sensitivity {
    /// Anyone may read it.
    #[default]
    Public = 0,
    /// Inside the organisation.
    Internal = 1,
    /// A need to know.
    Confidential = 2,
    /// The smallest audience; regulated data.
    Restricted = 3,
}

impl Sensitivity {
    /// The level encoded as `value`, if it is one.
    pub fn from_u8(value: u8) -> Option<Sensitivity> {
        match value {
            0 => Some(Sensitivity::Public),
            1 => Some(Sensitivity::Internal),
            2 => Some(Sensitivity::Confidential),
            3 => Some(Sensitivity::Restricted),
            _ => None,
        }
    }
}

/// An event's business context: what it is, which schema version, how
/// it is encoded, its trace and its sensitivity.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Headers {
    /// What happened, e.g. `payment.settled`.
    pub event_type: String,
    /// Version of the payload's schema; consumers see which one they got.
    pub schema_version: u32,
    /// Encoding of the payload, e.g. `application/json`.
    pub content_type: String,
    /// W3C trace context (`00-<trace id>-<parent id>-<flags>`), if any.
    pub traceparent: Option<String>,
    /// Masking policies key on this.
    pub sensitivity: Sensitivity,
    /// Free-form headers, in order; names need not be unique.
    pub user: Vec<(String, Bytes)>,
}

/// Who published an event, and its place in that producer's order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ProducerStamp {
    /// Allocated by the state machine (`InitProducer`).
    pub id: u64,
    /// Fences older instances of the same producer.
    pub epoch: u32,
    /// Per (producer id, topic partition), from 0, with no gaps.
    pub sequence: u64,
}

/// One event as a producer builds it. Consumers usually see an
/// [`EventView`] instead, which borrows from the batch.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Topic name; see [`check_topic_name`].
    pub topic: String,
    /// Business key; [`partition_for`] hashes it.
    pub key: Bytes,
    /// Opaque content.
    pub payload: Bytes,
    /// Business context.
    pub headers: Headers,
    /// Producer identity and sequence.
    pub producer: ProducerStamp,
    /// Partition of the topic.
    pub partition: u32,
    /// The producer's publish time, from its clock (ms since the Unix epoch).
    pub timestamp_ms: u64,
}

impl Event {
    /// Checks every field against the bounds a batch enforces; returns the
    /// event's encoded size. Producers call this before queueing, so one bad
    /// event never spoils a batch.
    pub fn validate(&self) -> Result<usize, EventError> {
        EventSizes::of(self).map(|sizes| sizes.total())
    }
}

/// Why a topic name is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[non_exhaustive]
pub enum TopicNameError {
    /// An empty name.
    #[error("topic name is empty: use 1 to {TOPIC_NAME_SIZE_MAX} characters of [A-Za-z0-9._-]")]
    Empty,
    /// A name longer than the limit.
    #[error(
        "topic name has {size} bytes, more than the limit of {TOPIC_NAME_SIZE_MAX}: shorten it"
    )]
    TooLong {
        /// Its length in bytes.
        size: usize,
    },
    /// A byte outside `[A-Za-z0-9._-]`.
    #[error("topic name has byte 0x{byte:02x} at {at}: use only [A-Za-z0-9._-]")]
    Character {
        /// Position of the byte.
        at: usize,
        /// The byte.
        byte: u8,
    },
}

/// Checks a topic name: 1 to [`TOPIC_NAME_SIZE_MAX`] bytes of
/// `[A-Za-z0-9._-]` (so it is also a safe file and metric name).
pub fn check_topic_name(name: &[u8]) -> Result<(), TopicNameError> {
    if name.is_empty() {
        return Err(TopicNameError::Empty);
    }
    if name.len() > TOPIC_NAME_SIZE_MAX {
        return Err(TopicNameError::TooLong { size: name.len() });
    }
    let valid = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-');
    match name.iter().position(|b| !valid(b)) {
        Some(at) => Err(TopicNameError::Character { at, byte: name[at] }),
        None => Ok(()),
    }
}

/// Why an event cannot be encoded (or, inside [`DecodeError`], why a
/// decoded one is invalid).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EventError {
    /// The topic name is invalid.
    #[error(transparent)]
    TopicName(#[from] TopicNameError),
    /// The key is too large.
    #[error("key of {size} bytes exceeds the limit of {KEY_SIZE_MAX}: use a shorter business key")]
    KeyTooLarge {
        /// Its size.
        size: usize,
    },
    /// The payload is too large.
    #[error(
        "payload of {size} bytes exceeds the limit of {EVENT_PAYLOAD_SIZE_MAX}: \
         store large content elsewhere and publish a reference"
    )]
    PayloadTooLarge {
        /// Its size.
        size: usize,
    },
    /// A text field is longer than its limit.
    #[error("{field} of {size} bytes exceeds the limit of {max}: shorten it")]
    FieldTooLarge {
        /// Which field.
        field: &'static str,
        /// Its size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// A text field is not UTF-8 (only possible in decoded bytes).
    #[error("{field} is not valid UTF-8")]
    NotUtf8 {
        /// Which field.
        field: &'static str,
    },
    /// The `traceparent` header does not follow W3C Trace Context.
    #[error(
        "invalid traceparent ({reason}): expected W3C trace context \
         `00-<32 lowercase hex>-<16 lowercase hex>-<2 lowercase hex>`, ids not all zero"
    )]
    Traceparent {
        /// What is wrong.
        reason: &'static str,
    },
    /// A user header has an empty name.
    #[error("a user header has an empty name: give every header a name")]
    EmptyHeaderName,
    /// Too many user headers.
    #[error("{count} user headers exceed the limit of {HEADER_COUNT_MAX}: merge some")]
    TooManyHeaders {
        /// How many there are.
        count: usize,
    },
    /// The user headers are too large together.
    #[error(
        "user headers take {size} bytes, more than the limit of {HEADERS_SIZE_MAX}: \
         move large values into the payload"
    )]
    HeadersTooLarge {
        /// Their encoded size.
        size: usize,
    },
    /// An unknown sensitivity level (only possible in decoded bytes).
    #[error("unknown sensitivity level {value} (levels are 0 to 3)")]
    Sensitivity {
        /// The stored value.
        value: u8,
    },
    /// The event does not fit in the batch being built.
    #[error(
        "the batch is full ({events} events, {size} bytes; limits {EVENTS_PER_BATCH_MAX} \
         events, {BATCH_SIZE_MAX} bytes): finish it and start another"
    )]
    BatchFull {
        /// Events already in the batch.
        events: u32,
        /// Bytes the batch would need with this event.
        size: usize,
    },
}

/// Why bytes are not a valid [`EventBatch`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Fewer bytes than the batch header.
    #[error("event batch truncated: {size} bytes, the header alone needs {BATCH_HEADER_SIZE}")]
    Truncated {
        /// Bytes present.
        size: usize,
    },
    /// The size field disagrees with the bytes present.
    #[error("event batch size field says {stated} bytes but {actual} are present")]
    SizeMismatch {
        /// The size field.
        stated: u32,
        /// The bytes present.
        actual: usize,
    },
    /// Larger than [`BATCH_SIZE_MAX`].
    #[error("event batch of {size} bytes exceeds the limit of {BATCH_SIZE_MAX}")]
    TooLarge {
        /// Its size.
        size: usize,
    },
    /// An unknown format version.
    #[error("unknown event batch version {found} (this code reads {BATCH_VERSION})")]
    Version {
        /// The stored version.
        found: u8,
    },
    /// Reserved header bytes are not zero.
    #[error("reserved bytes of the event batch header are not zero")]
    Reserved,
    /// The stored checksum does not match the bytes.
    #[error("event batch checksum mismatch: stored {stored:08x}, computed {computed:08x}")]
    Checksum {
        /// The stored CRC-32.
        stored: u32,
        /// The CRC-32 of the bytes.
        computed: u32,
    },
    /// More events than [`EVENTS_PER_BATCH_MAX`].
    #[error("event batch claims {count} events, more than the limit of {EVENTS_PER_BATCH_MAX}")]
    TooManyEvents {
        /// The count field.
        count: u32,
    },
    /// An event record's layout is broken (sizes out of bounds).
    #[error("event {index} at byte {at} of the batch is malformed: {reason}")]
    Record {
        /// Position of the event in the batch.
        index: u32,
        /// Byte offset of its record.
        at: usize,
        /// What is wrong.
        reason: &'static str,
    },
    /// An event record is well formed but its content breaks a rule.
    #[error("event {index} at byte {at} of the batch is invalid: {source}")]
    InvalidEvent {
        /// Position of the event in the batch.
        index: u32,
        /// Byte offset of its record.
        at: usize,
        /// The rule it breaks.
        #[source]
        source: EventError,
    },
    /// Bytes left after the last event.
    #[error("{extra} bytes follow the last event of the batch")]
    TrailingBytes {
        /// How many.
        extra: usize,
    },
}

/// The partition of `key` among `partitions`: the documented, stable
/// [`key_hash`] modulo the partition count. Every client in every
/// language must compute the same; never use a randomized hasher here.
/// An empty key hashes like any other (spreading keyless events
/// round-robin is the producer's job).
pub fn partition_for(key: &[u8], partitions: u32) -> u32 {
    assert!(partitions > 0, "a topic has at least one partition");
    (key_hash(key) % u64::from(partitions)) as u32
}

/// FNV-1a 64 over the key, then the MurmurHash3 64-bit finalizer (FNV's
/// low bits alone spread poorly, and the modulo keeps only low bits).
pub fn key_hash(key: &[u8]) -> u64 {
    const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = FNV_OFFSET;
    for &byte in key {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    hash ^ (hash >> 33)
}

/// An encoded, validated batch of events. Cloning shares the bytes.
///
/// A batch may also carry a SHA-256 digest of its bytes behind a short
/// prefix (`EventBatch::digest_with_prefix`): the log's hash chain
/// covers the digest of each frame's payload, which for a batch is the
/// codec's prefix then the batch, and computing it where the batch is
/// made keeps the pass over the bytes off the Raft core. The digest is
/// not part of the batch's value: equality, `Debug` and serialization
/// ignore it.
#[derive(Clone)]
pub struct EventBatch(Bytes, Option<Arc<PrefixedDigest>>);

/// SHA-256 of `prefix ‖` a batch's bytes.
#[derive(Debug)]
struct PrefixedDigest {
    prefix: Vec<u8>,
    digest: [u8; 32],
}

impl PartialEq for EventBatch {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

impl Eq for EventBatch {}

impl EventBatch {
    /// Encodes `events` into one batch, validating each.
    pub fn encode(events: &[Event]) -> Result<EventBatch, EventError> {
        let mut builder = BatchBuilder::new();
        for event in events {
            builder.push(event)?;
        }
        Ok(builder.finish())
    }

    /// Validates `bytes` as a batch: bounds, version, checksum, count and
    /// every event record. Never panics and never allocates.
    pub fn from_bytes(bytes: Bytes) -> Result<EventBatch, DecodeError> {
        check_batch(&bytes)?;
        Ok(EventBatch(bytes, None))
    }

    /// SHA-256 of `prefix` followed by the batch's bytes, computed now
    /// and kept with the batch (clones share it), replacing any digest
    /// kept before. Computed here, from the batch's own immutable bytes,
    /// so a kept digest is always that of its prefix and these bytes.
    pub fn digest_with_prefix(&mut self, prefix: &[u8]) -> [u8; 32] {
        let mut hasher = Sha256::new();
        hasher.update(prefix);
        hasher.update(&self.0);
        let digest: [u8; 32] = hasher.finalize().into();
        self.1 = Some(Arc::new(PrefixedDigest {
            prefix: prefix.to_vec(),
            digest,
        }));
        digest
    }

    /// The digest kept by `EventBatch::digest_with_prefix`, if it was
    /// computed with exactly this `prefix`.
    pub fn kept_digest_with_prefix(&self, prefix: &[u8]) -> Option<[u8; 32]> {
        self.1
            .as_ref()
            .filter(|kept| kept.prefix == prefix)
            .map(|kept| kept.digest)
    }

    /// Number of events.
    pub fn len(&self) -> usize {
        u32_at(&self.0, 12) as usize
    }

    /// Whether the batch holds no event.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The encoded bytes, header included.
    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }

    /// The encoded bytes, header included.
    pub fn into_bytes(self) -> Bytes {
        self.0
    }

    /// The events, in batch order.
    pub fn iter(&self) -> BatchIter<'_> {
        BatchIter {
            bytes: &self.0,
            at: BATCH_HEADER_SIZE,
            remaining: self.len(),
        }
    }
}

impl fmt::Debug for EventBatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventBatch")
            .field("events", &self.len())
            .field("size_bytes", &self.0.len())
            .finish()
    }
}

impl<'a> IntoIterator for &'a EventBatch {
    type Item = EventView<'a>;
    type IntoIter = BatchIter<'a>;

    fn into_iter(self) -> BatchIter<'a> {
        self.iter()
    }
}

/// Builds batches into one reused buffer: no allocation per event beyond
/// the output buffer's growth.
#[derive(Debug, Default)]
pub struct BatchBuilder {
    buffer: BytesMut,
    count: u32,
}

impl BatchBuilder {
    /// An empty builder.
    pub fn new() -> BatchBuilder {
        BatchBuilder::default()
    }

    /// An empty builder whose buffer starts with room for `size_bytes`.
    pub fn with_capacity(size_bytes: usize) -> BatchBuilder {
        BatchBuilder {
            buffer: BytesMut::with_capacity(size_bytes),
            count: 0,
        }
    }

    /// Events pushed since the last [`BatchBuilder::finish`].
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// Whether no event was pushed since the last finish.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Size the batch would have if finished now.
    pub fn size_bytes(&self) -> usize {
        self.buffer.len().max(BATCH_HEADER_SIZE)
    }

    /// Validates `event` and appends it. On error nothing is appended.
    pub fn push(&mut self, event: &Event) -> Result<(), EventError> {
        let sizes = EventSizes::of(event)?;
        let size = sizes.total();
        if self.count == EVENTS_PER_BATCH_MAX || self.size_bytes() + size > BATCH_SIZE_MAX {
            return Err(EventError::BatchFull {
                events: self.count,
                size: self.size_bytes() + size,
            });
        }
        if self.buffer.is_empty() {
            // The header is filled in by `finish`.
            self.buffer.put_bytes(0, BATCH_HEADER_SIZE);
        }
        let start = self.buffer.len();
        self.buffer.reserve(size);
        write_event(&mut self.buffer, event, &sizes);
        assert_eq!(self.buffer.len() - start, size);
        self.count += 1;
        Ok(())
    }

    /// Seals the events pushed so far into a batch (possibly empty) and
    /// resets the builder, keeping its buffer's spare capacity.
    pub fn finish(&mut self) -> EventBatch {
        if self.buffer.is_empty() {
            self.buffer.put_bytes(0, BATCH_HEADER_SIZE);
        }
        let size = self.buffer.len();
        assert!(size <= BATCH_SIZE_MAX);
        let header = &mut self.buffer[..BATCH_HEADER_SIZE];
        header[0..4].copy_from_slice(&(size as u32).to_le_bytes());
        header[8] = BATCH_VERSION;
        header[9..12].fill(0);
        header[12..16].copy_from_slice(&self.count.to_le_bytes());
        let checksum = batch_checksum(&self.buffer);
        self.buffer[4..8].copy_from_slice(&checksum.to_le_bytes());
        self.count = 0;
        let batch = EventBatch(self.buffer.split().freeze(), None);
        debug_assert_eq!(check_batch(&batch.0), Ok(()));
        batch
    }
}

/// Sizes of an event's variable fields, validated.
struct EventSizes {
    traceparent: usize,
    headers: usize,
    total: usize,
}

impl EventSizes {
    fn of(event: &Event) -> Result<EventSizes, EventError> {
        check_topic_name(event.topic.as_bytes())?;
        check_key_payload(event.key.len(), event.payload.len())?;
        let headers = &event.headers;
        check_text(
            "event_type",
            headers.event_type.as_bytes(),
            EVENT_TYPE_SIZE_MAX,
        )?;
        check_text(
            "content_type",
            headers.content_type.as_bytes(),
            CONTENT_TYPE_SIZE_MAX,
        )?;
        let traceparent = headers.traceparent.as_deref().unwrap_or("");
        if headers.traceparent.is_some() {
            check_traceparent(traceparent.as_bytes())?;
        }
        if headers.user.len() > HEADER_COUNT_MAX {
            return Err(EventError::TooManyHeaders {
                count: headers.user.len(),
            });
        }
        let mut headers_size = 0;
        for (name, value) in &headers.user {
            if name.is_empty() {
                return Err(EventError::EmptyHeaderName);
            }
            check_size("user header name", name.len(), HEADER_NAME_SIZE_MAX)?;
            headers_size += USER_HEADER_PREFIX_SIZE + name.len() + value.len();
        }
        if headers_size > HEADERS_SIZE_MAX {
            return Err(EventError::HeadersTooLarge { size: headers_size });
        }
        let total = EVENT_HEADER_SIZE
            + event.topic.len()
            + headers.event_type.len()
            + headers.content_type.len()
            + traceparent.len()
            + event.key.len()
            + headers_size
            + event.payload.len();
        Ok(EventSizes {
            traceparent: traceparent.len(),
            headers: headers_size,
            total,
        })
    }

    fn total(&self) -> usize {
        self.total
    }
}

/// Writes one event record; `sizes` was computed from this event.
fn write_event(out: &mut BytesMut, event: &Event, sizes: &EventSizes) {
    let headers = &event.headers;
    out.put_u32_le(sizes.total as u32);
    out.put_u32_le(event.partition);
    out.put_u64_le(event.producer.id);
    out.put_u64_le(event.producer.sequence);
    out.put_u64_le(event.timestamp_ms);
    out.put_u32_le(event.producer.epoch);
    out.put_u32_le(headers.schema_version);
    out.put_u32_le(event.key.len() as u32);
    out.put_u32_le(event.payload.len() as u32);
    out.put_u16_le(event.topic.len() as u16);
    out.put_u16_le(headers.user.len() as u16);
    out.put_u8(headers.event_type.len() as u8);
    out.put_u8(headers.content_type.len() as u8);
    out.put_u8(sizes.traceparent as u8);
    out.put_u8(headers.sensitivity as u8);
    out.put_slice(event.topic.as_bytes());
    out.put_slice(headers.event_type.as_bytes());
    out.put_slice(headers.content_type.as_bytes());
    out.put_slice(headers.traceparent.as_deref().unwrap_or("").as_bytes());
    out.put_slice(&event.key);
    let headers_start = out.len();
    for (name, value) in &headers.user {
        out.put_u8(name.len() as u8);
        out.put_u32_le(value.len() as u32);
        out.put_slice(name.as_bytes());
        out.put_slice(value);
    }
    debug_assert_eq!(out.len() - headers_start, sizes.headers);
    out.put_slice(&event.payload);
}

fn check_key_payload(key_size: usize, payload_size: usize) -> Result<(), EventError> {
    if key_size > KEY_SIZE_MAX {
        return Err(EventError::KeyTooLarge { size: key_size });
    }
    if payload_size > EVENT_PAYLOAD_SIZE_MAX {
        return Err(EventError::PayloadTooLarge { size: payload_size });
    }
    Ok(())
}

fn check_size(field: &'static str, size: usize, max: usize) -> Result<(), EventError> {
    if size > max {
        return Err(EventError::FieldTooLarge { field, size, max });
    }
    Ok(())
}

fn check_text(field: &'static str, bytes: &[u8], max: usize) -> Result<(), EventError> {
    check_size(field, bytes.len(), max)?;
    std::str::from_utf8(bytes).map_err(|_utf8| EventError::NotUtf8 { field })?;
    Ok(())
}

fn check_header_name(name: &[u8]) -> Result<(), EventError> {
    if name.is_empty() {
        return Err(EventError::EmptyHeaderName);
    }
    check_text("user header name", name, HEADER_NAME_SIZE_MAX)
}

/// Checks W3C Trace Context `traceparent` syntax: `version-traceid-
/// parentid-flags` in lowercase hex, version `ff` forbidden, ids not all
/// zero. Version 00 is exactly 55 bytes; a later version may continue
/// after a `-` with printable ASCII (the spec's forward compatibility).
pub fn check_traceparent(value: &[u8]) -> Result<(), EventError> {
    let fail = |reason| Err(EventError::Traceparent { reason });
    if value.len() < TRACEPARENT_SIZE_MIN {
        return fail("too short");
    }
    if value.len() > TRACEPARENT_SIZE_MAX {
        return fail("too long");
    }
    let is_hex = |field: &[u8]| field.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let is_zero = |field: &[u8]| field.iter().all(|&b| b == b'0');
    let (version, trace_id) = (&value[0..2], &value[3..35]);
    let (parent_id, flags) = (&value[36..52], &value[53..55]);
    if value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
        return fail("fields must be separated by '-'");
    }
    if ![version, trace_id, parent_id, flags]
        .into_iter()
        .all(is_hex)
    {
        return fail("fields must be lowercase hex");
    }
    if version == b"ff" {
        return fail("version ff is forbidden");
    }
    if is_zero(trace_id) || is_zero(parent_id) {
        return fail("trace id and parent id must not be all zeros");
    }
    let rest = &value[TRACEPARENT_SIZE_MIN..];
    if version == b"00" && !rest.is_empty() {
        return fail("version 00 has exactly 55 characters");
    }
    if !rest.is_empty() && (rest[0] != b'-' || !rest.iter().all(u8::is_ascii_graphic)) {
        return fail("fields after flags must follow a '-' and be printable ASCII");
    }
    Ok(())
}

/// CRC-32 of a batch, skipping the checksum field itself.
fn batch_checksum(batch: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&batch[0..4]);
    hasher.update(&batch[8..]);
    hasher.finalize()
}

/// Validates a whole encoded batch.
fn check_batch(bytes: &[u8]) -> Result<(), DecodeError> {
    if bytes.len() < BATCH_HEADER_SIZE {
        return Err(DecodeError::Truncated { size: bytes.len() });
    }
    let stated = u32_at(bytes, 0);
    if stated as usize != bytes.len() {
        return Err(DecodeError::SizeMismatch {
            stated,
            actual: bytes.len(),
        });
    }
    if bytes.len() > BATCH_SIZE_MAX {
        return Err(DecodeError::TooLarge { size: bytes.len() });
    }
    let stored = u32_at(bytes, 4);
    let computed = batch_checksum(bytes);
    if stored != computed {
        return Err(DecodeError::Checksum { stored, computed });
    }
    if bytes[8] != BATCH_VERSION {
        return Err(DecodeError::Version { found: bytes[8] });
    }
    if bytes[9..12] != [0; 3] {
        return Err(DecodeError::Reserved);
    }
    let count = u32_at(bytes, 12);
    if count > EVENTS_PER_BATCH_MAX {
        return Err(DecodeError::TooManyEvents { count });
    }
    let mut at = BATCH_HEADER_SIZE;
    for index in 0..count {
        let layout =
            Layout::parse(bytes, at).map_err(|reason| DecodeError::Record { index, at, reason })?;
        check_content(bytes, &layout).map_err(|source| DecodeError::InvalidEvent {
            index,
            at,
            source,
        })?;
        at = layout.end;
    }
    if at != bytes.len() {
        return Err(DecodeError::TrailingBytes {
            extra: bytes.len() - at,
        });
    }
    Ok(())
}

/// Where the fields of one event record lie, as absolute byte offsets into
/// the batch. Field order: topic, event type, content type, traceparent,
/// key, user headers, payload.
#[derive(Debug, Clone, Copy)]
struct Layout {
    start: usize,
    topic_end: usize,
    event_type_end: usize,
    content_type_end: usize,
    traceparent_end: usize,
    key_end: usize,
    payload_start: usize,
    end: usize,
}

impl Layout {
    /// Reads the record at `start`, checking only that its sizes are
    /// consistent and inside `bytes` (the user header section included).
    fn parse(bytes: &[u8], start: usize) -> Result<Layout, &'static str> {
        let available = bytes.len().saturating_sub(start);
        if available < EVENT_HEADER_SIZE {
            return Err("record header runs past the end of the batch");
        }
        let header = &bytes[start..start + EVENT_HEADER_SIZE];
        let size = u32_at(header, 0) as usize;
        if size < EVENT_HEADER_SIZE || size > available {
            return Err("record size out of bounds");
        }
        let fixed = [
            EVENT_HEADER_SIZE,
            usize::from(u16_at(header, 48)),
            usize::from(header[52]),
            usize::from(header[53]),
            usize::from(header[54]),
            u32_at(header, 40) as usize,
            u32_at(header, 44) as usize,
        ];
        // Each term is below 2^32, so the sum cannot overflow a u64.
        let fixed_size: u64 = fixed.iter().map(|&n| n as u64).sum();
        if fixed_size > size as u64 {
            return Err("field sizes exceed the record size");
        }
        let mut at = start;
        let mut ends = [0; 6];
        for (end, field_size) in ends.iter_mut().zip(fixed) {
            at += field_size;
            *end = at;
        }
        let layout = Layout {
            start,
            topic_end: ends[1],
            event_type_end: ends[2],
            content_type_end: ends[3],
            traceparent_end: ends[4],
            key_end: ends[5],
            payload_start: start + size - fixed[6],
            end: start + size,
        };
        let count = usize::from(u16_at(header, 50));
        UserHeaders::walk(&bytes[layout.key_end..layout.payload_start], count)?;
        Ok(layout)
    }

    fn header<'a>(&self, bytes: &'a [u8]) -> &'a [u8] {
        &bytes[self.start..self.start + EVENT_HEADER_SIZE]
    }

    fn topic(&self) -> Range<usize> {
        self.start + EVENT_HEADER_SIZE..self.topic_end
    }

    fn event_type(&self) -> Range<usize> {
        self.topic_end..self.event_type_end
    }

    fn content_type(&self) -> Range<usize> {
        self.event_type_end..self.content_type_end
    }

    fn traceparent(&self) -> Range<usize> {
        self.content_type_end..self.traceparent_end
    }

    fn key(&self) -> Range<usize> {
        self.traceparent_end..self.key_end
    }

    fn user_headers(&self) -> Range<usize> {
        self.key_end..self.payload_start
    }

    fn payload(&self) -> Range<usize> {
        self.payload_start..self.end
    }
}

/// Checks the content of a record whose layout is sound: the same rules
/// the encoder applies.
fn check_content(bytes: &[u8], layout: &Layout) -> Result<(), EventError> {
    check_topic_name(&bytes[layout.topic()])?;
    check_key_payload(layout.key().len(), layout.payload().len())?;
    check_text(
        "event_type",
        &bytes[layout.event_type()],
        EVENT_TYPE_SIZE_MAX,
    )?;
    let content_type = &bytes[layout.content_type()];
    check_text("content_type", content_type, CONTENT_TYPE_SIZE_MAX)?;
    let traceparent = &bytes[layout.traceparent()];
    if !traceparent.is_empty() {
        check_traceparent(traceparent)?;
    }
    let header = layout.header(bytes);
    if Sensitivity::from_u8(header[55]).is_none() {
        return Err(EventError::Sensitivity { value: header[55] });
    }
    let count = usize::from(u16_at(header, 50));
    if count > HEADER_COUNT_MAX {
        return Err(EventError::TooManyHeaders { count });
    }
    let section = &bytes[layout.user_headers()];
    if section.len() > HEADERS_SIZE_MAX {
        return Err(EventError::HeadersTooLarge {
            size: section.len(),
        });
    }
    let mut headers = UserHeaders::of(bytes, layout);
    while let Some((name, _value)) = headers.next(bytes) {
        check_header_name(&bytes[name])?;
    }
    Ok(())
}

/// Walks the user header section of one record, yielding absolute byte
/// ranges of each name and value.
#[derive(Debug, Clone)]
struct UserHeaders {
    at: usize,
    remaining: usize,
}

impl UserHeaders {
    /// Checks that `section` holds exactly `count` well-formed headers.
    fn walk(section: &[u8], count: usize) -> Result<(), &'static str> {
        let mut rest = section;
        for _ in 0..count {
            if rest.len() < USER_HEADER_PREFIX_SIZE {
                return Err("user header prefix runs past the header section");
            }
            let size =
                USER_HEADER_PREFIX_SIZE as u64 + u64::from(rest[0]) + u64::from(u32_at(rest, 1));
            if size > rest.len() as u64 {
                return Err("user header runs past the header section");
            }
            rest = &rest[size as usize..];
        }
        if !rest.is_empty() {
            return Err("bytes left in the user header section");
        }
        Ok(())
    }

    fn of(bytes: &[u8], layout: &Layout) -> UserHeaders {
        UserHeaders {
            at: layout.key_end,
            remaining: usize::from(u16_at(layout.header(bytes), 50)),
        }
    }

    /// The next (name, value) ranges of a section already checked by `walk`.
    fn next(&mut self, bytes: &[u8]) -> Option<(Range<usize>, Range<usize>)> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        let name_size = usize::from(bytes[self.at]);
        let value_size = u32_at(bytes, self.at + 1) as usize;
        let name_start = self.at + USER_HEADER_PREFIX_SIZE;
        let value_start = name_start + name_size;
        self.at = value_start + value_size;
        Some((name_start..value_start, value_start..self.at))
    }
}

/// Iterator over the events of a batch.
#[derive(Debug, Clone)]
pub struct BatchIter<'a> {
    bytes: &'a Bytes,
    at: usize,
    remaining: usize,
}

impl<'a> Iterator for BatchIter<'a> {
    type Item = EventView<'a>;

    fn next(&mut self) -> Option<EventView<'a>> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        // The batch was validated when it was built or decoded.
        let layout = Layout::parse(self.bytes, self.at).expect("validated batch");
        self.at = layout.end;
        Some(EventView {
            bytes: self.bytes,
            layout,
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }
}

impl ExactSizeIterator for BatchIter<'_> {}

/// One event inside a batch. Key, payload and header values are `Bytes`
/// slices of the batch: reading them copies nothing.
#[derive(Clone, Copy)]
pub struct EventView<'a> {
    bytes: &'a Bytes,
    layout: Layout,
}

impl<'a> EventView<'a> {
    fn header(&self) -> &'a [u8] {
        self.layout.header(self.bytes)
    }

    fn text(&self, range: Range<usize>) -> &'a str {
        std::str::from_utf8(&self.bytes[range]).expect("validated batch")
    }

    /// Topic name.
    pub fn topic(&self) -> &'a str {
        self.text(self.layout.topic())
    }

    /// Partition of the topic.
    pub fn partition(&self) -> u32 {
        u32_at(self.header(), 4)
    }

    /// Producer identity and sequence.
    pub fn producer(&self) -> ProducerStamp {
        let header = self.header();
        ProducerStamp {
            id: u64_at(header, 8),
            epoch: u32_at(header, 32),
            sequence: u64_at(header, 16),
        }
    }

    /// The producer's publish time.
    pub fn timestamp_ms(&self) -> u64 {
        u64_at(self.header(), 24)
    }

    /// The key, as a slice of the batch.
    pub fn key(&self) -> Bytes {
        self.bytes.slice(self.layout.key())
    }

    /// The key, borrowed.
    pub fn key_slice(&self) -> &'a [u8] {
        &self.bytes[self.layout.key()]
    }

    /// The payload, as a slice of the batch.
    pub fn payload(&self) -> Bytes {
        self.bytes.slice(self.layout.payload())
    }

    /// The payload, borrowed.
    pub fn payload_slice(&self) -> &'a [u8] {
        &self.bytes[self.layout.payload()]
    }

    /// The event type.
    pub fn event_type(&self) -> &'a str {
        self.text(self.layout.event_type())
    }

    /// The payload's schema version.
    pub fn schema_version(&self) -> u32 {
        u32_at(self.header(), 36)
    }

    /// The payload's content type.
    pub fn content_type(&self) -> &'a str {
        self.text(self.layout.content_type())
    }

    /// The W3C trace context, if any.
    pub fn traceparent(&self) -> Option<&'a str> {
        let range = self.layout.traceparent();
        (!range.is_empty()).then(|| self.text(range))
    }

    /// The sensitivity level.
    pub fn sensitivity(&self) -> Sensitivity {
        Sensitivity::from_u8(self.header()[55]).expect("validated batch")
    }

    /// The user headers, in order; values are slices of the batch.
    pub fn user_headers(&self) -> impl ExactSizeIterator<Item = (&'a str, Bytes)> + use<'a> {
        let bytes = self.bytes;
        let mut headers = UserHeaders::of(bytes, &self.layout);
        let remaining = headers.remaining;
        let iter = std::iter::from_fn(move || {
            let (name, value) = headers.next(bytes)?;
            let name = std::str::from_utf8(&bytes[name]).expect("validated batch");
            Some((name, bytes.slice(value)))
        });
        ExactLen { iter, remaining }
    }

    /// All headers, copied into owned strings (values stay shared).
    pub fn headers(&self) -> Headers {
        Headers {
            event_type: self.event_type().to_owned(),
            schema_version: self.schema_version(),
            content_type: self.content_type().to_owned(),
            traceparent: self.traceparent().map(str::to_owned),
            sensitivity: self.sensitivity(),
            user: self
                .user_headers()
                .map(|(name, value)| (name.to_owned(), value))
                .collect(),
        }
    }

    /// The event as an owned value; key, payload and header values still
    /// share the batch's bytes.
    pub fn to_event(&self) -> Event {
        Event {
            topic: self.topic().to_owned(),
            key: self.key(),
            payload: self.payload(),
            headers: self.headers(),
            producer: self.producer(),
            partition: self.partition(),
            timestamp_ms: self.timestamp_ms(),
        }
    }

    /// The whole encoded record, as a slice of the batch.
    pub fn record(&self) -> Bytes {
        self.bytes.slice(self.layout.start..self.layout.end)
    }
}

impl fmt::Debug for EventView<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventView")
            .field("topic", &self.topic())
            .field("partition", &self.partition())
            .field("producer", &self.producer())
            .field("event_type", &self.event_type())
            .field("key_size", &self.layout.key().len())
            .field("payload_size", &self.layout.payload().len())
            .finish()
    }
}

/// Gives an iterator of known length an exact size.
struct ExactLen<I> {
    iter: I,
    remaining: usize,
}

impl<I: Iterator> Iterator for ExactLen<I> {
    type Item = I::Item;

    fn next(&mut self) -> Option<I::Item> {
        let item = self.iter.next()?;
        self.remaining -= 1;
        Some(item)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }
}

impl<I: Iterator> ExactSizeIterator for ExactLen<I> {}

impl Serialize for EventBatch {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for EventBatch {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_byte_buf(BatchVisitor)
    }
}

/// Deserializes a batch from a byte string and validates it, so that an
/// invalid batch inside a message fails the whole message.
struct BatchVisitor;

impl<'de> serde::de::Visitor<'de> for BatchVisitor {
    type Value = EventBatch;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "an encoded event batch (byte string)")
    }

    fn visit_bytes<E: serde::de::Error>(self, bytes: &[u8]) -> Result<EventBatch, E> {
        self.visit_byte_buf(bytes.to_vec())
    }

    fn visit_byte_buf<E: serde::de::Error>(self, bytes: Vec<u8>) -> Result<EventBatch, E> {
        EventBatch::from_bytes(Bytes::from(bytes)).map_err(E::custom)
    }

    // Self-describing formats without byte strings (JSON) send a sequence.
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<EventBatch, A::Error> {
        let hint = seq.size_hint().unwrap_or(0).min(BATCH_SIZE_MAX);
        let mut bytes = Vec::with_capacity(hint.min(64 * 1024));
        while let Some(byte) = seq.next_element::<u8>()? {
            if bytes.len() == BATCH_SIZE_MAX {
                return Err(serde::de::Error::custom(DecodeError::TooLarge {
                    size: BATCH_SIZE_MAX + 1,
                }));
            }
            bytes.push(byte);
        }
        self.visit_byte_buf(bytes)
    }
}

fn u16_at(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(bytes[at..at + 2].try_into().expect("2 bytes"))
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

/// Entry point for a fuzz target (feature `testing`): must return normally
/// for every input.
#[cfg(feature = "testing")]
pub mod fuzzing {
    use bytes::Bytes;

    use super::{EventBatch, EventError};

    /// Decodes arbitrary bytes as a batch; if they decode, reads every
    /// field of every event and checks that re-encoding gives the same
    /// bytes (the encoding is canonical).
    pub fn batch_decode(data: &[u8]) {
        let Ok(batch) = EventBatch::from_bytes(Bytes::copy_from_slice(data)) else {
            return;
        };
        let events: Vec<_> = batch.iter().map(|view| view.to_event()).collect();
        assert_eq!(events.len(), batch.len());
        let again: Result<EventBatch, EventError> = EventBatch::encode(&events);
        assert_eq!(
            again.expect("decoded events re-encode").as_bytes(),
            batch.as_bytes()
        );
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn rich_event(sequence: u64) -> Event {
        Event {
            topic: "payments.settled".into(),
            key: Bytes::from(format!("account-{sequence}")),
            payload: Bytes::from(format!("{{\"amount\":{sequence}}}")),
            headers: Headers {
                event_type: "payment.settled".into(),
                schema_version: 3,
                content_type: "application/json".into(),
                traceparent: Some(TRACEPARENT.into()),
                sensitivity: Sensitivity::Confidential,
                user: vec![
                    ("tenant".into(), Bytes::from_static(b"acme")),
                    ("empty".into(), Bytes::new()),
                ],
            },
            producer: ProducerStamp {
                id: 7,
                epoch: 2,
                sequence,
            },
            partition: 5,
            timestamp_ms: 1_700_000_000_000 + sequence,
        }
    }

    fn plain_event(topic: &str) -> Event {
        Event {
            topic: topic.into(),
            ..Event::default()
        }
    }

    fn sample_batch() -> EventBatch {
        let mut events: Vec<Event> = (0..3).map(rich_event).collect();
        events.push(plain_event("t"));
        EventBatch::encode(&events).expect("valid events")
    }

    #[test]
    fn round_trip_keeps_every_field() {
        let mut events: Vec<Event> = (0..5).map(rich_event).collect();
        events.push(plain_event("other_topic-1"));
        let batch = EventBatch::encode(&events).unwrap();
        assert_eq!(batch.len(), 6);
        let decoded = EventBatch::from_bytes(batch.as_bytes().clone()).unwrap();
        let back: Vec<Event> = decoded.iter().map(|view| view.to_event()).collect();
        assert_eq!(back, events);
        let view = decoded.iter().next().unwrap();
        assert_eq!(view.traceparent(), Some(TRACEPARENT));
        assert_eq!(view.sensitivity(), Sensitivity::Confidential);
        assert_eq!(view.user_headers().len(), 2);
    }

    #[test]
    fn empty_batch_round_trips() {
        let batch = EventBatch::encode(&[]).unwrap();
        assert!(batch.is_empty());
        assert_eq!(batch.as_bytes().len(), BATCH_HEADER_SIZE);
        let decoded = EventBatch::from_bytes(batch.into_bytes()).unwrap();
        assert_eq!(decoded.iter().count(), 0);
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let bytes = sample_batch().into_bytes().to_vec();
        for bit in 0..bytes.len() * 8 {
            let mut damaged = bytes.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            assert!(
                EventBatch::from_bytes(Bytes::from(damaged)).is_err(),
                "flip of bit {bit} not detected"
            );
        }
    }

    #[test]
    fn truncation_and_extension_are_detected() {
        let bytes = sample_batch().into_bytes();
        for size in 0..bytes.len() {
            assert!(
                EventBatch::from_bytes(bytes.slice(..size)).is_err(),
                "prefix {size}"
            );
        }
        let mut longer = bytes.to_vec();
        longer.push(0);
        assert!(EventBatch::from_bytes(Bytes::from(longer)).is_err());
    }

    #[test]
    fn views_are_zero_copy() {
        let batch = sample_batch();
        let range = batch.as_bytes().as_ptr_range();
        for view in &batch {
            for part in [view.payload(), view.key(), view.record()] {
                assert!(range.contains(&part.as_ptr()) || part.is_empty());
            }
            for (_, value) in view.user_headers() {
                assert!(range.contains(&value.as_ptr()) || value.is_empty());
            }
            let payload = view.payload();
            assert_eq!(&payload[..], view.payload_slice());
        }
    }

    #[test]
    fn builder_reuses_its_buffer_and_refuses_without_side_effects() {
        let mut builder = BatchBuilder::with_capacity(4096);
        builder.push(&rich_event(0)).unwrap();
        let mut bad = rich_event(1);
        bad.headers.traceparent = Some("not a trace".into());
        let size = builder.size_bytes();
        assert!(matches!(
            builder.push(&bad),
            Err(EventError::Traceparent { .. })
        ));
        assert_eq!(builder.size_bytes(), size);
        assert_eq!(builder.len(), 1);
        let first = builder.finish();
        builder.push(&rich_event(2)).unwrap();
        builder.push(&rich_event(3)).unwrap();
        let second = builder.finish();
        assert_eq!(
            first.iter().map(|v| v.to_event()).collect::<Vec<_>>(),
            [rich_event(0)]
        );
        let sequences: Vec<u64> = second.iter().map(|v| v.producer().sequence).collect();
        assert_eq!(sequences, [2, 3]);
        assert!(builder.is_empty());
        assert!(builder.finish().is_empty());
    }

    #[test]
    fn encoder_enforces_bounds() {
        let mut event = plain_event("t");
        event.key = Bytes::from(vec![0; KEY_SIZE_MAX + 1]);
        assert!(matches!(
            EventBatch::encode(&[event]),
            Err(EventError::KeyTooLarge { .. })
        ));
        let mut event = plain_event("t");
        event.payload = Bytes::from(vec![0; EVENT_PAYLOAD_SIZE_MAX + 1]);
        assert!(matches!(
            EventBatch::encode(&[event]),
            Err(EventError::PayloadTooLarge { .. })
        ));
        let mut event = plain_event("t");
        event.headers.user = vec![("h".into(), Bytes::new()); HEADER_COUNT_MAX + 1];
        assert!(matches!(
            EventBatch::encode(&[event]),
            Err(EventError::TooManyHeaders { .. })
        ));
        let mut event = plain_event("t");
        event.headers.user = vec![(String::new(), Bytes::new())];
        assert_eq!(
            EventBatch::encode(&[event]),
            Err(EventError::EmptyHeaderName)
        );
        let mut event = plain_event("t");
        event.headers.user = vec![("big".into(), Bytes::from(vec![0; HEADERS_SIZE_MAX]))];
        assert!(matches!(
            EventBatch::encode(&[event]),
            Err(EventError::HeadersTooLarge { .. })
        ));
        let mut event = plain_event("t");
        event.headers.event_type = "x".repeat(EVENT_TYPE_SIZE_MAX + 1);
        assert!(matches!(
            EventBatch::encode(&[event]),
            Err(EventError::FieldTooLarge { .. })
        ));
        for bad in ["", "a b", "ä", &"x".repeat(TOPIC_NAME_SIZE_MAX + 1)] {
            assert!(matches!(
                EventBatch::encode(&[plain_event(bad)]),
                Err(EventError::TopicName(_))
            ));
        }
    }

    #[test]
    fn batch_full_by_count_and_by_size() {
        let mut builder = BatchBuilder::new();
        let event = plain_event("t");
        for _ in 0..EVENTS_PER_BATCH_MAX {
            builder.push(&event).unwrap();
        }
        assert!(matches!(
            builder.push(&event),
            Err(EventError::BatchFull { .. })
        ));
        assert_eq!(builder.finish().len(), EVENTS_PER_BATCH_MAX as usize);
        let mut big = plain_event("t");
        big.payload = Bytes::from(vec![0; EVENT_PAYLOAD_SIZE_MAX]);
        let fits = BATCH_SIZE_MAX / (EVENT_PAYLOAD_SIZE_MAX + EVENT_HEADER_SIZE + 1);
        for _ in 0..fits {
            builder.push(&big).unwrap();
        }
        assert!(matches!(
            builder.push(&big),
            Err(EventError::BatchFull { .. })
        ));
        let batch = builder.finish();
        assert!(batch.as_bytes().len() <= BATCH_SIZE_MAX);
        EventBatch::from_bytes(batch.into_bytes()).unwrap();
    }

    #[test]
    fn traceparent_syntax() {
        let valid = [
            TRACEPARENT,
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09-extra",
        ];
        for value in valid {
            assert_eq!(check_traceparent(value.as_bytes()), Ok(()), "{value}");
        }
        let invalid = [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
            "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ];
        for value in invalid {
            assert!(check_traceparent(value.as_bytes()).is_err(), "{value}");
        }
    }

    #[test]
    fn partition_hash_is_stable() {
        // Computed by an independent implementation of the documented
        // algorithm; a change here breaks every client's partitioning.
        let pinned: [(&[u8], u64, u32); 4] = [
            (b"", 0xefd0_1f60_ba99_2926, 2),
            (b"a", 0x82a2_a958_a9be_ce5b, 11),
            (b"account-42", 0x202c_0b38_478c_135f, 3),
            (b"order:123456", 0xdbbc_588a_4e38_231d, 9),
        ];
        for (key, hash, partition) in pinned {
            assert_eq!(key_hash(key), hash);
            assert_eq!(partition_for(key, 12), partition);
        }
        for partitions in [1, 2, 7, 4096] {
            for key in [&b""[..], b"a", b"account-42", &[0xff; 64]] {
                assert!(partition_for(key, partitions) < partitions);
            }
        }
        let mut counts = [0u32; 8];
        for i in 0..8000 {
            counts[partition_for(format!("key-{i}").as_bytes(), 8) as usize] += 1;
        }
        assert!(
            counts.iter().all(|&c| (800..1200).contains(&c)),
            "{counts:?}"
        );
    }

    #[test]
    fn serde_carries_the_batch_as_bytes_and_validates() {
        let batch = sample_batch();
        let encoded = postcard::to_allocvec(&batch).unwrap();
        let decoded: EventBatch = postcard::from_bytes(&encoded).unwrap();
        assert_eq!(decoded, batch);
        let mut damaged = encoded.clone();
        let last = damaged.len() - 1;
        damaged[last] ^= 1;
        assert!(postcard::from_bytes::<EventBatch>(&damaged).is_err());
    }

    /// Replaces the stored checksum with the right one, so that damage
    /// reaches the structural checks behind it.
    fn fix_checksum(bytes: &mut [u8]) {
        if bytes.len() >= BATCH_HEADER_SIZE {
            let checksum = batch_checksum(bytes);
            bytes[4..8].copy_from_slice(&checksum.to_le_bytes());
        }
    }

    proptest! {
        #[test]
        fn decoding_garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut data = data;
            fix_checksum(&mut data);
            fuzzing_like(&data);
        }

        #[test]
        fn decoding_damaged_batches_never_panics(
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
            fix_size in any::<bool>(),
        ) {
            let mut bytes = sample_batch().into_bytes().to_vec();
            for (at, value) in edits {
                let at = at.index(bytes.len());
                bytes[at] = value;
            }
            if fix_size {
                let size = bytes.len() as u32;
                bytes[0..4].copy_from_slice(&size.to_le_bytes());
            }
            fix_checksum(&mut bytes);
            fuzzing_like(&bytes);
        }
    }

    /// What the fuzz target checks, without the `testing` feature.
    fn fuzzing_like(data: &[u8]) {
        let Ok(batch) = EventBatch::from_bytes(Bytes::copy_from_slice(data)) else {
            return;
        };
        let events: Vec<Event> = batch.iter().map(|view| view.to_event()).collect();
        let again = EventBatch::encode(&events).expect("decoded events re-encode");
        assert_eq!(again.as_bytes(), batch.as_bytes());
    }
}

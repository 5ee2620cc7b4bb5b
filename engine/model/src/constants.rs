//! Every bound the engine enforces, in one place.
//!
//! Names end in `_max` or `_min`; sizes are in bytes unless the name says
//! otherwise. Compile-time assertions tie the constants to each other.

use std::time::Duration;

/// The sector size the crash model tears writes at, and the unit the disk
/// contract speaks of.
pub const SECTOR_SIZE: u64 = 512;

/// Size of a frame header on disk; see `log/FORMAT.md`.
pub const FRAME_HEADER_SIZE: usize = 112;

/// Largest frame (header plus payload) the log writes or accepts on read.
/// Recovery treats a length field above this as damage, which bounds the
/// memory a corrupt length can make us touch.
pub const FRAME_SIZE_MAX: usize = 16 * 1024 * 1024;

/// Largest payload of one frame.
pub const PAYLOAD_SIZE_MAX: usize = FRAME_SIZE_MAX - FRAME_HEADER_SIZE;

/// Largest segment file. Frame offsets inside a segment are `u32`.
pub const SEGMENT_SIZE_MAX: u64 = 1024 * 1024 * 1024;

/// Smallest configurable segment size: one largest frame must fit.
pub const SEGMENT_SIZE_MIN: u64 = 4096;

/// Default segment size.
pub const SEGMENT_SIZE_DEFAULT: u64 = 64 * 1024 * 1024;

/// Largest metadata file (the Raft vote and log bounds live there).
pub const META_SIZE_MAX: usize = 64 * 1024;

/// Largest number of entries in one `append` call.
pub const APPEND_ENTRIES_MAX: usize = 1 << 20;

const _: () = assert!(FRAME_HEADER_SIZE % 8 == 0);
const _: () = assert!(FRAME_SIZE_MAX as u64 <= SEGMENT_SIZE_MAX);
const _: () = assert!(SEGMENT_SIZE_MAX <= u32::MAX as u64 + 1);
const _: () = assert!(SEGMENT_SIZE_MIN % SECTOR_SIZE == 0);
const _: () = assert!(SEGMENT_SIZE_DEFAULT % SECTOR_SIZE == 0);
const _: () = assert!(SEGMENT_SIZE_DEFAULT <= SEGMENT_SIZE_MAX);

// The batcher: coalescing publishes into Raft entries.

/// Publishes queued for the batcher, across all producers.
pub const BATCHER_QUEUE_MAX: usize = 65_536;

/// How long the batcher waits at most for the rest of a group.
pub const BATCH_GATHER_WAIT_MAX: Duration = Duration::from_micros(200);

/// Batches between two tries of a gather that was turned off.
pub const BATCH_GATHER_RETRY_EVERY: u32 = 256;

/// Events queued at which a batch is proposed without waiting for its turn.
pub const TURN_BYPASS_EVENTS: usize = 256;

/// Bytes of keys and payloads queued at which a batch is proposed without
/// waiting for its turn. Past this, the work a batch costs per byte
/// (copies, its digest) outweighs the cost of one more entry, and
/// overlapping it with the batch in flight is worth more than merging
/// (4 KiB events made to wait for their turns lost 15-30 % of their
/// throughput).
pub const TURN_BYPASS_BYTES: usize = 64 * 1024;

// Group commit: many appends, one fdatasync.

/// Rounds of `yield_now` a gather phase takes at most, so a steady
/// stream of arrivals cannot postpone a sync forever.
pub const SYNC_GATHER_ROUNDS_MAX: usize = 64;

/// How long a gather phase waits at most for the rest of a group.
pub const SYNC_GATHER_WAIT_MAX: Duration = Duration::from_micros(60);

/// Largest number of entries `limited_get_log_entries` returns at once.
pub const READ_ENTRIES_MAX: u64 = 4096;

// Audit: signed checkpoints.

/// Longest sleep of the checkpoint task between looks at the log.
pub const CHECKPOINT_TICK_MAX: Duration = Duration::from_millis(250);

/// Log entries one look for the latest checkpoint reads at most (the
/// last ones of the range asked): a signing leader writes one every 1024
/// entries by default, so the newest is within reach.
pub const CHECKPOINT_SCAN_ENTRIES_MAX: u64 = 4096;

/// Bytes an online audit export (`GET /api/audit/export`) sends at a
/// time, about: it writes into a buffer and sends it once this full.
pub const EXPORT_CHUNK_SIZE: usize = 64 * 1024;

/// Chunks of an online export waiting for a slow client, at most: the
/// export waits rather than hold more (about 1 MiB).
pub const EXPORT_CHUNKS_IN_FLIGHT_MAX: usize = 16;

// Sagas (durable dispatch's compensating transactions).

/// Most steps in one saga.
pub const SAGA_STEPS_MAX: usize = 64;

/// Most retries of a saga step's action or compensation after its first
/// attempt (the white paper's "idempotent retries, at most 3").
pub const SAGA_RETRIES_MAX: u32 = 3;

/// Longest saga id, in bytes.
pub const SAGA_ID_SIZE_MAX: usize = 255;

/// Most sagas one coordinator keeps pending (begun, not yet committed or
/// compensated) in memory; past it, new sagas are refused.
pub const SAGAS_PENDING_MAX: usize = 65_536;

/// How long a saga step has, all its attempts together, to be confirmed
/// before the saga compensates (the white paper's 3 s).
pub const SAGA_STEP_TIMEOUT_DEFAULT: Duration = Duration::from_secs(3);

// Replication between nodes.

/// Requests a stream keeps in flight to one follower.
pub const STREAM_INFLIGHT_MAX: usize = 8;

/// How far past the next expected request the server parks requests of
/// one stream; beyond that the sender is broken and is refused.
pub const STREAM_REORDER_WINDOW: u64 = 1024;

/// Streams the server keeps per source node (one per client of that
/// node: replication, heartbeats, and clients made since); the least
/// recently used go.
pub const STREAMS_PER_SOURCE_MAX: usize = 8;

/// The largest snapshot sent whole, and the size of the pieces a larger
/// one is cut into (a transport's frame bound is above it: 16 MiB for
/// TCP). A transport refusing a piece as too large halves the size.
pub const SNAPSHOT_CHUNK_SIZE: usize = 4 * 1024 * 1024;

/// The smallest piece a snapshot is cut into.
pub const SNAPSHOT_CHUNK_SIZE_MIN: usize = 256;

// The log's spare segment.

/// Bytes appended since open after which a log with
/// `log::Options::prewrite` wants a spare segment: a log that is written to
/// at all, not every log opened (a spare costs a segment of zeros).
pub const PREWRITE_AFTER_BYTES: u64 = 1024 * 1024;

/// Zeros written per `SpareJob::step`.
pub const SPARE_STEP_BYTES: u64 = 256 * 1024;

/// At most this much of the spare is written back after each of the log's
/// syncs (`Trickle::write_back`): at this disk's 1.8 GB/s, 64 KiB is
/// about 35 µs of device time, done before the next sync usually starts.
pub const SPARE_TRICKLE_BYTES: u64 = 64 * 1024;

/// When the log syncs too seldom to keep up (an idle log, or a few large
/// syncs), a step starts the write-back of its own oldest bytes once more
/// than this much is written and not yet started: it bounds what the last
/// step's sync has to write at once.
pub const SPARE_LAG_MAX: u64 = 1024 * 1024;

// Events and batches.

/// Most events in one batch.
pub const EVENTS_PER_BATCH_MAX: u32 = 1 << 16;

/// Largest encoded batch, header included. Half a log frame, so that the
/// Raft envelope around a batch (entry header, command, a transaction's
/// offset commit) always fits in one frame.
pub const BATCH_SIZE_MAX: usize = 8 * 1024 * 1024;

/// Largest event payload.
pub const EVENT_PAYLOAD_SIZE_MAX: usize = 1024 * 1024;

/// Largest event key.
pub const KEY_SIZE_MAX: usize = 4096;

/// Longest topic name (Kafka's limit), in bytes; names are ASCII.
pub const TOPIC_NAME_SIZE_MAX: usize = 249;

/// Most user headers on one event.
pub const HEADER_COUNT_MAX: usize = 64;

/// Longest user header name, in bytes.
pub const HEADER_NAME_SIZE_MAX: usize = 255;

/// Largest encoded user-header section of one event (names, values and
/// their 5-byte prefixes).
pub const HEADERS_SIZE_MAX: usize = 64 * 1024;

/// Longest `event_type`, in bytes.
pub const EVENT_TYPE_SIZE_MAX: usize = 255;

/// Longest `content_type`, in bytes.
pub const CONTENT_TYPE_SIZE_MAX: usize = 255;

/// Longest `traceparent` (a version-00 one is exactly 55 bytes; later
/// versions may append fields).
pub const TRACEPARENT_SIZE_MAX: usize = 255;

// The network: frames, connections, client requests.

/// The largest frame, header included. A larger length closes the
/// connection before any of its body is buffered.
pub const WIRE_FRAME_SIZE_MAX: usize = 16 * 1024 * 1024;

/// How long a node waits for the answer to its challenge, and for a TLS
/// handshake and the token that may follow it.
pub const AUTH_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a listener pauses after `accept` fails (out of file
/// descriptors, say) before it tries again.
pub const ACCEPT_RETRY_DELAY: Duration = Duration::from_millis(100);

/// The largest body of a token frame (a client's token after the TLS
/// handshake): a token is 94 bytes.
pub const TOKEN_FRAME_BODY_MAX: usize = 128;

/// Calls in flight on one connection, by default; also the server's bound
/// on requests it handles at once per connection.
pub const INFLIGHT_PER_CONNECTION_MAX: usize = 256;

/// Connections a server holds at once, by default
/// (`ServerConfig::connections_max`); `sluice node --connections-max`.
pub const CONNECTIONS_MAX: usize = 1024;

/// Connections from one IP address a server holds at once, by default
/// (`ServerConfig::connections_per_address_max`); `sluice node
/// --connections-per-address-max`. Nodes, clients and tools on one host
/// share an address, so this is well above what one host needs.
pub const CONNECTIONS_PER_ADDRESS_MAX: usize = 256;

/// How long a connection may see nothing happen before it is closed, by
/// default (`ServerConfig::idle_time_max`); `sluice node
/// --idle-timeout-ms`. Raft's heartbeats keep peers' connections busy; a
/// client whose connection was closed connects again on its next call.
pub const IDLE_TIME_MAX: Duration = Duration::from_secs(300);

/// How long one frame may take to arrive whole once its first byte has, by
/// default (`ServerConfig::frame_read_time_max`); `sluice node
/// --frame-read-timeout-ms`. The largest frame (16 MiB) arrives well
/// within it at 1 MiB/s.
pub const FRAME_READ_TIME_MAX: Duration = Duration::from_secs(30);

/// Bytes of frames larger than `UNBUDGETED_FRAME_SIZE_MAX` being read at
/// once on connections that have not authenticated (every connection of a
/// node without a cluster secret), by default
/// (`ServerConfig::unauthenticated_read_bytes_max`); `sluice node
/// --unauthenticated-read-bytes-max`. Four frames of the largest size.
pub const UNAUTHENTICATED_READ_BYTES_MAX: usize = 4 * WIRE_FRAME_SIZE_MAX;

/// Frames from this size on are written on their own, not copied into a
/// batch; a batch is written once it reaches it.
pub const COALESCE_BYTES_MAX: usize = 64 * 1024;

/// Bytes of responses waiting to be written above which a connection
/// reads no further requests until they are written.
pub const RESPONSE_BYTES_SOFT_MAX: usize = 1024 * 1024;

/// Events one fetch returns at most.
pub const FETCH_EVENTS_MAX: u32 = 10_000;

/// The longest a fetch waits for new events, in milliseconds.
pub const FETCH_WAIT_MS_MAX: u32 = 30_000;

/// Bytes of events one fetch returns at most, counted as the events'
/// records in the log (Kafka's `fetch.max.bytes`): a fetch asking for more
/// (or not saying, `ClientRequest::Fetch`) gets this. The first event is
/// returned whatever its size, so a reader always moves on.
pub const FETCH_BYTES_MAX: u32 = 4 * 1024 * 1024;

/// Bytes the events of one publish request take at most, encoded (see
/// `publish_size`); clients split larger batches into several requests.
pub const PUBLISH_BYTES_MAX: usize = 8 * 1024 * 1024;

/// The longest `ClientRequest::AddNode` waits for the new node to catch
/// up, in milliseconds.
pub const CATCH_UP_WAIT_MS_MAX: u32 = 3_600_000;

/// How many entries behind the leader's last one a learner may be and
/// count as caught up, ready to vote.
pub const LEARNER_LAG_MAX: u64 = 64;

// --- Security ---

/// The longest principal name (a certificate's common name, a token's
/// owner) and the longest tenant or pattern name.
pub const PRINCIPAL_NAME_MAX: usize = 255;

/// Access-control rules a cluster holds at most; a check costs the same
/// whatever their number (see `security::acl`).
pub const ACL_RULES_MAX: usize = 100_000;

/// Tokens a cluster holds at most, revoked ones included.
pub const TOKENS_MAX: usize = 100_000;

/// Tenants a cluster holds at most.
pub const TENANTS_MAX: usize = 10_000;

/// User principals a cluster places in tenants at most.
pub const TENANT_MEMBERS_MAX: usize = 100_000;

/// User principals with a quota at most.
pub const QUOTAS_MAX: usize = 100_000;

/// The longest wait a node asks an over-quota client for in one
/// throttle answer; the client waits and asks again, so a slow quota
/// stretches a request over several answers.
pub const THROTTLE_WAIT_MS_MAX: u64 = 10_000;

// --- The load tool (`sluice bench`) ---

/// Producers (or consumers) one `sluice bench` run starts at most, each
/// with its own connection.
pub const BENCH_PRODUCERS_MAX: usize = 1_000;

/// The longest warm-up or measurement of one `sluice bench` run, in
/// seconds (a day).
pub const BENCH_DURATION_S_MAX: f64 = 86_400.0;

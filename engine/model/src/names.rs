//! Names with a meaning in the log: the internal topics and groups of
//! durable dispatch and the headers of a dead letter. They are part of the
//! data model because the audit export and the CLI read what durable
//! dispatch wrote, without depending on it.

/// Where every durable delivery's outcome is recorded (4 partitions, by
/// business id). Each record is a JSON object: the event's `topic`,
/// `partition` and `offset`; the `group`; `type` and `schema_version`;
/// `published_ms`, `first_attempt_ms`, `attempts_ms` (when each attempt
/// started), `reported_ms` (Unix milliseconds); the final `state`
/// (`processed`, `failed`, `timed_out`, `cancelled`, `undecodable`);
/// `attempts`; `errors` (each failed attempt's error, in order); `cause`
/// (why it was given up, or null; a timeout names whose deadline passed);
/// `reason` (a cancellation's reason, or null); `class` (the delivery's
/// SLA class) and `deadline_ms` (the producer's deadline, or null). The audit export
/// (`sluice_audit::export`) joins records to their events by (topic, partition,
/// offset). Records written before a field existed lack it.
pub const LIFECYCLE_TOPIC: &str = "__sluice.lifecycle";

/// Where cancellations go (1 partition): the key is the business id, the
/// payload the reason (UTF-8, may be empty). A cancellation applies to the
/// events of that business id before it in the log, never to later ones.
pub const CANCEL_TOPIC: &str = "__sluice.cancel";

/// The undo log of sagas (4 partitions, by saga id): one JSON record per
/// state change of a saga, each committed in the transaction that carries
/// the step's effect. Every record has the `saga` id, the saga `name`, the
/// coordinator's `owner` and a `state`: `pre_commit` (step `step`, named
/// `step_name`, is done; `undo` is what its compensation needs; the first
/// one also carries the saga's `input`), `commit` (every step done; the
/// saga is confirmed), `failed` (step `step` was not confirmed, with its
/// `cause`; compensation starts), `compensate` (step `step`'s compensation
/// ran) and `compensated` (every step done before the failure is undone).
/// `commit` and `compensated` end a saga.
pub const SAGA_TOPIC: &str = "__sluice.saga";

/// The group that replays dead letters; its offsets on a dead-letter topic
/// mark what was replayed.
pub const REPLAY_GROUP: &str = "__sluice.replay";

/// Header names a dead letter carries besides the original headers.
pub mod dead_letter_headers {
    /// Why it failed: the last error's text, or `timed out`, `cancelled`.
    pub const CAUSE: &str = "sluice-dlq-cause";
    /// Attempts made, as decimal text.
    pub const ATTEMPTS: &str = "sluice-dlq-attempts";
    /// `topic/partition/offset` of the original event.
    pub const SOURCE: &str = "sluice-dlq-source";
    /// When the delivery was first tried and when it was given up, Unix
    /// milliseconds as decimal text.
    pub const FIRST_MS: &str = "sluice-dlq-first-ms";
    /// See [`FIRST_MS`].
    pub const LAST_MS: &str = "sluice-dlq-last-ms";
}

/// Header names a producer sets to ask something of every delivery of its
/// event. They are ordinary user headers, so every producer (embedded,
/// native client, command line) can set them.
pub mod delivery_headers {
    /// The event's deadline, Unix milliseconds as decimal text: every
    /// listener ends a delivery as timed out once its wall clock passes it.
    pub const DEADLINE_MS: &str = "sluice-deadline-ms";
    /// The event's SLA class: `P0`, `P1` or `P2`.
    pub const SLA_CLASS: &str = "sluice-sla-class";
}

/// The dead-letter topic of `group` on `topic`.
pub fn dead_letter_topic(topic: &str, group: &str) -> String {
    format!("{topic}.dlq.{group}")
}

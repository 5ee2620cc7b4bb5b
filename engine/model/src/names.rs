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
/// `attempts`; `errors` (each failed attempt's error, in order) and
/// `cause` (why it was given up, or null). The audit export
/// (`sluice_audit::export`) joins records to their events by (topic, partition,
/// offset). Records written before `attempts_ms` and `cause` existed lack
/// them.
pub const LIFECYCLE_TOPIC: &str = "__sluice.lifecycle";

/// Where cancelled business ids go (1 partition).
pub const CANCEL_TOPIC: &str = "__sluice.cancel";

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

/// The dead-letter topic of `group` on `topic`.
pub fn dead_letter_topic(topic: &str, group: &str) -> String {
    format!("{topic}.dlq.{group}")
}

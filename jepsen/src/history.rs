//! The history format: what clients did and saw, one [`Op`] at a time.
//!
//! A history is the ordered record of a test run. Every client operation
//! appears twice: an [`OpKind::Invoke`] when the client starts it and a
//! completion ([`OpKind::Ok`], [`OpKind::Fail`] or [`OpKind::Info`]) when it
//! learns the result. The invocation says what was *attempted*; an `ok`
//! completion says what was *observed* (the offset a send was given, the
//! events a poll returned). `fail` means the operation definitely did not
//! take effect; `info` means the client does not know (a timeout, a crash).
//!
//! Rules the recorder must follow (the checker reports breaches as
//! `malformed`):
//!
//! - a process has at most one operation outstanding, and its completion is
//!   the next op of that process, with the same payload variant;
//! - after an `info` completion the process is gone (its operation may still
//!   take effect at any later time), so the client continues under a new
//!   `process` id;
//! - `time_ns` is monotonic and never decreases along the history;
//! - an invocation without a completion at the end of the history counts as
//!   `info`.
//!
//! [`Payload::Nemesis`] entries record faults; they are not paired and the
//! checker ignores them.
//!
//! On disk a history is JSON lines, one op per line (see
//! [`History::from_jsonl`]), for example:
//!
//! ```json
//! {"process":3,"kind":"invoke","time_ns":10,"f":{"send":{"topic":"in","value":"p3-17"}}}
//! {"process":3,"kind":"ok","time_ns":12,"f":{"send":{"topic":"in","value":"p3-17","partition":0,"offset":5}}}
//! ```
//!
//! Offsets committed by a consumer group (in [`CommitOp`] and [`TxnOp`]) follow
//! the Kafka convention: the *next* offset to consume, so committing 5 means
//! offsets 0..=4 are done.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, BufRead, Write};

use serde::{Deserialize, Serialize};

/// Where an operation is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpKind {
    /// The client started the operation.
    Invoke,
    /// The operation took effect; the payload carries what was observed.
    Ok,
    /// The operation definitely did not take effect.
    Fail,
    /// Indeterminate: the operation may or may not take effect, now or later.
    Info,
}

/// One line of a history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Op {
    /// The client (process) id. After an `info` result the client takes a
    /// new id.
    pub process: u64,
    /// Invocation or completion.
    pub kind: OpKind,
    /// Monotonic time at which the op happened, in nanoseconds.
    pub time_ns: u64,
    /// What the operation is.
    pub f: Payload,
}

/// What an operation does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Payload {
    /// Publish one event.
    Send(SendOp),
    /// A consumer fetches events from one topic.
    Poll(PollOp),
    /// A consumer moves its position in one partition.
    Seek(SeekOp),
    /// A consumer group commits offsets.
    Commit(CommitOp),
    /// Consume-transform-produce: outputs and input offsets in one step.
    Txn(TxnOp),
    /// The full read of one topic at the end of the run.
    FinalRead(FinalReadOp),
    /// A fault injected by the nemesis; carried, never checked.
    Nemesis(NemesisOp),
}

impl Payload {
    /// The variant's name, as written in JSON.
    pub fn name(&self) -> &'static str {
        match self {
            Payload::Send(_) => "send",
            Payload::Poll(_) => "poll",
            Payload::Seek(_) => "seek",
            Payload::Commit(_) => "commit",
            Payload::Txn(_) => "txn",
            Payload::FinalRead(_) => "final_read",
            Payload::Nemesis(_) => "nemesis",
        }
    }

    /// The payload as its invocation would carry it: the same request with
    /// the observed results (an assigned offset, events read) removed.
    pub fn invocation(&self) -> Payload {
        let mut invocation = self.clone();
        match &mut invocation {
            Payload::Send(send) => send.offset = None,
            Payload::Poll(poll) => poll.events.clear(),
            Payload::FinalRead(read) => read.events.clear(),
            Payload::Seek(_) | Payload::Commit(_) | Payload::Txn(_) | Payload::Nemesis(_) => {}
        }
        invocation
    }
}

/// One event as a read (or an acknowledgement) saw it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    /// The partition within the topic named by the enclosing op.
    pub partition: u32,
    /// The event's offset within its partition.
    pub offset: u64,
    /// The event's value; unique per published event within its topic.
    pub value: String,
}

impl Event {
    /// An event at `partition`/`offset` holding `value`.
    pub fn new(partition: u32, offset: u64, value: impl Into<String>) -> Self {
        Self {
            partition,
            offset,
            value: value.into(),
        }
    }
}

impl<V: Into<String>> From<(u32, u64, V)> for Event {
    fn from((partition, offset, value): (u32, u64, V)) -> Self {
        Self::new(partition, offset, value)
    }
}

/// The identity an idempotent producer stamps on an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProducerStamp {
    /// The producer id.
    pub id: u64,
    /// The producer epoch; a new epoch fences the old one.
    pub epoch: u64,
    /// The sequence number, counted per partition.
    pub seq: u64,
}

/// Publish one event. The invocation names the value; an `ok` completion
/// carries the `partition` and `offset` the cluster acknowledged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendOp {
    /// The topic published to.
    pub topic: String,
    /// The business key, if any (it picks the partition).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The value; unique per published event within the topic. A retry of
    /// the same event (idempotent publish) reuses the value.
    pub value: String,
    /// The idempotent producer's stamp, if the send used one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub producer: Option<ProducerStamp>,
    /// The partition: chosen on invoke, or assigned on ok.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<u32>,
    /// The offset assigned; present on ok.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
}

impl SendOp {
    /// A send of `value` to `topic`, without key, producer stamp or ack.
    pub fn new(topic: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            topic: topic.into(),
            key: None,
            value: value.into(),
            producer: None,
            partition: None,
            offset: None,
        }
    }

    /// The same send, stamped by an idempotent producer.
    pub fn producer(mut self, id: u64, epoch: u64, seq: u64) -> Self {
        self.producer = Some(ProducerStamp { id, epoch, seq });
        self
    }

    /// The same send, acknowledged at `partition`/`offset`.
    pub fn acked(mut self, partition: u32, offset: u64) -> Self {
        self.partition = Some(partition);
        self.offset = Some(offset);
        self
    }
}

/// A consumer fetches events of one topic; an `ok` completion carries them
/// in delivery order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PollOp {
    /// The consumer's identity; a restarted consumer takes a new one.
    pub consumer: u64,
    /// The consumer group, if the consumer is in one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// The group generation the consumer was in; a rebalance changes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
    /// The topic polled.
    pub topic: String,
    /// The events delivered, in delivery order (on ok).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<Event>,
}

impl PollOp {
    /// A poll of `topic` by a consumer outside any group.
    pub fn new(consumer: u64, topic: impl Into<String>) -> Self {
        Self {
            consumer,
            group: None,
            generation: None,
            topic: topic.into(),
            events: Vec::new(),
        }
    }

    /// The same poll, by a member of `group` in `generation`.
    pub fn group(mut self, group: impl Into<String>, generation: u64) -> Self {
        self.group = Some(group.into());
        self.generation = Some(generation);
        self
    }

    /// The same poll, delivering `events`.
    pub fn events<E: Into<Event>>(mut self, events: impl IntoIterator<Item = E>) -> Self {
        self.events = events.into_iter().map(Into::into).collect();
        self
    }
}

/// A consumer moves its position in one partition: its next poll of that
/// partition starts at `offset`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeekOp {
    /// The consumer's identity.
    pub consumer: u64,
    /// The group generation the consumer is in, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: u32,
    /// The next offset the consumer will read.
    pub offset: u64,
}

/// A consumer group commits, per partition, the next offset to consume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommitOp {
    /// The committing consumer.
    pub consumer: u64,
    /// The group.
    pub group: String,
    /// The generation the commit carries (an older one is fenced).
    pub generation: u64,
    /// The topic whose offsets are committed.
    pub topic: String,
    /// Partition → next offset to consume.
    pub offsets_next: BTreeMap<u32, u64>,
}

/// One output of a transaction, tied to the input it was computed from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TxnOutput {
    /// The value of the input event (in the transaction's `inputs`).
    pub input: String,
    /// The output value published to the output topic.
    pub value: String,
}

/// Consume-transform-produce: publish `outputs` and commit `offsets_next`
/// as one atomic step. The invocation carries the whole request; `ok`
/// means both took effect, `fail` means neither did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TxnOp {
    /// The consumer running the transaction.
    pub consumer: u64,
    /// The (transactional) consumer group.
    pub group: String,
    /// The generation the commit carries.
    pub generation: u64,
    /// The topic the inputs were consumed from.
    pub input_topic: String,
    /// The input events processed.
    pub inputs: Vec<Event>,
    /// The topic the outputs are published to.
    pub output_topic: String,
    /// The outputs, each naming its input.
    pub outputs: Vec<TxnOutput>,
    /// Input partition → next offset to consume, committed atomically.
    pub offsets_next: BTreeMap<u32, u64>,
}

/// The full read of one topic at the end of the run, every partition from
/// its first retained offset. Several reads of one topic (say, one per
/// node) are merged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FinalReadOp {
    /// The topic read.
    pub topic: String,
    /// Every event of the topic (on ok).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<Event>,
}

impl FinalReadOp {
    /// A final read of `topic` returning `events`.
    pub fn new<E: Into<Event>>(
        topic: impl Into<String>,
        events: impl IntoIterator<Item = E>,
    ) -> Self {
        Self {
            topic: topic.into(),
            events: events.into_iter().map(Into::into).collect(),
        }
    }
}

/// A fault the nemesis injected or healed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NemesisOp {
    /// What it did, for people reading the history ("partition n1 n2 | n3").
    pub action: String,
}

macro_rules! payload_from {
    ($($variant:ident($ty:ty)),* $(,)?) => {
        $(impl From<$ty> for Payload {
            fn from(op: $ty) -> Self {
                Payload::$variant(op)
            }
        })*
    };
}

payload_from!(
    Send(SendOp),
    Poll(PollOp),
    Seek(SeekOp),
    Commit(CommitOp),
    Txn(TxnOp),
    FinalRead(FinalReadOp),
    Nemesis(NemesisOp),
);

/// A whole history, in the order the ops happened. An op's index in `ops`
/// is how reports refer to it (the 0-based line number in JSON lines
/// without blank lines).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct History {
    /// The ops, in order.
    pub ops: Vec<Op>,
}

impl From<Vec<Op>> for History {
    fn from(ops: Vec<Op>) -> Self {
        Self { ops }
    }
}

impl History {
    /// Reads a history from JSON lines: one [`Op`] per line, blank lines
    /// skipped. The error names the 1-based line that could not be read.
    pub fn from_jsonl(reader: impl BufRead) -> Result<Self, HistoryError> {
        let mut ops = Vec::new();
        for (index, line) in reader.lines().enumerate() {
            let line_number = index + 1;
            let line = line.map_err(|source| HistoryError::Read {
                line: line_number,
                source,
            })?;
            if line.trim().is_empty() {
                continue;
            }
            let op = serde_json::from_str(&line).map_err(|source| HistoryError::Parse {
                line: line_number,
                source,
            })?;
            ops.push(op);
        }
        Ok(Self { ops })
    }

    /// Writes the history as JSON lines, one op per line. Pass a buffered
    /// writer: this issues one write per op.
    pub fn to_jsonl(&self, mut writer: impl Write) -> Result<(), HistoryError> {
        // One buffer, reused, so that writing a million ops allocates once.
        let mut line = Vec::with_capacity(256);
        for (index, op) in self.ops.iter().enumerate() {
            line.clear();
            serde_json::to_writer(&mut line, op)
                .map_err(|source| HistoryError::Serialize { index, source })?;
            line.push(b'\n');
            writer
                .write_all(&line)
                .map_err(|source| HistoryError::Write { index, source })?;
        }
        writer.flush().map_err(|source| HistoryError::Write {
            index: self.ops.len(),
            source,
        })
    }
}

/// Why a history could not be read or written.
#[derive(Debug)]
#[non_exhaustive]
pub enum HistoryError {
    /// The reader failed before line `line` (1-based) was complete.
    Read {
        /// The 1-based line number.
        line: usize,
        /// The cause.
        source: io::Error,
    },
    /// Line `line` (1-based) is not one JSON op.
    Parse {
        /// The 1-based line number.
        line: usize,
        /// The cause, with the column.
        source: serde_json::Error,
    },
    /// Op `index` (0-based) could not be encoded.
    Serialize {
        /// The 0-based op index.
        index: usize,
        /// The cause.
        source: serde_json::Error,
    },
    /// The writer failed on op `index` (0-based).
    Write {
        /// The 0-based op index (the op count for the final flush).
        index: usize,
        /// The cause.
        source: io::Error,
    },
}

impl fmt::Display for HistoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HistoryError::Read { line, source } => {
                write!(f, "could not read history line {line}: {source}")
            }
            HistoryError::Parse { line, source } => write!(
                f,
                "history line {line} is not a valid op: {source}; each line must be one JSON op \
                 (see sluice_jepsen::history)"
            ),
            HistoryError::Serialize { index, source } => {
                write!(f, "could not encode history op {index}: {source}")
            }
            HistoryError::Write { index, source } => {
                write!(f, "could not write history op {index}: {source}")
            }
        }
    }
}

impl std::error::Error for HistoryError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            HistoryError::Read { source, .. } | HistoryError::Write { source, .. } => Some(source),
            HistoryError::Parse { source, .. } | HistoryError::Serialize { source, .. } => {
                Some(source)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_example_parses() {
        let text = concat!(
            r#"{"process":3,"kind":"invoke","time_ns":10,"f":{"send":{"topic":"in","value":"p3-17"}}}"#,
            "\n",
            r#"{"process":3,"kind":"ok","time_ns":12,"f":{"send":{"topic":"in","value":"p3-17","partition":0,"offset":5}}}"#,
            "\n",
        );
        let history = History::from_jsonl(text.as_bytes()).unwrap();
        assert_eq!(history.ops.len(), 2);
        assert_eq!(
            history.ops[1].f,
            Payload::Send(SendOp::new("in", "p3-17").acked(0, 5))
        );
        let mut written = Vec::new();
        history.to_jsonl(&mut written).unwrap();
        assert_eq!(String::from_utf8(written).unwrap(), text);
    }
}

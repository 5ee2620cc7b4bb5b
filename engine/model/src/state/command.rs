//! What a Raft entry asks the state machine to do.
//!
//! A [`Command`] is proposed by the leader, which stamps it with its wall
//! time; every node applies the same commands in the same order and uses
//! only that stamp as "now", so apply stays deterministic.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::event::EventBatch;

/// One replicated command: an operation and the leader's time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    /// Wall-clock milliseconds since the Unix epoch, stamped by the leader
    /// when it proposed the entry. The only clock `apply` reads.
    pub timestamp_ms: u64,
    /// What to do.
    pub op: Op,
}

impl Command {
    /// The events this command carries, if any: what the read path serves
    /// from the entry.
    pub fn batch(&self) -> Option<&EventBatch> {
        match &self.op {
            Op::Publish(batch) => Some(batch),
            Op::Transaction { events, .. } => Some(events),
            _ => None,
        }
    }
}

/// The operations of the state machine. Each is answered by one
/// [`Response`](super::Response); see `State::apply` for the rules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Creates a topic; idempotent when the topic exists with the same
    /// partition count and configuration.
    CreateTopic {
        /// 1 to 249 characters of `[A-Za-z0-9._-]`.
        name: String,
        /// 1 to `PARTITIONS_MAX`.
        partitions: u32,
        /// Retention policy, which the leader applies.
        config: TopicConfig,
    },
    /// Allocates a producer id (epoch 0), or, for a known `name`, bumps the
    /// epoch of that name's id, fencing the older instance.
    InitProducer {
        /// A stable producer identity (Kafka's `transactional.id`).
        name: Option<String>,
    },
    /// Appends events, each deduplicated by its producer sequence.
    Publish(EventBatch),
    /// Adds (or re-adds) a member to a consumer group; bumps the generation.
    JoinGroup {
        /// The group.
        group: String,
        /// The member: one name per consumer incarnation that may take over.
        member: String,
        /// Topics the member consumes; all must exist.
        topics: Vec<String>,
    },
    /// Removes a member from a group; bumps the generation.
    LeaveGroup {
        /// The group.
        group: String,
        /// The member.
        member: String,
    },
    /// Records the group's consumed positions, fenced by generation.
    CommitOffsets(OffsetCommit),
    /// Consume-transform-produce: appends `events` and applies `commit`,
    /// all or nothing.
    Transaction {
        /// The outputs.
        events: EventBatch,
        /// The inputs' new positions.
        commit: OffsetCommit,
    },
    /// Drops the partition index below a log index the leader chose, so
    /// every node forgets the same prefix.
    Retention {
        /// Index entries pointing below this log index are dropped.
        log_index_before: u64,
    },
    /// Does nothing (a leader's first entry, a barrier).
    Noop,
    /// A group member is alive; answered with the group's generation and
    /// the member's assignment. Members silent for longer than
    /// `SESSION_TIMEOUT_MS` are removed by it.
    Heartbeat {
        /// Group.
        group: String,
        /// Member.
        member: String,
    },
    /// A signed checkpoint of the log's hash chain head; applying it
    /// changes nothing, its place in the log is what counts.
    Checkpoint(crate::records::Checkpoint),
    /// A signed erasure request: the subject's payloads are masked on
    /// every later read.
    Erase(crate::records::Erasure),
    /// Changes a topic's retention policy; the leader applies the new one
    /// from its next retention round. Last in the enum, so that the tags
    /// of the operations before it (in logs already written) stay as
    /// they were.
    AlterTopic {
        /// The topic, which must exist.
        name: String,
        /// The new `retention_ms`; `None` keeps the current one.
        retention_ms: Option<Option<u64>>,
        /// The new `retention_bytes`; `None` keeps the current one.
        retention_bytes: Option<Option<u64>>,
    },
    /// An administrative change, made by `principal`: the admin trail is
    /// the log's `Admin` entries, each chained and stamped with the
    /// leader's time like every entry. Nodes wrap a client's admin
    /// requests in it; a client cannot send one itself.
    Admin {
        /// Who asked for the change.
        principal: crate::security::Principal,
        /// The change.
        action: AdminAction,
    },
}

/// What an [`Op::Admin`] entry changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdminAction {
    /// A change to the rules, tokens, tenants or quotas.
    Security(crate::security::SecurityOp),
    /// An operation applied as if proposed alone (creating or altering a
    /// topic, an erasure): recorded with its principal.
    Apply(Box<Op>),
    /// A change made outside the state machine (a membership change, a
    /// dead-letter replay), recorded before it is made: what was asked.
    Record(String),
}

/// A topic's retention policy. The leader turns it into `Retention`
/// commands; the state machine only stores it.
///
/// Topics share one log, which is trimmed from its start by whole
/// segments: a segment goes once every topic's policy lets it go, so a
/// topic without limits ([`TopicConfig::UNLIMITED`]) keeps the whole log,
/// and every topic keeps at least what it asked for. A policy lets a
/// segment go once either limit it sets is passed (Kafka's rule).
///
/// [`TopicConfig::default`] keeps events [`RETENTION_MS_DEFAULT`] (7 days)
/// with no size limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicConfig {
    /// Keep events at least this long (by the leader's clock); `None`: no
    /// time limit.
    pub retention_ms: Option<u64>,
    /// Keep at least the newest this many bytes of the log (all topics'
    /// events share it); `None`: no size limit.
    pub retention_bytes: Option<u64>,
}

/// How long a topic keeps its events unless created otherwise: 7 days.
pub const RETENTION_MS_DEFAULT: u64 = 7 * 24 * 60 * 60 * 1000;

impl Default for TopicConfig {
    fn default() -> Self {
        TopicConfig {
            retention_ms: Some(RETENTION_MS_DEFAULT),
            retention_bytes: None,
        }
    }
}

impl TopicConfig {
    /// Keeps everything, forever; pins the whole shared log.
    pub const UNLIMITED: TopicConfig = TopicConfig {
        retention_ms: None,
        retention_bytes: None,
    };

    /// Whether neither limit is set.
    pub fn is_unlimited(&self) -> bool {
        self.retention_ms.is_none() && self.retention_bytes.is_none()
    }
}

impl fmt::Display for TopicConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.retention_ms {
            Some(ms) => write!(f, "retention-ms {ms}")?,
            None => write!(f, "retention-ms unlimited")?,
        }
        match self.retention_bytes {
            Some(bytes) => write!(f, ", retention-bytes {bytes}"),
            None => write!(f, ", retention-bytes unlimited"),
        }
    }
}

/// A consumer group member's committed positions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OffsetCommit {
    /// The group.
    pub group: String,
    /// The committing member.
    pub member: String,
    /// The generation the member believes current; anything else is a
    /// zombie's commit and is rejected.
    pub generation: u64,
    /// (topic, partition, next offset to consume).
    pub offsets: Vec<(String, u32, u64)>,
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.op.fmt(f)
    }
}

impl Op {
    /// The operation this entry applies: the one an admin entry carries
    /// (`Op::Admin { action: AdminAction::Apply(op), .. }`), else itself.
    /// Readers of the log (the verifier, the export, the chain check) see
    /// an erasure or a checkpoint through it wherever it was recorded.
    pub fn applied(&self) -> &Op {
        match self {
            Op::Admin {
                action: AdminAction::Apply(op),
                ..
            } => op,
            op => op,
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::CreateTopic {
                name, partitions, ..
            } => write!(f, "create topic {name} with {partitions} partitions"),
            Op::InitProducer { name: Some(name) } => write!(f, "init producer {name}"),
            Op::InitProducer { name: None } => write!(f, "init producer"),
            Op::Publish(batch) => write!(f, "publish {} events", batch.len()),
            Op::JoinGroup { group, member, .. } => write!(f, "join group {group} as {member}"),
            Op::LeaveGroup { group, member } => write!(f, "leave group {group} as {member}"),
            Op::CommitOffsets(commit) => write!(
                f,
                "commit {} offsets of group {}",
                commit.offsets.len(),
                commit.group
            ),
            Op::Erase(erasure) => write!(f, "erase subject {:?}", erasure.subject),
            Op::Checkpoint(checkpoint) => {
                write!(
                    f,
                    "checkpoint of the chain head at index {}",
                    checkpoint.index
                )
            }
            Op::Transaction { events, commit } => write!(
                f,
                "transaction of {} events and {} offsets of group {}",
                events.len(),
                commit.offsets.len(),
                commit.group
            ),
            Op::Retention { log_index_before } => {
                write!(f, "retention before index {log_index_before}")
            }
            Op::Noop => write!(f, "noop"),
            Op::AlterTopic { name, .. } => write!(f, "alter the retention of topic {name}"),
            Op::Heartbeat { group, member } => write!(f, "heartbeat of {member} in group {group}"),
            Op::Admin { principal, action } => write!(f, "{principal}: {action}"),
        }
    }
}

impl fmt::Display for AdminAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AdminAction::Security(op) => op.fmt(f),
            AdminAction::Apply(op) => op.fmt(f),
            AdminAction::Record(what) => f.write_str(what),
        }
    }
}

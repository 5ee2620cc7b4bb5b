//! What `State::apply` answers, and why it refuses.
//!
//! Responses travel back to clients (through openraft and the wire), so
//! they and their errors are plain serializable data. Every refusal is
//! deterministic: all nodes give the same answer to the same entry.

use serde::{Deserialize, Serialize};

use crate::event::TopicNameError;

use super::command::TopicConfig;
use super::{
    GROUPS_MAX, MEMBERS_PER_GROUP_MAX, NAME_SIZE_MAX, OFFSETS_PER_COMMIT_MAX, PARTITIONS_MAX,
    PARTITIONS_TOTAL_MAX, PRODUCERS_MAX, SUBSCRIPTION_TOPICS_MAX, TOPICS_MAX,
};

/// The answer to one applied command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// `Noop` and `Retention` succeeded.
    Ok,
    /// The topic exists as asked (created now or before, identically).
    TopicCreated,
    /// The producer's id and current epoch.
    ProducerInit {
        /// Producer id.
        id: u64,
        /// Current epoch; older epochs are fenced.
        epoch: u32,
    },
    /// One outcome per event, in batch order.
    Published(Vec<EventOutcome>),
    /// The member joined; the group's new generation and what the member
    /// now owns, sorted by (topic, partition).
    Joined {
        /// New generation.
        generation: u64,
        /// The member's partitions.
        assignment: Vec<(String, u32)>,
    },
    /// The member left; the group's new generation.
    Left {
        /// New generation.
        generation: u64,
    },
    /// The offsets are committed.
    Committed,
    /// A transaction's outcome: every event appended and the commit
    /// applied, or nothing at all.
    Transaction(Result<Vec<EventOutcome>, TxnError>),
    /// The command was refused and changed nothing.
    Error(StateError),
    /// The member is alive: the group's generation and what the member
    /// owns in it (the answer to a heartbeat).
    Alive {
        /// Current generation.
        generation: u64,
        /// The member's partitions, sorted.
        assignment: Vec<(String, u32)>,
    },
    /// The topic's retention was changed (the answer to `AlterTopic`).
    TopicAltered {
        /// The topic's configuration now.
        config: TopicConfig,
    },
}

/// What became of one published event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventOutcome {
    /// Appended at `offset` of `partition`.
    Appended {
        /// Partition.
        partition: u32,
        /// Its offset.
        offset: u64,
    },
    /// Already appended earlier at `offset`; not appended again. A
    /// producer treats this exactly like `Appended`.
    Duplicate {
        /// Partition.
        partition: u32,
        /// The original offset.
        offset: u64,
    },
    /// Not appended.
    Rejected(PublishError),
}

impl EventOutcome {
    /// The event's offset if it is in the log (appended now or before).
    pub fn offset(&self) -> Option<u64> {
        match *self {
            EventOutcome::Appended { offset, .. } | EventOutcome::Duplicate { offset, .. } => {
                Some(offset)
            }
            EventOutcome::Rejected(_) => None,
        }
    }
}

/// Why one event was not appended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[non_exhaustive]
pub enum PublishError {
    /// No such topic.
    #[error("topic {topic} does not exist: create it first")]
    UnknownTopic {
        /// The name.
        topic: String,
    },
    /// The partition number is out of range.
    #[error(
        "topic {topic} has {partitions} partitions, so partition {partition} does not exist: \
         refresh the topic's metadata"
    )]
    UnknownPartition {
        /// The topic.
        topic: String,
        /// The partition asked for.
        partition: u32,
        /// How many the topic has.
        partitions: u32,
    },
    /// The producer id was never allocated, or expired after being idle.
    #[error("producer id {id} is unknown or expired: call InitProducer for a new id")]
    UnknownProducer {
        /// The id.
        id: u64,
    },
    /// A newer instance of this producer took over (zombie fencing).
    #[error(
        "producer {id} was fenced: epoch {got} is older than the current epoch {current}; \
         a newer instance owns this producer, so stop publishing"
    )]
    ProducerFenced {
        /// The id.
        id: u64,
        /// The current epoch.
        current: u32,
        /// The event's epoch.
        got: u32,
    },
    /// An epoch the state machine never handed out.
    #[error(
        "producer {id} has epoch {current}, but the event claims epoch {got}: \
         epochs only come from InitProducer"
    )]
    UnknownEpoch {
        /// The id.
        id: u64,
        /// The current epoch.
        current: u32,
        /// The event's epoch.
        got: u32,
    },
    /// A gap in the producer's sequence for this partition.
    #[error(
        "sequence {got} is out of order: expected {expected}; resend the missing events \
         first, in order"
    )]
    OutOfOrderSequence {
        /// The next sequence the state machine accepts.
        expected: u64,
        /// The event's sequence.
        got: u64,
    },
    /// A duplicate too old for the dedupe window: it was appended, but its
    /// offset is no longer remembered.
    #[error(
        "sequence {sequence} was already appended but is older than the dedupe window \
         (which starts at {window_first}); do not resend it"
    )]
    DuplicateTooOld {
        /// The event's sequence.
        sequence: u64,
        /// The oldest sequence still remembered.
        window_first: u64,
    },
}

/// Why an offset commit was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[non_exhaustive]
pub enum CommitError {
    /// No such group.
    #[error("consumer group {group} does not exist: join it first")]
    UnknownGroup {
        /// The group.
        group: String,
    },
    /// The member is not in the group (it left or was removed): a zombie.
    #[error("{member} is not a member of group {group}: rejoin before committing")]
    UnknownMember {
        /// The group.
        group: String,
        /// The member.
        member: String,
    },
    /// The group rebalanced since the member learned its generation.
    #[error(
        "generation {got} is stale (current {current}): the group rebalanced; \
         fetch the new assignment and drop uncommitted work on revoked partitions"
    )]
    StaleGeneration {
        /// The group's generation.
        current: u64,
        /// The commit's generation.
        got: u64,
    },
    /// No such topic.
    #[error("topic {topic} does not exist")]
    UnknownTopic {
        /// The name.
        topic: String,
    },
    /// The partition number is out of range.
    #[error("topic {topic} has {partitions} partitions, so partition {partition} does not exist")]
    UnknownPartition {
        /// The topic.
        topic: String,
        /// The partition.
        partition: u32,
        /// How many the topic has.
        partitions: u32,
    },
    /// The partition belongs to another member in this generation.
    #[error(
        "partition {partition} of {topic} is not assigned to {member} in this generation: \
         commit only partitions you own"
    )]
    NotAssigned {
        /// The topic.
        topic: String,
        /// The partition.
        partition: u32,
        /// The member.
        member: String,
    },
    /// An offset past the partition's head: nothing there was consumed.
    #[error(
        "offset {offset} of {topic}/{partition} is beyond the head {head}: \
         commit the next offset to consume, at most the head"
    )]
    OffsetBeyondHead {
        /// The topic.
        topic: String,
        /// The partition.
        partition: u32,
        /// The committed offset.
        offset: u64,
        /// The partition's next offset.
        head: u64,
    },
    /// Too many offsets in one commit.
    #[error("{count} offsets in one commit exceed the limit of {OFFSETS_PER_COMMIT_MAX}: split it")]
    TooManyOffsets {
        /// How many.
        count: usize,
    },
}

/// Why a transaction was refused; nothing of it was applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[non_exhaustive]
pub enum TxnError {
    /// The offset commit is invalid.
    #[error("transaction refused, its offset commit is invalid: {0}")]
    Commit(CommitError),
    /// An event would not be appended.
    #[error("transaction refused, event {index} would not be appended: {error}")]
    Event {
        /// Position of the event in the batch.
        index: u32,
        /// Why.
        error: PublishError,
    },
    /// Some events were already appended and some not: not a retry of one
    /// earlier transaction, so it cannot be applied atomically.
    #[error(
        "transaction refused: {duplicates} events were already appended and {new} were not; \
         a retry must resend exactly the original transaction"
    )]
    PartialDuplicate {
        /// Events already appended (or repeated inside this batch).
        duplicates: u32,
        /// Events not yet appended.
        new: u32,
    },
}

/// Which kind of name [`StateError::InvalidName`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NameKind {
    /// A consumer group.
    Group,
    /// A group member.
    Member,
    /// A stable producer name.
    Producer,
}

/// Why a non-publish command was refused; it changed nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[non_exhaustive]
pub enum StateError {
    /// An invalid topic name.
    #[error("invalid topic name {name:?}: {error}")]
    TopicName {
        /// The name.
        name: String,
        /// What is wrong.
        error: TopicNameError,
    },
    /// A partition count out of range.
    #[error("{partitions} partitions is out of range: use 1 to {PARTITIONS_MAX}")]
    PartitionCount {
        /// The count asked for.
        partitions: u32,
    },
    /// The topic exists with another partition count or configuration.
    #[error(
        "topic {name} already exists with {partitions} partitions and {config}: use it as \
         it is (change its retention with `sluice topics alter`) or pick another name"
    )]
    TopicExists {
        /// The name.
        name: String,
        /// Its partition count.
        partitions: u32,
        /// Its configuration.
        config: TopicConfig,
    },
    /// Too many topics.
    #[error("the cluster has {TOPICS_MAX} topics, the limit: reuse a topic")]
    TooManyTopics,
    /// Too many partitions across all topics.
    #[error(
        "{requested} more partitions would exceed the cluster limit of {PARTITIONS_TOTAL_MAX} \
         ({total} exist): use fewer partitions"
    )]
    TooManyPartitions {
        /// Partitions existing.
        total: u32,
        /// Partitions asked for.
        requested: u32,
    },
    /// A group, member or producer name that is empty or too long.
    #[error("{kind:?} name of {size} bytes is invalid: use 1 to {NAME_SIZE_MAX} bytes")]
    InvalidName {
        /// Which name.
        kind: NameKind,
        /// Its size.
        size: usize,
    },
    /// The producer table is full of producers active within the idle
    /// limit.
    #[error(
        "{PRODUCERS_MAX} producers are active, the limit: reuse producer ids \
         (stable names) instead of allocating one per connection"
    )]
    TooManyProducers,
    /// A named producer re-initialised so often its epoch ran out.
    #[error("producer {id} has used every epoch: give the producer a new name")]
    EpochExhausted {
        /// The id.
        id: u64,
    },
    /// A subscription with no topics or too many.
    #[error(
        "a subscription of {count} topics is invalid: subscribe to 1 to {SUBSCRIPTION_TOPICS_MAX}"
    )]
    Subscription {
        /// Distinct topics asked for.
        count: usize,
    },
    /// A subscription names a topic that does not exist.
    #[error("topic {topic} does not exist: create it before subscribing")]
    UnknownTopic {
        /// The topic.
        topic: String,
    },
    /// Too many consumer groups.
    #[error("the cluster has {GROUPS_MAX} consumer groups, the limit: reuse a group")]
    TooManyGroups,
    /// Too many members in one group.
    #[error("group {group} has {MEMBERS_PER_GROUP_MAX} members, the limit")]
    TooManyMembers {
        /// The group.
        group: String,
    },
    /// No such group.
    #[error("consumer group {group} does not exist")]
    UnknownGroup {
        /// The group.
        group: String,
    },
    /// No such member.
    #[error("{member} is not a member of group {group}")]
    UnknownMember {
        /// The group.
        group: String,
        /// The member.
        member: String,
    },
    /// An offset commit was refused.
    #[error(transparent)]
    Commit(#[from] CommitError),
    /// A retention point past the entry that carries it.
    #[error(
        "retention before index {log_index_before} was proposed at index {log_index}: \
         a retention point may not pass its own entry"
    )]
    RetentionBeyondLog {
        /// The retention point.
        log_index_before: u64,
        /// The entry's index.
        log_index: u64,
    },
    /// A security change was refused.
    #[error(transparent)]
    Security(#[from] crate::security::SecurityError),
    /// An `Op::Admin` entry wrapped an operation that is not an
    /// administrative one.
    #[error(
        "only topic, retention, checkpoint and erasure operations are recorded as admin actions"
    )]
    NotAdmin,
}

/// Why bytes are not a snapshot of the state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// Shorter than the snapshot header.
    #[error("state snapshot truncated: {size} bytes")]
    Truncated {
        /// Bytes present.
        size: usize,
    },
    /// An unknown format version.
    #[error("unknown state snapshot version {found} (this code reads 2 to {expected})")]
    Version {
        /// The stored version.
        found: u8,
        /// The version this code reads.
        expected: u8,
    },
    /// The stored checksum does not match.
    #[error("state snapshot checksum mismatch: stored {stored:08x}, computed {computed:08x}")]
    Checksum {
        /// The stored CRC-32.
        stored: u32,
        /// The CRC-32 of the bytes.
        computed: u32,
    },
    /// The body does not decode.
    #[error("state snapshot does not decode: {0}")]
    Decode(#[from] postcard::Error),
    /// The body decodes but breaks an invariant of the state.
    #[error("state snapshot is inconsistent: {reason}")]
    Inconsistent {
        /// The broken invariant.
        reason: String,
    },
}

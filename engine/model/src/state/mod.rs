//! The replicated state machine: topics, the partition index, producer
//! sessions and consumer groups.
//!
//! Every node applies the same committed entries in the same order with
//! [`State::apply`], a pure function of the state and the entry: no clock
//! (the leader's timestamp in the [`Command`] is "now"), no randomness, no
//! I/O, and only ordered maps, so all nodes reach byte-identical states
//! and give identical [`Response`]s.
//!
//! The Raft log is the event log: the state keeps no event bodies, only an
//! index from (topic, partition, offset) to (log index, position), which
//! the read path uses to serve events out of the log's entries.
//!
//! Invariants (checked by [`State::check_invariants`], on every restore and
//! after every step of the tests):
//! - log indexes passed to `apply` strictly increase;
//! - per partition, offsets are contiguous from the first retained offset
//!   to the head, each in exactly one run, runs in increasing log index;
//! - per producer and partition, appended sequences are exactly
//!   `0..next` of the current epoch, each appended once, in order;
//! - group assignments are the deterministic function of members and
//!   topics, committed offsets are never beyond the head;
//! - every table is bounded by a `*_MAX` constant below; exceeding one is a
//!   named error, never an allocation without bound.
//!
//! Fault model: commands come from the Raft log and are trusted to be the
//! same on every node, but not to be sensible: any field may be out of
//! range, and each such case is a deterministic refusal, not a panic.
//! Snapshots may be damaged (see `snapshot.rs`). A broken invariant is a
//! bug and panics.

mod command;
mod groups;
mod producers;
mod publish;
mod response;
mod runs;
mod snapshot;
mod topics;

#[cfg(feature = "testing")]
pub mod fuzzing;
#[cfg(test)]
mod tests;

use serde::{Deserialize, Serialize};

pub use command::{AdminAction, Command, OffsetCommit, Op, RETENTION_MS_DEFAULT, TopicConfig};
pub use groups::GroupInfo;
pub use producers::ProducerInfo;
pub use response::{
    CommitError, EventOutcome, NameKind, PublishError, Response, SnapshotError, StateError,
    TxnError,
};
pub use runs::Run;
pub use snapshot::SNAPSHOT_VERSION;
pub use topics::{Location, TopicInfo};

use crate::security::Security;
use groups::Groups;
use producers::Producers;
use topics::Topics;

/// Most partitions of one topic.
pub const PARTITIONS_MAX: u32 = 4096;

/// Most partitions across all topics.
pub const PARTITIONS_TOTAL_MAX: u32 = 65_536;

/// Most topics.
pub const TOPICS_MAX: usize = 4096;

/// Most producers known at once (see [`PRODUCER_IDLE_MS_MIN`]).
pub const PRODUCERS_MAX: usize = 65_536;

/// A producer idle this long (by command timestamps) may be expired when
/// the producer table is full: a week, well past any retry.
pub const PRODUCER_IDLE_MS_MIN: u64 = 7 * 24 * 60 * 60 * 1000;

/// Sequences remembered per producer and partition, to answer retries
/// with their original offsets.
pub const DEDUPE_WINDOW: u64 = 1024;

/// Most consumer groups.
pub const GROUPS_MAX: usize = 4096;

/// Most members in one group.
pub const MEMBERS_PER_GROUP_MAX: usize = 256;

/// A member not heard from (join, heartbeat or commit) for longer than this,
/// by the leaders' clocks, is removed from its group by the next join,
/// heartbeat or commit of another member, and its partitions reassigned.
pub const SESSION_TIMEOUT_MS: u64 = 30_000;

/// Most topics in one member's subscription.
pub const SUBSCRIPTION_TOPICS_MAX: usize = 64;

/// Most offsets in one commit.
pub const OFFSETS_PER_COMMIT_MAX: usize = 4096;

/// Longest group, member or producer name, in bytes.
pub const NAME_SIZE_MAX: usize = 255;

const _: () = assert!(PARTITIONS_MAX <= PARTITIONS_TOTAL_MAX);
const _: () = assert!(DEDUPE_WINDOW <= u32::MAX as u64);
// A full commit (names, partitions, offsets, with room for their length
// prefixes) fits beside a full batch in one log frame.
const _: () = assert!(
    OFFSETS_PER_COMMIT_MAX * (crate::event::TOPIC_NAME_SIZE_MAX + 32) + 4 * NAME_SIZE_MAX
        <= crate::constants::PAYLOAD_SIZE_MAX - crate::event::BATCH_SIZE_MAX - 1024
);

/// Returns `Err(format!(...))` from an invariant check when `cond` fails.
macro_rules! ensure {
    ($cond:expr, $($reason:tt)+) => {
        if !$cond {
            return Err(format!($($reason)+));
        }
    };
}
use ensure;

/// Checks a group, member or producer name.
fn check_name(kind: NameKind, name: &str) -> Result<(), StateError> {
    if name.is_empty() || name.len() > NAME_SIZE_MAX {
        return Err(StateError::InvalidName {
            kind,
            size: name.len(),
        });
    }
    Ok(())
}

/// The replicated state. See the module doc.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    last_applied: Option<u64>,
    /// Every index entry below this log index was dropped by retention.
    purged_before: u64,
    topics: Topics,
    producers: Producers,
    groups: Groups,
    /// Subjects erased by `Op::Erase`; reads mask their payloads.
    erased: std::collections::BTreeSet<String>,
    /// Rules, tokens, tenants and quotas; stored after the rest in a
    /// snapshot (see `snapshot.rs`).
    #[serde(skip)]
    security: Security,
}

impl State {
    /// An empty state.
    pub fn new() -> State {
        State::default()
    }

    /// Whether `subject` was erased (`Op::Erase`).
    pub fn is_erased(&self, subject: &str) -> bool {
        self.erased.contains(subject)
    }

    /// Every erased subject.
    pub fn erased_subjects(&self) -> &std::collections::BTreeSet<String> {
        &self.erased
    }

    /// The security settings: rules, tokens, tenants, quotas.
    pub fn security(&self) -> &Security {
        &self.security
    }

    /// Whether any subject was erased.
    pub fn has_erasures(&self) -> bool {
        !self.erased.is_empty()
    }

    /// Applies the committed entry at `log_index`. Log indexes must
    /// strictly increase from call to call.
    pub fn apply(&mut self, log_index: u64, command: &Command) -> Response {
        assert!(
            self.last_applied.is_none_or(|last| log_index > last),
            "log index {log_index} applied after {:?}",
            self.last_applied
        );
        self.last_applied = Some(log_index);
        self.apply_op(log_index, command.timestamp_ms, &command.op)
    }

    fn apply_op(&mut self, log_index: u64, now_ms: u64, op: &Op) -> Response {
        match op {
            Op::CreateTopic {
                name,
                partitions,
                config,
            } => match self.topics.create(name, *partitions, config, now_ms) {
                Ok(()) => Response::TopicCreated,
                Err(error) => Response::Error(error),
            },
            Op::InitProducer { name } => match self.producers.init(name.as_deref(), now_ms) {
                Ok((id, epoch)) => Response::ProducerInit { id, epoch },
                Err(error) => Response::Error(error),
            },
            Op::Publish(batch) => Response::Published(self.publish(log_index, now_ms, batch)),
            Op::JoinGroup {
                group,
                member,
                topics,
            } => match self
                .groups
                .join(&self.topics, group, member, topics, now_ms)
            {
                Ok((generation, assignment)) => Response::Joined {
                    generation,
                    assignment,
                },
                Err(error) => Response::Error(error),
            },
            Op::LeaveGroup { group, member } => {
                match self.groups.leave(&self.topics, group, member) {
                    Ok(generation) => Response::Left { generation },
                    Err(error) => Response::Error(error),
                }
            }
            Op::Heartbeat { group, member } => {
                match self.groups.heartbeat(&self.topics, group, member, now_ms) {
                    Ok((generation, assignment)) => Response::Alive {
                        generation,
                        assignment,
                    },
                    Err(error) => Response::Error(error),
                }
            }
            Op::CommitOffsets(commit) => self.commit_offsets(commit, now_ms),
            Op::Transaction { events, commit } => {
                Response::Transaction(self.transaction(log_index, now_ms, events, commit))
            }
            Op::Retention { log_index_before } => self.retain(log_index, *log_index_before),
            Op::Noop | Op::Checkpoint(_) => Response::Ok,
            Op::Erase(erasure) => {
                self.erased.insert(erasure.subject.clone());
                Response::Ok
            }
            Op::AlterTopic {
                name,
                retention_ms,
                retention_bytes,
            } => match self.topics.alter(name, *retention_ms, *retention_bytes) {
                Ok(config) => Response::TopicAltered { config },
                Err(error) => Response::Error(error),
            },
            Op::Admin { action, .. } => self.admin(log_index, now_ms, action),
        }
    }

    fn admin(&mut self, log_index: u64, now_ms: u64, action: &AdminAction) -> Response {
        match action {
            AdminAction::Security(op) => match self.security.apply(op) {
                Ok(()) => Response::Ok,
                Err(error) => Response::Error(StateError::Security(error)),
            },
            AdminAction::Apply(op) => match **op {
                Op::CreateTopic { .. }
                | Op::AlterTopic { .. }
                | Op::Erase(_)
                | Op::Retention { .. }
                | Op::Checkpoint(_) => self.apply_op(log_index, now_ms, op),
                _ => Response::Error(StateError::NotAdmin),
            },
            AdminAction::Record(_) => Response::Ok,
        }
    }

    fn commit_offsets(&mut self, commit: &OffsetCommit, now_ms: u64) -> Response {
        match self.groups.check_commit(&self.topics, commit) {
            Ok(()) => {
                self.groups.apply_commit(commit, now_ms);
                Response::Committed
            }
            Err(error) => Response::Error(StateError::Commit(error)),
        }
    }

    /// Drops index entries below `log_index_before`. A point at or below
    /// an earlier one changes nothing: retention only moves forward.
    fn retain(&mut self, log_index: u64, log_index_before: u64) -> Response {
        if log_index_before > log_index {
            return Response::Error(StateError::RetentionBeyondLog {
                log_index_before,
                log_index,
            });
        }
        if log_index_before > self.purged_before {
            self.purged_before = log_index_before;
            self.topics.retain(log_index_before);
        }
        Response::Ok
    }

    /// The index of the last applied entry.
    pub fn last_applied_index(&self) -> Option<u64> {
        self.last_applied
    }

    /// Every index entry below this log index was dropped by retention.
    pub fn purged_before(&self) -> u64 {
        self.purged_before
    }

    /// A topic's metadata.
    pub fn topic(&self, name: &str) -> Option<&TopicInfo> {
        self.topics.get(name).map(|topic| &topic.info)
    }

    /// All topics, by name.
    pub fn topics(&self) -> impl Iterator<Item = &TopicInfo> {
        self.topics.iter()
    }

    /// `(first retained offset, next offset)` of a partition.
    pub fn partition_range(&self, topic: &str, partition: u32) -> Option<(u64, u64)> {
        Some(self.topics.partition(topic, partition)?.range())
    }

    /// Where the event at `offset` lives, if it is retained. O(log n) in
    /// the partition's runs.
    pub fn locate(&self, topic: &str, partition: u32, offset: u64) -> Option<Location> {
        self.topics.partition(topic, partition)?.locate(offset)
    }

    /// The runs holding `offset` and every later offset, in order: the
    /// first may start before `offset`. Offsets below the first retained
    /// one start at the first run; unknown partitions yield nothing.
    pub fn runs_from(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
    ) -> impl Iterator<Item = &Run> {
        self.topics
            .partition(topic, partition)
            .into_iter()
            .flat_map(move |index| index.runs_from(offset))
    }

    /// A group's committed offset of a partition.
    pub fn committed(&self, group: &str, topic: &str, partition: u32) -> Option<u64> {
        self.groups.get(group)?.committed(topic, partition)
    }

    /// A consumer group.
    pub fn group(&self, name: &str) -> Option<&GroupInfo> {
        self.groups.get(name)
    }

    /// All consumer groups, by name.
    pub fn groups(&self) -> impl Iterator<Item = (&str, &GroupInfo)> {
        self.groups.iter()
    }

    /// A producer.
    pub fn producer(&self, id: u64) -> Option<&ProducerInfo> {
        self.producers.get(id)
    }

    /// The id of a named producer.
    pub fn producer_id(&self, name: &str) -> Option<u64> {
        self.producers.id_of(name)
    }

    /// The next sequence a producer may publish to a partition (0 when
    /// it has published nothing there in its current epoch).
    pub fn sequence_next(&self, producer: u64, topic: &str, partition: u32) -> Option<u64> {
        let slot = self.topics.slot(topic, partition).ok()?;
        self.producers.sequence_next(producer, slot)
    }

    /// The smallest log index holding an event at or after some group's
    /// committed offset: retention must not pass it unless configured to
    /// drop unconsumed events. `None` when no group needs any retained
    /// event (groups that never committed a partition do not count).
    pub fn min_needed_log_index(&self) -> Option<u64> {
        let mut needed: Option<u64> = None;
        for (_, info) in self.groups.iter() {
            for (topic, partitions) in &info.offsets {
                for (&partition, &offset) in partitions {
                    let Some(index) = self.topics.partition(topic, partition) else {
                        continue;
                    };
                    let (first, _) = index.range();
                    // Below the first retained offset, everything retained
                    // is still unconsumed.
                    if let Some(location) = index.locate(offset.max(first)) {
                        needed =
                            Some(needed.map_or(location.log_index, |n| n.min(location.log_index)));
                    }
                }
            }
        }
        needed
    }

    /// Checks every invariant of the module doc; the reason on failure.
    /// Costs a walk over the whole state.
    pub fn check_invariants(&self) -> Result<(), String> {
        ensure!(
            self.last_applied.is_some() || self.purged_before == 0,
            "purged before anything was applied"
        );
        ensure!(
            self.last_applied
                .is_none_or(|last| self.purged_before <= last),
            "purge point beyond the last applied index"
        );
        self.topics.check(self.last_applied, self.purged_before)?;
        self.producers.check_invariants(&self.topics)?;
        self.groups.check_invariants(&self.topics)
    }
}

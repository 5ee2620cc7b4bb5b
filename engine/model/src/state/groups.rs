//! Consumer groups: membership, generations, assignments and committed
//! offsets.
//!
//! Every join (also a re-join of a present member) and every leave bumps
//! the group's generation and recomputes the assignment. An offset commit
//! is accepted only from a present member, at the current generation, for
//! partitions assigned to it in that generation, at offsets no further
//! than the partition's head. A consumer that was replaced or missed a
//! rebalance (a zombie) therefore cannot move offsets, and neither can a
//! member commit a partition it no longer owns. Members that still belong
//! to the group learn a new generation and assignment by reading the group
//! (`State::group`), not by re-joining, which would bump it again.
//!
//! Committing an offset lower than the one committed is allowed: it is a
//! deliberate seek back (reprocessing), and the log still decides what is
//! there. An offset below the partition's first retained offset is allowed
//! too; reading from it then reports that the events were purged.
//!
//! Assignment (deterministic; a function of the members, their
//! subscriptions and the topics' partition counts only): walk the union of
//! subscribed topics in name order, and each topic's partitions in order;
//! give each partition to the member, among those subscribed to its topic,
//! holding the fewest partitions so far (across all topics), ties going to
//! the member whose name sorts first. When every member subscribes to the
//! same topics this is plain round-robin over the sorted member list.
//!
//! Invariants: the assignment has exactly one entry per member; each
//! member's list is sorted and holds only partitions of topics it
//! subscribes to; every partition of every subscribed topic is assigned to
//! exactly one member. Groups are never deleted (an empty group keeps its
//! generation and offsets), so a generation number is never reused.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

use serde::{Deserialize, Serialize};

use super::command::OffsetCommit;
use super::response::{CommitError, NameKind, StateError};
use super::topics::Topics;
use super::{
    GROUPS_MAX, MEMBERS_PER_GROUP_MAX, OFFSETS_PER_COMMIT_MAX, SESSION_TIMEOUT_MS,
    SUBSCRIPTION_TOPICS_MAX, check_name, ensure,
};
#[cfg(feature = "planted-bugs")]
use crate::testing::planted::{self, Bug};

/// A consumer group.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupInfo {
    /// Bumped by every join and leave; 0 before the first join.
    pub generation: u64,
    /// Member name to its subscribed topics (sorted, distinct).
    pub members: BTreeMap<String, Vec<String>>,
    /// Member name to its partitions in this generation, sorted by
    /// (topic, partition). Every member has an entry, possibly empty.
    pub assignment: BTreeMap<String, Vec<(String, u32)>>,
    /// Committed offsets: topic to partition to next offset to consume.
    pub offsets: BTreeMap<String, BTreeMap<u32, u64>>,
    /// Member name to when it was last heard from (join, heartbeat or
    /// commit), in the leaders' milliseconds. Every member has an entry.
    pub last_seen: BTreeMap<String, u64>,
}

impl GroupInfo {
    /// Whether `member` owns `topic`/`partition` in this generation.
    pub fn is_assigned(&self, member: &str, topic: &str, partition: u32) -> bool {
        self.assignment.get(member).is_some_and(|owned| {
            owned
                .binary_search_by(|(t, p)| (t.as_str(), *p).cmp(&(topic, partition)))
                .is_ok()
        })
    }

    /// The committed offset of a partition.
    pub fn committed(&self, topic: &str, partition: u32) -> Option<u64> {
        self.offsets.get(topic)?.get(&partition).copied()
    }
}

/// Removes the members of `info` silent for longer than
/// [`SESSION_TIMEOUT_MS`] before `now_ms`; returns whether any went. The
/// caller bumps the generation and reassigns. A leader whose clock is
/// behind an earlier leader's sees no one as silent (saturating).
fn expire(info: &mut GroupInfo, now_ms: u64) -> bool {
    let silent: Vec<String> = info
        .last_seen
        .iter()
        .filter(|&(_, &seen)| now_ms.saturating_sub(seen) > SESSION_TIMEOUT_MS)
        .map(|(member, _)| member.clone())
        .collect();
    for member in &silent {
        info.members.remove(member);
        info.last_seen.remove(member);
    }
    !silent.is_empty()
}

/// All groups.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Groups {
    by_name: BTreeMap<String, GroupInfo>,
}

impl Groups {
    pub(super) fn get(&self, name: &str) -> Option<&GroupInfo> {
        self.by_name.get(name)
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (&str, &GroupInfo)> {
        self.by_name
            .iter()
            .map(|(name, info)| (name.as_str(), info))
    }

    /// Adds or re-adds `member`; returns the new generation and the
    /// member's assignment.
    pub(super) fn join(
        &mut self,
        topics: &Topics,
        group: &str,
        member: &str,
        subscription: &[String],
        now_ms: u64,
    ) -> Result<(u64, Vec<(String, u32)>), StateError> {
        check_name(NameKind::Group, group)?;
        check_name(NameKind::Member, member)?;
        let subscription = normalize(topics, subscription)?;
        if !self.by_name.contains_key(group) && self.by_name.len() >= GROUPS_MAX {
            return Err(StateError::TooManyGroups);
        }
        let info = self.by_name.entry(group.to_owned()).or_default();
        if !info.members.contains_key(member) && info.members.len() >= MEMBERS_PER_GROUP_MAX {
            return Err(StateError::TooManyMembers {
                group: group.to_owned(),
            });
        }
        info.members.insert(member.to_owned(), subscription);
        info.last_seen.insert(member.to_owned(), now_ms);
        expire(info, now_ms);
        info.generation += 1;
        info.assignment = assign(&info.members, topics);
        let owned = info.assignment[member].clone();
        Ok((info.generation, owned))
    }

    /// Removes `member`; returns the new generation.
    pub(super) fn leave(
        &mut self,
        topics: &Topics,
        group: &str,
        member: &str,
    ) -> Result<u64, StateError> {
        let Some(info) = self.by_name.get_mut(group) else {
            return Err(StateError::UnknownGroup {
                group: group.to_owned(),
            });
        };
        if info.members.remove(member).is_none() {
            return Err(StateError::UnknownMember {
                group: group.to_owned(),
                member: member.to_owned(),
            });
        }
        info.last_seen.remove(member);
        info.generation += 1;
        info.assignment = assign(&info.members, topics);
        Ok(info.generation)
    }

    /// Records that `member` is alive and removes members silent for
    /// longer than [`SESSION_TIMEOUT_MS`] (a new generation if any went);
    /// returns the generation and the member's assignment. A member that
    /// is not in the group (it left, or was removed as silent) must join
    /// again.
    pub(super) fn heartbeat(
        &mut self,
        topics: &Topics,
        group: &str,
        member: &str,
        now_ms: u64,
    ) -> Result<(u64, Vec<(String, u32)>), StateError> {
        let Some(info) = self.by_name.get_mut(group) else {
            return Err(StateError::UnknownGroup {
                group: group.to_owned(),
            });
        };
        if !info.members.contains_key(member) {
            return Err(StateError::UnknownMember {
                group: group.to_owned(),
                member: member.to_owned(),
            });
        }
        info.last_seen.insert(member.to_owned(), now_ms);
        if expire(info, now_ms) {
            info.generation += 1;
            info.assignment = assign(&info.members, topics);
        }
        let owned = info.assignment[member].clone();
        Ok((info.generation, owned))
    }

    /// Checks a commit without applying it.
    pub(super) fn check_commit(
        &self,
        topics: &Topics,
        commit: &OffsetCommit,
    ) -> Result<(), CommitError> {
        let group = &commit.group;
        let info = self
            .by_name
            .get(group)
            .ok_or_else(|| CommitError::UnknownGroup {
                group: group.clone(),
            })?;
        if !info.members.contains_key(&commit.member) {
            return Err(CommitError::UnknownMember {
                group: group.clone(),
                member: commit.member.clone(),
            });
        }
        #[cfg(feature = "planted-bugs")]
        let stale_accepted =
            planted::is_planted(Bug::AcceptStaleGeneration) && commit.generation < info.generation;
        #[cfg(not(feature = "planted-bugs"))]
        let stale_accepted = false;
        if commit.generation != info.generation && !stale_accepted {
            return Err(CommitError::StaleGeneration {
                current: info.generation,
                got: commit.generation,
            });
        }
        if commit.offsets.len() > OFFSETS_PER_COMMIT_MAX {
            return Err(CommitError::TooManyOffsets {
                count: commit.offsets.len(),
            });
        }
        for (topic, partition, offset) in &commit.offsets {
            check_offset(topics, info, &commit.member, topic, *partition, *offset)?;
        }
        Ok(())
    }

    /// Applies a commit that `check_commit` accepted. Offsets are applied
    /// in order, so a repeated partition ends at its last offset.
    pub(super) fn apply_commit(&mut self, commit: &OffsetCommit, now_ms: u64) {
        let info = self.by_name.get_mut(&commit.group).expect("checked group");
        info.last_seen.insert(commit.member.clone(), now_ms);
        for (topic, partition, offset) in &commit.offsets {
            match info.offsets.get_mut(topic) {
                Some(partitions) => {
                    partitions.insert(*partition, *offset);
                }
                None => {
                    info.offsets
                        .insert(topic.clone(), BTreeMap::from([(*partition, *offset)]));
                }
            }
        }
    }

    pub(super) fn check_invariants(&self, topics: &Topics) -> Result<(), String> {
        ensure!(self.by_name.len() <= GROUPS_MAX, "too many groups");
        for (name, info) in &self.by_name {
            ensure!(
                check_name(NameKind::Group, name).is_ok(),
                "invalid group name"
            );
            ensure!(
                info.generation < u64::MAX,
                "group {name} generations exhausted"
            );
            ensure!(
                info.members.len() <= MEMBERS_PER_GROUP_MAX,
                "group {name} has too many members"
            );
            for (member, subscription) in &info.members {
                ensure!(
                    check_name(NameKind::Member, member).is_ok(),
                    "invalid member name"
                );
                // `assign` relies on this.
                ensure!(
                    normalize(topics, subscription).as_ref() == Ok(subscription),
                    "group {name} member {member} has an invalid subscription"
                );
            }
            ensure!(
                info.last_seen.keys().eq(info.members.keys()),
                "group {name} has heartbeats for other members than its own"
            );
            ensure!(
                info.assignment == assign(&info.members, topics),
                "group {name} assignment is not the computed one"
            );
            for (topic, partitions) in &info.offsets {
                for (&partition, &offset) in partitions {
                    let index = topics.partition(topic, partition);
                    ensure!(
                        index.is_some_and(|index| offset <= index.range().1),
                        "group {name} committed {topic}/{partition} at {offset}, beyond the head"
                    );
                }
            }
        }
        Ok(())
    }
}

fn check_offset(
    topics: &Topics,
    info: &GroupInfo,
    member: &str,
    topic: &str,
    partition: u32,
    offset: u64,
) -> Result<(), CommitError> {
    let Some(existing) = topics.get(topic) else {
        return Err(CommitError::UnknownTopic {
            topic: topic.to_owned(),
        });
    };
    let Some(index) = existing.partitions.get(partition as usize) else {
        return Err(CommitError::UnknownPartition {
            topic: topic.to_owned(),
            partition,
            partitions: existing.info.partitions,
        });
    };
    if !info.is_assigned(member, topic, partition) {
        return Err(CommitError::NotAssigned {
            topic: topic.to_owned(),
            partition,
            member: member.to_owned(),
        });
    }
    let head = index.range().1;
    if offset > head {
        return Err(CommitError::OffsetBeyondHead {
            topic: topic.to_owned(),
            partition,
            offset,
            head,
        });
    }
    Ok(())
}

/// Sorts and deduplicates a subscription and checks its topics exist.
fn normalize(topics: &Topics, subscription: &[String]) -> Result<Vec<String>, StateError> {
    let mut sorted: Vec<&String> = subscription.iter().collect();
    sorted.sort();
    sorted.dedup();
    if sorted.is_empty() || sorted.len() > SUBSCRIPTION_TOPICS_MAX {
        return Err(StateError::Subscription {
            count: sorted.len(),
        });
    }
    if let Some(missing) = sorted.iter().find(|topic| topics.get(topic).is_none()) {
        return Err(StateError::UnknownTopic {
            topic: (*missing).clone(),
        });
    }
    Ok(sorted.into_iter().cloned().collect())
}

/// The assignment algorithm of the module doc.
fn assign(
    members: &BTreeMap<String, Vec<String>>,
    topics: &Topics,
) -> BTreeMap<String, Vec<(String, u32)>> {
    let names: Vec<&String> = members.keys().collect();
    let mut owned: Vec<Vec<(String, u32)>> = vec![Vec::new(); names.len()];
    let union: BTreeSet<&str> = members.values().flatten().map(String::as_str).collect();
    for topic in union {
        let partitions = topics
            .get(topic)
            .expect("subscribed topics exist")
            .info
            .partitions;
        // Min-heap of (partitions held, member position in name order).
        let mut heap: BinaryHeap<Reverse<(usize, usize)>> = names
            .iter()
            .enumerate()
            .filter(|(_, name)| members[**name].iter().any(|t| t == topic))
            .map(|(i, _)| Reverse((owned[i].len(), i)))
            .collect();
        for partition in 0..partitions {
            let Reverse((held, i)) = heap.pop().expect("a subscribed topic has a subscriber");
            owned[i].push((topic.to_owned(), partition));
            heap.push(Reverse((held + 1, i)));
        }
    }
    names.into_iter().cloned().zip(owned).collect()
}

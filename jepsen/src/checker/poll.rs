//! Consumer rules, replayed in the order clients learned results.
//!
//! Per consumer, a *scope* is (consumer id, topic, partition) within one
//! group generation: a restarted consumer takes a new id and a rebalance
//! changes the generation, and either may legitimately move its position
//! back to the committed offset or forward past what another member
//! processed. An `ok` seek sets the scope's next offset explicitly. Within
//! a scope:
//!
//! - nonmonotonic-poll: a delivered offset below the next expected one
//!   (going back, or the same event twice). One occurrence per event.
//! - poll-skip: a delivered offset above the next expected one while the
//!   final read holds offsets in between. One occurrence per jump.
//!
//! Per plain (non-transactional) consumer group, across all its members:
//!
//! - redelivery (informational): an event (topic, partition, offset)
//!   delivered to the group again. At-least-once allows it after a crash or
//!   rebalance. One occurrence per extra delivery.
//! - undelivered: an event in the final read at or above the lowest offset
//!   the group was ever delivered in that partition (its starting point)
//!   and below the highest offset it committed, that no member was
//!   delivered: the group skipped it, which at-least-once forbids. One
//!   occurrence per event.
//!
//! Transactional groups are judged by the exactly-once rule instead: their
//! redeliveries after an abort are expected.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};

use super::Findings;
use super::index::{Covered, GroupPartition, Index, Pos, TopicId};
use super::pairing::Outcome;
use crate::history::{CommitOp, Event, Payload, PollOp};
use crate::report::{AnomalyClass, Example};

/// Where one consumer is in one partition.
#[derive(Debug)]
struct Scope {
    generation: Option<u64>,
    /// The next offset to deliver, once known.
    next: Option<u64>,
    /// The op that set `next`.
    since_op: usize,
}

type ScopeKey = (u64, TopicId, u32);

pub(crate) fn check(index: &Index<'_>, findings: &mut Findings) {
    let mut scopes: HashMap<ScopeKey, Scope> = HashMap::new();
    let mut ledger = GroupLedger::default();
    for pair in &index.pairs {
        let (Outcome::Ok, Some(op)) = (pair.outcome, pair.completion) else {
            continue;
        };
        match &index.history.ops[op].f {
            Payload::Poll(poll) => {
                let Some(topic) = index.find_topic(&poll.topic) else {
                    continue;
                };
                for event in &poll.events {
                    check_event(index, op, poll, topic, event, &mut scopes, findings);
                }
                if let Some(group) = plain_group(index, poll.group.as_deref()) {
                    ledger.deliver(index, op, group, topic, &poll.events, findings);
                }
            }
            Payload::Seek(seek) => {
                let Some(topic) = index.find_topic(&seek.topic) else {
                    continue;
                };
                let scope = Scope {
                    generation: seek.generation,
                    next: Some(seek.offset),
                    since_op: op,
                };
                scopes.insert((seek.consumer, topic, seek.partition), scope);
            }
            Payload::Commit(commit) if plain_group(index, Some(&commit.group)).is_some() => {
                ledger.commit(index, op, commit);
            }
            _ => {}
        }
    }
    ledger.check_undelivered(index, findings);
}

fn plain_group<'h>(index: &Index<'h>, group: Option<&'h str>) -> Option<&'h str> {
    group.filter(|group| !index.txn_groups.contains(group))
}

fn check_event(
    index: &Index<'_>,
    op: usize,
    poll: &PollOp,
    topic: TopicId,
    event: &Event,
    scopes: &mut HashMap<ScopeKey, Scope>,
    findings: &mut Findings,
) {
    let fresh = || Scope {
        generation: poll.generation,
        next: None,
        since_op: op,
    };
    let scope = scopes
        .entry((poll.consumer, topic, event.partition))
        .or_insert_with(fresh);
    if scope.generation != poll.generation {
        // A rebalance: the position restarts wherever the group says.
        *scope = fresh();
    }
    if let Some(next) = scope.next {
        let class = if event.offset < next {
            Some(AnomalyClass::NonmonotonicPoll)
        } else if skips(index, topic, event.partition, next, event.offset) {
            Some(AnomalyClass::PollSkip)
        } else {
            None
        };
        if let Some(class) = class {
            findings.record(class, || {
                poll_example(op, poll, event, next, scope.since_op)
            });
        }
    }
    scope.next = Some(event.offset + 1);
    scope.since_op = op;
}

/// Whether the final read holds an offset in `next..offset`.
fn skips(index: &Index<'_>, topic: TopicId, partition: u32, next: u64, offset: u64) -> bool {
    let entries = index.final_partition(topic, partition);
    let first = entries.partition_point(|(at, _)| *at < next);
    entries.get(first).is_some_and(|(at, _)| *at < offset)
}

fn poll_example(op: usize, poll: &PollOp, event: &Event, next: u64, since_op: usize) -> Example {
    let group = match (&poll.group, poll.generation) {
        (Some(group), Some(generation)) => format!(" (group {group:?} generation {generation})"),
        (Some(group), None) => format!(" (group {group:?})"),
        (None, _) => String::new(),
    };
    let message = format!(
        "consumer {}{group} was delivered {} partition {} offset {} ({:?}) in op {op}, but \
         after op {since_op} the next offset was {next}",
        poll.consumer, poll.topic, event.partition, event.offset, event.value
    );
    Example::new(message)
        .ops([since_op, op])
        .partition(&poll.topic, event.partition)
        .offsets([next, event.offset])
        .values([event.value.as_str()])
}

/// What each plain group was delivered and committed.
#[derive(Debug, Default)]
struct GroupLedger<'h> {
    /// (group, position) → first op delivering it.
    delivered: HashMap<(&'h str, Pos), usize>,
    /// (group, topic, partition) → lowest offset delivered.
    lowest: HashMap<GroupPartition<'h>, u64>,
    /// (group, topic, partition) → highest next offset committed, and by
    /// which op.
    committed: BTreeMap<GroupPartition<'h>, (u64, usize)>,
}

impl<'h> GroupLedger<'h> {
    fn deliver(
        &mut self,
        index: &Index<'h>,
        op: usize,
        group: &'h str,
        topic: TopicId,
        events: &'h [Event],
        findings: &mut Findings,
    ) {
        for event in events {
            let pos = Pos {
                topic,
                partition: event.partition,
                offset: event.offset,
            };
            let lowest = self
                .lowest
                .entry((group, topic, event.partition))
                .or_insert(event.offset);
            *lowest = (*lowest).min(event.offset);
            let first = match self.delivered.entry((group, pos)) {
                Entry::Vacant(entry) => {
                    entry.insert(op);
                    continue;
                }
                Entry::Occupied(entry) => *entry.get(),
            };
            findings.record(AnomalyClass::Redelivery, || {
                let name = index.topic_name(topic);
                let message = format!(
                    "group {group:?} was delivered {name} partition {} offset {} ({:?}) again in \
                     op {op}, first in op {first}",
                    event.partition, event.offset, event.value
                );
                Example::new(message)
                    .ops([first, op])
                    .partition(name, event.partition)
                    .offsets([event.offset])
                    .values([event.value.as_str()])
            });
        }
    }

    fn commit(&mut self, index: &Index<'h>, op: usize, commit: &'h CommitOp) {
        let Some(topic) = index.find_topic(&commit.topic) else {
            return;
        };
        for (&partition, &next) in &commit.offsets_next {
            let entry = self
                .committed
                .entry((&commit.group, topic, partition))
                .or_insert((next, op));
            if next > entry.0 {
                *entry = (next, op);
            }
        }
    }

    fn check_undelivered(&self, index: &Index<'_>, findings: &mut Findings) {
        for covered in index.covered(&self.committed, &self.lowest) {
            let Covered {
                group,
                topic,
                partition,
                next,
                commit_op,
                offset,
                id,
            } = covered;
            let pos = Pos {
                topic,
                partition,
                offset,
            };
            if self.delivered.contains_key(&(group, pos)) {
                continue;
            }
            findings.record(AnomalyClass::Undelivered, || {
                let name = index.topic_name(topic);
                let value = index.values[id].value;
                let message = format!(
                    "group {group:?} committed {name} partition {partition} up to offset \
                     {next} (op {commit_op}) but no member was delivered offset {offset} \
                     ({value:?})"
                );
                Example::new(message)
                    .ops([commit_op])
                    .partition(name, partition)
                    .offsets([offset])
                    .values([value])
            });
        }
    }
}

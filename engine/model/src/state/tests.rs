//! Unit tests of the state machine, through `apply` and the queries, the
//! way the Raft adapter uses it. Every step checks every invariant.

use std::collections::BTreeMap;

use bytes::Bytes;

use super::*;
use crate::event::{Event, EventBatch, ProducerStamp};

/// A state plus what a node's log would hold: the batches by log index.
#[derive(Default)]
struct Node {
    state: State,
    log_index: u64,
    /// Added to every command's timestamp: time passing between commands.
    elapsed_ms: u64,
    batches: BTreeMap<u64, EventBatch>,
}

impl Node {
    fn apply(&mut self, op: Op) -> Response {
        self.log_index += 1;
        let command = Command {
            timestamp_ms: 1_000 + self.log_index + self.elapsed_ms,
            op,
        };
        if let Some(batch) = command.batch() {
            self.batches.insert(self.log_index, batch.clone());
        }
        let response = self.state.apply(self.log_index, &command);
        self.state.check_invariants().expect("invariants hold");
        response
    }

    fn create_topic(&mut self, name: &str, partitions: u32) {
        let op = Op::CreateTopic {
            name: name.into(),
            partitions,
            config: TopicConfig::default(),
        };
        assert_eq!(self.apply(op), Response::TopicCreated);
    }

    fn init_producer(&mut self, name: Option<&str>) -> (u64, u32) {
        match self.apply(Op::InitProducer {
            name: name.map(str::to_owned),
        }) {
            Response::ProducerInit { id, epoch } => (id, epoch),
            other => panic!("unexpected {other:?}"),
        }
    }

    fn publish(&mut self, events: &[Event]) -> Vec<EventOutcome> {
        match self.apply(Op::Publish(EventBatch::encode(events).unwrap())) {
            Response::Published(outcomes) => outcomes,
            other => panic!("unexpected {other:?}"),
        }
    }

    fn join(&mut self, group: &str, member: &str, topics: &[&str]) -> (u64, Vec<(String, u32)>) {
        let op = Op::JoinGroup {
            group: group.into(),
            member: member.into(),
            topics: topics.iter().map(|t| (*t).to_owned()).collect(),
        };
        match self.apply(op) {
            Response::Joined {
                generation,
                assignment,
            } => (generation, assignment),
            other => panic!("unexpected {other:?}"),
        }
    }

    fn transaction(
        &mut self,
        events: &[Event],
        commit: OffsetCommit,
    ) -> Result<Vec<EventOutcome>, TxnError> {
        let op = Op::Transaction {
            events: EventBatch::encode(events).unwrap(),
            commit,
        };
        match self.apply(op) {
            Response::Transaction(result) => result,
            other => panic!("unexpected {other:?}"),
        }
    }

    /// The event at an offset, found through `locate` and the log.
    fn read(&self, topic: &str, partition: u32, offset: u64) -> Option<Event> {
        let location = self.state.locate(topic, partition, offset)?;
        let batch = &self.batches[&location.log_index];
        Some(location.select(topic, partition, batch)?.to_event())
    }

    /// Every retained event of a partition, through `runs_from`.
    fn read_all(&self, topic: &str, partition: u32) -> Vec<(u64, Event)> {
        let (first, _) = self.state.partition_range(topic, partition).unwrap();
        self.state
            .runs_from(topic, partition, first)
            .flat_map(|run| {
                let batch = &self.batches[&run.log_index()];
                run.select(topic, partition, batch)
                    .map(|(offset, view)| (offset, view.to_event()))
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

fn event(topic: &str, partition: u32, id: u64, epoch: u32, sequence: u64) -> Event {
    Event {
        topic: topic.into(),
        payload: Bytes::from(format!("{id}/{epoch}/{sequence}")),
        producer: ProducerStamp {
            id,
            epoch,
            sequence,
        },
        partition,
        ..Event::default()
    }
}

fn appended(partition: u32, offset: u64) -> EventOutcome {
    EventOutcome::Appended { partition, offset }
}

fn commit(
    group: &str,
    member: &str,
    generation: u64,
    offsets: &[(&str, u32, u64)],
) -> OffsetCommit {
    OffsetCommit {
        group: group.into(),
        member: member.into(),
        generation,
        offsets: offsets
            .iter()
            .map(|&(t, p, o)| (t.to_owned(), p, o))
            .collect(),
    }
}

/// A node with topic `t` (2 partitions), topic `out` (1 partition) and one
/// anonymous producer.
fn setup() -> (Node, u64) {
    let mut node = Node::default();
    node.create_topic("t", 2);
    node.create_topic("out", 1);
    let (id, epoch) = node.init_producer(None);
    assert_eq!(epoch, 0);
    (node, id)
}

#[test]
fn duplicate_returns_the_original_offset_and_does_not_append() {
    let (mut node, id) = setup();
    let first = [event("t", 0, id, 0, 0), event("t", 0, id, 0, 1)];
    assert_eq!(node.publish(&first), [appended(0, 0), appended(0, 1)]);
    let retry = [
        event("t", 0, id, 0, 1),
        event("t", 0, id, 0, 0),
        event("t", 0, id, 0, 2),
    ];
    assert_eq!(
        node.publish(&retry),
        [
            EventOutcome::Duplicate {
                partition: 0,
                offset: 1
            },
            EventOutcome::Duplicate {
                partition: 0,
                offset: 0
            },
            appended(0, 2),
        ]
    );
    assert_eq!(node.state.partition_range("t", 0), Some((0, 3)));
    let sequences: Vec<u64> = node
        .read_all("t", 0)
        .iter()
        .map(|(_, e)| e.producer.sequence)
        .collect();
    assert_eq!(sequences, [0, 1, 2]);
}

#[test]
fn sequence_gap_is_rejected_and_not_appended() {
    let (mut node, id) = setup();
    let outcomes = node.publish(&[event("t", 0, id, 0, 1)]);
    let gap = PublishError::OutOfOrderSequence {
        expected: 0,
        got: 1,
    };
    assert_eq!(outcomes, [EventOutcome::Rejected(gap)]);
    assert_eq!(node.publish(&[event("t", 0, id, 0, 0)]), [appended(0, 0)]);
    let outcomes = node.publish(&[event("t", 0, id, 0, 5), event("t", 0, id, 0, 1)]);
    let gap = PublishError::OutOfOrderSequence {
        expected: 1,
        got: 5,
    };
    assert_eq!(outcomes, [EventOutcome::Rejected(gap), appended(0, 1)]);
    assert_eq!(node.state.partition_range("t", 0), Some((0, 2)));
}

#[test]
fn stale_epoch_is_fenced() {
    let mut node = Node::default();
    node.create_topic("t", 1);
    let (id, epoch) = node.init_producer(Some("settlement"));
    assert_eq!(epoch, 0);
    assert_eq!(node.publish(&[event("t", 0, id, 0, 0)]), [appended(0, 0)]);
    assert_eq!(node.init_producer(Some("settlement")), (id, 1));
    assert_eq!(node.state.producer_id("settlement"), Some(id));
    let fenced = PublishError::ProducerFenced {
        id,
        current: 1,
        got: 0,
    };
    assert_eq!(
        node.publish(&[event("t", 0, id, 0, 1)]),
        [EventOutcome::Rejected(fenced)]
    );
    let future = PublishError::UnknownEpoch {
        id,
        current: 1,
        got: 2,
    };
    assert_eq!(
        node.publish(&[event("t", 0, id, 2, 0)]),
        [EventOutcome::Rejected(future)]
    );
    // The new epoch numbers its events from 0 again.
    assert_eq!(node.publish(&[event("t", 0, id, 1, 0)]), [appended(0, 1)]);
    assert_eq!(node.state.producer(id).unwrap().epoch, 1);
}

#[test]
fn unknown_producer_topic_and_partition_are_rejected() {
    let (mut node, id) = setup();
    let outcomes = node.publish(&[
        event("t", 0, id + 1, 0, 0),
        event("nope", 0, id, 0, 0),
        event("t", 2, id, 0, 0),
        event("t", 1, id, 0, 0),
    ]);
    assert_eq!(
        outcomes,
        [
            EventOutcome::Rejected(PublishError::UnknownProducer { id: id + 1 }),
            EventOutcome::Rejected(PublishError::UnknownTopic {
                topic: "nope".into()
            }),
            EventOutcome::Rejected(PublishError::UnknownPartition {
                topic: "t".into(),
                partition: 2,
                partitions: 2
            }),
            appended(1, 0),
        ]
    );
    assert_eq!(node.read("t", 1, 0), Some(event("t", 1, id, 0, 0)));
}

#[test]
fn offsets_are_fifo_and_contiguous_per_partition() {
    let (mut node, a) = setup();
    let (b, _) = node.init_producer(None);
    let outcomes = node.publish(&[
        event("t", 0, a, 0, 0),
        event("t", 1, a, 0, 0),
        event("t", 0, b, 0, 0),
        event("t", 0, a, 0, 1),
    ]);
    assert_eq!(
        outcomes,
        [
            appended(0, 0),
            appended(1, 0),
            appended(0, 1),
            appended(0, 2)
        ]
    );
    assert_eq!(node.publish(&[event("t", 0, b, 0, 1)]), [appended(0, 3)]);
    let order: Vec<(u64, u64, u64)> = node
        .read_all("t", 0)
        .into_iter()
        .map(|(offset, e)| (offset, e.producer.id, e.producer.sequence))
        .collect();
    assert_eq!(order, [(0, a, 0), (1, b, 0), (2, a, 1), (3, b, 1)]);
}

#[test]
fn duplicates_older_than_the_window_are_refused() {
    let (mut node, id) = setup();
    let count = DEDUPE_WINDOW + 10;
    let events: Vec<Event> = (0..count).map(|s| event("t", 0, id, 0, s)).collect();
    node.publish(&events);
    let too_old = PublishError::DuplicateTooOld {
        sequence: 3,
        window_first: 10,
    };
    assert_eq!(
        node.publish(&[event("t", 0, id, 0, 3)]),
        [EventOutcome::Rejected(too_old)]
    );
    let retry = node.publish(&[event("t", 0, id, 0, 10), event("t", 0, id, 0, count - 1)]);
    assert_eq!(
        retry,
        [
            EventOutcome::Duplicate {
                partition: 0,
                offset: 10
            },
            EventOutcome::Duplicate {
                partition: 0,
                offset: count - 1
            },
        ]
    );
    assert_eq!(node.state.partition_range("t", 0), Some((0, count)));
}

#[test]
fn locate_finds_every_event_among_duplicates_and_other_partitions() {
    let (mut node, a) = setup();
    let (b, _) = node.init_producer(None);
    node.publish(&[event("t", 0, a, 0, 0), event("t", 0, a, 0, 1)]);
    // Duplicates (a/0, a/1), a gap (b/5) and another partition interleave
    // with the appended events.
    node.publish(&[
        event("t", 0, a, 0, 0),
        event("t", 1, a, 0, 0),
        event("t", 0, b, 0, 0),
        event("t", 0, a, 0, 1),
        event("t", 0, b, 0, 5),
        event("t", 0, a, 0, 2),
        event("out", 0, a, 0, 0),
        event("t", 0, a, 0, 2),
    ]);
    let expected = [(a, 0), (a, 1), (b, 0), (a, 2)];
    for (offset, &(id, sequence)) in (0..).zip(&expected) {
        let found = node.read("t", 0, offset).expect("retained");
        assert_eq!(found, event("t", 0, id, 0, sequence), "offset {offset}");
    }
    assert_eq!(node.read("t", 0, 4), None);
    assert_eq!(node.read("t", 1, 0), Some(event("t", 1, a, 0, 0)));
    let all: Vec<(u64, Event)> = node.read_all("t", 0);
    assert_eq!(all.len(), 4);
    for (offset, found) in all {
        assert_eq!(Some(found), node.read("t", 0, offset));
    }
    let location = node.state.locate("t", 0, 3).unwrap();
    // Offset 3 is a/2: the fifth event of t/0 in the entry at index 6.
    assert_eq!(
        location,
        Location {
            log_index: 6,
            position: 4
        }
    );
}

#[test]
fn topics_are_validated_and_creation_is_idempotent() {
    let mut node = Node::default();
    node.create_topic("orders", 3);
    node.create_topic("orders", 3);
    let conflict = node.apply(Op::CreateTopic {
        name: "orders".into(),
        partitions: 4,
        config: TopicConfig::default(),
    });
    assert!(matches!(
        conflict,
        Response::Error(StateError::TopicExists { partitions: 3, .. })
    ));
    for (name, partitions) in [("bad name", 1), ("ok", 0), ("ok", PARTITIONS_MAX + 1)] {
        let response = node.apply(Op::CreateTopic {
            name: name.into(),
            partitions,
            config: TopicConfig::default(),
        });
        assert!(
            matches!(response, Response::Error(_)),
            "{name} {partitions}"
        );
    }
    let names: Vec<&str> = node.state.topics().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["orders"]);
    assert_eq!(node.state.topic("orders").unwrap().partitions, 3);
}

#[test]
fn silent_members_are_removed_by_the_heartbeats_of_others() {
    let (mut node, id) = setup();
    node.publish(&[event("t", 0, id, 0, 0), event("t", 1, id, 0, 0)]);
    node.join("g", "m1", &["t"]);
    let (generation, _) = node.join("g", "m2", &["t"]);
    assert_eq!(generation, 2);
    let heartbeat = |member: &str| Op::Heartbeat {
        group: "g".into(),
        member: member.into(),
    };
    // Within the session timeout, a heartbeat changes nothing.
    node.elapsed_ms += SESSION_TIMEOUT_MS - 10;
    let alive = node.apply(heartbeat("m2"));
    let Response::Alive {
        generation,
        assignment,
    } = alive
    else {
        panic!("unexpected {alive:?}");
    };
    assert_eq!((generation, assignment.len()), (2, 1));
    // 20 ms later m1 has been silent for longer than the timeout; m2 was
    // heard from just now, so m2's heartbeat removes m1 and takes it all.
    node.elapsed_ms += 20;
    let Response::Alive {
        generation,
        assignment,
    } = node.apply(heartbeat("m2"))
    else {
        panic!("m2 is alive");
    };
    assert_eq!(generation, 3);
    assert_eq!(assignment, vec![("t".to_owned(), 0), ("t".to_owned(), 1)]);
    let group = node.state.group("g").unwrap();
    assert!(!group.members.contains_key("m1"));
    // The removed member is fenced: its heartbeat and its commit fail.
    assert!(matches!(
        node.apply(heartbeat("m1")),
        Response::Error(StateError::UnknownMember { .. })
    ));
    let zombie = commit("g", "m1", 3, &[("t", 0, 1)]);
    assert!(matches!(
        node.apply(Op::CommitOffsets(zombie)),
        Response::Error(StateError::Commit(CommitError::UnknownMember { .. }))
    ));
    // A commit counts as a sign of life: m2 committing keeps it in.
    node.elapsed_ms += SESSION_TIMEOUT_MS;
    let ok = commit("g", "m2", 3, &[("t", 0, 1)]);
    assert_eq!(node.apply(Op::CommitOffsets(ok)), Response::Committed);
    node.elapsed_ms += SESSION_TIMEOUT_MS / 2;
    let (generation, _) = node.join("g", "m1", &["t"]);
    assert_eq!(generation, 4, "m2 stays: it committed within the timeout");
    assert_eq!(node.state.group("g").unwrap().members.len(), 2);
}

#[test]
fn commits_are_fenced_by_generation() {
    let (mut node, id) = setup();
    node.publish(&[event("t", 0, id, 0, 0), event("t", 1, id, 0, 0)]);
    let (generation, assignment) = node.join("g", "m1", &["t"]);
    assert_eq!((generation, assignment.len()), (1, 2));
    let ok = commit("g", "m1", 1, &[("t", 0, 1)]);
    assert_eq!(node.apply(Op::CommitOffsets(ok)), Response::Committed);
    assert_eq!(node.state.committed("g", "t", 0), Some(1));
    let (generation, _) = node.join("g", "m2", &["t"]);
    assert_eq!(generation, 2);
    let zombie = commit("g", "m1", 1, &[("t", 0, 0)]);
    let stale = CommitError::StaleGeneration { current: 2, got: 1 };
    assert_eq!(
        node.apply(Op::CommitOffsets(zombie)),
        Response::Error(StateError::Commit(stale))
    );
    assert_eq!(node.state.committed("g", "t", 0), Some(1));
    // At generation 2, m1 owns partition 0 and m2 partition 1.
    let current = commit("g", "m1", 2, &[("t", 0, 0)]);
    assert_eq!(node.apply(Op::CommitOffsets(current)), Response::Committed);
    assert_eq!(
        node.state.committed("g", "t", 0),
        Some(0),
        "seeking back is allowed"
    );
}

#[test]
fn commits_from_non_members_and_for_foreign_partitions_are_rejected() {
    let (mut node, id) = setup();
    node.publish(&[event("t", 0, id, 0, 0)]);
    node.join("g", "m1", &["t"]);
    node.join("g", "m2", &["t"]);
    let unknown = commit("g", "ghost", 2, &[("t", 0, 1)]);
    let expected = CommitError::UnknownMember {
        group: "g".into(),
        member: "ghost".into(),
    };
    assert_eq!(
        node.apply(Op::CommitOffsets(unknown)),
        Response::Error(StateError::Commit(expected))
    );
    let foreign = commit("g", "m2", 2, &[("t", 0, 1)]);
    assert!(matches!(
        node.apply(Op::CommitOffsets(foreign)),
        Response::Error(StateError::Commit(CommitError::NotAssigned { .. }))
    ));
    let beyond = commit("g", "m1", 2, &[("t", 0, 2)]);
    assert!(matches!(
        node.apply(Op::CommitOffsets(beyond)),
        Response::Error(StateError::Commit(CommitError::OffsetBeyondHead {
            head: 1,
            ..
        }))
    ));
    assert_eq!(
        node.apply(Op::LeaveGroup {
            group: "g".into(),
            member: "m1".into()
        }),
        Response::Left { generation: 3 }
    );
    let left = commit("g", "m1", 3, &[("t", 0, 1)]);
    assert!(matches!(
        node.apply(Op::CommitOffsets(left)),
        Response::Error(StateError::Commit(CommitError::UnknownMember { .. }))
    ));
    let again = node.apply(Op::LeaveGroup {
        group: "g".into(),
        member: "m1".into(),
    });
    assert!(matches!(
        again,
        Response::Error(StateError::UnknownMember { .. })
    ));
    assert_eq!(node.state.committed("g", "t", 0), None);
}

#[test]
fn assignment_is_round_robin_and_respects_subscriptions() {
    let mut node = Node::default();
    node.create_topic("a", 5);
    node.create_topic("b", 2);
    node.join("g", "m2", &["a"]);
    node.join("g", "m1", &["a", "b", "a"]);
    let (_, owned) = node.join("g", "m3", &["a"]);
    let group = node.state.group("g").unwrap();
    assert_eq!(group.members["m1"], ["a", "b"]);
    let pairs = |list: &[(&str, u32)]| -> Vec<(String, u32)> {
        list.iter().map(|&(t, p)| (t.to_owned(), p)).collect()
    };
    assert_eq!(
        group.assignment["m1"],
        pairs(&[("a", 0), ("a", 3), ("b", 0), ("b", 1)])
    );
    assert_eq!(group.assignment["m2"], pairs(&[("a", 1), ("a", 4)]));
    assert_eq!(group.assignment["m3"], pairs(&[("a", 2)]));
    assert_eq!(owned, group.assignment["m3"]);
    assert!(group.is_assigned("m1", "b", 1));
}

#[test]
fn transaction_with_an_invalid_commit_appends_nothing() {
    let (mut node, id) = setup();
    node.publish(&[event("t", 0, id, 0, 0)]);
    node.join("g", "m", &["t"]);
    let outputs = [event("out", 0, id, 0, 0)];
    let stale = commit("g", "m", 0, &[("t", 0, 1)]);
    let result = node.transaction(&outputs, stale);
    let expected = TxnError::Commit(CommitError::StaleGeneration { current: 1, got: 0 });
    assert_eq!(result, Err(expected));
    assert_eq!(node.state.partition_range("out", 0), Some((0, 0)));
    assert_eq!(node.state.sequence_next(id, "out", 0), Some(0));
}

#[test]
fn transaction_with_an_invalid_event_commits_nothing() {
    let (mut node, id) = setup();
    node.publish(&[event("t", 0, id, 0, 0)]);
    node.join("g", "m", &["t"]);
    let outputs = [event("out", 0, id, 0, 0), event("out", 0, id, 0, 2)];
    let result = node.transaction(&outputs, commit("g", "m", 1, &[("t", 0, 1)]));
    let gap = PublishError::OutOfOrderSequence {
        expected: 1,
        got: 2,
    };
    assert_eq!(
        result,
        Err(TxnError::Event {
            index: 1,
            error: gap
        })
    );
    assert_eq!(node.state.committed("g", "t", 0), None);
    assert_eq!(node.state.partition_range("out", 0), Some((0, 0)));
}

#[test]
fn transaction_applies_everything_and_a_retry_returns_the_original_offsets() {
    let (mut node, id) = setup();
    node.publish(&[event("t", 0, id, 0, 0), event("t", 0, id, 0, 1)]);
    node.join("g", "m", &["t"]);
    let outputs = [event("out", 0, id, 0, 0), event("out", 0, id, 0, 1)];
    let first = commit("g", "m", 1, &[("t", 0, 1)]);
    let result = node.transaction(&outputs, first.clone());
    assert_eq!(result, Ok(vec![appended(0, 0), appended(0, 1)]));
    assert_eq!(node.state.committed("g", "t", 0), Some(1));
    // The consumer moves on, then the transaction's retry arrives (say,
    // after a leader change): same offsets, nothing re-applied, and the
    // later commit is not undone.
    let later = commit("g", "m", 1, &[("t", 0, 2)]);
    assert_eq!(node.apply(Op::CommitOffsets(later)), Response::Committed);
    let retry = node.transaction(&outputs, first);
    let duplicate = |offset| EventOutcome::Duplicate {
        partition: 0,
        offset,
    };
    assert_eq!(retry, Ok(vec![duplicate(0), duplicate(1)]));
    assert_eq!(node.state.committed("g", "t", 0), Some(2));
    assert_eq!(node.state.partition_range("out", 0), Some((0, 2)));
}

#[test]
fn transaction_mixing_duplicates_and_new_events_is_refused() {
    let (mut node, id) = setup();
    node.join("g", "m", &["t"]);
    node.transaction(&[event("out", 0, id, 0, 0)], commit("g", "m", 1, &[]))
        .unwrap();
    let mixed = [event("out", 0, id, 0, 0), event("out", 0, id, 0, 1)];
    let result = node.transaction(&mixed, commit("g", "m", 1, &[]));
    assert_eq!(
        result,
        Err(TxnError::PartialDuplicate {
            duplicates: 1,
            new: 1
        })
    );
    let repeated = [event("out", 0, id, 0, 1), event("out", 0, id, 0, 1)];
    let result = node.transaction(&repeated, commit("g", "m", 1, &[]));
    assert_eq!(
        result,
        Err(TxnError::PartialDuplicate {
            duplicates: 1,
            new: 1
        })
    );
    assert_eq!(node.state.partition_range("out", 0), Some((0, 1)));
}

#[test]
fn retention_moves_first_offsets() {
    let (mut node, id) = setup();
    node.publish(&[event("t", 0, id, 0, 0), event("t", 1, id, 0, 0)]); // index 4
    node.publish(&[event("t", 0, id, 0, 1)]); // index 5
    node.publish(&[event("t", 0, id, 0, 2)]); // index 6
    assert_eq!(
        node.apply(Op::Retention {
            log_index_before: 5
        }),
        Response::Ok
    );
    assert_eq!(node.state.partition_range("t", 0), Some((1, 3)));
    assert_eq!(node.state.partition_range("t", 1), Some((1, 1)));
    assert_eq!(node.state.locate("t", 0, 0), None);
    assert_eq!(node.read("t", 0, 1), Some(event("t", 0, id, 0, 1)));
    // Backwards is a no-op; beyond the carrying entry is refused.
    assert_eq!(
        node.apply(Op::Retention {
            log_index_before: 2
        }),
        Response::Ok
    );
    assert_eq!(node.state.purged_before(), 5);
    let beyond = node.apply(Op::Retention {
        log_index_before: 100,
    });
    assert!(matches!(
        beyond,
        Response::Error(StateError::RetentionBeyondLog { .. })
    ));
    // Duplicates of purged events still get their original offsets.
    assert_eq!(
        node.publish(&[event("t", 0, id, 0, 0)]),
        [EventOutcome::Duplicate {
            partition: 0,
            offset: 0
        }]
    );
}

#[test]
fn min_needed_log_index_follows_committed_offsets() {
    let (mut node, id) = setup();
    node.publish(&[event("t", 0, id, 0, 0)]); // index 4
    node.publish(&[event("t", 0, id, 0, 1)]); // index 5
    assert_eq!(node.state.min_needed_log_index(), None);
    node.join("g", "m", &["t"]);
    let at = |offset| Op::CommitOffsets(commit("g", "m", 1, &[("t", 0, offset)]));
    node.apply(at(1));
    assert_eq!(node.state.min_needed_log_index(), Some(5));
    node.apply(at(2));
    assert_eq!(node.state.min_needed_log_index(), None);
    node.apply(at(0));
    assert_eq!(node.state.min_needed_log_index(), Some(4));
    node.apply(Op::Retention {
        log_index_before: 5,
    });
    assert_eq!(node.state.min_needed_log_index(), Some(5));
}

/// A script touching every operation, for the snapshot tests.
fn script(id: u64) -> Vec<Op> {
    let batch = |events: &[Event]| EventBatch::encode(events).unwrap();
    vec![
        Op::Publish(batch(&[event("t", 0, id, 0, 0), event("t", 1, id, 0, 0)])),
        Op::JoinGroup {
            group: "g".into(),
            member: "m".into(),
            topics: vec!["t".into()],
        },
        Op::CommitOffsets(commit("g", "m", 1, &[("t", 0, 1)])),
        Op::InitProducer {
            name: Some("p".into()),
        },
        Op::Publish(batch(&[event("t", 0, id, 0, 1), event("t", 0, id, 0, 0)])),
        Op::Retention {
            log_index_before: 5,
        },
        Op::Transaction {
            events: batch(&[event("out", 0, id, 0, 0)]),
            commit: commit("g", "m", 1, &[("t", 1, 1)]),
        },
        Op::Noop,
        Op::Publish(batch(&[event("t", 0, id, 0, 2), event("t", 0, id, 0, 1)])),
        Op::Transaction {
            events: batch(&[event("out", 0, id, 0, 0)]),
            commit: commit("g", "m", 1, &[("t", 1, 0)]),
        },
        Op::LeaveGroup {
            group: "g".into(),
            member: "m".into(),
        },
        Op::InitProducer {
            name: Some("p".into()),
        },
    ]
}

#[test]
fn a_restored_snapshot_applies_like_the_original() {
    let script_len = {
        let (_, id) = setup();
        script(id).len()
    };
    for split in 0..=script_len {
        let (mut original, id) = setup();
        let ops = script(id);
        for op in &ops[..split] {
            original.apply(op.clone());
        }
        let snapshot = original.state.snapshot();
        let mut restored = Node {
            state: State::restore(&snapshot).unwrap(),
            log_index: original.log_index,
            elapsed_ms: original.elapsed_ms,
            batches: original.batches.clone(),
        };
        assert_eq!(restored.state, original.state);
        for op in &ops[split..] {
            assert_eq!(
                restored.apply(op.clone()),
                original.apply(op.clone()),
                "split {split}"
            );
        }
        assert_eq!(restored.state.snapshot(), original.state.snapshot());
    }
}

#[test]
fn damaged_snapshots_are_refused() {
    let (mut node, id) = setup();
    for op in script(id) {
        node.apply(op);
    }
    let snapshot = node.state.snapshot();
    for at in 0..snapshot.len() {
        let mut damaged = snapshot.clone();
        damaged[at] ^= 0x10;
        assert!(State::restore(&damaged).is_err(), "flip at {at}");
        assert!(State::restore(&snapshot[..at]).is_err(), "prefix {at}");
    }
}

/// Wraps a body in a snapshot header with a correct checksum, so damage
/// reaches the decoder and the invariant check behind it.
fn seal(body: &[u8]) -> Vec<u8> {
    let mut bytes = vec![SNAPSHOT_VERSION, 0, 0, 0, 0];
    bytes.extend_from_slice(body);
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&bytes[..1]);
    hasher.update(&bytes[5..]);
    let checksum = hasher.finalize();
    bytes[1..5].copy_from_slice(&checksum.to_le_bytes());
    bytes
}

proptest::proptest! {
    #[test]
    fn damaged_snapshot_bodies_never_panic(
        edits in proptest::collection::vec((proptest::prelude::any::<proptest::sample::Index>(), proptest::prelude::any::<u8>()), 1..6),
    ) {
        let (mut node, id) = setup();
        for op in script(id) {
            node.apply(op);
        }
        let mut body = node.state.snapshot()[5..].to_vec();
        for (at, value) in edits {
            let at = at.index(body.len());
            body[at] = value;
        }
        if let Ok(state) = State::restore(&seal(&body)) {
            state.check_invariants().unwrap();
        }
    }
}

#[test]
fn inconsistent_snapshots_are_refused() {
    let (mut node, id) = setup();
    node.publish(&[event("t", 0, id, 0, 0)]);
    let mut broken = node.state.clone();
    broken.purged_before = 100;
    let bytes = seal(&broken.snapshot()[5..]);
    assert!(matches!(
        State::restore(&bytes),
        Err(SnapshotError::Inconsistent { .. })
    ));
}

#[test]
fn producers_expire_only_when_the_table_is_full_and_they_are_idle() {
    let mut state = State::new();
    let mut index = 0;
    let mut init = |state: &mut State, timestamp_ms: u64, name: Option<&str>| {
        index += 1;
        let op = Op::InitProducer {
            name: name.map(str::to_owned),
        };
        state.apply(index, &Command { timestamp_ms, op })
    };
    assert_eq!(
        init(&mut state, 0, Some("old")),
        Response::ProducerInit { id: 1, epoch: 0 }
    );
    for _ in 1..PRODUCERS_MAX {
        init(&mut state, 10, None);
    }
    let full = init(&mut state, PRODUCER_IDLE_MS_MIN - 1, None);
    assert_eq!(full, Response::Error(StateError::TooManyProducers));
    let id = PRODUCERS_MAX as u64 + 1;
    let room = init(&mut state, PRODUCER_IDLE_MS_MIN + 10, None);
    assert_eq!(room, Response::ProducerInit { id, epoch: 0 });
    assert_eq!(state.producer(1), None);
    assert_eq!(state.producer_id("old"), None);
    state.check_invariants().unwrap();
}

#[test]
#[should_panic(expected = "applied after")]
fn log_indexes_must_increase() {
    let mut state = State::new();
    let noop = Command {
        timestamp_ms: 0,
        op: Op::Noop,
    };
    state.apply(3, &noop);
    state.apply(3, &noop);
}

#[test]
fn commands_serialize_and_display() {
    let (_, id) = setup();
    for op in script(id) {
        let command = Command {
            timestamp_ms: 42,
            op,
        };
        let bytes = postcard::to_allocvec(&command).unwrap();
        assert_eq!(postcard::from_bytes::<Command>(&bytes).unwrap(), command);
        assert!(!command.to_string().is_empty());
    }
    let publish = Command {
        timestamp_ms: 0,
        op: Op::Publish(EventBatch::encode(&[event("t", 0, id, 0, 0)]).unwrap()),
    };
    assert_eq!(publish.to_string(), "publish 1 events");
    let response = Response::Transaction(Err(TxnError::PartialDuplicate {
        duplicates: 1,
        new: 2,
    }));
    let bytes = postcard::to_allocvec(&response).unwrap();
    assert_eq!(postcard::from_bytes::<Response>(&bytes).unwrap(), response);
}

#[test]
fn alter_topic_changes_retention_and_snapshots_keep_it() {
    let mut node = Node::default();
    node.create_topic("t", 2);
    assert_eq!(
        node.state.topic("t").unwrap().config,
        TopicConfig {
            retention_ms: Some(RETENTION_MS_DEFAULT),
            retention_bytes: None,
        }
    );
    let alter = |retention_ms, retention_bytes| Op::AlterTopic {
        name: "t".into(),
        retention_ms,
        retention_bytes,
    };
    // A limit not named stays.
    let config = TopicConfig {
        retention_ms: Some(RETENTION_MS_DEFAULT),
        retention_bytes: Some(4096),
    };
    assert_eq!(
        node.apply(alter(None, Some(Some(4096)))),
        Response::TopicAltered { config }
    );
    let config = TopicConfig {
        retention_ms: Some(60_000),
        retention_bytes: Some(4096),
    };
    assert_eq!(
        node.apply(alter(Some(Some(60_000)), None)),
        Response::TopicAltered { config }
    );
    assert_eq!(node.state.topic("t").unwrap().config, config);
    // Creating it again as it now is stays a no-op; as it was is refused.
    let create = |config| Op::CreateTopic {
        name: "t".into(),
        partitions: 2,
        config,
    };
    assert_eq!(node.apply(create(config)), Response::TopicCreated);
    assert!(matches!(
        node.apply(create(TopicConfig::default())),
        Response::Error(StateError::TopicExists { .. })
    ));
    // The altered policy is part of the snapshot.
    let restored = State::restore(&node.state.snapshot()).unwrap();
    assert_eq!(restored.topic("t").unwrap().config, config);
    assert_eq!(restored, node.state);
    // Unlimited, and an unknown topic.
    assert_eq!(
        node.apply(alter(Some(None), Some(None))),
        Response::TopicAltered {
            config: TopicConfig::UNLIMITED
        }
    );
    let unknown = node.apply(Op::AlterTopic {
        name: "nope".into(),
        retention_ms: Some(Some(1)),
        retention_bytes: None,
    });
    assert_eq!(
        unknown,
        Response::Error(StateError::UnknownTopic {
            topic: "nope".into()
        })
    );
}

/// The log holds commands by their operation's position in `Op`: a new
/// operation goes last, and those already written decode as before.
#[test]
fn operations_keep_their_encoding_tags() {
    let tag = |op: Op| postcard::to_allocvec(&op).unwrap()[0];
    assert_eq!(tag(Op::InitProducer { name: None }), 1);
    assert_eq!(
        tag(Op::Retention {
            log_index_before: 1
        }),
        7
    );
    assert_eq!(tag(Op::Noop), 8);
    assert_eq!(
        tag(Op::AlterTopic {
            name: "t".into(),
            retention_ms: None,
            retention_bytes: None,
        }),
        12
    );
}

mod security {
    use crate::security::{Principal, Rule, SecurityOp};
    use crate::state::{AdminAction, Command, Op, Response, State, StateError};

    fn rule(principal: &str, resource: &str, operation: &str, effect: &str) -> Rule {
        Rule::parse(principal, resource, operation, effect).unwrap()
    }

    #[test]
    fn admin_entries_apply_their_action_and_refuse_other_operations() {
        let mut state = State::new();
        let admin = |action| Command {
            timestamp_ms: 1,
            op: Op::Admin {
                principal: Principal::user("root"),
                action,
            },
        };
        let add = admin(AdminAction::Security(SecurityOp::AddRule(rule(
            "alice", "cluster", "admin", "allow",
        ))));
        assert_eq!(state.apply(1, &add), Response::Ok);
        assert_eq!(state.security().acls().len(), 1);
        let create = admin(AdminAction::Apply(Box::new(Op::CreateTopic {
            name: "orders".into(),
            partitions: 2,
            config: Default::default(),
        })));
        assert_eq!(state.apply(2, &create), Response::TopicCreated);
        assert_eq!(state.topics().count(), 1);
        let smuggled = admin(AdminAction::Apply(Box::new(Op::Noop)));
        assert_eq!(
            state.apply(3, &smuggled),
            Response::Error(StateError::NotAdmin)
        );
        assert_eq!(
            add.to_string(),
            "User:root: add rule User:alice cluster admin allow"
        );
    }

    #[test]
    fn security_survives_a_snapshot_and_a_version_2_snapshot_restores_without_it() {
        let mut state = State::new();
        let add = Command {
            timestamp_ms: 1,
            op: Op::Admin {
                principal: Principal::user("root"),
                action: AdminAction::Security(SecurityOp::AddRule(rule(
                    "*", "topic:*", "consume", "allow",
                ))),
            },
        };
        state.apply(1, &add);
        let restored = State::restore(&state.snapshot()).unwrap();
        assert_eq!(restored.security(), state.security());
        assert_eq!(restored.security().acls().len(), 1);

        // A version 2 snapshot: the state alone.
        let mut old = vec![2, 0, 0, 0, 0];
        old = postcard::to_extend(&State::new(), old).unwrap();
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&old[..1]);
        hasher.update(&old[5..]);
        let checksum = hasher.finalize();
        old[1..5].copy_from_slice(&checksum.to_le_bytes());
        let restored = State::restore(&old).unwrap();
        assert!(restored.security().acls().is_empty());
    }
}

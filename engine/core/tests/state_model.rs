//! Idempotent publishing against a model.
//!
//! Several producers create batches of new events, deliver them now or
//! later, deliver them again (retries), merge old and new batches, bump a
//! producer's epoch, and the node reboots from snapshots and applies
//! retention, all in random interleavings. The model predicts every
//! outcome; at the end the partitions, rebuilt from the state's index and
//! the batches kept as "the log", must hold each acknowledged event exactly
//! once, each producer's events in sequence order, at contiguous offsets.

use std::collections::BTreeMap;

use bytes::Bytes;
use proptest::prelude::*;
use proptest::sample::Index;

use sluice_model::event::{Event, EventBatch, ProducerStamp};
use sluice_model::state::{Command, EventOutcome, Op, PublishError, Response, State, TopicConfig};

const PRODUCERS: usize = 3;
/// (topic, partition) targets; topic `a` has 3 partitions, `b` one.
const SLOTS: [(&str, u32); 4] = [("a", 0), ("a", 1), ("a", 2), ("b", 0)];

#[derive(Debug, Clone)]
enum Step {
    /// A producer numbers new events for these slots; the batch is
    /// delivered now, or kept back (a send that is still in flight).
    Create {
        producer: usize,
        slots: Vec<usize>,
        deliver: bool,
    },
    /// Delivers a created batch (again, if it was delivered before).
    Deliver(Index),
    /// Delivers two created batches merged into one entry.
    DeliverTwo(Index, Index),
    /// Re-initialises producer 0 by name: its epoch moves on.
    Bump,
    /// Restarts the node from a snapshot of its state.
    Reboot,
    /// Retention up to some log index at or before this entry.
    Retain(Index),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0..PRODUCERS, prop::collection::vec(0..SLOTS.len(), 1..5), any::<bool>())
            .prop_map(|(producer, slots, deliver)| Step::Create { producer, slots, deliver }),
        3 => any::<Index>().prop_map(Step::Deliver),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Step::DeliverTwo(a, b)),
        1 => Just(Step::Bump),
        1 => Just(Step::Reboot),
        1 => any::<Index>().prop_map(Step::Retain),
    ]
}

/// An event's identity: (producer index, epoch, sequence).
type Identity = (usize, u32, u64);

#[derive(Default)]
struct Model {
    epochs: [u32; PRODUCERS],
    /// Next sequence to hand out, per (producer, slot), current epoch.
    issued: BTreeMap<(usize, usize), u64>,
    /// Next sequence the state machine accepts, per (producer, slot).
    accepted: BTreeMap<(usize, usize), u64>,
    /// Offset of each appended event, per slot.
    offsets: BTreeMap<(usize, Identity), u64>,
    /// Each slot's events in offset order, with the log index holding them.
    partitions: [Vec<(Identity, u64)>; SLOTS.len()],
}

impl Model {
    /// The outcome the state machine must give one event.
    fn predict(
        &mut self,
        log_index: u64,
        slot: usize,
        identity: Identity,
        id: u64,
    ) -> EventOutcome {
        let (producer, epoch, sequence) = identity;
        let partition = SLOTS[slot].1;
        let current = self.epochs[producer];
        if epoch < current {
            return EventOutcome::Rejected(PublishError::ProducerFenced {
                id,
                current,
                got: epoch,
            });
        }
        let expected = self.accepted.entry((producer, slot)).or_default();
        if sequence > *expected {
            return EventOutcome::Rejected(PublishError::OutOfOrderSequence {
                expected: *expected,
                got: sequence,
            });
        }
        if sequence < *expected {
            let offset = self.offsets[&(slot, identity)];
            return EventOutcome::Duplicate { partition, offset };
        }
        *expected += 1;
        let offset = self.partitions[slot].len() as u64;
        self.partitions[slot].push((identity, log_index));
        self.offsets.insert((slot, identity), offset);
        EventOutcome::Appended { partition, offset }
    }
}

struct Harness {
    state: State,
    log_index: u64,
    /// The log: every entry's batch, by index.
    log: BTreeMap<u64, EventBatch>,
    ids: [u64; PRODUCERS],
    /// Batches created so far: (slot, identity) per event.
    created: Vec<Vec<(usize, Identity)>>,
    model: Model,
}

impl Harness {
    fn new() -> Harness {
        let mut harness = Harness {
            state: State::new(),
            log_index: 0,
            log: BTreeMap::new(),
            ids: [0; PRODUCERS],
            created: Vec::new(),
            model: Model::default(),
        };
        for (name, partitions) in [("a", 3), ("b", 1)] {
            let config = TopicConfig::default();
            let op = Op::CreateTopic {
                name: name.into(),
                partitions,
                config,
            };
            assert_eq!(harness.apply(op), Response::TopicCreated);
        }
        for producer in 0..PRODUCERS {
            let name = (producer == 0).then(|| "p0".to_owned());
            harness.ids[producer] = harness.init(name);
        }
        harness
    }

    fn apply(&mut self, op: Op) -> Response {
        self.log_index += 1;
        let command = Command {
            timestamp_ms: self.log_index,
            op,
        };
        if let Some(batch) = command.batch() {
            self.log.insert(self.log_index, batch.clone());
        }
        let response = self.state.apply(self.log_index, &command);
        self.state
            .check_invariants()
            .expect("invariants hold after every step");
        response
    }

    fn init(&mut self, name: Option<String>) -> u64 {
        match self.apply(Op::InitProducer { name }) {
            Response::ProducerInit { id, .. } => id,
            other => panic!("unexpected {other:?}"),
        }
    }

    fn event(&self, slot: usize, (producer, epoch, sequence): Identity) -> Event {
        let (topic, partition) = SLOTS[slot];
        Event {
            topic: topic.into(),
            payload: Bytes::from(format!("{producer}/{epoch}/{sequence}")),
            producer: ProducerStamp {
                id: self.ids[producer],
                epoch,
                sequence,
            },
            partition,
            ..Event::default()
        }
    }

    fn deliver(&mut self, events: &[(usize, Identity)]) {
        let encoded: Vec<Event> = events.iter().map(|&(s, i)| self.event(s, i)).collect();
        let response = self.apply(Op::Publish(EventBatch::encode(&encoded).unwrap()));
        let Response::Published(outcomes) = response else {
            panic!("unexpected {response:?}");
        };
        let log_index = self.log_index;
        let predicted: Vec<EventOutcome> = events
            .iter()
            .map(|&(slot, identity)| {
                let id = self.ids[identity.0];
                self.model.predict(log_index, slot, identity, id)
            })
            .collect();
        assert_eq!(outcomes, predicted);
    }

    fn run(&mut self, step: &Step) {
        match step {
            Step::Create {
                producer,
                slots,
                deliver,
            } => {
                let epoch = self.model.epochs[*producer];
                let batch: Vec<(usize, Identity)> = slots
                    .iter()
                    .map(|&slot| {
                        let next = self.model.issued.entry((*producer, slot)).or_default();
                        *next += 1;
                        (slot, (*producer, epoch, *next - 1))
                    })
                    .collect();
                if *deliver {
                    self.deliver(&batch);
                }
                self.created.push(batch);
            }
            Step::Deliver(which) if !self.created.is_empty() => {
                let batch = self.created[which.index(self.created.len())].clone();
                self.deliver(&batch);
            }
            Step::DeliverTwo(first, second) if !self.created.is_empty() => {
                let mut batch = self.created[first.index(self.created.len())].clone();
                batch.extend(self.created[second.index(self.created.len())].clone());
                self.deliver(&batch);
            }
            Step::Deliver(_) | Step::DeliverTwo(..) => {}
            Step::Bump => {
                assert_eq!(self.init(Some("p0".into())), self.ids[0]);
                self.model.epochs[0] += 1;
                self.model.issued.retain(|&(producer, _), _| producer != 0);
                self.model
                    .accepted
                    .retain(|&(producer, _), _| producer != 0);
            }
            Step::Reboot => {
                let restored =
                    State::restore(&self.state.snapshot()).expect("own snapshot restores");
                assert_eq!(restored, self.state);
                self.state = restored;
            }
            Step::Retain(at) => {
                let log_index_before = at.index(self.log_index as usize + 2) as u64;
                assert_eq!(self.apply(Op::Retention { log_index_before }), Response::Ok);
            }
        }
    }

    /// The retained events of a slot through `locate`, then through
    /// `runs_from`; both must agree.
    fn read(&self, slot: usize) -> (u64, Vec<Identity>) {
        let (topic, partition) = SLOTS[slot];
        let (first, next) = self.state.partition_range(topic, partition).unwrap();
        let identity = |event: Event| {
            let producer = self
                .ids
                .iter()
                .position(|&id| id == event.producer.id)
                .unwrap();
            (producer, event.producer.epoch, event.producer.sequence)
        };
        let located: Vec<Identity> = (first..next)
            .map(|offset| {
                let location = self
                    .state
                    .locate(topic, partition, offset)
                    .expect("retained");
                let batch = &self.log[&location.log_index];
                identity(location.select(topic, partition, batch).unwrap().to_event())
            })
            .collect();
        let mut offset = first;
        let mut scanned = Vec::new();
        for run in self.state.runs_from(topic, partition, first) {
            for (at, view) in run.select(topic, partition, &self.log[&run.log_index()]) {
                assert_eq!(at, offset, "offsets are contiguous");
                offset += 1;
                scanned.push(identity(view.to_event()));
            }
        }
        assert_eq!(offset, next);
        assert_eq!(located, scanned);
        (first, located)
    }

    fn check(&self) {
        let purged_before = self.state.purged_before();
        for slot in 0..SLOTS.len() {
            let (first, events) = self.read(slot);
            let expected = &self.model.partitions[slot];
            let dropped = expected
                .iter()
                .take_while(|(_, index)| *index < purged_before)
                .count();
            assert_eq!(first, dropped as u64, "retention dropped whole entries");
            let kept: Vec<Identity> = expected[dropped..].iter().map(|(i, _)| *i).collect();
            assert_eq!(events, kept);
            // Exactly once and in order, per producer epoch: the model
            // says so, and so does the log itself.
            let mut seen: BTreeMap<(usize, u32), u64> = BTreeMap::new();
            for &(producer, epoch, sequence) in expected.iter().map(|(i, _)| i) {
                let next = seen.entry((producer, epoch)).or_default();
                assert_eq!(sequence, *next, "each producer's events once, in order");
                *next += 1;
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn publishes_with_retries_append_each_event_exactly_once(
        steps in prop::collection::vec(step(), 1..60),
    ) {
        let mut harness = Harness::new();
        for step in &steps {
            harness.run(step);
        }
        harness.check();
    }
}

//! The clients of a scenario and the history they record.
//!
//! - [`Recorder`]: the jepsen history, on the simulation's clock.
//! - [`run_producer`]: an idempotent producer. It publishes batches that
//!   spread over the topic's partitions and retries a batch whose outcome
//!   it does not know, unchanged (same producer id, epoch, sequences and
//!   values), on whichever node leads next, so deduplication must answer
//!   every retry of an applied batch with the original offsets. With
//!   [`ClientConfig::lost_ack_rate`] it also drops answers it did get (a
//!   response lost on its way back), so every run retries applied batches.
//! - [`run_txn_worker`]: a consume-transform-produce worker of a consumer
//!   group; it reads its partitions of the input topic from its node's
//!   applied state and publishes one output per input together with the
//!   offset commit, as one transaction. Workers "crash" and take over their
//!   own member name again, while the old incarnation lingers as a zombie
//!   with the generation it knew.
//! - [`run_plain_consumer`]: an at-least-once member of another group:
//!   polls, then commits; re-joins now and then and is delivered again
//!   what it had polled but not committed.
//!
//! Every client op goes into the history as invoke, then ok, fail or info;
//! a process with an `info` op is gone and the client continues under a
//! new process id, as the history format requires.
//!
//! All clients run as futures of the scenario's own task, joined with
//! [`join_all`]: nothing here is spawned, so the whole workload shares one
//! recorder through a `RefCell` and interleaves by the seed.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::{Duration, Instant, SystemTime};

use madsim::rand::Rng as _;
use sluice_core::io::Clock as _;
use sluice_jepsen::{CommitOp, HistoryBuilder, PollOp, SendOp, TxnOp, TxnOutput};
use sluice_model::event::{BatchBuilder, Event, EventBatch, ProducerStamp};
use sluice_model::state::{Command, EventOutcome, OffsetCommit, Op, Response};
use sluice_model::transport::NodeId;

use crate::{Proposal, SimCluster};

/// The topic producers write and workers read.
pub const TOPIC: &str = "orders";
/// The topic workers write their outputs to.
pub const TOPIC_OUT: &str = "audit";
/// Partitions of both topics.
pub const PARTITIONS: u32 = 3;
/// The consumer group of the transactional workers.
pub const GROUP: &str = "auditors";
/// The consumer group of the plain (at-least-once) consumers.
pub const GROUP_PLAIN: &str = "readers";
/// Events per published batch.
const EVENTS_PER_BATCH: u64 = 6;
/// Most attempts of one operation before the scenario gives up on
/// liveness (about 40 s of simulated retries).
const ATTEMPTS_MAX: u32 = 400;
/// Pause between two attempts of one operation.
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// Most inputs one transaction takes.
const TXN_INPUTS_MAX: usize = 4;

/// How clients behave.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// How long a client waits for one proposal.
    pub write_timeout: Duration,
    /// Probability that a producer drops an answer it got (and retries).
    pub lost_ack_rate: f64,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            write_timeout: Duration::from_secs(1),
            lost_ack_rate: 0.2,
        }
    }
}

/// The history being written, with op times on the simulation's clock.
#[derive(Debug)]
pub struct Recorder {
    history: HistoryBuilder,
    process_next: u64,
    last_tick: Instant,
    /// Acknowledgements given by a node while it was marked isolated (see
    /// [`Workload::isolated`]); a correct cluster gives none.
    pub acks_while_isolated: u64,
    /// Events the state machine rejected (recorded as `fail`); a correct
    /// cluster rejects none of this workload's events.
    pub rejected: u64,
}

impl Recorder {
    fn new() -> Recorder {
        Recorder {
            history: HistoryBuilder::new(),
            process_next: 1,
            last_tick: Instant::now(),
            acks_while_isolated: 0,
            rejected: 0,
        }
    }

    /// A fresh process id.
    fn process(&mut self) -> u64 {
        let process = self.process_next;
        self.process_next += 1;
        process
    }

    /// Moves the history's clock on by the simulated time since the last
    /// tick (the builder adds 1 ns per op on top), so op times follow the
    /// simulation and never decrease.
    fn tick(&mut self) -> &mut HistoryBuilder {
        let now = Instant::now();
        let delta = now.saturating_duration_since(self.last_tick).as_nanos();
        self.history
            .advance(u64::try_from(delta).unwrap_or(u64::MAX));
        self.last_tick = now;
        &mut self.history
    }

    /// Records a fault.
    pub fn nemesis(&mut self, action: impl Into<String>) {
        self.tick().nemesis(action);
    }

    /// The history so far.
    pub fn into_history(mut self) -> HistoryBuilder {
        self.tick();
        self.history
    }
}

/// What every client shares: the cluster, the recorder, the knobs the
/// nemesis turns.
pub struct Workload<'c> {
    /// The cluster under test.
    pub cluster: &'c SimCluster,
    /// The history.
    pub recorder: RefCell<Recorder>,
    /// Client behaviour.
    pub config: ClientConfig,
    /// Set when the safety phase ends: clients finish what they are doing
    /// and stop.
    pub stop: Cell<bool>,
    /// Clients pinned to one node (split-brain: clients in the old
    /// leader's partition), by client index.
    pub pinned: RefCell<BTreeMap<usize, NodeId>>,
    /// The node the nemesis has cut off, if any; acks it gives are counted.
    pub isolated: Cell<Option<NodeId>>,
    /// Nodes whose disk the nemesis damaged on purpose (bit rot): they may
    /// refuse to start again, and then stay down.
    pub written_off: RefCell<std::collections::BTreeSet<NodeId>>,
}

impl std::fmt::Debug for Workload<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workload").finish_non_exhaustive()
    }
}

impl<'c> Workload<'c> {
    /// A workload on `cluster`.
    pub fn new(cluster: &'c SimCluster, config: ClientConfig) -> Self {
        Workload {
            cluster,
            recorder: RefCell::new(Recorder::new()),
            config,
            stop: Cell::new(false),
            pinned: RefCell::new(BTreeMap::new()),
            isolated: Cell::new(None),
            written_off: RefCell::default(),
        }
    }

    /// The node client `client` should talk to now: its pinned node, the
    /// agreed leader, or (no leader agreed) a node picked by the seed.
    async fn target(&self, client: usize) -> NodeId {
        if let Some(&node) = self.pinned.borrow().get(&client) {
            return node;
        }
        match self.cluster.leader().await {
            Some(leader) => leader,
            None => {
                let ids = self.cluster.ids();
                ids[madsim::rand::thread_rng().gen_range(0..ids.len())]
            }
        }
    }

    /// Proposes `op` through `node`, stamped with that node's wall clock
    /// (the leader's time, as the bus stamps it).
    async fn propose(&self, node: NodeId, op: Op) -> Proposal {
        let wall = self.cluster.clock(node).wall();
        let timestamp_ms = wall
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |since| since.as_millis() as u64);
        let command = Command { timestamp_ms, op };
        self.cluster
            .propose(node, command, self.config.write_timeout)
            .await
    }

    /// Proposes `op` until some leader applies it; for ops whose retry is
    /// harmless and which the history does not record.
    pub async fn write_until_done(&self, op: Op) -> Response {
        for _ in 0..ATTEMPTS_MAX {
            if let Some(leader) = self.cluster.leader().await
                && let Proposal::Done(response) = self.propose(leader, op.clone()).await
            {
                return response;
            }
            madsim::time::sleep(RETRY_PAUSE).await;
        }
        panic!("no leader applied {op:?} in {ATTEMPTS_MAX} attempts");
    }

    fn note_ack(&self, node: NodeId) {
        if self.isolated.get() == Some(node) {
            self.recorder.borrow_mut().acks_while_isolated += 1;
        }
    }
}

/// One idempotent producer's identity and next sequence per partition.
struct Producer {
    stamp: ProducerStamp,
    sequences: [u64; PARTITIONS as usize],
}

impl Producer {
    fn value(&self, partition: u32, sequence: u64) -> String {
        format!("p{}-{partition}-{sequence}", self.stamp.id)
    }

    fn send_op(&self, partition: u32, sequence: u64) -> SendOp {
        SendOp::new(TOPIC, self.value(partition, sequence)).producer(
            self.stamp.id,
            u64::from(self.stamp.epoch),
            sequence,
        )
    }

    /// The next batch, and each event's (partition, sequence).
    fn batch(&mut self) -> (EventBatch, Vec<(u32, u64)>) {
        let mut builder = BatchBuilder::new();
        let mut slots = Vec::new();
        let first = madsim::rand::thread_rng().gen_range(0..PARTITIONS);
        for n in 0..EVENTS_PER_BATCH {
            let partition = (first + n as u32) % PARTITIONS;
            let sequence = self.sequences[partition as usize];
            self.sequences[partition as usize] += 1;
            let event = Event {
                topic: TOPIC.into(),
                payload: self.value(partition, sequence).into(),
                producer: ProducerStamp {
                    sequence,
                    ..self.stamp
                },
                partition,
                ..Event::default()
            };
            builder.push(&event).expect("a valid event");
            slots.push((partition, sequence));
        }
        (builder.finish(), slots)
    }
}

/// An idempotent producer: publishes batches until [`Workload::stop`],
/// each until acknowledged. Returns how many batches it published.
pub async fn run_producer(workload: &Workload<'_>, client: usize) -> u64 {
    let Response::ProducerInit { id, epoch } = workload
        .write_until_done(Op::InitProducer { name: None })
        .await
    else {
        panic!("InitProducer answers with the producer's id");
    };
    let mut producer = Producer {
        stamp: ProducerStamp {
            id,
            epoch,
            sequence: 0,
        },
        sequences: [0; PARTITIONS as usize],
    };
    let mut batches = 0;
    while !workload.stop.get() {
        publish(workload, client, &mut producer).await;
        batches += 1;
        let pause = madsim::rand::thread_rng().gen_range(5..50);
        madsim::time::sleep(Duration::from_millis(pause)).await;
    }
    batches
}

/// Publishes one batch until acknowledged, recording every attempt.
async fn publish(workload: &Workload<'_>, client: usize, producer: &mut Producer) {
    let (batch, slots) = producer.batch();
    let mut processes: Vec<u64> = {
        let mut recorder = workload.recorder.borrow_mut();
        slots.iter().map(|_| recorder.process()).collect()
    };
    for _ in 0..ATTEMPTS_MAX {
        let target = workload.target(client).await;
        {
            let mut recorder = workload.recorder.borrow_mut();
            let history = recorder.tick();
            for (slot, &(partition, sequence)) in slots.iter().enumerate() {
                history.invoke(processes[slot], producer.send_op(partition, sequence));
            }
        }
        let mut outcome = workload.propose(target, Op::Publish(batch.clone())).await;
        let lost_ack = madsim::rand::thread_rng().gen_bool(workload.config.lost_ack_rate);
        if lost_ack && matches!(outcome, Proposal::Done(_)) {
            workload.note_ack(target);
            outcome = Proposal::Unknown;
        }
        if record_publish(workload, target, producer, &slots, &mut processes, outcome) {
            return;
        }
        madsim::time::sleep(RETRY_PAUSE).await;
    }
    panic!("a batch was not acknowledged in {ATTEMPTS_MAX} attempts");
}

/// Records one publish attempt's outcome; returns whether it was
/// acknowledged.
fn record_publish(
    workload: &Workload<'_>,
    target: NodeId,
    producer: &Producer,
    slots: &[(u32, u64)],
    processes: &mut [u64],
    outcome: Proposal,
) -> bool {
    let mut recorder = workload.recorder.borrow_mut();
    match outcome {
        Proposal::Done(Response::Published(outcomes)) => {
            assert_eq!(outcomes.len(), slots.len(), "one outcome per event");
            if workload.isolated.get() == Some(target) {
                recorder.acks_while_isolated += 1;
            }
            for (slot, outcome) in outcomes.iter().enumerate() {
                let (partition, sequence) = slots[slot];
                let op = producer.send_op(partition, sequence);
                match *outcome {
                    EventOutcome::Appended { partition, offset }
                    | EventOutcome::Duplicate { partition, offset } => {
                        let op = op.acked(partition, offset);
                        recorder.tick().ok(processes[slot], op);
                    }
                    EventOutcome::Rejected(_) => {
                        // Definitely not appended. Only a broken cluster
                        // rejects these events; the run reports how many.
                        recorder.rejected += 1;
                        recorder.tick().fail(processes[slot], op);
                    }
                }
            }
            return true;
        }
        Proposal::Done(other) => panic!("Publish answered {other:?}"),
        Proposal::Refused => {
            let history = recorder.tick();
            for (slot, &(partition, sequence)) in slots.iter().enumerate() {
                history.fail(processes[slot], producer.send_op(partition, sequence));
            }
        }
        Proposal::Unknown => {
            for (slot, &(partition, sequence)) in slots.iter().enumerate() {
                let op = producer.send_op(partition, sequence);
                recorder.tick().info(processes[slot], op);
                // After `info` the process is gone; continue as a new one.
                processes[slot] = recorder.process();
            }
        }
    }
    false
}

/// One incarnation of a transactional worker: its member name, the
/// generation it joined at, its partitions then, and its own positions.
struct Incarnation {
    process: u64,
    generation: u64,
    partitions: Vec<u32>,
    positions: BTreeMap<u32, u64>,
    /// Its own anonymous idempotent producer for the outputs, so that a
    /// retried transaction is answered with its original offsets. Not a
    /// named (fencing) one: the group generation is the only fence
    /// between incarnations here, which is what the stale-generation
    /// check must uphold on its own.
    producer: ProducerStamp,
    /// Next output sequence per partition.
    sequences: [u64; PARTITIONS as usize],
}

/// A consume-transform-produce worker, member `member` of [`GROUP`]:
/// joins, then repeatedly takes up to a few inputs from one of its
/// partitions (as its node's applied state has them) and publishes one
/// output per input with the commit of their offsets, as one transaction.
///
/// Now and then (by the seed) the worker "crashes" and a new incarnation
/// joins under the same member name, bumping the generation; the old one
/// becomes a zombie that finishes one more transaction with the
/// generation it knew, which the cluster must refuse. Runs until
/// [`Workload::stop`]; returns the number of `ok` transactions.
pub async fn run_txn_worker(workload: &Workload<'_>, client: usize, member: &str) -> u64 {
    let mut current = join(workload, GROUP, member).await;
    let mut zombie: Option<Incarnation> = None;
    let mut committed = 0;
    let mut round: u64 = 0;
    while !workload.stop.get() {
        round += 1;
        let target = workload.target(client).await;
        refresh(workload.cluster, target, GROUP, member, &mut current);
        if transact(workload, client, member, &mut current, round).await {
            committed += 1;
        }
        if let Some(mut old) = zombie.take() {
            // The zombie wakes up and finishes the work it had started on
            // the inputs it had read, with the generation it knew; the
            // new incarnation may have processed them meanwhile.
            if transact(workload, client, member, &mut old, round).await {
                committed += 1;
            }
        }
        if madsim::rand::thread_rng().gen_bool(0.15) {
            let old = std::mem::replace(&mut current, join(workload, GROUP, member).await);
            zombie = Some(old);
        }
        let pause = madsim::rand::thread_rng().gen_range(10..60);
        madsim::time::sleep(Duration::from_millis(pause)).await;
    }
    committed
}

/// Joins `group` as `member` (until some leader applies it) and starts
/// each partition from the group's committed offset.
async fn join(workload: &Workload<'_>, group: &str, member: &str) -> Incarnation {
    let op = Op::JoinGroup {
        group: group.into(),
        member: member.into(),
        topics: vec![TOPIC.into()],
    };
    let Response::Joined {
        generation,
        assignment,
    } = workload.write_until_done(op).await
    else {
        panic!("JoinGroup answers with the generation");
    };
    let partitions: Vec<u32> = assignment
        .into_iter()
        .filter(|(topic, _)| topic == TOPIC)
        .map(|(_, partition)| partition)
        .collect();
    let Response::ProducerInit { id, epoch } = workload
        .write_until_done(Op::InitProducer { name: None })
        .await
    else {
        panic!("InitProducer answers with the producer's id");
    };
    let process = workload.recorder.borrow_mut().process();
    Incarnation {
        process,
        generation,
        partitions,
        positions: BTreeMap::new(),
        producer: ProducerStamp {
            id,
            epoch,
            sequence: 0,
        },
        sequences: [0; PARTITIONS as usize],
    }
}

/// Adopts the group's current generation and assignment if `member` is
/// still in it (a live member learns a rebalance by reading the group, as
/// a zombie does not). Partitions it lost forget their positions.
fn refresh(
    cluster: &SimCluster,
    node: NodeId,
    group: &str,
    member: &str,
    incarnation: &mut Incarnation,
) {
    let Some(Some((generation, partitions))) = cluster.with_state(node, |state| {
        let group = state.group(group)?;
        let owned = group.assignment.get(member)?;
        let partitions: Vec<u32> = owned
            .iter()
            .filter(|(topic, _)| topic == TOPIC)
            .map(|&(_, partition)| partition)
            .collect();
        Some((group.generation, partitions))
    }) else {
        return;
    };
    if generation > incarnation.generation {
        incarnation.generation = generation;
        incarnation
            .positions
            .retain(|partition, _| partitions.contains(partition));
        incarnation.partitions = partitions;
    }
}

/// One transaction of `incarnation` on one of its partitions; returns
/// whether it was acknowledged. Unknown outcomes are retried unchanged
/// (a transaction is idempotent: a retry of an applied one answers with
/// the original offsets).
async fn transact(
    workload: &Workload<'_>,
    client: usize,
    member: &str,
    incarnation: &mut Incarnation,
    round: u64,
) -> bool {
    if incarnation.partitions.is_empty() {
        return false;
    }
    let pick = round as usize % incarnation.partitions.len();
    let partition = incarnation.partitions[pick];
    let Some(inputs) = fresh_inputs(workload, client, incarnation, partition).await else {
        return false;
    };
    let planned = plan_transaction(member, incarnation, partition, inputs);
    let acknowledged = propose_transaction(workload, client, &planned).await;
    if acknowledged {
        incarnation.positions.insert(partition, planned.next);
        incarnation.sequences[partition as usize] = planned.sequence_next;
    } else {
        // Refused (fenced, or not the leader): this incarnation starts the
        // partition again from the group's commit.
        incarnation.positions.remove(&partition);
    }
    acknowledged
}

/// The inputs of the incarnation's next transaction on `partition`, as
/// the node client `client` talks to has them; `None` if there are none
/// or the node cannot serve them.
async fn fresh_inputs(
    workload: &Workload<'_>,
    client: usize,
    incarnation: &Incarnation,
    partition: u32,
) -> Option<Vec<sluice_jepsen::Event>> {
    let target = workload.target(client).await;
    // Read the committed offsets at a read index: a node's applied state
    // may lag (a new leader, a follower), and an incarnation that starts
    // from a stale commit processes inputs again. The transaction's commit
    // does not say which offset it continues from, so the cluster cannot
    // refuse that.
    if !workload
        .cluster
        .read_barrier(target, workload.config.write_timeout)
        .await
    {
        return None;
    }
    let inputs = read_inputs(workload.cluster, target, GROUP, incarnation, partition)?;
    (!inputs.is_empty()).then_some(inputs)
}

/// A transaction ready to propose: the op, its history record, and what
/// the incarnation moves to once it is acknowledged.
struct PlannedTxn {
    op: Op,
    txn: TxnOp,
    /// The partition's position after the inputs.
    next: u64,
    /// The partition's next output sequence.
    sequence_next: u64,
}

/// One output per input (named after the incarnation), published with
/// the commit of the offset after the inputs.
fn plan_transaction(
    member: &str,
    incarnation: &Incarnation,
    partition: u32,
    inputs: Vec<sluice_jepsen::Event>,
) -> PlannedTxn {
    let next = inputs.last().map_or(0, |event| event.offset + 1);
    let outputs: Vec<TxnOutput> = inputs
        .iter()
        .map(|input| TxnOutput {
            input: input.value.clone(),
            // Distinct per incarnation: two incarnations' outputs for one
            // input are two attempts, which exactly-once forbids.
            value: format!("{}>{member}#{}", input.value, incarnation.process),
        })
        .collect();
    let first = incarnation.sequences[partition as usize];
    let (events, sequence_next) = output_batch(incarnation, partition, first, &outputs);
    let op = Op::Transaction {
        events,
        commit: OffsetCommit {
            group: GROUP.into(),
            member: member.into(),
            generation: incarnation.generation,
            offsets: vec![(TOPIC.into(), partition, next)],
        },
    };
    let txn = TxnOp {
        consumer: incarnation.process,
        group: GROUP.into(),
        generation: incarnation.generation,
        input_topic: TOPIC.into(),
        inputs,
        output_topic: TOPIC_OUT.into(),
        outputs,
        offsets_next: BTreeMap::from([(partition, next)]),
    };
    PlannedTxn {
        op,
        txn,
        next,
        sequence_next,
    }
}

/// The outputs as events of [`TOPIC_OUT`]'s `partition`, stamped by the
/// incarnation's producer from sequence `first` on; and the sequence
/// after them.
fn output_batch(
    incarnation: &Incarnation,
    partition: u32,
    first: u64,
    outputs: &[TxnOutput],
) -> (EventBatch, u64) {
    let mut builder = BatchBuilder::new();
    let mut sequence = first;
    for output in outputs {
        let event = Event {
            topic: TOPIC_OUT.into(),
            payload: output.value.clone().into(),
            partition,
            producer: ProducerStamp {
                sequence,
                ..incarnation.producer
            },
            ..Event::default()
        };
        builder.push(&event).expect("a valid event");
        sequence += 1;
    }
    (builder.finish(), sequence)
}

/// Proposes the transaction until it gets a definite answer, recording
/// every attempt; returns whether it was acknowledged.
async fn propose_transaction(workload: &Workload<'_>, client: usize, planned: &PlannedTxn) -> bool {
    let mut process = workload.recorder.borrow_mut().process();
    for _ in 0..ATTEMPTS_MAX {
        workload
            .recorder
            .borrow_mut()
            .tick()
            .invoke(process, planned.txn.clone());
        let target = workload.target(client).await;
        let outcome = workload.propose(target, planned.op.clone()).await;
        let answer = record_transaction(
            &mut workload.recorder.borrow_mut(),
            &mut process,
            &planned.txn,
            outcome,
        );
        if let Some(acknowledged) = answer {
            return acknowledged;
        }
        madsim::time::sleep(RETRY_PAUSE).await;
    }
    panic!("a transaction got no answer in {ATTEMPTS_MAX} attempts");
}

/// Records one transaction attempt's outcome: `Some(acknowledged)` for a
/// definite answer, `None` if it must be retried (after an `info`, under
/// a new process).
fn record_transaction(
    recorder: &mut Recorder,
    process: &mut u64,
    txn: &TxnOp,
    outcome: Proposal,
) -> Option<bool> {
    match outcome {
        Proposal::Done(Response::Transaction(Ok(_))) => {
            recorder.tick().ok(*process, txn.clone());
            Some(true)
        }
        Proposal::Done(Response::Transaction(Err(_))) => {
            recorder.tick().fail(*process, txn.clone());
            Some(false)
        }
        Proposal::Refused => {
            // Not the leader: this attempt did nothing, but an earlier
            // `info` one may have; only retrying until a definite answer
            // keeps the output sequences right.
            recorder.tick().fail(*process, txn.clone());
            None
        }
        Proposal::Done(other) => panic!("Transaction answered {other:?}"),
        Proposal::Unknown => {
            recorder.tick().info(*process, txn.clone());
            *process = recorder.process();
            None
        }
    }
}

/// Up to [`TXN_INPUTS_MAX`] events of `partition` from the incarnation's
/// position (or the group's commit), as node `node` has them applied.
/// `None` if the node is down or cannot serve them yet.
fn read_inputs(
    cluster: &SimCluster,
    node: NodeId,
    group: &str,
    incarnation: &Incarnation,
    partition: u32,
) -> Option<Vec<sluice_jepsen::Event>> {
    let (committed, range) = cluster.with_state(node, |state| {
        (
            state.committed(group, TOPIC, partition),
            state.partition_range(TOPIC, partition),
        )
    })?;
    let (first, next) = range?;
    let from = incarnation
        .positions
        .get(&partition)
        .copied()
        .or(committed)
        .unwrap_or(first)
        .max(first);
    let to = next.min(from + TXN_INPUTS_MAX as u64);
    cluster.read_range(node, TOPIC, partition, from, to).ok()
}

/// A plain (at-least-once) consumer, member `member` of
/// [`GROUP_PLAIN`]: polls up to a few events of one of its partitions
/// (as a read-index-fresh leader has them), then commits the offset after
/// them. Now and then it "crashes": a new incarnation joins under the same
/// name and starts again from the group's commit, so events polled but
/// not committed are delivered again (redelivery, which at-least-once
/// allows and the checker counts apart). Runs until [`Workload::stop`];
/// returns the number of `ok` commits.
pub async fn run_plain_consumer(workload: &Workload<'_>, client: usize, member: &str) -> u64 {
    let mut current = join(workload, GROUP_PLAIN, member).await;
    let mut commits = 0;
    let mut round: u64 = 0;
    while !workload.stop.get() {
        round += 1;
        let target = workload.target(client).await;
        if workload
            .cluster
            .read_barrier(target, workload.config.write_timeout)
            .await
        {
            refresh(workload.cluster, target, GROUP_PLAIN, member, &mut current);
            if poll_and_commit(workload, client, member, &mut current, target, round).await {
                commits += 1;
            }
        }
        if madsim::rand::thread_rng().gen_bool(0.1) {
            current = join(workload, GROUP_PLAIN, member).await;
        }
        let pause = madsim::rand::thread_rng().gen_range(10..60);
        madsim::time::sleep(Duration::from_millis(pause)).await;
    }
    commits
}

/// One poll of one of the incarnation's partitions from `node`, recorded,
/// then the commit of the offset after it; returns whether the commit
/// was acknowledged.
async fn poll_and_commit(
    workload: &Workload<'_>,
    client: usize,
    member: &str,
    incarnation: &mut Incarnation,
    node: NodeId,
    round: u64,
) -> bool {
    if incarnation.partitions.is_empty() {
        return false;
    }
    let partition = incarnation.partitions[round as usize % incarnation.partitions.len()];
    let Some(events) = read_inputs(workload.cluster, node, GROUP_PLAIN, incarnation, partition)
    else {
        return false;
    };
    record_poll(&mut workload.recorder.borrow_mut(), incarnation, &events);
    let Some(last) = events.last() else {
        return false;
    };
    let next = last.offset + 1;
    incarnation.positions.insert(partition, next);
    commit_position(workload, client, member, incarnation, partition, next).await
}

/// Records a poll of `events` by the incarnation, invoked and answered at
/// once (the read itself cannot fail).
fn record_poll(
    recorder: &mut Recorder,
    incarnation: &Incarnation,
    events: &[sluice_jepsen::Event],
) {
    let poll = PollOp::new(incarnation.process, TOPIC)
        .group(GROUP_PLAIN, incarnation.generation)
        .events(events.to_vec());
    let invocation = sluice_jepsen::Payload::from(poll.clone()).invocation();
    recorder.tick().invoke(incarnation.process, invocation);
    recorder.tick().ok(incarnation.process, poll);
}

/// Commits `next` as the group's position in `partition`, once, recorded;
/// returns whether it was acknowledged.
async fn commit_position(
    workload: &Workload<'_>,
    client: usize,
    member: &str,
    incarnation: &Incarnation,
    partition: u32,
    next: u64,
) -> bool {
    let op = Op::CommitOffsets(OffsetCommit {
        group: GROUP_PLAIN.into(),
        member: member.into(),
        generation: incarnation.generation,
        offsets: vec![(TOPIC.into(), partition, next)],
    });
    let commit = CommitOp {
        consumer: incarnation.process,
        group: GROUP_PLAIN.into(),
        generation: incarnation.generation,
        topic: TOPIC.into(),
        offsets_next: BTreeMap::from([(partition, next)]),
    };
    let process = workload.recorder.borrow_mut().process();
    workload
        .recorder
        .borrow_mut()
        .tick()
        .invoke(process, commit.clone());
    let target = workload.target(client).await;
    let outcome = workload.propose(target, op).await;
    let mut recorder = workload.recorder.borrow_mut();
    match outcome {
        Proposal::Done(Response::Committed) => {
            recorder.tick().ok(process, commit);
            true
        }
        Proposal::Done(Response::Error(_)) | Proposal::Refused => {
            recorder.tick().fail(process, commit);
            false
        }
        Proposal::Done(other) => panic!("CommitOffsets answered {other:?}"),
        Proposal::Unknown => {
            recorder.tick().info(process, commit);
            false
        }
    }
}

/// Runs every future to completion on the current task, polling each
/// that is not done whenever the task wakes.
pub async fn join_all<T>(futures: Vec<Pin<Box<dyn Future<Output = T> + '_>>>) -> Vec<T> {
    let mut futures: Vec<_> = futures.into_iter().map(Some).collect();
    let mut outputs: Vec<Option<T>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        for (slot, future) in futures.iter_mut().enumerate() {
            if let Some(running) = future
                && let Poll::Ready(output) = running.as_mut().poll(cx)
            {
                outputs[slot] = Some(output);
                *future = None;
            }
        }
        if futures.iter().all(Option::is_none) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
    outputs
        .into_iter()
        .map(|output| output.expect("every future finished"))
        .collect()
}

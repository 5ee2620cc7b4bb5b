//! The client workload: idempotent producers that retry, plain consumer
//! group members that crash and rejoin, and transactional
//! consume-transform-produce members. Every operation is recorded as an
//! invocation and a completion (`ok`, `fail` or `info`).
//!
//! How results are classified:
//! - an answer from the cluster that says the op was applied is `ok`;
//! - a refusal by the state machine (a stale generation, a refused
//!   transaction, a refused event) is `fail`: nothing was applied;
//! - anything else (the client gave up after its request timeout, an
//!   answer it did not expect) is `info`: the process is gone and the
//!   client continues under a new process id, as Jepsen's clients do. A
//!   producer first resends the same event once, unchanged (same
//!   producer, epoch and sequence), as the new process, and drops the
//!   answers of a few sends on purpose so that every run makes such
//!   resends; if the resend's outcome is unknown too, it also takes a new
//!   producer. Group members take a new member name; transactions and
//!   commits are never resent.
//!
//! Each transactional member also plays a zombie once per life: it reads
//! inputs, then stalls while a new incarnation takes over its member name
//! (a new generation, the same partitions) and processes them; then the
//! stalled one commits its inputs with the generation it knew, for the
//! partitions that did not move. Only the generation check can refuse that
//! commit; accepted, it processes the inputs twice.
//! - polls and fetches change nothing, so a failed one is `fail`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use sluice_client::client::{Client, ClientConfig, ClientError, RemoteProducer};
use sluice_client::protocol::{ClientRequest, ClientResponse, PublishOutcome};
use sluice_client::tls::Tls;
use sluice_jepsen::{CommitOp, Event, PollOp, SendOp, TxnOp, TxnOutput};
use sluice_model::event::{EventBatch, Headers};
use sluice_model::state::{OffsetCommit, Op, Response};

use super::recorder::Recorder;

/// The topic producers write and both groups consume.
pub(crate) const INPUT: &str = "events";
/// The topic transactions write.
pub(crate) const OUTPUT: &str = "out";
/// Partitions of each topic.
pub(crate) const PARTITIONS: u32 = 3;
/// The plain (at-least-once) consumer group.
pub(crate) const PLAIN_GROUP: &str = "plain";
/// The transactional consumer group.
pub(crate) const TXN_GROUP: &str = "txn";

/// How long one attempt at one node may take.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(1);
/// The pause between a producer's sends.
const SEND_PAUSE: Duration = Duration::from_millis(20);
/// Events one fetch asks for at most.
const FETCH_MAX: u32 = 20;
/// The pause after a poll that found nothing, or by a member that owns
/// no partition.
const IDLE_PAUSE: Duration = Duration::from_millis(100);
/// How long a poll waits for new events per partition.
const FETCH_WAIT: Duration = Duration::from_millis(50);

/// What every workload task shares.
#[derive(Debug, Clone)]
pub(crate) struct Context {
    /// Where operations are recorded.
    pub(crate) recorder: Arc<Recorder>,
    /// The nodes' addresses.
    pub(crate) seeds: Vec<SocketAddr>,
    /// The TLS material the workload's clients present (`User:jepsen`).
    pub(crate) tls: Arc<Tls>,
    /// Set when the time limit is reached.
    pub(crate) stop: Arc<AtomicBool>,
    /// The run's seed.
    pub(crate) seed: u64,
    /// How long a client request may take, failovers included, before it
    /// is indeterminate.
    pub(crate) request_timeout: Duration,
}

impl Context {
    /// A new client (its own connections and preferred node).
    pub(crate) fn client(&self) -> Client {
        let mut config = ClientConfig::new(self.seeds.clone());
        config.tls = Some(Arc::clone(&self.tls));
        config.request_timeout = self.request_timeout;
        config.attempt_timeout = ATTEMPT_TIMEOUT;
        Client::new(config).expect("seeds are given")
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn rng(&self, role: u64, index: u32) -> fastrand::Rng {
        fastrand::Rng::with_seed(
            self.seed ^ (role << 32) ^ u64::from(index).wrapping_mul(0x9E37_79B9),
        )
    }
}

/// Creates the topics (retrying until the cluster answers).
pub(crate) async fn create_topics(client: &Client) -> Result<(), ClientError> {
    client.create_topic(INPUT, PARTITIONS).await?;
    client.create_topic(OUTPUT, PARTITIONS).await
}

/// A new producer, retried until the cluster answers or the run stops.
async fn new_producer(context: &Context, client: &Client) -> Option<RemoteProducer> {
    while !context.stopped() {
        match client.producer().await {
            Ok(producer) => return Some(producer),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    None
}

/// The share of sends, in percent, whose answer a producer drops as if it
/// were lost on its way back, so that every run resends applied events.
const LOST_ANSWER_PERCENT: u32 = 5;

/// What a publish of one event came to.
enum Sent {
    /// Appended (or found appended before) at this partition and offset.
    Acked(u32, u64),
    /// Refused by the state machine: nothing was appended.
    Refused(String),
    /// No answer the producer can use: it may or may not be appended.
    Unknown,
}

async fn publish_one(producer: &mut RemoteProducer, event: sluice_model::event::Event) -> Sent {
    match producer.publish(vec![event]).await {
        Ok(outcomes) => match &outcomes[0] {
            PublishOutcome::Appended {
                partition, offset, ..
            } => Sent::Acked(*partition, *offset),
            PublishOutcome::Refused { message } => Sent::Refused(message.clone()),
        },
        Err(_) => Sent::Unknown,
    }
}

/// One producer slot: sends unique values one at a time, each with the
/// producer's next sequence. After an unknown outcome (no answer within
/// the request timeout, or, for [`LOST_ANSWER_PERCENT`] of the sends, an
/// answer dropped on purpose) the send is `info` and the slot resends the
/// same event once, same producer, epoch and sequence, as a new process:
/// deduplication must answer an applied event with its original offset.
/// If the resend's outcome is unknown too, the slot becomes a new process
/// with a new producer.
pub(crate) async fn producer(context: Context, index: u32) {
    let recorder = &context.recorder;
    let mut rng = context.rng(0, index);
    let mut process = recorder.new_process();
    let mut client = context.client();
    let mut producer = None;
    let mut count = 0u64;
    while !context.stopped() {
        if producer.is_none() {
            producer = new_producer(&context, &client).await;
        }
        let Some(current) = producer.as_mut() else {
            return;
        };
        let value = format!("p{process}-{count}");
        count += 1;
        let payload = Bytes::from(value.clone());
        let Ok(event) = current
            .stamp(INPUT, Bytes::new(), payload, Headers::default())
            .await
        else {
            // Nothing was sent; the sequence was not taken.
            producer = None;
            continue;
        };
        let (id, epoch) = current.identity();
        let send = SendOp {
            partition: Some(event.partition),
            ..SendOp::new(INPUT, value).producer(id, u64::from(epoch), event.producer.sequence)
        };
        recorder.invoke(process, send.clone());
        let mut sent = publish_one(current, event.clone()).await;
        if matches!(sent, Sent::Acked(..)) && rng.u32(0..100) < LOST_ANSWER_PERCENT {
            sent = Sent::Unknown;
        }
        if let Sent::Unknown = sent {
            recorder.info(process, send.clone());
            process = recorder.new_process();
            recorder.invoke(process, send.clone());
            sent = publish_one(current, event).await;
        }
        match sent {
            Sent::Acked(partition, offset) => recorder.ok(process, send.acked(partition, offset)),
            Sent::Refused(message) => {
                eprintln!("send of {} refused: {message}", send.value);
                recorder.fail(process, send);
                // The refused sequence leaves a gap: start over.
                producer = None;
            }
            Sent::Unknown => {
                recorder.info(process, send);
                process = recorder.new_process();
                client = context.client();
                producer = None;
            }
        }
        tokio::time::sleep(SEND_PAUSE).await;
    }
}

/// A member of a consumer group: its generation and its positions (next
/// offset per assigned partition of [`INPUT`]).
struct Member {
    client: Client,
    group: &'static str,
    name: String,
    generation: u64,
    positions: BTreeMap<u32, u64>,
}

impl Member {
    async fn join(
        client: Client,
        group: &'static str,
        name: String,
    ) -> Result<Member, ClientError> {
        let op = Op::JoinGroup {
            group: group.to_owned(),
            member: name.clone(),
            topics: vec![INPUT.to_owned()],
        };
        client.write(op).await?;
        let mut member = Member {
            client,
            group,
            name,
            generation: 0,
            positions: BTreeMap::new(),
        };
        member.refresh().await?;
        Ok(member)
    }

    /// Learns the generation (through the leader, by a heartbeat); when it
    /// changed, also the new assignment and its committed offsets (from a
    /// node that has applied that generation), where positions restart.
    async fn refresh(&mut self) -> Result<(), ClientError> {
        for _ in 0..20 {
            let generation = self.heartbeat().await?;
            let request = ClientRequest::Group {
                group: self.group.to_owned(),
                member: self.name.clone(),
            };
            match self.client.request(&request).await {
                Ok(ClientResponse::Group {
                    generation: seen,
                    assignment,
                }) if seen == generation => {
                    if generation == self.generation {
                        // Nothing changed: positions run on, never back
                        // (a poll below the last one would be a
                        // nonmonotonic poll within one generation).
                        return Ok(());
                    }
                    self.generation = generation;
                    self.positions = assignment
                        .into_iter()
                        .filter(|(topic, _, _)| topic == INPUT)
                        .map(|(_, partition, committed)| (partition, committed.unwrap_or(0)))
                        .collect();
                    return Ok(());
                }
                // A node behind the leader, or one that has not applied
                // the join yet: ask again.
                Ok(_) | Err(ClientError::Refused(_)) => {}
                Err(error) => return Err(error),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(ClientError::Unexpected(
            "the group's state did not settle".to_owned(),
        ))
    }

    /// A heartbeat; returns the current generation.
    async fn heartbeat(&self) -> Result<u64, ClientError> {
        let op = Op::Heartbeat {
            group: self.group.to_owned(),
            member: self.name.clone(),
        };
        match self.client.write(op).await? {
            Response::Alive { generation, .. } => Ok(generation),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Fetches from every assigned partition; returns the events and the
    /// positions after them (not yet adopted).
    async fn fetch(&self) -> Result<(Vec<Event>, BTreeMap<u32, u64>), ClientError> {
        let mut events = Vec::new();
        let mut positions = self.positions.clone();
        for (&partition, position) in positions.iter_mut() {
            let (fetched, next, _) = self
                .client
                .fetch(INPUT, partition, *position, FETCH_MAX, FETCH_WAIT)
                .await?;
            for event in fetched {
                events.push(Event::new(
                    partition,
                    event.offset,
                    String::from_utf8_lossy(&event.payload).into_owned(),
                ));
            }
            *position = next.max(*position);
        }
        Ok((events, positions))
    }

    fn commit(&self, positions: &BTreeMap<u32, u64>) -> OffsetCommit {
        OffsetCommit {
            group: self.group.to_owned(),
            member: self.name.clone(),
            generation: self.generation,
            offsets: positions
                .iter()
                .map(|(&partition, &next)| (INPUT.to_owned(), partition, next))
                .collect(),
        }
    }

    async fn leave(&self) {
        let op = Op::LeaveGroup {
            group: self.group.to_owned(),
            member: self.name.clone(),
        };
        let _ = self.client.write(op).await;
    }
}

/// How a member's life ended.
enum End {
    /// Stop without leaving (a crash); the session timeout removes it.
    Crash,
    /// Commit and leave the group.
    Leave,
}

/// Joins `group` as a new member, retrying until it works or the run
/// stops.
async fn join(context: &Context, group: &'static str, prefix: &str) -> Option<(u64, Member)> {
    while !context.stopped() {
        let process = context.recorder.new_process();
        let name = format!("{prefix}{process}");
        match Member::join(context.client(), group, name).await {
            Ok(member) => return Some((process, member)),
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
    None
}

/// A plain consumer group member that polls, commits now and then, and
/// after a seeded number of rounds crashes or leaves, then rejoins as a
/// new member.
pub(crate) async fn consumer(context: Context, index: u32) {
    let mut rng = context.rng(1, index);
    while let Some((process, mut member)) = join(&context, PLAIN_GROUP, "c").await {
        let rounds = rng.u32(20..200);
        let mut end = if rng.u32(0..3) == 0 {
            End::Crash
        } else {
            End::Leave
        };
        for round in 0..rounds {
            if context.stopped() {
                break;
            }
            if round % 10 == 9 && member.refresh().await.is_err() {
                end = End::Crash;
                break;
            }
            if !poll(&context, process, &mut member).await {
                continue;
            }
            if round % 3 == 2 && !commit(&context, process, &mut member).await {
                end = End::Crash;
                break;
            }
        }
        if let End::Leave = end {
            if commit(&context, process, &mut member).await {
                member.leave().await;
            }
        }
    }
}

/// One recorded poll; adopts the new positions. False if it failed or
/// the member owns no partition (then it waits a little, unrecorded).
async fn poll(context: &Context, process: u64, member: &mut Member) -> bool {
    if member.positions.is_empty() {
        tokio::time::sleep(IDLE_PAUSE).await;
        return false;
    }
    let poll = PollOp::new(process, INPUT).group(member.group, member.generation);
    context.recorder.invoke(process, poll.clone());
    match member.fetch().await {
        Ok((events, positions)) => {
            if events.is_empty() {
                tokio::time::sleep(IDLE_PAUSE).await;
            }
            context.recorder.ok(process, poll.events(events));
            member.positions = positions;
            true
        }
        Err(_) => {
            context.recorder.fail(process, poll);
            false
        }
    }
}

/// One recorded commit of the member's positions. False if the outcome is
/// unknown (the member must take a new identity).
async fn commit(context: &Context, process: u64, member: &mut Member) -> bool {
    if member.positions.is_empty() {
        return true;
    }
    let op = CommitOp {
        consumer: process,
        group: member.group.to_owned(),
        generation: member.generation,
        topic: INPUT.to_owned(),
        offsets_next: member.positions.clone(),
    };
    context.recorder.invoke(process, op.clone());
    match member
        .client
        .write(Op::CommitOffsets(member.commit(&member.positions)))
        .await
    {
        Ok(Response::Committed) => {
            context.recorder.ok(process, op);
            true
        }
        Err(ClientError::Refused(_)) => {
            // A stale generation: a rebalance happened.
            context.recorder.fail(process, op);
            member.refresh().await.is_ok()
        }
        Ok(_) | Err(_) => {
            context.recorder.info(process, op);
            false
        }
    }
}

/// A transactional member: each poll's inputs become outputs in
/// [`OUTPUT`], published with the input offsets' commit as one
/// `Op::Transaction`. Once per life, at a seeded round, it plays the
/// zombie ([`zombie_step`]) and continues as the new incarnation.
pub(crate) async fn transactor(context: Context, index: u32) {
    let mut rng = context.rng(2, index);
    while let Some((process, member)) = join(&context, TXN_GROUP, "t").await {
        let Some(producer) = new_producer(&context, &member.client).await else {
            return;
        };
        let mut current = Incarnation {
            process,
            member,
            producer,
        };
        let rounds = rng.u32(20..200);
        let zombie_round = rng.u32(ZOMBIE_ROUNDS);
        let leave = rng.u32(0..3) != 0;
        let mut crashed = false;
        let mut count = 0u64;
        for round in 0..rounds {
            if context.stopped() {
                break;
            }
            if round % 10 == 9 && current.member.refresh().await.is_err() {
                crashed = true;
                break;
            }
            let Ok((inputs, positions)) = current.member.fetch().await else {
                continue;
            };
            if inputs.is_empty() {
                tokio::time::sleep(IDLE_PAUSE).await;
                continue;
            }
            if (zombie_round..zombie_round + ZOMBIE_TRIES).contains(&round) {
                if zombie_step(&context, &mut current, inputs, positions, &mut count).await {
                    continue;
                }
                crashed = true;
                break;
            }
            match transaction(&context, &mut current, inputs, positions, &mut count).await {
                Outcome::Ok => {}
                Outcome::Refused => {
                    // Sequences were taken for nothing; rewind to the
                    // commits and start a new producer.
                    let Some(fresh) = new_producer(&context, &current.member.client).await else {
                        return;
                    };
                    current.producer = fresh;
                    if current.member.refresh().await.is_err() {
                        crashed = true;
                        break;
                    }
                }
                Outcome::Unknown => {
                    crashed = true;
                    break;
                }
            }
        }
        if leave && !crashed {
            current.member.leave().await;
        }
    }
}

/// The round of a transactional member's life at which it plays the
/// zombie (the first with inputs from there, within [`ZOMBIE_TRIES`]).
const ZOMBIE_ROUNDS: std::ops::Range<u32> = 2..12;

/// Rounds after the zombie's round that may still play it when that one
/// had no inputs.
const ZOMBIE_TRIES: u32 = 10;

/// One incarnation of a transactional member: its process, its group
/// membership (name, generation, positions) and its output producer.
struct Incarnation {
    process: u64,
    member: Member,
    producer: RemoteProducer,
}

/// The zombie step. `current` has read `inputs` (its positions would
/// move to `positions`) and stalls; a new incarnation joins under the
/// same member name, which makes a new generation with the same
/// partitions (unless another member joined or left meanwhile), and
/// processes from the group's commits, the stalled one's inputs among
/// them. Then the stalled one wakes and commits its inputs, with the
/// generation it knew, for the partitions its name still owns: a stale
/// commit the cluster must refuse (`fail`), which would otherwise
/// process those inputs twice. `current` becomes the new incarnation;
/// false if it could not join or its transaction's outcome is unknown.
async fn zombie_step(
    context: &Context,
    current: &mut Incarnation,
    inputs: Vec<Event>,
    positions: BTreeMap<u32, u64>,
    count: &mut u64,
) -> bool {
    let name = current.member.name.clone();
    let Ok(member) = Member::join(context.client(), TXN_GROUP, name).await else {
        return false;
    };
    let Some(producer) = new_producer(context, &member.client).await else {
        return false;
    };
    let successor = Incarnation {
        process: context.recorder.new_process(),
        member,
        producer,
    };
    let mut zombie = std::mem::replace(current, successor);
    if let Ok((fresh, next)) = current.member.fetch().await {
        if !fresh.is_empty() {
            match transaction(context, current, fresh, next, count).await {
                Outcome::Ok => {}
                Outcome::Refused => {
                    let Some(fresh) = new_producer(context, &current.member.client).await else {
                        return false;
                    };
                    current.producer = fresh;
                    if current.member.refresh().await.is_err() {
                        return false;
                    }
                }
                Outcome::Unknown => return false,
            }
        }
    }
    // The partitions that did not move: still the name's in the new
    // generation.
    let owned = &current.member.positions;
    let inputs: Vec<Event> = inputs
        .into_iter()
        .filter(|input| owned.contains_key(&input.partition))
        .collect();
    let positions: BTreeMap<u32, u64> = positions
        .into_iter()
        .filter(|(partition, _)| owned.contains_key(partition))
        .collect();
    if !inputs.is_empty() {
        let generation = zombie.member.generation;
        if let Outcome::Ok = transaction(context, &mut zombie, inputs, positions, count).await {
            eprintln!(
                "zombie process {} committed with its stale generation {generation}",
                zombie.process
            );
        }
    }
    true
}

enum Outcome {
    Ok,
    Refused,
    Unknown,
}

async fn transaction(
    context: &Context,
    incarnation: &mut Incarnation,
    inputs: Vec<Event>,
    positions: BTreeMap<u32, u64>,
    count: &mut u64,
) -> Outcome {
    let Incarnation {
        process,
        member,
        producer,
    } = incarnation;
    let process = *process;
    let Some((outputs, events)) = stamp_outputs(process, producer, &inputs, count).await else {
        // Stamping failed before anything was sent; the stamps taken so
        // far would leave a gap.
        return Outcome::Refused;
    };
    let op = TxnOp {
        consumer: process,
        group: member.group.to_owned(),
        generation: member.generation,
        input_topic: INPUT.to_owned(),
        inputs,
        output_topic: OUTPUT.to_owned(),
        outputs,
        offsets_next: positions.clone(),
    };
    let batch = EventBatch::encode(&events).expect("small valid events encode");
    let write = Op::Transaction {
        events: batch,
        commit: member.commit(&positions),
    };
    context.recorder.invoke(process, op.clone());
    match member.client.write(write).await {
        Ok(Response::Transaction(Ok(_))) => {
            context.recorder.ok(process, op);
            member.positions = positions;
            Outcome::Ok
        }
        Ok(Response::Transaction(Err(_))) | Err(ClientError::Refused(_)) => {
            context.recorder.fail(process, op);
            Outcome::Refused
        }
        Ok(_) | Err(_) => {
            context.recorder.info(process, op);
            Outcome::Unknown
        }
    }
}

/// One output per input, each value naming its input, the process and
/// the output's number; and the outputs as events stamped by `producer`.
/// `None` if stamping one failed.
async fn stamp_outputs(
    process: u64,
    producer: &mut RemoteProducer,
    inputs: &[Event],
    count: &mut u64,
) -> Option<(Vec<TxnOutput>, Vec<sluice_model::event::Event>)> {
    let mut outputs = Vec::with_capacity(inputs.len());
    let mut events = Vec::with_capacity(inputs.len());
    for input in inputs {
        let value = format!("{}>{process}.{count}", input.value);
        *count += 1;
        let payload = Bytes::from(value.clone());
        let event = producer
            .stamp(OUTPUT, Bytes::new(), payload, Headers::default())
            .await
            .ok()?;
        events.push(event);
        outputs.push(TxnOutput {
            input: input.value.clone(),
            value,
        });
    }
    Some((outputs, events))
}

//! Scenario: an idempotent producer publishes through the leader while the
//! leader is cut off the network for a while; after healing, nothing
//! acknowledged is lost or duplicated.
//!
//! Three nodes, each on its own madsim node with a `SimDisk`, a `SimClock`
//! and a `SimTransport`. The producer retries a batch that failed or timed
//! out, unchanged (same producer id, epoch and sequences), on whichever
//! node leads next, so deduplication by sequence must turn every retry of
//! an applied batch into `Duplicate` answers with the original offsets.
//! Every event attempt is recorded as a jepsen `send` (invoke, then ok,
//! fail or info); the final reads of all three nodes close the history,
//! and `sluice_jepsen::check` judges it.
//!
//! Seeds: `MADSIM_TEST_SEED` (default: the time), `MADSIM_TEST_NUM`
//! (default 1). A failing run prints its seed and the replay command.
#![cfg(madsim)]

use std::time::Duration;

use madsim::rand::Rng as _;
use openraft::error::{ClientWriteError, RaftError};
use sluice::event::{BatchBuilder, Event, EventBatch, ProducerStamp};
use sluice::io::transport::NodeId;
use sluice::state::{Command, EventOutcome, Op, Response, TopicConfig};
use sluice_jepsen::{FinalReadOp, HistoryBuilder, SendOp};
use sluice_sim::{SimCluster, SimRaft};

const IDS: [NodeId; 3] = [1, 2, 3];
const TOPIC: &str = "orders";
const PARTITIONS: u32 = 3;
const EVENTS_PER_BATCH: u64 = 6;
/// The producer publishes at least this many batches, and goes on until
/// the nemesis has healed the partition.
const BATCHES_MIN: u64 = 20;
/// The leader's stamp on every command; apply reads no other clock.
const TIMESTAMP_MS: u64 = 1_700_000_000_000;
/// How long the client waits for one write before giving up on it.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// Most attempts of one batch before the scenario fails (liveness).
const ATTEMPTS_MAX: u32 = 200;

/// Prints the seed and the replay command if the scenario panics.
struct ReplayHint {
    test: &'static str,
    seed: u64,
}

impl Drop for ReplayHint {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "\nscenario `{}` failed with seed {}; replay it with:\n  \
                 MADSIM_TEST_SEED={} cargo simtest --test partition -- --exact {}\n",
                self.test, self.seed, self.seed, self.test
            );
        }
    }
}

/// What a run produced, compared across runs of one seed.
#[derive(Debug, PartialEq, Eq)]
struct Trace {
    history: String,
    elapsed: Duration,
}

/// The producer's identity and the next sequence per partition.
struct Producer {
    stamp: ProducerStamp,
    sequences: [u64; PARTITIONS as usize],
}

/// The client's view of one send in flight: jepsen process per slot.
struct Recorder {
    history: HistoryBuilder,
    processes: Vec<u64>,
    process_next: u64,
    last_tick: std::time::Instant,
}

impl Recorder {
    fn new(slots: usize) -> Recorder {
        Recorder {
            history: HistoryBuilder::new(),
            processes: (1..=slots as u64).collect(),
            process_next: slots as u64 + 1,
            last_tick: std::time::Instant::now(),
        }
    }

    /// Moves the history's clock on by the simulated time since the last
    /// tick (the builder adds 1 ns per op on top), so op times follow the
    /// simulation's clock and stay monotonic.
    fn tick(&mut self) {
        let now = std::time::Instant::now();
        let delta = now.saturating_duration_since(self.last_tick).as_nanos();
        self.history
            .advance(u64::try_from(delta).unwrap_or(u64::MAX));
        self.last_tick = now;
    }
}

fn send_op(producer: &Producer, partition: u32, sequence: u64) -> SendOp {
    let value = format!("p{}-{partition}-{sequence}", producer.stamp.id);
    SendOp::new(TOPIC, value).producer(producer.stamp.id, u64::from(producer.stamp.epoch), sequence)
}

impl Producer {
    /// The next batch, and each event's (partition, sequence).
    fn batch(&mut self) -> (EventBatch, Vec<(u32, u64)>) {
        let mut builder = BatchBuilder::new();
        let mut slots = Vec::new();
        for n in 0..EVENTS_PER_BATCH {
            let partition = (n % u64::from(PARTITIONS)) as u32;
            let sequence = self.sequences[partition as usize];
            self.sequences[partition as usize] += 1;
            let event = Event {
                topic: TOPIC.into(),
                payload: format!("p{}-{partition}-{sequence}", self.stamp.id).into(),
                producer: ProducerStamp {
                    sequence,
                    ..self.stamp
                },
                partition,
                timestamp_ms: TIMESTAMP_MS,
                ..Event::default()
            };
            builder.push(&event).expect("a valid event");
            slots.push((partition, sequence));
        }
        (builder.finish(), slots)
    }
}

/// How one write attempt ended.
enum Attempt {
    Done(Response),
    /// Definitely not applied (this node is not the leader).
    Refused,
    /// Unknown: timed out or the node failed.
    Unknown,
}

async fn write(raft: &SimRaft, op: Op) -> Attempt {
    let command = Command {
        timestamp_ms: TIMESTAMP_MS,
        op,
    };
    match madsim::time::timeout(WRITE_TIMEOUT, raft.client_write(command)).await {
        Ok(Ok(response)) => Attempt::Done(response.data),
        Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => Attempt::Refused,
        Ok(Err(_)) | Err(_) => Attempt::Unknown,
    }
}

/// Writes `op` until some leader applies it; for ops whose retry is
/// harmless (creating the topic, registering the producer).
async fn write_until_done(cluster: &SimCluster, op: Op) -> Response {
    for _ in 0..ATTEMPTS_MAX {
        if let Some(leader) = cluster.leader().await
            && let Some(raft) = cluster.raft(leader)
            && let Attempt::Done(response) = write(&raft, op.clone()).await
        {
            return response;
        }
        madsim::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no leader applied {op:?} in {ATTEMPTS_MAX} attempts");
}

/// Publishes one batch until acknowledged, recording every attempt.
async fn publish(cluster: &SimCluster, producer: &mut Producer, recorder: &mut Recorder) {
    let (batch, slots) = producer.batch();
    for attempt in 0..ATTEMPTS_MAX {
        let target = match cluster.leader().await {
            Some(leader) => leader,
            // No agreed leader: ask a node picked by the seed anyway.
            None => IDS[madsim::rand::thread_rng().gen_range(0..IDS.len())],
        };
        let Some(raft) = cluster.raft(target) else {
            continue;
        };
        recorder.tick();
        for (slot, &(partition, sequence)) in slots.iter().enumerate() {
            let op = send_op(producer, partition, sequence);
            recorder.history.invoke(recorder.processes[slot], op);
        }
        let outcome = write(&raft, Op::Publish(batch.clone())).await;
        recorder.tick();
        match outcome {
            Attempt::Done(Response::Published(outcomes)) => {
                assert_eq!(outcomes.len(), slots.len(), "one outcome per event");
                for (slot, outcome) in outcomes.iter().enumerate() {
                    let (partition, sequence) = slots[slot];
                    let op = send_op(producer, partition, sequence);
                    let process = recorder.processes[slot];
                    match *outcome {
                        EventOutcome::Appended { partition, offset }
                        | EventOutcome::Duplicate { partition, offset } => {
                            recorder.history.ok(process, op.acked(partition, offset));
                        }
                        EventOutcome::Rejected(ref error) => {
                            panic!("attempt {attempt}: event {slot} rejected: {error:?}");
                        }
                    }
                }
                return;
            }
            Attempt::Done(other) => panic!("Publish answered {other:?}"),
            Attempt::Refused => {
                for (slot, &(partition, sequence)) in slots.iter().enumerate() {
                    let op = send_op(producer, partition, sequence);
                    recorder.history.fail(recorder.processes[slot], op);
                }
            }
            Attempt::Unknown => {
                for (slot, &(partition, sequence)) in slots.iter().enumerate() {
                    let op = send_op(producer, partition, sequence);
                    recorder.history.info(recorder.processes[slot], op);
                    // After `info` the process is gone; continue as a new one.
                    recorder.processes[slot] = recorder.process_next;
                    recorder.process_next += 1;
                }
            }
        }
        madsim::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("a batch was not acknowledged in {ATTEMPTS_MAX} attempts");
}

/// Isolates whoever leads after a seeded delay, heals it after a seeded
/// while; returns the isolated node.
async fn nemesis(cluster: &SimCluster) -> Option<NodeId> {
    let (delay, length) = {
        let mut rng = madsim::rand::thread_rng();
        (rng.gen_range(100..1_000), rng.gen_range(1_000..4_000))
    };
    madsim::time::sleep(Duration::from_millis(delay)).await;
    let leader = cluster.leader().await?;
    cluster.isolate(leader);
    madsim::time::sleep(Duration::from_millis(length)).await;
    cluster.heal(leader);
    Some(leader)
}

/// The scenario itself; returns the history and the simulated time taken.
async fn leader_partition(test: &'static str) -> Trace {
    let seed = madsim::runtime::Handle::current().seed();
    let _hint = ReplayHint { test, seed };
    let start = std::time::Instant::now();
    let cluster = SimCluster::start(&IDS).await;
    cluster.initialize().await;
    cluster
        .wait_leader(Duration::from_secs(10))
        .await
        .expect("a leader within 10 s");

    let create = Op::CreateTopic {
        name: TOPIC.into(),
        partitions: PARTITIONS,
        config: TopicConfig::default(),
    };
    assert_eq!(
        write_until_done(&cluster, create).await,
        Response::TopicCreated
    );
    let Response::ProducerInit { id, epoch } =
        write_until_done(&cluster, Op::InitProducer { name: None }).await
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

    let mut recorder = Recorder::new(EVENTS_PER_BATCH as usize);
    let healed = std::cell::Cell::new(false);
    let client = async {
        let mut batches = 0;
        while batches < BATCHES_MIN || !healed.get() {
            publish(&cluster, &mut producer, &mut recorder).await;
            batches += 1;
            let pause = madsim::rand::thread_rng().gen_range(5..50);
            madsim::time::sleep(Duration::from_millis(pause)).await;
        }
        batches
    };
    let nemesis = async {
        let isolated = nemesis(&cluster).await;
        healed.set(true);
        isolated
    };
    let (batches, isolated) = futures_join(client, nemesis).await;
    let mut history = recorder.history;
    history.nemesis(format!("isolated {isolated:?}, then healed"));

    // Liveness: after healing, every node applies the same state.
    let leader = cluster
        .wait_leader(Duration::from_secs(10))
        .await
        .expect("a leader after healing");
    write_until_done(&cluster, Op::Noop).await;
    let index = cluster.applied_max();
    let state = cluster
        .converged(index, Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    state.check_invariants().expect("state invariants");

    for id in IDS {
        let events = cluster.final_read(id, TOPIC).expect("final read");
        history.call(
            0,
            sluice_jepsen::OpKind::Ok,
            FinalReadOp::new(TOPIC, events),
        );
    }
    let history = history.build();
    let report = sluice_jepsen::check(&history);
    let mut jsonl = Vec::new();
    history.to_jsonl(&mut jsonl).expect("encode history");
    assert!(
        report.valid,
        "seed {seed}, leader {leader}: the checker found anomalies:\n{report}"
    );
    assert_eq!(
        report.stats.values_acknowledged,
        batches * EVENTS_PER_BATCH,
        "every batch was acknowledged once the partition healed:\n{report}"
    );
    eprintln!(
        "seed {seed}: {} ops, {} sends ok / {} fail / {} info, {isolated:?} isolated, \
         {:?} simulated",
        report.stats.ops,
        report.stats.sends.ok,
        report.stats.sends.fail,
        report.stats.sends.info,
        start.elapsed()
    );
    Trace {
        history: String::from_utf8(jsonl).expect("JSON is UTF-8"),
        elapsed: start.elapsed(),
    }
}

/// Runs both futures to completion on the current task.
async fn futures_join<A: std::future::Future, B: std::future::Future>(
    a: A,
    b: B,
) -> (A::Output, B::Output) {
    let mut a = std::pin::pin!(a);
    let mut b = std::pin::pin!(b);
    let mut out_a = None;
    let mut out_b = None;
    std::future::poll_fn(|cx| {
        if out_a.is_none()
            && let std::task::Poll::Ready(v) = a.as_mut().poll(cx)
        {
            out_a = Some(v);
        }
        if out_b.is_none()
            && let std::task::Poll::Ready(v) = b.as_mut().poll(cx)
        {
            out_b = Some(v);
        }
        if out_a.is_some() && out_b.is_some() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    (out_a.expect("done"), out_b.expect("done"))
}

#[madsim::test]
async fn leader_partition_loses_and_duplicates_nothing() {
    leader_partition("leader_partition_loses_and_duplicates_nothing").await;
}

/// One seed, run three times on fresh runtimes in one process: the second
/// and third under madsim's determinism check (every random draw, and the
/// virtual time it happens at, must repeat: the whole schedule), and the
/// traces (the full history and the simulated time taken) of the first and
/// the last must be equal. Runs in one process on purpose: state that
/// leaks between runs (process-wide counters, as tokio's watch had) only
/// shows there.
#[test]
fn leader_partition_is_deterministic() {
    const TEST: &str = "leader_partition_is_deterministic";
    let seed = 7;
    let first = std::thread::spawn(move || {
        madsim::runtime::Runtime::with_seed_and_config(seed, madsim::Config::default())
            .block_on(leader_partition(TEST))
    })
    .join()
    .expect("the first run passes");
    let last = madsim::runtime::Runtime::check_determinism(seed, madsim::Config::default(), || {
        leader_partition(TEST)
    });
    assert_eq!(first, last, "seed {seed} ran differently in one process");
}

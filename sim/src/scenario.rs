//! The scenarios: one cluster, the workload of [`crate::workload`], and a
//! nemesis; each run has a safety phase with faults and a liveness phase
//! without, and the checker judges the whole history.
//!
//! 1. Start the nodes (3, or 5 in three data centres), initialise, create
//!    the topics.
//! 2. Safety: two idempotent producers, two transactional workers and two
//!    plain consumers run while the scenario's nemesis injects its
//!    faults, by the seed. Each nemesis undoes its faults at its end.
//! 3. Liveness: every cut healed, every node running, loss and duplication
//!    off; the clients finish what they were doing (every batch until
//!    acknowledged) and stop; a leader must appear, a no-op must commit,
//!    every node must apply the same state, and that state must pass its
//!    invariants.
//! 4. The final read of both topics from every node closes the history;
//!    [`sluice_jepsen::check`] judges it. A failed liveness step panics; the
//!    checker's verdict is returned in the [`Outcome`].
//!
//! | scenario | nemesis |
//! |---|---|
//! | `partition` | majority/minority splits and isolated leaders, healed in between |
//! | `one-way` | one-way cuts of the leader's links (it can send but not hear, or the reverse) |
//! | `flapping` | links cut and healed every few tens of milliseconds |
//! | `lossy` | packet loss, duplicated requests and extra latency per link, and a leader isolation |
//! | `split-brain` | the leader isolated together with clients pinned to it; a new leader is elected; the old one must never acknowledge |
//! | `crash` | nodes killed and restarted, sometimes all at once (power loss); unsynced writes kept, torn or dropped |
//! | `dc-failover` | 5 nodes in 3 data centres (2 + 2 + 1) with WAN latency; a whole data centre killed or cut off, failover, then it comes back |
//! | `clock` | per-node drift and wall-clock jumps (the engine's clock: commands are stamped with the leader's wall time), and a leader isolation |
//! | `disk` | on one node at a time: EIO on writes or syncs, ENOSPC, then an operator restart; and on one node per run bit rot in a file while it is down: it must either start cleanly or refuse to open (then it stays down and the other two carry on) |
//! | `snapshot` | a follower cut off while the clients keep writing and every other node drops a log prefix by retention, snapshots above the retention point and purges; healed, it must install a snapshot with the bodies of the retained events it covers (in two runs of three it loses power around the install and restarts), then it is made leader; no transactional workers (retention would delete inputs they have not consumed); the checker allows the deleted prefix |

use std::fmt;
use std::hash::{DefaultHasher, Hasher};
use std::time::{Duration, Instant};

use madsim::net::NetSim;
use madsim::rand::Rng as _;
use madsim::rand::seq::SliceRandom as _;
use sluice_core::io::{CrashDisk, Disk as _, FaultOp};
use sluice_jepsen::{FinalReadOp, History, OpKind, Report};
use sluice_model::state::{Op, Response, TopicConfig};
use sluice_model::transport::NodeId;

use crate::SimCluster;
use crate::workload::{
    ClientConfig, PARTITIONS, Recorder, TOPIC, TOPIC_OUT, Workload, join_all, run_plain_consumer,
    run_producer, run_txn_worker,
};

/// A scenario. See the module docs for what each does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scenario {
    /// Majority/minority splits and isolated leaders.
    Partition,
    /// One-way cuts of the leader's links.
    OneWay,
    /// Links cut and healed quickly.
    Flapping,
    /// Loss, duplication and latency.
    Lossy,
    /// An old leader isolated with its clients.
    SplitBrain,
    /// Kills and restarts with disk crashes.
    Crash,
    /// Losing and regaining a data centre.
    DcFailover,
    /// Clock drift and jumps.
    Clock,
    /// A follower catches up by snapshot, then leads.
    Snapshot,
    /// EIO, ENOSPC and bit rot on one node's disk.
    Disk,
}

impl Scenario {
    /// Every scenario.
    pub const ALL: [Scenario; 10] = [
        Scenario::Partition,
        Scenario::OneWay,
        Scenario::Flapping,
        Scenario::Lossy,
        Scenario::SplitBrain,
        Scenario::Crash,
        Scenario::DcFailover,
        Scenario::Clock,
        Scenario::Snapshot,
        Scenario::Disk,
    ];

    /// A short stable name (command lines, test output).
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Partition => "partition",
            Scenario::OneWay => "one-way",
            Scenario::Flapping => "flapping",
            Scenario::Lossy => "lossy",
            Scenario::SplitBrain => "split-brain",
            Scenario::Crash => "crash",
            Scenario::DcFailover => "dc-failover",
            Scenario::Clock => "clock",
            Scenario::Snapshot => "snapshot",
            Scenario::Disk => "disk",
        }
    }

    /// The scenario named `name`.
    pub fn from_name(name: &str) -> Option<Scenario> {
        Scenario::ALL.into_iter().find(|s| s.name() == name)
    }

    fn ids(self) -> Vec<NodeId> {
        match self {
            Scenario::DcFailover => vec![1, 2, 3, 4, 5],
            _ => vec![1, 2, 3],
        }
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What one run produced.
#[derive(Debug)]
pub struct Outcome {
    /// The checker's verdict on the whole history.
    pub report: Report,
    /// A hash of the whole history (JSON lines), for determinism checks.
    pub digest: u64,
    /// The whole history, as JSON lines.
    pub history: Vec<u8>,
    /// Simulated time the run took.
    pub simulated: Duration,
    /// Acknowledgements given by a node while the nemesis had it isolated
    /// (split-brain); also judged by the checker as lost writes.
    pub acks_while_isolated: u64,
    /// Events the state machine rejected; a correct cluster rejects none.
    pub rejected: u64,
    /// Batches the producers published.
    pub batches: u64,
    /// Transactions the workers committed.
    pub transactions: u64,
}

/// The data centres of [`Scenario::DcFailover`].
const DATA_CENTRES: [&[NodeId]; 3] = [&[1, 2], &[3, 4], &[5]];

/// Runs `scenario` in the current madsim runtime. Panics if the cluster
/// fails a liveness step; the checker's verdict is in the outcome.
pub async fn run(scenario: Scenario) -> Outcome {
    let start = Instant::now();
    let cluster = start_cluster(scenario).await;
    let workload = Workload::new(&cluster, ClientConfig::default());
    for topic in [TOPIC, TOPIC_OUT] {
        let create = Op::CreateTopic {
            name: topic.into(),
            partitions: PARTITIONS,
            config: TopicConfig::default(),
        };
        let created = workload.write_until_done(create).await;
        assert_eq!(created, Response::TopicCreated);
    }

    // Safety phase, then the clients finish in a healed cluster.
    let counts = run_clients(scenario, &workload).await;

    // Liveness: converge and read everything back.
    converge(&workload).await;
    let acks_while_isolated = workload.recorder.borrow().acks_while_isolated;
    let rejected = workload.recorder.borrow().rejected;
    let history = close_history(&cluster, workload.recorder.into_inner());
    let report = sluice_jepsen::check_with(&history, &check_options(scenario));
    let mut jsonl = Vec::new();
    history.to_jsonl(&mut jsonl).expect("encode history");
    let mut hasher = DefaultHasher::new();
    hasher.write(&jsonl);
    Outcome {
        report,
        digest: hasher.finish(),
        history: jsonl,
        simulated: start.elapsed(),
        acks_while_isolated,
        rejected,
        batches: counts[0] + counts[1],
        transactions: counts.iter().skip(3).take(2).sum(),
    }
}

/// Starts the scenario's nodes, initialises the cluster and waits for
/// its first leader.
async fn start_cluster(scenario: Scenario) -> SimCluster {
    // WAN round trips reach 2 x 40 ms plus madsim's latency: heartbeats
    // (and elections) are scaled to stay above them.
    let heartbeat_ms = match scenario {
        Scenario::DcFailover => 150,
        _ => 50,
    };
    let mut config = (*crate::raft_config_with(heartbeat_ms)).clone();
    if scenario == Scenario::Snapshot {
        // As the bus: snapshots only when asked, and openraft never purges
        // the log by itself; the nemesis purges to the retention point.
        config.snapshot_policy = openraft::SnapshotPolicy::Never;
        config.max_in_snapshot_log_to_keep = u64::MAX / 2;
    }
    let cluster = SimCluster::start_with(&scenario.ids(), std::sync::Arc::new(config)).await;
    if scenario == Scenario::DcFailover {
        set_wan_latency(&cluster);
    }
    cluster.initialize().await;
    cluster
        .wait_leader(Duration::from_secs(20))
        .await
        .expect("a leader within 20 s of start");
    cluster
}

/// The safety phase: the clients run while the scenario's nemesis injects
/// its faults; then it heals everything and the clients stop. Returns
/// each client's count: the two producers' batches, the nemesis' 0, then
/// (but in the snapshot scenario) the two workers' transactions and the
/// two plain consumers' commits.
async fn run_clients(scenario: Scenario, workload: &Workload<'_>) -> Vec<u64> {
    let nemesis = async {
        nemesis(scenario, workload).await;
        heal_everything(workload).await;
        workload.stop.set(true);
        0
    };
    let mut clients: Vec<std::pin::Pin<Box<dyn std::future::Future<Output = u64> + '_>>> = vec![
        Box::pin(run_producer(workload, 0)),
        Box::pin(run_producer(workload, 1)),
        Box::pin(nemesis),
    ];
    if scenario != Scenario::Snapshot {
        clients.push(Box::pin(run_txn_worker(workload, 2, "w1")));
        clients.push(Box::pin(run_txn_worker(workload, 3, "w2")));
        clients.push(Box::pin(run_plain_consumer(workload, 4, "r1")));
        clients.push(Box::pin(run_plain_consumer(workload, 5, "r2")));
    }
    join_all(clients).await
}

/// The liveness phase: a leader appears, a no-op commits, every node
/// applies the same state, and that state passes its invariants.
async fn converge(workload: &Workload<'_>) {
    let cluster = workload.cluster;
    cluster
        .wait_leader(Duration::from_secs(30))
        .await
        .expect("a leader after healing");
    workload.write_until_done(Op::Noop).await;
    let index = cluster.applied_max();
    let state = cluster
        .converged(index, Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    state.check_invariants().expect("state invariants");
}

/// The history, closed by a final read of both topics from every running
/// node.
fn close_history(cluster: &SimCluster, recorder: Recorder) -> History {
    let mut history = recorder.into_history();
    for &id in cluster.ids() {
        if !cluster.is_running(id) {
            // Only a written-off node may be down here (see `restart`).
            continue;
        }
        for topic in [TOPIC, TOPIC_OUT] {
            let events = cluster.final_read(id, topic).expect("final read");
            history.call(0, OpKind::Ok, FinalReadOp::new(topic, events));
        }
    }
    history.build()
}

/// The checker's options: the snapshot scenario deletes a log prefix by
/// retention.
fn check_options(scenario: Scenario) -> sluice_jepsen::CheckOptions {
    let retention = match scenario {
        Scenario::Snapshot => sluice_jepsen::Retention::PrefixMayBeDeleted,
        _ => sluice_jepsen::Retention::KeepAll,
    };
    sluice_jepsen::CheckOptions {
        retention,
        ..sluice_jepsen::CheckOptions::default()
    }
}

async fn nemesis(scenario: Scenario, workload: &Workload<'_>) {
    match scenario {
        Scenario::Partition => partitions(workload).await,
        Scenario::OneWay => one_way_cuts(workload).await,
        Scenario::Flapping => flapping(workload).await,
        Scenario::Lossy => lossy(workload).await,
        Scenario::SplitBrain => split_brain(workload).await,
        Scenario::Crash => crashes(workload).await,
        Scenario::DcFailover => dc_failover(workload).await,
        Scenario::Clock => clock_faults(workload).await,
        Scenario::Snapshot => snapshot_catch_up(workload).await,
        Scenario::Disk => disk_faults(workload).await,
    }
}

fn between(low_ms: u64, high_ms: u64) -> Duration {
    Duration::from_millis(madsim::rand::thread_rng().gen_range(low_ms..high_ms))
}

async fn sleep_between(low_ms: u64, high_ms: u64) {
    madsim::time::sleep(between(low_ms, high_ms)).await;
}

fn note(workload: &Workload<'_>, action: String) {
    workload.recorder.borrow_mut().nemesis(action);
}

/// The end of every safety phase: no cut, no loss, no duplication, every
/// node running, no client pinned.
async fn heal_everything(workload: &Workload<'_>) {
    let cluster = workload.cluster;
    cluster.heal_all();
    NetSim::current().update_config(|config| config.packet_loss_rate = 0.0);
    cluster.faults().set_duplicate_rate(0.0);
    for &id in cluster.ids() {
        restart(workload, id).await;
    }
    workload.pinned.borrow_mut().clear();
    workload.isolated.set(None);
    note(workload, "heal everything".into());
}

/// Restarts node `id`; its disk may refuse to open only if the nemesis
/// damaged it on purpose (the node then stays down).
async fn restart(workload: &Workload<'_>, id: NodeId) {
    if let Err(refusal) = workload.cluster.restart(id).await {
        assert!(
            workload.written_off.borrow().contains(&id),
            "node {id} refused to start after a crash: {refusal}"
        );
        note(workload, format!("node {id} stays down: {refusal}"));
    }
}

/// The agreed leader, or the first node if there is none.
async fn leader_or_any(workload: &Workload<'_>) -> NodeId {
    let cluster = workload.cluster;
    cluster.leader().await.unwrap_or(cluster.ids()[0])
}

async fn partitions(workload: &Workload<'_>) {
    let cluster = workload.cluster;
    let rounds = madsim::rand::thread_rng().gen_range(3..6);
    for _ in 0..rounds {
        sleep_between(200, 800).await;
        let leader = leader_or_any(workload).await;
        let mut ids = cluster.ids().to_vec();
        let isolate_leader = madsim::rand::thread_rng().gen_bool(0.4);
        let minority: Vec<NodeId> = if isolate_leader {
            vec![leader]
        } else {
            ids.shuffle(&mut madsim::rand::thread_rng());
            let size = madsim::rand::thread_rng().gen_range(1..=ids.len() / 2);
            ids[..size].to_vec()
        };
        let majority: Vec<NodeId> = cluster
            .ids()
            .iter()
            .copied()
            .filter(|id| !minority.contains(id))
            .collect();
        cluster.partition(&[minority.clone(), majority.clone()]);
        note(workload, format!("partition {minority:?} | {majority:?}"));
        sleep_between(300, 1_500).await;
        cluster.heal_all();
        note(workload, "heal".into());
    }
}

async fn one_way_cuts(workload: &Workload<'_>) {
    let cluster = workload.cluster;
    let rounds = madsim::rand::thread_rng().gen_range(3..6);
    for _ in 0..rounds {
        sleep_between(200, 800).await;
        let leader = leader_or_any(workload).await;
        let deaf = madsim::rand::thread_rng().gen_bool(0.5);
        for &other in cluster.ids() {
            if other == leader || madsim::rand::thread_rng().gen_bool(0.2) {
                continue;
            }
            if deaf {
                cluster.cut_one_way(other, leader);
            } else {
                cluster.cut_one_way(leader, other);
            }
        }
        let what = if deaf {
            "hears nothing"
        } else {
            "sends nothing"
        };
        note(workload, format!("leader {leader} {what}"));
        sleep_between(300, 1_500).await;
        cluster.heal_all();
        note(workload, "heal".into());
    }
}

async fn flapping(workload: &Workload<'_>) {
    let cluster = workload.cluster;
    let ids = cluster.ids().to_vec();
    let flaps = madsim::rand::thread_rng().gen_range(20..60);
    let mut cut = std::collections::BTreeSet::new();
    for _ in 0..flaps {
        sleep_between(20, 150).await;
        let (a, b) = {
            let mut rng = madsim::rand::thread_rng();
            let a = ids[rng.gen_range(0..ids.len())];
            let b = ids[rng.gen_range(0..ids.len())];
            (a.min(b), a.max(b))
        };
        if a == b {
            continue;
        }
        if cut.remove(&(a, b)) {
            let net = NetSim::current();
            net.unclog_link(cluster.madsim_id(a), cluster.madsim_id(b));
            net.unclog_link(cluster.madsim_id(b), cluster.madsim_id(a));
            note(workload, format!("link {a}-{b} up"));
        } else {
            cluster.partition(&[vec![a], vec![b]]);
            cut.insert((a, b));
            note(workload, format!("link {a}-{b} down"));
        }
    }
    cluster.heal_all();
}

async fn lossy(workload: &Workload<'_>) {
    let cluster = workload.cluster;
    let (loss, duplicate) = {
        let mut rng = madsim::rand::thread_rng();
        (rng.gen_range(0.02..0.2), rng.gen_range(0.05..0.4))
    };
    NetSim::current().update_config(|config| config.packet_loss_rate = loss);
    cluster.faults().set_duplicate_rate(duplicate);
    for &a in cluster.ids() {
        for &b in cluster.ids() {
            if a < b {
                cluster.faults().set_delay(a, b, between(0, 30));
            }
        }
    }
    note(
        workload,
        format!("loss {loss:.2}, duplication {duplicate:.2}, extra latency up to 30 ms"),
    );
    sleep_between(1_000, 2_500).await;
    let leader = leader_or_any(workload).await;
    cluster.isolate(leader);
    note(workload, format!("isolate {leader}"));
    sleep_between(300, 1_500).await;
    cluster.heal(leader);
    sleep_between(500, 1_500).await;
    for &a in cluster.ids() {
        for &b in cluster.ids() {
            if a < b {
                cluster.faults().set_delay(a, b, Duration::ZERO);
            }
        }
    }
}

async fn split_brain(workload: &Workload<'_>) {
    let cluster = workload.cluster;
    let rounds = madsim::rand::thread_rng().gen_range(1..3);
    for _ in 0..rounds {
        sleep_between(200, 800).await;
        let Some(old) = cluster.leader().await else {
            continue;
        };
        // The old leader's clients: one producer and one worker stay with
        // it, on its side of the cut.
        workload.pinned.borrow_mut().extend([(0, old), (2, old)]);
        workload.isolated.set(Some(old));
        cluster.isolate(old);
        note(
            workload,
            format!("isolate leader {old} with clients 0 and 2"),
        );
        // The majority elects a new leader while the old one still
        // believes it leads; writes go on on both sides.
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if cluster.leader().await.is_some_and(|leader| leader != old) {
                break;
            }
            madsim::time::sleep(Duration::from_millis(20)).await;
        }
        sleep_between(500, 2_000).await;
        cluster.heal(old);
        workload.pinned.borrow_mut().clear();
        workload.isolated.set(None);
        note(workload, format!("heal {old}"));
    }
}

async fn crashes(workload: &Workload<'_>) {
    let cluster = workload.cluster;
    let rounds = madsim::rand::thread_rng().gen_range(3..7);
    for _ in 0..rounds {
        sleep_between(100, 600).await;
        let power_loss = madsim::rand::thread_rng().gen_bool(0.3);
        let victims: Vec<NodeId> = if power_loss {
            cluster.ids().to_vec()
        } else {
            let ids = cluster.ids();
            vec![ids[madsim::rand::thread_rng().gen_range(0..ids.len())]]
        };
        for &id in &victims {
            cluster.kill(id);
        }
        note(workload, format!("kill {victims:?}"));
        sleep_between(50, 800).await;
        for &id in &victims {
            restart(workload, id).await;
        }
        note(workload, format!("restart {victims:?}"));
    }
}

/// Adds 10 to 40 ms of one-way latency (by the seed) between nodes in
/// different data centres.
fn set_wan_latency(cluster: &SimCluster) {
    for (n, dc) in DATA_CENTRES.iter().enumerate() {
        for other in &DATA_CENTRES[n + 1..] {
            let delay = between(10, 40);
            for &a in dc.iter() {
                for &b in other.iter() {
                    cluster.faults().set_delay(a, b, delay);
                }
            }
        }
    }
}

async fn dc_failover(workload: &Workload<'_>) {
    let cluster = workload.cluster;
    for _ in 0..2 {
        sleep_between(300, 1_000).await;
        // Lose the leader's data centre, or a big one if it is in the
        // small one (losing one node of five is the crash scenario).
        let leader = leader_or_any(workload).await;
        let dc: Vec<NodeId> = match DATA_CENTRES.iter().find(|dc| dc.contains(&leader)) {
            Some(dc) if dc.len() > 1 => dc.to_vec(),
            _ => DATA_CENTRES[madsim::rand::thread_rng().gen_range(0..2)].to_vec(),
        };
        let rest: Vec<NodeId> = cluster
            .ids()
            .iter()
            .copied()
            .filter(|id| !dc.contains(id))
            .collect();
        let power_loss = madsim::rand::thread_rng().gen_bool(0.5);
        if power_loss {
            for &id in &dc {
                cluster.kill(id);
            }
            note(workload, format!("data centre {dc:?} loses power"));
        } else {
            cluster.partition(&[dc.clone(), rest]);
            note(workload, format!("data centre {dc:?} cut off"));
        }
        // Fail over: the other data centres elect a leader and go on.
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut failover = None;
        while failover.is_none() && Instant::now() < deadline {
            failover = cluster.leader().await.filter(|leader| !dc.contains(leader));
            madsim::time::sleep(Duration::from_millis(20)).await;
        }
        note(workload, format!("failed over to {failover:?}"));
        sleep_between(500, 2_000).await;
        if power_loss {
            for &id in &dc {
                restart(workload, id).await;
            }
        } else {
            cluster.heal_all();
        }
        note(workload, format!("data centre {dc:?} back"));
    }
}

async fn clock_faults(workload: &Workload<'_>) {
    let cluster = workload.cluster;
    for &id in cluster.ids() {
        let drift = madsim::rand::thread_rng().gen_range(-50_000..50_000);
        cluster.clock(id).set_drift_ppm(drift);
        note(workload, format!("node {id} drifts {drift} ppm"));
    }
    let jumps = madsim::rand::thread_rng().gen_range(3..7);
    for n in 0..jumps {
        sleep_between(100, 700).await;
        let (id, offset, ahead) = {
            let mut rng = madsim::rand::thread_rng();
            let ids = cluster.ids();
            (
                ids[rng.gen_range(0..ids.len())],
                Duration::from_secs(rng.gen_range(1..7_200)),
                rng.gen_bool(0.5),
            )
        };
        cluster.clock(id).set_wall_offset(offset, ahead);
        let sign = if ahead { "+" } else { "-" };
        note(
            workload,
            format!("node {id} wall clock jumps to {sign}{offset:?}"),
        );
        if n == 1 {
            let leader = leader_or_any(workload).await;
            cluster.isolate(leader);
            note(workload, format!("isolate {leader}"));
            sleep_between(300, 1_200).await;
            cluster.heal(leader);
        }
    }
}

/// Cuts a follower off while the clients keep writing; the cluster drops a
/// log prefix by retention (point P), and every other node builds a fresh
/// snapshot at some S > P and purges its log before P, as the bus does.
/// Healed (and in two runs of three killed and restarted around the
/// install), the follower must install a snapshot (asserted) and, with
/// it, the bodies of the events at P..=S that retention kept (the final
/// read checks every retained offset on every node); then it is handed
/// the leadership.
async fn snapshot_catch_up(workload: &Workload<'_>) {
    let cluster = workload.cluster;
    sleep_between(300, 800).await;
    let follower = isolate_a_follower(workload).await;
    sleep_between(500, 1_500).await;
    let snapshot = retain_snapshot_and_purge(workload, follower).await;
    cluster.heal(follower);
    // In two runs of three the follower loses power around the install:
    // at a time picked by the seed (mostly before the snapshot arrives),
    // or right after the install is reported.
    let kill = madsim::rand::thread_rng().gen_range(0..3);
    if kill > 0 {
        let until = match kill {
            1 => Instant::now() + between(0, 300),
            _ => Instant::now() + Duration::from_secs(20),
        };
        kill_around_install(workload, follower, snapshot, until).await;
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while cluster
        .snapshot_index(follower)
        .is_none_or(|index| index < snapshot)
    {
        assert!(
            Instant::now() < deadline,
            "follower {follower} did not install the snapshot at {snapshot}"
        );
        madsim::time::sleep(Duration::from_millis(20)).await;
    }
    note(
        workload,
        format!("follower {follower} installed the snapshot"),
    );
    hand_leadership(workload, follower).await;
    note(workload, format!("{follower} leads"));
    sleep_between(500, 1_500).await;
}

/// Cuts off a follower of the current leader, picked by the seed.
async fn isolate_a_follower(workload: &Workload<'_>) -> NodeId {
    let cluster = workload.cluster;
    let leader = leader_or_any(workload).await;
    let others: Vec<NodeId> = cluster
        .ids()
        .iter()
        .copied()
        .filter(|&id| id != leader)
        .collect();
    let follower = others[madsim::rand::thread_rng().gen_range(0..others.len())];
    cluster.isolate(follower);
    note(workload, format!("isolate follower {follower}"));
    follower
}

/// Drops the log prefix by retention, then has every node but the cut-off
/// `follower` snapshot above the retention point and purge below it;
/// returns the lowest of their snapshots' indexes.
async fn retain_snapshot_and_purge(workload: &Workload<'_>, follower: NodeId) -> u64 {
    let cluster = workload.cluster;
    // Writes go on throughout: the snapshot lands above the retention
    // point, and events between the two stay retained.
    let point = cluster.applied_max() + 1;
    let retained = workload
        .write_until_done(Op::Retention {
            log_index_before: point,
        })
        .await;
    assert_eq!(retained, Response::Ok, "retention before {point}");
    sleep_between(100, 400).await;
    // Every node that is not cut off snapshots and purges, as each bus
    // node does on its retention timer: whichever leads when the follower
    // comes back has dropped the prefix and must send a snapshot.
    let mut snapshot = u64::MAX;
    for id in cluster.ids().iter().copied().filter(|&id| id != follower) {
        snapshot = snapshot.min(snapshot_and_purge(workload, id, point).await);
    }
    note(
        workload,
        format!("retention before {point}, snapshots at {snapshot} and above, logs purged"),
    );
    snapshot
}

/// Kills `follower` once it installed the snapshot at `snapshot` or at
/// `until`, whichever comes first, and restarts it.
async fn kill_around_install(
    workload: &Workload<'_>,
    follower: NodeId,
    snapshot: u64,
    until: Instant,
) {
    let cluster = workload.cluster;
    while Instant::now() < until
        && cluster
            .snapshot_index(follower)
            .is_none_or(|index| index < snapshot)
    {
        madsim::time::sleep(Duration::from_millis(5)).await;
    }
    let installed = cluster
        .snapshot_index(follower)
        .is_some_and(|index| index >= snapshot);
    cluster.kill(follower);
    note(
        workload,
        format!("kill follower {follower} (snapshot installed: {installed})"),
    );
    sleep_between(50, 300).await;
    restart(workload, follower).await;
    note(workload, format!("restart follower {follower}"));
}

/// Hands `follower` the leadership: cuts off whoever else leads until it
/// wins an election (its log is as long as anyone's, so it can).
async fn hand_leadership(workload: &Workload<'_>, follower: NodeId) {
    let cluster = workload.cluster;
    let deadline = Instant::now() + Duration::from_secs(30);
    while cluster.leader().await != Some(follower) {
        assert!(Instant::now() < deadline, "{follower} did not take over");
        if let Some(current) = cluster.leader().await {
            cluster.isolate(current);
            note(workload, format!("isolate leader {current}"));
            let wait = Instant::now() + Duration::from_secs(3);
            while Instant::now() < wait
                && cluster
                    .leader()
                    .await
                    .is_none_or(|leader| leader == current)
            {
                madsim::time::sleep(Duration::from_millis(20)).await;
            }
            cluster.heal(current);
        }
        madsim::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Builds a fresh snapshot on node `id` (above the retention `point`, with
/// writes going on) and purges its log before `point`; returns the
/// snapshot's index.
async fn snapshot_and_purge(workload: &Workload<'_>, id: NodeId, point: u64) -> u64 {
    let cluster = workload.cluster;
    let raft = cluster.raft(id).expect("the node runs");
    let applied = || {
        cluster
            .with_state(id, |state| state.last_applied_index())
            .flatten()
            .unwrap_or(0)
    };
    // The retention entry lies at `point` or above: wait until it applied.
    let deadline = Instant::now() + Duration::from_secs(10);
    while applied() < point {
        assert!(Instant::now() < deadline, "node {id} did not apply {point}");
        madsim::time::sleep(Duration::from_millis(20)).await;
    }
    let fresh = applied();
    raft.trigger().snapshot().await.expect("trigger a snapshot");
    let deadline = Instant::now() + Duration::from_secs(10);
    while cluster.snapshot_index(id).is_none_or(|index| index < fresh) {
        assert!(
            Instant::now() < deadline,
            "node {id} built no snapshot at {fresh} or above"
        );
        madsim::time::sleep(Duration::from_millis(20)).await;
    }
    raft.trigger()
        .purge_log(point - 1)
        .await
        .expect("trigger a purge");
    let deadline = Instant::now() + Duration::from_secs(10);
    while cluster
        .purged_index(id)
        .is_none_or(|index| index + 1 < point)
    {
        assert!(
            Instant::now() < deadline,
            "node {id} did not purge before {point}"
        );
        madsim::time::sleep(Duration::from_millis(20)).await;
    }
    cluster.snapshot_index(id).expect("built")
}

/// Disk faults on one node at a time (a minority): EIO on a share of its
/// writes or syncs, or a full disk, for a while, then an operator kills
/// and restarts it (with room again). On one node per run, bit rot: while
/// it is down a bit of one of its files flips, durable copy included; it
/// must then start cleanly (the damage was in a torn tail, or in bytes it
/// never reads) or refuse to open, never serve damaged data.
async fn disk_faults(workload: &Workload<'_>) {
    let cluster = workload.cluster;
    let ids = cluster.ids().to_vec();
    let rotting = ids[madsim::rand::thread_rng().gen_range(0..ids.len())];
    let rounds = madsim::rand::thread_rng().gen_range(3..6);
    for _ in 0..rounds {
        sleep_between(200, 700).await;
        let (node, fault) = {
            let mut rng = madsim::rand::thread_rng();
            (ids[rng.gen_range(0..ids.len())], rng.gen_range(0..3))
        };
        if workload.written_off.borrow().contains(&node) {
            continue;
        }
        let disk = cluster.disks().disk(node);
        let crash_disk = disk.crash_disk();
        match fault {
            0 => fail_io(workload, node, crash_disk).await,
            1 => fill_disk(workload, node, crash_disk).await,
            _ if node == rotting => {
                cluster.kill(node);
                rot_a_bit(workload, node, crash_disk);
            }
            _ => continue,
        }
        cluster.kill(node);
        note(workload, format!("restart node {node}"));
        restart(workload, node).await;
    }
}

/// EIO on a fifth of the node's writes or (by the seed) syncs, for a
/// while.
async fn fail_io(workload: &Workload<'_>, node: NodeId, crash_disk: &CrashDisk) {
    let op = if madsim::rand::thread_rng().gen_bool(0.5) {
        FaultOp::Sync
    } else {
        FaultOp::Write
    };
    crash_disk.set_fail_rate(op, 200_000);
    note(workload, format!("node {node}: EIO on 20 % of {op:?}"));
    sleep_between(300, 800).await;
    crash_disk.set_fail_rate(op, 0);
}

/// The node's disk full (less than 8 KiB of room left), for a while.
async fn fill_disk(workload: &Workload<'_>, node: NodeId, crash_disk: &CrashDisk) {
    let used: u64 = crash_disk
        .list()
        .unwrap_or_default()
        .iter()
        .filter_map(|name| crash_disk.read_file(name).ok())
        .map(|bytes| bytes.len() as u64)
        .sum();
    let room = madsim::rand::thread_rng().gen_range(0..8_192);
    crash_disk.set_capacity(Some(used + room));
    note(
        workload,
        format!("node {node}: disk full at {} bytes", used + room),
    );
    sleep_between(300, 800).await;
    crash_disk.set_capacity(None);
}

/// Flips a bit of one of the (killed) node's files, durable copy
/// included, and writes the node off: it may refuse to start again.
fn rot_a_bit(workload: &Workload<'_>, node: NodeId, crash_disk: &CrashDisk) {
    let files = crash_disk.list().unwrap_or_default();
    if files.is_empty() {
        return;
    }
    let (name, bit) = {
        let mut rng = madsim::rand::thread_rng();
        let name = files[rng.gen_range(0..files.len())].clone();
        let size = crash_disk.read_file(&name).map_or(0, |b| b.len() as u64);
        (name, rng.gen_range(0..size.max(1) * 8))
    };
    if crash_disk.flip_bit(&name, bit).is_ok() {
        workload.written_off.borrow_mut().insert(node);
        note(
            workload,
            format!("node {node}: bit {bit} of {name} flipped"),
        );
    }
}

//! A crash at any point of a snapshot install (with the bodies of its
//! retained events, the tail) leaves a directory that opens to the old
//! state or to the whole install, never to a state whose retained events
//! lack bodies; and the directory verifies either way.
//!
//! The receiver's disk is a `CrashDisk` behind a wrapper that lets the
//! install make N changes (writes, syncs, creates, renames, removes) and
//! fails every call after, as a process that lost power would; then the
//! disk crashes (unsynced writes kept, torn or dropped by the seed) and
//! the node opens again. N runs from 0 until the install completes.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use openraft::async_runtime::WatchReceiver;
use openraft::storage::{RaftLogReader, RaftLogStorage, RaftStateMachine};
use sluice_audit::VerifyOptions;
use sluice_audit::verify::verify_disk;
/// Tokio over a crash-faithful disk, timed by the system clock.
type CrashEnv = Assembled<OsRuntime, CrashDisk, OsClock>;
use sluice_core::bus::{Bus, BusConfig, Message};
use sluice_core::io::Assembled;
use sluice_core::io::os::{OsClock, OsRuntime};
use sluice_core::io::{CrashDisk, Disk, DiskFile};
use sluice_core::log::{Options, Record};
use sluice_core::raft::snapshot::testing::tail_indexes;
use sluice_core::raft::{Durability, LogId, LogStore, SnapshotData, StateMachineStore};
use sluice_model::state::TopicConfig;

const SEGMENT_SIZE: u64 = 4096;
/// Crash seeds per crash point: each decides which unsynced writes survive.
const SEEDS: i64 = 8;
const TOPIC: &str = "orders";

type Meta = openraft::storage::SnapshotMeta<
    sluice_core::raft::CommittedLeaderId,
    sluice_core::raft::NodeId,
    sluice_core::raft::Node,
>;

/// A disk that allows a number of changes, then fails every call.
#[derive(Debug, Clone)]
struct Stopping {
    disk: CrashDisk,
    /// Changes left; below zero, the power is gone.
    left: Arc<AtomicI64>,
}

#[derive(Debug)]
struct StoppingFile {
    file: <CrashDisk as Disk>::File,
    left: Arc<AtomicI64>,
}

fn spend(left: &AtomicI64) -> std::io::Result<()> {
    if left.fetch_sub(1, Ordering::SeqCst) > 0 {
        Ok(())
    } else {
        Err(std::io::Error::other("the power is gone"))
    }
}

fn alive(left: &AtomicI64) -> std::io::Result<()> {
    if left.load(Ordering::SeqCst) >= 0 {
        Ok(())
    } else {
        Err(std::io::Error::other("the power is gone"))
    }
}

impl Stopping {
    fn new(disk: CrashDisk) -> Self {
        Stopping {
            disk,
            left: Arc::new(AtomicI64::new(i64::MAX)),
        }
    }

    fn allow(&self, changes: i64) {
        self.left.store(changes, Ordering::SeqCst);
    }

    fn stopped(&self) -> bool {
        self.left.load(Ordering::SeqCst) < 0
    }

    fn wrap(&self, file: <CrashDisk as Disk>::File) -> StoppingFile {
        StoppingFile {
            file,
            left: Arc::clone(&self.left),
        }
    }
}

impl Disk for Stopping {
    type File = StoppingFile;

    fn create(&self, name: &str) -> std::io::Result<StoppingFile> {
        spend(&self.left)?;
        self.disk.create(name).map(|file| self.wrap(file))
    }

    fn open(&self, name: &str) -> std::io::Result<StoppingFile> {
        alive(&self.left)?;
        self.disk.open(name).map(|file| self.wrap(file))
    }

    fn list(&self) -> std::io::Result<Vec<String>> {
        alive(&self.left)?;
        self.disk.list()
    }

    fn remove(&self, name: &str) -> std::io::Result<()> {
        spend(&self.left)?;
        self.disk.remove(name)
    }

    fn rename(&self, source: &str, target: &str) -> std::io::Result<()> {
        spend(&self.left)?;
        self.disk.rename(source, target)
    }

    fn sync_dir(&self) -> std::io::Result<()> {
        spend(&self.left)?;
        self.disk.sync_dir()
    }
}

impl DiskFile for StoppingFile {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        alive(&self.left)?;
        self.file.read_at(offset, buf)
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> std::io::Result<()> {
        spend(&self.left)?;
        self.file.write_at(offset, buf)
    }

    fn size(&self) -> std::io::Result<u64> {
        alive(&self.left)?;
        self.file.size()
    }

    fn set_len(&self, size: u64) -> std::io::Result<()> {
        spend(&self.left)?;
        self.file.set_len(size)
    }

    fn sync_data(&self) -> std::io::Result<()> {
        spend(&self.left)?;
        self.file.sync_data()
    }

    fn map(&self) -> std::io::Result<Bytes> {
        alive(&self.left)?;
        self.file.map()
    }
}

fn config() -> BusConfig {
    BusConfig {
        segment_size: SEGMENT_SIZE,
        retention_interval: None,
        ..BusConfig::default()
    }
}

fn options() -> Options {
    Options {
        segment_size: SEGMENT_SIZE,
        ..Options::default()
    }
}

/// Every file of `disk`, as bytes.
fn files(disk: &CrashDisk) -> Vec<(String, Vec<u8>)> {
    let names = disk.list().unwrap();
    names
        .into_iter()
        .map(|name| {
            let bytes = disk.read_file(&name).unwrap();
            (name, bytes)
        })
        .collect()
}

/// What the sender sends: a snapshot above its retention point with the
/// tail in between, and the records of that tail as its log holds them.
struct Sent {
    meta: Meta,
    bytes: Vec<u8>,
    last: LogId,
    tail: Vec<Record>,
}

async fn publish(bus: &Bus<CrashEnv>, tag: &str, count: usize) {
    let mut producer = bus.producer().await.unwrap();
    for i in 0..count {
        let payload = format!("{tag}-{i:04}-{}", "x".repeat(40));
        producer
            .publish(Message::new(TOPIC, payload).key(format!("k{i}")))
            .await
            .unwrap();
    }
}

async fn sender() -> Sent {
    let disk = CrashDisk::new(1);
    let bus = Bus::open_on(disk.clone(), Arc::new(OsClock::new()), config())
        .await
        .unwrap();
    let topic = TopicConfig {
        retention_bytes: Some(3 * SEGMENT_SIZE),
        ..TopicConfig::default()
    };
    bus.create_topic(TOPIC, 2, topic).await.unwrap();
    publish(&bus, "a", 120).await;
    let point = bus.enforce_retention().await.unwrap();
    assert!(point > 1, "retention dropped nothing");
    publish(&bus, "b", 30).await;
    let raft = bus.raft();
    let applied = raft.metrics().borrow_watched().last_applied;
    raft.trigger().snapshot().await.unwrap();
    raft.wait(Some(Duration::from_secs(10)))
        .metrics(|m| m.snapshot >= applied, "a fresh snapshot")
        .await
        .unwrap();
    publish(&bus, "c", 10).await;
    let snapshot = raft.get_snapshot().await.unwrap().expect("a snapshot");
    let meta = snapshot.meta.clone();
    let bytes = snapshot.snapshot.into_transfer_bytes().unwrap();
    let last = meta.last_log_id.expect("covers entries");
    let range = tail_indexes(&bytes).expect("the snapshot carries a tail");
    assert_eq!(*range.start(), point);
    assert_eq!(*range.end(), last.index);
    bus.close().await.unwrap();
    let store =
        LogStore::<CrashEnv>::open(disk, Arc::new(OsClock::new()), options(), Durability::Sync)
            .unwrap();
    let mut tail = Vec::new();
    store
        .reader()
        .read_records(point, last.index + 1, &mut tail)
        .unwrap();
    Sent {
        meta,
        bytes,
        last,
        tail,
    }
}

/// A receiver with a log of its own (another history, as a follower
/// with entries the cluster never committed has), closed cleanly.
/// Returns its files and its last log id.
async fn receiver_files() -> (Vec<(String, Vec<u8>)>, LogId) {
    let disk = CrashDisk::new(2);
    let bus = Bus::open_on(disk.clone(), Arc::new(OsClock::new()), config())
        .await
        .unwrap();
    bus.create_topic(TOPIC, 2, TopicConfig::default())
        .await
        .unwrap();
    publish(&bus, "old", 60).await;
    let last = bus.raft().metrics().borrow_watched().last_log_index;
    bus.close().await.unwrap();
    let store = LogStore::<CrashEnv>::open(
        disk.clone(),
        Arc::new(OsClock::new()),
        options(),
        Durability::Sync,
    )
    .unwrap();
    let mut records = Vec::new();
    let last = last.expect("entries");
    store
        .reader()
        .read_records(last, last + 1, &mut records)
        .unwrap();
    drop(store);
    let last = sluice_core::raft::log_id(records[0].term, last);
    (files(&disk), last)
}

/// Opens the store and the state machine on `disk` and restores the state
/// machine as openraft does on start.
async fn reopen<D: Disk + Clone>(
    disk: D,
) -> (
    LogStore<Assembled<OsRuntime, D, OsClock>>,
    StateMachineStore<Assembled<OsRuntime, D, OsClock>>,
) {
    let mut store = LogStore::<Assembled<OsRuntime, D, OsClock>>::open(
        disk.clone(),
        Arc::new(OsClock::new()),
        options(),
        Durability::Sync,
    )
    .unwrap_or_else(|e| panic!("the log does not open after the crash: {e}"));
    let mut machine = StateMachineStore::<Assembled<OsRuntime, D, OsClock>>::new(disk);
    machine.link_chain(store.get_log_reader().await);
    if let Some(snapshot) = machine.get_current_snapshot().await.unwrap() {
        machine
            .install_snapshot(&snapshot.meta, snapshot.snapshot)
            .await
            .unwrap();
    }
    (store, machine)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_anywhere_in_an_install_recovers_to_old_or_new() {
    let sent = sender().await;
    let (baseline, baseline_last) = receiver_files().await;
    let mut outcomes = [0u32; 2];
    for run in 0.. {
        let (changes, seed) = (run / SEEDS, run % SEEDS);
        let disk = CrashDisk::new(seed as u64);
        for (name, bytes) in &baseline {
            disk.write_file_raw(name, bytes).unwrap();
        }
        let stopping = Stopping::new(disk.clone());
        let completed = {
            let mut store = LogStore::<Assembled<OsRuntime, Stopping, OsClock>>::open(
                stopping.clone(),
                Arc::new(OsClock::new()),
                options(),
                Durability::Sync,
            )
            .unwrap();
            let mut machine =
                StateMachineStore::<Assembled<OsRuntime, Stopping, OsClock>>::new(stopping.clone());
            machine.link_chain(store.reader());
            stopping.allow(changes);
            let data = SnapshotData::from_bytes(sent.bytes.clone());
            let installed = machine.install_snapshot(&sent.meta, data).await;
            // openraft purges up to the snapshot once it is installed.
            let purged = match installed {
                Ok(()) => store.purge(sent.last).await,
                Err(error) => Err(error),
            };
            purged.is_ok() && !stopping.stopped()
        };
        disk.crash();
        let (mut store, mut machine) = reopen(disk.clone()).await;
        let (applied, _) = machine.applied_state().await.unwrap();
        let state = store.get_log_state().await.unwrap();
        if applied == Some(sent.last) {
            // The whole install: every body of the tail, as the sender has
            // it, and Raft's log after the snapshot.
            outcomes[1] += 1;
            let mut records = Vec::new();
            store
                .reader()
                .read_records(sent.tail[0].index, sent.last.index + 1, &mut records)
                .unwrap();
            assert_eq!(records, sent.tail, "after {changes} changes, seed {seed}");
            assert_eq!(state.last_purged_log_id, Some(sent.last));
            assert_eq!(state.last_log_id, Some(sent.last));
        } else {
            // The old state: the receiver's own log, whole.
            outcomes[0] += 1;
            assert_eq!(applied, None, "after {changes} changes, seed {seed}");
            assert_eq!(
                state.last_log_id,
                Some(baseline_last),
                "after {changes} changes, seed {seed}"
            );
            let mut reader = store.get_log_reader().await;
            let entries =
                RaftLogReader::<sluice_core::raft::TypeConfig<CrashEnv>>::try_get_log_entries(
                    &mut reader,
                    0..,
                )
                .await
                .unwrap();
            assert_eq!(
                entries.len() as u64,
                baseline_last.index + 1,
                "after {changes} changes, seed {seed}"
            );
        }
        drop((store, machine));
        if let Err(error) = verify_disk(&disk, &VerifyOptions::default()) {
            panic!("after {changes} changes, seed {seed}, the directory does not verify: {error}");
        }
        if completed && seed + 1 == SEEDS {
            assert_eq!(applied, Some(sent.last));
            retention_drops_the_bodies_raft_no_longer_reads(disk, &sent).await;
            break;
        }
    }
    assert!(outcomes[0] > 0 && outcomes[1] > 0, "{outcomes:?}");
}

/// After an install, retention removes bodies below Raft's purge point
/// (openraft no longer knows them), and never an entry Raft's log holds.
async fn retention_drops_the_bodies_raft_no_longer_reads(disk: CrashDisk, sent: &Sent) {
    let (mut store, _machine) = reopen(disk.clone()).await;
    let reader = store.reader();
    let first = sent.tail[0].index;
    assert_eq!(reader.bounds().0, first);
    assert_eq!(reader.raft_first(), sent.last.index + 1);
    let kept = reader.purge_bodies_before(sent.last.index + 100).unwrap();
    assert!(
        kept > first && kept <= sent.last.index + 1,
        "first kept {kept}"
    );
    let mut records = Vec::new();
    reader
        .read_records(kept, sent.last.index + 1, &mut records)
        .unwrap();
    assert_eq!(records[..], sent.tail[(kept - first) as usize..]);
    let state = store.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(sent.last));
    drop(store);
    disk.crash();
    let (store, _machine) = reopen(disk.clone()).await;
    assert_eq!(store.reader().bounds().0, kept);
    drop(store);
    verify_disk(&disk, &VerifyOptions::default()).unwrap();
}

//! A node that installs a snapshot past the end of its log anchors its
//! hash chain with the chain hash the snapshot carries, so the frames it
//! appends next hash exactly as the sender's: the chain stays identical
//! across replicas.

use std::sync::Arc;
use std::time::Duration;

use openraft::storage::{RaftLogStorage, RaftStateMachine};
use sluice_audit::verify::ChainStart;
use sluice_audit::{VerifyOptions, verify};
use sluice_core::bus::{Bus, BusConfig, Message};
use sluice_core::io::os::{OsClock, OsDisk, OsEnv};
use sluice_core::log::{Entry, Log, Options, PersistMode};
use sluice_core::raft::{Durability, LogStore, StateMachineStore};
use sluice_model::state::TopicConfig;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_installed_snapshot_anchors_the_chain_like_the_sender() {
    // The sender: events, a snapshot at index S, then more events.
    let source = tempfile::tempdir().unwrap();
    let config = BusConfig {
        retention_interval: None,
        ..BusConfig::default()
    };
    let bus = Bus::open_with_config(source.path(), config).await.unwrap();
    bus.create_topic("t", 1, TopicConfig::default())
        .await
        .unwrap();
    let mut producer = bus.producer().await.unwrap();
    for i in 0..10 {
        producer
            .publish(Message::new("t", format!("a{i}")))
            .await
            .unwrap();
    }
    let raft = bus.raft();
    raft.trigger().snapshot().await.unwrap();
    raft.wait(Some(Duration::from_secs(10)))
        .metrics(|m| m.snapshot.is_some(), "a snapshot exists")
        .await
        .unwrap();
    for i in 0..3 {
        producer
            .publish(Message::new("t", format!("b{i}")))
            .await
            .unwrap();
    }
    drop(producer);
    bus.close().await.unwrap();
    // One disk for both: a directory has one writer (its lock).
    let source_disk = OsDisk::open(source.path()).unwrap();
    let mut machine = StateMachineStore::<OsEnv>::new(source_disk.clone());
    let snapshot = machine.get_current_snapshot().await.unwrap().unwrap();
    let last = snapshot.meta.last_log_id.unwrap();
    let sender = Log::open(source_disk, Arc::new(OsClock::new()), Options::default()).unwrap();
    assert!(
        sender.next_index() > last.index + 1,
        "entries after the snapshot"
    );

    // The receiver: an empty store that installs the snapshot and purges
    // up to it, as openraft does.
    let target = tempfile::tempdir().unwrap();
    {
        let disk = OsDisk::open(target.path()).unwrap();
        let mut store = LogStore::<OsEnv>::open(
            disk.clone(),
            Arc::new(OsClock::new()),
            Options::default(),
            Durability::Sync,
        )
        .unwrap();
        let mut receiver = StateMachineStore::<OsEnv>::new(disk);
        receiver.link_chain(store.reader());
        receiver
            .install_snapshot(&snapshot.meta, snapshot.snapshot.clone())
            .await
            .unwrap();
        store.purge(last).await.unwrap();
    }
    // Append the sender's next entries as replication would: every one
    // hashes as on the sender.
    let mut log = Log::open(
        OsDisk::open(target.path()).unwrap(),
        Arc::new(OsClock::new()),
        Options::default(),
    )
    .unwrap();
    assert_eq!(log.next_index(), last.index + 1);
    assert_eq!(log.chain_head(), sender.chain_hash_at(last.index).unwrap());
    let mut records = Vec::new();
    sender
        .read(last.index + 1..sender.next_index(), &mut records)
        .unwrap();
    let entries: Vec<Entry<'_>> = records
        .iter()
        .map(|r| Entry {
            index: r.index,
            term: r.term,
            kind: r.kind,
            timestamp_ms: r.timestamp_ms,
            payload: &r.payload,
            payload_digest: None,
        })
        .collect();
    log.append(&entries, PersistMode::SyncData).unwrap();
    assert_eq!(log.chain_head(), sender.chain_head());
    for record in &records {
        assert_eq!(log.chain_hash_at(record.index).unwrap(), record.hash);
    }
    drop(log);
    let report = verify(target.path(), &VerifyOptions::default()).unwrap();
    assert_eq!(report.chain_start, ChainStart::Anchored);
    assert_eq!(report.head, sender.chain_head());
}

//! The embedded bus end to end: publish, consume, reopen, retries, fencing,
//! transactions, and crashes on the simulated disk.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use sluice_core::bus::{Bus, BusConfig, BusError, Consumer, Message};
use sluice_core::io::CrashEnv;
use sluice_core::io::{CrashDisk, CrashPolicy, Disk, Env, ManualClock};
use sluice_model::state::{CommitError, PublishError, StateError, TopicConfig, TxnError};

type CrashBus = Bus<CrashEnv>;

const WAIT: Duration = Duration::from_millis(200);

async fn open_crash(disk: &CrashDisk) -> CrashBus {
    let clock = Arc::new(ManualClock::new(
        UNIX_EPOCH + Duration::from_secs(1_700_000_000),
    ));
    let config = BusConfig {
        segment_size: 64 * 1024,
        ..BusConfig::default()
    };
    Bus::open_on(disk.clone(), clock, config)
        .await
        .expect("open bus")
}

/// Reads everything the group has not committed, from `topic`.
async fn drain(consumer: &mut Consumer<CrashEnv>) -> Vec<(u32, u64, Vec<u8>)> {
    let mut out = Vec::new();
    loop {
        let deliveries = consumer.poll(1000, WAIT).await.expect("poll");
        if deliveries.is_empty() {
            return out;
        }
        out.extend(
            deliveries
                .into_iter()
                .map(|d| (d.partition, d.offset, d.payload.to_vec())),
        );
    }
}

/// Creates topics `in` and `out` (2 partitions each) and publishes `count`
/// inputs `{prefix}{i}` to `in`.
async fn inputs_and_outputs(bus: &CrashBus, count: usize, prefix: &str) {
    bus.create_topic("in", 2, TopicConfig::default())
        .await
        .unwrap();
    bus.create_topic("out", 2, TopicConfig::default())
        .await
        .unwrap();
    let mut source = bus.producer().await.unwrap();
    for i in 0..count {
        let message = Message::new("in", format!("{prefix}{i}"));
        source.publish(message).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_consume_and_reopen_without_gap_or_duplicate() {
    let disk = CrashDisk::new(1);
    let bus = open_crash(&disk).await;
    bus.create_topic("orders", 3, TopicConfig::default())
        .await
        .unwrap();
    let mut producer = bus.producer().await.unwrap();
    let mut receipts = Vec::new();
    for i in 0..30u32 {
        let message =
            Message::new("orders", format!("order {i}")).key(format!("account-{}", i % 5));
        receipts.push(producer.publish(message).await.unwrap());
    }
    // Offsets are contiguous per partition, in publish order (FIFO).
    let mut by_partition: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    for receipt in &receipts {
        by_partition
            .entry(receipt.partition)
            .or_default()
            .push(receipt.offset);
    }
    for offsets in by_partition.values() {
        assert_eq!(*offsets, (0..offsets.len() as u64).collect::<Vec<_>>());
    }
    let mut consumer = bus.consumer("billing", "m1", &["orders"]).await.unwrap();
    let first = consumer.poll(10, WAIT).await.unwrap();
    assert_eq!(first.len(), 10);
    consumer.commit().await.unwrap();
    bus.close().await.unwrap();

    let bus = open_crash(&disk).await;
    let mut consumer = bus.consumer("billing", "m1", &["orders"]).await.unwrap();
    let rest = drain(&mut consumer).await;
    let mut all: Vec<Vec<u8>> = first.iter().map(|d| d.payload.to_vec()).collect();
    all.extend(rest.iter().map(|(_, _, p)| p.clone()));
    let unique: BTreeSet<_> = all.iter().cloned().collect();
    assert_eq!(all.len(), 30, "no gap and no duplicate across the reopen");
    assert_eq!(unique.len(), 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_publish_is_appended_once_with_its_original_offset() {
    let disk = CrashDisk::new(2);
    let bus = open_crash(&disk).await;
    bus.create_topic("payments", 1, TopicConfig::default())
        .await
        .unwrap();
    let mut producer = bus.producer().await.unwrap();
    let pending = producer
        .send(Message::new("payments", "pay 100"))
        .await
        .unwrap();
    let event = pending.event().clone();
    let original = pending.wait().await.unwrap();
    // The client timed out and cannot know: it sends the same event again.
    let retried = producer.resend(event).await.unwrap().wait().await.unwrap();
    assert!(retried.duplicate);
    assert_eq!(retried.offset, original.offset);
    let next = producer
        .publish(Message::new("payments", "pay 200"))
        .await
        .unwrap();
    assert_eq!(next.offset, original.offset + 1);
    let mut consumer = bus.consumer("audit", "m1", &["payments"]).await.unwrap();
    let payloads: Vec<_> = drain(&mut consumer)
        .await
        .into_iter()
        .map(|(_, _, p)| p)
        .collect();
    assert_eq!(payloads, vec![b"pay 100".to_vec(), b"pay 200".to_vec()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_from_a_stale_generation_is_rejected() {
    let disk = CrashDisk::new(3);
    let bus = open_crash(&disk).await;
    bus.create_topic("events", 4, TopicConfig::default())
        .await
        .unwrap();
    let mut producer = bus.producer().await.unwrap();
    for i in 0..8 {
        producer
            .publish(Message::new("events", format!("e{i}")))
            .await
            .unwrap();
    }
    let mut zombie = bus.consumer("g", "a", &["events"]).await.unwrap();
    assert_eq!(zombie.poll(100, WAIT).await.unwrap().len(), 8);
    let generation = zombie.generation();
    // A second member joins: the group moves to a new generation, and the
    // first member's commit still carries the old one.
    let mut fresh = bus.consumer("g", "b", &["events"]).await.unwrap();
    assert!(fresh.generation() > generation);
    let error = zombie.commit().await.unwrap_err();
    assert!(
        matches!(
            error,
            BusError::State(StateError::Commit(CommitError::StaleGeneration { .. }))
        ),
        "{error}"
    );
    // The new member owns half the partitions and starts from the last
    // commit: nothing was committed, so it sees its partitions' events.
    assert_eq!(drain(&mut fresh).await.len(), 4);
    fresh.commit().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopening_a_named_producer_fences_the_old_instance() {
    let disk = CrashDisk::new(4);
    let bus = open_crash(&disk).await;
    bus.create_topic("t", 1, TopicConfig::default())
        .await
        .unwrap();
    let mut old = bus.producer_named("pricer").await.unwrap();
    old.publish(Message::new("t", "a")).await.unwrap();
    let mut new = bus.producer_named("pricer").await.unwrap();
    assert_eq!(new.identity().0, old.identity().0);
    assert!(new.identity().1 > old.identity().1);
    let error = old.publish(Message::new("t", "b")).await.unwrap_err();
    assert!(
        matches!(
            error,
            BusError::Publish(PublishError::ProducerFenced { .. })
        ),
        "{error}"
    );
    new.publish(Message::new("t", "c")).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_commits_outputs_and_input_offsets_together() {
    let disk = CrashDisk::new(5);
    let bus = open_crash(&disk).await;
    inputs_and_outputs(&bus, 6, "").await;
    let mut worker = bus.producer_named("doubler").await.unwrap();
    let mut consumer = bus.consumer("doublers", "w1", &["in"]).await.unwrap();
    let inputs = consumer.poll(3, WAIT).await.unwrap();
    let mut transaction = consumer.transaction(&mut worker);
    for input in &inputs {
        let value: u32 = std::str::from_utf8(&input.payload)
            .unwrap()
            .parse()
            .unwrap();
        transaction
            .publish(Message::new("out", format!("{}", value * 2)))
            .unwrap();
    }
    let receipts = transaction.commit().await.unwrap();
    assert_eq!(receipts.len(), 3);
    // A transaction from a stale generation is refused whole: poll, then
    // another member joins before the transaction commits.
    let more = consumer.poll(3, WAIT).await.unwrap();
    assert!(!more.is_empty());
    let mut other = bus.consumer("doublers", "w2", &["in"]).await.unwrap();
    let before = bus.describe_topic("out").unwrap();
    let mut transaction = consumer.transaction(&mut worker);
    transaction
        .publish(Message::new("out", "must not appear"))
        .unwrap();
    let error = transaction.commit().await.unwrap_err();
    assert!(
        matches!(
            error,
            BusError::Transaction(TxnError::Commit(CommitError::StaleGeneration { .. }))
        ),
        "{error}"
    );
    assert_eq!(
        bus.describe_topic("out").unwrap().partitions,
        before.partitions,
        "no output of a refused transaction"
    );
    // The producer's sequences were rolled back: it publishes on.
    worker
        .publish(Message::new("out", "after the refusal"))
        .await
        .unwrap();
    // The other member resumes from the committed offsets.
    let rest = drain(&mut other).await;
    let committed_inputs: BTreeSet<_> = inputs.iter().map(|d| (d.partition, d.offset)).collect();
    assert!(
        rest.iter()
            .all(|(p, o, _)| !committed_inputs.contains(&(*p, *o)))
    );
}

/// Crashes the disk at random points while producers publish, reopens, and
/// checks that every acknowledged event is there exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashes_at_random_points_lose_and_duplicate_nothing_acknowledged() {
    let disk = CrashDisk::new(6);
    let mut acknowledged: BTreeSet<Vec<u8>> = BTreeSet::new();
    let mut sent = 0u32;
    for round in 0..6u32 {
        let bus = open_crash(&disk).await;
        bus.create_topic("ledger", 2, TopicConfig::default())
            .await
            .unwrap();
        let mut producer = bus.producer().await.unwrap();
        let mut pending = Vec::new();
        let burst = 20 + round * 17;
        for _ in 0..burst {
            let payload = format!("entry {sent}").into_bytes();
            sent += 1;
            pending.push((
                payload.clone(),
                producer
                    .send(Message::new("ledger", payload))
                    .await
                    .unwrap(),
            ));
        }
        // Wait for about half, then pull the plug with the rest in flight.
        let keep = pending.len() / 2;
        let mut rest = pending.split_off(keep);
        for (payload, receipt) in pending {
            receipt.wait().await.expect("acknowledged");
            acknowledged.insert(payload);
        }
        let outcome = disk.crash();
        assert!(outcome.writes_kept + outcome.writes_torn + outcome.writes_dropped < 100_000);
        for (payload, receipt) in rest.drain(..) {
            // An acknowledgement that raced the crash is still a promise.
            let answer = tokio::time::timeout(Duration::from_secs(10), receipt.wait()).await;
            if matches!(answer, Ok(Ok(_))) {
                acknowledged.insert(payload);
            }
        }
        drop(producer);
        drop(bus);
    }
    let bus = open_crash(&disk).await;
    let mut consumer = bus.consumer("check", "m", &["ledger"]).await.unwrap();
    let seen: Vec<Vec<u8>> = drain(&mut consumer)
        .await
        .into_iter()
        .map(|(_, _, p)| p)
        .collect();
    let unique: BTreeSet<_> = seen.iter().cloned().collect();
    assert_eq!(unique.len(), seen.len(), "no event appears twice");
    let lost: Vec<_> = acknowledged.difference(&unique).collect();
    assert!(lost.is_empty(), "acknowledged events lost: {lost:?}");
}

/// While a sync is in flight nothing it covers is acknowledged: crash with
/// syncs held, and everything acknowledged before must still be there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_is_acknowledged_only_after_its_sync() {
    let disk = CrashDisk::new(7);
    let bus = open_crash(&disk).await;
    bus.create_topic("t", 1, TopicConfig::default())
        .await
        .unwrap();
    let mut producer = bus.producer().await.unwrap();
    let mut acknowledged = BTreeSet::new();
    for i in 0..5 {
        let payload = format!("before {i}");
        producer
            .publish(Message::new("t", payload.clone()))
            .await
            .unwrap();
        acknowledged.insert(payload.into_bytes());
    }
    disk.hold_syncs();
    let mut pending = Vec::new();
    for i in 0..5 {
        let payload = format!("during {i}");
        pending.push((
            payload.clone(),
            producer.send(Message::new("t", payload)).await.unwrap(),
        ));
    }
    // Give a wrong implementation every chance to acknowledge early.
    tokio::time::sleep(Duration::from_millis(300)).await;
    disk.crash_with(CrashPolicy::DropAll);
    for (payload, receipt) in pending {
        let answer = tokio::time::timeout(Duration::from_secs(5), receipt.wait()).await;
        if matches!(answer, Ok(Ok(_))) {
            acknowledged.insert(payload.into_bytes());
        }
    }
    drop(producer);
    drop(bus);
    let bus = open_crash(&disk).await;
    let mut consumer = bus.consumer("check", "m", &["t"]).await.unwrap();
    let seen: BTreeSet<Vec<u8>> = drain(&mut consumer)
        .await
        .into_iter()
        .map(|(_, _, p)| p)
        .collect();
    let lost: Vec<_> = acknowledged
        .difference(&seen)
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect();
    assert!(lost.is_empty(), "acknowledged but lost: {lost:?}");
    assert!(seen.len() >= 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_drops_old_segments_but_not_what_a_group_still_needs() {
    let disk = CrashDisk::new(8);
    let clock = Arc::new(ManualClock::new(
        UNIX_EPOCH + Duration::from_secs(1_700_000_000),
    ));
    let config = BusConfig {
        segment_size: 8192,
        retention_interval: None,
        ..BusConfig::default()
    };
    let bus: CrashBus = Bus::open_on(disk.clone(), clock, config).await.unwrap();
    let limited = TopicConfig {
        retention_bytes: Some(20_000),
        retention_ms: None,
    };
    bus.create_topic("metrics", 1, limited).await.unwrap();
    let mut producer = bus.producer().await.unwrap();
    for i in 0..300 {
        producer
            .publish(Message::new("metrics", format!("{i:0>200}")))
            .await
            .unwrap();
    }
    let mut slow = bus.consumer("slow", "m", &["metrics"]).await.unwrap();
    assert_eq!(slow.poll(10, WAIT).await.unwrap().len(), 10);
    slow.commit().await.unwrap();
    bus.enforce_retention().await.unwrap();
    let (first, next) = bus.describe_topic("metrics").unwrap().partitions[0];
    assert!(
        first <= 10,
        "retention passed the group's committed offset: first {first}"
    );
    assert_eq!(next, 300);
    // Once the group has consumed everything, old segments go.
    let rest = drain(&mut slow).await;
    assert_eq!(rest.len(), 290);
    slow.commit().await.unwrap();
    bus.enforce_retention().await.unwrap();
    let (first, next) = bus.describe_topic("metrics").unwrap().partitions[0];
    assert!(first > 100, "old events were purged: first offset {first}");
    assert_eq!(next, 300);
    let files: Vec<_> = disk
        .list()
        .unwrap()
        .into_iter()
        .filter(|n| n.ends_with(".seg"))
        .collect();
    let bytes: usize = files.iter().map(|n| disk.read_file(n).unwrap().len()).sum();
    assert!(
        bytes <= 20_000 + 2 * 8192,
        "log holds {bytes} bytes in {} segments",
        files.len()
    );
    // A new group starts at the first retained offset and reads the rest.
    let mut late = bus.consumer("late", "m", &["metrics"]).await.unwrap();
    let seen = drain(&mut late).await;
    assert_eq!(seen.first().map(|(_, o, _)| *o), Some(first));
    assert_eq!(seen.len() as u64, next - first);
    // The purge survives a restart.
    bus.close().await.unwrap();
    let bus = open_crash(&disk).await;
    assert_eq!(
        bus.describe_topic("metrics").unwrap().partitions[0],
        (first, next)
    );
}

/// Consume-transform-produce with crashes at random moments: for every
/// input, its output is in the log exactly once if the input's offset was
/// committed, and absent otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_are_all_or_nothing_across_crashes() {
    let disk = CrashDisk::new(9);
    {
        let bus = open_crash(&disk).await;
        inputs_and_outputs(&bus, 120, "in-").await;
        bus.close().await.unwrap();
    }
    let mut committed_transactions = 0;
    for (round, delay_us) in [300u64, 900, 1500, 2500, 4000, 700].into_iter().enumerate() {
        let bus = open_crash(&disk).await;
        let mut worker = bus.producer_named("transformer").await.unwrap();
        let mut consumer = bus.consumer("transformers", "w", &["in"]).await.unwrap();
        let crasher = {
            let disk = disk.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_micros(delay_us)).await;
                disk.crash();
            })
        };
        for _ in 0..40 {
            let step = tokio::time::timeout(Duration::from_secs(5), async {
                let inputs = consumer.poll(3, Duration::from_millis(20)).await?;
                let mut transaction = consumer.transaction(&mut worker);
                for input in &inputs {
                    let value = format!("out:{}", std::str::from_utf8(&input.payload).unwrap());
                    transaction.publish(Message::new("out", value))?;
                }
                transaction.commit().await
            })
            .await;
            match step {
                Ok(Ok(_)) => committed_transactions += 1,
                _ => break,
            }
        }
        crasher.await.unwrap();
        drop(consumer);
        drop(worker);
        drop(bus);
        assert!(round < 6);
    }
    assert!(
        committed_transactions > 0,
        "some transactions committed between crashes"
    );
    let bus = open_crash(&disk).await;
    let mut reader = bus.consumer("verify", "v", &["in", "out"]).await.unwrap();
    let mut inputs: BTreeMap<(u32, u64), String> = BTreeMap::new();
    let mut outputs: BTreeMap<String, usize> = BTreeMap::new();
    loop {
        let batch = reader.poll(1000, WAIT).await.unwrap();
        if batch.is_empty() {
            break;
        }
        for delivery in batch {
            let value = String::from_utf8(delivery.payload.to_vec()).unwrap();
            if delivery.topic == "in" {
                inputs.insert((delivery.partition, delivery.offset), value);
            } else {
                *outputs.entry(value).or_default() += 1;
            }
        }
    }
    assert_eq!(inputs.len(), 120);
    for ((partition, offset), value) in &inputs {
        let committed = bus.committed("transformers", "in", *partition).unwrap_or(0);
        let copies = outputs.get(&format!("out:{value}")).copied().unwrap_or(0);
        if *offset < committed {
            assert_eq!(
                copies, 1,
                "input {value} at {partition}/{offset} is committed: one output"
            );
        } else {
            assert_eq!(
                copies, 0,
                "input {value} at {partition}/{offset} is not committed: no output"
            );
        }
    }
}

/// The last Raft log index of `bus` (every entry: batches, topics, …).
fn last_log_index<E: Env>(bus: &Bus<E>) -> u64 {
    use openraft::async_runtime::WatchReceiver;
    let metrics = bus.raft().metrics();
    let last = metrics.borrow_watched().last_log_index;
    last.unwrap_or(0)
}

/// A small batch waits for its turn: publishes queued while an earlier
/// batch is in flight (its sync held) are proposed together, as one entry,
/// once it is applied, not one entry each behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_queued_behind_a_batch_in_flight_go_as_one_entry() {
    let disk = CrashDisk::new(11);
    let bus = open_crash(&disk).await;
    bus.create_topic("t", 4, TopicConfig::default())
        .await
        .unwrap();
    let mut first = bus.producer().await.unwrap();
    first.publish(Message::new("t", "warm")).await.unwrap();
    // Producers register through Raft: make them before syncs are held.
    let mut others = Vec::new();
    for _ in 0..5 {
        others.push(bus.producer().await.unwrap());
    }
    let before = last_log_index(&bus);
    disk.hold_syncs();
    let ahead = first.send(Message::new("t", "ahead")).await.unwrap();
    // Let the first batch reach the log (its sync is held).
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut behind = Vec::new();
    for (i, mut producer) in others.into_iter().enumerate() {
        let receipt = producer
            .send(Message::new("t", format!("behind {i}")))
            .await
            .unwrap();
        behind.push((producer, receipt));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let while_held = last_log_index(&bus);
    // Released before asserting: a failed test must not leave syncs held.
    disk.release_syncs();
    assert_eq!(
        while_held,
        before + 1,
        "nothing is proposed while the batch ahead is in flight"
    );
    ahead.wait().await.unwrap();
    for (_, receipt) in behind {
        receipt.wait().await.unwrap();
    }
    assert_eq!(
        last_log_index(&bus),
        before + 2,
        "the five queued publishes went as one entry"
    );
}

/// Closed-loop producers (each awaits its publish before the next) share
/// entries: on a real disk, 16 of them make far fewer entries than events.
/// Proposing each publish as it comes made mostly one-event entries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_loop_producers_share_entries() {
    const PRODUCERS: usize = 16;
    const ROUNDS: usize = 40;
    let dir = tempfile::tempdir().unwrap();
    let bus = Bus::open(dir.path()).await.unwrap();
    bus.create_topic("t", 16, TopicConfig::default())
        .await
        .unwrap();
    let before = last_log_index(&bus);
    let mut tasks = Vec::new();
    for p in 0..PRODUCERS {
        let mut producer = bus.producer().await.unwrap();
        tasks.push(tokio::spawn(async move {
            for i in 0..ROUNDS {
                let message = Message::new("t", format!("{p} {i}")).key(format!("{p}"));
                producer.publish(message).await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let entries = last_log_index(&bus) - before;
    let events = (PRODUCERS * ROUNDS) as u64;
    assert!(
        entries <= events / 4,
        "{events} events took {entries} entries"
    );
    bus.close().await.unwrap();
}

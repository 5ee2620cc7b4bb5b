//! The log against a model (`VecDeque`), with crashes.
//!
//! Invariant checked after every crash: the log holds exactly the model's
//! prefix up to some length between what the log had declared durable and
//! everything appended, never a partial, altered or reordered record. Purges
//! and truncations are durable when they return, so their effect survives.
//! Spare segments (`log/spare.rs`) are started and finished as separate
//! steps, so crashes, truncations and purges land while one is half made
//! or waiting to be rolled onto.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use proptest::prelude::*;
use sluice_core::io::CrashFile;
use sluice_core::io::{CrashDisk, CrashPolicy, ManualClock};
use sluice_core::log::{Entry, Log, Options, PersistMode, Record, SpareJob};

#[derive(Debug, Clone)]
enum Op {
    Append { count: u8, size: u16, persist: bool },
    Sync,
    GroupSync,
    Truncate { back: u8 },
    Purge { forward: u8 },
    Crash,
    Reopen,
    SpareStart,
    SpareFinish,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (1u8..24, 0u16..700, any::<bool>())
            .prop_map(|(count, size, persist)| Op::Append { count, size, persist }),
        2 => Just(Op::Sync),
        1 => Just(Op::GroupSync),
        1 => (0u8..40).prop_map(|back| Op::Truncate { back }),
        1 => (0u8..60).prop_map(|forward| Op::Purge { forward }),
        2 => Just(Op::Crash),
        1 => Just(Op::Reopen),
        2 => Just(Op::SpareStart),
        2 => Just(Op::SpareFinish),
    ]
}

struct Model {
    first: u64,
    entries: VecDeque<Vec<u8>>,
    generation: u64,
}

impl Model {
    fn next(&self) -> u64 {
        self.first + self.entries.len() as u64
    }
}

fn options() -> Options {
    Options {
        segment_size: 8192,
        ..Options::default()
    }
}

fn open(disk: &CrashDisk) -> Log<CrashDisk> {
    let clock = Arc::new(ManualClock::new(UNIX_EPOCH + Duration::from_secs(1)));
    Log::open(disk.clone(), clock, options()).expect("open after crash")
}

fn payload(index: u64, generation: u64, size: u16) -> Vec<u8> {
    let mut bytes = format!("{index}/{generation}/").into_bytes();
    let fill = (index ^ generation) as u8;
    bytes.resize(bytes.len() + size as usize, fill);
    bytes
}

fn check(log: &Log<CrashDisk>, model: &Model) -> Result<(), TestCaseError> {
    prop_assert_eq!(log.first_index(), model.first);
    prop_assert_eq!(log.next_index(), model.next());
    let mut records: Vec<Record> = Vec::new();
    log.read(model.first..model.next(), &mut records)
        .expect("read");
    for (record, (index, expected)) in records.iter().zip((model.first..).zip(&model.entries)) {
        prop_assert_eq!(record.index, index);
        prop_assert_eq!(
            &record.payload[..],
            &expected[..],
            "payload of index {}",
            index
        );
    }
    Ok(())
}

fn apply(
    op: &Op,
    disk: &CrashDisk,
    log: &mut Log<CrashDisk>,
    model: &mut Model,
    spare: &mut Option<SpareJob<CrashFile>>,
) -> Result<(), TestCaseError> {
    model.generation += 1;
    match *op {
        Op::Append {
            count,
            size,
            persist,
        } => {
            let first = log.next_index();
            let payloads: Vec<Vec<u8>> = (first..first + u64::from(count))
                .map(|index| payload(index, model.generation, size))
                .collect();
            let entries: Vec<Entry<'_>> = payloads
                .iter()
                .zip(first..)
                .map(|(payload, index)| Entry {
                    index,
                    term: 1,
                    kind: 1,
                    timestamp_ms: index,
                    payload,
                    payload_digest: None,
                })
                .collect();
            let mode = if persist {
                PersistMode::SyncData
            } else {
                PersistMode::Buffer
            };
            log.append(&entries, mode).expect("append");
            if persist {
                prop_assert_eq!(log.durable_next(), log.next_index());
            }
            model.entries.extend(payloads);
        }
        Op::Sync => {
            log.sync().expect("sync");
        }
        Op::GroupSync => {
            let handle = log.sync_handle().expect("handle");
            let result = handle.sync();
            log.complete_sync(handle, result).expect("complete");
        }
        Op::Truncate { back } => {
            let from = model
                .next()
                .saturating_sub(u64::from(back))
                .max(model.first);
            log.truncate_from(from).expect("truncate");
            model.entries.truncate((from - model.first) as usize);
        }
        Op::Purge { forward } => {
            let before = model.first + u64::from(forward);
            log.purge_before(before).expect("purge");
            let drop = (before - model.first).min(model.entries.len() as u64);
            model.entries.drain(..drop as usize);
            model.first = before.max(model.first);
        }
        Op::Crash => {
            let durable = log.durable_next();
            let written = log.next_index();
            disk.crash_with(CrashPolicy::Random);
            *log = open(disk);
            let survived = log.next_index();
            prop_assert!(
                (durable..=written).contains(&survived),
                "after a crash the log ends at {} but {} was durable and {} written",
                survived,
                durable,
                written
            );
            model.entries.truncate((survived - model.first) as usize);
        }
        Op::Reopen => {
            *log = open(disk);
        }
        Op::SpareStart => {
            if spare.is_none() {
                *spare = log.spare_job();
            }
        }
        Op::SpareFinish => {
            // A job of a log since reopened finishes into nothing.
            if let Some(mut job) = spare.take() {
                let result = loop {
                    match job.step() {
                        Ok(true) => break Ok(()),
                        Ok(false) => {}
                        Err(error) => break Err(error),
                    }
                };
                log.complete_spare(job, result);
            }
        }
    }
    check(log, model)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 160, ..ProptestConfig::default() })]

    #[test]
    fn log_matches_the_model_through_crashes(seed in any::<u64>(), ops in prop::collection::vec(op(), 1..60)) {
        let disk = CrashDisk::new(seed);
        let mut log = open(&disk);
        let mut model = Model { first: 0, entries: VecDeque::new(), generation: 0 };
        let mut spare = None;
        for op in &ops {
            apply(op, &disk, &mut log, &mut model, &mut spare)?;
        }
        log.verify().expect("the log verifies");
    }
}

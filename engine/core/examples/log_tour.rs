//! A tour of the segmented log: append with group commit, zero-copy reads
//! from sealed segments, truncation, purge, reopen, and what a crash does
//! to unsynced writes.
//!
//! ```sh
//! cargo run --release --example log_tour [-- DIR]
//! ```
//!
//! DIR defaults to `./sluice-data/log-tour` and is emptied first.

#![allow(clippy::disallowed_methods)]

use std::error::Error;
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use sluice_core::io::os::{OsClock, OsDisk};
use sluice_core::io::{Clock, CrashDisk, CrashPolicy, ManualClock, wall_unix_ms};
use sluice_core::log::{Entry, Log, Options, PersistMode};

fn main() -> Result<(), Box<dyn Error>> {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "sluice-data/log-tour".into());
    let _ = std::fs::remove_dir_all(&dir);
    let clock: Arc<dyn Clock> = Arc::new(OsClock::new());
    let options = Options {
        segment_size: 8 * 1024 * 1024,
        ..Options::default()
    };
    let mut log = Log::open(OsDisk::open(&dir)?, clock.clone(), options.clone())?;
    println!("opened {dir}: {:?}", log.recovery_report());
    group_commit(&mut log, &*clock)?;
    zero_copy_read(&log)?;

    // A conflicting Raft suffix is cut; whole old segments are purged.
    log.truncate_after(99_499)?;
    log.purge_before(40_000)?;
    println!(
        "after truncate_after(99 499) and purge_before(40 000): [{}, {})",
        log.first_index(),
        log.next_index()
    );
    drop(log);
    let log = Log::open(OsDisk::open(&dir)?, clock, options)?;
    println!(
        "reopened: [{}, {}), verify: {:?}",
        log.first_index(),
        log.next_index(),
        log.verify()?
    );

    crash_demo()
}

/// Group commit: many buffered appends, one fdatasync.
fn group_commit(log: &mut Log<OsDisk>, clock: &dyn Clock) -> Result<(), Box<dyn Error>> {
    let payload = [b'e'; 256];
    let batch = 1000;
    let started = Instant::now();
    for _ in 0..100 {
        let first = log.next_index();
        let now_ms = wall_unix_ms(clock);
        let entries: Vec<Entry<'_>> = (first..first + batch)
            .map(|index| Entry {
                index,
                term: 1,
                kind: 1,
                timestamp_ms: now_ms,
                payload: &payload,
                payload_digest: None,
            })
            .collect();
        log.append(&entries, PersistMode::Buffer)?;
    }
    log.sync()?;
    let elapsed = started.elapsed();
    println!(
        "appended {} records of 256 B with one sync in {elapsed:.2?} ({:.2} M records/s)",
        log.next_index(),
        log.next_index() as f64 / elapsed.as_secs_f64() / 1e6
    );
    for segment in log.segments() {
        println!(
            "  {} [{}, {}) {} bytes{}",
            segment.name,
            segment.first,
            segment.next,
            segment.size,
            if segment.sealed { "" } else { " (active)" }
        );
    }
    Ok(())
}

/// Sealed segments are read through a read-only map, without copying.
fn zero_copy_read(log: &Log<OsDisk>) -> Result<(), Box<dyn Error>> {
    let mut records = Vec::new();
    let started = Instant::now();
    log.read(0..50_000, &mut records)?;
    println!(
        "read {} records in {:.2?}; payloads are slices of the map: {}",
        records.len(),
        started.elapsed(),
        records[1].payload.as_ptr() as usize - records[0].payload.as_ptr() as usize == 256 + 48
    );
    Ok(())
}

/// On the simulated disk, a crash keeps, tears or drops each unsynced
/// write; the log comes back as the synced prefix plus whole records.
fn crash_demo() -> Result<(), Box<dyn Error>> {
    let disk = CrashDisk::new(7);
    let clock = Arc::new(ManualClock::new(UNIX_EPOCH + Duration::from_secs(1)));
    let mut log = Log::open(disk.clone(), clock.clone(), Options::default())?;
    let payload = [b'c'; 700];
    for index in 0..20 {
        let entry = Entry {
            index,
            term: 1,
            kind: 1,
            timestamp_ms: 0,
            payload: &payload,
            payload_digest: None,
        };
        let persist = if index < 10 {
            PersistMode::SyncData
        } else {
            PersistMode::Buffer
        };
        log.append(&[entry], persist)?;
    }
    println!(
        "\ncrash demo: 10 synced records, 10 buffered, durable below {}",
        log.durable_next()
    );
    drop(log);
    let outcome = disk.crash_with(CrashPolicy::Random);
    println!("crash: {outcome:?}");
    let log = Log::open(disk, clock, Options::default())?;
    println!(
        "after the crash the log holds [{}, {}); torn tail: {:?}",
        log.first_index(),
        log.next_index(),
        log.recovery_report().torn_tail
    );
    Ok(())
}

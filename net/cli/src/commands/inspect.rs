//! `sluice inspect DIR`: what a data directory holds: segments, the log's
//! heads, what recovery would do, and per topic partition how many events
//! the log holds.
//!
//! Read-only: it creates, removes, renames and writes nothing, and takes
//! no lock, so it may run beside the node that writes the directory (it
//! says so; the tail it shows may then be moving). What a node's recovery
//! would repair on its next start (a torn tail to cut, leftovers of
//! interrupted operations to remove) is reported, not done.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use sluice_core::io::Disk;
use sluice_core::io::os::{LOCK_NAME, OsClock, OsDisk};
use sluice_core::log::{Log, Options};
use sluice_core::raft::codec::EntryKind;
use sluice_core::raft::codec_decode_command;

use super::Outcome;

/// How a segment file's name ends (see the log's `FORMAT.md`).
const SEGMENT_SUFFIX: &str = ".seg";
/// Records read at a time.
const CHUNK: u64 = 4096;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The data directory.
    dir: PathBuf,
    /// One JSON object instead of the human report.
    #[arg(long)]
    json: bool,
}

#[derive(Default)]
struct Counts {
    entries: u64,
    membership: u64,
    commands: BTreeMap<&'static str, u64>,
    /// (topic, partition) → events.
    events: BTreeMap<(String, u32), u64>,
}

pub(crate) fn run(args: Args) -> Outcome {
    if !args.dir.is_dir() {
        return Err(format!("{} is not a directory", args.dir.display()).into());
    }
    let in_use = OsDisk::in_use(&args.dir).map_err(|error| {
        format!(
            "cannot tell whether a node uses {}: {error}",
            args.dir.display()
        )
    })?;
    let disk = OsDisk::open_read_only(&args.dir)
        .map_err(|error| format!("cannot open {}: {error}", args.dir.display()))?;
    let names = disk
        .list()
        .map_err(|error| format!("cannot list {}: {error}", args.dir.display()))?;
    if !names.iter().any(|name| name.ends_with(SEGMENT_SUFFIX)) {
        // Nothing to read, and a read-only open creates no first segment.
        return Ok(no_log(&args, in_use));
    }
    let log = Log::open_read_only(disk, Arc::new(OsClock::new()), Options::default())
        .map_err(|error| format!("cannot open the log in {}: {error}", args.dir.display()))?;
    let counts = count(&log)?;
    if args.json {
        println!("{}", json_report(&args, in_use, &log, &counts));
    } else {
        print_report(&args, in_use, &log, &counts);
    }
    Ok(ExitCode::SUCCESS)
}

/// Reads every entry of the log and counts them by kind, command and
/// topic partition.
fn count<D: Disk>(log: &Log<D>) -> Result<Counts, Box<dyn std::error::Error>> {
    let (first, next) = (log.first_index(), log.next_index());
    let mut counts = Counts::default();
    let mut records = Vec::new();
    let mut at = first;
    while at < next {
        let end = (at + CHUNK).min(next);
        records.clear();
        log.read(at..end, &mut records)?;
        for record in &records {
            counts.entries += 1;
            match EntryKind::of(record.kind) {
                Some(EntryKind::Normal) => {
                    let command = codec_decode_command(&record.payload)
                        .map_err(|error| format!("entry {}: {error}", record.index))?;
                    *counts.commands.entry(op_name(&command.op)).or_default() += 1;
                    for view in command.batch().iter().flat_map(|batch| batch.iter()) {
                        let key = (view.topic().to_owned(), view.partition());
                        *counts.events.entry(key).or_default() += 1;
                    }
                }
                Some(EntryKind::Membership) => counts.membership += 1,
                _ => {}
            }
        }
        at = end;
    }
    Ok(counts)
}

fn json_report<D: Disk>(
    args: &Args,
    in_use: bool,
    log: &Log<D>,
    counts: &Counts,
) -> serde_json::Value {
    let report = log.recovery_report();
    serde_json::json!({
        "dir": args.dir.display().to_string(),
        "in_use": in_use,
        "first_index": log.first_index(),
        "next_index": log.next_index(),
        "durable_next": log.durable_next(),
        "size_bytes": log.size(),
        "segments": log.segments().iter().map(|s| serde_json::json!({
            "name": s.name, "first": s.first, "next": s.next,
            "size": s.size, "sealed": s.sealed, "capacity": s.capacity,
        })).collect::<Vec<_>>(),
        "torn_tail_bytes": report.torn_tail.as_ref().map(|t| t.bytes_cut),
        "leftovers": report.removed,
        "entries": counts.entries,
        "membership_entries": counts.membership,
        "commands": counts.commands,
        "events": counts.events.iter().map(|((t, p), n)| serde_json::json!({
            "topic": t, "partition": p, "events": n,
        })).collect::<Vec<_>>(),
    })
}

fn print_report<D: Disk>(args: &Args, in_use: bool, log: &Log<D>, counts: &Counts) {
    println!("data directory {}", args.dir.display());
    if in_use {
        println!(
            "in use by a running node (it holds {}): inspected read-only, the tail may be \
             moving",
            args.dir.join(LOCK_NAME).display()
        );
    }
    println!(
        "log: entries {}..{} ({} bytes), durable below {}",
        log.first_index(),
        log.next_index(),
        log.size(),
        log.durable_next()
    );
    print_recovery(log, in_use);
    println!("segments:");
    for s in &log.segments() {
        let state = match (s.sealed, s.capacity) {
            (true, _) => "sealed".to_owned(),
            (false, 0) => "active".to_owned(),
            (false, capacity) => format!("active, written out to {capacity} bytes"),
        };
        println!(
            "  {}\tentries {}..{}\t{} bytes\t{state}",
            s.name, s.first, s.next, s.size,
        );
    }
    println!(
        "entries: {} ({} membership changes)",
        counts.entries, counts.membership
    );
    for (name, count) in &counts.commands {
        println!("  {name}\t{count}");
    }
    println!("events in the log, per topic partition:");
    for ((topic, partition), count) in &counts.events {
        println!("  {topic}/{partition}\t{count}");
    }
}

/// What recovery would do on the node's next start, left undone here.
fn print_recovery<D: Disk>(log: &Log<D>, in_use: bool) {
    let report = log.recovery_report();
    if let Some(torn) = &report.torn_tail {
        let why = if in_use {
            "a torn tail, or an append in progress"
        } else {
            "a torn tail, which the node's next start cuts"
        };
        println!(
            "{why}: {} bytes of {} at offset {} ({}); left as it is",
            torn.bytes_cut, torn.file, torn.offset, torn.reason
        );
    }
    if !report.removed.is_empty() {
        println!(
            "files the node's next start removes (left as they are): {}",
            report.removed.join(", ")
        );
    }
}

/// The report on a directory that holds no log segment (yet).
fn no_log(args: &Args, in_use: bool) -> ExitCode {
    if args.json {
        let line = serde_json::json!({
            "dir": args.dir.display().to_string(),
            "in_use": in_use,
            "segments": [],
            "entries": 0,
        });
        println!("{line}");
    } else {
        println!("data directory {}", args.dir.display());
        println!("log: none (no segment file)");
    }
    ExitCode::SUCCESS
}

fn op_name(op: &sluice_model::state::Op) -> &'static str {
    use sluice_model::state::Op;
    match op {
        Op::CreateTopic { .. } => "create topic",
        Op::InitProducer { .. } => "init producer",
        Op::Publish(_) => "publish",
        Op::JoinGroup { .. } => "join group",
        Op::LeaveGroup { .. } => "leave group",
        Op::CommitOffsets(_) => "commit offsets",
        Op::Transaction { .. } => "transaction",
        Op::Retention { .. } => "retention",
        Op::Noop => "noop",
        Op::Heartbeat { .. } => "heartbeat",
        Op::Checkpoint(_) => "checkpoint",
        Op::Erase(_) => "erase",
        Op::AlterTopic { .. } => "alter topic",
        Op::Admin { .. } => "admin",
    }
}

//! `sluice inspect DIR`: what a data directory holds: segments, the log's
//! heads, what recovery found, and per topic partition how many events the
//! log holds.
//!
//! It opens the log the way a node does, so it runs the same recovery (a
//! torn tail is cut, as the node would do on its next start). Stop the node
//! first: inspecting a directory a running node writes is refused by
//! nothing but may show a moving tail.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use sluice_core::io::os::{OsClock, OsDisk};
use sluice_core::log::{Log, Options};
use sluice_core::raft::codec::EntryKind;
use sluice_core::raft::codec_decode_command;

use super::Outcome;

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
    let disk = OsDisk::open(&args.dir)
        .map_err(|error| format!("cannot open {}: {error}", args.dir.display()))?;
    let log = Log::open(disk, Arc::new(OsClock::new()), Options::default())
        .map_err(|error| format!("cannot open the log in {}: {error}", args.dir.display()))?;
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
                    if let Some(batch) = command.batch() {
                        for view in batch.iter() {
                            let key = (view.topic().to_owned(), view.partition());
                            *counts.events.entry(key).or_default() += 1;
                        }
                    }
                }
                Some(EntryKind::Membership) => counts.membership += 1,
                _ => {}
            }
        }
        at = end;
    }
    let segments = log.segments();
    let report = log.recovery_report();
    if args.json {
        let line = serde_json::json!({
            "dir": args.dir.display().to_string(),
            "first_index": first,
            "next_index": next,
            "durable_next": log.durable_next(),
            "size_bytes": log.size(),
            "segments": segments.iter().map(|s| serde_json::json!({
                "name": s.name, "first": s.first, "next": s.next,
                "size": s.size, "sealed": s.sealed, "capacity": s.capacity,
            })).collect::<Vec<_>>(),
            "torn_tail_cut": report.torn_tail.as_ref().map(|t| t.bytes_cut),
            "entries": counts.entries,
            "membership_entries": counts.membership,
            "commands": counts.commands,
            "events": counts.events.iter().map(|((t, p), n)| serde_json::json!({
                "topic": t, "partition": p, "events": n,
            })).collect::<Vec<_>>(),
        });
        println!("{line}");
        return Ok(ExitCode::SUCCESS);
    }
    println!("data directory {}", args.dir.display());
    println!(
        "log: entries {first}..{next} ({} bytes), durable below {}",
        log.size(),
        log.durable_next()
    );
    if let Some(torn) = &report.torn_tail {
        println!(
            "recovery cut a torn tail: {} bytes of {} at offset {} ({})",
            torn.bytes_cut, torn.file, torn.offset, torn.reason
        );
    }
    println!("segments:");
    for s in &segments {
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
    Ok(ExitCode::SUCCESS)
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
    }
}

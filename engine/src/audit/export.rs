//! The audit export: every event of one subject in a time range, as JSON
//! lines, with what the log records of its history and its verification
//! status. Offline and read only, like the verifier, whose findings it
//! reuses.
//!
//! History, as far as the log records it: `published` (the producer's
//! timestamp), `appended` or `duplicate` or `rejected` (the state machine's
//! answer, at the leader's timestamp of the entry), `committed` by each
//! consumer group whose committed offset passed the event (the group's
//! commit entry and its timestamp), and `erased` when a tombstone for the
//! subject follows. Deliveries, retries and dead letters of the in-process
//! dispatcher are not written to the log and so cannot be exported.
//!
//! Partition offsets are assigned when the state machine applies an entry,
//! so the export replays the log through `State::apply`: from an empty
//! state when the log starts at index 0, else from `state.snapshot`;
//! events the snapshot already covers get a null offset and outcome.
//!
//! Verification status per event: `verified` when the whole directory
//! verified or the event's record lies before the first bad record;
//! the signature status; the first signed checkpoint whose index covers
//! the event's record (its head was recomputed by the verifier).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use bytes::Bytes;
use serde_json::{Value, json};

use super::erasure::subject_of;
use super::signing::{self, Signed};
use super::verify::{VerifyError, VerifyOptions, verify_disk};
use crate::constants::FRAME_HEADER_SIZE;
use crate::io::os::OsDisk;
use crate::io::{Disk, DiskFile};
use crate::log::frame;
use crate::log::{Record, meta, segment};
use crate::raft::codec;
use crate::state::{Command, EventOutcome, Op, Response, State};

/// Which events to export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportQuery {
    /// The subject (the `subject` header, else the key).
    pub subject: String,
    /// Earliest publish time, ms since the epoch, inclusive.
    pub from_ms: u64,
    /// Latest publish time, ms since the epoch, inclusive.
    pub to_ms: u64,
}

/// What an export wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExportSummary {
    /// Lines (events) written.
    pub events: u64,
    /// Whether the whole directory verified.
    pub directory_verified: bool,
    /// The verifier's first finding, if any.
    pub first_finding: Option<String>,
}

/// Why an export failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExportError {
    /// The directory cannot be read.
    #[error("cannot read {what}: {source}")]
    Io {
        /// What was being read.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The output could not be written.
    #[error("cannot write the export: {0}")]
    Output(#[source] std::io::Error),
}

/// Exports from the data directory `dir`; see the module docs.
pub fn export(
    dir: impl AsRef<Path>,
    query: &ExportQuery,
    options: &VerifyOptions,
    out: &mut dyn Write,
) -> Result<ExportSummary, ExportError> {
    let dir = dir.as_ref();
    if !dir.is_dir() {
        return Err(ExportError::Io {
            what: dir.display().to_string(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "not a directory"),
        });
    }
    let disk = OsDisk::open(dir).map_err(|source| ExportError::Io {
        what: dir.display().to_string(),
        source,
    })?;
    export_disk(&disk, query, options, out)
}

/// One exported event while the replay runs.
struct Line {
    index: u64,
    topic: String,
    partition: u32,
    offset: Option<u64>,
    value: Value,
    history: Vec<Value>,
    committed_by: Vec<String>,
}

/// [`export`] over any [`Disk`].
pub fn export_disk<D: Disk>(
    disk: &D,
    query: &ExportQuery,
    options: &VerifyOptions,
    out: &mut dyn Write,
) -> Result<ExportSummary, ExportError> {
    let (bad_index, first_finding) = match verify_disk(disk, options) {
        Ok(_) => (None, None),
        Err(VerifyError::Tampered { findings, .. }) => {
            let bad = findings.iter().filter_map(|f| f.index).min();
            (Some(bad.unwrap_or(0)), Some(findings[0].to_string()))
        }
        Err(VerifyError::Io { dir, source }) => return Err(ExportError::Io { what: dir, source }),
    };
    let mut replay = Replay::start(disk)?;
    let mut lines: Vec<Line> = Vec::new();
    let mut checkpoints: Vec<(u64, u64)> = Vec::new();
    for_each_record(disk, |record| {
        replay.entry(record, query, &mut lines, &mut checkpoints);
    })?;
    let erased = replay.state.is_erased(&query.subject);
    let mut summary = ExportSummary {
        events: 0,
        directory_verified: bad_index.is_none(),
        first_finding,
    };
    for mut line in lines {
        let verified = bad_index.is_none_or(|bad| line.index < bad);
        let checkpoint = checkpoints
            .iter()
            .filter(|(signed, _)| *signed >= line.index)
            .min()
            .filter(|_| verified);
        line.value["verification"]["chain"] = json!(if verified {
            "verified"
        } else {
            "after the first finding"
        });
        line.value["verification"]["checkpoint"] = match checkpoint {
            Some((signed, entry)) => json!({ "signed_index": signed, "entry_index": entry }),
            None => Value::Null,
        };
        if erased {
            line.value["payload"] = Value::Null;
            line.value["erased"] = json!(true);
        }
        line.value["offset"] = json!(line.offset);
        line.value["history"] = Value::Array(line.history);
        serde_json::to_writer(&mut *out, &line.value).map_err(|e| ExportError::Output(e.into()))?;
        out.write_all(b"\n").map_err(ExportError::Output)?;
        summary.events += 1;
    }
    Ok(summary)
}

/// Calls `f` on every frame of every segment, in order, one segment in
/// memory at a time, up to the first frame that does not decode (the
/// verifier reports that one).
fn for_each_record<D: Disk>(disk: &D, mut f: impl FnMut(&Record)) -> Result<(), ExportError> {
    let io = |what: &str| {
        let what = what.to_owned();
        move |source| ExportError::Io { what, source }
    };
    let mut firsts: Vec<u64> = disk
        .list()
        .map_err(io("the data directory"))?
        .iter()
        .filter_map(|n| segment::parse_name(n))
        .collect();
    firsts.sort_unstable();
    for first in firsts {
        let name = segment::name(first);
        let file = disk.open(&name).map_err(io(&name))?;
        let mut bytes = vec![0; file.size().map_err(io(&name))? as usize];
        file.read_at(0, &mut bytes).map_err(io(&name))?;
        let bytes = Bytes::from(bytes);
        let mut offset = 0;
        while offset < bytes.len() {
            let Ok(header) = frame::decode(&bytes[offset..]) else {
                return Ok(());
            };
            let end = offset + header.size as usize;
            f(&Record {
                index: header.index,
                term: header.term,
                kind: header.kind,
                timestamp_ms: header.timestamp_ms,
                hash: header.hash,
                payload: bytes.slice(offset + FRAME_HEADER_SIZE..end),
            });
            offset = end;
        }
    }
    Ok(())
}

struct Replay {
    state: State,
    /// Entries at or below this index are already in `state`.
    covered: Option<u64>,
    /// Lines waiting for group commits, by (topic, partition).
    by_partition: BTreeMap<(String, u32), Vec<usize>>,
}

impl Replay {
    fn start<D: Disk>(disk: &D) -> Result<Replay, ExportError> {
        let purged = match disk.open(meta::NAME) {
            Ok(file) => {
                let mut bytes = vec![0; file.size().unwrap_or(0) as usize];
                let read = file.read_at(0, &mut bytes);
                read.ok()
                    .and_then(|()| meta::Meta::decode(&bytes).ok())
                    .is_some_and(|m| m.purged_next > 0)
            }
            Err(_) => false,
        };
        let mut replay = Replay {
            state: State::new(),
            covered: None,
            by_partition: BTreeMap::new(),
        };
        if !purged {
            return Ok(replay);
        }
        let name = crate::raft::state_machine::SNAPSHOT_FILE_NAME;
        if let Ok(file) = disk.open(name) {
            let mut bytes = vec![0; file.size().unwrap_or(0) as usize];
            if file.read_at(0, &mut bytes).is_ok() {
                if let Ok((covered, state)) =
                    crate::raft::state_machine::load_snapshot_state(&bytes)
                {
                    replay.state = state;
                    replay.covered = covered.map(|(_, index)| index);
                }
            }
        }
        Ok(replay)
    }

    fn entry(
        &mut self,
        record: &Record,
        query: &ExportQuery,
        lines: &mut Vec<Line>,
        checkpoints: &mut Vec<(u64, u64)>,
    ) {
        let Ok(entry) = codec::decode(record) else {
            return;
        };
        let openraft::EntryPayload::Normal(command) = entry.payload else {
            return;
        };
        let fresh = self.covered.is_none_or(|covered| record.index > covered);
        let response = fresh.then(|| self.state.apply(record.index, &command));
        if let Op::Checkpoint(checkpoint) = &command.op {
            checkpoints.push((checkpoint.index, record.index));
        }
        if let Op::Erase(erasure) = &command.op {
            if erasure.subject == query.subject {
                let event = json!({ "state": "erased", "at_ms": command.timestamp_ms,
                    "entry_index": record.index, "reason": erasure.reason });
                lines
                    .iter_mut()
                    .for_each(|line| line.history.push(event.clone()));
            }
        }
        self.events(record, &command, response.as_ref(), query, lines);
        if let Some(Response::Committed | Response::Transaction(Ok(_))) = &response {
            let commit = match &command.op {
                Op::CommitOffsets(commit) | Op::Transaction { commit, .. } => commit,
                _ => return,
            };
            for (topic, partition, next) in &commit.offsets {
                let Some(waiting) = self.by_partition.get(&(topic.clone(), *partition)) else {
                    continue;
                };
                for &position in waiting {
                    let line = &mut lines[position];
                    let passed = line.offset.is_some_and(|o| o < *next);
                    if passed && !line.committed_by.contains(&commit.group) {
                        line.committed_by.push(commit.group.clone());
                        line.history
                            .push(json!({ "state": "committed", "group": commit.group,
                            "member": commit.member, "at_ms": command.timestamp_ms,
                            "entry_index": record.index }));
                    }
                }
            }
        }
    }

    fn events(
        &mut self,
        record: &Record,
        command: &Command,
        response: Option<&Response>,
        query: &ExportQuery,
        lines: &mut Vec<Line>,
    ) {
        let Some(batch) = command.batch() else {
            return;
        };
        let outcomes = match response {
            Some(Response::Published(outcomes)) | Some(Response::Transaction(Ok(outcomes))) => {
                Some(outcomes.as_slice())
            }
            _ => None,
        };
        for (position, view) in batch.iter().enumerate() {
            let at = view.timestamp_ms();
            if at < query.from_ms || at > query.to_ms {
                continue;
            }
            if subject_of(&view).is_none_or(|s| s != query.subject) {
                continue;
            }
            let outcome = outcomes.and_then(|o| o.get(position));
            let (state, offset) = match outcome {
                Some(EventOutcome::Appended { offset, .. }) => ("appended", Some(*offset)),
                Some(EventOutcome::Duplicate { offset, .. }) => ("duplicate", Some(*offset)),
                Some(EventOutcome::Rejected(_)) => ("rejected", None),
                None if matches!(response, Some(Response::Transaction(Err(_)))) => {
                    ("rejected", None)
                }
                None => ("unknown: covered by the snapshot", None),
            };
            let signature = match signing::check_view(&view) {
                Ok(Signed::Unsigned) => json!("unsigned"),
                Ok(Signed::By { public_key, distid }) => json!({ "valid": true,
                    "signer": super::keys::fingerprint(&public_key), "distid": distid }),
                Err(error) => json!({ "valid": false, "error": error.to_string() }),
            };
            let producer = view.producer();
            let value = json!({
                "entry_index": record.index,
                "record_hash": record.hash.iter().map(|b| format!("{b:02x}")).collect::<String>(),
                "topic": view.topic(),
                "partition": view.partition(),
                "subject": query.subject,
                "key": String::from_utf8_lossy(view.key_slice()),
                "event_type": view.event_type(),
                "producer": { "id": producer.id, "epoch": producer.epoch, "sequence": producer.sequence },
                "payload": String::from_utf8_lossy(view.payload_slice()),
                "erased": false,
                "verification": { "signature": signature },
            });
            let mut history = vec![json!({ "state": "published", "at_ms": at })];
            let mut appended = json!({ "state": state, "at_ms": command.timestamp_ms,
                "entry_index": record.index });
            if let Some(EventOutcome::Rejected(error)) = outcome {
                appended["error"] = json!(error.to_string());
            }
            history.push(appended);
            let line = Line {
                index: record.index,
                topic: view.topic().to_owned(),
                partition: view.partition(),
                offset,
                value,
                history,
                committed_by: Vec::new(),
            };
            self.by_partition
                .entry((line.topic.clone(), line.partition))
                .or_default()
                .push(lines.len());
            lines.push(line);
        }
    }
}

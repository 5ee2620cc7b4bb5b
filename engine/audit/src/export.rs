//! The audit export: every event of one subject in a time range, as JSON
//! lines, with its history as the log records it and its verification
//! status. Offline and read only, like the verifier, whose findings it
//! reuses.
//!
//! History, in time order (stable: steps with the same millisecond keep
//! the log's order):
//!
//! - `published` (the producer's timestamp), then `appended`, `duplicate`
//!   or `rejected` (the state machine's answer, at the leader's timestamp
//!   of the entry);
//! - per durable subscription (`dispatch::durable`) that handled it, from
//!   the lifecycle record its group committed on `__sluice.lifecycle` in
//!   the same transaction as its offsets: `delivered` (attempt 1) and
//!   `retried` (attempts 2, 3, ...), each with its start time and the
//!   error it failed with, then the final state (`processed`, `failed`,
//!   `timed_out`, `cancelled`, `undecodable`) at the time it was reported,
//!   with the attempts made and the cause;
//! - `dead_lettered`: the dead letter written in that same transaction
//!   (its topic `{topic}.dlq.{group}`, partition and offset, cause and
//!   attempts);
//! - `replayed`: the dead letter republished by the replay group
//!   (`__sluice.replay`), with the new event's topic, partition and offset
//!   (the new event, when it is in the export, names the event it replays
//!   in `replay_of` and has its own history);
//! - `committed` by each consumer group whose committed offset passed the
//!   event (the commit entry and its timestamp);
//! - `erased` when a tombstone for the subject follows.
//!
//! Lifecycle records and dead letters count only inside a transaction that
//! applied and that commits the offsets of the group the record names; they
//! are steps of the event they point at, never lines of their own (nor are
//! other `__sluice.` records). A replay's new offsets are matched to its
//! dead letters by position: the replay transaction republishes the letters
//! from the replay group's committed offset up to the offset it commits, in
//! order; when the counts or keys disagree the step says
//! `"offset": null`. Each step names the log entry it comes from; a step
//! at or after the verifier's first finding carries `"verified": false`.
//!
//! Partition offsets are assigned when the state machine applies an entry,
//! so the export replays the log through `State::apply`: from an empty
//! state when the log starts at index 0, else from `state.snapshot`;
//! events the snapshot already covers get a null offset and outcome, and
//! no delivery history (the join is by offset).
//!
//! Memory: segments are read in 1 MiB windows (a window grows to hold a
//! frame larger than that, up to the 16 MiB frame bound), never whole;
//! what stays in memory is the replayed state and the subject's matching
//! events with their histories, which are written once the whole log has
//! been read (a later entry can still add to any event's history).
//! Payloads are not exported for an erased subject, and dead letters'
//! copies of payloads never are.
//!
//! Verification status per event: `verified` when the whole directory
//! verified or the event's record lies before the first bad record;
//! the signature status; the first signed checkpoint whose index covers
//! the event's record (its head was recomputed by the verifier).

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;

use bytes::Bytes;
use serde_json::{Value, json};

use super::erasure::subject_of;
use super::signing::{self, Signed};
use super::verify::{VerifyError, VerifyOptions, verify_disk_until};
use sluice_core::io::os::OsDisk;
use sluice_core::io::{Disk, DiskFile};
use sluice_core::log::frame;
use sluice_core::log::{Record, meta, segment};
use sluice_core::raft::codec;
use sluice_model::constants::{FRAME_HEADER_SIZE, FRAME_SIZE_MAX};
use sluice_model::event::{EventBatch, EventView};
use sluice_model::names::{LIFECYCLE_TOPIC, REPLAY_GROUP, dead_letter_headers};
use sluice_model::state::{Command, EventOutcome, OffsetCommit, Op, Response, State};

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
    // Read-only, as `verify`: the export changes nothing in the directory.
    let disk = OsDisk::open_read_only(dir).map_err(|source| ExportError::Io {
        what: dir.display().to_string(),
        source,
    })?;
    export_disk(&disk, query, options, out)
}

/// Milliseconds since the epoch, or `YYYY-MM-DDTHH:MM:SS[.fff]Z` (UTC).
pub fn parse_time_ms(text: &str) -> Result<u64, String> {
    if let Ok(ms) = text.parse::<u64>() {
        return Ok(ms);
    }
    let bad = || format!("{text:?} is neither ms since the epoch nor YYYY-MM-DDTHH:MM:SS[.fff]Z");
    let body = text.strip_suffix('Z').ok_or_else(bad)?;
    let (date, time) = body.split_once('T').ok_or_else(bad)?;
    let numbers = |s: &str, sep: char| -> Result<Vec<u64>, String> {
        s.split(sep)
            .map(|p| p.parse::<u64>().map_err(|_| bad()))
            .collect()
    };
    let (time, millis) = match time.split_once('.') {
        Some((t, f)) => (
            t,
            format!("{f:0<3}")[..3].parse::<u64>().map_err(|_| bad())?,
        ),
        None => (time, 0),
    };
    let (d, t) = (numbers(date, '-')?, numbers(time, ':')?);
    if d.len() != 3 || t.len() != 3 || !(1..=12).contains(&d[1]) || !(1..=31).contains(&d[2]) {
        return Err(bad());
    }
    // Days from the civil date (Howard Hinnant's algorithm), year >= 1970.
    let (y, m) = if d[1] <= 2 {
        (d[0] - 1, d[1] + 9)
    } else {
        (d[0], d[1] - 3)
    };
    let era = y / 400;
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d[2] - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = (era * 146_097 + doe).checked_sub(719_468).ok_or_else(bad)?;
    Ok(((days * 24 + t[0]) * 60 + t[1]) * 60_000 + t[2] * 1000 + millis)
}

/// One step of an event's history.
struct Step {
    /// What the history is ordered by: the step's time, or for a step
    /// whose time was not recorded, the time of the step before it.
    at_ms: u64,
    /// The log entry the step comes from.
    entry_index: u64,
    value: Value,
}

/// One exported event while the replay runs.
struct Line {
    index: u64,
    topic: String,
    partition: u32,
    offset: Option<u64>,
    key: Bytes,
    value: Value,
    history: Vec<Step>,
    committed_by: Vec<String>,
}

/// [`export`] over any [`Disk`].
pub fn export_disk<D: Disk>(
    disk: &D,
    query: &ExportQuery,
    options: &VerifyOptions,
    out: &mut dyn Write,
) -> Result<ExportSummary, ExportError> {
    export_disk_until(disk, query, options, None, out)
}

/// [`export_disk`] of the log up to index `until` (all of it when `None`):
/// a running node's data directory read beside the node, up to what it has
/// applied (see [`verify_disk_until`](crate::verify::verify_disk_until)).
/// The same content as the offline export of the same records.
pub fn export_disk_until<D: Disk>(
    disk: &D,
    query: &ExportQuery,
    options: &VerifyOptions,
    until: Option<u64>,
    out: &mut dyn Write,
) -> Result<ExportSummary, ExportError> {
    let (bad_index, first_finding) = match verify_disk_until(disk, options, until) {
        Ok(_) => (None, None),
        Err(VerifyError::Tampered { findings, .. }) => {
            let bad = findings.iter().filter_map(|f| f.index).min();
            (Some(bad.unwrap_or(0)), Some(findings[0].to_string()))
        }
        Err(VerifyError::Io { dir, source }) => return Err(ExportError::Io { what: dir, source }),
    };
    let mut replay = Replay::start(disk)?;
    for_each_record(disk, READ_WINDOW_BYTES, |record| {
        if until.is_none_or(|until| record.index <= until) {
            replay.entry(record, query)
        }
    })?;
    let erased = replay.state.is_erased(&query.subject);
    let mut summary = ExportSummary {
        events: 0,
        directory_verified: bad_index.is_none(),
        first_finding,
    };
    for line in replay.lines {
        let value = finish_line(line, bad_index, &replay.checkpoints, erased);
        serde_json::to_writer(&mut *out, &value).map_err(|e| ExportError::Output(e.into()))?;
        out.write_all(b"\n").map_err(ExportError::Output)?;
        summary.events += 1;
    }
    Ok(summary)
}

/// The JSON line of an event: verification status, masking, and its
/// history in time order.
fn finish_line(
    mut line: Line,
    bad_index: Option<u64>,
    checkpoints: &[(u64, u64)],
    erased: bool,
) -> Value {
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
    // Stable: steps of the same millisecond keep the log's order.
    line.history.sort_by_key(|step| step.at_ms);
    let history = line.history.into_iter().map(|mut step| {
        if bad_index.is_some_and(|bad| step.entry_index >= bad) {
            step.value["verified"] = json!(false);
        }
        step.value
    });
    line.value["history"] = Value::Array(history.collect());
    line.value
}

/// Bytes read from a segment at a time.
pub(crate) const READ_WINDOW_BYTES: usize = 1 << 20;

/// Reads a file through one window of bytes at a time.
struct Windows<'a, F: DiskFile> {
    file: &'a F,
    size: u64,
    /// Bytes read at a time, at least (more for a larger frame).
    window_bytes: usize,
    /// File offset of `window[0]`.
    base: u64,
    window: Bytes,
}

impl<F: DiskFile> Windows<'_, F> {
    /// The bytes from `offset` to the end of the window, at least `need`
    /// of them; `None` if the file ends first.
    fn at(&mut self, offset: u64, need: usize) -> std::io::Result<Option<Bytes>> {
        if offset + need as u64 > self.size {
            return Ok(None);
        }
        let covered =
            offset >= self.base && offset + need as u64 <= self.base + self.window.len() as u64;
        if !covered {
            let size = (self.size - offset).min(need.max(self.window_bytes) as u64);
            let mut bytes = vec![0; size as usize];
            self.file.read_at(offset, &mut bytes)?;
            self.base = offset;
            self.window = Bytes::from(bytes);
        }
        Ok(Some(self.window.slice((offset - self.base) as usize..)))
    }
}

/// Calls `f` on every frame of every segment, in order, up to the first
/// frame that does not decode (the verifier reports that one). Reads
/// through [`Windows`] of `window_bytes`, so memory does not grow with a
/// segment's size.
pub(crate) fn for_each_record<D: Disk>(
    disk: &D,
    window_bytes: usize,
    mut f: impl FnMut(&Record),
) -> Result<(), ExportError> {
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
        let mut windows = Windows {
            file: &file,
            size: file.size().map_err(io(&name))?,
            window_bytes,
            base: 0,
            window: Bytes::new(),
        };
        let mut offset = 0;
        loop {
            let Some(bytes) = windows.at(offset, FRAME_HEADER_SIZE).map_err(io(&name))? else {
                break;
            };
            // Only the size field here: the window may end inside the
            // frame, which `decode_header` would call truncated.
            let size = u32::from_le_bytes(bytes[..4].try_into().expect("4 bytes")) as usize;
            if !(FRAME_HEADER_SIZE..=FRAME_SIZE_MAX).contains(&size) {
                return Ok(());
            }
            let Some(bytes) = windows.at(offset, size).map_err(io(&name))? else {
                return Ok(());
            };
            let Ok(header) = frame::decode(&bytes) else {
                return Ok(());
            };
            f(&Record {
                index: header.index,
                term: header.term,
                kind: header.kind,
                timestamp_ms: header.timestamp_ms,
                hash: header.hash,
                payload: bytes.slice(FRAME_HEADER_SIZE..size),
            });
            offset += size as u64;
        }
    }
    Ok(())
}

/// A log entry being replayed: its index and the leader's timestamp.
#[derive(Debug, Clone, Copy)]
struct At {
    index: u64,
    ms: u64,
}

/// A replay transaction's dead letters: (topic, partition), the first
/// letter's offset, and the offset it commits (one past the last).
struct ReplayedLetters {
    topic: String,
    partition: u32,
    from: u64,
    next: u64,
}

struct Replay {
    state: State,
    /// Entries at or below this index are already in `state`.
    covered: Option<u64>,
    /// The exported events, in log order.
    lines: Vec<Line>,
    /// (signed index, entry index) of every checkpoint.
    checkpoints: Vec<(u64, u64)>,
    /// Lines waiting for group commits, by (topic, partition).
    by_partition: BTreeMap<(String, u32), Vec<usize>>,
    /// Lines by (topic, partition, offset), for lifecycle records.
    by_offset: HashMap<(String, u32, u64), usize>,
    /// Lines by their dead letters' (topic, partition, offset).
    letters: HashMap<(String, u32, u64), usize>,
}

/// The state to replay the log from: empty when the log starts at index
/// 0, else `state.snapshot`'s, with the last index it covers.
pub(crate) fn starting_state<D: Disk>(disk: &D) -> (State, Option<u64>) {
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
    if !purged {
        return (State::new(), None);
    }
    let name = sluice_core::raft::state_machine::SNAPSHOT_FILE_NAME;
    if let Ok(file) = disk.open(name) {
        let mut bytes = vec![0; file.size().unwrap_or(0) as usize];
        if file.read_at(0, &mut bytes).is_ok() {
            if let Ok((covered, state)) =
                sluice_core::raft::state_machine::load_snapshot_state(&bytes)
            {
                return (state, covered.map(|(_, index)| index));
            }
        }
    }
    (State::new(), None)
}

impl Replay {
    fn start<D: Disk>(disk: &D) -> Result<Replay, ExportError> {
        let (state, covered) = starting_state(disk);
        Ok(Replay {
            state,
            covered,
            lines: Vec::new(),
            checkpoints: Vec::new(),
            by_partition: BTreeMap::new(),
            by_offset: HashMap::new(),
            letters: HashMap::new(),
        })
    }

    fn entry(&mut self, record: &Record, query: &ExportQuery) {
        let Ok(entry) = codec::decode(record) else {
            return;
        };
        let openraft::EntryPayload::Normal(command) = entry.payload else {
            return;
        };
        let at = At {
            index: record.index,
            ms: command.timestamp_ms,
        };
        let fresh = self.covered.is_none_or(|covered| record.index > covered);
        let replayed = fresh.then(|| self.replayed_letters(&command)).flatten();
        let response = fresh.then(|| self.state.apply(record.index, &command));
        if let Op::Checkpoint(checkpoint) = command.op.applied() {
            self.checkpoints.push((checkpoint.index, record.index));
        }
        if let Op::Erase(erasure) = command.op.applied() {
            if erasure.subject == query.subject {
                let value = json!({ "state": "erased", "at_ms": at.ms,
                    "entry_index": at.index, "reason": erasure.reason });
                for line in &mut self.lines {
                    push(line, at, value.clone());
                }
            }
        }
        self.events(record, &command, response.as_ref(), query);
        if let (Op::Transaction { events, commit }, Some(Response::Transaction(Ok(outcomes)))) =
            (&command.op, &response)
        {
            self.deliveries(at, events, commit, outcomes);
            if let Some(letters) = replayed {
                self.replays(at, events, &letters, outcomes);
            }
        }
        if let Some(Response::Committed | Response::Transaction(Ok(_))) = &response {
            match &command.op {
                Op::CommitOffsets(commit) | Op::Transaction { commit, .. } => {
                    self.commits(at, commit)
                }
                _ => {}
            }
        }
    }

    /// The dead letters a replay transaction republishes, from the state
    /// before it applies: the replay group's committed offset (or the
    /// first retained one) up to the offset the transaction commits.
    fn replayed_letters(&self, command: &Command) -> Option<ReplayedLetters> {
        let Op::Transaction { commit, .. } = &command.op else {
            return None;
        };
        let [(topic, partition, next)] = &commit.offsets[..] else {
            return None;
        };
        if commit.group != REPLAY_GROUP {
            return None;
        }
        let first = self
            .state
            .partition_range(topic, *partition)
            .map_or(0, |(first, _)| first);
        let committed = self.state.committed(REPLAY_GROUP, topic, *partition);
        Some(ReplayedLetters {
            topic: topic.clone(),
            partition: *partition,
            from: committed.unwrap_or(0).max(first),
            next: *next,
        })
    }

    fn commits(&mut self, at: At, commit: &OffsetCommit) {
        for (topic, partition, next) in &commit.offsets {
            let Some(waiting) = self.by_partition.get(&(topic.clone(), *partition)) else {
                continue;
            };
            for &position in waiting {
                let line = &mut self.lines[position];
                let passed = line.offset.is_some_and(|o| o < *next);
                if passed && !line.committed_by.contains(&commit.group) {
                    line.committed_by.push(commit.group.clone());
                    let value = json!({ "state": "committed", "group": commit.group,
                        "member": commit.member, "at_ms": at.ms, "entry_index": at.index });
                    push(line, at, value);
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
        let rejected_whole = matches!(response, Some(Response::Transaction(Err(_))));
        for (position, view) in batch.iter().enumerate() {
            let at = view.timestamp_ms();
            if at < query.from_ms || at > query.to_ms || is_internal(&view) {
                continue;
            }
            if subject_of(&view).is_none_or(|s| s != query.subject) {
                continue;
            }
            let outcome = outcomes.and_then(|o| o.get(position));
            let line = new_line(record, command, &view, outcome, rejected_whole, query);
            let position = self.lines.len();
            if let Some(offset) = line.offset {
                let at = (line.topic.clone(), line.partition, offset);
                self.by_offset.entry(at).or_insert(position);
            }
            self.by_partition
                .entry((line.topic.clone(), line.partition))
                .or_default()
                .push(position);
            self.lines.push(line);
        }
    }

    /// The lifecycle records and dead letters a durable subscription
    /// committed in this transaction, as steps of the events they name.
    fn deliveries(
        &mut self,
        at: At,
        events: &EventBatch,
        commit: &OffsetCommit,
        outcomes: &[EventOutcome],
    ) {
        for (position, view) in events.iter().enumerate() {
            if view.topic() == LIFECYCLE_TOPIC {
                let Ok(record) = serde_json::from_slice::<Value>(view.payload_slice()) else {
                    continue;
                };
                if record["group"].as_str() != Some(commit.group.as_str()) {
                    continue;
                }
                let (Some(topic), Some(partition), Some(offset)) = (
                    record["topic"].as_str(),
                    record["partition"].as_u64(),
                    record["offset"].as_u64(),
                ) else {
                    continue;
                };
                let key = (topic.to_owned(), partition as u32, offset);
                if let Some(&line) = self.by_offset.get(&key) {
                    for (ms, value) in delivery_steps(&record, at) {
                        push_at(&mut self.lines[line], ms, at, value);
                    }
                }
            } else if let Some((source, cause)) = dead_letter_of(&view) {
                if view.topic() != sluice_model::names::dead_letter_topic(&source.0, &commit.group)
                {
                    continue;
                }
                let Some(&line) = self.by_offset.get(&source) else {
                    continue;
                };
                let offset = outcomes.get(position).and_then(appended_offset);
                let value = json!({ "state": "dead_lettered", "group": commit.group,
                    "at_ms": at.ms, "topic": view.topic(), "partition": view.partition(),
                    "offset": offset, "cause": cause,
                    "attempts": header(&view, dead_letter_headers::ATTEMPTS)
                        .and_then(|a| a.parse::<u64>().ok()),
                    "entry_index": at.index });
                push(&mut self.lines[line], at, value);
                if let Some(offset) = offset {
                    let letter = (view.topic().to_owned(), view.partition(), offset);
                    self.letters.insert(letter, line);
                }
            }
        }
    }

    /// Links each dead letter a replay transaction republished to its new
    /// event, by position (see [`Replay::replayed_letters`]).
    fn replays(
        &mut self,
        at: At,
        events: &EventBatch,
        letters: &ReplayedLetters,
        outcomes: &[EventOutcome],
    ) {
        let aligned = letters.next.checked_sub(letters.from) == Some(events.len() as u64);
        for (position, view) in events.iter().enumerate() {
            let letter = (
                letters.topic.clone(),
                letters.partition,
                letters.from + position as u64,
            );
            let Some(&original) = self.letters.get(&letter) else {
                continue;
            };
            let line = &self.lines[original];
            let matches = aligned && view.key_slice() == line.key.as_ref();
            let offset = outcomes
                .get(position)
                .and_then(appended_offset)
                .filter(|_| matches);
            let group = letters
                .topic
                .strip_prefix(&format!("{}.dlq.", line.topic))
                .map(str::to_owned);
            let value = json!({ "state": "replayed", "group": group, "at_ms": at.ms,
                "dead_letter": { "topic": letter.0, "partition": letter.1, "offset": letter.2 },
                "topic": view.topic(), "partition": view.partition(), "offset": offset,
                "entry_index": at.index });
            let source = json!({ "topic": line.topic, "partition": line.partition,
                "offset": line.offset, "entry_index": line.index,
                "dead_letter": { "topic": letter.0, "partition": letter.1, "offset": letter.2 } });
            push(&mut self.lines[original], at, value);
            let new = offset.and_then(|o| {
                let key = (view.topic().to_owned(), view.partition(), o);
                self.by_offset.get(&key).copied()
            });
            if let Some(new) = new {
                self.lines[new].value["replay_of"] = source;
            }
        }
    }
}

/// A new line for an event of the subject, with its publication steps.
fn new_line(
    record: &Record,
    command: &Command,
    view: &EventView<'_>,
    outcome: Option<&EventOutcome>,
    rejected_whole: bool,
    query: &ExportQuery,
) -> Line {
    let (state, offset) = match outcome {
        Some(EventOutcome::Appended { offset, .. }) => ("appended", Some(*offset)),
        Some(EventOutcome::Duplicate { offset, .. }) => ("duplicate", Some(*offset)),
        Some(EventOutcome::Rejected(_)) => ("rejected", None),
        None if rejected_whole => ("rejected", None),
        None => ("unknown: covered by the snapshot", None),
    };
    let signature = match signing::check_view(view) {
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
    let at = At {
        index: record.index,
        ms: command.timestamp_ms,
    };
    let published = view.timestamp_ms();
    let mut appended = json!({ "state": state, "at_ms": at.ms, "entry_index": at.index });
    if let Some(EventOutcome::Rejected(error)) = outcome {
        appended["error"] = json!(error.to_string());
    }
    let history = vec![
        Step {
            at_ms: published,
            entry_index: at.index,
            value: json!({ "state": "published", "at_ms": published }),
        },
        Step {
            at_ms: at.ms,
            entry_index: at.index,
            value: appended,
        },
    ];
    Line {
        index: record.index,
        topic: view.topic().to_owned(),
        partition: view.partition(),
        offset,
        key: view.key(),
        value,
        history,
        committed_by: Vec::new(),
    }
}

/// The steps one lifecycle record gives its event: each attempt, then the
/// final state. Each step's time, where the record has it, else the time
/// of the step before (records written before `attempts_ms` existed).
fn delivery_steps(record: &Value, at: At) -> Vec<(u64, Value)> {
    let group = &record["group"];
    let attempts = record["attempts"].as_u64().unwrap_or(0);
    let first_ms = record["first_attempt_ms"].as_u64();
    let mut steps = Vec::new();
    let mut previous_ms = first_ms.unwrap_or(at.ms);
    for attempt in 1..=attempts {
        let index = (attempt - 1) as usize;
        let started = record["attempts_ms"][index]
            .as_u64()
            .or(first_ms.filter(|_| attempt == 1));
        previous_ms = started.unwrap_or(previous_ms);
        let state = if attempt == 1 { "delivered" } else { "retried" };
        let value = json!({ "state": state, "group": group, "attempt": attempt,
            "at_ms": started, "error": record["errors"][index], "entry_index": at.index });
        steps.push((previous_ms, value));
    }
    let reported = record["reported_ms"].as_u64();
    let state = record["state"].as_str().unwrap_or("unknown");
    let cause = match &record["cause"] {
        Value::Null if state == "failed" => {
            record["errors"][attempts.saturating_sub(1) as usize].clone()
        }
        Value::Null if state == "timed_out" => json!("timed out"),
        cause => cause.clone(),
    };
    let value = json!({ "state": state, "group": group, "at_ms": reported,
        "attempts": attempts, "cause": cause, "entry_index": at.index });
    steps.push((reported.unwrap_or(previous_ms), value));
    steps
}

/// Events that are records about other events (lifecycle records,
/// cancellations and other `__sluice.` topics, dead letters), not events
/// of their own.
fn is_internal(view: &EventView<'_>) -> bool {
    view.topic().starts_with("__sluice.") || header(view, dead_letter_headers::SOURCE).is_some()
}

/// A dead letter's source event (topic, partition, offset) and cause.
fn dead_letter_of(view: &EventView<'_>) -> Option<((String, u32, u64), Option<String>)> {
    let source = header(view, dead_letter_headers::SOURCE)?;
    let mut parts = source.rsplitn(3, '/');
    let offset = parts.next()?.parse().ok()?;
    let partition = parts.next()?.parse().ok()?;
    let topic = parts.next()?.to_owned();
    Some((
        (topic, partition, offset),
        header(view, dead_letter_headers::CAUSE),
    ))
}

/// The first user header `name`, as text.
fn header(view: &EventView<'_>, name: &str) -> Option<String> {
    view.user_headers()
        .find(|(n, _)| *n == name)
        .and_then(|(_, value)| String::from_utf8(value.to_vec()).ok())
}

fn appended_offset(outcome: &EventOutcome) -> Option<u64> {
    match outcome {
        EventOutcome::Appended { offset, .. } => Some(*offset),
        _ => None,
    }
}

/// Adds a step at the entry's own time.
fn push(line: &mut Line, at: At, value: Value) {
    push_at(line, at.ms, at, value);
}

fn push_at(line: &mut Line, at_ms: u64, at: At, value: Value) {
    line.history.push(Step {
        at_ms,
        entry_index: at.index,
        value,
    });
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use sluice_core::io::{CrashDisk, ManualClock};
    use sluice_core::log::{Entry, Log, Options, PersistMode};

    /// Frames of many sizes, some larger than a window, across several
    /// segments: reading through small windows yields exactly what the
    /// log itself reads back.
    #[test]
    fn times_parse() {
        assert_eq!(parse_time_ms("1700000000000"), Ok(1_700_000_000_000));
        assert_eq!(parse_time_ms("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(parse_time_ms("2023-11-14T22:13:20Z"), Ok(1_700_000_000_000));
        assert_eq!(
            parse_time_ms("2023-11-14T22:13:20.5Z"),
            Ok(1_700_000_000_500)
        );
        assert!(parse_time_ms("2023-13-01T00:00:00Z").is_err());
        assert!(parse_time_ms("yesterday").is_err());
    }

    #[test]
    fn windows_read_every_frame_across_boundaries() {
        let disk = CrashDisk::new(7);
        let clock = Arc::new(ManualClock::new(
            UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        ));
        let options = Options {
            segment_size: 64 * 1024,
            ..Options::default()
        };
        let mut log = Log::open(disk.clone(), clock, options).unwrap();
        let payloads: Vec<Vec<u8>> = (0..300u64)
            .map(|i| vec![i as u8; (i as usize * 997) % 9000 + 1])
            .collect();
        for (index, payload) in payloads.iter().enumerate() {
            let entry = Entry {
                index: index as u64,
                term: 1,
                kind: 1,
                timestamp_ms: index as u64,
                payload,
                payload_digest: None,
            };
            log.append(&[entry], PersistMode::Buffer).unwrap();
        }
        log.sync().unwrap();
        assert!(log.segments().len() > 3, "the test wants several segments");
        let mut expected = Vec::new();
        log.read(0..300, &mut expected).unwrap();
        for window_bytes in [FRAME_HEADER_SIZE, 1000, 4096, READ_WINDOW_BYTES] {
            let mut seen = Vec::new();
            for_each_record(&disk, window_bytes, |record| seen.push(record.clone())).unwrap();
            assert_eq!(seen.len(), expected.len(), "window {window_bytes}");
            assert!(seen == expected, "window {window_bytes}");
        }
    }
}

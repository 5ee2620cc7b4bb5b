//! Raft entries as log frames.
//!
//! The frame header already holds the index and the term (a standard Raft
//! log id), so only the payload is encoded here. Publish and transaction
//! entries keep their event batch as raw bytes at the end of the frame, so
//! reading an entry back hands out the batch as a zero-copy slice of the
//! segment's map: the Raft log is the event log, with no second copy.
//!
//! | frame kind | payload |
//! |---|---|
//! | 1 blank | empty |
//! | 2 normal | tag byte, then: tag 1 publish: `timestamp_ms` u64 LE, batch bytes; tag 2 transaction: `timestamp_ms` u64 LE, commit length u32 LE, commit (postcard), batch bytes; tag 3 other: the command (postcard) |
//! | 3 membership | the membership (postcard) |
//!
//! The log's hash chain covers the SHA-256 digest of each frame's payload
//! (`log/FORMAT.md`). For an entry that carries an event batch (publish,
//! transaction) that pass over the bytes is most of the chain's cost, so
//! it runs where the entry is made, off the Raft core: [`prepare_digest`]
//! (the leader's batcher and `propose`, before proposing) and
//! [`prepare_digests`] (a follower's network handler, after decoding a
//! received AppendEntries) keep the digest with the batch, and [`encode`]
//! hands it to the log when the prefix it writes is the one it was
//! computed with. Other entries are small; the log digests them itself.

use std::io;

use bytes::Bytes;
use openraft::EntryPayload;

use crate::log::Record;
use crate::log::frame::Hash;
use crate::raft::{Entry, log_id};
use sluice_model::event::EventBatch;
use sluice_model::state::{Command, OffsetCommit, Op};

/// What a Raft entry's log frame holds: the frame's kind byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum EntryKind {
    /// A blank entry (a new leader's first).
    Blank = 1,
    /// A command of the state machine.
    Normal = 2,
    /// A membership change.
    Membership = 3,
}

impl EntryKind {
    /// The kind with this frame byte, if any.
    pub fn of(kind: u8) -> Option<EntryKind> {
        [EntryKind::Blank, EntryKind::Normal, EntryKind::Membership]
            .into_iter()
            .find(|known| *known as u8 == kind)
    }
}

const TAG_PUBLISH: u8 = 1;
const TAG_TRANSACTION: u8 = 2;
const TAG_OTHER: u8 = 3;

/// Appends `entry`'s payload to `out` (the log store encodes a whole
/// append into one buffer, so each payload is copied once on its way to
/// the log); returns the frame kind, the timestamp to stamp on the frame,
/// and the payload's digest when [`prepare_digest`] computed it.
pub fn encode(entry: &Entry, out: &mut Vec<u8>) -> (u8, u64, Option<Hash>) {
    match &entry.payload {
        EntryPayload::Blank => (EntryKind::Blank as u8, 0, None),
        EntryPayload::Normal(command) => {
            let digest = encode_command(command, out);
            (EntryKind::Normal as u8, command.timestamp_ms, digest)
        }
        EntryPayload::Membership(membership) => {
            postcard::to_io(membership, &mut *out).expect("membership encodes into memory");
            (EntryKind::Membership as u8, 0, None)
        }
    }
}

/// Computes the payload digest of a command that carries an event batch
/// (`log::frame::payload_digest` of the payload [`encode`] will write)
/// and keeps it with the batch. Run it off the Raft core, where the
/// command is made or received; other commands are left as they are.
pub fn prepare_digest(command: &mut Command) {
    let mut prefix = Vec::with_capacity(16);
    if batch_prefix(command.timestamp_ms, &command.op, &mut prefix).is_none() {
        return;
    }
    if let Op::Publish(batch) | Op::Transaction { events: batch, .. } = &mut command.op {
        batch.digest_with_prefix(&prefix);
    }
}

/// [`prepare_digest`] for every normal entry of a received batch.
pub fn prepare_digests(entries: &mut [Entry]) {
    for entry in entries {
        if let EntryPayload::Normal(command) = &mut entry.payload {
            prepare_digest(command);
        }
    }
}

/// Writes the bytes [`encode`] puts before an event batch to `out`, and
/// returns the batch; `None` (and nothing written) for a command without
/// one.
fn batch_prefix<'c>(timestamp_ms: u64, op: &'c Op, out: &mut Vec<u8>) -> Option<&'c EventBatch> {
    match op {
        Op::Publish(batch) => {
            out.push(TAG_PUBLISH);
            out.extend_from_slice(&timestamp_ms.to_le_bytes());
            Some(batch)
        }
        Op::Transaction { events, commit } => {
            out.push(TAG_TRANSACTION);
            out.extend_from_slice(&timestamp_ms.to_le_bytes());
            let commit = postcard::to_allocvec(commit).expect("commit encodes into memory");
            out.extend_from_slice(&(commit.len() as u32).to_le_bytes());
            out.extend_from_slice(&commit);
            Some(events)
        }
        _ => None,
    }
}

/// Writes a command's payload; returns its digest if one was kept with
/// its batch for exactly the prefix written.
fn encode_command(command: &Command, out: &mut Vec<u8>) -> Option<Hash> {
    let start = out.len();
    match batch_prefix(command.timestamp_ms, &command.op, out) {
        Some(batch) => {
            let digest = batch.kept_digest_with_prefix(&out[start..]);
            out.extend_from_slice(batch.as_bytes());
            digest
        }
        None => {
            out.push(TAG_OTHER);
            postcard::to_io(command, &mut *out).expect("command encodes into memory");
            None
        }
    }
}

/// Decodes a log record back into a Raft entry.
pub fn decode(record: &Record) -> io::Result<Entry> {
    let payload = match EntryKind::of(record.kind) {
        Some(EntryKind::Blank) => EntryPayload::Blank,
        Some(EntryKind::Normal) => EntryPayload::Normal(decode_command(&record.payload)?),
        Some(EntryKind::Membership) => EntryPayload::Membership(
            postcard::from_bytes(&record.payload).map_err(|e| invalid(record.index, e))?,
        ),
        None => {
            let kind = record.kind;
            return Err(invalid(record.index, format!("unknown frame kind {kind}")));
        }
    };
    Ok(Entry {
        log_id: log_id(record.term, record.index),
        payload,
    })
}

/// Decodes a normal entry's payload.
pub fn decode_command(payload: &Bytes) -> io::Result<Command> {
    let fail = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
    let (&tag, rest) = payload
        .split_first()
        .ok_or_else(|| fail("empty command".into()))?;
    if tag == TAG_OTHER {
        return postcard::from_bytes(rest).map_err(|e| fail(format!("command: {e}")));
    }
    if rest.len() < 8 {
        return Err(fail("command shorter than its timestamp".into()));
    }
    let timestamp_ms = u64::from_le_bytes(rest[..8].try_into().expect("8 bytes"));
    let op = match tag {
        TAG_PUBLISH => Op::Publish(batch(payload.slice(9..))?),
        TAG_TRANSACTION => {
            let size = rest
                .get(8..12)
                .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize)
                .ok_or_else(|| fail("transaction without commit length".into()))?;
            let commit_bytes = rest
                .get(12..12 + size)
                .ok_or_else(|| fail("transaction commit truncated".into()))?;
            let commit: OffsetCommit =
                postcard::from_bytes(commit_bytes).map_err(|e| fail(format!("commit: {e}")))?;
            Op::Transaction {
                events: batch(payload.slice(13 + size..))?,
                commit,
            }
        }
        tag => return Err(fail(format!("unknown command tag {tag}"))),
    };
    Ok(Command { timestamp_ms, op })
}

fn batch(bytes: Bytes) -> io::Result<EventBatch> {
    EventBatch::from_bytes(bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

fn invalid(index: u64, what: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("log entry {index} does not decode: {what}"),
    )
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use openraft::EntryPayload;

    use super::*;
    use crate::log::frame::payload_digest;
    use sluice_model::event::Event;

    fn batch(events: usize) -> EventBatch {
        let events: Vec<Event> = (0..events)
            .map(|i| Event {
                topic: "t".into(),
                payload: Bytes::from(vec![i as u8; 100]),
                ..Event::default()
            })
            .collect();
        EventBatch::encode(&events).unwrap()
    }

    fn entry(command: Command) -> Entry {
        Entry {
            log_id: log_id(1, 1),
            payload: EntryPayload::Normal(command),
        }
    }

    fn publish() -> Command {
        Command {
            timestamp_ms: 1_700_000_000_000,
            op: Op::Publish(batch(3)),
        }
    }

    fn transaction() -> Command {
        Command {
            timestamp_ms: 1_700_000_000_001,
            op: Op::Transaction {
                events: batch(2),
                commit: OffsetCommit {
                    group: "g".into(),
                    member: "m".into(),
                    generation: 4,
                    offsets: vec![("t".into(), 0, 9)],
                },
            },
        }
    }

    /// A prepared digest is that of the payload `encode` writes, for every
    /// kind of entry that carries a batch; nothing else gets one.
    #[test]
    fn a_prepared_digest_is_the_digest_of_the_encoded_payload() {
        for mut command in [publish(), transaction()] {
            let mut out = Vec::new();
            assert_eq!(encode(&entry(command.clone()), &mut out).2, None);
            prepare_digest(&mut command);
            let mut prepared = Vec::new();
            let (kind, timestamp_ms, digest) = encode(&entry(command.clone()), &mut prepared);
            assert_eq!(prepared, out, "preparing changes no byte");
            assert_eq!(
                (kind, timestamp_ms),
                (EntryKind::Normal as u8, command.timestamp_ms)
            );
            assert_eq!(digest, Some(payload_digest(&prepared)));
        }
        let mut other = Command {
            timestamp_ms: 5,
            op: Op::InitProducer { name: None },
        };
        prepare_digest(&mut other);
        assert_eq!(encode(&entry(other), &mut Vec::new()).2, None);
        let blank = Entry {
            log_id: log_id(1, 1),
            payload: EntryPayload::Blank,
        };
        let mut entries = vec![blank, entry(publish())];
        prepare_digests(&mut entries);
        assert_eq!(encode(&entries[0], &mut Vec::new()).2, None);
        let mut out = Vec::new();
        assert_eq!(encode(&entries[1], &mut out).2, Some(payload_digest(&out)));
    }

    /// A digest kept for other prefix bytes (the command changed after it
    /// was prepared) is not used; nor does it survive serialization (a
    /// follower computes its own), and it is no part of equality.
    #[test]
    fn a_stale_or_received_digest_is_not_used() {
        let mut command = publish();
        prepare_digest(&mut command);
        command.timestamp_ms += 1;
        assert_eq!(encode(&entry(command.clone()), &mut Vec::new()).2, None);

        let mut command = transaction();
        prepare_digest(&mut command);
        if let Op::Transaction { commit, .. } = &mut command.op {
            commit.generation += 1;
        }
        assert_eq!(encode(&entry(command), &mut Vec::new()).2, None);

        let mut command = publish();
        prepare_digest(&mut command);
        let bytes = postcard::to_allocvec(&command).unwrap();
        let received: Command = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(received, command);
        assert_eq!(encode(&entry(received), &mut Vec::new()).2, None);
    }
}

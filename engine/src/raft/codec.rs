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

use std::io;

use bytes::Bytes;
use openraft::EntryPayload;

use crate::event::EventBatch;
use crate::log::Record;
use crate::raft::{Entry, log_id};
use crate::state::{Command, OffsetCommit, Op};

pub(crate) const KIND_BLANK: u8 = 1;
pub(crate) const KIND_NORMAL: u8 = 2;
pub(crate) const KIND_MEMBERSHIP: u8 = 3;

const TAG_PUBLISH: u8 = 1;
const TAG_TRANSACTION: u8 = 2;
const TAG_OTHER: u8 = 3;

/// Appends `entry`'s payload to `out` (the log store encodes a whole
/// append into one buffer, so each payload is copied once on its way to
/// the log); returns the frame kind and the timestamp to stamp on the
/// frame.
pub(crate) fn encode(entry: &Entry, out: &mut Vec<u8>) -> (u8, u64) {
    match &entry.payload {
        EntryPayload::Blank => (KIND_BLANK, 0),
        EntryPayload::Normal(command) => {
            encode_command(command, out);
            (KIND_NORMAL, command.timestamp_ms)
        }
        EntryPayload::Membership(membership) => {
            postcard::to_io(membership, &mut *out).expect("membership encodes into memory");
            (KIND_MEMBERSHIP, 0)
        }
    }
}

fn encode_command(command: &Command, out: &mut Vec<u8>) {
    match &command.op {
        Op::Publish(batch) => {
            out.push(TAG_PUBLISH);
            out.extend_from_slice(&command.timestamp_ms.to_le_bytes());
            out.extend_from_slice(batch.as_bytes());
        }
        Op::Transaction { events, commit } => {
            out.push(TAG_TRANSACTION);
            out.extend_from_slice(&command.timestamp_ms.to_le_bytes());
            let commit = postcard::to_allocvec(commit).expect("commit encodes into memory");
            out.extend_from_slice(&(commit.len() as u32).to_le_bytes());
            out.extend_from_slice(&commit);
            out.extend_from_slice(events.as_bytes());
        }
        _ => {
            out.push(TAG_OTHER);
            postcard::to_io(command, &mut *out).expect("command encodes into memory");
        }
    }
}

/// Decodes a log record back into a Raft entry.
pub(crate) fn decode(record: &Record) -> io::Result<Entry> {
    let payload = match record.kind {
        KIND_BLANK => EntryPayload::Blank,
        KIND_NORMAL => EntryPayload::Normal(decode_command(&record.payload)?),
        KIND_MEMBERSHIP => EntryPayload::Membership(
            postcard::from_bytes(&record.payload).map_err(|e| invalid(record.index, e))?,
        ),
        kind => return Err(invalid(record.index, format!("unknown frame kind {kind}"))),
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

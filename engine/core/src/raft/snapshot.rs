//! A snapshot's bytes: what `state.snapshot` holds and what a leader sends
//! to a follower that is too far behind for log entries.
//!
//! The state machine's state (topics, the partition index, producers,
//! groups) is small; event bodies are not in it, they live in the Raft
//! log. A follower that installs a snapshot at index S in place of its log
//! would therefore hold offsets without bodies for every event retention
//! kept at or below S (from the retention point P up to S). So a snapshot
//! *sent* to a follower carries a **tail**: the sender's raw log records
//! P..=S with their stored chain hashes. The follower checks that they
//! chain to the snapshot's chain head before anything is written, then
//! rebases its log onto them (`LogStore`, `raft/log_store.rs`). A snapshot
//! built locally has no tail; it is attached when the snapshot is encoded
//! for sending ([`SnapshotData::into_transfer_bytes`]), from the log as it
//! is then, so opening a node never reads its retained log.
//!
//! ## Layout
//!
//! ```text
//! offset  size  field
//!      0     4  magic           "SLSN"
//!      4     4  checksum        CRC-32 (crc32fast) of bytes [8, end)
//!      8     …  core            postcard: version, last applied log id,
//!                               membership, the state's own encoding, the
//!                               chain hash at the last applied index
//!      …     …  tail            version 3 only; absent when the bytes end
//!
//! tail:   "SLTL" 4 | first index u64 | record count u64 | link 32
//!         | records, back to back
//! record: payload size u32 | kind u8 | 3 reserved zero bytes | index u64
//!         | term u64 | timestamp_ms u64 | chain hash 32 | payload
//! ```
//!
//! Integers are little-endian. `link` is the chain hash the first record
//! links to (the sender's hash of index `first − 1`). Records are
//! contiguous from `first`; the last is the snapshot's index. The chain
//! hash is the log's (`log/FORMAT.md`): a receiver recomputes every
//! record's hash from `link` on and requires the last to equal the core's
//! chain head, so a damaged or forged record is caught even when the
//! checksum was recomputed over it ([`SnapshotError::TailHash`]). Without a
//! chain head (the sender's state machine is not linked to a chained log)
//! only the checksum protects the tail.
//!
//! Version 2 is the core alone. It is what `state.snapshot` holds (a
//! tail lives there only for the moment of an install) and what older
//! sluice wrote and reads; a snapshot received without a tail installs as
//! it always did, without bodies for its retained range. Version 3 is a
//! core followed by a tail, only ever sent with one: an older node refuses
//! it by its version (`SnapshotError::Version`) instead of installing it
//! without the bodies.
//!
//! ## Fault model
//! - Any byte may be damaged in transit or at rest: the checksum covers
//!   all, the chain covers the records, and every length is bounded by the
//!   bytes that remain, so a damaged length cannot make the decoder
//!   allocate or read past the input.
//! - Decoding and checking are pure: nothing is written until the whole
//!   snapshot, tail included, has been checked.

use std::fmt;
use std::io;
use std::sync::Arc;

use openraft::StoredMembership;
use serde::{Deserialize, Serialize};

use crate::log::frame::{self, GENESIS, Hash};
use sluice_model::constants::PAYLOAD_SIZE_MAX;
use sluice_model::state::State;

use super::{CommittedLeaderId, LogId, Node, NodeId};

/// The snapshot file's name in the data directory.
pub(crate) const SNAPSHOT_FILE: &str = "state.snapshot";
/// The name a new snapshot file is written under before it replaces the
/// old one.
pub(crate) const SNAPSHOT_FILE_TMP: &str = "state.snapshot.tmp";

const MAGIC: &[u8; 4] = b"SLSN";
const TAIL_MAGIC: &[u8; 4] = b"SLTL";
/// Magic and checksum.
const PREFIX_SIZE: usize = 8;
/// Tail magic, first index, record count, link.
const TAIL_HEADER_SIZE: usize = 4 + 8 + 8 + 32;
/// Payload size, kind, reserved, index, term, timestamp, hash.
const RECORD_HEADER_SIZE: usize = 4 + 1 + 3 + 8 + 8 + 8 + 32;
const _: () = assert!(RECORD_HEADER_SIZE == 64);

/// A core followed by a tail.
const VERSION: u8 = 3;
/// The core alone; what `state.snapshot` holds.
pub(crate) const VERSION_WITHOUT_TAIL: u8 = 2;

type Membership = StoredMembership<CommittedLeaderId, NodeId, Node>;

/// Why bytes are not a snapshot this node can install. Nothing has been
/// written when one of these is returned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// Too short, or the magic is not `SLSN`.
    #[error("{SNAPSHOT_FILE}: bad magic or too short ({size} bytes)")]
    Magic {
        /// Bytes received.
        size: usize,
    },
    /// The checksum does not match the bytes.
    #[error("{SNAPSHOT_FILE}: checksum mismatch: stored {stored:08x}, computed {computed:08x}")]
    Checksum {
        /// The stored checksum.
        stored: u32,
        /// The checksum of the bytes.
        computed: u32,
    },
    /// A version this code does not read.
    #[error(
        "{SNAPSHOT_FILE}: format version {found} (this code reads {VERSION_WITHOUT_TAIL} and \
         {VERSION}); is the sender running another version of sluice?"
    )]
    Version {
        /// The version found.
        found: u8,
    },
    /// The core (state, membership) does not decode.
    #[error("{SNAPSHOT_FILE}: {what}")]
    Decode {
        /// What failed.
        what: String,
    },
    /// The tail's framing is broken.
    #[error("{SNAPSHOT_FILE}: the log tail is malformed at byte {offset}: {what}")]
    TailLayout {
        /// Byte offset in the snapshot.
        offset: usize,
        /// What is wrong there.
        what: String,
    },
    /// The tail does not end at the snapshot's last log id.
    #[error(
        "{SNAPSHOT_FILE}: the log tail ends at index {found_index} (term {found_term}), but the \
         snapshot covers index {index} (term {term})"
    )]
    TailEnd {
        /// The snapshot's last index.
        index: u64,
        /// Its term.
        term: u64,
        /// The tail's last index.
        found_index: u64,
        /// Its term.
        found_term: u64,
    },
    /// A record's recomputed chain hash differs from the one it carries:
    /// its bytes, or the link before it, were changed.
    #[error(
        "{SNAPSHOT_FILE}: log tail record at index {index} does not chain: it carries hash {}, \
         but its bytes hash to {}; the sender's log or the transfer is damaged, and nothing \
         was installed",
        hex(stored),
        hex(computed)
    )]
    TailHash {
        /// The record's index.
        index: u64,
        /// The hash it carries.
        stored: Hash,
        /// The hash its bytes give.
        computed: Hash,
    },
    /// The tail chains, but not to the snapshot's chain head.
    #[error(
        "{SNAPSHOT_FILE}: the log tail hashes to {} at index {index}, but the snapshot's chain \
         head there is {}; nothing was installed",
        hex(computed),
        hex(expected)
    )]
    TailChainHead {
        /// The snapshot's last index.
        index: u64,
        /// The snapshot's chain head.
        expected: Hash,
        /// What the tail hashes to.
        computed: Hash,
    },
    /// The bytes cover another log id than the metadata sent with them.
    #[error("{SNAPSHOT_FILE}: the data covers {data:?}, but its metadata says {meta:?}")]
    MetaMismatch {
        /// The log id in the bytes.
        data: Option<LogId>,
        /// The log id in the metadata.
        meta: Option<LogId>,
    },
}

impl From<SnapshotError> for io::Error {
    fn from(error: SnapshotError) -> Self {
        io::Error::new(io::ErrorKind::InvalidData, error)
    }
}

fn hex(hash: &Hash) -> String {
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

/// The core of a snapshot: everything but the tail (postcard).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Core {
    pub version: u8,
    pub last_applied: Option<LogId>,
    pub membership: Membership,
    pub state: Vec<u8>,
    /// The log's chain hash at `last_applied`, when the state machine is
    /// linked to a chained log: a node installing this snapshot anchors its
    /// chain with it, and the tail must hash to it.
    pub chain_head: Option<Hash>,
}

/// One record of a tail, borrowed from the snapshot's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TailRecord<'a> {
    pub index: u64,
    pub term: u64,
    pub kind: u8,
    pub timestamp_ms: u64,
    pub hash: Hash,
    pub payload: &'a [u8],
}

/// A decoded tail, borrowed from the snapshot's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Tail<'a> {
    /// The first record's index.
    pub first: u64,
    /// The chain hash the first record links to.
    pub link: Hash,
    /// Contiguous from `first`; never empty.
    pub records: Vec<TailRecord<'a>>,
}

/// A decoded snapshot.
#[derive(Debug)]
pub(crate) struct Decoded<'a> {
    pub core: Core,
    pub tail: Option<Tail<'a>>,
}

/// Encodes a snapshot without a tail (version 2).
pub(crate) fn encode(core: &Core) -> Vec<u8> {
    let mut out = encode_unsealed(core, VERSION_WITHOUT_TAIL);
    seal(&mut out);
    out
}

/// Magic, a checksum placeholder and the core with `version`: for version
/// 3, the start of a snapshot a tail is appended to before [`seal`].
fn encode_unsealed(core: &Core, version: u8) -> Vec<u8> {
    let core = Core {
        version,
        ..core.clone()
    };
    let mut out = Vec::with_capacity(PREFIX_SIZE + core.state.len() + 256);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[0; 4]);
    postcard::to_io(&core, &mut out).expect("a snapshot encodes into memory");
    out
}

/// Writes the checksum of everything after it.
fn seal(out: &mut [u8]) {
    let checksum = crc32fast::hash(&out[PREFIX_SIZE..]);
    out[4..8].copy_from_slice(&checksum.to_le_bytes());
}

/// Checks magic and checksum and decodes the core and the tail, if any.
pub(crate) fn decode(bytes: &[u8]) -> Result<Decoded<'_>, SnapshotError> {
    if bytes.len() < PREFIX_SIZE || &bytes[..4] != MAGIC {
        return Err(SnapshotError::Magic { size: bytes.len() });
    }
    let stored = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes"));
    let computed = crc32fast::hash(&bytes[PREFIX_SIZE..]);
    if stored != computed {
        return Err(SnapshotError::Checksum { stored, computed });
    }
    // The version is the core's first field, one byte in postcard: name an
    // unknown version before the rest fails to decode.
    match bytes.get(PREFIX_SIZE) {
        Some(&VERSION_WITHOUT_TAIL | &VERSION) => {}
        Some(&found) => return Err(SnapshotError::Version { found }),
        None => return Err(SnapshotError::Magic { size: bytes.len() }),
    }
    let (core, rest): (Core, &[u8]) =
        postcard::take_from_bytes(&bytes[PREFIX_SIZE..]).map_err(|e| SnapshotError::Decode {
            what: e.to_string(),
        })?;
    let at = bytes.len() - rest.len();
    let tail = match core.version {
        VERSION_WITHOUT_TAIL | VERSION if rest.is_empty() => None,
        VERSION => Some(decode_tail(bytes, at)?),
        VERSION_WITHOUT_TAIL => {
            return Err(SnapshotError::TailLayout {
                offset: at,
                what: format!("{} bytes after a version 2 snapshot", rest.len()),
            });
        }
        found => return Err(SnapshotError::Version { found }),
    };
    Ok(Decoded { core, tail })
}

/// Decodes the state a snapshot's core holds.
pub(crate) fn restore_state(core: &Core) -> Result<State, SnapshotError> {
    State::restore(&core.state).map_err(|e| SnapshotError::Decode {
        what: e.to_string(),
    })
}

/// Reads the tail section starting at `at`; it must end the bytes.
fn decode_tail(bytes: &[u8], at: usize) -> Result<Tail<'_>, SnapshotError> {
    let layout = |offset: usize, what: String| SnapshotError::TailLayout { offset, what };
    let rest = &bytes[at..];
    if rest.len() < TAIL_HEADER_SIZE || &rest[..4] != TAIL_MAGIC {
        return Err(layout(at, "no tail header".into()));
    }
    let first = u64_at(rest, 4);
    let count = u64_at(rest, 12);
    let link: Hash = rest[20..52].try_into().expect("32 bytes");
    // Each record needs its header: a damaged count cannot make us
    // allocate more than the bytes could hold.
    let room = (rest.len() - TAIL_HEADER_SIZE) / RECORD_HEADER_SIZE;
    if count == 0 || count > room as u64 {
        return Err(layout(
            at + 12,
            format!("record count {count}, room for {room}"),
        ));
    }
    let mut records = Vec::with_capacity(count as usize);
    let mut offset = at + TAIL_HEADER_SIZE;
    for position in 0..count {
        let header = bytes
            .get(offset..offset + RECORD_HEADER_SIZE)
            .ok_or_else(|| layout(offset, format!("record {position} is cut short")))?;
        let size = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes")) as usize;
        let kind = header[4];
        if kind == 0 || header[5..8] != [0; 3] {
            return Err(layout(offset, "a zero kind or reserved bytes set".into()));
        }
        let index = u64_at(header, 8);
        let expected = first
            .checked_add(position)
            .ok_or_else(|| layout(offset, format!("first index {first} overflows")))?;
        if index != expected {
            return Err(layout(
                offset,
                format!("index {index}, expected {expected}"),
            ));
        }
        if size > PAYLOAD_SIZE_MAX {
            return Err(layout(offset, format!("payload of {size} bytes")));
        }
        let start = offset + RECORD_HEADER_SIZE;
        let payload = bytes
            .get(start..start + size)
            .ok_or_else(|| layout(offset, format!("payload of record {index} is cut short")))?;
        records.push(TailRecord {
            index,
            term: u64_at(header, 16),
            timestamp_ms: u64_at(header, 24),
            kind,
            hash: header[32..64].try_into().expect("32 bytes"),
            payload,
        });
        offset = start + size;
    }
    if offset != bytes.len() {
        return Err(layout(
            offset,
            format!("{} bytes after the last record", bytes.len() - offset),
        ));
    }
    Ok(Tail {
        first,
        link,
        records,
    })
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

/// Appends a tail section to `out`: `records` contiguous from their
/// first, `link` what the first links to.
pub(crate) fn encode_tail(out: &mut Vec<u8>, link: &Hash, records: &[crate::log::Record]) {
    let Some(first) = records.first() else {
        return;
    };
    let payloads: usize = records.iter().map(|r| r.payload.len()).sum();
    out.reserve(TAIL_HEADER_SIZE + records.len() * RECORD_HEADER_SIZE + payloads);
    out.extend_from_slice(TAIL_MAGIC);
    out.extend_from_slice(&first.index.to_le_bytes());
    out.extend_from_slice(&(records.len() as u64).to_le_bytes());
    out.extend_from_slice(link);
    for (position, record) in records.iter().enumerate() {
        assert_eq!(
            record.index,
            first.index + position as u64,
            "a tail is contiguous"
        );
        assert!(record.payload.len() <= PAYLOAD_SIZE_MAX);
        out.extend_from_slice(&(record.payload.len() as u32).to_le_bytes());
        out.extend_from_slice(&[record.kind, 0, 0, 0]);
        out.extend_from_slice(&record.index.to_le_bytes());
        out.extend_from_slice(&record.term.to_le_bytes());
        out.extend_from_slice(&record.timestamp_ms.to_le_bytes());
        out.extend_from_slice(&record.hash);
        out.extend_from_slice(&record.payload);
    }
}

/// Checks a tail against the snapshot it came with: it ends at `last`,
/// and, when the snapshot has a chain head, every record hashes as it
/// says and the last one to the chain head. Pure; see the module docs.
pub(crate) fn check_tail(
    tail: &Tail<'_>,
    last: LogId,
    chain_head: Option<Hash>,
) -> Result<(), SnapshotError> {
    let end = tail.records.last().expect("a decoded tail is never empty");
    if end.index != last.index || end.term != last.leader_id.term {
        return Err(SnapshotError::TailEnd {
            index: last.index,
            term: last.leader_id.term,
            found_index: end.index,
            found_term: end.term,
        });
    }
    let Some(expected) = chain_head else {
        return Ok(());
    };
    let mut link = tail.link;
    for record in &tail.records {
        let computed = frame::chain_hash(
            &link,
            record.kind,
            record.index,
            record.term,
            record.timestamp_ms,
            &frame::payload_digest(record.payload),
        );
        if computed != record.hash {
            return Err(SnapshotError::TailHash {
                index: record.index,
                stored: record.hash,
                computed,
            });
        }
        link = computed;
    }
    if link != expected {
        return Err(SnapshotError::TailChainHead {
            index: last.index,
            expected,
            computed: link,
        });
    }
    Ok(())
}

/// Decodes `bytes` and checks them against the log id in their metadata
/// (`meta_last`) and their tail against the core: everything a receiver
/// checks before it writes anything.
pub(crate) fn check(bytes: &[u8], meta_last: Option<LogId>) -> Result<Decoded<'_>, SnapshotError> {
    let decoded = decode(bytes)?;
    if decoded.core.last_applied != meta_last {
        return Err(SnapshotError::MetaMismatch {
            data: decoded.core.last_applied,
            meta: meta_last,
        });
    }
    if let (Some(tail), Some(last)) = (&decoded.tail, decoded.core.last_applied) {
        check_tail(tail, last, decoded.core.chain_head)?;
    } else if decoded.tail.is_some() {
        return Err(SnapshotError::TailLayout {
            offset: 0,
            what: "a log tail with a snapshot that covers no entry".into(),
        });
    }
    Ok(decoded)
}

/// A chain head as a snapshot records it: the hash of an unchained log
/// (`ChainMode::Off`, all zeros) is no chain head at all.
pub(crate) fn chain_head_of(hash: Hash) -> Option<Hash> {
    (hash != GENESIS).then_some(hash)
}

/// What writes a snapshot's tail when it is sent: the log the snapshot
/// was taken from.
pub(crate) trait TailSource: Send + Sync + 'static {
    /// Appends the tail section for the records `from..=last` this log
    /// still holds (none, if it holds none) to `out`.
    fn write_tail(&self, from: u64, last: u64, out: &mut Vec<u8>) -> io::Result<()>;
}

/// A snapshot's data as the state machine hands it to openraft: the bytes
/// of `state.snapshot` and, for a snapshot that may be sent, where to read
/// its tail from. The tail is read only when the snapshot is encoded for
/// sending ([`SnapshotData::into_transfer_bytes`]); installing reads only
/// [`SnapshotData::bytes`].
#[derive(Clone)]
pub struct SnapshotData {
    bytes: Vec<u8>,
    tail: Option<TailPlan>,
}

#[derive(Clone)]
struct TailPlan {
    source: Arc<dyn TailSource>,
    /// The snapshot's retention point: the first index whose body it may
    /// still need.
    from: u64,
    last: u64,
}

impl fmt::Debug for SnapshotData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SnapshotData")
            .field("bytes", &self.bytes.len())
            .field(
                "tail",
                &self.tail.as_ref().map(|plan| plan.from..=plan.last),
            )
            .finish()
    }
}

impl SnapshotData {
    /// Snapshot bytes as received or stored.
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        SnapshotData { bytes, tail: None }
    }

    /// A stored snapshot whose tail `from..=last` will be read from
    /// `source` when it is sent.
    pub(crate) fn with_tail(
        bytes: Vec<u8>,
        source: Arc<dyn TailSource>,
        from: u64,
        last: u64,
    ) -> Self {
        SnapshotData {
            bytes,
            tail: Some(TailPlan { source, from, last }),
        }
    }

    /// The bytes as they are now: without a tail that is only attached
    /// when the snapshot is sent.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The bytes as they are now, dropping the plan to attach a tail.
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }

    /// The bytes to send: the snapshot with its tail read from the log
    /// now. Blocking (it reads the log); the sender runs it on the blocking
    /// pool.
    pub fn into_transfer_bytes(self) -> io::Result<Vec<u8>> {
        let Some(plan) = self.tail else {
            return Ok(self.bytes);
        };
        let decoded = decode(&self.bytes)?;
        let mut out = encode_unsealed(&decoded.core, VERSION);
        let core_size = out.len();
        plan.source.write_tail(plan.from, plan.last, &mut out)?;
        if out.len() == core_size {
            // The log holds nothing the snapshot still needs.
            return Ok(self.bytes);
        }
        seal(&mut out);
        Ok(out)
    }
}

/// Test support: damage a snapshot the way a faulty sender or a forger
/// would, with a valid checksum, so that only the chain can tell.
#[cfg(feature = "testing")]
pub mod testing {
    use super::*;

    /// Flips one bit of the payload of the tail record at `index` and
    /// recomputes the checksum. `None` if the bytes hold no such record.
    pub fn corrupt_tail_record(bytes: &[u8], index: u64) -> Option<Vec<u8>> {
        let decoded = decode(bytes).ok()?;
        let tail = decoded.tail?;
        let record = tail.records.iter().find(|r| r.index == index)?;
        let at = record.payload.as_ptr() as usize - bytes.as_ptr() as usize;
        if record.payload.is_empty() {
            return None;
        }
        let mut out = bytes.to_vec();
        out[at] ^= 1;
        seal(&mut out);
        Some(out)
    }

    /// The indexes of the tail `bytes` carry, if any.
    pub fn tail_indexes(bytes: &[u8]) -> Option<std::ops::RangeInclusive<u64>> {
        let tail = decode(bytes).ok()?.tail?;
        Some(tail.first..=tail.records.last()?.index)
    }
}

/// Entry points for fuzz targets (feature `testing`; see
/// `crate::log::fuzzing` for the conventions): each must return normally
/// for every input.
/// Small valid snapshots, for the unit tests and the fuzz seeds.
#[cfg(any(test, feature = "testing"))]
pub(crate) mod samples {
    use super::*;
    use crate::log::Record;

    pub(crate) fn core(last: Option<LogId>, chain_head: Option<Hash>) -> Core {
        Core {
            version: VERSION_WITHOUT_TAIL,
            last_applied: last,
            membership: Membership::default(),
            state: State::default().snapshot(),
            chain_head,
        }
    }

    /// Records 5..=7 chained from `link`, as a log would store them.
    pub(crate) fn records(link: Hash) -> (Vec<Record>, Hash) {
        let mut head = link;
        let records = (5..=7u64)
            .map(|index| {
                let payload = bytes::Bytes::from(vec![index as u8; 10 * index as usize]);
                let digest = frame::payload_digest(&payload);
                let hash = frame::chain_hash(&head, 2, index, 3, 1000 + index, &digest);
                head = hash;
                Record {
                    index,
                    term: 3,
                    kind: 2,
                    timestamp_ms: 1000 + index,
                    hash,
                    payload,
                }
            })
            .collect();
        (records, head)
    }

    pub(crate) fn with_tail(core: &Core, link: &Hash, records: &[Record]) -> Vec<u8> {
        let mut out = encode_unsealed(core, VERSION);
        encode_tail(&mut out, link, records);
        seal(&mut out);
        out
    }
}

#[cfg(feature = "testing")]
pub mod fuzzing {
    use super::*;
    use crate::raft::log_id;

    /// Arbitrary bytes as a received snapshot, checked as a follower checks
    /// one before installing it: first as given (magic, checksum), then
    /// sealed (a valid magic and checksum over the input), so the version,
    /// core, tail and chain checks and the state's decoder see arbitrary
    /// bytes too. Returns whether the sealed input passed every check (a
    /// receiver would install it).
    pub fn snapshot_decode(data: &[u8]) -> bool {
        let _ = check(data, None);
        let mut sealed = Vec::with_capacity(PREFIX_SIZE + data.len());
        sealed.extend_from_slice(MAGIC);
        sealed.extend_from_slice(&[0; 4]);
        sealed.extend_from_slice(data);
        seal(&mut sealed);
        let Ok(decoded) = decode(&sealed) else {
            return false;
        };
        let last = decoded.core.last_applied;
        let checked = check(&sealed, last).is_ok();
        restore_state(&decoded.core).is_ok() && checked
    }

    /// Seeds for the corpus: the part after magic and checksum of valid
    /// snapshots (without a tail; with a chained tail of three records; with
    /// a tail but no chain head), as [`snapshot_decode`] seals them.
    pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
        use super::samples::{core, records, with_tail};
        let link = [9; 32];
        let (records, head) = records(link);
        let with_tail = |core: &Core| with_tail(core, &link, &records);
        let body = |bytes: Vec<u8>| bytes[PREFIX_SIZE..].to_vec();
        vec![
            ("snapshot-empty", body(encode(&core(None, None)))),
            (
                "snapshot-no-tail",
                body(encode(&core(Some(log_id(3, 7)), Some(head)))),
            ),
            (
                "snapshot-tail",
                body(with_tail(&core(Some(log_id(3, 7)), Some(head)))),
            ),
            (
                "snapshot-tail-unchained",
                body(with_tail(&core(Some(log_id(3, 7)), None))),
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::samples::{core, records, with_tail};
    use super::*;
    use crate::log::Record;
    use crate::raft::log_id;

    #[test]
    fn a_tail_round_trips_and_checks() {
        let link = [9; 32];
        let (records, head) = records(link);
        let bytes = with_tail(&core(Some(log_id(3, 7)), Some(head)), &link, &records);
        let decoded = check(&bytes, Some(log_id(3, 7))).expect("a good snapshot");
        let tail = decoded.tail.expect("a tail");
        assert_eq!((tail.first, tail.link), (5, link));
        assert_eq!(tail.records.len(), 3);
        for (got, want) in tail.records.iter().zip(&records) {
            assert_eq!(got.payload, &want.payload[..]);
            assert_eq!((got.index, got.hash), (want.index, want.hash));
        }
    }

    #[test]
    fn a_snapshot_without_tail_is_version_2_as_before() {
        let bytes = encode(&core(Some(log_id(1, 4)), None));
        // As the code before tails wrote it: magic, checksum, the core.
        let mut old = vec![0; 8];
        old[..4].copy_from_slice(MAGIC);
        old.extend(postcard::to_allocvec(&core(Some(log_id(1, 4)), None)).unwrap());
        seal(&mut old);
        assert_eq!(bytes, old);
        let decoded = check(&bytes, Some(log_id(1, 4))).expect("version 2 reads");
        assert_eq!(decoded.core.version, VERSION_WITHOUT_TAIL);
        assert!(decoded.tail.is_none());
        // Bytes after a version 2 core are refused, not ignored.
        let mut longer = bytes.clone();
        longer.extend_from_slice(b"SLTL");
        seal(&mut longer);
        assert!(matches!(
            decode(&longer),
            Err(SnapshotError::TailLayout { .. })
        ));
    }

    #[test]
    fn a_changed_record_fails_the_chain_by_name() {
        let link = [9; 32];
        let (mut records, head) = records(link);
        let mut payload = records[1].payload.to_vec();
        payload[0] ^= 1;
        records[1].payload = payload.into();
        let bytes = with_tail(&core(Some(log_id(3, 7)), Some(head)), &link, &records);
        match check(&bytes, Some(log_id(3, 7))) {
            Err(SnapshotError::TailHash { index: 6, .. }) => {}
            other => panic!("expected TailHash at 6, got {other:?}"),
        }
        // A record rewritten with its own hash recomputed breaks the next
        // link, or, for the last one, the chain head.
        let (records, head) = records_rehashed_last(link);
        let bytes = with_tail(&core(Some(log_id(3, 7)), Some(head)), &link, &records);
        assert!(matches!(
            check(&bytes, Some(log_id(3, 7))),
            Err(SnapshotError::TailChainHead { index: 7, .. })
        ));
    }

    /// Records whose last one was rewritten and rehashed by a forger.
    fn records_rehashed_last(link: Hash) -> (Vec<Record>, Hash) {
        let (mut records, head) = records(link);
        let link = records[1].hash;
        let last = records.last_mut().unwrap();
        last.payload = bytes::Bytes::from_static(b"forged");
        last.hash = frame::chain_hash(&link, 2, 7, 3, 1007, &frame::payload_digest(b"forged"));
        (records, head)
    }

    #[test]
    fn a_tail_must_end_at_the_snapshot() {
        let link = [9; 32];
        let (records, head) = records(link);
        let bytes = with_tail(&core(Some(log_id(3, 8)), Some(head)), &link, &records);
        assert!(matches!(
            check(&bytes, Some(log_id(3, 8))),
            Err(SnapshotError::TailEnd { index: 8, .. })
        ));
        let bytes = with_tail(&core(Some(log_id(3, 7)), Some(head)), &link, &records);
        assert!(matches!(
            check(&bytes, Some(log_id(3, 6))),
            Err(SnapshotError::MetaMismatch { .. })
        ));
    }

    #[test]
    fn every_damaged_tail_byte_is_refused() {
        let link = [9; 32];
        let (records, head) = records(link);
        let snapshot = core(Some(log_id(3, 7)), Some(head));
        let bytes = with_tail(&snapshot, &link, &records);
        let tail_at = encode_unsealed(&snapshot, VERSION).len();
        for at in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x40;
            assert!(check(&damaged, Some(log_id(3, 7))).is_err(), "byte {at}");
            // With the checksum recomputed (a faulty sender, a forger),
            // the chain still refuses every change to the tail.
            seal(&mut damaged);
            if at >= tail_at {
                assert!(check(&damaged, Some(log_id(3, 7))).is_err(), "byte {at}");
            }
        }
    }

    #[test]
    fn lengths_never_reach_past_the_bytes() {
        let link = [9; 32];
        let (records, head) = records(link);
        let snapshot = core(Some(log_id(3, 7)), Some(head));
        let bytes = with_tail(&snapshot, &link, &records);
        let core_size = encode_unsealed(&snapshot, VERSION).len();
        for cut in 0..bytes.len() {
            let mut short = bytes[..cut].to_vec();
            if short.len() >= PREFIX_SIZE {
                seal(&mut short);
            }
            // Only the core alone (no tail at all) is a whole snapshot.
            if let Ok(decoded) = decode(&short) {
                assert!(decoded.tail.is_none() && cut == core_size, "cut at {cut}");
            }
        }
    }
}

//! Snapshots of the state machine, and the invariant check that guards
//! restoring one.
//!
//! Layout: `version` u8 (2; version 1 had no member heartbeats), `checksum` u32 LE (CRC-32/ISO-HDLC, as
//! `crc32fast` computes it, of the version byte followed by the body),
//! then the body: the [`State`] in postcard, followed (from version 3) by
//! its security settings in postcard. A snapshot holds the index and
//! metadata, never event bodies (those stay in the log). Version 2
//! snapshots (no security settings) still restore, with none.
//!
//! Fault model: the bytes may be damaged or hostile. Restoring checks the
//! checksum, decodes, and then checks every invariant of the state, so a
//! restored state is one that `apply` could have produced.

use super::State;
use super::response::SnapshotError;

/// The snapshot version this code writes (2 added member heartbeats and
/// the erased subjects, 3 the security settings). It reads 2 and 3.
pub const SNAPSHOT_VERSION: u8 = 3;

/// The oldest version restored.
const SNAPSHOT_VERSION_MIN: u8 = 2;

/// Version byte plus checksum.
const SNAPSHOT_HEADER_SIZE: usize = 5;

impl State {
    /// Serializes the whole state.
    pub fn snapshot(&self) -> Vec<u8> {
        let header = vec![SNAPSHOT_VERSION, 0, 0, 0, 0];
        let snapshot = postcard::to_extend(self, header).expect("the state encodes into memory");
        let mut snapshot =
            postcard::to_extend(&self.security, snapshot).expect("the state encodes into memory");
        let checksum = snapshot_checksum(&snapshot);
        snapshot[1..SNAPSHOT_HEADER_SIZE].copy_from_slice(&checksum.to_le_bytes());
        snapshot
    }

    /// Rebuilds a state from [`State::snapshot`]'s bytes.
    pub fn restore(bytes: &[u8]) -> Result<State, SnapshotError> {
        if bytes.len() < SNAPSHOT_HEADER_SIZE {
            return Err(SnapshotError::Truncated { size: bytes.len() });
        }
        let stored = u32::from_le_bytes(bytes[1..5].try_into().expect("4 bytes"));
        let computed = snapshot_checksum(bytes);
        if stored != computed {
            return Err(SnapshotError::Checksum { stored, computed });
        }
        if !(SNAPSHOT_VERSION_MIN..=SNAPSHOT_VERSION).contains(&bytes[0]) {
            return Err(SnapshotError::Version {
                found: bytes[0],
                expected: SNAPSHOT_VERSION,
            });
        }
        let (mut state, mut rest): (State, &[u8]) =
            postcard::take_from_bytes(&bytes[SNAPSHOT_HEADER_SIZE..])?;
        if bytes[0] >= 3 {
            (state.security, rest) = postcard::take_from_bytes(rest)?;
        }
        if !rest.is_empty() {
            return Err(SnapshotError::Inconsistent {
                reason: format!("{} bytes follow the state", rest.len()),
            });
        }
        state
            .check_invariants()
            .map_err(|reason| SnapshotError::Inconsistent { reason })?;
        Ok(state)
    }
}

fn snapshot_checksum(snapshot: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&snapshot[..1]);
    hasher.update(&snapshot[SNAPSHOT_HEADER_SIZE..]);
    hasher.finalize()
}

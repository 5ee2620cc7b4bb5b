//! The metadata file `log.meta`: the purge point and the user's opaque
//! bytes (Raft's vote), replaced atomically. Layout in `FORMAT.md`.
//!
//! Fault model: the file is only ever replaced by write-new, sync, rename,
//! sync-dir, so after a crash it is either the old or the new version,
//! whole. A checksum mismatch is therefore never a torn write: it is
//! corruption, reported as such.

use crate::io::{Disk, DiskFile};
use sluice_model::constants::META_SIZE_MAX;

use super::error::{CorruptionReason, Error, Result};
use super::frame::Hash;

pub const NAME: &str = "log.meta";
pub const NAME_TMP: &str = "log.meta.tmp";
const MAGIC: &[u8; 4] = b"SLMT";
const VERSION: u8 = 2;
const VERSION_UNCHAINED: u8 = 1;
pub const HEADER_SIZE: usize = 64;

/// What the metadata file holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Meta {
    /// Every index below this is purged.
    pub purged_next: u64,
    /// The chain hash of the frame at `purged_next − 1`, which the first
    /// retained frame must link to; `None` where it is unknown (a purge
    /// past the end of the log, as when a snapshot was installed): the
    /// first retained frame's link is then trusted as it stands.
    pub anchor: Option<Hash>,
    /// Opaque bytes of the log's user.
    pub app: Vec<u8>,
}

impl Meta {
    fn encode(&self) -> Vec<u8> {
        let size = HEADER_SIZE + self.app.len();
        assert!(size <= META_SIZE_MAX);
        let mut out = Vec::with_capacity(size);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&(size as u32).to_le_bytes());
        out.extend_from_slice(&[VERSION, u8::from(self.anchor.is_some()), 0, 0]);
        out.extend_from_slice(&self.purged_next.to_le_bytes());
        out.extend_from_slice(&(self.app.len() as u32).to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&self.anchor.unwrap_or([0; 32]));
        out.extend_from_slice(&self.app);
        let checksum = checksum(&out);
        out[4..8].copy_from_slice(&checksum.to_le_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> std::result::Result<Meta, String> {
        if bytes.len() < HEADER_SIZE || bytes.len() > META_SIZE_MAX {
            return Err(format!("size {} out of bounds", bytes.len()));
        }
        if &bytes[0..4] != MAGIC {
            return Err("bad magic".to_owned());
        }
        let size = u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize;
        if size != bytes.len() {
            return Err(format!("size field {size}, file has {}", bytes.len()));
        }
        let stored = u32::from_le_bytes(bytes[4..8].try_into().unwrap());
        let computed = checksum(bytes);
        if stored != computed {
            return Err(format!(
                "checksum mismatch: stored {stored:08x}, computed {computed:08x}"
            ));
        }
        if bytes[12] == VERSION_UNCHAINED {
            return Err(format!(
                "format version {VERSION_UNCHAINED} predates the hash chain (this code reads {VERSION}); \
                 the data directory was written by an older sluice"
            ));
        }
        if bytes[12] != VERSION {
            return Err(format!("unknown version {}", bytes[12]));
        }
        if bytes[13] > 1 || bytes[14..16] != [0, 0] || bytes[28..32] != [0; 4] {
            return Err("reserved bytes are set".to_owned());
        }
        let anchor: Hash = bytes[32..64].try_into().expect("32 bytes");
        if bytes[13] == 0 && anchor != [0; 32] {
            return Err("an anchor is stored but not flagged as present".to_owned());
        }
        let app_size = u32::from_le_bytes(bytes[24..28].try_into().unwrap()) as usize;
        if HEADER_SIZE + app_size != size {
            return Err(format!("app size {app_size} does not fit file size {size}"));
        }
        Ok(Meta {
            purged_next: u64::from_le_bytes(bytes[16..24].try_into().unwrap()),
            anchor: (bytes[13] == 1).then_some(anchor),
            app: bytes[HEADER_SIZE..].to_vec(),
        })
    }
}

fn checksum(bytes: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&bytes[0..4]);
    hasher.update(&bytes[8..]);
    hasher.finalize()
}

/// Reads `log.meta`; `None` if it does not exist.
pub fn load<D: Disk>(disk: &D) -> Result<Option<Meta>> {
    let file = match disk.open(NAME) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(Error::io("open", NAME, error)),
    };
    let size = file.size().map_err(|e| Error::io("size", NAME, e))?;
    if size > META_SIZE_MAX as u64 {
        let reason = CorruptionReason::Meta(format!("file is {size} bytes, more than the maximum"));
        return Err(Error::corruption(NAME, 0, None, reason));
    }
    let mut bytes = vec![0; size as usize];
    file.read_at(0, &mut bytes)
        .map_err(|e| Error::io("read", NAME, e))?;
    Meta::decode(&bytes)
        .map(Some)
        .map_err(|what| Error::corruption(NAME, 0, None, CorruptionReason::Meta(what)))
}

/// Replaces `log.meta` atomically: write new, sync, rename, sync dir.
pub fn store<D: Disk>(disk: &D, meta: &Meta) -> Result<()> {
    crate::io::replace_file(disk, NAME, NAME_TMP, &meta.encode())
        .map_err(|e| Error::io("replace", NAME, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage() {
        for anchor in [None, Some([5; 32])] {
            let meta = Meta {
                purged_next: 77,
                anchor,
                app: b"vote".to_vec(),
            };
            let bytes = meta.encode();
            assert_eq!(Meta::decode(&bytes), Ok(meta));
            for bit in 0..bytes.len() * 8 {
                let mut damaged = bytes.clone();
                damaged[bit / 8] ^= 1 << (bit % 8);
                assert!(Meta::decode(&damaged).is_err(), "bit {bit}");
            }
        }
    }
}

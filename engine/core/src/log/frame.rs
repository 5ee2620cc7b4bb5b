//! Encoding and checking of one frame; the layout is in `FORMAT.md`.
//!
//! Everything here is pure: bytes in, a header or a reason out. Decoding
//! never allocates and never reads outside the slice it is given, whatever
//! the bytes say.

use std::fmt;

use sha2::{Digest, Sha256};

use sluice_model::constants::{FRAME_HEADER_SIZE, FRAME_SIZE_MAX, PAYLOAD_SIZE_MAX};

/// The only frame format version this code writes and reads: the chain
/// hash covers a SHA-256 digest of the payload ([`chain_hash`]).
pub const VERSION: u8 = 3;

/// The format before the hash chain; recognised only to name it.
pub const VERSION_UNCHAINED: u8 = 1;

/// The first chained format, whose chain hash ran over the whole payload
/// on the Raft core; recognised only to name it.
pub const VERSION_WHOLE_PAYLOAD: u8 = 2;

/// A SHA-256 chain hash.
pub type Hash = [u8; 32];

/// The link of a chain's first frame when nothing precedes it (a new log).
pub const GENESIS: Hash = [0; 32];

/// Flag bit: the frame carries a hash chain (`link` and `hash` are set).
/// Clear only in logs written with [`crate::log::ChainMode::Off`].
pub const FLAG_CHAINED: u16 = 1;

/// Where the chain fields sit in the header.
pub const LINK_AT: usize = 48;
/// Where this frame's own chain hash sits in the header.
pub const HASH_AT: usize = 80;
const _: () = assert!(HASH_AT + 32 == FRAME_HEADER_SIZE && LINK_AT + 32 == HASH_AT);

/// A decoded, checked frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Whole frame size in bytes.
    pub size: u32,
    /// Nonzero kind, meaning owned by the log's user.
    pub kind: u8,
    /// Entry index.
    pub index: u64,
    /// Entry term.
    pub term: u64,
    /// Every index below this was durable when the frame was written.
    pub durable_next: u64,
    /// Wall-clock milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// Flags; only [`FLAG_CHAINED`] is defined.
    pub flags: u16,
    /// The chain hash of the previous frame (index − 1): [`GENESIS`] for
    /// the first frame of a new log.
    pub link: Hash,
    /// This frame's chain hash, [`chain_hash`] of `link`, its replicated
    /// fields and its payload's digest. Computed by [`encode`]; ignored on
    /// its input.
    pub hash: Hash,
}

/// Why bytes are not a valid frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FrameError {
    /// Fewer bytes remain than the header or the size field needs.
    Truncated { needed: u64, available: u64 },
    /// The size field is below the header size or above the maximum.
    Size { size: u32 },
    /// An unknown format version.
    Version { found: u8 },
    /// A frame of format version 1, written before the hash chain existed.
    VersionUnchained,
    /// A frame of format version 2, whose chain hash covers the whole
    /// payload instead of its digest.
    VersionWholePayload,
    /// A zero kind (zeros are never a frame).
    Kind,
    /// Reserved bits are set.
    Reserved,
    /// The stored checksum does not match the bytes.
    Checksum { stored: u32, computed: u32 },
    /// A valid frame, but not the index expected at this position.
    Index { expected: u64, found: u64 },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            FrameError::Truncated { needed, available } => {
                write!(
                    f,
                    "frame truncated: needs {needed} bytes, {available} remain"
                )
            }
            FrameError::Size { size } => write!(
                f,
                "frame size {size} out of bounds [{FRAME_HEADER_SIZE}, {FRAME_SIZE_MAX}]"
            ),
            FrameError::Version { found } => {
                write!(f, "unknown frame version {found} (expected {VERSION})")
            }
            FrameError::VersionUnchained => write!(
                f,
                "frame format version {VERSION_UNCHAINED} predates the hash chain; this \
                 data directory was written by an older sluice and must be re-replicated \
                 from a peer running format {VERSION}"
            ),
            FrameError::VersionWholePayload => write!(
                f,
                "frame format version {VERSION_WHOLE_PAYLOAD} chains whole payloads; this sluice \
                 writes and reads format {VERSION} (the chain covers a digest of the payload); \
                 this data directory must be re-replicated from a peer running format {VERSION}"
            ),
            FrameError::Kind => write!(f, "frame kind is zero"),
            FrameError::Reserved => write!(f, "reserved frame bits are set"),
            FrameError::Checksum { stored, computed } => write!(
                f,
                "checksum mismatch: stored {stored:08x}, computed {computed:08x}"
            ),
            FrameError::Index { expected, found } => {
                write!(f, "frame has index {found}, expected {expected}")
            }
        }
    }
}

/// The size on disk of a frame carrying `payload_size` bytes.
pub fn frame_size(payload_size: usize) -> usize {
    assert!(payload_size <= PAYLOAD_SIZE_MAX);
    FRAME_HEADER_SIZE + payload_size
}

/// The digest of a payload that the chain hash covers: SHA-256 of its
/// bytes. This is the chain's one pass over the payload. Whoever creates
/// the payload computes it off the Raft core (the leader's batcher, a
/// follower's network handler; `raft/codec.rs`) and hands it to
/// `Log::append` with the entry; the log computes it itself when absent.
///
/// `sha2` 0.10 runs it on the CPU's SHA extensions (SHA-NI) when the CPU
/// has them, detected at run time, unless built with its `force-soft`
/// feature (nothing here enables it); `audit_report` prints the speed.
pub fn payload_digest(payload: &[u8]) -> Hash {
    Sha256::digest(payload).into()
}

/// The chain hash of a frame: SHA-256 of its link, then its replicated
/// fields (kind, index, term, timestamp, little-endian), then its
/// payload's digest ([`payload_digest`]): 89 bytes, two SHA-256 blocks
/// whatever the payload's size. `durable_next` and the checksum are left
/// out: they are local to one node's copy, and every replica must compute
/// the same chain.
pub fn chain_hash(
    link: &Hash,
    kind: u8,
    index: u64,
    term: u64,
    timestamp_ms: u64,
    payload_digest: &Hash,
) -> Hash {
    let mut fields = [0u8; 32 + 1 + 24 + 32];
    fields[..32].copy_from_slice(link);
    fields[32] = kind;
    fields[33..41].copy_from_slice(&index.to_le_bytes());
    fields[41..49].copy_from_slice(&term.to_le_bytes());
    fields[49..57].copy_from_slice(&timestamp_ms.to_le_bytes());
    fields[57..89].copy_from_slice(payload_digest);
    Sha256::digest(fields).into()
}

/// Appends one encoded frame to `out`: the header is built on the stack
/// and written with one copy, then the checksum runs over the frame in
/// place, one contiguous run (crc32fast's SIMD path wants long runs).
///
/// With [`FLAG_CHAINED`] set, the frame's chain hash is computed from
/// `header_fields.link` and `digest`, the payload's [`payload_digest`]
/// (computed here when `None`), and returned; without it, both chain
/// fields are written as zeros, `digest` is ignored and zeros are
/// returned.
///
/// A given digest is trusted: a wrong one would store a hash that does
/// not match the frame's bytes. Debug builds recompute it and panic on a
/// mismatch; in any build, `sluice verify` (`audit::verify`) recomputes
/// every frame's hash from its bytes and names such a frame.
pub fn encode(
    out: &mut Vec<u8>,
    header_fields: &Header,
    payload: &[u8],
    digest: Option<&Hash>,
) -> Hash {
    assert!(header_fields.kind != 0, "frame kind 0 is reserved");
    assert!(
        header_fields.flags & !FLAG_CHAINED == 0,
        "undefined frame flags"
    );
    let size = frame_size(payload.len());
    assert_eq!(header_fields.size as usize, size);
    let chained = header_fields.flags & FLAG_CHAINED != 0;
    let (link, hash) = if chained {
        let h = &header_fields;
        let digest = match digest {
            Some(given) => {
                debug_assert_eq!(
                    *given,
                    payload_digest(payload),
                    "the payload digest given for index {} does not match its payload",
                    h.index
                );
                *given
            }
            None => payload_digest(payload),
        };
        let hash = chain_hash(&h.link, h.kind, h.index, h.term, h.timestamp_ms, &digest);
        (h.link, hash)
    } else {
        ([0; 32], [0; 32])
    };
    let mut header = [0u8; FRAME_HEADER_SIZE];
    header[0..4].copy_from_slice(&header_fields.size.to_le_bytes());
    header[8] = VERSION;
    header[9] = header_fields.kind;
    header[10..12].copy_from_slice(&header_fields.flags.to_le_bytes());
    header[16..24].copy_from_slice(&header_fields.index.to_le_bytes());
    header[24..32].copy_from_slice(&header_fields.term.to_le_bytes());
    header[32..40].copy_from_slice(&header_fields.durable_next.to_le_bytes());
    header[40..48].copy_from_slice(&header_fields.timestamp_ms.to_le_bytes());
    header[LINK_AT..LINK_AT + 32].copy_from_slice(&link);
    header[HASH_AT..HASH_AT + 32].copy_from_slice(&hash);
    let start = out.len();
    out.reserve(size);
    out.extend_from_slice(&header);
    out.extend_from_slice(payload);
    let checksum = checksum(&out[start..]);
    out[start + 4..start + 8].copy_from_slice(&checksum.to_le_bytes());
    hash
}

/// Recomputes the chain hash of a decoded frame from its own bytes (the
/// link it stores, its fields, and the digest of its payload). `frame` is
/// the whole frame.
pub fn recompute_hash(header: &Header, frame: &[u8]) -> Hash {
    chain_hash(
        &header.link,
        header.kind,
        header.index,
        header.term,
        header.timestamp_ms,
        &payload_digest(&frame[FRAME_HEADER_SIZE..header.size as usize]),
    )
}

/// CRC-32 of a whole frame, skipping the checksum field itself.
pub fn checksum(frame: &[u8]) -> u32 {
    debug_assert!(frame.len() >= FRAME_HEADER_SIZE);
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&frame[0..4]);
    hasher.update(&frame[8..]);
    hasher.finalize()
}

/// Checks the frame that starts at `bytes[0]` (the slice may run past its
/// end) and returns its header. The checksum is verified.
pub fn decode(bytes: &[u8]) -> Result<Header, FrameError> {
    let header = decode_header(bytes)?;
    let frame = &bytes[..header.size as usize];
    let stored = u32_at(frame, 4);
    let computed = checksum(frame);
    if stored != computed {
        return Err(FrameError::Checksum { stored, computed });
    }
    Ok(header)
}

/// Checks everything but the checksum: cheap plausibility, used to skip
/// garbage quickly when searching for frames.
pub fn decode_header(bytes: &[u8]) -> Result<Header, FrameError> {
    let available = bytes.len() as u64;
    if bytes.len() < FRAME_HEADER_SIZE {
        return Err(FrameError::Truncated {
            needed: FRAME_HEADER_SIZE as u64,
            available,
        });
    }
    let size = u32_at(bytes, 0);
    if (size as usize) < FRAME_HEADER_SIZE || size as usize > FRAME_SIZE_MAX {
        return Err(FrameError::Size { size });
    }
    if bytes[8] == VERSION_UNCHAINED {
        return Err(FrameError::VersionUnchained);
    }
    if bytes[8] == VERSION_WHOLE_PAYLOAD {
        return Err(FrameError::VersionWholePayload);
    }
    if bytes[8] != VERSION {
        return Err(FrameError::Version { found: bytes[8] });
    }
    if bytes[9] == 0 {
        return Err(FrameError::Kind);
    }
    let flags = u16::from_le_bytes([bytes[10], bytes[11]]);
    if flags & !FLAG_CHAINED != 0 || bytes[12..16] != [0; 4] {
        return Err(FrameError::Reserved);
    }
    if available < u64::from(size) {
        return Err(FrameError::Truncated {
            needed: u64::from(size),
            available,
        });
    }
    Ok(Header {
        size,
        kind: bytes[9],
        index: u64_at(bytes, 16),
        term: u64_at(bytes, 24),
        durable_next: u64_at(bytes, 32),
        timestamp_ms: u64_at(bytes, 40),
        flags,
        link: hash_at(bytes, LINK_AT),
        hash: hash_at(bytes, HASH_AT),
    })
}

fn hash_at(bytes: &[u8], at: usize) -> Hash {
    bytes[at..at + 32].try_into().expect("32 bytes")
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(payload: &[u8]) -> (Header, Vec<u8>) {
        let header = Header {
            size: frame_size(payload.len()) as u32,
            kind: 3,
            index: 42,
            term: 7,
            durable_next: 40,
            timestamp_ms: 1_700_000_000_000,
            flags: FLAG_CHAINED,
            link: [9; 32],
            hash: [0; 32],
        };
        let mut out = Vec::new();
        let hash = encode(&mut out, &header, payload, None);
        (Header { hash, ..header }, out)
    }

    #[test]
    fn round_trip() {
        let (header, bytes) = sample(b"hello");
        assert_eq!(bytes.len(), FRAME_HEADER_SIZE + 5);
        assert_eq!(decode(&bytes), Ok(header));
        assert_eq!(&bytes[FRAME_HEADER_SIZE..], b"hello");
    }

    #[test]
    fn every_bit_flip_is_detected() {
        let (_, bytes) = sample(b"payload bytes of some length");
        for bit in 0..bytes.len() * 8 {
            let mut damaged = bytes.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            assert!(
                decode(&damaged).is_err(),
                "flip of bit {bit} went unnoticed"
            );
        }
    }

    #[test]
    fn chain_hash_covers_link_fields_and_payload_digest_but_not_durable_next() {
        let (header, bytes) = sample(b"hello");
        assert_eq!(recompute_hash(&header, &bytes), header.hash);
        let digest = payload_digest(b"hello");
        let at = |link: &Hash, kind, index, term, ts, payload: &[u8]| {
            chain_hash(link, kind, index, term, ts, &payload_digest(payload))
        };
        let base = at(&header.link, 3, 42, 7, 1_700_000_000_000, b"hello");
        assert_eq!(base, header.hash);
        assert_eq!(
            base,
            chain_hash(&header.link, 3, 42, 7, 1_700_000_000_000, &digest)
        );
        assert_ne!(at(&[8; 32], 3, 42, 7, 1_700_000_000_000, b"hello"), base);
        assert_ne!(
            at(&header.link, 2, 42, 7, 1_700_000_000_000, b"hello"),
            base
        );
        assert_ne!(
            at(&header.link, 3, 43, 7, 1_700_000_000_000, b"hello"),
            base
        );
        assert_ne!(
            at(&header.link, 3, 42, 8, 1_700_000_000_000, b"hello"),
            base
        );
        assert_ne!(
            at(&header.link, 3, 42, 7, 1_700_000_000_001, b"hello"),
            base
        );
        assert_ne!(
            at(&header.link, 3, 42, 7, 1_700_000_000_000, b"hellp"),
            base
        );
        assert_ne!(at(&header.link, 3, 42, 7, 1_700_000_000_000, b"hell"), base);
        // The chain hashes the digest, not the payload itself.
        let mut whole = Sha256::new();
        whole.update(header.link);
        whole.update([3]);
        whole.update(42u64.to_le_bytes());
        whole.update(7u64.to_le_bytes());
        whole.update(1_700_000_000_000u64.to_le_bytes());
        whole.update(b"hello");
        assert_ne!(<[u8; 32]>::from(whole.finalize()), base);
        let other = Header {
            durable_next: 0,
            ..header
        };
        let mut out = Vec::new();
        assert_eq!(encode(&mut out, &other, b"hello", None), base);
    }

    #[test]
    fn a_given_digest_encodes_as_a_computed_one() {
        let (header, bytes) = sample(b"payload given a digest");
        let mut out = Vec::new();
        let digest = payload_digest(b"payload given a digest");
        let hash = encode(&mut out, &header, b"payload given a digest", Some(&digest));
        assert_eq!(hash, header.hash);
        assert_eq!(out, bytes);
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "does not match its payload")]
    fn a_wrong_digest_panics_in_debug_builds() {
        let (header, _) = sample(b"right");
        let mut out = Vec::new();
        encode(&mut out, &header, b"right", Some(&payload_digest(b"wrong")));
    }

    #[test]
    fn unchained_frames_ignore_the_digest() {
        let (header, _) = sample(b"abc");
        let header = Header { flags: 0, ..header };
        let mut out = Vec::new();
        // Not checked: nothing is hashed without the chain.
        assert_eq!(encode(&mut out, &header, b"abc", Some(&[1; 32])), [0; 32]);
        assert_eq!(
            decode(&out).map(|h| (h.link, h.hash)),
            Ok(([0; 32], [0; 32]))
        );
    }

    #[test]
    fn old_versions_are_named() {
        let (_, mut bytes) = sample(b"old");
        bytes[8] = VERSION_UNCHAINED;
        assert_eq!(decode(&bytes), Err(FrameError::VersionUnchained));
        bytes[8] = VERSION_WHOLE_PAYLOAD;
        assert_eq!(decode(&bytes), Err(FrameError::VersionWholePayload));
        bytes[8] = VERSION + 1;
        assert_eq!(
            decode(&bytes),
            Err(FrameError::Version { found: VERSION + 1 })
        );
    }

    #[test]
    fn zeros_are_never_a_frame() {
        assert_eq!(decode(&[0; 128]), Err(FrameError::Size { size: 0 }));
    }

    #[test]
    fn short_input_is_truncated_not_a_panic() {
        let (_, bytes) = sample(b"abc");
        for len in 0..bytes.len() {
            assert!(matches!(
                decode(&bytes[..len]),
                Err(FrameError::Truncated { .. })
            ));
        }
    }
}

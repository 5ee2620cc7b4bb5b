//! Encoding and checking of one frame; the layout is in `FORMAT.md`.
//!
//! Everything here is pure: bytes in, a header or a reason out. Decoding
//! never allocates and never reads outside the slice it is given, whatever
//! the bytes say.

use std::fmt;

use crate::constants::{FRAME_HEADER_SIZE, FRAME_SIZE_MAX, PAYLOAD_SIZE_MAX};

/// The only frame format version this code writes and reads.
pub const VERSION: u8 = 1;

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

/// Appends one encoded frame to `out`: the header is built on the stack
/// and written with one copy, then the checksum runs over the frame in
/// place, one contiguous run (crc32fast's SIMD path wants long runs).
pub fn encode(out: &mut Vec<u8>, header_fields: &Header, payload: &[u8]) {
    assert!(header_fields.kind != 0, "frame kind 0 is reserved");
    let size = frame_size(payload.len());
    assert_eq!(header_fields.size as usize, size);
    let mut header = [0u8; FRAME_HEADER_SIZE];
    header[0..4].copy_from_slice(&header_fields.size.to_le_bytes());
    header[8] = VERSION;
    header[9] = header_fields.kind;
    header[16..24].copy_from_slice(&header_fields.index.to_le_bytes());
    header[24..32].copy_from_slice(&header_fields.term.to_le_bytes());
    header[32..40].copy_from_slice(&header_fields.durable_next.to_le_bytes());
    header[40..48].copy_from_slice(&header_fields.timestamp_ms.to_le_bytes());
    let start = out.len();
    out.reserve(size);
    out.extend_from_slice(&header);
    out.extend_from_slice(payload);
    let checksum = checksum(&out[start..]);
    out[start + 4..start + 8].copy_from_slice(&checksum.to_le_bytes());
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
    if bytes[8] != VERSION {
        return Err(FrameError::Version { found: bytes[8] });
    }
    if bytes[9] == 0 {
        return Err(FrameError::Kind);
    }
    if bytes[10..16] != [0; 6] {
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
    })
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
        };
        let mut out = Vec::new();
        encode(&mut out, &header, payload);
        (header, out)
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
    fn zeros_are_never_a_frame() {
        assert_eq!(decode(&[0; 64]), Err(FrameError::Size { size: 0 }));
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

//! Wire frames: the unit every TCP connection between nodes carries.
//!
//! A frame is a fixed 36-byte little-endian [`Header`] and a body (layout,
//! byte by byte, in `WIRE.md` next to this file). This module is pure: it
//! encodes into and decodes from byte buffers and never touches a socket,
//! so the fuzz target `wire_frame` drives it directly.
//!
//! ### Fault model
//! The bytes come from the network: from a buggy or hostile peer, from
//! something that is not a Sluice node at all, or cut short by a closed
//! connection. [`decode`] therefore trusts nothing: it checks the magic
//! and the length bound before waiting for a body (so a peer cannot make
//! it buffer more than [`WIRE_FRAME_SIZE_MAX`]), then the checksum, the version
//! and the flags. It never panics and never allocates; a [`WireError`]
//! means the stream is out of step and the connection must be closed.
//! TCP's own checksum is weak (16 bits), so every frame carries a CRC-32.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use sluice_model::constants::WIRE_FRAME_SIZE_MAX;

/// Largest frame, header included (`sluice_model::constants`).
pub use sluice_model::constants::WIRE_FRAME_SIZE_MAX as FRAME_SIZE_MAX;

use sluice_model::transport::NodeId;

/// Identifies a Sluice frame: the bytes `SLWF` read as a little-endian u32.
pub const MAGIC: u32 = u32::from_le_bytes(*b"SLWF");

/// The protocol version this node speaks.
pub const VERSION: u8 = 1;

/// The size of the fixed header.
pub const HEADER_SIZE: usize = 36;

/// The largest body one frame carries.
pub const BODY_SIZE_MAX: usize = WIRE_FRAME_SIZE_MAX - HEADER_SIZE;

/// Where the checksummed part of the header begins (after magic, length
/// and checksum).
const CHECKED_FROM: usize = 12;

const _: () = assert!(BODY_SIZE_MAX <= u32::MAX as usize);
const _: () = assert!(HEADER_SIZE == CHECKED_FROM + 1 + 1 + 2 + 4 + 8 + 8);

/// Flag bit: the frame answers a request (same request id).
const FLAG_RESPONSE: u16 = 1 << 0;
/// Flag bit: the response is a failure; its body is a UTF-8 message.
const FLAG_FAILURE: u16 = 1 << 1;

/// What a frame is, carried in the header's flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A request; the receiver answers with a response or a failure.
    Request,
    /// A successful response; the body is the handler's answer.
    Response,
    /// A failed response; the body is a UTF-8 message saying why.
    Failure,
}

impl Role {
    fn flags(self) -> u16 {
        match self {
            Role::Request => 0,
            Role::Response => FLAG_RESPONSE,
            Role::Failure => FLAG_RESPONSE | FLAG_FAILURE,
        }
    }

    fn from_flags(flags: u16) -> Option<Role> {
        match flags {
            0 => Some(Role::Request),
            FLAG_RESPONSE => Some(Role::Response),
            f if f == FLAG_RESPONSE | FLAG_FAILURE => Some(Role::Failure),
            _ => None,
        }
    }
}

/// The fields of a frame header that the sender chooses. Magic, length,
/// checksum and version are filled in by [`encode_into`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Request, response or failure.
    pub role: Role,
    /// The message kind, opaque to the transport.
    pub kind: u8,
    /// The Raft group the message belongs to.
    pub group: u32,
    /// Chosen by the caller, unique among its calls in flight on one
    /// connection; a response carries its request's id.
    pub request_id: u64,
    /// The node that sent the frame.
    pub source: NodeId,
}

/// One decoded frame; the body is a zero-copy slice of the read buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The header.
    pub header: Header,
    /// The body.
    pub body: Bytes,
}

/// What bytes that are not a frame's magic suggest.
fn magic_hint(found: u32) -> &'static str {
    let [first, second, ..] = found.to_le_bytes();
    // A TLS record: alert (21) or handshake (22), version 3.x.
    if matches!(first, 0x15 | 0x16) && second == 0x03 {
        return "the peer speaks TLS: give this side the cluster's TLS directory (--tls-dir)";
    }
    "the peer does not speak Sluice's wire protocol; check that the address is a Sluice node's"
}

/// Why a byte stream is not a valid frame. Each one closes the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// The stream does not start with [`MAGIC`].
    #[error("bad magic {found:#010x} (expected {MAGIC:#010x}): {}", magic_hint(*found))]
    BadMagic {
        /// The first four bytes, as a little-endian u32.
        found: u32,
    },
    /// The header announces a body larger than [`BODY_SIZE_MAX`].
    #[error(
        "frame body of {size_bytes} bytes exceeds the bound of {size_bytes_max} bytes; \
         the peer is misbehaving or runs with a larger bound"
    )]
    TooLarge {
        /// The announced body size.
        size_bytes: u64,
        /// The largest body accepted.
        size_bytes_max: u64,
    },
    /// The CRC-32 of the frame does not match its checksum field.
    #[error(
        "checksum mismatch: the frame says {expected:#010x}, its bytes give {actual:#010x}; \
         the data was damaged in transit"
    )]
    ChecksumMismatch {
        /// The checksum field.
        expected: u32,
        /// The checksum computed over the bytes received.
        actual: u32,
    },
    /// The frame is of a protocol version this node does not speak.
    #[error(
        "protocol version {version} is not supported (this node speaks {VERSION}); \
         run one version across the cluster"
    )]
    UnsupportedVersion {
        /// The version field.
        version: u8,
    },
    /// The flags are not a known combination.
    #[error(
        "unknown flags {flags:#06x} (known: 0x0000, 0x0001, 0x0003); the peer speaks \
         a different protocol revision"
    )]
    UnknownFlags {
        /// The flags field.
        flags: u16,
    },
}

/// Appends the frame of `header` and `body` to `buf`.
///
/// # Panics
/// If `body` is longer than [`BODY_SIZE_MAX`]: callers check first.
pub fn encode_into(buf: &mut BytesMut, header: &Header, body: &[u8]) {
    assert!(
        body.len() <= BODY_SIZE_MAX,
        "a {}-byte body exceeds BODY_SIZE_MAX",
        body.len()
    );
    let start = buf.len();
    buf.reserve(HEADER_SIZE + body.len());
    buf.put_u32_le(MAGIC);
    buf.put_u32_le(body.len() as u32);
    buf.put_u32_le(0); // The checksum, filled in below.
    buf.put_u8(VERSION);
    buf.put_u8(header.kind);
    buf.put_u16_le(header.role.flags());
    buf.put_u32_le(header.group);
    buf.put_u64_le(header.request_id);
    buf.put_u64_le(header.source);
    buf.put_slice(body);
    let checksum = crc32fast::hash(&buf[start + CHECKED_FROM..]);
    buf[start + 8..start + CHECKED_FROM].copy_from_slice(&checksum.to_le_bytes());
    debug_assert_eq!(buf.len() - start, HEADER_SIZE + body.len());
}

/// Takes one frame off the front of `buf`.
///
/// Returns `Ok(None)` if `buf` holds no whole frame yet (read more and
/// call again); `buf` is untouched then. A frame's body is split off
/// without copying. After an error the stream is out of step: close it.
pub fn decode(buf: &mut BytesMut) -> Result<Option<Frame>, WireError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let magic = read_u32(buf, 0);
    if magic != MAGIC {
        return Err(WireError::BadMagic { found: magic });
    }
    if buf.len() < 8 {
        return Ok(None);
    }
    let body_size = read_u32(buf, 4) as usize;
    if body_size > BODY_SIZE_MAX {
        return Err(WireError::TooLarge {
            size_bytes: body_size as u64,
            size_bytes_max: BODY_SIZE_MAX as u64,
        });
    }
    let frame_size = HEADER_SIZE + body_size;
    if buf.len() < frame_size {
        return Ok(None);
    }
    let expected = read_u32(buf, 8);
    let actual = crc32fast::hash(&buf[CHECKED_FROM..frame_size]);
    if expected != actual {
        return Err(WireError::ChecksumMismatch { expected, actual });
    }
    let header = decode_header(&buf[..HEADER_SIZE])?;
    let mut frame = buf.split_to(frame_size);
    frame.advance(HEADER_SIZE);
    Ok(Some(Frame {
        header,
        body: frame.freeze(),
    }))
}

/// The body size the frame at the start of `buf` declares, once its first
/// 8 bytes are there (not yet checked: the checksum covers the whole
/// frame). Lets a reader refuse a frame too large for where it is before
/// buffering its body.
pub fn declared_body_size(buf: &[u8]) -> Option<usize> {
    (buf.len() >= 8).then(|| read_u32(buf, 4) as usize)
}

/// The checked fields of a header whose checksum matched.
fn decode_header(bytes: &[u8]) -> Result<Header, WireError> {
    let version = bytes[12];
    if version != VERSION {
        return Err(WireError::UnsupportedVersion { version });
    }
    let flags = u16::from_le_bytes([bytes[14], bytes[15]]);
    let role = Role::from_flags(flags).ok_or(WireError::UnknownFlags { flags })?;
    Ok(Header {
        role,
        kind: bytes[13],
        group: read_u32(bytes, 16),
        request_id: read_u64(bytes, 20),
        source: read_u64(bytes, 28),
    })
}

fn read_u32(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(word)
}

fn read_u64(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

/// The entry point of the `wire_frame` fuzz target, also replayed over the
/// checked-in corpus by `net/tests/wire_corpus.rs`.
pub mod fuzzing {
    use bytes::BytesMut;

    use super::{Frame, WireError, decode, encode_into};

    /// Decodes `data` as a stream of frames, all at once and again arriving
    /// in two pieces (split where the first byte says), and checks that
    /// both give the same frames and the same error, and that every frame
    /// re-encodes to the bytes it came from. Must return for every input.
    pub fn frame_decode(data: &[u8]) {
        let whole = decode_stream(&[data]);
        let split = data
            .first()
            .map_or(0, |&b| usize::from(b) * data.len() / 256);
        let (front, back) = data.split_at(split);
        assert_eq!(decode_stream(&[front, back]), whole);
        let (frames, _) = whole;
        let mut encoded = BytesMut::new();
        for frame in &frames {
            encode_into(&mut encoded, &frame.header, &frame.body);
        }
        assert_eq!(&data[..encoded.len()], &encoded[..]);
    }

    /// Every frame of a stream that arrives in `pieces`, and the error
    /// that ended it, if any.
    fn decode_stream(pieces: &[&[u8]]) -> (Vec<Frame>, Option<WireError>) {
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        for piece in pieces {
            buf.extend_from_slice(piece);
            loop {
                match decode(&mut buf) {
                    Ok(Some(frame)) => frames.push(frame),
                    Ok(None) => break,
                    Err(error) => return (frames, Some(error)),
                }
            }
        }
        (frames, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Header {
        Header {
            role: Role::Request,
            kind: 7,
            group: 3,
            request_id: 0x0102_0304_0506_0708,
            source: 42,
        }
    }

    fn encoded(body: &[u8]) -> BytesMut {
        let mut buf = BytesMut::new();
        encode_into(&mut buf, &header(), body);
        buf
    }

    #[test]
    fn round_trip_and_layout() {
        let mut buf = encoded(b"hello");
        assert_eq!(buf.len(), HEADER_SIZE + 5);
        assert_eq!(&buf[0..4], b"SLWF");
        assert_eq!(&buf[4..8], &5u32.to_le_bytes());
        assert_eq!(buf[12], VERSION);
        assert_eq!(buf[13], 7);
        let frame = decode(&mut buf).unwrap().unwrap();
        assert_eq!(frame.header, header());
        assert_eq!(&frame.body[..], b"hello");
        assert!(buf.is_empty());
    }

    #[test]
    fn the_documented_example() {
        let header = Header {
            role: Role::Request,
            kind: 1,
            group: 0,
            request_id: 1,
            source: 3,
        };
        let mut buf = BytesMut::new();
        encode_into(&mut buf, &header, b"vote");
        let expected: &[u8] = &[
            0x53, 0x4c, 0x57, 0x46, 4, 0, 0, 0, 0x7b, 0x22, 0xe4, 0x86, 1, 1, 0, 0, 0, 0, 0, 0, 1,
            0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, b'v', b'o', b't', b'e',
        ];
        assert_eq!(&buf[..], expected);
    }

    #[test]
    fn every_role_round_trips() {
        for role in [Role::Request, Role::Response, Role::Failure] {
            let mut buf = BytesMut::new();
            encode_into(&mut buf, &Header { role, ..header() }, b"");
            assert_eq!(decode(&mut buf).unwrap().unwrap().header.role, role);
        }
    }

    #[test]
    fn each_prefix_needs_more() {
        let whole = encoded(b"body bytes");
        for size in 0..whole.len() {
            let mut buf = BytesMut::from(&whole[..size]);
            assert_eq!(decode(&mut buf), Ok(None), "prefix of {size} bytes");
            assert_eq!(buf.len(), size);
        }
    }

    #[test]
    fn bad_magic_is_seen_after_four_bytes() {
        let mut buf = BytesMut::from(&b"GET "[..]);
        assert!(matches!(decode(&mut buf), Err(WireError::BadMagic { .. })));
    }

    #[test]
    fn too_large_is_seen_before_the_body() {
        let mut buf = encoded(b"x");
        buf.truncate(8);
        buf[4..8].copy_from_slice(&(BODY_SIZE_MAX as u32 + 1).to_le_bytes());
        assert!(matches!(decode(&mut buf), Err(WireError::TooLarge { .. })));
    }

    #[test]
    fn every_flipped_bit_after_the_length_is_caught() {
        let whole = encoded(b"abc");
        for bit in 8 * 8..whole.len() * 8 {
            let mut buf = whole.clone();
            buf[bit / 8] ^= 1 << (bit % 8);
            let result = decode(&mut buf);
            assert!(
                matches!(result, Err(WireError::ChecksumMismatch { .. })),
                "bit {bit}: {result:?}"
            );
        }
    }

    #[test]
    fn version_and_flags_are_checked() {
        let mut buf = encoded(b"");
        buf[12] = 2;
        refresh_checksum(&mut buf);
        assert_eq!(
            decode(&mut buf),
            Err(WireError::UnsupportedVersion { version: 2 })
        );
        let mut buf = encoded(b"");
        buf[14] = 2;
        refresh_checksum(&mut buf);
        assert_eq!(decode(&mut buf), Err(WireError::UnknownFlags { flags: 2 }));
    }

    fn refresh_checksum(buf: &mut BytesMut) {
        let checksum = crc32fast::hash(&buf[CHECKED_FROM..]);
        buf[8..12].copy_from_slice(&checksum.to_le_bytes());
    }

    #[test]
    fn fuzz_entry_accepts_edge_cases() {
        let two = [encoded(b"one"), encoded(b"two")].concat();
        fuzzing::frame_decode(&two);
        fuzzing::frame_decode(&two[..two.len() - 1]);
        fuzzing::frame_decode(&[]);
        fuzzing::frame_decode(&[0xFF; 64]);
    }
}

//! Segment files: their names, scanning their frames, and the read-only
//! view of a sealed segment.
//!
//! A scan walks frames from the start of a segment and stops at the first
//! one that fails a check; what that stop means (torn tail or corruption)
//! is decided by the caller, which knows whether the segment is sealed.

use bytes::Bytes;

use crate::io::DiskFile;
use sluice_model::constants::FRAME_HEADER_SIZE;

use super::error::{CorruptionReason, Error, Result};
use super::frame::{self, FrameError, Hash, Header};

const SUFFIX: &str = ".seg";
const SUFFIX_TMP: &str = ".seg.tmp";
const DIGITS: usize = 20;

/// The file name of the segment whose first index is `first`.
pub fn name(first: u64) -> String {
    format!("{first:020}{SUFFIX}")
}

/// The name a segment is rewritten under before it replaces the original.
pub fn name_tmp(first: u64) -> String {
    format!("{first:020}{SUFFIX_TMP}")
}

/// The first index of a segment file name, or `None` if not a segment.
pub fn parse_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SUFFIX)?;
    if digits.len() != DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Whether `name` is a leftover of an interrupted segment rewrite.
pub fn is_tmp_name(name: &str) -> bool {
    name.strip_suffix(SUFFIX_TMP)
        .is_some_and(|digits| digits.len() == DIGITS)
}

/// The valid prefix of a segment's bytes.
#[derive(Debug, Default)]
pub struct Scan {
    /// Byte offset of every valid frame, in order.
    pub offsets: Vec<u32>,
    /// Byte offset just past the last valid frame.
    pub end: u64,
    /// Index after the last valid frame.
    pub next_index: u64,
    /// Timestamp of the last valid frame.
    pub last_timestamp_ms: Option<u64>,
    /// Chain hash of the last valid frame, as stored.
    pub last_hash: Option<Hash>,
    /// Why the scan stopped before the end of the bytes, if it did.
    pub stop: Option<FrameError>,
}

/// Scans frames from `bytes[0]`, expecting the first to hold `first_index`.
pub fn scan(bytes: &[u8], first_index: u64) -> Scan {
    let mut scan = Scan {
        next_index: first_index,
        ..Scan::default()
    };
    let mut offset = 0usize;
    while offset < bytes.len() {
        match frame::decode(&bytes[offset..]) {
            Ok(header) if header.index == scan.next_index => {
                scan.offsets
                    .push(u32::try_from(offset).expect("segment offsets fit u32"));
                scan.next_index += 1;
                scan.last_timestamp_ms = Some(header.timestamp_ms);
                scan.last_hash = Some(header.hash);
                offset += header.size as usize;
            }
            Ok(header) => {
                scan.stop = Some(FrameError::Index {
                    expected: scan.next_index,
                    found: header.index,
                });
                break;
            }
            Err(error) => {
                scan.stop = Some(error);
                break;
            }
        }
    }
    scan.end = offset as u64;
    scan
}

/// Valid frames found after a bad one.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Later {
    /// How many valid frames with a higher index were found.
    pub frames: u64,
    /// The highest `durable_next` any of them records.
    pub durable_next_max: u64,
    /// Where the frame right after the bad one (its index plus one) starts,
    /// if it was found: the bad frame's extent ends there.
    pub successor: Option<u64>,
}

/// Searches `bytes[from..]` byte by byte for valid frames whose index is at
/// least `bad_index`: evidence about the damaged frame at `from`. Cheap
/// header checks reject garbage before any checksum is computed. A frame's
/// size field is never zero, so no frame starts after the last non-zero
/// byte: the search stops there (a segment made from a spare ends in
/// megabytes of zeros).
pub fn later_frames(bytes: &[u8], from: u64, bad_index: u64) -> Later {
    let mut later = Later::default();
    let mut offset = from as usize + 1;
    let starts_end = bytes.iter().rposition(|&b| b != 0).map_or(0, |p| p + 1);
    while offset + FRAME_HEADER_SIZE <= bytes.len() && offset < starts_end {
        let candidate = &bytes[offset..];
        let plausible = frame::decode_header(candidate).is_ok_and(|h| h.index >= bad_index);
        match plausible.then(|| frame::decode(candidate)) {
            Some(Ok(header)) => {
                later.frames += 1;
                later.durable_next_max = later.durable_next_max.max(header.durable_next);
                if header.index == bad_index + 1 && later.successor.is_none() {
                    later.successor = Some(offset as u64);
                }
                offset += header.size as usize;
            }
            _ => offset += 1,
        }
    }
    later
}

/// Whether a crash could have left the bad frame at `start` as it is.
///
/// The log only ever writes past the end of a freshly created or freshly
/// truncated file, or over the zeros of a segment made from a spare, and a
/// sector is written whole or not at all, so a byte a crash lost reads as
/// zero (or lies past the end of the file). A torn
/// frame therefore has some sector whose part of the frame is all zeros,
/// or it runs past the end of the file. A bad frame with none of that was
/// written whole and damaged afterwards: that is corruption, even where no
/// later frame records the sync that made it durable.
///
/// The frame's extent ends where its successor starts, else where its own
/// size field says, else (a size that makes no sense and no successor to
/// bound it) nothing can be proven and the answer is yes.
pub fn torn_explainable(bytes: &[u8], start: u64, successor: Option<u64>) -> bool {
    let start = start as usize;
    let end = match successor {
        Some(next) => next as usize,
        None => match frame::decode_header(&bytes[start..]) {
            Ok(header) => start + header.size as usize,
            Err(FrameError::Size { .. } | FrameError::Truncated { .. }) => return true,
            Err(_) if bytes[start..].len() < FRAME_HEADER_SIZE => return true,
            // A header with a sane size but bad version, kind or reserved
            // bits: bound it by its size field.
            Err(_) => {
                let size = u32::from_le_bytes(bytes[start..start + 4].try_into().expect("4 bytes"));
                start + size as usize
            }
        },
    };
    if end > bytes.len() || end <= start {
        return true;
    }
    let sector = sluice_model::constants::SECTOR_SIZE as usize;
    let mut chunk_start = start;
    while chunk_start < end {
        let chunk_end = ((chunk_start / sector) + 1) * sector;
        let chunk = &bytes[chunk_start..chunk_end.min(end)];
        if chunk.iter().all(|&b| b == 0) {
            return true;
        }
        chunk_start = chunk_end;
    }
    false
}

/// A sealed segment's bytes (mapped) and where each frame starts.
#[derive(Debug)]
pub struct SealedView {
    pub map: Bytes,
    pub offsets: Vec<u32>,
    pub last_timestamp_ms: Option<u64>,
    pub last_hash: Option<Hash>,
}

impl SealedView {
    /// Maps and scans a sealed segment holding `[first, next)`. Every
    /// checksum is verified once here; anything short of exactly those
    /// frames is corruption, because a sealed segment was synced whole.
    pub fn load<F: DiskFile>(file: &F, name: &str, first: u64, next: u64) -> Result<Self> {
        let map = file.map().map_err(|e| Error::io("map", name, e))?;
        let scan = scan(&map, first);
        if let Some(error) = scan.stop {
            let reason = CorruptionReason::Frame(error);
            return Err(Error::corruption(
                name,
                scan.end,
                Some(scan.next_index),
                reason,
            ));
        }
        if scan.next_index != next {
            let reason = CorruptionReason::SegmentShort {
                expected_next: next,
                found_next: scan.next_index,
            };
            return Err(Error::corruption(
                name,
                scan.end,
                Some(scan.next_index),
                reason,
            ));
        }
        Ok(SealedView {
            map,
            offsets: scan.offsets,
            last_timestamp_ms: scan.last_timestamp_ms,
            last_hash: scan.last_hash,
        })
    }

    /// The checked header and payload of `index`, zero-copy.
    pub fn frame(&self, name: &str, first: u64, index: u64) -> Result<(Header, Bytes)> {
        let offset = self.offsets[(index - first) as usize] as usize;
        checked_frame(&self.map, offset, name, index)
    }
}

/// Decodes the frame at `bytes[offset..]`, checks it holds `index`, and
/// returns its header and a zero-copy slice of its payload.
pub fn checked_frame(
    bytes: &Bytes,
    offset: usize,
    name: &str,
    index: u64,
) -> Result<(Header, Bytes)> {
    let checked = frame::decode(&bytes[offset..]).and_then(|header| {
        if header.index == index {
            Ok(header)
        } else {
            Err(FrameError::Index {
                expected: index,
                found: header.index,
            })
        }
    });
    match checked {
        Ok(header) => {
            let payload = bytes.slice(offset + FRAME_HEADER_SIZE..offset + header.size as usize);
            Ok((header, payload))
        }
        Err(error) => Err(Error::corruption(
            name,
            offset as u64,
            Some(index),
            CorruptionReason::Frame(error),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(first: u64, count: u64, durable_next: u64) -> Vec<u8> {
        let mut out = Vec::new();
        for index in first..first + count {
            let payload = index.to_le_bytes();
            let header = Header {
                size: frame::frame_size(payload.len()) as u32,
                kind: 1,
                index,
                term: 1,
                durable_next,
                timestamp_ms: index,
                flags: frame::FLAG_CHAINED,
                link: [0; 32],
                hash: [0; 32],
            };
            frame::encode(&mut out, &header, &payload, None);
        }
        out
    }

    #[test]
    fn names_round_trip() {
        assert_eq!(name(42), "00000000000000000042.seg");
        assert_eq!(parse_name(&name(u64::MAX)), Some(u64::MAX));
        assert_eq!(parse_name("42.seg"), None);
        assert_eq!(parse_name(&name_tmp(3)), None);
        assert!(is_tmp_name(&name_tmp(3)));
    }

    #[test]
    fn scan_stops_at_damage_and_later_frames_are_found() {
        let mut bytes = frames(10, 5, 0);
        bytes.extend(frames(15, 3, 14));
        let frame_size = bytes.len() / 8;
        bytes[2 * frame_size + 20] ^= 0x10;
        let scan = scan(&bytes, 10);
        assert_eq!(scan.offsets.len(), 2);
        assert_eq!(scan.next_index, 12);
        assert!(matches!(scan.stop, Some(FrameError::Checksum { .. })));
        let later = later_frames(&bytes, scan.end, 12);
        assert_eq!(
            later,
            Later {
                frames: 5,
                durable_next_max: 14,
                successor: Some(3 * frame_size as u64),
            }
        );
        // Every sector of the damaged frame holds data: not a torn write.
        assert!(!torn_explainable(&bytes, scan.end, later.successor));
        // A lost sector reads as zeros: zeroing the frame's part of its
        // sector makes it look torn.
        let mut torn = bytes.clone();
        let frame = 2 * frame_size;
        torn[frame..frame + frame_size].fill(0);
        assert!(torn_explainable(&torn, frame as u64, later.successor));
        // A frame cut by the end of the file is torn.
        assert!(torn_explainable(&bytes[..frame + 10], frame as u64, None));
    }

    #[test]
    fn index_discontinuity_stops_the_scan() {
        let mut bytes = frames(0, 2, 0);
        bytes.extend(frames(5, 1, 0));
        let scan = scan(&bytes, 0);
        assert_eq!(scan.next_index, 2);
        assert_eq!(
            scan.stop,
            Some(FrameError::Index {
                expected: 2,
                found: 5
            })
        );
    }
}

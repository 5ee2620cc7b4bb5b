//! Every bound the engine enforces, in one place.
//!
//! Names end in `_max` or `_min`; sizes are in bytes unless the name says
//! otherwise. Compile-time assertions tie the constants to each other.

/// The sector size the crash model tears writes at, and the unit the disk
/// contract speaks of.
pub const SECTOR_SIZE: u64 = 512;

/// Size of a frame header on disk; see `log/FORMAT.md`.
pub const FRAME_HEADER_SIZE: usize = 112;

/// Largest frame (header plus payload) the log writes or accepts on read.
/// Recovery treats a length field above this as damage, which bounds the
/// memory a corrupt length can make us touch.
pub const FRAME_SIZE_MAX: usize = 16 * 1024 * 1024;

/// Largest payload of one frame.
pub const PAYLOAD_SIZE_MAX: usize = FRAME_SIZE_MAX - FRAME_HEADER_SIZE;

/// Largest segment file. Frame offsets inside a segment are `u32`.
pub const SEGMENT_SIZE_MAX: u64 = 1024 * 1024 * 1024;

/// Smallest configurable segment size: one largest frame must fit.
pub const SEGMENT_SIZE_MIN: u64 = 4096;

/// Default segment size.
pub const SEGMENT_SIZE_DEFAULT: u64 = 64 * 1024 * 1024;

/// Largest metadata file (the Raft vote and log bounds live there).
pub const META_SIZE_MAX: usize = 64 * 1024;

/// Largest number of entries in one `append` call.
pub const APPEND_ENTRIES_MAX: usize = 1 << 20;

const _: () = assert!(FRAME_HEADER_SIZE % 8 == 0);
const _: () = assert!(FRAME_SIZE_MAX as u64 <= SEGMENT_SIZE_MAX);
const _: () = assert!(SEGMENT_SIZE_MAX <= u32::MAX as u64 + 1);
const _: () = assert!(SEGMENT_SIZE_MIN % SECTOR_SIZE == 0);
const _: () = assert!(SEGMENT_SIZE_DEFAULT % SECTOR_SIZE == 0);
const _: () = assert!(SEGMENT_SIZE_DEFAULT <= SEGMENT_SIZE_MAX);

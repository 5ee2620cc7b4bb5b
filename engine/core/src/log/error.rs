//! The log's error type.

use std::fmt;
use std::io;

use super::frame::FrameError;

/// A result with the log's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong in the log. Bugs in the caller (appending a
/// non-contiguous index, truncating purged entries) are assertions instead.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The disk failed. A failed write or sync also poisons the log.
    #[error("I/O error during {op} of {file}: {source}")]
    Io {
        /// The operation, e.g. "sync_data".
        op: &'static str,
        /// The file it was applied to.
        file: String,
        /// The error from the disk.
        #[source]
        source: io::Error,
    },
    /// Stored bytes are damaged where they must not be.
    #[error(transparent)]
    Corruption(Box<Corruption>),
    /// An earlier write or sync failed; the log refuses every later call
    /// because it cannot know what reached the disk.
    #[error(
        "the log is poisoned by an earlier I/O failure ({cause}); \
         stop the node, check the device, and reopen the data directory"
    )]
    Poisoned {
        /// The first failure.
        cause: String,
    },
    /// A payload larger than one frame can carry.
    #[error("payload of {size} bytes at index {index} exceeds the maximum of {max} bytes")]
    PayloadTooLarge {
        /// Index of the offending entry.
        index: u64,
        /// Its payload size.
        size: usize,
        /// The bound.
        max: usize,
    },
    /// A read below the first retained index.
    #[error("index {index} was purged: the log now starts at index {first}")]
    Purged {
        /// The index asked for.
        index: u64,
        /// The first index still in the log.
        first: u64,
    },
    /// The data directory was written in format version 1, before the hash
    /// chain; this code reads only frame version 3.
    #[error(
        "{file} is in log format version 1, which predates the hash chain (this sluice \
         reads frame format 3); re-replicate this node from a peer or export and re-import \
         the data"
    )]
    FormatUnchained {
        /// The file found in the old format.
        file: String,
    },
    /// The data directory was written in frame format version 2, whose
    /// chain hash covers whole payloads; this code reads only version 3,
    /// whose chain hash covers a digest of the payload.
    #[error(
        "{file} is in log frame format version 2, whose hash chain covers whole payloads \
         (this sluice reads frame format 3, which chains payload digests); re-replicate this \
         node from a peer or export and re-import the data"
    )]
    FormatWholePayload {
        /// The file found in the old format.
        file: String,
    },
    /// A read at or past the end of the log.
    #[error("index {index} is not written yet: the log ends before index {next}")]
    NotWritten {
        /// The index asked for.
        index: u64,
        /// The next index to be written.
        next: u64,
    },
    /// The options passed to `Log::open` are out of bounds.
    #[error("invalid log options: {0}")]
    InvalidOptions(String),
    /// The log was closed (its Raft storage dropped): it changes no more.
    #[error("the log is closed; reopen the data directory to write")]
    Closed,
    /// A log opened with `Log::open_read_only` was asked to change.
    #[error(
        "the log was opened read-only and cannot {what}; only a node (or a writable open) \
         changes it"
    )]
    ReadOnly {
        /// What it was asked to do.
        what: String,
    },
}

/// Where and how stored bytes are damaged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Corruption {
    /// The damaged file.
    pub file: String,
    /// Byte offset of the damaged frame (or field) inside the file.
    pub offset: u64,
    /// The index the frame at that offset should hold, if known.
    pub index: Option<u64>,
    /// What is wrong.
    pub reason: CorruptionReason,
}

/// The kinds of damage [`Corruption`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CorruptionReason {
    /// A frame fails its checks.
    Frame(FrameError),
    /// A frame was damaged even though a later frame records it as durable.
    AcknowledgedFrame(FrameError),
    /// A sealed segment ends before the next segment begins.
    SegmentShort {
        /// The index the segment should have reached.
        expected_next: u64,
        /// The index after its last valid frame.
        found_next: u64,
    },
    /// The metadata file is damaged.
    Meta(String),
    /// Segment files do not form one contiguous log.
    Layout(String),
}

impl fmt::Display for Corruption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "corruption in {} at offset {}", self.file, self.offset)?;
        if let Some(index) = self.index {
            write!(f, " (index {index})")?;
        }
        match &self.reason {
            CorruptionReason::Frame(error) => write!(f, ": {error}")?,
            CorruptionReason::AcknowledgedFrame(error) => write!(
                f,
                ": {error}; a later frame records this one as durable, so it is not a torn write"
            )?,
            CorruptionReason::SegmentShort {
                expected_next,
                found_next,
            } => write!(
                f,
                ": sealed segment ends before index {found_next}, expected to reach {expected_next}"
            )?,
            CorruptionReason::Meta(what) | CorruptionReason::Layout(what) => write!(f, ": {what}")?,
        }
        write!(
            f,
            ". Acknowledged data is damaged: restore this data directory from a replica, \
             or open with RecoveryMode::Repair to cut the log there (records from this point on are dropped)"
        )
    }
}

impl std::error::Error for Corruption {}

impl Error {
    pub(crate) fn io(op: &'static str, file: &str, source: io::Error) -> Self {
        Error::Io {
            op,
            file: file.to_owned(),
            source,
        }
    }

    pub(crate) fn corruption(
        file: &str,
        offset: u64,
        index: Option<u64>,
        reason: CorruptionReason,
    ) -> Self {
        Error::Corruption(Box::new(Corruption {
            file: file.to_owned(),
            offset,
            index,
            reason,
        }))
    }

    /// The corruption report, if this is one.
    pub fn as_corruption(&self) -> Option<&Corruption> {
        match self {
            Error::Corruption(corruption) => Some(corruption),
            _ => None,
        }
    }
}

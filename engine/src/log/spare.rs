//! The spare segment: a file written out with zeros ahead of the writer,
//! so that the active segment's appends overwrite allocated, already synced
//! blocks instead of growing the file.
//!
//! Why: an `fdatasync` after an append that grows a file must also commit
//! the file system's journal (new size, new extents); after an overwrite
//! inside a written file it writes the data alone. `log_report` measures
//! both on this machine's disk (4 KiB + `fdatasync`, p50: about 160 µs
//! appending, 80–100 µs overwriting), and every durable path of the bus
//! waits for that sync.
//!
//! How: the log's owner asks [`super::Log::spare_job`] for a job when it
//! has time, runs [`SpareJob::step`] off the log's lock (paced, so that the
//! zeros do not crowd out the syncs that acknowledge publishes), and hands
//! the job back with [`super::Log::complete_spare`]. The next roll renames
//! the finished spare to the new segment's name instead of creating an
//! empty file. Without a finished spare a roll creates an empty file as
//! before; the spare is an optimisation, never a dependency: failing to
//! make one (a full disk) is logged and retried at the next roll, and never
//! poisons the log.
//!
//! Crash safety rests on one fact: only zeros are ever written to the
//! spare, and a byte a crash lost reads as zero. A segment made from a
//! spare therefore ends in zeros, which recovery reads as a clean end (a
//! zero `kind` never decodes as a frame). The spare's name is never made
//! durable on its own: open removes a leftover `log.spare`, and the roll
//! that renames it makes the new name durable before writing a frame into
//! it. Sealing trims a segment to its frames before the next one begins,
//! so a sealed segment holds exactly its frames, as before.

use std::io;
use std::sync::Arc;

use crate::io::DiskFile;

/// The spare segment's file name.
pub const NAME: &str = "log.spare";

/// Zeros written (and synced) per [`SpareJob::step`]: small, so that a
/// publish's sync that queues behind one waits little (256 KiB is about
/// 130 µs of this disk's 2 GB/s).
pub const STEP_BYTES: u64 = 256 * 1024;

static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

/// Where the spare stands.
#[derive(Debug)]
pub(super) enum State<F> {
    /// None is wanted (prewriting off).
    Off,
    /// One is wanted; no job is out.
    Wanted,
    /// A job is writing this file.
    Preparing(Arc<F>),
    /// Written and synced; the next roll takes it.
    Ready(Arc<F>),
    /// Making one failed; retried after the next roll.
    Failed,
}

/// Writing one spare segment: zeros up to the segment size, synced.
#[derive(Debug)]
pub struct SpareJob<F> {
    pub(super) file: Arc<F>,
    size: u64,
    written: u64,
}

impl<F: DiskFile> SpareJob<F> {
    pub(super) fn new(file: Arc<F>, size: u64) -> Self {
        SpareJob {
            file,
            size,
            written: 0,
        }
    }

    /// Writes the next [`STEP_BYTES`] of zeros (fewer at the end) and
    /// syncs them. Returns whether the spare is complete.
    pub fn step(&mut self) -> io::Result<bool> {
        let end = (self.written + STEP_BYTES).min(self.size);
        while self.written < end {
            let len = (end - self.written).min(ZEROS.len() as u64) as usize;
            self.file.write_at(self.written, &ZEROS[..len])?;
            self.written += len as u64;
        }
        self.file.sync_data()?;
        Ok(self.written == self.size)
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }
}

/// Whether every byte of `bytes` is zero: the unwritten rest of a segment
/// made from a spare. Folds 64-byte blocks (which vectorises) and stops at
/// the first block holding data.
pub(crate) fn all_zero(bytes: &[u8]) -> bool {
    let mut blocks = bytes.chunks_exact(64);
    blocks
        .by_ref()
        .all(|block| block.iter().fold(0u8, |acc, &b| acc | b) == 0)
        && blocks.remainder().iter().all(|&b| b == 0)
}

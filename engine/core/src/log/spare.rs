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
//! the job back with [`super::Log::complete_spare`]. A step writes zeros
//! into the page cache without syncing them; the log's syncs move them to
//! the device a little at a time ([`Trickle`]), and the last step syncs
//! the whole file. The next roll renames
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

use sluice_model::constants::SPARE_LAG_MAX;
use sluice_model::constants::SPARE_STEP_BYTES;
use sluice_model::constants::SPARE_TRICKLE_BYTES;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::io::DiskFile;

/// The spare segment's file name.
pub const NAME: &str = "log.spare";

static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

/// Where the spare stands.
#[derive(Debug)]
pub(super) enum State<F> {
    /// None is wanted (prewriting off).
    Off,
    /// One is wanted; no job is out.
    Wanted,
    /// A job is writing this file.
    Preparing(Trickle<F>),
    /// Written and synced; the next roll takes it.
    Ready(Arc<F>),
    /// Making one failed; retried after the next roll.
    Failed,
}

/// How far a spare's zeros have got: shared by its job and its
/// [`Trickle`] handles.
#[derive(Debug, Default)]
struct Progress {
    /// Bytes written into the file (page cache).
    written: AtomicU64,
    /// Bytes whose write-back has been started; at most `written`.
    started: AtomicU64,
}

impl Progress {
    /// Claims up to `max` bytes written and not yet started, from the
    /// first such byte. Concurrent claimers get disjoint ranges.
    fn claim(&self, max: u64) -> Option<(u64, u64)> {
        let written = self.written.load(Ordering::Acquire);
        let mut start = self.started.load(Ordering::Acquire);
        loop {
            let len = written.saturating_sub(start).min(max);
            if len == 0 {
                return None;
            }
            match self.started.compare_exchange(
                start,
                start + len,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Some((start, len)),
                Err(now) => start = now,
            }
        }
    }
}

/// A handle on the spare being written, for the log's flusher: after each
/// sync of the log it starts the write-back of the next few zeros, so that
/// they reach the device between the syncs that acknowledge publishes
/// rather than in a burst that those syncs would queue behind.
///
/// Why not a sync per step: every `fdatasync` ends in a flush of the
/// device's cache, and the log's syncs queue behind it. With 16
/// closed-loop durable producers (`bus_report`), a sync per 256 KiB step
/// gave a p99 of 340–403 µs and this trickle 265–338 µs in alternating
/// runs; starting each step's write-back at once fell in between. Writing
/// nothing back until one sync at the end stalls the log for 35–160 ms
/// once per segment (the whole segment's zeros go to the device at once).
#[derive(Debug)]
pub struct Trickle<F> {
    file: Arc<F>,
    progress: Arc<Progress>,
}

impl<F> Clone for Trickle<F> {
    fn clone(&self) -> Self {
        Trickle {
            file: Arc::clone(&self.file),
            progress: Arc::clone(&self.progress),
        }
    }
}

impl<F: DiskFile> Trickle<F> {
    /// Starts the write-back of the next `SPARE_TRICKLE_BYTES` (64 KiB) written and not
    /// yet started, if any; does not wait for it. An error is only logged:
    /// a write-back that failed on the device is reported by the file's
    /// next sync (the job's last one, which then gives the spare up; or,
    /// if this handle is stale and the spare is already the log's active
    /// segment, the log's, which is then right to stop).
    pub fn write_back(&self) {
        if let Some((offset, len)) = self.progress.claim(SPARE_TRICKLE_BYTES) {
            if let Err(error) = self.file.start_write_back(offset, len) {
                tracing::debug!(%error, offset, len, "starting a spare segment's write-back failed");
            }
        }
    }
}

/// Writing one spare segment: zeros up to the segment size, synced once
/// at the end.
#[derive(Debug)]
pub struct SpareJob<F> {
    trickle: Trickle<F>,
    size: u64,
    written: u64,
}

impl<F: DiskFile> SpareJob<F> {
    pub(super) fn new(file: Arc<F>, size: u64) -> Self {
        SpareJob {
            trickle: Trickle {
                file,
                progress: Arc::default(),
            },
            size,
            written: 0,
        }
    }

    /// The handle the log's flusher uses while this job runs.
    pub(super) fn trickle(&self) -> Trickle<F> {
        self.trickle.clone()
    }

    /// Whether this job writes the spare `trickle` points at.
    pub(super) fn is(&self, trickle: &Trickle<F>) -> bool {
        Arc::ptr_eq(&self.trickle.progress, &trickle.progress)
    }

    /// The spare's file.
    pub(super) fn into_file(self) -> Arc<F> {
        self.trickle.file
    }

    /// Writes the next [`SPARE_STEP_BYTES`] of zeros (fewer at the end), starts
    /// the write-back of its own oldest bytes if the log's syncs have left
    /// more than `SPARE_LAG_MAX` (1 MiB) behind, and syncs the whole file at the last
    /// step. Returns whether the spare is complete.
    pub fn step(&mut self) -> io::Result<bool> {
        let file = &self.trickle.file;
        let end = (self.written + SPARE_STEP_BYTES).min(self.size);
        while self.written < end {
            let len = (end - self.written).min(ZEROS.len() as u64) as usize;
            file.write_at(self.written, &ZEROS[..len])?;
            self.written += len as u64;
        }
        let progress = &self.trickle.progress;
        progress.written.store(self.written, Ordering::Release);
        if self.written == self.size {
            file.sync_data()?;
            return Ok(true);
        }
        let lag = self.written - progress.started.load(Ordering::Acquire);
        if lag > SPARE_LAG_MAX {
            if let Some((offset, len)) = progress.claim(lag - SPARE_LAG_MAX) {
                file.start_write_back(offset, len)?;
            }
        }
        Ok(false)
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }
}

/// Whether every byte of `bytes` is zero: the unwritten rest of a segment
/// made from a spare. Folds 64-byte blocks (which vectorises) and stops at
/// the first block holding data.
pub fn all_zero(bytes: &[u8]) -> bool {
    let mut blocks = bytes.chunks_exact(64);
    blocks
        .by_ref()
        .all(|block| block.iter().fold(0u8, |acc, &b| acc | b) == 0)
        && blocks.remainder().iter().all(|&b| b == 0)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use bytes::Bytes;

    use super::*;

    /// A file that records what is asked of it.
    #[derive(Debug, Default)]
    struct Recording {
        bytes: Mutex<Vec<u8>>,
        write_backs: Mutex<Vec<(u64, u64)>>,
        syncs: Mutex<Vec<u64>>,
    }

    impl DiskFile for Recording {
        fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
            let bytes = self.bytes.lock().unwrap();
            let start = offset as usize;
            buf.copy_from_slice(&bytes[start..start + buf.len()]);
            Ok(())
        }

        fn write_at(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
            let mut bytes = self.bytes.lock().unwrap();
            let end = offset as usize + buf.len();
            if bytes.len() < end {
                bytes.resize(end, 0xAA);
            }
            bytes[offset as usize..end].copy_from_slice(buf);
            Ok(())
        }

        fn size(&self) -> io::Result<u64> {
            Ok(self.bytes.lock().unwrap().len() as u64)
        }

        fn set_len(&self, size: u64) -> io::Result<()> {
            self.bytes.lock().unwrap().resize(size as usize, 0);
            Ok(())
        }

        fn sync_data(&self) -> io::Result<()> {
            let size = self.size()?;
            self.syncs.lock().unwrap().push(size);
            Ok(())
        }

        fn start_write_back(&self, offset: u64, len: u64) -> io::Result<()> {
            let size = self.size()?;
            assert!(offset + len <= size, "write-back past the written bytes");
            self.write_backs.lock().unwrap().push((offset, len));
            Ok(())
        }

        fn map(&self) -> io::Result<Bytes> {
            Ok(Bytes::from(self.bytes.lock().unwrap().clone()))
        }
    }

    const SIZE: u64 = 16 * SPARE_STEP_BYTES + 4096;

    #[test]
    fn a_spare_is_zeros_synced_once_at_the_end_with_its_write_back_lag_bounded() {
        let file = Arc::new(Recording::default());
        let mut job = SpareJob::new(Arc::clone(&file), SIZE);
        let mut steps = 0;
        while !job.step().unwrap() {
            steps += 1;
            let started: u64 = file.write_backs.lock().unwrap().iter().map(|w| w.1).sum();
            assert!(
                job.written() - started <= SPARE_LAG_MAX,
                "lag above SPARE_LAG_MAX"
            );
            assert!(
                file.syncs.lock().unwrap().is_empty(),
                "a sync before the end"
            );
        }
        assert_eq!(steps, 16);
        assert_eq!(
            *file.syncs.lock().unwrap(),
            vec![SIZE],
            "one sync, at the end"
        );
        let bytes = file.bytes.lock().unwrap();
        assert_eq!(bytes.len() as u64, SIZE);
        assert!(all_zero(&bytes));
    }

    #[test]
    fn trickles_cover_the_written_bytes_in_order_and_never_past_them() {
        let file = Arc::new(Recording::default());
        let mut job = SpareJob::new(Arc::clone(&file), SIZE);
        let trickle = job.trickle();
        trickle.write_back();
        assert!(
            file.write_backs.lock().unwrap().is_empty(),
            "nothing written yet"
        );
        job.step().unwrap();
        for _ in 0..(SPARE_STEP_BYTES / SPARE_TRICKLE_BYTES + 2) {
            trickle.write_back();
        }
        let write_backs = file.write_backs.lock().unwrap().clone();
        let expected: Vec<(u64, u64)> = (0..SPARE_STEP_BYTES / SPARE_TRICKLE_BYTES)
            .map(|i| (i * SPARE_TRICKLE_BYTES, SPARE_TRICKLE_BYTES))
            .collect();
        assert_eq!(write_backs, expected);
    }

    #[test]
    fn concurrent_claims_are_disjoint_and_cover_what_was_written() {
        let progress = Arc::new(Progress::default());
        let total = 1_000_000u64;
        let claimed = Mutex::new(Vec::new());
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    loop {
                        match progress.claim(4096) {
                            Some(range) => claimed.lock().unwrap().push(range),
                            None if progress.started.load(Ordering::Acquire) == total => break,
                            None => std::thread::yield_now(),
                        }
                    }
                });
            }
            let mut written = 0;
            while written < total {
                written = (written + 10_000).min(total);
                progress.written.store(written, Ordering::Release);
            }
        });
        let mut claimed = claimed.into_inner().unwrap();
        claimed.sort_unstable();
        let mut next = 0;
        for (offset, len) in claimed {
            assert_eq!(offset, next, "a gap or an overlap");
            assert!(len > 0 && len <= 4096);
            next = offset + len;
        }
        assert_eq!(next, total);
    }
}

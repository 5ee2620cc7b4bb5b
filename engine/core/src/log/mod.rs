//! The segmented log: the Raft log and the event log in one.
//!
//! Entries are stored as checksummed frames (`FORMAT.md`) in segment files
//! of bounded size, named by their first index. The last segment is the
//! active one; all others are sealed, synced whole, never written again,
//! and read through a read-only memory map without copying.
//!
//! Invariants:
//! - indexes are contiguous from [`Log::first_index`] to
//!   [`Log::next_index`] (exclusive);
//! - every index below `durable_next` is on disk and synced; every frame
//!   records the `durable_next` of the moment it was written, which is how
//!   recovery tells a torn tail from damage to acknowledged records;
//! - a sealed segment was synced before the next one was created, so only
//!   the active segment can end torn;
//! - a mapped file is never shrunk or written: truncating into a sealed
//!   segment rewrites its prefix into a new file renamed over the old one.
//!
//! Fault model: the [`Disk`] contract. After any failed write or sync the
//! log is poisoned and refuses every later call: it cannot know what
//! reached the disk, and a failed sync is never retried.

mod error;
pub mod frame;
pub mod meta;
mod recovery;
pub mod segment;
mod spare;

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};

use crate::io::os::OsDisk;
use crate::io::{Clock, Disk, DiskFile, wall_unix_ms};
use sluice_model::constants::{
    APPEND_ENTRIES_MAX, FRAME_HEADER_SIZE, PAYLOAD_SIZE_MAX, SEGMENT_SIZE_DEFAULT,
    SEGMENT_SIZE_MAX, SEGMENT_SIZE_MIN,
};

pub use error::{Corruption, CorruptionReason, Error, Result};
pub use recovery::{RecoveryReport, Repair, TornTail};
pub use sluice_model::constants::SPARE_STEP_BYTES;
pub use spare::all_zero;
pub use spare::{NAME as SPARE_NAME, SpareJob, Trickle};

use frame::{GENESIS, Hash, Header};
use meta::Meta;
use segment::SealedView;

#[cfg(feature = "testing")]
pub mod fuzzing;

/// What [`Log::append`] does about durability.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PersistMode {
    /// Write into the page cache only; a later [`Log::sync`] (or a sync of
    /// a [`SyncHandle`]) makes it durable. This is how group commit works:
    /// many appends, one sync.
    Buffer,
    /// Write, then `fdatasync` before returning.
    SyncData,
}

/// What [`Log::open`] does with damage it finds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RecoveryMode {
    /// Cut a torn tail; refuse to open over damage to acknowledged records.
    #[default]
    TolerateCorruptTail,
    /// Verify every segment and cut the log at the first damaged frame
    /// anywhere, dropping everything after it. Only for an operator who has
    /// decided that losing those records is acceptable.
    Repair,
}

/// Whether appended frames carry the SHA-256 hash chain (`FORMAT.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ChainMode {
    /// Every frame links to the previous frame's chain hash and carries its
    /// own. What an audited log needs.
    #[default]
    Sha256,
    /// Chain fields are written as zeros. Only for measuring what the chain
    /// costs: `sluice verify` reports every such frame as unchained.
    Off,
}

/// Options of [`Log::open`].
#[derive(Debug, Clone)]
pub struct Options {
    /// Segment size at which the active segment is sealed and a new one
    /// begun. A frame larger than this gets a segment of its own.
    pub segment_size: u64,
    /// What to do with damage found on open.
    pub recovery: RecoveryMode,
    /// Whether frames carry the hash chain.
    pub chain: ChainMode,
    /// Whether the log wants spare segments written out with zeros ahead
    /// of the writer.
    pub prewrite: Prewrite,
}

/// Whether an open log may change its files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// The owner's open: recovery repairs, appends go on.
    ReadWrite,
    /// An inspector's open: recovery only reports, every change is refused.
    ReadOnly,
}

/// Whether a log keeps a spare segment written out with zeros ahead of
/// the writer (`spare.rs`), so that appends overwrite instead of growing
/// the file and each sync skips a metadata update. The log asks for one
/// ([`Log::spare_job`]) once it has taken [`PREWRITE_AFTER_BYTES`] (or one
/// segment, if smaller) of appends since it was opened; its owner does
/// the writing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Prewrite {
    /// Keep a spare segment ready.
    #[default]
    Spare,
    /// Grow the active segment as appends come.
    Off,
}

pub use sluice_model::constants::PREWRITE_AFTER_BYTES;

impl Default for Options {
    fn default() -> Self {
        Options {
            segment_size: SEGMENT_SIZE_DEFAULT,
            recovery: RecoveryMode::default(),
            chain: ChainMode::default(),
            prewrite: Prewrite::Spare,
        }
    }
}

/// An entry to append; the payload is borrowed.
#[derive(Debug, Clone, Copy)]
pub struct Entry<'a> {
    /// Must be [`Log::next_index`] for the first entry, then contiguous.
    pub index: u64,
    /// Raft term.
    pub term: u64,
    /// Nonzero; meaning owned by the caller.
    pub kind: u8,
    /// Wall-clock milliseconds, stamped by whoever created the entry.
    pub timestamp_ms: u64,
    /// At most [`PAYLOAD_SIZE_MAX`] bytes.
    pub payload: &'a [u8],
    /// The payload's [`frame::payload_digest`] (SHA-256), when its creator
    /// computed it already, off the Raft core; `None` lets the log compute
    /// it. It must be the digest of `payload`: debug builds check it, and
    /// `sluice verify` names any frame whose stored hash its bytes do not
    /// give. Ignored with [`ChainMode::Off`].
    pub payload_digest: Option<Hash>,
}

/// An entry read back; the payload is a zero-copy slice where the segment
/// is sealed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Entry index.
    pub index: u64,
    /// Raft term.
    pub term: u64,
    /// Caller-defined kind.
    pub kind: u8,
    /// Wall-clock milliseconds stamped at creation.
    pub timestamp_ms: u64,
    /// The frame's chain hash as stored (zeros if written unchained).
    pub hash: Hash,
    /// The payload.
    pub payload: Bytes,
}

impl Record {
    fn new(header: &Header, payload: Bytes) -> Self {
        Record {
            index: header.index,
            term: header.term,
            kind: header.kind,
            timestamp_ms: header.timestamp_ms,
            hash: header.hash,
            payload,
        }
    }
}

/// Retention limits; segments are dropped whole, oldest first, and the
/// active segment is never dropped.
#[derive(Debug, Clone, Default)]
pub struct Retention {
    /// Keep the newest this many bytes of segments (whole segments: up
    /// to one segment more).
    pub size_max: Option<u64>,
    /// Drop a sealed segment once its newest record is older than this.
    pub age_max: Option<Duration>,
}

/// A description of one segment, for inspection tools.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentInfo {
    /// File name.
    pub name: String,
    /// First index.
    pub first: u64,
    /// Index after its last record.
    pub next: u64,
    /// Bytes of frames.
    pub size: u64,
    /// Whether it is sealed (immutable).
    pub sealed: bool,
    /// The file's length when it is the active segment written out with
    /// zeros past its frames (made from a spare), else 0.
    pub capacity: u64,
}

/// The result of [`Log::verify`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Segments checked.
    pub segments: u64,
    /// Frames whose checksum was verified.
    pub frames: u64,
    /// Bytes covered.
    pub bytes: u64,
}

/// What a group commit needs to sync the active segment without holding
/// the log: sync it from any thread, then hand it back with
/// [`Log::complete_sync`].
#[derive(Debug)]
pub struct SyncHandle<F> {
    file: Arc<F>,
    name: String,
    next: u64,
    truncations: u64,
}

impl<F: DiskFile> SyncHandle<F> {
    /// `fdatasync` of the active segment as of when the handle was taken.
    pub fn sync(&self) -> std::io::Result<()> {
        self.file.sync_data()
    }

    /// Every index below this is durable once [`SyncHandle::sync`] returns.
    pub fn next(&self) -> u64 {
        self.next
    }
}

#[derive(Debug)]
struct Sealed<F> {
    first: u64,
    next: u64,
    name: String,
    file: Arc<F>,
    size: u64,
    view: Mutex<Option<Arc<SealedView>>>,
}

impl<F: DiskFile> Sealed<F> {
    fn view(&self) -> Result<Arc<SealedView>> {
        let mut slot = self.view.lock().expect("view lock");
        if let Some(view) = slot.as_ref() {
            return Ok(Arc::clone(view));
        }
        let view = Arc::new(SealedView::load(
            &*self.file,
            &self.name,
            self.first,
            self.next,
        )?);
        *slot = Some(Arc::clone(&view));
        Ok(view)
    }
}

#[derive(Debug)]
struct Active<F> {
    first: u64,
    name: String,
    file: Arc<F>,
    offsets: Vec<u32>,
    /// Bytes of frames: where the next frame goes.
    size: u64,
    /// The file's length when it was written out with zeros past `size`
    /// (made from a spare, or recovered with a zero tail), else 0.
    capacity: u64,
    last_timestamp_ms: Option<u64>,
}

impl<F> Active<F> {
    fn next(&self) -> u64 {
        self.first + self.offsets.len() as u64
    }
}

/// The segmented log over a [`Disk`]. See the module docs.
#[derive(Debug)]
pub struct Log<D: Disk = OsDisk> {
    disk: D,
    clock: Arc<dyn Clock>,
    options: Options,
    sealed: VecDeque<Sealed<D::File>>,
    active: Active<D::File>,
    meta: Meta,
    /// The chain hash of the last frame; with an empty log, the anchor of
    /// the purge point or [`GENESIS`].
    head: Hash,
    durable_next: u64,
    truncations: u64,
    poison: Option<String>,
    buffer: Vec<u8>,
    pending: Vec<u32>,
    report: RecoveryReport,
    spare: spare::State<D::File>,
    /// Bytes of frames written since open: whether a spare is wanted
    /// yet, and how fast the log fills.
    written: u64,
    /// Read-only when opened with [`Log::open_read_only`]: every change
    /// is refused.
    access: Access,
    /// [`Log::close`] was called: every change is refused.
    closed: bool,
}

impl<D: Disk> Log<D> {
    /// Opens the log in `disk`'s directory, creating it if empty, and
    /// recovers from whatever a crash left (see `FORMAT.md`).
    pub fn open(disk: D, clock: Arc<dyn Clock>, options: Options) -> Result<Self> {
        check_options(&options)?;
        recovery::open(disk, clock, options, Access::ReadWrite)
    }

    /// Opens the log for reading only: recovery changes nothing (a torn
    /// tail is read up to where it tears, leftovers of interrupted
    /// operations and a spare segment stay, a missing `log.meta` is not
    /// written), and every later change is refused with
    /// [`Error::ReadOnly`]. [`Log::recovery_report`] then tells what a
    /// writable open would do. For tools that inspect a directory a node
    /// may be writing: give it a disk that refuses changes too
    /// (`OsDisk::open_read_only`). [`RecoveryMode::Repair`] is refused.
    pub fn open_read_only(disk: D, clock: Arc<dyn Clock>, options: Options) -> Result<Self> {
        if options.recovery == RecoveryMode::Repair {
            return Err(Error::InvalidOptions(
                "a repair changes the log; it cannot run on a log opened read-only".to_owned(),
            ));
        }
        check_options(&options)?;
        let options = Options {
            prewrite: Prewrite::Off,
            ..options
        };
        recovery::open(disk, clock, options, Access::ReadOnly)
    }

    /// Whether the log was opened with [`Log::open_read_only`].
    pub fn is_read_only(&self) -> bool {
        self.access == Access::ReadOnly
    }

    /// Ends writing: every later change is refused with [`Error::Closed`]
    /// (reads go on), and the disk gives the directory up
    /// ([`Disk::release`]), so that the next opener (a restarted bus in
    /// this process) need not wait for every task holding a clone of the
    /// disk to end.
    pub fn close(&mut self) {
        if !self.closed && self.access == Access::ReadWrite {
            self.closed = true;
            self.disk.release();
        }
    }

    /// What recovery found and did when the log was opened.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.report
    }

    /// The first index still readable.
    pub fn first_index(&self) -> u64 {
        let physical = self.sealed.front().map_or(self.active.first, |s| s.first);
        physical.max(self.meta.purged_next).min(self.next_index())
    }

    /// The index the next appended entry must have.
    pub fn next_index(&self) -> u64 {
        self.active.next()
    }

    /// Every index below this is durable.
    pub fn durable_next(&self) -> u64 {
        self.durable_next
    }

    /// The chain hash of the last frame (the head of the hash chain); with
    /// an empty log, what the next frame will link to.
    pub fn chain_head(&self) -> Hash {
        self.head
    }

    /// The chain hash of the frame at `index`, as stored.
    pub fn chain_hash_at(&self, index: u64) -> Result<Hash> {
        if index >= self.next_index() {
            return Err(Error::NotWritten {
                index,
                next: self.next_index(),
            });
        }
        if index + 1 == self.next_index() {
            return Ok(self.head);
        }
        let mut records = Vec::with_capacity(1);
        self.read(index..index + 1, &mut records)?;
        Ok(records.pop().expect("index is inside the log").hash)
    }

    /// What a frame at `index` links to: the chain hash of `index − 1`, the
    /// purge point's anchor, or [`GENESIS`]. `index` must lie in
    /// `first_index()..=next_index()`.
    pub fn link_for(&self, index: u64) -> Result<Hash> {
        if index == self.next_index() {
            return Ok(self.head);
        }
        if index <= self.first_index() {
            return Ok(self.meta.anchor.unwrap_or(GENESIS));
        }
        self.chain_hash_at(index - 1)
    }

    /// The user's bytes in the metadata file (Raft's vote); empty at first.
    pub fn app_meta(&self) -> &[u8] {
        &self.meta.app
    }

    /// Replaces the user's bytes in the metadata file atomically and
    /// durably (write new, sync, rename, sync directory).
    pub fn set_app_meta(&mut self, app: &[u8]) -> Result<()> {
        self.check_poison()?;
        self.check_app_size(app)?;
        let mut next = self.meta.clone();
        next.app = app.to_vec();
        self.store_meta(next)
    }

    fn check_app_size(&self, app: &[u8]) -> Result<()> {
        if meta::HEADER_SIZE + app.len() > sluice_model::constants::META_SIZE_MAX {
            return Err(Error::InvalidOptions(format!(
                "metadata of {} bytes exceeds the maximum",
                app.len()
            )));
        }
        Ok(())
    }

    /// Empties the log and begins it again at `first`, whose frame will
    /// link to `anchor` (GENESIS when `None`), and replaces the user's bytes
    /// in the metadata file: the first step of writing a log received from
    /// elsewhere (a snapshot's tail), which the caller then appends. Unlike
    /// a purge, `first` may lie anywhere, before or after the log. Durable
    /// on return.
    ///
    /// Crash safety: every segment is removed first, newest first (a crash
    /// leaves a prefix of the old log, as a truncation does), then the
    /// metadata file is replaced (one atomic step), then the new segment is
    /// created. The caller must have made durable, before calling, what it
    /// needs to redo the whole operation after a crash at any point.
    pub fn reset(&mut self, first: u64, anchor: Option<Hash>, app: &[u8]) -> Result<()> {
        self.check_poison()?;
        self.check_app_size(app)?;
        let name = self.active.name.clone();
        let removed = self.disk.remove(&name);
        self.poison_on_error(removed, "remove", &name)?;
        while let Some(sealed) = self.sealed.pop_back() {
            let removed = self.disk.remove(&sealed.name);
            self.poison_on_error(removed, "remove", &sealed.name)?;
        }
        let synced = self.disk.sync_dir();
        self.poison_on_error(synced, "sync_dir", &name)?;
        self.truncations += 1;
        self.store_meta(Meta {
            purged_next: first,
            anchor,
            app: app.to_vec(),
        })?;
        self.head = anchor.unwrap_or(GENESIS);
        self.durable_next = first;
        // The old active segment's file was removed above.
        self.start_active(first).map(drop)
    }

    /// Appends `entries`, whose indexes must continue the log.
    ///
    /// Returns the next index. With [`PersistMode::SyncData`] the entries
    /// are durable on return; with [`PersistMode::Buffer`] they are once a
    /// later sync covers them. Nothing is written if any payload is too
    /// large.
    pub fn append(&mut self, entries: &[Entry<'_>], persist: PersistMode) -> Result<u64> {
        self.check_poison()?;
        assert!(entries.len() <= APPEND_ENTRIES_MAX);
        for (position, entry) in entries.iter().enumerate() {
            assert_eq!(
                entry.index,
                self.next_index() + position as u64,
                "append must be contiguous"
            );
            assert!(entry.kind != 0, "entry kind 0 is reserved");
            if entry.payload.len() > PAYLOAD_SIZE_MAX {
                return Err(Error::PayloadTooLarge {
                    index: entry.index,
                    size: entry.payload.len(),
                    max: PAYLOAD_SIZE_MAX,
                });
            }
        }
        self.buffer.clear();
        self.pending.clear();
        if self.leaves_growing_segment() && !self.active.offsets.is_empty() {
            self.roll()?;
        }
        for entry in entries {
            let size = frame::frame_size(entry.payload.len());
            let filled = self.active.size + self.buffer.len() as u64;
            let occupied = !self.active.offsets.is_empty() || !self.pending.is_empty();
            if occupied && filled + size as u64 > self.options.segment_size {
                self.flush()?;
                self.roll()?;
            }
            self.encode(entry, size);
        }
        self.flush()?;
        if persist == PersistMode::SyncData {
            self.sync()?;
        }
        Ok(self.next_index())
    }

    /// A spare segment to write out, if the log wants one and none is being
    /// made: run [`SpareJob::step`] until it returns `true` (off any lock
    /// around the log, paced as the caller sees fit), then hand it back
    /// with [`Log::complete_spare`]. Creating the file is the only disk
    /// call here; failing to is logged, not an error: the log works without
    /// a spare, and asks again after its next roll.
    pub fn spare_job(&mut self) -> Option<SpareJob<D::File>> {
        if !matches!(self.spare, spare::State::Wanted) || self.poison.is_some() || self.closed {
            return None;
        }
        match self.disk.remove(spare::NAME) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                tracing::warn!(%error, "cannot remove an old spare segment; going on without one");
                self.spare = spare::State::Failed;
                return None;
            }
            _ => {}
        }
        match self.disk.create(spare::NAME) {
            Ok(file) => {
                let job = SpareJob::new(Arc::new(file), self.options.segment_size);
                self.spare = spare::State::Preparing(job.trickle());
                Some(job)
            }
            Err(error) => {
                tracing::warn!(%error, "cannot create a spare segment; going on without one");
                self.spare = spare::State::Failed;
                None
            }
        }
    }

    /// Takes back a job from [`Log::spare_job`] with its outcome. A failed
    /// job (a full disk, say) is logged; the log asks again after its next
    /// roll.
    pub fn complete_spare(&mut self, job: SpareJob<D::File>, result: std::io::Result<()>) {
        let current = match &self.spare {
            spare::State::Preparing(trickle) => job.is(trickle),
            _ => false,
        };
        if !current {
            return;
        }
        self.spare = match result {
            Ok(()) => spare::State::Ready(job.into_file()),
            Err(error) => {
                tracing::warn!(%error, written = job.written(), "writing a spare segment failed; going on without one");
                spare::State::Failed
            }
        };
    }

    /// A handle on the spare being written, if one is: the log's flusher
    /// calls [`Trickle::write_back`] after each sync, so that the spare's
    /// zeros reach the device a little at a time (`spare.rs`).
    pub fn spare_trickle(&self) -> Option<Trickle<D::File>> {
        match &self.spare {
            spare::State::Preparing(trickle) => Some(trickle.clone()),
            _ => None,
        }
    }

    fn prewrite_after(&self) -> u64 {
        PREWRITE_AFTER_BYTES.min(self.options.segment_size)
    }

    /// Bytes of frames written since open: how fast the log fills, for
    /// pacing the spare's zeros.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Whether a finished spare waits for the next roll.
    pub fn spare_ready(&self) -> bool {
        matches!(self.spare, spare::State::Ready(_))
    }

    fn encode(&mut self, entry: &Entry<'_>, size: usize) {
        let offset = self.active.size + self.buffer.len() as u64;
        self.pending
            .push(u32::try_from(offset).expect("segment offsets fit u32"));
        let chained = self.options.chain == ChainMode::Sha256;
        let header = Header {
            size: size as u32,
            kind: entry.kind,
            index: entry.index,
            term: entry.term,
            durable_next: self.durable_next,
            timestamp_ms: entry.timestamp_ms,
            flags: if chained { frame::FLAG_CHAINED } else { 0 },
            link: self.head,
            hash: GENESIS,
        };
        let hash = frame::encode(
            &mut self.buffer,
            &header,
            entry.payload,
            entry.payload_digest.as_ref(),
        );
        if chained {
            self.head = hash;
        }
    }

    /// Writes the buffered frames at the end of the active segment.
    fn flush(&mut self) -> Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        debug_assert!(
            segment::scan(&self.buffer, self.active.next())
                .stop
                .is_none()
        );
        let written = self.active.file.write_at(self.active.size, &self.buffer);
        self.poison_on_error(written, "write", &self.active.name.clone())?;
        self.active.offsets.extend_from_slice(&self.pending);
        self.active.size += self.buffer.len() as u64;
        self.written += self.buffer.len() as u64;
        if matches!(self.spare, spare::State::Off)
            && self.options.prewrite == Prewrite::Spare
            && self.written >= self.prewrite_after()
        {
            self.spare = spare::State::Wanted;
        }
        if let Some(&last) = self.pending.last() {
            let at = (last as u64 - (self.active.size - self.buffer.len() as u64)) as usize;
            let header = frame::decode_header(&self.buffer[at..]).expect("just encoded");
            self.active.last_timestamp_ms = Some(header.timestamp_ms);
        }
        self.buffer.clear();
        self.pending.clear();
        Ok(())
    }

    /// Whether appending entries with these payload sizes would roll a
    /// segment: they do not fit in what is left of the active one (or in a
    /// whole one), or a written-out spare is ready while the active
    /// segment grows. A caller that must not block on a roll's syncs (the
    /// Raft core's task) appends such entries on a thread that may, after
    /// [`Log::roll`], so that they go whole into the next segment.
    pub fn roll_due(&self, payload_sizes: impl IntoIterator<Item = usize>) -> bool {
        let bytes: u64 = payload_sizes
            .into_iter()
            .map(|size| frame::frame_size(size) as u64)
            .sum();
        if self.active.offsets.is_empty() {
            // An empty segment takes entries first; only more than a whole
            // segment rolls it.
            return bytes > self.options.segment_size;
        }
        self.leaves_growing_segment() || self.active.size + bytes > self.options.segment_size
    }

    /// Whether the next append rolls from a growing segment onto a
    /// written-out spare: a segment that grows costs every sync a journal
    /// commit (on ext4 without a journal, two synchronous metadata writes:
    /// block allocation), so the log moves to the spare as soon as one is
    /// ready.
    fn leaves_growing_segment(&self) -> bool {
        self.spare_ready() && self.active.capacity == 0
    }

    /// Seals the active segment (trimmed to its frames and synced first)
    /// and starts a new one (the ready spare renamed in, or a new file; the
    /// directory synced): two syncs and a directory sync, blocking. An
    /// empty active segment is left as it is.
    pub fn roll(&mut self) -> Result<()> {
        self.check_poison()?;
        if self.active.offsets.is_empty() {
            return Ok(());
        }
        if self.active.capacity > self.active.size {
            // A sealed segment holds exactly its frames: drop the zeros.
            let name = self.active.name.clone();
            let trimmed = self.active.file.set_len(self.active.size);
            self.poison_on_error(trimmed, "set_len", &name)?;
            let synced = self.active.file.sync_data();
            self.poison_on_error(synced, "sync_data", &name)?;
            self.durable_next = self.next_index();
        } else {
            self.sync()?;
        }
        let first = self.next_index();
        let old = self.start_active(first)?;
        self.sealed.push_back(Sealed {
            first: old.first,
            next: first,
            name: old.name,
            file: old.file,
            size: old.size,
            view: Mutex::new(None),
        });
        Ok(())
    }

    /// Makes every appended entry durable with one `fdatasync`.
    pub fn sync(&mut self) -> Result<u64> {
        self.check_poison()?;
        if self.durable_next < self.next_index() {
            let synced = self.active.file.sync_data();
            self.poison_on_error(synced, "sync_data", &self.active.name.clone())?;
            self.durable_next = self.next_index();
        }
        Ok(self.durable_next)
    }

    /// A handle to sync the active segment outside any lock around the log;
    /// hand the result back with [`Log::complete_sync`].
    pub fn sync_handle(&self) -> Result<SyncHandle<D::File>> {
        self.check_poison()?;
        Ok(SyncHandle {
            file: Arc::clone(&self.active.file),
            name: self.active.name.clone(),
            next: self.next_index(),
            truncations: self.truncations,
        })
    }

    /// Records the outcome of [`SyncHandle::sync`]. A failure poisons the
    /// log. A handle taken before a truncation proves nothing and is
    /// ignored. Returns the durable index.
    pub fn complete_sync(
        &mut self,
        handle: SyncHandle<D::File>,
        result: std::io::Result<()>,
    ) -> Result<u64> {
        self.check_poison()?;
        self.poison_on_error(result, "sync_data", &handle.name)?;
        if handle.truncations == self.truncations {
            // Rolling to a new segment syncs the old one, so a handle on an
            // older segment still proves everything below its `next`.
            self.durable_next = self.durable_next.max(handle.next.min(self.next_index()));
        }
        Ok(self.durable_next)
    }

    /// Reads `range` (clipped at the end of the log) into `out`.
    pub fn read(&self, range: Range<u64>, out: &mut Vec<Record>) -> Result<()> {
        let end = range.end.min(self.next_index());
        if range.start >= end {
            return Ok(());
        }
        if range.start < self.first_index() {
            return Err(Error::Purged {
                index: range.start,
                first: self.first_index(),
            });
        }
        out.reserve((end - range.start) as usize);
        let mut index = range.start;
        for sealed in &self.sealed {
            if index >= sealed.next || index >= end {
                continue;
            }
            let view = sealed.view()?;
            while index < sealed.next.min(end) {
                let (header, payload) = view.frame(&sealed.name, sealed.first, index)?;
                out.push(Record::new(&header, payload));
                index += 1;
            }
        }
        if index < end {
            self.read_active(index..end, out)?;
        }
        Ok(())
    }

    fn read_active(&self, range: Range<u64>, out: &mut Vec<Record>) -> Result<()> {
        let active = &self.active;
        let position = |index: u64| -> u64 {
            match active.offsets.get((index - active.first) as usize) {
                Some(&offset) => u64::from(offset),
                None => active.size,
            }
        };
        let start = position(range.start);
        let mut bytes = BytesMut::zeroed((position(range.end) - start) as usize);
        active
            .file
            .read_at(start, &mut bytes)
            .map_err(|e| Error::io("read", &active.name, e))?;
        let bytes = bytes.freeze();
        for index in range {
            let offset = (position(index) - start) as usize;
            let (header, payload) = segment::checked_frame(&bytes, offset, &active.name, index)?;
            out.push(Record::new(&header, payload));
        }
        Ok(())
    }

    /// Removes every entry after `index` (a conflicting Raft suffix).
    pub fn truncate_after(&mut self, index: u64) -> Result<()> {
        self.truncate_from(index + 1)
    }

    /// Removes every entry at `from` and after. Durable on return.
    pub fn truncate_from(&mut self, from: u64) -> Result<()> {
        self.check_poison()?;
        assert!(from >= self.first_index(), "cannot truncate purged entries");
        if from >= self.next_index() {
            return Ok(());
        }
        // Conflict truncation re-links the chain to the surviving entry.
        let head = self.link_for(from)?;
        self.truncations += 1;
        self.durable_next = self.durable_next.min(from);
        self.head = head;
        if from >= self.active.first {
            return self.truncate_active(from);
        }
        // Remove whole segments from the back, so a crash leaves a prefix.
        let name = self.active.name.clone();
        let removed = self.disk.remove(&name);
        self.poison_on_error(removed, "remove", &name)?;
        while self.sealed.back().is_some_and(|s| s.first >= from) {
            let sealed = self.sealed.pop_back().expect("checked");
            let removed = self.disk.remove(&sealed.name);
            self.poison_on_error(removed, "remove", &sealed.name)?;
        }
        let synced = self.disk.sync_dir();
        self.poison_on_error(synced, "sync_dir", &name)?;
        if self.sealed.back().is_some_and(|s| s.next > from) {
            self.rewrite_last_sealed(from)?;
        }
        // The old active segment's file was removed above.
        self.start_active(from).map(drop)
    }

    fn truncate_active(&mut self, from: u64) -> Result<()> {
        let keep = (from - self.active.first) as usize;
        let size = u64::from(self.active.offsets[keep]);
        let name = self.active.name.clone();
        let cut = self.active.file.set_len(size);
        self.poison_on_error(cut, "set_len", &name)?;
        let synced = self.active.file.sync_data();
        self.poison_on_error(synced, "sync_data", &name)?;
        self.active.offsets.truncate(keep);
        self.active.size = size;
        self.active.capacity = 0;
        self.active.last_timestamp_ms = None;
        Ok(())
    }

    /// Rewrites the last sealed segment's prefix below `from` into a new
    /// file renamed over it: the old file may be mapped, so it is never
    /// shrunk.
    fn rewrite_last_sealed(&mut self, from: u64) -> Result<()> {
        let sealed = self.sealed.back().expect("caller checked");
        let view = sealed.view()?;
        let end = view.offsets[(from - sealed.first) as usize] as usize;
        let (first, name) = (sealed.first, sealed.name.clone());
        let tmp = segment::name_tmp(first);
        let created = self.disk.create(&tmp);
        let file = self.poison_on_error(created, "create", &tmp)?;
        let written = file.write_at(0, &view.map[..end]);
        self.poison_on_error(written, "write", &tmp)?;
        let synced = file.sync_data();
        self.poison_on_error(synced, "sync_data", &tmp)?;
        let renamed = self.disk.rename(&tmp, &name);
        self.poison_on_error(renamed, "rename", &name)?;
        let synced = self.disk.sync_dir();
        self.poison_on_error(synced, "sync_dir", &name)?;
        let sealed = self.sealed.back_mut().expect("caller checked");
        sealed.next = from;
        sealed.size = end as u64;
        sealed.file = Arc::new(file);
        *sealed.view.get_mut().expect("view lock") = None;
        Ok(())
    }

    /// Creates an empty active segment at `first` and makes it the active
    /// one; returns the segment it replaced, for the caller to seal or drop.
    ///
    /// A finished spare becomes the new segment (renamed; its zeros are
    /// overwritten by frames); else an empty file is created. Either way
    /// the name is durable before any frame is written into the file.
    fn start_active(&mut self, first: u64) -> Result<Active<D::File>> {
        let name = segment::name(first);
        let (file, capacity) = match std::mem::replace(&mut self.spare, spare::State::Off) {
            spare::State::Ready(file) => {
                let renamed = self.disk.rename(spare::NAME, &name);
                self.poison_on_error(renamed, "rename", &name)?;
                (file, self.options.segment_size)
            }
            previous => {
                self.spare = previous;
                let created = self.disk.create(&name);
                (Arc::new(self.poison_on_error(created, "create", &name)?), 0)
            }
        };
        if matches!(self.spare, spare::State::Off | spare::State::Failed)
            && self.options.prewrite == Prewrite::Spare
        {
            // Used, or failed before: ask for the next one. A log never
            // written to since open still waits for `PREWRITE_AFTER_BYTES`.
            self.spare = if self.written >= self.prewrite_after() {
                spare::State::Wanted
            } else {
                spare::State::Off
            };
        }
        let synced = self.disk.sync_dir();
        self.poison_on_error(synced, "sync_dir", &name)?;
        let active = Active {
            first,
            name,
            file,
            offsets: Vec::new(),
            size: 0,
            capacity,
            last_timestamp_ms: None,
        };
        Ok(std::mem::replace(&mut self.active, active))
    }

    /// Purges every entry below `index`: whole sealed segments are removed;
    /// entries of a segment that also holds later entries become
    /// unreadable. Purging past the end empties the log and continues it
    /// at `index` (installing a snapshot). Durable on return.
    pub fn purge_before(&mut self, index: u64) -> Result<()> {
        self.purge_before_anchored(index, None)
    }

    /// [`Log::purge_before`], with the chain hash of `index − 1` known from
    /// elsewhere (a snapshot carries it): a purge past the end of the log
    /// then anchors the chain there instead of leaving it unanchored. A
    /// purge inside the log reads the hash from the log and ignores
    /// `anchor`.
    pub fn purge_before_anchored(&mut self, index: u64, anchor: Option<Hash>) -> Result<()> {
        self.purge_with_meta(index, anchor, None)
    }

    /// [`Log::purge_before_anchored`] that also replaces the user's bytes
    /// in the metadata file, in the same atomic write: a crash leaves
    /// either the old purge point with the old bytes or the new with the
    /// new. The bytes are replaced even if nothing is purged.
    pub fn purge_before_with_app(
        &mut self,
        index: u64,
        anchor: Option<Hash>,
        app: &[u8],
    ) -> Result<()> {
        if index <= self.first_index() {
            return self.set_app_meta(app);
        }
        self.check_app_size(app)?;
        self.purge_with_meta(index, anchor, Some(app.to_vec()))
    }

    fn purge_with_meta(
        &mut self,
        index: u64,
        anchor: Option<Hash>,
        app: Option<Vec<u8>>,
    ) -> Result<()> {
        self.check_poison()?;
        if index <= self.first_index() {
            return Ok(());
        }
        let mut next = self.meta.clone();
        if let Some(app) = app {
            next.app = app;
        }
        next.purged_next = index;
        // The first retained frame's link is anchored by the chain hash of
        // the last purged one; past the end of the log only the caller can
        // know it (an installed snapshot carries it).
        next.anchor = if index <= self.next_index() {
            Some(self.link_for(index)?)
        } else {
            anchor
        };
        self.store_meta(next)?;
        if index > self.next_index() {
            self.head = self.meta.anchor.unwrap_or(GENESIS);
            let old = std::mem::take(&mut self.sealed);
            let old_active = self.active.name.clone();
            self.start_active(index)?;
            self.durable_next = index;
            self.truncations += 1;
            for name in old
                .iter()
                .map(|s| s.name.as_str())
                .chain([old_active.as_str()])
            {
                let removed = self.disk.remove(name);
                self.poison_on_error(removed, "remove", name)?;
            }
        } else {
            while self.sealed.front().is_some_and(|s| s.next <= index) {
                let sealed = self.sealed.pop_front().expect("checked");
                let removed = self.disk.remove(&sealed.name);
                self.poison_on_error(removed, "remove", &sealed.name)?;
            }
        }
        let synced = self.disk.sync_dir();
        self.poison_on_error(synced, "sync_dir", meta::NAME)
    }

    /// The index retention allows purging before: whole sealed segments,
    /// oldest first, while the log without the segment still holds at
    /// least its size limit (so the newest `size_max` bytes stay), or while
    /// a segment's newest record is older than the age limit by the log's
    /// clock.
    pub fn retention_point(&self, retention: &Retention) -> Result<u64> {
        let mut total: u64 = self.sealed.iter().map(|s| s.size).sum::<u64>() + self.active.size;
        let now_ms = wall_unix_ms(&*self.clock);
        let mut point = self.first_index();
        for sealed in &self.sealed {
            let over_size = retention
                .size_max
                .is_some_and(|max| total - sealed.size >= max);
            let expired = match retention.age_max {
                Some(age) => {
                    let newest = sealed.view()?.last_timestamp_ms.unwrap_or(0);
                    newest.saturating_add(age.as_millis() as u64) < now_ms
                }
                None => false,
            };
            if !(over_size || expired) {
                break;
            }
            total -= sealed.size;
            point = point.max(sealed.next);
        }
        Ok(point)
    }

    /// Applies [`Log::retention_point`]; returns the new first index.
    pub fn apply_retention(&mut self, retention: &Retention) -> Result<u64> {
        let point = self.retention_point(retention)?;
        self.purge_before(point)?;
        Ok(self.first_index())
    }

    /// Reads every frame of every segment and checks every checksum.
    pub fn verify(&self) -> Result<VerifyReport> {
        let mut report = VerifyReport::default();
        for sealed in &self.sealed {
            let view = sealed.view()?;
            for index in sealed.first..sealed.next {
                view.frame(&sealed.name, sealed.first, index)?;
            }
            report.segments += 1;
            report.frames += sealed.next - sealed.first;
            report.bytes += sealed.size;
        }
        let mut records = Vec::new();
        self.read_active(self.active.first..self.active.next(), &mut records)?;
        report.segments += 1;
        report.frames += records.len() as u64;
        report.bytes += self.active.size;
        Ok(report)
    }

    /// Every segment, oldest first.
    pub fn segments(&self) -> Vec<SegmentInfo> {
        let sealed = self.sealed.iter().map(|s| SegmentInfo {
            name: s.name.clone(),
            first: s.first,
            next: s.next,
            size: s.size,
            sealed: true,
            capacity: 0,
        });
        let active = SegmentInfo {
            name: self.active.name.clone(),
            first: self.active.first,
            next: self.active.next(),
            size: self.active.size,
            sealed: false,
            capacity: self.active.capacity,
        };
        sealed.chain([active]).collect()
    }

    /// The disk the log works on.
    pub fn disk(&self) -> &D {
        &self.disk
    }

    /// Frames plus headers, in bytes, of all segments.
    pub fn size(&self) -> u64 {
        self.sealed.iter().map(|s| s.size).sum::<u64>() + self.active.size
    }

    fn store_meta(&mut self, next: Meta) -> Result<()> {
        let stored = meta::store(&self.disk, &next);
        if let Err(error) = &stored {
            self.poison.get_or_insert_with(|| error.to_string());
        }
        stored?;
        self.meta = next;
        Ok(())
    }

    fn check_poison(&self) -> Result<()> {
        if self.access == Access::ReadOnly {
            return Err(Error::ReadOnly {
                what: "be written, truncated, purged or synced".to_owned(),
            });
        }
        if self.closed {
            return Err(Error::Closed);
        }
        match &self.poison {
            Some(cause) => Err(Error::Poisoned {
                cause: cause.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Turns a disk result into the log's, poisoning the log on failure.
    fn poison_on_error<T>(
        &mut self,
        result: std::io::Result<T>,
        op: &'static str,
        file: &str,
    ) -> Result<T> {
        result.map_err(|source| {
            let error = Error::io(op, file, source);
            tracing::error!(%error, "log poisoned");
            self.poison.get_or_insert_with(|| error.to_string());
            error
        })
    }
}

fn check_options(options: &Options) -> Result<()> {
    if !(SEGMENT_SIZE_MIN..=SEGMENT_SIZE_MAX).contains(&options.segment_size) {
        return Err(Error::InvalidOptions(format!(
            "segment_size {} is outside [{SEGMENT_SIZE_MIN}, {SEGMENT_SIZE_MAX}]",
            options.segment_size
        )));
    }
    Ok(())
}

/// Bytes of frame overhead per entry, for callers sizing batches.
pub const FRAME_OVERHEAD: usize = FRAME_HEADER_SIZE;

#[cfg(test)]
mod tests;

//! openraft's `RaftLogStorage` over the segmented [`Log`], with group
//! commit.
//!
//! Write path: `append` encodes the entries and writes them into the page
//! cache under the log's lock (readable at once, as openraft requires),
//! then hands a [`SyncHandle`] and openraft's flush callback to the
//! *flusher* task. The flusher takes every request queued while the
//! previous sync ran and covers all of them with one `fdatasync` of the
//! newest handle, run through the runtime's `spawn_blocking`; then it
//! reports durability to every callback in order. Many appends, one sync.
//!
//! Vote and purge point live in the log's metadata file, replaced
//! atomically. Truncation and purge are durable before they return.
//!
//! Raft's log and the bodies the bus reads are one log, but their first
//! indexes may differ: Raft's log is `(last_purged, last_log]`, while the
//! segments may still hold entries at and below `last_purged`. That is the
//! case after a snapshot install with a tail (`raft/snapshot.rs`): the
//! install writes the tail P..=S into the log and records S as Raft's
//! purge point in the same metadata write, so openraft, which then purges
//! up to S, reads nothing below S+1 while the bus still reads the bodies
//! of P..=S. Retention removes them later (`LogStoreReader::purge_bodies_before`).
//!
//! On open, an install that a crash interrupted after its commit point
//! (`state.snapshot` holding a tail the log lacks) is finished first, so
//! openraft never sees a log that disagrees with the snapshot.
//!
//! Fault model: a failed sync poisons the log; every later call fails and
//! openraft stops the node. A failed sync is never retried.

use crate::io::Env;
use sluice_model::constants::READ_ENTRIES_MAX;
use std::fmt;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, RwLock};

use openraft::OptionalSend;
use openraft::alias::MpscSenderOf;
use openraft::async_runtime::{MpscReceiver, MpscSender, OneshotSender};
use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::type_config::TypeConfigExt;
use serde::{Deserialize, Serialize};

use crate::io::{Clock, Disk};
use crate::log::frame::Hash;
use crate::log::{self, Log, PersistMode, SyncHandle};
use sluice_model::constants::APPEND_ENTRIES_MAX;

use super::snapshot::{self, Tail, TailSource};
use super::{Entry, LogId, TypeConfig, Vote, codec, log_id, to_io};
#[cfg(feature = "planted-bugs")]
use sluice_model::testing::planted::{self, Bug};

/// When an append is acknowledged to Raft as durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// After `fdatasync` (group commit). Nothing acknowledged is lost on a
    /// power failure.
    #[default]
    Sync,
    /// Once written into the page cache. A process crash loses nothing; a
    /// power failure or kernel crash may lose recent acknowledged writes.
    Buffer,
}

/// Queued flush requests before `append` waits (back-pressure).
const FLUSH_QUEUE_MAX: usize = 4096;

/// In [`Durability::Buffer`], bytes appended between background syncs. They
/// keep the page cache's dirty data small, so sealing a segment (which
/// syncs it) never has to write a whole segment at once inside an append.
const BUFFER_WRITEBACK_BYTES: u64 = 1024 * 1024;

/// What the metadata file's user bytes hold.
#[derive(Debug, Default, Serialize, Deserialize)]
struct StoreMeta {
    vote: Option<Vote>,
    last_purged: Option<LogId>,
}

struct Inner<D: Disk> {
    log: Log<D>,
    vote: Option<Vote>,
    last_purged: Option<LogId>,
    last_log: Option<LogId>,
    payloads: Vec<u8>,
    frames: Vec<(usize, u8, u64, u64, u64, Option<Hash>)>,
    /// Bytes appended since the last background sync (buffer mode).
    unsynced_bytes: u64,
    /// The chain hash at an index, from an installed snapshot: a purge up
    /// to that index past the end of the log anchors the chain with it.
    snapshot_anchor: Option<(u64, crate::log::frame::Hash)>,
}

impl<D: Disk> Inner<D> {
    fn store_meta(&mut self) -> log::Result<()> {
        let bytes = self.meta_bytes(self.last_purged);
        self.log.set_app_meta(&bytes)
    }

    /// The metadata file's user bytes with `last_purged` as the purge point.
    fn meta_bytes(&self, last_purged: Option<LogId>) -> Vec<u8> {
        let meta = StoreMeta {
            vote: self.vote,
            last_purged,
        };
        postcard::to_allocvec(&meta).expect("metadata encodes into memory")
    }

    /// The first index of Raft's log: after its purge point, even where the
    /// segments still hold bodies below it.
    fn raft_first(&self) -> u64 {
        let after_purge = self.last_purged.map_or(0, |id| id.index + 1);
        after_purge.max(self.log.first_index())
    }

    fn read(&self, start: u64, end: u64) -> io::Result<Vec<Entry>> {
        let start = start.max(self.raft_first());
        let mut records = Vec::new();
        self.log.read(start..end, &mut records).map_err(to_io)?;
        records.iter().map(codec::decode).collect()
    }

    /// Whether the log holds the entry `last` with the chain hash
    /// `chain_head` (when given): then it agrees with a snapshot at `last`.
    fn holds(&self, last: LogId, chain_head: Option<Hash>) -> log::Result<bool> {
        let (first, next) = (self.log.first_index(), self.log.next_index());
        if last.index < first || last.index >= next {
            return Ok(false);
        }
        let mut records = Vec::with_capacity(1);
        self.log.read(last.index..last.index + 1, &mut records)?;
        let term = records[0].term;
        let hash = self.log.chain_hash_at(last.index)?;
        Ok(term == last.leader_id.term && chain_head.is_none_or(|head| head == hash))
    }

    /// Makes the log hold a snapshot's tail, `tail.first..=last`, and
    /// records `last` as Raft's purge point. A log that already holds
    /// `last` with the same hash is left as it is (a restart after the
    /// install, or a follower that had the entries); any other log is
    /// replaced by the tail (`Log::reset`, then appends, then one sync).
    /// The tail must have passed `snapshot::check_tail`.
    fn install_tail(
        &mut self,
        last: LogId,
        chain_head: Option<Hash>,
        tail: &Tail<'_>,
    ) -> log::Result<()> {
        assert_eq!(
            tail.records.last().map(|r| r.index),
            Some(last.index),
            "a checked tail ends at the snapshot"
        );
        if self.holds(last, chain_head)? {
            if self.last_purged.is_none_or(|p| p < last) {
                let app = self.meta_bytes(Some(last));
                self.log.set_app_meta(&app)?;
                self.last_purged = Some(last);
            }
            return Ok(());
        }
        if self.log.first_index() > last.index {
            tracing::warn!(
                snapshot = last.index,
                first = self.log.first_index(),
                "the log already begins after the installed snapshot; its tail is not written"
            );
            return Ok(());
        }
        let app = self.meta_bytes(Some(last));
        let anchor = chain_head.map(|_| tail.link);
        self.log.reset(tail.first, anchor, &app)?;
        self.last_purged = Some(last);
        self.last_log = Some(last);
        for chunk in tail.records.chunks(APPEND_ENTRIES_MAX) {
            let entries: Vec<log::Entry<'_>> = chunk
                .iter()
                .map(|record| log::Entry {
                    index: record.index,
                    term: record.term,
                    kind: record.kind,
                    timestamp_ms: record.timestamp_ms,
                    payload: record.payload,
                    payload_digest: None,
                })
                .collect();
            self.log.append(&entries, PersistMode::Buffer)?;
        }
        self.log.sync()?;
        self.unsynced_bytes = 0;
        assert_eq!(self.log.next_index(), last.index + 1);
        Ok(())
    }

    /// Finishes an install a crash interrupted after its commit point: if
    /// `state.snapshot` still holds a tail, writes it into the log unless
    /// the log already holds it, then stores the snapshot without it.
    fn finish_install(&mut self) -> log::Result<()> {
        let io = |op, source| log::Error::Io {
            op,
            file: snapshot::SNAPSHOT_FILE.to_owned(),
            source,
        };
        let loaded = super::state_machine::load_snapshot(self.log.disk());
        let Some(bytes) = loaded.map_err(|e| io("read", e))? else {
            return Ok(());
        };
        let Ok(decoded) = snapshot::decode(&bytes) else {
            // Not this store's to judge: the state machine refuses it when
            // openraft installs it on start, naming what is wrong.
            return Ok(());
        };
        let (Some(tail), Some(last)) = (&decoded.tail, decoded.core.last_applied) else {
            return Ok(());
        };
        snapshot::check_tail(tail, last, decoded.core.chain_head)
            .map_err(|e| io("check", e.into()))?;
        tracing::warn!(
            first = tail.first,
            last = last.index,
            "finishing a snapshot install that a crash interrupted"
        );
        self.install_tail(last, decoded.core.chain_head, tail)?;
        let core = snapshot::encode(&decoded.core);
        super::state_machine::store_snapshot(self.log.disk(), &core).map_err(|e| io("replace", e))
    }

    /// Drops a state snapshot that lies past the end of a log that holds
    /// every entry from the first one (nothing purged): the log lost its
    /// tail below the snapshot (an operator or a device cut the newest
    /// segment; a power failure under buffered durability). Kept, the
    /// snapshot's state would index events whose bodies are gone, and
    /// openraft, finding its log behind the state machine, would purge the
    /// log up to the snapshot and never fetch those entries again. Without
    /// it the state is rebuilt from the log, and what the log lacks comes
    /// from the leader like any missing entries. A log with a purged prefix
    /// cannot rebuild the state before it: its snapshot stays, and the
    /// events whose bodies are gone are named.
    fn drop_snapshot_ahead_of_log(&mut self) -> log::Result<()> {
        let io = |op, source| log::Error::Io {
            op,
            file: snapshot::SNAPSHOT_FILE.to_owned(),
            source,
        };
        let loaded = super::state_machine::load_snapshot(self.log.disk());
        let Some(bytes) = loaded.map_err(|e| io("read", e))? else {
            return Ok(());
        };
        // One that does not decode is the state machine's to refuse.
        let Some(last) = snapshot::decode(&bytes)
            .ok()
            .and_then(|decoded| decoded.core.last_applied)
        else {
            return Ok(());
        };
        let next = self.log.next_index();
        if last.index < next {
            return Ok(());
        }
        if self.raft_first() > 0 {
            tracing::error!(
                snapshot = last.index,
                log_next = next,
                "the state snapshot lies past the end of the log, whose prefix is purged: \
                 the events at indexes {next} to {} have no bodies on this node",
                last.index
            );
            return Ok(());
        }
        tracing::warn!(
            snapshot = last.index,
            log_next = next,
            "the state snapshot lies past the end of the log (its tail was cut): dropping \
             the snapshot; the state is rebuilt from the log and the rest comes from the leader"
        );
        let disk = self.log.disk();
        disk.remove(snapshot::SNAPSHOT_FILE)
            .and_then(|()| disk.sync_dir())
            .map_err(|e| io("remove", e))
    }

    /// Encodes `entries` into frame payloads, for [`Inner::write_encoded`].
    fn encode(&mut self, entries: impl IntoIterator<Item = Entry>) {
        self.payloads.clear();
        self.frames.clear();
        for entry in entries {
            let (kind, timestamp_ms, digest) = codec::encode(&entry, &mut self.payloads);
            let id = entry.log_id;
            self.frames.push((
                self.payloads.len(),
                kind,
                id.leader_id.term,
                id.index,
                timestamp_ms,
                digest,
            ));
            self.last_log = Some(id);
        }
    }

    /// Whether writing the encoded entries would roll a segment
    /// ([`Log::roll_due`]).
    fn roll_due(&self) -> bool {
        let mut start = 0;
        self.log.roll_due(self.frames.iter().map(|&(end, ..)| {
            let size = end - start;
            start = end;
            size
        }))
    }

    /// Writes the entries [`Inner::encode`] encoded into the log; returns
    /// the sync handle that covers them when a sync is due (always with
    /// [`Durability::Sync`], every [`BUFFER_WRITEBACK_BYTES`] without).
    fn write_encoded(
        &mut self,
        durability: Durability,
    ) -> log::Result<Option<SyncHandle<D::File>>> {
        // An empty log may begin anywhere (a fresh store, or right after a
        // snapshot): rebase it to the first index appended.
        if let Some(&(_, _, _, first, _, _)) = self.frames.first() {
            if self.log.first_index() == self.log.next_index() && first > self.log.next_index() {
                self.log.purge_before(first)?;
            }
        }
        let mut start = 0;
        let mut batch = Vec::with_capacity(self.frames.len());
        for &(end, kind, term, index, timestamp_ms, payload_digest) in &self.frames {
            let payload = &self.payloads[start..end];
            batch.push(log::Entry {
                index,
                term,
                kind,
                timestamp_ms,
                payload,
                payload_digest,
            });
            start = end;
        }
        self.log.append(&batch, PersistMode::Buffer)?;
        self.unsynced_bytes +=
            (self.payloads.len() + self.frames.len() * log::FRAME_OVERHEAD) as u64;
        let due = match durability {
            Durability::Sync => true,
            Durability::Buffer => self.unsynced_bytes >= BUFFER_WRITEBACK_BYTES,
        };
        if !due {
            return Ok(None);
        }
        self.unsynced_bytes = 0;
        self.log.sync_handle().map(Some)
    }
}

/// One append waiting for its sync.
struct FlushRequest<E: Env> {
    handle: SyncHandle<<E::Disk as Disk>::File>,
    callback: IOFlushed<TypeConfig<E>>,
}

/// Sluice's Raft log storage; see the module docs.
pub struct LogStore<E: Env> {
    shared: Arc<RwLock<Inner<E::Disk>>>,
    flusher: MpscSenderOf<TypeConfig<E>, FlushRequest<E>>,
    durability: Durability,
}

/// Raft's storage goes when the node stops: nothing writes the log after
/// it, and the directory is free for the next opener at once, though
/// readers and background tasks may hold the log a while longer.
impl<E: Env> Drop for LogStore<E> {
    fn drop(&mut self) {
        let mut inner = match self.shared.write() {
            Ok(inner) => inner,
            Err(poisoned) => poisoned.into_inner(),
        };
        inner.log.close();
    }
}

impl<E: Env> fmt::Debug for LogStore<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogStore").finish_non_exhaustive()
    }
}

/// A reader of the Raft log, used by openraft's replication tasks and by
/// the bus to read event bodies.
pub struct LogStoreReader<D: Disk> {
    shared: Arc<RwLock<Inner<D>>>,
}

impl<D: Disk> Clone for LogStoreReader<D> {
    fn clone(&self) -> Self {
        LogStoreReader {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<D: Disk> fmt::Debug for LogStoreReader<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogStoreReader").finish_non_exhaustive()
    }
}

impl<E: Env> LogStore<E> {
    /// Opens the log in `disk` and, for [`Durability::Sync`], spawns the
    /// flusher task on `E` (so this must run inside the runtime).
    pub fn open(
        disk: E::Disk,
        clock: Arc<dyn Clock>,
        options: log::Options,
        durability: Durability,
    ) -> log::Result<Self> {
        let prewrite = options.prewrite;
        let log = Log::open(disk, clock, options)?;
        let meta: StoreMeta = if log.app_meta().is_empty() {
            StoreMeta::default()
        } else {
            postcard::from_bytes(log.app_meta()).map_err(|e| {
                log::Error::InvalidOptions(format!("log.meta user bytes do not decode: {e}"))
            })?
        };
        let mut inner = Inner {
            log,
            vote: meta.vote,
            last_purged: meta.last_purged,
            last_log: None,
            payloads: Vec::new(),
            frames: Vec::new(),
            unsynced_bytes: 0,
            snapshot_anchor: None,
        };
        inner.finish_install()?;
        // Finish a purge past the end of the log that crashed between
        // recording the purge point and emptying the log (the two were
        // separate writes before they became one). A purge inside the log
        // needs no finishing: entries left below the purge point are
        // bodies Raft no longer reads.
        if let Some(purged) = inner.last_purged {
            if purged.index >= inner.log.next_index() {
                inner.log.purge_before(purged.index + 1)?;
            }
        }
        inner.drop_snapshot_ahead_of_log()?;
        let log = &inner.log;
        let physical_last = match log.next_index().checked_sub(1) {
            Some(last) if last >= log.first_index() => {
                let mut records = Vec::new();
                log.read(last..last + 1, &mut records)?;
                Some(log_id(records[0].term, last))
            }
            _ => None,
        };
        inner.last_log = physical_last.max(inner.last_purged);
        let shared = Arc::new(RwLock::new(inner));
        let (flusher, requests) = TypeConfig::<E>::mpsc(FLUSH_QUEUE_MAX);
        // Detached: the loop ends when the store (the sender) drops.
        drop(TypeConfig::<E>::spawn(flush_loop::<E>(
            Arc::clone(&shared),
            requests,
        )));
        if prewrite == log::Prewrite::Spare {
            // Detached: ends once the store and its readers are gone.
            drop(TypeConfig::<E>::spawn(prewrite_loop::<E>(Arc::downgrade(
                &shared,
            ))));
        }
        Ok(LogStore {
            shared,
            flusher,
            durability,
        })
    }

    /// A reader sharing this store's log.
    pub fn reader(&self) -> LogStoreReader<E::Disk> {
        LogStoreReader {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Runs `f` on the log's inner state on the blocking pool.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Inner<E::Disk>) -> log::Result<T> + Send + 'static,
    ) -> io::Result<T> {
        let shared = Arc::clone(&self.shared);
        let joined = TypeConfig::<E>::spawn_blocking(move || {
            let mut inner = shared.write().expect("log lock");
            f(&mut inner)
        });
        joined.await?.map_err(to_io)
    }
}

/// The group-commit loop: one sync for everything queued meanwhile.
async fn flush_loop<E: Env>(
    shared: Arc<RwLock<Inner<E::Disk>>>,
    mut requests: openraft::alias::MpscReceiverOf<TypeConfig<E>, FlushRequest<E>>,
) {
    let mut last_group = 1;
    // The spare being written, if any, as of the last sync: after each sync
    // a little more of its zeros goes to the device (`log/spare.rs`).
    let mut trickle: Option<log::Trickle<<E::Disk as Disk>::File>> = None;
    while let Some(first) = requests.recv().await {
        let mut handle = first.handle;
        let mut callbacks = vec![first.callback];
        last_group = super::gather::<E>(last_group, || {
            while let Ok(next) = requests.try_recv() {
                // The newest handle covers every earlier append: same file,
                // a higher end, or a newer segment (rolling synced the old).
                handle = next.handle;
                callbacks.push(next.callback);
            }
            callbacks.len()
        })
        .await;
        #[cfg(feature = "stage-trace")]
        let queued = sluice_model::trace::start();
        let trickle_now = trickle.take();
        let (answer, answered) = TypeConfig::<E>::oneshot();
        // Detached: it answers before it starts the spare's write-back, so
        // that the write-back is off the publishes' path.
        drop(TypeConfig::<E>::spawn_blocking(move || {
            #[cfg(feature = "stage-trace")]
            sluice_model::trace::span("log: flusher hands off → sync starts", queued);
            #[cfg(feature = "stage-trace")]
            let syncing = sluice_model::trace::start();
            let result = handle.sync();
            #[cfg(feature = "stage-trace")]
            sluice_model::trace::span("log: fdatasync", syncing);
            let _ = answer.send((handle, result));
            if let Some(trickle) = trickle_now {
                trickle.write_back();
            }
        }));
        let synced = answered
            .await
            .map_err(|_| io::Error::other("the log's sync ended without an answer"));
        let outcome = match synced {
            Ok((handle, result)) => {
                let mut inner = shared.write().expect("log lock");
                trickle = inner.log.spare_trickle();
                inner
                    .log
                    .complete_sync(handle, result)
                    .map(|_| ())
                    .map_err(to_io)
            }
            Err(join) => Err(join),
        };
        for callback in callbacks {
            let result = match &outcome {
                Ok(()) => Ok(()),
                Err(error) => Err(io::Error::new(error.kind(), error.to_string())),
            };
            callback.io_completed(result);
        }
    }
}

/// How fast spare segments are written out with zeros: twice the rate
/// the log fills, so the spare is ready before the active segment is full,
/// within these bounds. The zeros share the disk with the syncs that
/// acknowledge publishes; unpaced, they queue ahead of those syncs for tens
/// of milliseconds (measured with a probe on this machine: sync p99 9 ms
/// under an unpaced writer of zeros, unchanged from the quiet disk at 16 to
/// 64 MB/s). A log that fills faster than half the ceiling rolls onto an
/// ordinary segment when no spare is ready yet. The floor is low because
/// the zeros can delay a publish's sync: at 2,000 events/s offered the
/// durable p99 was 1,584 µs with a 4 MiB/s floor and 800 µs with 1 MiB/s
/// (peers generator, one round each, same session; p50 unchanged; each
/// step then synced its zeros, which the flusher's trickle replaced).
const PREWRITE_BYTES_PER_SEC_MIN: f64 = 1024.0 * 1024.0;
const PREWRITE_BYTES_PER_SEC_MAX: f64 = 64.0 * 1024.0 * 1024.0;

/// How often an idle prewriter asks the log whether it wants a spare.
const PREWRITE_POLL: std::time::Duration = std::time::Duration::from_millis(100);

/// Writes the spare segments the log asks for (`log/spare.rs`), paced to
/// the rate the log fills, off the log's lock and off the runtime's
/// threads.
async fn prewrite_loop<E: Env>(shared: std::sync::Weak<RwLock<Inner<E::Disk>>>) {
    use openraft::Instant as _;
    // The log's fill rate: bytes written over the last poll or step.
    let mut sampled = (TypeConfig::<E>::now(), 0u64);
    let mut rate = 0.0f64;
    let mut observe = |written: u64| {
        let now = TypeConfig::<E>::now();
        let elapsed = now.saturating_duration_since(sampled.0).as_secs_f64();
        if elapsed > 0.0 {
            let recent = written.saturating_sub(sampled.1) as f64 / elapsed;
            // Smoothed, so that one burst does not set the pace.
            rate = 0.5 * rate + 0.5 * recent;
        }
        sampled = (now, written);
        let pace = (2.0 * rate).clamp(PREWRITE_BYTES_PER_SEC_MIN, PREWRITE_BYTES_PER_SEC_MAX);
        std::time::Duration::from_secs_f64(log::SPARE_STEP_BYTES as f64 / pace)
    };
    loop {
        let (job, written) = {
            let Some(shared) = shared.upgrade() else {
                return;
            };
            let mut inner = shared.write().expect("log lock");
            (inner.log.spare_job(), inner.log.written())
        };
        let mut pause = observe(written);
        let Some(mut job) = job else {
            TypeConfig::<E>::sleep(PREWRITE_POLL).await;
            continue;
        };
        let result = loop {
            let stepped = TypeConfig::<E>::spawn_blocking(move || {
                let done = job.step();
                (job, done)
            })
            .await;
            let (returned, done) = match stepped {
                Ok(pair) => pair,
                // The blocking pool is gone: the runtime is shutting down.
                Err(_) => return,
            };
            job = returned;
            match done {
                Ok(true) => break Ok(()),
                Ok(false) => TypeConfig::<E>::sleep(pause).await,
                Err(error) => break Err(error),
            }
            let Some(shared) = shared.upgrade() else {
                return;
            };
            let written = shared.read().expect("log lock").log.written();
            pause = observe(written);
        };
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let mut inner = shared.write().expect("log lock");
        inner.log.complete_spare(job, result);
    }
}

fn bounds(range: &impl RangeBounds<u64>, first: u64, next: u64) -> (u64, u64) {
    let start = match range.start_bound() {
        Bound::Included(&s) => s,
        Bound::Excluded(&s) => s + 1,
        Bound::Unbounded => first,
    };
    let end = match range.end_bound() {
        Bound::Included(&e) => e + 1,
        Bound::Excluded(&e) => e,
        Bound::Unbounded => next,
    };
    (start, end)
}

impl<D: Disk> LogStoreReader<D> {
    /// Reads the raw records `[start, end)`, as stored.
    pub fn read_records(
        &self,
        start: u64,
        end: u64,
        out: &mut Vec<log::Record>,
    ) -> log::Result<()> {
        let inner = self.shared.read().expect("log lock");
        let start = start.max(inner.log.first_index());
        inner.log.read(start..end, out)
    }

    /// The index retention allows purging before (whole sealed segments).
    pub fn retention_point(&self, retention: &log::Retention) -> log::Result<u64> {
        self.shared
            .read()
            .expect("log lock")
            .log
            .retention_point(retention)
    }

    /// The stored chain hash of the entry at `index` (the head of the hash
    /// chain when `index` is the last entry).
    pub fn chain_hash_at(&self, index: u64) -> log::Result<crate::log::frame::Hash> {
        self.shared
            .read()
            .expect("log lock")
            .log
            .chain_hash_at(index)
    }

    /// Records the chain hash at `index` that an installed snapshot
    /// carries, for the purge that follows the install (see
    /// `Log::purge_before_anchored`).
    pub fn set_snapshot_anchor(&self, index: u64, hash: crate::log::frame::Hash) {
        self.shared.write().expect("log lock").snapshot_anchor = Some((index, hash));
    }

    /// Writes a snapshot's checked tail into the log and records `last`
    /// as Raft's purge point (see `Inner::install_tail`).
    pub(crate) fn install_tail(
        &self,
        last: LogId,
        chain_head: Option<Hash>,
        tail: &Tail<'_>,
    ) -> log::Result<()> {
        self.shared
            .write()
            .expect("log lock")
            .install_tail(last, chain_head, tail)
    }

    /// Removes bodies before `point` that Raft has already purged (kept by
    /// a snapshot install with a tail): retention's share of what openraft
    /// does not purge. Never removes an entry Raft's log still holds.
    /// Durable on return; returns the first index kept.
    pub fn purge_bodies_before(&self, point: u64) -> log::Result<u64> {
        let mut inner = self.shared.write().expect("log lock");
        let point = point.min(inner.raft_first());
        inner.log.purge_before(point)?;
        Ok(inner.log.first_index())
    }

    /// The log's segments, oldest first.
    pub fn segments(&self) -> Vec<log::SegmentInfo> {
        self.shared.read().expect("log lock").log.segments()
    }

    /// The first index Raft's log holds: after the purge point, even where
    /// bodies below it remain.
    pub fn raft_first(&self) -> u64 {
        self.shared.read().expect("log lock").raft_first()
    }

    /// The first and next index of the log.
    pub fn bounds(&self) -> (u64, u64) {
        let inner = self.shared.read().expect("log lock");
        (inner.log.first_index(), inner.log.next_index())
    }
}

impl<D: Disk> TailSource for LogStoreReader<D> {
    /// The records `from..=last` this log still holds, with the chain hash
    /// the first links to. The records are read under the lock (sealed
    /// segments as mapped slices, without copying) and encoded after it.
    fn write_tail(&self, from: u64, last: u64, out: &mut Vec<u8>) -> io::Result<()> {
        let (link, records) = {
            let inner = self.shared.read().expect("log lock");
            let first = from.max(inner.log.first_index());
            if first > last {
                return Ok(());
            }
            if first > from {
                tracing::warn!(
                    from,
                    first,
                    "a snapshot is sent without the bodies before {first}: this node's log \
                     no longer holds them"
                );
            }
            let link = inner.log.link_for(first).map_err(to_io)?;
            let mut records = Vec::with_capacity((last + 1 - first) as usize);
            inner
                .log
                .read(first..last + 1, &mut records)
                .map_err(to_io)?;
            if records.last().map(|r| r.index) != Some(last) {
                return Err(io::Error::other(format!(
                    "the snapshot at index {last} is past this node's log (it ends before {})",
                    inner.log.next_index()
                )));
            }
            (link, records)
        };
        snapshot::encode_tail(out, &link, &records);
        Ok(())
    }
}

impl<E: Env> RaftLogReader<TypeConfig<E>> for LogStoreReader<E::Disk> {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + fmt::Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> io::Result<Vec<Entry>> {
        let inner = self.shared.read().expect("log lock");
        let (start, end) = bounds(&range, inner.raft_first(), inner.log.next_index());
        inner.read(start, end)
    }

    async fn read_vote(&mut self) -> io::Result<Option<Vote>> {
        Ok(self.shared.read().expect("log lock").vote)
    }

    async fn limited_get_log_entries(&mut self, start: u64, end: u64) -> io::Result<Vec<Entry>> {
        let inner = self.shared.read().expect("log lock");
        inner.read(start, end.min(start.saturating_add(READ_ENTRIES_MAX)))
    }
}

impl<E: Env> RaftLogStorage<TypeConfig<E>> for LogStore<E> {
    type LogReader = LogStoreReader<E::Disk>;

    async fn get_log_state(&mut self) -> io::Result<LogState<TypeConfig<E>>> {
        let inner = self.shared.read().expect("log lock");
        Ok(LogState {
            last_purged_log_id: inner.last_purged,
            last_log_id: inner.last_log,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.reader()
    }

    async fn save_vote(&mut self, vote: &Vote) -> io::Result<()> {
        let vote = *vote;
        self.blocking(move |inner| {
            let previous = inner.vote.replace(vote);
            inner.store_meta().inspect_err(|_| inner.vote = previous)
        })
        .await
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig<E>>) -> io::Result<()>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let durability = self.durability;
        #[cfg(feature = "planted-bugs")]
        let durability = if planted::is_planted(Bug::AckBeforeSync) {
            Durability::Buffer
        } else {
            durability
        };
        let written = {
            let mut inner = self.shared.write().expect("log lock");
            inner.encode(entries);
            if inner.roll_due() {
                None
            } else {
                Some(inner.write_encoded(durability).map_err(to_io)?)
            }
        };
        let handle = match written {
            Some(handle) => handle,
            // Sealing the full segment and starting the next costs two
            // syncs and a directory sync (about 1 ms): they run on the
            // blocking pool, not on the Raft core's worker thread, holding
            // the log's lock as a roll inside the append did.
            None => {
                self.blocking(move |inner| {
                    inner.log.roll()?;
                    inner.write_encoded(durability)
                })
                .await?
            }
        };
        let callback = match durability {
            Durability::Sync => callback,
            Durability::Buffer => {
                // Acknowledged once in the page cache; the sync, if one is
                // due, runs in the background.
                callback.io_completed(Ok(()));
                IOFlushed::noop()
            }
        };
        match handle {
            Some(handle) => self
                .flusher
                .send(FlushRequest { handle, callback })
                .await
                .map_err(|_| io::Error::other("the log flusher has stopped")),
            None => {
                callback.io_completed(Ok(()));
                Ok(())
            }
        }
    }

    async fn truncate_after(&mut self, last: Option<LogId>) -> io::Result<()> {
        self.blocking(move |inner| {
            let from = last.map_or(inner.raft_first(), |id| id.index + 1);
            inner.log.truncate_from(from)?;
            // Truncating past the end changes nothing.
            let beyond = match (last, inner.last_log) {
                (Some(last), Some(current)) => last.index >= current.index,
                (Some(_), None) => true,
                (None, _) => false,
            };
            if !beyond {
                inner.last_log = last.or(inner.last_purged);
            }
            Ok(())
        })
        .await
    }

    /// Records `upto` as Raft's purge point and removes the entries up to
    /// it, in one metadata write. After a snapshot install with a tail the
    /// point is already recorded (the install did it) and nothing is
    /// removed: those entries are the bodies the tail brought.
    async fn purge(&mut self, upto: LogId) -> io::Result<()> {
        self.blocking(move |inner| {
            if inner.last_purged.is_some_and(|p| p >= upto) {
                return Ok(());
            }
            let anchor = inner
                .snapshot_anchor
                .filter(|&(index, _)| index == upto.index)
                .map(|(_, hash)| hash);
            let app = inner.meta_bytes(Some(upto));
            inner
                .log
                .purge_before_with_app(upto.index + 1, anchor, &app)?;
            inner.last_purged = Some(upto);
            if inner.last_log.is_none_or(|last| last < upto) {
                inner.last_log = Some(upto);
            }
            Ok(())
        })
        .await
    }
}

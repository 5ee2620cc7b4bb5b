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
//! Fault model: a failed sync poisons the log; every later call fails and
//! openraft stops the node. A failed sync is never retried.

use std::fmt;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, RwLock};

use openraft::OptionalSend;
use openraft::alias::MpscSenderOf;
use openraft::async_runtime::{MpscReceiver, MpscSender};
use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::type_config::TypeConfigExt;
use openraft_rt::AsyncRuntime;
use serde::{Deserialize, Serialize};

use crate::io::{Clock, Disk};
use crate::log::{self, Log, PersistMode, SyncHandle};

use super::{Entry, LogId, TypeConfig, Vote, codec, log_id, to_io};
#[cfg(feature = "planted-bugs")]
use crate::testing::planted::{self, Bug};

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

/// Largest number of entries `limited_get_log_entries` returns at once.
const READ_ENTRIES_MAX: u64 = 4096;

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
    frames: Vec<(usize, u8, u64, u64, u64)>,
    /// Bytes appended since the last background sync (buffer mode).
    unsynced_bytes: u64,
    /// The chain hash at an index, from an installed snapshot: a purge up
    /// to that index past the end of the log anchors the chain with it.
    snapshot_anchor: Option<(u64, crate::log::frame::Hash)>,
}

impl<D: Disk> Inner<D> {
    fn store_meta(&mut self) -> log::Result<()> {
        let meta = StoreMeta {
            vote: self.vote,
            last_purged: self.last_purged,
        };
        let bytes = postcard::to_allocvec(&meta).expect("metadata encodes into memory");
        self.log.set_app_meta(&bytes)
    }

    fn read(&self, start: u64, end: u64) -> io::Result<Vec<Entry>> {
        let start = start.max(self.log.first_index());
        let mut records = Vec::new();
        self.log.read(start..end, &mut records).map_err(to_io)?;
        records.iter().map(codec::decode).collect()
    }

    fn append(&mut self, entries: impl IntoIterator<Item = Entry>) -> log::Result<()> {
        self.payloads.clear();
        self.frames.clear();
        for entry in entries {
            let (kind, timestamp_ms) = codec::encode(&entry, &mut self.payloads);
            let id = entry.log_id;
            self.frames.push((
                self.payloads.len(),
                kind,
                id.leader_id.term,
                id.index,
                timestamp_ms,
            ));
            self.last_log = Some(id);
        }
        // An empty log may begin anywhere (a fresh store, or right after a
        // snapshot): rebase it to the first index appended.
        if let Some(&(_, _, _, first, _)) = self.frames.first() {
            if self.log.first_index() == self.log.next_index() && first > self.log.next_index() {
                self.log.purge_before(first)?;
            }
        }
        let mut start = 0;
        let mut batch = Vec::with_capacity(self.frames.len());
        for &(end, kind, term, index, timestamp_ms) in &self.frames {
            let payload = &self.payloads[start..end];
            batch.push(log::Entry {
                index,
                term,
                kind,
                timestamp_ms,
                payload,
            });
            start = end;
        }
        self.log.append(&batch, PersistMode::Buffer)?;
        self.unsynced_bytes +=
            (self.payloads.len() + self.frames.len() * log::FRAME_OVERHEAD) as u64;
        Ok(())
    }
}

/// One append waiting for its sync.
struct FlushRequest<RT: AsyncRuntime, D: Disk> {
    handle: SyncHandle<D::File>,
    callback: IOFlushed<TypeConfig<RT>>,
}

/// Sluice's Raft log storage; see the module docs.
pub struct LogStore<RT: AsyncRuntime, D: Disk> {
    shared: Arc<RwLock<Inner<D>>>,
    flusher: MpscSenderOf<TypeConfig<RT>, FlushRequest<RT, D>>,
    durability: Durability,
}

impl<RT: AsyncRuntime, D: Disk> fmt::Debug for LogStore<RT, D> {
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

impl<RT: AsyncRuntime, D: Disk> LogStore<RT, D> {
    /// Opens the log in `disk` and, for [`Durability::Sync`], spawns the
    /// flusher task on `RT` (so this must run inside the runtime).
    pub fn open(
        disk: D,
        clock: Arc<dyn Clock>,
        options: log::Options,
        durability: Durability,
    ) -> log::Result<Self> {
        let mut log = Log::open(disk, clock, options)?;
        let meta: StoreMeta = if log.app_meta().is_empty() {
            StoreMeta::default()
        } else {
            postcard::from_bytes(log.app_meta()).map_err(|e| {
                log::Error::InvalidOptions(format!("log.meta user bytes do not decode: {e}"))
            })?
        };
        // Finish a purge that crashed between recording and removing.
        if let Some(purged) = meta.last_purged {
            log.purge_before(purged.index + 1)?;
        }
        let last_log = match log.next_index().checked_sub(1) {
            Some(last) if last >= log.first_index() => {
                let mut records = Vec::new();
                log.read(last..last + 1, &mut records)?;
                Some(log_id(records[0].term, last))
            }
            _ => meta.last_purged,
        };
        let inner = Inner {
            log,
            vote: meta.vote,
            last_purged: meta.last_purged,
            last_log,
            payloads: Vec::new(),
            frames: Vec::new(),
            unsynced_bytes: 0,
            snapshot_anchor: None,
        };
        let shared = Arc::new(RwLock::new(inner));
        let (flusher, requests) = TypeConfig::<RT>::mpsc(FLUSH_QUEUE_MAX);
        // Detached: the loop ends when the store (the sender) drops.
        drop(TypeConfig::<RT>::spawn(flush_loop::<RT, D>(
            Arc::clone(&shared),
            requests,
        )));
        Ok(LogStore {
            shared,
            flusher,
            durability,
        })
    }

    /// A reader sharing this store's log.
    pub fn reader(&self) -> LogStoreReader<D> {
        LogStoreReader {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Runs `f` on the log's inner state on the blocking pool.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Inner<D>) -> log::Result<T> + Send + 'static,
    ) -> io::Result<T> {
        let shared = Arc::clone(&self.shared);
        let joined = TypeConfig::<RT>::spawn_blocking(move || {
            let mut inner = shared.write().expect("log lock");
            f(&mut inner)
        });
        joined.await?.map_err(to_io)
    }
}

/// The group-commit loop: one sync for everything queued meanwhile.
async fn flush_loop<RT: AsyncRuntime, D: Disk>(
    shared: Arc<RwLock<Inner<D>>>,
    mut requests: openraft::alias::MpscReceiverOf<TypeConfig<RT>, FlushRequest<RT, D>>,
) {
    let mut last_group = 1;
    while let Some(first) = requests.recv().await {
        let mut handle = first.handle;
        let mut callbacks = vec![first.callback];
        last_group = super::gather::<RT>(last_group, || {
            while let Ok(next) = requests.try_recv() {
                // The newest handle covers every earlier append: same file,
                // a higher end, or a newer segment (rolling synced the old).
                handle = next.handle;
                callbacks.push(next.callback);
            }
            callbacks.len()
        })
        .await;
        let synced = TypeConfig::<RT>::spawn_blocking(move || {
            let result = handle.sync();
            (handle, result)
        })
        .await;
        let outcome = match synced {
            Ok((handle, result)) => {
                let mut inner = shared.write().expect("log lock");
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

    /// The first and next index of the log.
    pub fn bounds(&self) -> (u64, u64) {
        let inner = self.shared.read().expect("log lock");
        (inner.log.first_index(), inner.log.next_index())
    }
}

impl<RT: AsyncRuntime, D: Disk> RaftLogReader<TypeConfig<RT>> for LogStoreReader<D> {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + fmt::Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> io::Result<Vec<Entry>> {
        let inner = self.shared.read().expect("log lock");
        let (start, end) = bounds(&range, inner.log.first_index(), inner.log.next_index());
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

impl<RT: AsyncRuntime, D: Disk> RaftLogStorage<TypeConfig<RT>> for LogStore<RT, D> {
    type LogReader = LogStoreReader<D>;

    async fn get_log_state(&mut self) -> io::Result<LogState<TypeConfig<RT>>> {
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

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig<RT>>) -> io::Result<()>
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
        let handle = {
            let mut inner = self.shared.write().expect("log lock");
            inner.append(entries).map_err(to_io)?;
            let due = match durability {
                Durability::Sync => true,
                Durability::Buffer => inner.unsynced_bytes >= BUFFER_WRITEBACK_BYTES,
            };
            if due {
                inner.unsynced_bytes = 0;
                Some(inner.log.sync_handle().map_err(to_io)?)
            } else {
                None
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
            let from = last.map_or(inner.log.first_index(), |id| id.index + 1);
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

    async fn purge(&mut self, upto: LogId) -> io::Result<()> {
        self.blocking(move |inner| {
            assert!(
                inner.last_purged.is_none_or(|p| p <= upto),
                "purge goes forward"
            );
            inner.last_purged = Some(upto);
            inner.store_meta()?;
            let anchor = inner
                .snapshot_anchor
                .filter(|&(index, _)| index == upto.index)
                .map(|(_, hash)| hash);
            inner.log.purge_before_anchored(upto.index + 1, anchor)?;
            if inner.last_log.is_none_or(|last| last < upto) {
                inner.last_log = Some(upto);
            }
            Ok(())
        })
        .await
    }
}

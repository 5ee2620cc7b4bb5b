//! openraft's `RaftStateMachine` over [`State`]: applies committed entries,
//! answers their writers, tells waiting readers, and keeps snapshots.
//!
//! The state machine lives in memory; its snapshot is durable in
//! `state.snapshot` (write new, sync, rename, sync directory), and on
//! restart openraft installs it and re-applies the log after it. Snapshots
//! hold the state (topics, partition index, producers, groups), never event
//! bodies: those stay in the log. A snapshot *sent* to a follower carries
//! the bodies it still needs as a tail of log records (`raft/snapshot.rs`),
//! read from the log when it is sent.
//!
//! Installing a received snapshot at index S with a tail P..=S, in this
//! order, so that a crash at any point recovers to the old state or to the
//! whole install, never to a state whose retained events lack bodies:
//! 1. decode and check everything, the tail's chain included (nothing is
//!    written for a snapshot that fails);
//! 2. replace `state.snapshot` with the received bytes, tail included: the
//!    commit point;
//! 3. rebase the log onto the tail (`LogStoreReader::install_tail`), which
//!    also records S as Raft's purge point, so openraft's purge up to S
//!    that follows keeps the bodies;
//! 4. replace `state.snapshot` with the snapshot alone (the bodies are in
//!    the log now).
//!
//! A crash after 2 leaves a `state.snapshot` with a tail; `LogStore::open`
//! finishes 3 and 4 before openraft reads anything. The state machine and
//! the log must therefore share one data directory, as the bus's do.
//!
//! Applying is a pure function of the state and the entry: the timestamp
//! comes from the command, stamped by the leader.

use crate::io::Env;
use std::fmt;
use std::io;
use std::sync::{Arc, RwLock, RwLockReadGuard};

use futures_util::{Stream, StreamExt};
use openraft::alias::{WatchReceiverOf, WatchSenderOf};
use openraft::async_runtime::WatchSender;
use openraft::storage::{
    EntryResponder, RaftSnapshotBuilder, RaftStateMachine, Snapshot, SnapshotMeta,
};
use openraft::type_config::TypeConfigExt;
use openraft::{EntryPayload, OptionalSend, StoredMembership};

use crate::io::{Disk, DiskFile};
use sluice_model::state::{Response, State};

use super::snapshot::{self, Core, SNAPSHOT_FILE, SNAPSHOT_FILE_TMP, SnapshotData};
use super::{CommittedLeaderId, LogId, LogStoreReader, Node, NodeId, TypeConfig};

type Membership = StoredMembership<CommittedLeaderId, NodeId, Node>;
type Meta = SnapshotMeta<CommittedLeaderId, NodeId, Node>;

/// The last applied entry, as readers see it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Applied {
    /// Index of the last applied entry; 0 before any.
    pub index: u64,
}

#[derive(Debug, Default, Clone)]
struct Inner {
    state: State,
    last_applied: Option<LogId>,
    membership: Membership,
}

/// Read access to the applied state, shared with the bus.
pub struct StateView<E: Env> {
    inner: Arc<RwLock<Inner>>,
    applied: WatchReceiverOf<TypeConfig<E>, Applied>,
}

impl<E: Env> Clone for StateView<E> {
    fn clone(&self) -> Self {
        StateView {
            inner: Arc::clone(&self.inner),
            applied: self.applied.clone(),
        }
    }
}

impl<E: Env> fmt::Debug for StateView<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StateView").finish_non_exhaustive()
    }
}

/// A read guard on the applied state.
#[derive(Debug)]
pub struct StateGuard<'a>(RwLockReadGuard<'a, Inner>);

impl std::ops::Deref for StateGuard<'_> {
    type Target = State;

    fn deref(&self) -> &State {
        &self.0.state
    }
}

impl<E: Env> StateView<E> {
    /// The applied state, read-locked.
    pub fn read(&self) -> StateGuard<'_> {
        StateGuard(self.inner.read().expect("state lock"))
    }

    /// A receiver that changes whenever an entry is applied.
    pub fn applied(&self) -> WatchReceiverOf<TypeConfig<E>, Applied> {
        self.applied.clone()
    }
}

/// The state machine store; see the module docs.
pub struct StateMachineStore<E: Env> {
    inner: Arc<RwLock<Inner>>,
    // The runtime's watch sender need not be Sync; the store must be.
    applied: std::sync::Mutex<WatchSenderOf<TypeConfig<E>, Applied>>,
    view: StateView<E>,
    disk: E::Disk,
    chain: Option<LogStoreReader<E::Disk>>,
}

impl<E: Env> fmt::Debug for StateMachineStore<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StateMachineStore").finish_non_exhaustive()
    }
}

impl<E: Env> StateMachineStore<E> {
    /// An empty state machine keeping its snapshot in `disk`. openraft
    /// installs the last snapshot, if any, when the node starts.
    pub fn new(disk: E::Disk) -> Self {
        let inner = Arc::new(RwLock::new(Inner::default()));
        let (applied, receiver) = TypeConfig::<E>::watch_channel(Applied::default());
        let view = StateView {
            inner: Arc::clone(&inner),
            applied: receiver,
        };
        StateMachineStore {
            inner,
            applied: std::sync::Mutex::new(applied),
            view,
            disk,
            chain: None,
        }
    }

    /// Read access for the bus.
    pub fn view(&self) -> StateView<E> {
        self.view.clone()
    }

    /// Links the store to its log, so snapshots carry the chain hash at
    /// their index and an installed snapshot anchors the log's chain.
    pub fn link_chain(&mut self, reader: LogStoreReader<E::Disk>) {
        self.chain = Some(reader);
    }

    fn encode_snapshot(inner: &Inner, chain_head: Option<crate::log::frame::Hash>) -> Vec<u8> {
        snapshot::encode(&Core {
            version: snapshot::VERSION_WITHOUT_TAIL,
            last_applied: inner.last_applied,
            membership: inner.membership.clone(),
            state: inner.state.snapshot(),
            chain_head,
        })
    }
}

/// Decodes a snapshot's bytes (any tail included) and the state it holds.
fn decode_snapshot(bytes: &[u8]) -> io::Result<(Core, State)> {
    let decoded = snapshot::decode(bytes)?;
    let state = snapshot::restore_state(&decoded.core)?;
    Ok((decoded.core, state))
}

/// The snapshot file's name in the data directory.
pub const SNAPSHOT_FILE_NAME: &str = SNAPSHOT_FILE;

/// Checks a snapshot file's bytes as opening would (magic, checksum, the
/// state decodes, a tail chains to the chain head) and returns the
/// (term, index) it covers, if any, and the chain hash it records there.
/// For the offline verifier.
#[allow(clippy::type_complexity)]
pub fn check_snapshot(
    bytes: &[u8],
) -> io::Result<(Option<(u64, u64)>, Option<crate::log::frame::Hash>)> {
    let decoded = snapshot::decode(bytes)?;
    if let (Some(tail), Some(last)) = (&decoded.tail, decoded.core.last_applied) {
        snapshot::check_tail(tail, last, decoded.core.chain_head)?;
    }
    snapshot::restore_state(&decoded.core)?;
    let covered = decoded
        .core
        .last_applied
        .map(|id| (id.leader_id.term, id.index));
    Ok((covered, decoded.core.chain_head))
}

/// Decodes a snapshot file's bytes into the state it holds and the
/// (term, index) it covers. For the offline audit export.
pub fn load_snapshot_state(bytes: &[u8]) -> io::Result<(Option<(u64, u64)>, State)> {
    let (core, state) = decode_snapshot(bytes)?;
    let covered = core.last_applied.map(|id| (id.leader_id.term, id.index));
    Ok((covered, state))
}

fn meta_of(core: &Core) -> Meta {
    Meta {
        last_log_id: core.last_applied,
        last_membership: core.membership.clone(),
    }
}

/// Replaces the snapshot file atomically.
pub(crate) fn store_snapshot<D: Disk>(disk: &D, bytes: &[u8]) -> io::Result<()> {
    crate::io::replace_file(disk, SNAPSHOT_FILE, SNAPSHOT_FILE_TMP, bytes)
}

/// The bytes of `state.snapshot`, if there is one.
pub(crate) fn load_snapshot<D: Disk>(disk: &D) -> io::Result<Option<Vec<u8>>> {
    let file = match disk.open(SNAPSHOT_FILE) {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error),
    };
    let mut bytes = vec![0; file.size()? as usize];
    file.read_at(0, &mut bytes)?;
    Ok(Some(bytes))
}

/// Installs a received snapshot's files (steps 1 to 4 of the module docs)
/// and returns what it holds. Blocking.
fn install_files<D: Disk + Clone>(
    disk: &D,
    reader: Option<&LogStoreReader<D>>,
    bytes: &[u8],
    meta_last: Option<LogId>,
) -> io::Result<(Core, State)> {
    let decoded = snapshot::check(bytes, meta_last)?;
    let state = snapshot::restore_state(&decoded.core)?;
    let (core, tail) = (decoded.core, decoded.tail);
    let Some(tail) = tail else {
        store_snapshot(disk, bytes)?;
        return Ok((core, state));
    };
    let last = core
        .last_applied
        .expect("checked: a tail ends at the last log id");
    match reader {
        Some(reader) => {
            store_snapshot(disk, bytes)?;
            reader
                .install_tail(last, core.chain_head, &tail)
                .map_err(super::to_io)?;
        }
        None => tracing::warn!(
            first = tail.first,
            last = last.index,
            "a snapshot came with the bodies of its retained events, but this state machine \
             is not linked to its log (StateMachineStore::link_chain): they are dropped"
        ),
    }
    store_snapshot(disk, &snapshot::encode(&core))?;
    Ok((core, state))
}

/// Builds a snapshot from a copy of the state taken when it was created.
pub struct SnapshotBuilder<E: Env> {
    /// The state as it was when the builder was made, and the chain hash
    /// at its last applied index: a clone that shares the partition
    /// indexes' sealed chunks (`state/runs.rs`), so that making it is
    /// cheap; encoding it happens on the blocking pool.
    taken: Option<(Inner, Option<crate::log::frame::Hash>)>,
    meta: Meta,
    disk: E::Disk,
    /// The log it was taken from, and the range of bodies it needs.
    tail: Option<(LogStoreReader<E::Disk>, u64, u64)>,
    _runtime: std::marker::PhantomData<fn() -> E>,
}

impl<E: Env> fmt::Debug for SnapshotBuilder<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SnapshotBuilder")
            .field("last_applied", &self.meta.last_log_id)
            .finish_non_exhaustive()
    }
}

impl<E: Env> RaftSnapshotBuilder<TypeConfig<E>> for SnapshotBuilder<E> {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(
        &mut self,
    ) -> io::Result<Snapshot<CommittedLeaderId, NodeId, Node, SnapshotData>> {
        let (inner, chain_head) = self.taken.take().ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "snapshot builder used twice")
        })?;
        let disk = self.disk.clone();
        let bytes = TypeConfig::<E>::spawn_blocking(move || {
            let bytes = StateMachineStore::<E>::encode_snapshot(&inner, chain_head);
            store_snapshot(&disk, &bytes).map(|()| bytes)
        })
        .await??;
        let snapshot = match self.tail.take() {
            Some((reader, from, last)) => {
                SnapshotData::with_tail(bytes, Arc::new(reader), from, last)
            }
            None => SnapshotData::from_bytes(bytes),
        };
        Ok(Snapshot {
            meta: self.meta.clone(),
            snapshot,
        })
    }
}

impl<E: Env> RaftStateMachine<TypeConfig<E>> for StateMachineStore<E> {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = SnapshotBuilder<E>;

    async fn applied_state(&mut self) -> io::Result<(Option<LogId>, Membership)> {
        let inner = self.inner.read().expect("state lock");
        Ok((inner.last_applied, inner.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> io::Result<()>
    where
        Strm: Stream<Item = io::Result<EntryResponder<TypeConfig<E>>>> + Unpin + OptionalSend,
    {
        while let Some(item) = entries.next().await {
            let (entry, responder) = item?;
            let response = {
                let mut inner = self.inner.write().expect("state lock");
                inner.last_applied = Some(entry.log_id);
                match entry.payload {
                    EntryPayload::Blank => Response::Ok,
                    EntryPayload::Normal(command) => {
                        inner.state.apply(entry.log_id.index, &command)
                    }
                    EntryPayload::Membership(membership) => {
                        inner.membership = StoredMembership::new(Some(entry.log_id), membership);
                        Response::Ok
                    }
                }
            };
            self.applied
                .lock()
                .expect("applied lock")
                .send_if_greater(Applied {
                    index: entry.log_id.index,
                });
            if let Some(responder) = responder {
                responder.send(response);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        let inner = self.inner.read().expect("state lock");
        let chain_head = match (&self.chain, inner.last_applied) {
            (Some(reader), Some(id)) => reader
                .chain_hash_at(id.index)
                .ok()
                .and_then(snapshot::chain_head_of),
            _ => None,
        };
        let tail = match (&self.chain, inner.last_applied) {
            (Some(reader), Some(id)) => {
                Some((reader.clone(), inner.state.purged_before(), id.index))
            }
            _ => None,
        };
        SnapshotBuilder {
            taken: Some((inner.clone(), chain_head)),
            meta: Meta {
                last_log_id: inner.last_applied,
                last_membership: inner.membership.clone(),
            },
            disk: self.disk.clone(),
            tail,
            _runtime: std::marker::PhantomData,
        }
    }

    /// Installs a snapshot received from the leader, or, on restart, the
    /// one in `state.snapshot`; see the module docs for the order of steps.
    async fn install_snapshot(&mut self, meta: &Meta, snapshot: SnapshotData) -> io::Result<()> {
        let bytes = snapshot.into_bytes();
        let disk = self.disk.clone();
        let reader = self.chain.clone();
        let meta_last = meta.last_log_id;
        let (core, state) = TypeConfig::<E>::spawn_blocking(move || {
            install_files(&disk, reader.as_ref(), &bytes, meta_last)
        })
        .await??;
        let mut inner = self.inner.write().expect("state lock");
        inner.state = state;
        inner.last_applied = core.last_applied;
        inner.membership = core.membership;
        let index = inner.last_applied.map_or(0, |id| id.index);
        drop(inner);
        if let (Some(reader), Some(hash), Some(id)) =
            (&self.chain, core.chain_head, core.last_applied)
        {
            reader.set_snapshot_anchor(id.index, hash);
        }
        self.applied
            .lock()
            .expect("applied lock")
            .send_if_greater(Applied { index });
        Ok(())
    }

    /// The snapshot in `state.snapshot`, with the plan to attach its tail
    /// from the log when it is sent (the bodies from the state's retention
    /// point up to the snapshot's index). Reads no log.
    async fn get_current_snapshot(
        &mut self,
    ) -> io::Result<Option<Snapshot<CommittedLeaderId, NodeId, Node, SnapshotData>>> {
        let disk = self.disk.clone();
        let Some(bytes) = TypeConfig::<E>::spawn_blocking(move || load_snapshot(&disk)).await??
        else {
            return Ok(None);
        };
        let (core, stored_tail) = {
            let decoded = snapshot::decode(&bytes)?;
            (decoded.core, decoded.tail.is_some())
        };
        let state = snapshot::restore_state(&core)?;
        // A tail left by an interrupted install is the log's now
        // (`LogStore::open` finished it): serve the snapshot alone.
        let stored = if stored_tail {
            snapshot::encode(&core)
        } else {
            bytes
        };
        let meta = meta_of(&core);
        let data = match (&self.chain, core.last_applied) {
            (Some(reader), Some(last)) => SnapshotData::with_tail(
                stored,
                Arc::new(reader.clone()),
                state.purged_before(),
                last.index,
            ),
            _ => SnapshotData::from_bytes(stored),
        };
        Ok(Some(Snapshot {
            meta,
            snapshot: data,
        }))
    }
}

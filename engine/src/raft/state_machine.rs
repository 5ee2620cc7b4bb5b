//! openraft's `RaftStateMachine` over [`State`]: applies committed entries,
//! answers their writers, tells waiting readers, and keeps snapshots.
//!
//! The state machine lives in memory; its snapshot is durable in
//! `state.snapshot` (write new, sync, rename, sync directory), and on
//! restart openraft installs it and re-applies the log after it. Snapshots
//! hold the state (topics, partition index, producers, groups), never event
//! bodies: those stay in the log.
//!
//! Applying is a pure function of the state and the entry: the timestamp
//! comes from the command, stamped by the leader.

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
use openraft_rt::AsyncRuntime;
use serde::{Deserialize, Serialize};

use crate::io::{Disk, DiskFile};
use crate::state::{Response, State};

use super::{CommittedLeaderId, LogId, Node, NodeId, TypeConfig};

const SNAPSHOT_FILE: &str = "state.snapshot";
const SNAPSHOT_FILE_TMP: &str = "state.snapshot.tmp";
const SNAPSHOT_MAGIC: &[u8; 4] = b"SLSN";

type Membership = StoredMembership<CommittedLeaderId, NodeId, Node>;
type Meta = SnapshotMeta<CommittedLeaderId, NodeId, Node>;

/// The last applied entry, as readers see it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Applied {
    /// Index of the last applied entry; 0 before any.
    pub index: u64,
}

#[derive(Debug, Default)]
struct Inner {
    state: State,
    last_applied: Option<LogId>,
    membership: Membership,
}

/// Read access to the applied state, shared with the bus.
pub struct StateView<RT: AsyncRuntime> {
    inner: Arc<RwLock<Inner>>,
    applied: WatchReceiverOf<TypeConfig<RT>, Applied>,
}

impl<RT: AsyncRuntime> Clone for StateView<RT> {
    fn clone(&self) -> Self {
        StateView {
            inner: Arc::clone(&self.inner),
            applied: self.applied.clone(),
        }
    }
}

impl<RT: AsyncRuntime> fmt::Debug for StateView<RT> {
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

impl<RT: AsyncRuntime> StateView<RT> {
    /// The applied state, read-locked.
    pub fn read(&self) -> StateGuard<'_> {
        StateGuard(self.inner.read().expect("state lock"))
    }

    /// A receiver that changes whenever an entry is applied.
    pub fn applied(&self) -> WatchReceiverOf<TypeConfig<RT>, Applied> {
        self.applied.clone()
    }
}

/// The state machine store; see the module docs.
pub struct StateMachineStore<RT: AsyncRuntime, D: Disk> {
    inner: Arc<RwLock<Inner>>,
    // The runtime's watch sender need not be Sync; the store must be.
    applied: std::sync::Mutex<WatchSenderOf<TypeConfig<RT>, Applied>>,
    view: StateView<RT>,
    disk: D,
    chain: Option<crate::raft::LogStoreReader<D>>,
}

impl<RT: AsyncRuntime, D: Disk> fmt::Debug for StateMachineStore<RT, D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StateMachineStore").finish_non_exhaustive()
    }
}

/// What `state.snapshot` holds, after its magic and checksum.
#[derive(Serialize, Deserialize)]
struct SnapshotFile {
    version: u8,
    last_applied: Option<LogId>,
    membership: Membership,
    state: Vec<u8>,
    /// The log's chain hash at `last_applied`, when the store is linked to
    /// its log (`StateMachineStore::link_chain`): a node installing this
    /// snapshot anchors its chain with it, so its next frames link exactly
    /// as the sender's do.
    chain_head: Option<crate::log::frame::Hash>,
}

/// Version 2 added `chain_head`.
const SNAPSHOT_FILE_VERSION: u8 = 2;

impl<RT: AsyncRuntime, D: Disk + Clone> StateMachineStore<RT, D> {
    /// An empty state machine keeping its snapshot in `disk`. openraft
    /// installs the last snapshot, if any, when the node starts.
    pub fn new(disk: D) -> Self {
        let inner = Arc::new(RwLock::new(Inner::default()));
        let (applied, receiver) = TypeConfig::<RT>::watch_channel(Applied::default());
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
    pub fn view(&self) -> StateView<RT> {
        self.view.clone()
    }

    /// Links the store to its log, so snapshots carry the chain hash at
    /// their index and an installed snapshot anchors the log's chain.
    pub fn link_chain(&mut self, reader: crate::raft::LogStoreReader<D>) {
        self.chain = Some(reader);
    }

    fn encode_snapshot(inner: &Inner, chain_head: Option<crate::log::frame::Hash>) -> Vec<u8> {
        let file = SnapshotFile {
            version: SNAPSHOT_FILE_VERSION,
            last_applied: inner.last_applied,
            membership: inner.membership.clone(),
            state: inner.state.snapshot(),
            chain_head,
        };
        let body = postcard::to_allocvec(&file).expect("snapshot encodes into memory");
        let mut out = Vec::with_capacity(body.len() + 8);
        out.extend_from_slice(SNAPSHOT_MAGIC);
        out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        out.extend_from_slice(&body);
        out
    }
}

fn decode_snapshot(bytes: &[u8]) -> io::Result<(SnapshotFile, State)> {
    let invalid = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
    if bytes.len() < 8 || &bytes[..4] != SNAPSHOT_MAGIC {
        return Err(invalid(format!("{SNAPSHOT_FILE}: bad magic or too short")));
    }
    let stored = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes"));
    let computed = crc32fast::hash(&bytes[8..]);
    if stored != computed {
        return Err(invalid(format!(
            "{SNAPSHOT_FILE}: checksum mismatch: stored {stored:08x}, computed {computed:08x}"
        )));
    }
    let file: SnapshotFile =
        postcard::from_bytes(&bytes[8..]).map_err(|e| invalid(format!("{SNAPSHOT_FILE}: {e}")))?;
    if file.version != SNAPSHOT_FILE_VERSION {
        return Err(invalid(format!(
            "{SNAPSHOT_FILE}: version {} (this code reads {SNAPSHOT_FILE_VERSION})",
            file.version
        )));
    }
    let state =
        State::restore(&file.state).map_err(|e| invalid(format!("{SNAPSHOT_FILE}: {e}")))?;
    Ok((file, state))
}

/// The snapshot file's name in the data directory.
pub(crate) const SNAPSHOT_FILE_NAME: &str = SNAPSHOT_FILE;

/// Checks a snapshot file's bytes as opening would (magic, checksum, the
/// state decodes) and returns the (term, index) it covers, if any, and the
/// chain hash it records there. For the offline verifier.
#[allow(clippy::type_complexity)]
pub(crate) fn check_snapshot(
    bytes: &[u8],
) -> io::Result<(Option<(u64, u64)>, Option<crate::log::frame::Hash>)> {
    let (file, _) = decode_snapshot(bytes)?;
    let covered = file.last_applied.map(|id| (id.leader_id.term, id.index));
    Ok((covered, file.chain_head))
}

/// Decodes a snapshot file's bytes into the state it holds and the
/// (term, index) it covers. For the offline audit export.
pub(crate) fn load_snapshot_state(bytes: &[u8]) -> io::Result<(Option<(u64, u64)>, State)> {
    let (file, state) = decode_snapshot(bytes)?;
    let covered = file.last_applied.map(|id| (id.leader_id.term, id.index));
    Ok((covered, state))
}

fn meta_of(file: &SnapshotFile) -> Meta {
    Meta {
        last_log_id: file.last_applied,
        last_membership: file.membership.clone(),
    }
}

/// Replaces the snapshot file atomically.
fn store_snapshot<D: Disk>(disk: &D, bytes: &[u8]) -> io::Result<()> {
    crate::io::replace_file(disk, SNAPSHOT_FILE, SNAPSHOT_FILE_TMP, bytes)
}

fn load_snapshot<D: Disk>(disk: &D) -> io::Result<Option<Vec<u8>>> {
    let file = match disk.open(SNAPSHOT_FILE) {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error),
    };
    let mut bytes = vec![0; file.size()? as usize];
    file.read_at(0, &mut bytes)?;
    Ok(Some(bytes))
}

/// Builds a snapshot from a copy of the state taken when it was created.
pub struct SnapshotBuilder<RT: AsyncRuntime, D: Disk> {
    bytes: Vec<u8>,
    meta: Meta,
    disk: D,
    _runtime: std::marker::PhantomData<fn() -> RT>,
}

impl<RT: AsyncRuntime, D: Disk> fmt::Debug for SnapshotBuilder<RT, D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SnapshotBuilder")
            .field("bytes", &self.bytes.len())
            .finish_non_exhaustive()
    }
}

impl<RT: AsyncRuntime, D: Disk + Clone> RaftSnapshotBuilder<TypeConfig<RT>>
    for SnapshotBuilder<RT, D>
{
    type SnapshotData = Vec<u8>;

    async fn build_snapshot(
        &mut self,
    ) -> io::Result<Snapshot<CommittedLeaderId, NodeId, Node, Vec<u8>>> {
        let bytes = std::mem::take(&mut self.bytes);
        let disk = self.disk.clone();
        let bytes =
            TypeConfig::<RT>::spawn_blocking(move || store_snapshot(&disk, &bytes).map(|()| bytes))
                .await??;
        Ok(Snapshot {
            meta: self.meta.clone(),
            snapshot: bytes,
        })
    }
}

impl<RT: AsyncRuntime, D: Disk + Clone> RaftStateMachine<TypeConfig<RT>>
    for StateMachineStore<RT, D>
{
    type SnapshotData = Vec<u8>;
    type SnapshotBuilder = SnapshotBuilder<RT, D>;

    async fn applied_state(&mut self) -> io::Result<(Option<LogId>, Membership)> {
        let inner = self.inner.read().expect("state lock");
        Ok((inner.last_applied, inner.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> io::Result<()>
    where
        Strm: Stream<Item = io::Result<EntryResponder<TypeConfig<RT>>>> + Unpin + OptionalSend,
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
            (Some(reader), Some(id)) => reader.chain_hash_at(id.index).ok(),
            _ => None,
        };
        SnapshotBuilder {
            bytes: Self::encode_snapshot(&inner, chain_head),
            meta: Meta {
                last_log_id: inner.last_applied,
                last_membership: inner.membership.clone(),
            },
            disk: self.disk.clone(),
            _runtime: std::marker::PhantomData,
        }
    }

    async fn install_snapshot(&mut self, meta: &Meta, snapshot: Vec<u8>) -> io::Result<()> {
        let (file, state) = decode_snapshot(&snapshot)?;
        if file.last_applied != meta.last_log_id {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "snapshot data does not match its metadata",
            ));
        }
        let disk = self.disk.clone();
        TypeConfig::<RT>::spawn_blocking(move || store_snapshot(&disk, &snapshot)).await??;
        let mut inner = self.inner.write().expect("state lock");
        inner.state = state;
        inner.last_applied = file.last_applied;
        inner.membership = file.membership;
        let index = inner.last_applied.map_or(0, |id| id.index);
        drop(inner);
        if let (Some(reader), Some(hash), Some(id)) =
            (&self.chain, file.chain_head, file.last_applied)
        {
            reader.set_snapshot_anchor(id.index, hash);
        }
        self.applied
            .lock()
            .expect("applied lock")
            .send_if_greater(Applied { index });
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> io::Result<Option<Snapshot<CommittedLeaderId, NodeId, Node, Vec<u8>>>> {
        let disk = self.disk.clone();
        let Some(bytes) = TypeConfig::<RT>::spawn_blocking(move || load_snapshot(&disk)).await??
        else {
            return Ok(None);
        };
        let (file, _) = decode_snapshot(&bytes)?;
        Ok(Some(Snapshot {
            meta: meta_of(&file),
            snapshot: bytes,
        }))
    }
}

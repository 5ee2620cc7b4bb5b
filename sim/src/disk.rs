//! [`SimDisk`]: one simulated node's data directory, the counterpart of
//! `OsDisk`; and [`SimDisks`], the registry of every node's disk that ties
//! a node's power to its disk.
//!
//! A `SimDisk` is the engine's `CrashDisk` (volatile and durable image per
//! file; a crash keeps, tears at a sector, or drops each unsynced write),
//! seeded from madsim's generator so the same simulation seed gives the
//! same crash outcomes.
//!
//! ### Killing a node
//! [`SimDisks::kill`] is how a scenario cuts a node's power: it kills the
//! madsim node (every task of it is dropped before it runs again) and then
//! crashes its disk, in that order and with nothing scheduled in between,
//! so no write of the dead process lands after the crash. Every file handle
//! the dead process held fails from then on (`CrashDisk` ties handles to a
//! crash generation). [`SimDisks::restart`] then starts the node's init
//! task again on the crashed disk.
//!
//! A madsim simulator plugin whose `reset_node` crashes the disk would do
//! this implicitly, but madsim 0.2 registers plugins only through
//! `Runtime::add_simulator`, which `#[madsim::test]` gives no hook for, so
//! the scenarios use this explicit helper; a plugin would need a scenario
//! runner of our own that builds the `Runtime`. Killing a node through
//! `madsim::runtime::Handle::kill` directly does *not* crash its disk.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use madsim::rand::RngCore as _;
use madsim::runtime::Handle;
use madsim::task::NodeId as MadsimNodeId;
use sluice_core::io::{CrashDisk, CrashFile, CrashOutcome, Disk};
use sluice_model::transport::NodeId;

/// One node's data directory: a seeded `CrashDisk`. Clones share the disk.
#[derive(Clone)]
pub struct SimDisk {
    node: NodeId,
    crash: CrashDisk,
}

impl SimDisk {
    /// The `CrashDisk` underneath, for fault injection (`fail_next`,
    /// `set_capacity`, `flip_bit`, ...).
    pub fn crash_disk(&self) -> &CrashDisk {
        &self.crash
    }

    /// The node whose disk this is.
    pub fn node(&self) -> NodeId {
        self.node
    }
}

impl fmt::Debug for SimDisk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimDisk")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl Disk for SimDisk {
    type File = CrashFile;

    fn create(&self, name: &str) -> io::Result<CrashFile> {
        self.crash.create(name)
    }

    fn open(&self, name: &str) -> io::Result<CrashFile> {
        self.crash.open(name)
    }

    fn list(&self) -> io::Result<Vec<String>> {
        self.crash.list()
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        self.crash.remove(name)
    }

    fn rename(&self, source: &str, target: &str) -> io::Result<()> {
        self.crash.rename(source, target)
    }

    fn sync_dir(&self) -> io::Result<()> {
        self.crash.sync_dir()
    }
}

/// Every node's disk, by Sluice node id, with the madsim node that owns it.
/// Clones share the registry.
#[derive(Clone, Default)]
pub struct SimDisks {
    inner: Arc<Mutex<BTreeMap<NodeId, Entry>>>,
}

struct Entry {
    disk: SimDisk,
    owner: Option<MadsimNodeId>,
}

impl fmt::Debug for SimDisks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nodes: Vec<NodeId> = self.lock().keys().copied().collect();
        f.debug_struct("SimDisks").field("nodes", &nodes).finish()
    }
}

impl SimDisks {
    /// An empty registry.
    pub fn new() -> Self {
        SimDisks::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<NodeId, Entry>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Node `node`'s disk, created (empty, seeded from madsim's generator)
    /// on first use. Must be called inside a madsim runtime.
    pub fn disk(&self, node: NodeId) -> SimDisk {
        let mut disks = self.lock();
        let entry = disks.entry(node).or_insert_with(|| Entry {
            disk: SimDisk {
                node,
                crash: CrashDisk::new(madsim::rand::thread_rng().next_u64()),
            },
            owner: None,
        });
        entry.disk.clone()
    }

    /// Records that madsim node `owner` runs Sluice node `node`, so that
    /// [`SimDisks::kill`] knows what to kill.
    pub fn set_owner(&self, node: NodeId, owner: MadsimNodeId) {
        let _ = self.disk(node);
        let mut disks = self.lock();
        let entry = disks.get_mut(&node).expect("inserted above");
        entry.owner = Some(owner);
    }

    /// Cuts node `node`'s power: kills its madsim node, then crashes its
    /// disk. Returns what the crash kept and lost. See the module docs.
    pub fn kill(&self, node: NodeId) -> CrashOutcome {
        let (disk, owner) = {
            let disks = self.lock();
            let entry = disks.get(&node).expect("node has a disk");
            (entry.disk.clone(), entry.owner)
        };
        let owner = owner.expect("node has a madsim node (set_owner)");
        Handle::current().kill(owner);
        disk.crash.crash()
    }

    /// Starts node `node` again after [`SimDisks::kill`]: madsim runs the
    /// node's init task again, which reopens the crashed disk.
    pub fn restart(&self, node: NodeId) {
        let owner = self.lock().get(&node).and_then(|entry| entry.owner);
        let owner = owner.expect("node has a madsim node (set_owner)");
        Handle::current().restart(owner);
    }
}

/// Reads a whole file of `disk` as the node would see it now.
pub fn read_file(disk: &SimDisk, name: &str) -> io::Result<Bytes> {
    disk.crash.read_file(name).map(Bytes::from)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use sluice_core::io::DiskFile;

    use super::*;

    /// A node killed mid-write loses its unsynced bytes' guarantee but
    /// keeps what it synced, and its old handles die.
    #[madsim::test]
    async fn kill_crashes_the_disk_and_drops_the_tasks() {
        let disks = SimDisks::new();
        let handle = Handle::current();
        let node = handle.create_node().name("node-1").build();
        disks.set_owner(1, node.id());
        let disk = disks.disk(1);
        let (file_tx, file_rx) = tokio::sync::oneshot::channel();
        let writer = disk.clone();
        node.spawn(async move {
            let file = writer.create("data").expect("create");
            file.write_at(0, b"synced").expect("write");
            file.sync_data().expect("sync");
            writer.sync_dir().expect("sync dir");
            file.write_at(6, &[7; 4096]).expect("write");
            file_tx.send(file).expect("send");
            std::future::pending::<()>().await;
        });
        let file = file_rx.await.expect("file");
        disks.kill(1);
        assert!(file.write_at(0, b"late").is_err(), "a dead handle fails");
        let data = read_file(&disk, "data").expect("synced file survives");
        assert_eq!(&data[..6], b"synced");
        madsim::time::sleep(Duration::from_millis(10)).await;
        assert!(handle.is_exit(node.id()));
    }
}

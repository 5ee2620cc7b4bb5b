//! [`CrashDisk`]: an in-memory [`Disk`] that loses data the way a machine
//! that loses power does, chosen from a seed.
//!
//! It exists so that the log and the simulator can be tested against every
//! outcome the [`Disk`] crash contract allows, not just the friendly one a
//! real file system shows when nothing goes wrong. Each simulated part is
//! named after the real part it stands for: an *inode* holds a file's
//! content, the *directory* maps names to inodes, the *page cache* is the
//! volatile image and the *medium* is the durable image.
//!
//! ### Invariants
//! - Every inode keeps a volatile image, a durable image and the writes and
//!   length changes made since its last successful `sync_data`, in order.
//!   Replaying all of them on the durable image gives the volatile image.
//! - The directory keeps a volatile and a durable name → inode map and the
//!   creates, renames and removes made since the last successful
//!   `sync_dir`, in order. Replaying all of them on the durable map gives
//!   the volatile map.
//! - A handle names an inode, not a name: removing or renaming over a file
//!   leaves earlier handles working on the old content (POSIX unlink). An
//!   inode lives while a name in either directory, a pending directory
//!   operation or a handle refers to it; a `map` is a copy and does not.
//! - All randomness comes from one `fastrand::Rng` seeded at
//!   [`CrashDisk::new`], so a seed and the same sequence of calls give the
//!   same faults and the same crash.
//!
//! ### Fault model
//! - [`CrashDisk::crash`] is a power loss. Each file's pending writes are,
//!   each independently and replayed in order, kept whole, torn (a non-empty
//!   proper subset of the [`SECTOR_SIZE`]-aligned sectors it covers
//!   survives) or dropped; each pending `set_len` is kept or dropped. Bytes
//!   that nothing wrote read as zeros. The directory keeps a random prefix of
//!   its pending operations. Afterwards volatile equals durable everywhere
//!   and every handle opened before fails every call, because the process
//!   that held it is gone. [`CrashDisk::crash_with`] picks the best or worst
//!   case instead of a random one.
//! - Injected errors ([`CrashDisk::fail_next`], [`CrashDisk::set_fail_rate`])
//!   fail a read, write, `set_len`, `sync_data` or `sync_dir` with `EIO`
//!   and change nothing. [`CrashDisk::set_capacity`] fails a write or
//!   `set_len` that would grow the files past the capacity with `ENOSPC`,
//!   also changing nothing.
//! - A failed write, `set_len`, `sync_data` or injected read poisons its
//!   handle. A failed `sync_data` leaves the writes pending, so a crash may
//!   still lose them: this is how `fsync` fails on Linux, and why the engine
//!   never retries one. A failed `sync_dir` leaves the directory operations
//!   pending and poisons nothing, as with the OS.
//! - [`CrashDisk::flip_bit`] is bit rot on the medium.
//! - Never faulted: `create`, `open`, `list`, `remove`, `rename`, `size` and
//!   `map` (they fail only for bad names, missing or taken names and stale
//!   or poisoned handles).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;

use crate::io::{Disk, DiskFile, check_name, poisoned};
use sluice_model::constants::SECTOR_SIZE;

/// Largest file size a write or `set_len` may produce. Files live in memory,
/// so a request near this is a bug in the caller, not a test of the disk.
/// It is local rather than in `constants` because it bounds the test double,
/// not the engine.
const FILE_SIZE_MAX: u64 = 1 << 40;

/// Most writes and length changes one file may hold between syncs.
const FILE_OPS_PENDING_MAX: usize = 1 << 20;

/// Most directory operations the directory may hold between syncs.
const DIR_OPS_PENDING_MAX: usize = 1 << 20;

/// Most faults queued by [`CrashDisk::fail_next`] and not yet fired.
const FAULTS_QUEUED_MAX: usize = 1024;

/// The denominator of [`CrashDisk::set_fail_rate`].
const PER_MILLION: u32 = 1_000_000;

const EIO: i32 = 5;
const ENOSPC: i32 = 28;

const _: () = assert!(FILE_SIZE_MAX % SECTOR_SIZE == 0);
const _: () = assert!(FILE_SIZE_MAX <= usize::MAX as u64);
const _: () = assert!(FaultOp::SyncDir as usize + 1 == FaultOp::COUNT);

type InodeId = u64;

/// An operation that [`CrashDisk::fail_next`] and
/// [`CrashDisk::set_fail_rate`] can make fail with `EIO`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FaultOp {
    /// [`DiskFile::read_at`].
    Read,
    /// [`DiskFile::write_at`].
    Write,
    /// [`DiskFile::set_len`].
    SetLen,
    /// [`DiskFile::sync_data`].
    Sync,
    /// [`Disk::sync_dir`].
    SyncDir,
}

impl FaultOp {
    const COUNT: usize = 5;

    fn index(self) -> usize {
        self as usize
    }
}

/// What a crash keeps of the unsynced state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashPolicy {
    /// Every unsynced write, length change and directory operation gets a
    /// fate drawn from the seed.
    Random,
    /// Everything survives, as if the page cache had been flushed just in
    /// time.
    KeepAll,
    /// Nothing unsynced survives.
    DropAll,
}

/// What one crash did, for test diagnostics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CrashOutcome {
    /// Unsynced writes that survived whole.
    pub writes_kept: u64,
    /// Unsynced writes of which some sectors survived and some did not.
    pub writes_torn: u64,
    /// Unsynced writes that left no trace.
    pub writes_dropped: u64,
    /// Unsynced `set_len` calls that survived.
    pub set_lens_kept: u64,
    /// Unsynced `set_len` calls that left no trace.
    pub set_lens_dropped: u64,
    /// Unsynced creates, renames and removes that survived.
    pub dir_ops_kept: u64,
    /// Unsynced creates, renames and removes that left no trace.
    pub dir_ops_dropped: u64,
}

/// A seeded, crash-faithful, in-memory [`Disk`]. Clones share one disk.
#[derive(Clone, Debug)]
pub struct CrashDisk {
    state: Arc<Mutex<State>>,
    gate: Arc<SyncGate>,
}

/// Holds `sync_data` calls until released or until a crash, so a test can
/// crash while a sync is in flight (the window where an implementation
/// that acknowledges before syncing loses data). Kept outside `State` so a
/// held sync does not block the rest of the disk.
#[derive(Debug, Default)]
struct SyncGate {
    /// (held, crashes so far).
    held: Mutex<(bool, u64)>,
    changed: std::sync::Condvar,
}

impl SyncGate {
    fn pass(&self) {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let crashes = held.1;
        while held.0 && held.1 == crashes {
            held = self.changed.wait(held).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn set(&self, hold: bool, crashed: bool) {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        held.0 = hold;
        held.1 += u64::from(crashed);
        self.changed.notify_all();
    }
}

/// An open file of a [`CrashDisk`].
pub struct CrashFile {
    state: Arc<Mutex<State>>,
    gate: Arc<SyncGate>,
    name: String,
    inode: InodeId,
    /// The crash count when the handle was opened; a later crash kills it.
    generation: u64,
    poisoned: AtomicBool,
}

struct State {
    rng: fastrand::Rng,
    /// How many crashes this disk has been through.
    generation: u64,
    inode_next: InodeId,
    inodes: BTreeMap<InodeId, Inode>,
    dir_volatile: BTreeMap<String, InodeId>,
    dir_durable: BTreeMap<String, InodeId>,
    dir_pending: Vec<DirOp>,
    faults_queued: Vec<(FaultOp, String)>,
    fail_rates: [u32; FaultOp::COUNT],
    capacity: Option<u64>,
}

#[derive(Default)]
struct Inode {
    volatile: Vec<u8>,
    durable: Vec<u8>,
    pending: Vec<FileOp>,
    /// Live handles of the current generation.
    handles: u32,
}

enum FileOp {
    Write { offset: u64, data: Vec<u8> },
    SetLen { size: u64 },
}

enum DirOp {
    Create {
        name: String,
        inode: InodeId,
    },
    Rename {
        source: String,
        target: String,
        inode: InodeId,
    },
    Remove {
        name: String,
        inode: InodeId,
    },
}

/// The fate a crash gives one unsynced write.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fate {
    Keep,
    Tear,
    Drop,
}

impl CrashDisk {
    /// An empty disk whose faults and crashes are drawn from `seed`.
    pub fn new(seed: u64) -> Self {
        let state = State {
            rng: fastrand::Rng::with_seed(seed),
            generation: 0,
            inode_next: 0,
            inodes: BTreeMap::new(),
            dir_volatile: BTreeMap::new(),
            dir_durable: BTreeMap::new(),
            dir_pending: Vec::new(),
            faults_queued: Vec::new(),
            fail_rates: [0; FaultOp::COUNT],
            capacity: None,
        };
        CrashDisk {
            state: Arc::new(Mutex::new(state)),
            gate: Arc::new(SyncGate::default()),
        }
    }

    /// Loses power with [`CrashPolicy::Random`].
    pub fn crash(&self) -> CrashOutcome {
        self.crash_with(CrashPolicy::Random)
    }

    /// Loses power: unsynced state survives as `policy` says, then every
    /// handle opened before becomes unusable. Injected faults and the
    /// capacity stay configured.
    pub fn crash_with(&self, policy: CrashPolicy) -> CrashOutcome {
        let mut state = lock(&self.state);
        let mut outcome = CrashOutcome::default();
        state.crash_files(policy, &mut outcome);
        state.crash_dir(policy, &mut outcome);
        state.generation += 1;
        for inode in state.inodes.values_mut() {
            inode.handles = 0;
        }
        state.collect_garbage();
        drop(state);
        // Held syncs wake up and fail: their handles died with the crash.
        self.gate.set(false, true);
        outcome
    }

    /// While held, every `sync_data` blocks until [`CrashDisk::release_syncs`]
    /// or a crash (after which it fails, like any call on a dead handle).
    pub fn hold_syncs(&self) {
        self.gate.set(true, false);
    }

    /// Lets held syncs proceed.
    pub fn release_syncs(&self) {
        self.gate.set(false, false);
    }

    /// Makes the next `op` on a file whose name starts with `name_prefix`
    /// fail with `EIO`. For [`FaultOp::SyncDir`] the names are those of the
    /// pending directory operations; an empty prefix matches any call.
    /// Faults fire in the order they were queued.
    pub fn fail_next(&self, op: FaultOp, name_prefix: &str) {
        let mut state = lock(&self.state);
        assert!(
            state.faults_queued.len() < FAULTS_QUEUED_MAX,
            "more than {FAULTS_QUEUED_MAX} faults queued and not fired: the test leaks faults"
        );
        state.faults_queued.push((op, name_prefix.to_owned()));
    }

    /// Makes each `op` fail with `EIO` with probability
    /// `per_million / 1_000_000`, drawn from the seed. Zero turns it off.
    pub fn set_fail_rate(&self, op: FaultOp, per_million: u32) {
        assert!(
            per_million <= PER_MILLION,
            "fail rate {per_million} per million is above one million"
        );
        lock(&self.state).fail_rates[op.index()] = per_million;
    }

    /// Limits the total volatile size of all files, counting removed files
    /// still held open; a write or `set_len` that would grow past it fails
    /// with `ENOSPC`. `None` removes the limit.
    pub fn set_capacity(&self, bytes: Option<u64>) {
        lock(&self.state).capacity = bytes;
    }

    /// Flips bit `bit` (bit 0 is the low bit of byte 0) of file `name` in
    /// the volatile image and, if the durable image is that long, in the
    /// durable image too: bit rot on the medium, visible to reads now and
    /// after a crash.
    pub fn flip_bit(&self, name: &str, bit: u64) -> io::Result<()> {
        check_name(name)?;
        let mut state = lock(&self.state);
        let id = state.lookup(name)?;
        let inode = state.inode_mut(id);
        let index = bit / 8;
        let size = inode.volatile.len() as u64;
        if index >= size {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("cannot flip bit {bit} of {name}: the file is {size} bytes long"),
            ));
        }
        let mask = 1u8 << (bit % 8);
        inode.volatile[to_usize(index)] ^= mask;
        if let Some(byte) = inode.durable.get_mut(to_usize(index)) {
            *byte ^= mask;
        }
        Ok(())
    }

    /// The volatile content of file `name`: what a read sees now.
    pub fn read_file(&self, name: &str) -> io::Result<Vec<u8>> {
        check_name(name)?;
        let state = lock(&self.state);
        let id = state.lookup(name)?;
        Ok(state.inode(id).volatile.clone())
    }

    /// The durable content of the file the durable directory calls `name`:
    /// what a crash that keeps nothing unsynced would leave. `None` if the
    /// durable directory has no such name.
    pub fn durable_file(&self, name: &str) -> Option<Vec<u8>> {
        let state = lock(&self.state);
        let id = *state.dir_durable.get(name)?;
        Some(state.inode(id).durable.clone())
    }

    /// Creates or replaces file `name` with `bytes`, durably, in one step:
    /// the test reaching under the file system to plant content. Pending
    /// directory operations become durable first, as with `sync_dir`, so
    /// that the directory's history stays consistent. Handles to a replaced
    /// file keep its old content. Bypasses faults and the capacity.
    pub fn write_file_raw(&self, name: &str, bytes: &[u8]) -> io::Result<()> {
        check_name(name)?;
        assert!(bytes.len() as u64 <= FILE_SIZE_MAX);
        let mut state = lock(&self.state);
        state.sync_dir();
        let id = state.inode_new();
        let inode = state.inode_mut(id);
        inode.volatile = bytes.to_vec();
        inode.durable = bytes.to_vec();
        state.dir_volatile.insert(name.to_owned(), id);
        state.dir_durable.insert(name.to_owned(), id);
        state.collect_garbage();
        Ok(())
    }

    /// A handle to inode `id`, counted as live until dropped.
    fn handle(&self, state: &mut State, name: &str, id: InodeId) -> CrashFile {
        state.inode_mut(id).handles += 1;
        CrashFile {
            state: Arc::clone(&self.state),
            gate: Arc::clone(&self.gate),
            name: name.to_owned(),
            inode: id,
            generation: state.generation,
            poisoned: AtomicBool::new(false),
        }
    }
}

impl Disk for CrashDisk {
    type File = CrashFile;

    fn create(&self, name: &str) -> io::Result<CrashFile> {
        check_name(name)?;
        let mut state = lock(&self.state);
        if state.dir_volatile.contains_key(name) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("cannot create {name}: a file of that name exists"),
            ));
        }
        let id = state.inode_new();
        state.dir_volatile.insert(name.to_owned(), id);
        state.dir_push(DirOp::Create {
            name: name.to_owned(),
            inode: id,
        });
        Ok(self.handle(&mut state, name, id))
    }

    fn open(&self, name: &str) -> io::Result<CrashFile> {
        check_name(name)?;
        let mut state = lock(&self.state);
        let id = state.lookup(name)?;
        Ok(self.handle(&mut state, name, id))
    }

    fn list(&self) -> io::Result<Vec<String>> {
        Ok(lock(&self.state).dir_volatile.keys().cloned().collect())
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        check_name(name)?;
        let mut state = lock(&self.state);
        let id = state.lookup(name)?;
        state.dir_volatile.remove(name);
        state.dir_push(DirOp::Remove {
            name: name.to_owned(),
            inode: id,
        });
        Ok(())
    }

    fn rename(&self, source: &str, target: &str) -> io::Result<()> {
        check_name(source)?;
        check_name(target)?;
        let mut state = lock(&self.state);
        let id = state.lookup(source)?;
        if source == target {
            // rename(2) of a name onto itself succeeds and changes nothing.
            return Ok(());
        }
        state.dir_volatile.remove(source);
        state.dir_volatile.insert(target.to_owned(), id);
        state.dir_push(DirOp::Rename {
            source: source.to_owned(),
            target: target.to_owned(),
            inode: id,
        });
        Ok(())
    }

    fn sync_dir(&self) -> io::Result<()> {
        let mut state = lock(&self.state);
        let names: Vec<&str> = state.dir_pending.iter().flat_map(DirOp::names).collect();
        let fault = fault_find(&state.faults_queued, FaultOp::SyncDir, &names);
        drop(names);
        if let Some(error) = state.inject(FaultOp::SyncDir, fault) {
            return Err(error);
        }
        state.sync_dir();
        state.collect_garbage();
        Ok(())
    }
}

impl CrashFile {
    /// Locks the disk, checking that this handle may still be used.
    fn begin(&self) -> io::Result<MutexGuard<'_, State>> {
        let state = lock(&self.state);
        if state.generation != self.generation {
            return Err(io::Error::other(format!(
                "handle to {} was opened before a crash of the disk; reopen the file",
                self.name
            )));
        }
        if self.poisoned.load(Ordering::Acquire) {
            return Err(poisoned(&self.name));
        }
        Ok(state)
    }

    /// Locks the disk and fires any fault queued or drawn for `op`,
    /// poisoning the handle if one fires.
    fn begin_op(&self, op: FaultOp) -> io::Result<MutexGuard<'_, State>> {
        let mut state = self.begin()?;
        let fault = fault_find(&state.faults_queued, op, &[self.name.as_str()]);
        match state.inject(op, fault) {
            Some(error) => {
                self.poison();
                Err(error)
            }
            None => Ok(state),
        }
    }

    /// Runs a change of the file's content; any failure poisons the handle.
    fn mutate(
        &self,
        op: FaultOp,
        change: impl FnOnce(&mut State) -> io::Result<()>,
    ) -> io::Result<()> {
        let mut state = self.begin_op(op)?;
        change(&mut state).inspect_err(|_| self.poison())
    }

    fn poison(&self) {
        self.poisoned.store(true, Ordering::Release);
    }
}

impl DiskFile for CrashFile {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let state = self.begin_op(FaultOp::Read)?;
        let content = &state.inode(self.inode).volatile;
        let size = content.len() as u64;
        match offset.checked_add(buf.len() as u64) {
            Some(end) if end <= size => {
                buf.copy_from_slice(&content[to_usize(offset)..to_usize(end)]);
                Ok(())
            }
            _ => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "read of {} bytes at offset {offset} runs past the end of {} ({size} bytes)",
                    buf.len(),
                    self.name
                ),
            )),
        }
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
        let end = offset.checked_add(buf.len() as u64);
        assert!(
            end.is_some_and(|end| end <= FILE_SIZE_MAX),
            "write of {} bytes at offset {offset} to {} ends past {FILE_SIZE_MAX}",
            buf.len(),
            self.name
        );
        self.mutate(FaultOp::Write, |state| state.write(self.inode, offset, buf))
    }

    fn size(&self) -> io::Result<u64> {
        let state = self.begin()?;
        Ok(state.inode(self.inode).volatile.len() as u64)
    }

    fn set_len(&self, size: u64) -> io::Result<()> {
        assert!(
            size <= FILE_SIZE_MAX,
            "set_len({size}) on {} is past {FILE_SIZE_MAX}",
            self.name
        );
        self.mutate(FaultOp::SetLen, |state| state.set_len(self.inode, size))
    }

    fn sync_data(&self) -> io::Result<()> {
        self.gate.pass();
        self.mutate(FaultOp::Sync, |state| {
            state.sync_file(self.inode);
            Ok(())
        })
    }

    fn map(&self) -> io::Result<Bytes> {
        let state = self.begin()?;
        Ok(Bytes::copy_from_slice(&state.inode(self.inode).volatile))
    }
}

impl Drop for CrashFile {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // Counting handles does not matter to a test that is failing,
            // and a second panic here would abort the whole test binary.
            return;
        }
        let Ok(mut state) = self.state.lock() else {
            // Another thread panicked holding the disk; the test has failed.
            return;
        };
        if state.generation != self.generation {
            // The crash already forgot every handle of this generation.
            return;
        }
        let inode = state.inode_mut(self.inode);
        assert!(inode.handles > 0);
        inode.handles -= 1;
        if inode.handles == 0 {
            state.collect_garbage();
        }
    }
}

impl fmt::Debug for CrashFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CrashFile")
            .field("name", &self.name)
            .field("inode", &self.inode)
            .field("generation", &self.generation)
            .field("poisoned", &self.poisoned.load(Ordering::Relaxed))
            .finish()
    }
}

impl fmt::Debug for State {
    /// A summary: file contents would drown any assertion message.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("State")
            .field("generation", &self.generation)
            .field("files", &self.dir_volatile.keys().collect::<Vec<_>>())
            .field("inodes", &self.inodes.len())
            .field("dir_pending", &self.dir_pending.len())
            .field("faults_queued", &self.faults_queued)
            .field("fail_rates", &self.fail_rates)
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

impl State {
    fn inode(&self, id: InodeId) -> &Inode {
        self.inodes
            .get(&id)
            .expect("a live handle or name refers to a collected inode")
    }

    fn inode_mut(&mut self, id: InodeId) -> &mut Inode {
        self.inodes
            .get_mut(&id)
            .expect("a live handle or name refers to a collected inode")
    }

    fn inode_new(&mut self) -> InodeId {
        let id = self.inode_next;
        self.inode_next += 1;
        let previous = self.inodes.insert(id, Inode::default());
        assert!(previous.is_none());
        id
    }

    fn lookup(&self, name: &str) -> io::Result<InodeId> {
        self.dir_volatile
            .get(name)
            .copied()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no file named {name}")))
    }

    fn dir_push(&mut self, op: DirOp) {
        assert!(
            self.dir_pending.len() < DIR_OPS_PENDING_MAX,
            "more than {DIR_OPS_PENDING_MAX} directory operations without a sync_dir"
        );
        self.dir_pending.push(op);
    }

    /// Returns the error to fail an `op` with, if a queued fault (at index
    /// `queued`) or the fail rate says it fails.
    fn inject(&mut self, op: FaultOp, queued: Option<usize>) -> Option<io::Error> {
        if let Some(index) = queued {
            self.faults_queued.remove(index);
            return Some(io::Error::from_raw_os_error(EIO));
        }
        let rate = self.fail_rates[op.index()];
        // Drawing only when a rate is set keeps the sequence of draws, and
        // so every crash, the same whether or not faults are configured.
        if rate > 0 && self.rng.u32(0..PER_MILLION) < rate {
            return Some(io::Error::from_raw_os_error(EIO));
        }
        None
    }

    /// Fails with `ENOSPC` if growing inode `id` to `size` would put the
    /// files past the capacity. Shrinking always succeeds.
    fn reserve(&self, id: InodeId, size: u64) -> io::Result<()> {
        let Some(capacity) = self.capacity else {
            return Ok(());
        };
        let size_now = self.inode(id).volatile.len() as u64;
        if size <= size_now {
            return Ok(());
        }
        let total: u64 = self
            .inodes
            .values()
            .map(|inode| inode.volatile.len() as u64)
            .sum();
        if total - size_now + size > capacity {
            return Err(io::Error::from_raw_os_error(ENOSPC));
        }
        Ok(())
    }

    fn write(&mut self, id: InodeId, offset: u64, data: &[u8]) -> io::Result<()> {
        if data.is_empty() {
            // pwrite(2) of nothing changes nothing, not even the length.
            return Ok(());
        }
        let end = offset + data.len() as u64;
        self.reserve(id, end)?;
        let inode = self.inode_mut(id);
        apply_write(&mut inode.volatile, offset, data);
        inode.pending_push(FileOp::Write {
            offset,
            data: data.to_vec(),
        });
        Ok(())
    }

    fn set_len(&mut self, id: InodeId, size: u64) -> io::Result<()> {
        self.reserve(id, size)?;
        let inode = self.inode_mut(id);
        inode.volatile.resize(to_usize(size), 0);
        inode.pending_push(FileOp::SetLen { size });
        Ok(())
    }

    /// Writes the pending changes of inode `id` to the medium. Replaying
    /// them, rather than copying the volatile image, keeps a sync as cheap
    /// as the bytes written since the last one.
    fn sync_file(&mut self, id: InodeId) {
        let inode = self.inode_mut(id);
        for op in std::mem::take(&mut inode.pending) {
            op.apply(&mut inode.durable);
        }
        assert_eq!(inode.durable.len(), inode.volatile.len());
    }

    fn sync_dir(&mut self) {
        self.dir_durable.clone_from(&self.dir_volatile);
        self.dir_pending.clear();
    }

    /// Replays each file's pending changes on its durable image as `policy`
    /// says, then makes the volatile image that.
    fn crash_files(&mut self, policy: CrashPolicy, outcome: &mut CrashOutcome) {
        let State { rng, inodes, .. } = self;
        for inode in inodes.values_mut() {
            for op in std::mem::take(&mut inode.pending) {
                crash_file_op(op, &mut inode.durable, policy, rng, outcome);
            }
            if policy == CrashPolicy::KeepAll {
                assert!(
                    inode.durable == inode.volatile,
                    "replaying every write must rebuild the volatile image"
                );
            }
            inode.volatile.clone_from(&inode.durable);
        }
    }

    /// Replays a prefix of the pending directory operations on the durable
    /// directory, then makes the volatile directory that.
    fn crash_dir(&mut self, policy: CrashPolicy, outcome: &mut CrashOutcome) {
        let count = self.dir_pending.len();
        let kept = match policy {
            CrashPolicy::Random => self.rng.usize(0..=count),
            CrashPolicy::KeepAll => count,
            CrashPolicy::DropAll => 0,
        };
        for op in self.dir_pending.drain(..).take(kept) {
            op.apply(&mut self.dir_durable);
        }
        if policy == CrashPolicy::KeepAll {
            assert!(
                self.dir_durable == self.dir_volatile,
                "replaying every directory operation must rebuild the volatile directory"
            );
        }
        self.dir_volatile.clone_from(&self.dir_durable);
        outcome.dir_ops_kept += kept as u64;
        outcome.dir_ops_dropped += (count - kept) as u64;
    }

    /// Drops every inode that no name, pending directory operation or
    /// handle refers to any more.
    fn collect_garbage(&mut self) {
        let mut live: BTreeSet<InodeId> = BTreeSet::new();
        live.extend(self.dir_volatile.values());
        live.extend(self.dir_durable.values());
        live.extend(self.dir_pending.iter().map(DirOp::inode));
        self.inodes
            .retain(|id, inode| inode.handles > 0 || live.contains(id));
    }
}

impl Inode {
    fn pending_push(&mut self, op: FileOp) {
        assert!(
            self.pending.len() < FILE_OPS_PENDING_MAX,
            "more than {FILE_OPS_PENDING_MAX} writes to one file without a sync_data"
        );
        self.pending.push(op);
    }
}

impl FileOp {
    fn apply(&self, content: &mut Vec<u8>) {
        match self {
            FileOp::Write { offset, data } => apply_write(content, *offset, data),
            FileOp::SetLen { size } => content.resize(to_usize(*size), 0),
        }
    }
}

impl DirOp {
    fn inode(&self) -> InodeId {
        match self {
            DirOp::Create { inode, .. }
            | DirOp::Rename { inode, .. }
            | DirOp::Remove { inode, .. } => *inode,
        }
    }

    fn names(&self) -> Vec<&str> {
        match self {
            DirOp::Create { name, .. } | DirOp::Remove { name, .. } => vec![name.as_str()],
            DirOp::Rename { source, target, .. } => vec![source.as_str(), target.as_str()],
        }
    }

    fn apply(&self, dir: &mut BTreeMap<String, InodeId>) {
        match self {
            DirOp::Create { name, inode } => {
                dir.insert(name.clone(), *inode);
            }
            DirOp::Rename {
                source,
                target,
                inode,
            } => {
                let removed = dir.remove(source);
                assert_eq!(removed, Some(*inode), "rename replayed out of order");
                dir.insert(target.clone(), *inode);
            }
            DirOp::Remove { name, inode } => {
                let removed = dir.remove(name);
                assert_eq!(removed, Some(*inode), "remove replayed out of order");
            }
        }
    }
}

/// Applies one unsynced change to `durable` as a crash under `policy`
/// decides, counting the fate in `outcome`.
fn crash_file_op(
    op: FileOp,
    durable: &mut Vec<u8>,
    policy: CrashPolicy,
    rng: &mut fastrand::Rng,
    outcome: &mut CrashOutcome,
) {
    let FileOp::Write { offset, data } = op else {
        let kept = match policy {
            CrashPolicy::Random => rng.bool(),
            CrashPolicy::KeepAll => true,
            CrashPolicy::DropAll => false,
        };
        if kept {
            op.apply(durable);
            outcome.set_lens_kept += 1;
        } else {
            outcome.set_lens_dropped += 1;
        }
        return;
    };
    match write_fate(policy, rng, offset, data.len()) {
        Fate::Keep => {
            apply_write(durable, offset, &data);
            outcome.writes_kept += 1;
        }
        Fate::Tear => {
            apply_torn(durable, offset, &data, rng);
            outcome.writes_torn += 1;
        }
        Fate::Drop => outcome.writes_dropped += 1,
    }
}

/// The fate of one unsynced write. A write inside a single sector cannot
/// tear, so under [`CrashPolicy::Random`] it is kept or dropped instead.
fn write_fate(policy: CrashPolicy, rng: &mut fastrand::Rng, offset: u64, size: usize) -> Fate {
    match policy {
        CrashPolicy::KeepAll => Fate::Keep,
        CrashPolicy::DropAll => Fate::Drop,
        CrashPolicy::Random => match rng.u8(0..3) {
            0 => Fate::Keep,
            1 if sector_count(offset, size) >= 2 => Fate::Tear,
            1 if rng.bool() => Fate::Keep,
            1 => Fate::Drop,
            _ => Fate::Drop,
        },
    }
}

/// The number of sectors the bytes `offset..offset + size` touch.
fn sector_count(offset: u64, size: usize) -> u64 {
    assert!(size > 0);
    let end = offset + size as u64;
    (end - 1) / SECTOR_SIZE - offset / SECTOR_SIZE + 1
}

/// Applies the part of a write that falls in a random non-empty, proper
/// subset of the sectors it touches.
fn apply_torn(durable: &mut Vec<u8>, offset: u64, data: &[u8], rng: &mut fastrand::Rng) {
    let count = sector_count(offset, data.len());
    assert!(count >= 2);
    let mut kept: Vec<bool> = (0..count).map(|_| rng.bool()).collect();
    // Force a tear: whole or nothing are the other two fates.
    let flip = rng.usize(0..kept.len());
    if kept.iter().all(|&k| k) {
        kept[flip] = false;
    } else if kept.iter().all(|&k| !k) {
        kept[flip] = true;
    }
    let end = offset + data.len() as u64;
    let sector_first = offset / SECTOR_SIZE;
    for (sector, _) in (sector_first..).zip(&kept).filter(|&(_, &k)| k) {
        let start = (sector * SECTOR_SIZE).max(offset);
        let stop = ((sector + 1) * SECTOR_SIZE).min(end);
        let piece = &data[to_usize(start - offset)..to_usize(stop - offset)];
        apply_write(durable, start, piece);
    }
}

/// Writes `data` at `offset`, extending `content` with zeros up to it.
fn apply_write(content: &mut Vec<u8>, offset: u64, data: &[u8]) {
    let start = to_usize(offset);
    let end = start + data.len();
    if content.len() < end {
        content.resize(end, 0);
    }
    content[start..end].copy_from_slice(data);
}

/// The index of the first queued fault for `op` whose prefix matches one of
/// `names`; an empty prefix matches any call, even one with no names.
fn fault_find(queued: &[(FaultOp, String)], op: FaultOp, names: &[&str]) -> Option<usize> {
    queued.iter().position(|(queued_op, prefix)| {
        *queued_op == op
            && (prefix.is_empty() || names.iter().any(|name| name.starts_with(prefix.as_str())))
    })
}

fn to_usize(value: u64) -> usize {
    usize::try_from(value).expect("sizes are bounded by FILE_SIZE_MAX, which fits in usize")
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state
        .lock()
        .expect("CrashDisk state poisoned: a thread panicked while holding it")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sector_count_counts_touched_sectors() {
        assert_eq!(sector_count(0, 1), 1);
        assert_eq!(sector_count(0, 512), 1);
        assert_eq!(sector_count(0, 513), 2);
        assert_eq!(sector_count(511, 2), 2);
        assert_eq!(sector_count(512, 512), 1);
        assert_eq!(sector_count(100, 1024), 3);
    }

    #[test]
    fn apply_torn_keeps_a_proper_subset_of_whole_sectors() {
        for seed in 0..100 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let mut durable = vec![0u8; 2048];
            let data = vec![1u8; 1500];
            apply_torn(&mut durable, 300, &data, &mut rng);
            let written: Vec<bool> = (0..4)
                .map(|s: usize| durable[(s * 512).max(300)] == 1)
                .collect();
            assert!(
                written.iter().any(|&w| w) && !written.iter().all(|&w| w),
                "seed {seed}"
            );
            for (sector, chunk) in durable.chunks(512).enumerate() {
                let start = if sector == 0 { 300 } else { 0 };
                let stop = if sector == 3 { 1800 - 1536 } else { 512 };
                let part = &chunk[start..stop];
                assert!(
                    part.iter().all(|&b| b == part[0]),
                    "seed {seed}, sector {sector}"
                );
                assert!(chunk[..start].iter().chain(&chunk[stop..]).all(|&b| b == 0));
            }
        }
    }
}

//! The seams between the engine and the world: time, storage and the
//! network.
//!
//! Engine code reads time only through a [`Clock`], touches storage only
//! through a [`Disk`], and talks to other nodes only through a
//! [`transport::Transport`]. Production uses [`os::OsClock`] and
//! [`os::OsDisk`] (and `sluice_client::tcp::TcpTransport`);
//! tests and the simulator use `ManualClock` and `CrashDisk` (feature
//! `testing`), which fail the way real hardware fails, from a seed.
//!
//! Traits live here; their OS implementations live in [`os`], the only
//! module of the engine that makes system calls.

use std::fmt;
use std::io;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

mod env;
pub mod os;

pub use env::{Assembled, Env, Runtime};

#[cfg(feature = "testing")]
mod crash;
#[cfg(feature = "testing")]
mod manual_clock;

#[cfg(feature = "testing")]
pub use crash::{CrashDisk, CrashFile, CrashOutcome, CrashPolicy, FaultOp};
#[cfg(feature = "testing")]
pub use manual_clock::ManualClock;

/// Tokio over a [`CrashDisk`] and a [`ManualClock`]: the engine's tests' environment.
#[cfg(feature = "testing")]
pub type CrashEnv = Assembled<os::OsRuntime, CrashDisk, ManualClock>;

/// A source of time, as an object so that each simulated node can drift on
/// its own.
///
/// ### To ensure correctness:
/// - [`Clock::monotonic`] never goes backwards, across every call on the
///   same clock object.
/// - [`Clock::wall`] may jump in either direction (NTP steps, operators,
///   skewed nodes). Use it only for timestamps shown to people and for
///   retention decisions, never for timeouts or ordering.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// Time elapsed since an arbitrary origin fixed when the clock was made.
    fn monotonic(&self) -> Duration;

    /// Wall-clock time.
    fn wall(&self) -> SystemTime;
}

/// Milliseconds since the Unix epoch of `clock`'s wall time; a time before
/// the epoch reads as 0.
pub fn wall_unix_ms(clock: &dyn Clock) -> u64 {
    clock
        .wall()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// One data directory: a flat namespace of files.
///
/// The operations are small, synchronous and offset-based on purpose: they
/// are what a log needs, they are easy to simulate faithfully, and their
/// crash behaviour can be stated precisely.
///
/// ### Crash contract
/// - File contents: bytes written by [`DiskFile::write_at`] (and length
///   changes by [`DiskFile::set_len`]) before a successful
///   [`DiskFile::sync_data`] on that file survive a crash. Later writes may
///   survive whole, survive torn at a [`sluice_model::constants::SECTOR_SIZE`]
///   boundary, or not survive at all, each write independently of the
///   others (the page cache writes back in any order).
/// - Directory entries: [`Disk::create`], [`Disk::rename`] and
///   [`Disk::remove`] are durable only after a successful
///   [`Disk::sync_dir`]. Before that, a crash keeps some prefix of them,
///   in the order they were made.
/// - Errors: after any failed write, length change or sync on a file, the
///   file is *poisoned*: every later call on that handle fails. A failed
///   `sync_data` is never retried, because the kernel may already have
///   dropped the dirty pages it could not write (the fsyncgate lesson).
///
/// ### To ensure correctness:
/// - File names are plain names inside the directory: not empty, no `/`,
///   not `.` or `..`, at most 255 bytes. Anything else is `InvalidInput`.
/// - A removed or renamed-over file stays readable through handles and maps
///   opened before, as with POSIX unlink.
pub trait Disk: Send + Sync + fmt::Debug + 'static {
    /// The handle to one open file.
    type File: DiskFile;

    /// Creates a new, empty file; `AlreadyExists` if the name is taken.
    fn create(&self, name: &str) -> io::Result<Self::File>;

    /// Opens an existing file for reading and writing; `NotFound` if absent.
    fn open(&self, name: &str) -> io::Result<Self::File>;

    /// The names of every file in the directory, sorted.
    fn list(&self) -> io::Result<Vec<String>>;

    /// Removes a file; `NotFound` if absent.
    fn remove(&self, name: &str) -> io::Result<()>;

    /// Atomically renames `source` to `target`, replacing `target` if it
    /// exists.
    fn rename(&self, source: &str, target: &str) -> io::Result<()>;

    /// Makes every earlier create, rename and remove durable.
    fn sync_dir(&self) -> io::Result<()>;

    /// Gives the directory up to its next opener, for this disk and every
    /// clone of it (`OsDisk` releases its lock); later changes through
    /// them are refused. The log calls this when it closes, because
    /// clones may outlive it in tasks that end later. Disks without a lock
    /// do nothing.
    fn release(&self) {}
}

/// An open file of a [`Disk`]. See [`Disk`] for the crash contract.
///
/// ### To ensure correctness:
/// - Calls on one handle may come from several threads; implementations
///   are internally synchronised.
/// - A file that is mapped with [`DiskFile::map`] must not be shrunk while
///   any returned `Bytes` is alive: on a real system that raises `SIGBUS`
///   on the next access, not an error. The log never shrinks a mapped file.
pub trait DiskFile: Send + Sync + fmt::Debug + 'static {
    /// Fills `buf` from `offset`; `UnexpectedEof` (without poisoning) if the
    /// file ends first.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;

    /// Writes all of `buf` at `offset`, extending the file if needed (a gap
    /// reads as zeros).
    fn write_at(&self, offset: u64, buf: &[u8]) -> io::Result<()>;

    /// The current length of the file, including unsynced writes.
    fn size(&self) -> io::Result<u64>;

    /// Changes the length; bytes past a new, longer length read as zeros.
    fn set_len(&self, size: u64) -> io::Result<()>;

    /// Makes every earlier write and length change on this file durable
    /// (`fdatasync`).
    fn sync_data(&self) -> io::Result<()>;

    /// Asks the system to start writing `len` bytes from `offset` to the
    /// device, without waiting and without any durability promise (Linux
    /// `sync_file_range` with `SYNC_FILE_RANGE_WRITE`). A hint: a later
    /// [`DiskFile::sync_data`] then finds less to write. Implementations
    /// that cannot do this (and the simulator's disks) do nothing. A range
    /// past the largest file offset is `InvalidInput`. A failure does not
    /// poison the handle: a write-back that fails on the device is
    /// reported by the next [`DiskFile::sync_data`], which does.
    fn start_write_back(&self, offset: u64, len: u64) -> io::Result<()> {
        write_back_range(offset, len).map(|_| ())
    }

    /// A read-only view of the whole file as it is now. On the OS this is a
    /// memory map, served without copying; slices of it are zero-copy.
    /// Writes made after the call may or may not be visible through it.
    fn map(&self) -> io::Result<Bytes>;
}

/// Replaces the file `name` with `bytes` atomically and durably: write
/// `tmp`, `sync_data`, rename over `name`, `sync_dir`. After a crash the
/// file is the old version or the new one, whole; a leftover `tmp` is the
/// caller's to remove on open.
pub fn replace_file<D: Disk>(disk: &D, name: &str, tmp: &str, bytes: &[u8]) -> io::Result<()> {
    match disk.remove(tmp) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => return Err(error),
        _ => {}
    }
    let file = disk.create(tmp)?;
    file.write_at(0, bytes)?;
    file.sync_data()?;
    disk.rename(tmp, name)?;
    disk.sync_dir()
}

/// `offset` and `len` of [`DiskFile::start_write_back`] as the signed
/// offsets the system takes, or `InvalidInput` if the range ends past the
/// largest file offset.
pub(crate) fn write_back_range(offset: u64, len: u64) -> io::Result<(i64, i64)> {
    match (i64::try_from(offset), i64::try_from(len)) {
        (Ok(start), Ok(length)) if start.checked_add(length).is_some() => Ok((start, length)),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("write-back range {offset} + {len} ends past the largest file offset"),
        )),
    }
}

/// Checks that `name` is a plain file name inside the data directory.
pub(crate) fn check_name(name: &str) -> io::Result<()> {
    let valid = !name.is_empty()
        && name.len() <= 255
        && name != "."
        && name != ".."
        && !name.contains(['/', '\\', '\0']);
    if valid {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid file name {name:?}: expected a plain name inside the data directory"),
        ))
    }
}

/// The error every call on a poisoned file returns.
pub(crate) fn poisoned(name: &str) -> io::Error {
    io::Error::other(format!(
        "file {name} is poisoned by an earlier I/O error; reopen the data directory \
         after checking the device (a failed write or sync is never retried)"
    ))
}

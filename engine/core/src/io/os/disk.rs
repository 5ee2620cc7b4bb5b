//! [`OsDisk`]: a data directory on the real file system.
//!
//! Fault model: whatever the kernel and device do. A failed write, length
//! change or sync poisons the handle (see [`crate::io::Disk`]); reads past
//! the end are reported without poisoning.
//!
//! One writer per directory: [`OsDisk::open`] takes an exclusive advisory
//! lock (`flock`) on the file [`LOCK_NAME`] in the directory and holds it
//! while any clone of the disk lives, so a second node or embedded bus on
//! the same directory is refused with [`DirectoryInUse`] instead of running
//! elections and writing segments beside the first. The lock goes with the
//! process: a killed node leaves no stale lock behind.
//! [`OsDisk::open_read_only`] takes no lock and changes nothing, for tools
//! that inspect a directory a node may be writing.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use crate::io::{Disk, DiskFile, check_name, poisoned};

/// The lock file in every data directory a writer opened.
pub const LOCK_NAME: &str = "LOCK";

/// Another process (or another open disk of this one) holds the data
/// directory's lock.
#[derive(Debug, thiserror::Error)]
#[error(
    "data directory {} is in use by another process (lock file {})",
    dir.display(),
    lock.display()
)]
pub struct DirectoryInUse {
    /// The data directory.
    pub dir: PathBuf,
    /// Its lock file.
    pub lock: PathBuf,
}

impl DirectoryInUse {
    /// Whether `error` is (or wraps) this error.
    pub fn is(error: &io::Error) -> bool {
        error
            .get_ref()
            .is_some_and(|inner| inner.downcast_ref::<DirectoryInUse>().is_some())
    }
}

/// A data directory on the real file system.
#[derive(Debug, Clone)]
pub struct OsDisk {
    root: PathBuf,
    /// The exclusive lock, held until every clone is dropped or
    /// [`Disk::release`] takes it; `None` when opened read-only.
    lock: Option<Arc<Mutex<Option<File>>>>,
}

impl OsDisk {
    /// Uses `root` as the data directory, creating it (and its parents) if
    /// needed, and takes its lock ([`DirectoryInUse`] if another holds it).
    pub fn open(root: impl AsRef<Path>) -> io::Result<Self> {
        let root = root.as_ref().to_path_buf();
        fs::create_dir_all(&root)?;
        let path = root.join(LOCK_NAME);
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        if !try_flock(&lock, libc::LOCK_EX)? {
            return Err(io::Error::new(
                io::ErrorKind::ResourceBusy,
                DirectoryInUse {
                    dir: root,
                    lock: path,
                },
            ));
        }
        Ok(OsDisk {
            root,
            lock: Some(Arc::new(Mutex::new(Some(lock)))),
        })
    }

    /// Uses the existing directory `root` read-only: files open for
    /// reading only, and every call that would create, remove, rename,
    /// write, resize or sync fails with `PermissionDenied`. Takes no lock,
    /// so it works beside a running node (whose files may change under
    /// it); see [`OsDisk::in_use`].
    pub fn open_read_only(root: impl AsRef<Path>) -> io::Result<Self> {
        let root = root.as_ref().to_path_buf();
        if !fs::metadata(&root)?.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotADirectory,
                format!("{} is not a directory", root.display()),
            ));
        }
        Ok(OsDisk { root, lock: None })
    }

    /// Whether a writer holds the lock of the directory `root` (a node or
    /// an embedded bus runs on it). Probes with a shared lock, dropped at
    /// once; writes nothing.
    pub fn in_use(root: impl AsRef<Path>) -> io::Result<bool> {
        let file = match File::open(root.as_ref().join(LOCK_NAME)) {
            Ok(file) => file,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(error) => return Err(error),
        };
        // The shared lock goes with `file`, closed on return.
        Ok(!try_flock(&file, libc::LOCK_SH)?)
    }

    /// Whether this disk was opened with [`OsDisk::open_read_only`].
    pub fn is_read_only(&self) -> bool {
        self.lock.is_none()
    }

    /// The directory this disk works in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, name: &str) -> io::Result<PathBuf> {
        check_name(name)?;
        if name == LOCK_NAME {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{LOCK_NAME} is the data directory's lock file, not the log's"),
            ));
        }
        Ok(self.root.join(name))
    }

    /// Refuses a change to the directory when read-only or released.
    fn writable(&self, op: &str, name: &str) -> io::Result<()> {
        let path = self.root.join(name);
        match &self.lock {
            None => Err(read_only_error(op, &path)),
            Some(lock) if lock.lock().expect("lock slot").is_none() => {
                Err(io::Error::other(format!(
                    "cannot {op} {}: this process gave the data directory up (the log was \
                     closed)",
                    path.display()
                )))
            }
            Some(_) => Ok(()),
        }
    }

    fn wrap(&self, name: &str, file: File) -> OsFile {
        OsFile {
            name: name.to_owned(),
            file,
            poisoned: AtomicBool::new(false),
            read_only: self.is_read_only(),
        }
    }
}

/// `flock(operation | LOCK_NB)`: `Ok(false)` if another holds a lock that
/// conflicts.
#[allow(unsafe_code)]
fn try_flock(file: &File, operation: libc::c_int) -> io::Result<bool> {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain system call on a descriptor `file` owns and keeps
    // open for the call; it reads no user memory.
    let status = unsafe { libc::flock(file.as_raw_fd(), operation | libc::LOCK_NB) };
    if status == 0 {
        return Ok(true);
    }
    let error = io::Error::last_os_error();
    if error.kind() == io::ErrorKind::WouldBlock {
        Ok(false)
    } else {
        Err(error)
    }
}

fn read_only_error(op: &str, path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!(
            "cannot {op} {}: the data directory is open read-only",
            path.display()
        ),
    )
}

impl Disk for OsDisk {
    type File = OsFile;

    fn create(&self, name: &str) -> io::Result<OsFile> {
        self.writable("create", name)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(self.path(name)?)?;
        Ok(self.wrap(name, file))
    }

    fn open(&self, name: &str) -> io::Result<OsFile> {
        let file = OpenOptions::new()
            .read(true)
            .write(!self.is_read_only())
            .open(self.path(name)?)?;
        Ok(self.wrap(name, file))
    }

    fn list(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(&self.root)? {
            let entry = entry?;
            if !entry.file_type()?.is_file() {
                continue;
            }
            match entry.file_name().into_string() {
                // The lock belongs to the directory, not to the log.
                Ok(name) if name == LOCK_NAME => {}
                Ok(name) => names.push(name),
                Err(name) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "file name {name:?} in {} is not UTF-8; move it out of the data directory",
                            self.root.display()
                        ),
                    ));
                }
            }
        }
        names.sort();
        Ok(names)
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        self.writable("remove", name)?;
        fs::remove_file(self.path(name)?)
    }

    fn rename(&self, source: &str, target: &str) -> io::Result<()> {
        self.writable("rename", source)?;
        fs::rename(self.path(source)?, self.path(target)?)
    }

    fn sync_dir(&self) -> io::Result<()> {
        self.writable("sync", ".")?;
        File::open(&self.root)?.sync_all()
    }

    fn release(&self) {
        if let Some(lock) = &self.lock {
            // Closing the descriptor releases the `flock`.
            drop(lock.lock().expect("lock slot").take());
        }
    }
}

/// An open file of an [`OsDisk`].
#[derive(Debug)]
pub struct OsFile {
    name: String,
    file: File,
    poisoned: AtomicBool,
    /// Opened by a read-only disk: every change is refused.
    read_only: bool,
}

impl OsFile {
    fn check(&self) -> io::Result<()> {
        if self.poisoned.load(Ordering::Acquire) {
            Err(poisoned(&self.name))
        } else {
            Ok(())
        }
    }

    /// Runs a mutating call; any failure poisons the handle. Refused, and
    /// nothing poisoned, on a read-only handle.
    fn mutate<T>(&self, op: &str, call: impl FnOnce(&File) -> io::Result<T>) -> io::Result<T> {
        if self.read_only {
            return Err(read_only_error(op, Path::new(&self.name)));
        }
        self.check()?;
        call(&self.file).inspect_err(|_| self.poisoned.store(true, Ordering::Release))
    }
}

impl DiskFile for OsFile {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.check()?;
        match self.file.read_exact_at(buf, offset) {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => Err(error),
            Err(error) => {
                self.poisoned.store(true, Ordering::Release);
                Err(error)
            }
        }
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
        self.mutate("write", |file| file.write_all_at(buf, offset))
    }

    fn size(&self) -> io::Result<u64> {
        self.check()?;
        Ok(self.file.metadata()?.len())
    }

    fn set_len(&self, size: u64) -> io::Result<()> {
        self.mutate("resize", |file| file.set_len(size))
    }

    fn sync_data(&self) -> io::Result<()> {
        self.mutate("sync", File::sync_data)
    }

    #[cfg(target_os = "linux")]
    #[allow(unsafe_code)]
    fn start_write_back(&self, offset: u64, len: u64) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let (offset, len) = crate::io::write_back_range(offset, len)?;
        // A hint: a failure does not poison the handle (a write-back that
        // fails on the device is reported by the next `fdatasync` of the
        // file, which does).
        if self.read_only {
            return Err(read_only_error("write back", Path::new(&self.name)));
        }
        self.check()?;
        // SAFETY: a plain system call on a descriptor `self.file` owns and
        // keeps open for the call; it reads no user memory.
        let status = unsafe {
            libc::sync_file_range(
                self.file.as_raw_fd(),
                offset,
                len,
                libc::SYNC_FILE_RANGE_WRITE,
            )
        };
        if status == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    #[allow(unsafe_code)]
    fn map(&self) -> io::Result<Bytes> {
        self.check()?;
        if self.file.metadata()?.len() == 0 {
            // mmap(2) rejects a zero-length mapping.
            return Ok(Bytes::new());
        }
        // SAFETY: the map is read-only and `Mmap` keeps it alive as long as
        // any `Bytes` slice of it lives. Undefined behaviour would need the
        // file to be modified or shrunk under the map. The log maps only
        // sealed segments, never writes to them again, and never shrinks
        // them: it replaces a sealed segment by writing a new file and
        // renaming it over the old one, which leaves the mapped inode
        // intact. Nothing else in the engine maps files.
        let map = unsafe { memmap2::Mmap::map(&self.file)? };
        Ok(Bytes::from_owner(map))
    }
}

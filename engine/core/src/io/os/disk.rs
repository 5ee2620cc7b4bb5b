//! [`OsDisk`]: a data directory on the real file system.
//!
//! Fault model: whatever the kernel and device do. A failed write, length
//! change or sync poisons the handle (see [`crate::io::Disk`]); reads past
//! the end are reported without poisoning.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;

use crate::io::{Disk, DiskFile, check_name, poisoned};

/// A data directory on the real file system.
#[derive(Debug, Clone)]
pub struct OsDisk {
    root: PathBuf,
}

impl OsDisk {
    /// Uses `root` as the data directory, creating it (and its parents) if
    /// needed.
    pub fn open(root: impl AsRef<Path>) -> io::Result<Self> {
        let root = root.as_ref().to_path_buf();
        fs::create_dir_all(&root)?;
        Ok(OsDisk { root })
    }

    /// The directory this disk works in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, name: &str) -> io::Result<PathBuf> {
        check_name(name)?;
        Ok(self.root.join(name))
    }

    fn wrap(&self, name: &str, file: File) -> OsFile {
        OsFile {
            name: name.to_owned(),
            file,
            poisoned: AtomicBool::new(false),
        }
    }
}

impl Disk for OsDisk {
    type File = OsFile;

    fn create(&self, name: &str) -> io::Result<OsFile> {
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
            .write(true)
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
        fs::remove_file(self.path(name)?)
    }

    fn rename(&self, source: &str, target: &str) -> io::Result<()> {
        fs::rename(self.path(source)?, self.path(target)?)
    }

    fn sync_dir(&self) -> io::Result<()> {
        File::open(&self.root)?.sync_all()
    }
}

/// An open file of an [`OsDisk`].
#[derive(Debug)]
pub struct OsFile {
    name: String,
    file: File,
    poisoned: AtomicBool,
}

impl OsFile {
    fn check(&self) -> io::Result<()> {
        if self.poisoned.load(Ordering::Acquire) {
            Err(poisoned(&self.name))
        } else {
            Ok(())
        }
    }

    /// Runs a mutating call; any failure poisons the handle.
    fn mutate<T>(&self, call: impl FnOnce(&File) -> io::Result<T>) -> io::Result<T> {
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
        self.mutate(|file| file.write_all_at(buf, offset))
    }

    fn size(&self) -> io::Result<u64> {
        self.check()?;
        Ok(self.file.metadata()?.len())
    }

    fn set_len(&self, size: u64) -> io::Result<()> {
        self.mutate(|file| file.set_len(size))
    }

    fn sync_data(&self) -> io::Result<()> {
        self.mutate(File::sync_data)
    }

    #[cfg(target_os = "linux")]
    #[allow(unsafe_code)]
    fn start_write_back(&self, offset: u64, len: u64) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let (offset, len) = crate::io::write_back_range(offset, len)?;
        // A hint: a failure does not poison the handle (a write-back that
        // fails on the device is reported by the next `fdatasync` of the
        // file, which does).
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

//! The machine's own limits, measured with plain `std::fs` calls in the
//! same directory (so on the same file system) as the log workloads.
//!
//! Each probe writes its own file and removes it. Files written without a
//! sync are removed before writeback, so their dirty pages never reach the
//! disk and do not disturb the next measurement.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Instant;

use crate::{Bandwidth, Latency, latency_histogram, pattern};

fn create(dir: &Path, name: &str) -> io::Result<(File, std::path::PathBuf)> {
    let path = dir.join(name);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)?;
    Ok((file, path))
}

/// Sequential write of `size` bytes in `chunk_size`-byte writes to a new
/// file, then one `fdatasync`; the clock covers the writes and the sync.
/// This is the most a durable append stream can get out of the disk.
pub fn seq_write_synced(dir: &Path, size: u64, chunk_size: usize) -> io::Result<Bandwidth> {
    sequential_write(dir, "probe-seq-write", size, chunk_size, Finish::Sync)
}

/// Sequential write of `size` bytes in `chunk_size`-byte writes to a new
/// file, with no sync: the page cache's own write bandwidth, the most a
/// buffered append can reach.
pub fn buffered_write(dir: &Path, size: u64, chunk_size: usize) -> io::Result<Bandwidth> {
    sequential_write(
        dir,
        "probe-buffered-write",
        size,
        chunk_size,
        Finish::NoSync,
    )
}

/// How a sequential write ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Finish {
    /// With one `fdatasync`, timed.
    Sync,
    /// Without; the file is removed before writeback.
    NoSync,
}

fn sequential_write(
    dir: &Path,
    name: &str,
    size: u64,
    chunk_size: usize,
    finish: Finish,
) -> io::Result<Bandwidth> {
    let chunk = pattern(chunk_size, if finish == Finish::Sync { 1 } else { 2 });
    let (file, path) = create(dir, name)?;
    let start = Instant::now();
    let mut offset = 0;
    while offset < size {
        file.write_all_at(&chunk, offset)?;
        offset += chunk_size as u64;
    }
    if finish == Finish::Sync {
        file.sync_data()?;
    }
    let seconds = start.elapsed().as_secs_f64();
    drop(file);
    // Removing an unsynced file drops its dirty pages without writeback.
    std::fs::remove_file(path)?;
    Ok(Bandwidth {
        bytes: offset,
        seconds,
    })
}

/// Latency of appending `append_size` bytes at the end of a file and
/// `fdatasync`ing it, `samples` times: the least a durable acknowledgement
/// of one small write can cost. The clock covers the write and the sync.
pub fn append_sync_latency(dir: &Path, samples: u64, append_size: usize) -> io::Result<Latency> {
    let block = pattern(append_size, 3);
    let (file, path) = create(dir, "probe-sync-latency")?;
    let mut histogram = latency_histogram();
    let mut offset = 0;
    for _ in 0..samples {
        let start = Instant::now();
        file.write_all_at(&block, offset)?;
        file.sync_data()?;
        let nanos = start.elapsed().as_nanos() as u64;
        histogram.saturating_record(nanos.max(1));
        offset += append_size as u64;
    }
    drop(file);
    std::fs::remove_file(path)?;
    Ok(Latency::of(&histogram))
}

/// Latency of one `append_size`-byte overwrite plus `fdatasync` inside a
/// file written (and synced) in full beforehand: the file's size and
/// block map never change, so `fdatasync` flushes data only, with no
/// journal commit. [`append_sync_latency`] (the file grows, as the log's
/// active segment does) minus this is what preallocating segments by
/// writing them could save.
pub fn overwrite_sync_latency(dir: &Path, samples: u64, append_size: usize) -> io::Result<Latency> {
    let block = pattern(append_size, 5);
    let (file, path) = create(dir, "probe-overwrite-latency")?;
    let zeros = vec![0u8; append_size];
    for sample in 0..samples {
        file.write_all_at(&zeros, sample * append_size as u64)?;
    }
    file.sync_all()?;
    let mut histogram = latency_histogram();
    for sample in 0..samples {
        let start = Instant::now();
        file.write_all_at(&block, sample * append_size as u64)?;
        file.sync_data()?;
        let nanos = start.elapsed().as_nanos() as u64;
        histogram.saturating_record(nanos.max(1));
    }
    drop(file);
    std::fs::remove_file(path)?;
    Ok(Latency::of(&histogram))
}

/// Sequential read of a `size`-byte file that is in the page cache, in
/// `chunk_size`-byte reads: the most a copying reader can reach. The file
/// is written and read once before the timed pass.
pub fn cached_read(dir: &Path, size: u64, chunk_size: usize) -> io::Result<Bandwidth> {
    let chunk = pattern(chunk_size, 4);
    let (file, path) = create(dir, "probe-cached-read")?;
    let mut offset = 0;
    while offset < size {
        file.write_all_at(&chunk, offset)?;
        offset += chunk_size as u64;
    }
    let mut buffer = vec![0; chunk_size];
    let mut warm = File::open(&path)?;
    while warm.read(&mut buffer)? > 0 {}
    let mut reader = File::open(&path)?;
    let start = Instant::now();
    let mut bytes = 0;
    loop {
        let read = reader.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        bytes += read as u64;
    }
    let seconds = start.elapsed().as_secs_f64();
    std::hint::black_box(&buffer);
    drop(file);
    std::fs::remove_file(path)?;
    Ok(Bandwidth { bytes, seconds })
}

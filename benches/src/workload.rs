//! The log's workloads, through its public API on [`OsDisk`].
//!
//! Byte figures count whole frames (header plus payload), the bytes the
//! log writes, so they compare directly with the probes' bandwidths.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sluice_core::io::os::{OsClock, OsDisk};
use sluice_core::log::{Entry, FRAME_OVERHEAD, Log, Options, PersistMode, Record, frame};
use sluice_model::constants::SEGMENT_SIZE_DEFAULT;

use crate::{BenchResult, Latency, latency_histogram, pattern};

/// Opens (or creates) the log in `dir` with `segment_size`.
pub fn open(dir: &Path, segment_size: u64) -> BenchResult<Log> {
    let disk = OsDisk::open(dir)?;
    let options = Options {
        segment_size,
        ..Options::default()
    };
    Ok(Log::open(disk, Arc::new(OsClock::new()), options)?)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// An append workload.
#[derive(Debug, Clone, Copy)]
pub struct AppendSpec {
    /// Payload bytes of each record.
    pub payload_size: usize,
    /// Records per `append` call.
    pub batch_len: usize,
    /// Frame bytes to write in all (rounded up to whole batches).
    pub size: u64,
    /// `Buffer`: no sync at all. `SyncData`: one `fdatasync` per batch.
    pub persist: PersistMode,
    /// Segment size of the log.
    pub segment_size: u64,
}

impl AppendSpec {
    /// Bytes of one frame.
    pub fn frame_size(&self) -> u64 {
        (self.payload_size + FRAME_OVERHEAD) as u64
    }

    /// Number of batches that cover [`AppendSpec::size`].
    pub fn batch_count(&self) -> u64 {
        let batch_size = self.frame_size() * self.batch_len as u64;
        self.size.div_ceil(batch_size).max(1)
    }

    /// Records appended in all.
    pub fn record_count(&self) -> u64 {
        self.batch_count() * self.batch_len as u64
    }
}

/// What an append workload did.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct AppendResult {
    /// Records appended.
    pub records: u64,
    /// Frame bytes appended.
    pub bytes: u64,
    /// Time from the first `append` call to the return of the last.
    pub seconds: f64,
    /// Segments the log ended with.
    pub segments: usize,
}

impl AppendResult {
    /// Records per second.
    pub fn records_per_s(&self) -> f64 {
        self.records as f64 / self.seconds
    }

    /// Frame bytes per second.
    pub fn bytes_per_s(&self) -> f64 {
        self.bytes as f64 / self.seconds
    }
}

/// Appends `spec`'s records to the log in `dir` and times the appends
/// only (not opening or dropping the log). Records are appended after
/// whatever the log already holds.
pub fn append(dir: &Path, spec: &AppendSpec) -> BenchResult<AppendResult> {
    let mut log = open(dir, spec.segment_size)?;
    let payload = pattern(spec.payload_size, 5);
    let timestamp_ms = now_ms();
    let mut batch: Vec<Entry<'_>> = Vec::with_capacity(spec.batch_len);
    let mut next = log.next_index();
    let start = Instant::now();
    for _ in 0..spec.batch_count() {
        batch.clear();
        batch.extend((0..spec.batch_len as u64).map(|offset| Entry {
            index: next + offset,
            term: 1,
            kind: 1,
            timestamp_ms,
            payload: &payload,
            payload_digest: None,
        }));
        next = log.append(&batch, spec.persist)?;
    }
    let seconds = start.elapsed().as_secs_f64();
    Ok(AppendResult {
        records: spec.record_count(),
        bytes: spec.record_count() * spec.frame_size(),
        seconds,
        segments: log.segments().len(),
    })
}

/// Latency of appending one record of `payload_size` bytes with
/// [`PersistMode::SyncData`], `samples` times: the log's cost of a durable
/// acknowledgement, to compare with the disk's own append plus
/// `fdatasync`.
pub fn append_sync_latency(dir: &Path, samples: u64, payload_size: usize) -> BenchResult<Latency> {
    let mut log = open(dir, SEGMENT_SIZE_DEFAULT)?;
    let payload = pattern(payload_size, 6);
    let mut histogram = latency_histogram();
    let timestamp_ms = now_ms();
    for _ in 0..samples {
        let entry = Entry {
            index: log.next_index(),
            term: 1,
            kind: 1,
            timestamp_ms,
            payload: &payload,
            payload_digest: None,
        };
        let start = Instant::now();
        log.append(&[entry], PersistMode::SyncData)?;
        let nanos = start.elapsed().as_nanos() as u64;
        histogram.saturating_record(nanos.max(1));
    }
    Ok(Latency::of(&histogram))
}

/// A log built for reading or opening.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Built {
    /// Records in the log.
    pub records: u64,
    /// Frame bytes in the log.
    pub bytes: u64,
    /// Segments, the active one included.
    pub segments: usize,
    /// Frame bytes in the active (tail) segment, the part `open` scans.
    pub tail_bytes: u64,
    /// Wall time the build took, in seconds.
    pub seconds: f64,
}

/// Builds a log in `dir` of `records` records of `payload_size` bytes, in
/// buffered batches (each segment is synced when sealed) and one final
/// sync, so the tail is clean.
pub fn build(
    dir: &Path,
    payload_size: usize,
    records: u64,
    segment_size: u64,
) -> BenchResult<Built> {
    const BATCH_LEN: u64 = 1024;
    let start = Instant::now();
    let mut log = open(dir, segment_size)?;
    assert_eq!(log.next_index(), 0, "build into an empty directory");
    let payload = pattern(payload_size, 7);
    let timestamp_ms = now_ms();
    let mut batch = Vec::with_capacity(BATCH_LEN as usize);
    while log.next_index() < records {
        let next = log.next_index();
        batch.clear();
        batch.extend((next..records.min(next + BATCH_LEN)).map(|index| Entry {
            index,
            term: 1,
            kind: 1,
            timestamp_ms,
            payload: &payload,
            payload_digest: None,
        }));
        log.append(&batch, PersistMode::Buffer)?;
    }
    log.sync()?;
    let segments = log.segments();
    Ok(Built {
        records,
        bytes: log.size(),
        segments: segments.len(),
        tail_bytes: segments.last().map_or(0, |s| s.size),
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// The index range held by sealed segments.
pub fn sealed_range(log: &Log) -> std::ops::Range<u64> {
    let segments = log.segments();
    let end = segments
        .iter()
        .filter(|s| s.sealed)
        .map(|s| s.next)
        .max()
        .unwrap_or(log.first_index());
    log.first_index()..end
}

/// What a read pass did.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct ReadResult {
    /// Records read.
    pub records: u64,
    /// Frame bytes those records occupy.
    pub bytes: u64,
    /// Wall time, in seconds.
    pub seconds: f64,
}

impl ReadResult {
    /// Records per second.
    pub fn records_per_s(&self) -> f64 {
        self.records as f64 / self.seconds
    }

    /// Frame bytes per second.
    pub fn bytes_per_s(&self) -> f64 {
        self.bytes as f64 / self.seconds
    }
}

/// Reads every record of the sealed segments, `chunk_len` records per
/// `read` call into one reused vector, touching each payload's length.
pub fn read_sealed(log: &Log, chunk_len: u64) -> BenchResult<ReadResult> {
    let range = sealed_range(log);
    let mut out: Vec<Record> = Vec::with_capacity(chunk_len as usize);
    let mut records = 0;
    let mut bytes = 0;
    let start = Instant::now();
    let mut index = range.start;
    while index < range.end {
        let end = range.end.min(index + chunk_len);
        out.clear();
        log.read(index..end, &mut out)?;
        records += out.len() as u64;
        bytes += out
            .iter()
            .map(|r| (r.payload.len() + FRAME_OVERHEAD) as u64)
            .sum::<u64>();
        std::hint::black_box(&out);
        index = end;
    }
    let seconds = start.elapsed().as_secs_f64();
    assert_eq!(records, range.end - range.start);
    Ok(ReadResult {
        records,
        bytes,
        seconds,
    })
}

/// Whether reads of sealed segments are slices of the segment's map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ZeroCopy {
    /// Pairs of consecutive records checked.
    pub pairs: u64,
    /// Pairs whose payloads lie exactly one frame apart in memory.
    pub pairs_one_frame_apart: u64,
    /// Payloads that lie in a file mapping of a segment (`*.seg` in
    /// `/proc/self/maps`).
    pub payloads_in_segment_map: u64,
    /// Payloads checked.
    pub payloads: u64,
}

impl ZeroCopy {
    /// Every pair checked lies one frame apart: one contiguous region.
    pub fn holds(&self) -> bool {
        self.pairs > 0
            && self.pairs == self.pairs_one_frame_apart
            && self.payloads == self.payloads_in_segment_map
    }
}

/// Reads up to `per_segment` records from the start of each sealed segment
/// and checks that each payload starts exactly one frame after the
/// previous one in memory. A copy into a fresh buffer per record (or per
/// read) would not keep that distance across records.
pub fn check_zero_copy(log: &Log, per_segment: u64) -> BenchResult<ZeroCopy> {
    let mut result = ZeroCopy {
        pairs: 0,
        pairs_one_frame_apart: 0,
        payloads_in_segment_map: 0,
        payloads: 0,
    };
    // Map every sealed segment (the first read does) before reading the
    // process's mappings.
    let sealed: Vec<_> = log.segments().into_iter().filter(|s| s.sealed).collect();
    for segment in &sealed {
        let first = segment.first.max(log.first_index());
        log.read(first..first + 1, &mut Vec::new())?;
    }
    let maps = std::fs::read_to_string("/proc/self/maps")?;
    for segment in &sealed {
        let mut index = segment.first.max(log.first_index());
        let end = segment.next.min(index + per_segment);
        // One record per call, so a per-call buffer would show up too.
        let mut previous: Option<Record> = None;
        while index < end {
            let mut out = Vec::with_capacity(1);
            log.read(index..index + 1, &mut out)?;
            let record = out.pop().expect("one record");
            result.payloads += 1;
            let file = mapping_of(&maps, record.payload.as_ptr() as usize);
            if file.is_some_and(|name| name.ends_with(".seg")) {
                result.payloads_in_segment_map += 1;
            }
            if let Some(previous) = previous {
                result.pairs += 1;
                let distance = (record.payload.as_ptr() as usize)
                    .wrapping_sub(previous.payload.as_ptr() as usize);
                if distance == previous.payload.len() + FRAME_OVERHEAD {
                    result.pairs_one_frame_apart += 1;
                }
            }
            previous = Some(record);
            index += 1;
        }
    }
    Ok(result)
}

/// The file name of the mapping in `maps` (the text of `/proc/self/maps`)
/// that contains `address`, if it is a file mapping.
fn mapping_of(maps: &str, address: usize) -> Option<&str> {
    maps.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (low, high) = fields.next()?.split_once('-')?;
        let low = usize::from_str_radix(low, 16).ok()?;
        let high = usize::from_str_radix(high, 16).ok()?;
        let path = fields.nth(4)?;
        (low..high).contains(&address).then_some(path)
    })
}

/// Time to open the log in `dir` (listing, metadata, scanning the tail
/// segment and syncing it); the log is dropped outside the clock.
pub fn open_time(dir: &Path, segment_size: u64) -> BenchResult<(Duration, usize)> {
    let start = Instant::now();
    let log = open(dir, segment_size)?;
    let elapsed = start.elapsed();
    let segments = log.recovery_report().segments;
    assert!(
        log.recovery_report().torn_tail.is_none(),
        "the tail is clean"
    );
    drop(log);
    Ok((elapsed, segments))
}

/// Drops the page cache of every file in `dir` with
/// `dd iflag=nocache count=0` (POSIX_FADV_DONTNEED on the whole file), so
/// the next open reads from the disk. Only clean pages are dropped: the
/// files must have been synced. Affects only these files.
pub fn drop_cache(dir: &Path) -> BenchResult<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let mut input = std::ffi::OsString::from("if=");
        input.push(path.as_os_str());
        let status = std::process::Command::new("dd")
            .arg(input)
            .args(["iflag=nocache", "count=0", "status=none"])
            .status()?;
        if !status.success() {
            return Err(format!("dd iflag=nocache failed on {}: {status}", path.display()).into());
        }
    }
    Ok(())
}

/// Encodes `records` frames of `payload_size` bytes, 1024 at a time, into
/// one reused buffer, with no I/O: the CPU cost per record of building
/// frames (header, payload copy, CRC-32), which a buffered append adds to
/// the page cache's own cost. Returns the seconds taken.
pub fn encode_only(payload_size: usize, records: u64) -> f64 {
    const BATCH_LEN: u64 = 1024;
    let payload = pattern(payload_size, 8);
    let size = (payload_size + FRAME_OVERHEAD) as u32;
    let mut buffer = Vec::with_capacity(size as usize * BATCH_LEN as usize);
    let mut link = frame::GENESIS;
    let start = Instant::now();
    let mut index = 0;
    while index < records {
        buffer.clear();
        for _ in 0..BATCH_LEN.min(records - index) {
            let header = frame::Header {
                size,
                kind: 1,
                index,
                term: 1,
                durable_next: 0,
                timestamp_ms: 0,
                flags: frame::FLAG_CHAINED,
                link,
                hash: frame::GENESIS,
            };
            link = frame::encode(&mut buffer, &header, &payload, None);
            index += 1;
        }
        std::hint::black_box(&buffer);
    }
    start.elapsed().as_secs_f64()
}

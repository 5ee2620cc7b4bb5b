//! Opening a log: finishing interrupted operations, cutting a torn tail,
//! refusing damage to acknowledged records (or repairing it on request).
//!
//! The order of checks follows the order of the write path in reverse:
//! leftovers of interrupted rewrites go first, then the purge point from the
//! metadata file, then the active (last) segment, the only one that can end
//! torn. See `FORMAT.md` for the rules.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use crate::io::{Clock, Disk, DiskFile};

use super::error::{Corruption, CorruptionReason, Error, Result};
use super::frame::FrameError;
use super::meta::{self, Meta};
use super::segment::{self, Scan};
use super::{Access, Active, Log, Options, RecoveryMode, Sealed};

/// What [`Log::open`] found and did. After [`Log::open_read_only`],
/// which changes nothing, `removed` and `torn_tail` tell what a writable
/// open would remove and cut.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Segments in the log after recovery.
    pub segments: usize,
    /// Files removed: leftovers of interrupted rewrites and purges.
    pub removed: Vec<String>,
    /// The torn tail that was cut off, if any.
    pub torn_tail: Option<TornTail>,
    /// Whether the log was opened read-only: nothing was removed or cut.
    pub read_only: bool,
    /// What [`RecoveryMode::Repair`] cut, if anything.
    pub repair: Option<Repair>,
}

/// A torn tail: frames written but not proven durable, cut on open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    /// The active segment.
    pub file: String,
    /// Where the first bad frame began; the file now ends here.
    pub offset: u64,
    /// The index that frame should have held.
    pub index: u64,
    /// What was wrong with it.
    pub reason: FrameError,
    /// Bytes cut off.
    pub bytes_cut: u64,
    /// Valid frames found after the bad one, and dropped with it.
    pub frames_dropped: u64,
}

/// What a repair dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repair {
    /// The first damage found, where the log was cut.
    pub corruption: Corruption,
    /// Whole segments removed after the damaged one.
    pub segments_removed: Vec<String>,
    /// Bytes dropped in all.
    pub bytes_dropped: u64,
}

/// Opens the log; [`Access::ReadOnly`] changes nothing on disk (see
/// [`Log::open_read_only`]): each repair step then only reports.
pub(super) fn open<D: Disk>(
    disk: D,
    clock: Arc<dyn Clock>,
    options: Options,
    access: Access,
) -> Result<Log<D>> {
    let mut report = RecoveryReport {
        read_only: access == Access::ReadOnly,
        ..RecoveryReport::default()
    };
    let names = disk
        .list()
        .map_err(|e| Error::io("list", "data directory", e))?;
    remove_leftovers(&disk, &names, &mut report)?;
    let mut firsts: Vec<u64> = names
        .iter()
        .filter_map(|n| segment::parse_name(n))
        .collect();
    firsts.sort_unstable();
    check_format(&disk, &firsts)?;
    let meta = load_meta(&disk, &firsts, access)?;
    remove_purged(&disk, &mut firsts, meta.purged_next, &mut report)?;
    if options.recovery == RecoveryMode::Repair {
        repair_sealed(&disk, &mut firsts, &mut report)?;
    }
    let (tail, scan, capacity) =
        open_tail(&disk, &mut firsts, &meta, options.recovery, &mut report)?;
    let sealed = open_sealed(&disk, &firsts)?;
    report.segments = sealed.len() + 1;
    let active = Active {
        first: *firsts.last().expect("a tail exists"),
        name: segment::name(*firsts.last().expect("a tail exists")),
        file: Arc::new(tail),
        offsets: scan.offsets,
        size: scan.end,
        capacity,
        last_timestamp_ms: scan.last_timestamp_ms,
    };
    let head = match (scan.last_hash, sealed.back()) {
        (Some(hash), _) => hash,
        (None, Some(last)) => last_sealed_hash(last)?,
        (None, None) => meta.anchor.unwrap_or(super::frame::GENESIS),
    };
    let durable_next = active.next();
    Ok(Log {
        head,
        disk,
        clock,
        options,
        sealed,
        active,
        meta,
        durable_next,
        truncations: 0,
        poison: None,
        buffer: Vec::new(),
        pending: Vec::new(),
        report,
        spare: super::spare::State::Off,
        written: 0,
        access,
        closed: false,
    })
}

/// Opens every segment but the last (the active one): each runs from its
/// first index to the next segment's.
fn open_sealed<D: Disk>(disk: &D, firsts: &[u64]) -> Result<VecDeque<Sealed<D::File>>> {
    let mut sealed = VecDeque::with_capacity(firsts.len());
    for pair in firsts.windows(2) {
        let name = segment::name(pair[0]);
        let file = disk.open(&name).map_err(|e| Error::io("open", &name, e))?;
        let size = file.size().map_err(|e| Error::io("size", &name, e))?;
        sealed.push_back(Sealed {
            first: pair[0],
            next: pair[1],
            name,
            file: Arc::new(file),
            size,
            view: Mutex::new(None),
        });
    }
    Ok(sealed)
}

/// The chain hash of a sealed segment's last frame: where the chain stands
/// when the active segment is empty (a crash right after a roll, or a
/// truncation back to a segment boundary). Scans that one segment.
fn last_sealed_hash<F: DiskFile>(sealed: &Sealed<F>) -> Result<super::frame::Hash> {
    let view = sealed.view()?;
    Ok(view
        .last_hash
        .expect("a sealed segment holds at least one frame"))
}

/// Refuses, with a named error, a data directory written in an older
/// format: before the hash chain (frame and metadata version 1), or with
/// the chain over whole payloads (frame version 2; its metadata file is
/// version 2 as now, so only the first segment tells).
fn check_format<D: Disk>(disk: &D, firsts: &[u64]) -> Result<()> {
    let mut probes = vec![(meta::NAME.to_owned(), 12usize)];
    probes.extend(firsts.first().map(|&first| (segment::name(first), 8usize)));
    for (name, at) in probes {
        let file = match disk.open(&name) {
            Ok(file) => file,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
            Err(error) => return Err(Error::io("open", &name, error)),
        };
        let size = file.size().map_err(|e| Error::io("size", &name, e))?;
        if size <= at as u64 {
            continue;
        }
        let mut version = [0u8; 1];
        file.read_at(at as u64, &mut version)
            .map_err(|e| Error::io("read", &name, e))?;
        if version[0] == super::frame::VERSION_UNCHAINED {
            return Err(Error::FormatUnchained { file: name });
        }
        if name != meta::NAME && version[0] == super::frame::VERSION_WHOLE_PAYLOAD {
            return Err(Error::FormatWholePayload { file: name });
        }
    }
    Ok(())
}

fn remove_leftovers<D: Disk>(
    disk: &D,
    names: &[String],
    report: &mut RecoveryReport,
) -> Result<()> {
    for name in names {
        // A spare is never adopted: its name was never made durable, and
        // the next one is written once the log is written to again.
        if segment::is_tmp_name(name) || name == meta::NAME_TMP || name == super::spare::NAME {
            if !report.read_only {
                disk.remove(name)
                    .map_err(|e| Error::io("remove", name, e))?;
            }
            report.removed.push(name.clone());
        }
    }
    Ok(())
}

fn load_meta<D: Disk>(disk: &D, firsts: &[u64], access: Access) -> Result<Meta> {
    match meta::load(disk)? {
        Some(meta) => Ok(meta),
        None if firsts.is_empty() => {
            let meta = Meta::default();
            if access == Access::ReadWrite {
                meta::store(disk, &meta)?;
            }
            Ok(meta)
        }
        None => {
            let what = "log.meta is missing but segment files exist".to_owned();
            Err(Error::corruption(
                meta::NAME,
                0,
                None,
                CorruptionReason::Layout(what),
            ))
        }
    }
}

/// Removes sealed segments wholly below the purge point: a purge that
/// crashed after raising the point in `log.meta`.
fn remove_purged<D: Disk>(
    disk: &D,
    firsts: &mut Vec<u64>,
    purged_next: u64,
    report: &mut RecoveryReport,
) -> Result<()> {
    let purged = firsts
        .windows(2)
        .take_while(|pair| pair[1] <= purged_next)
        .count();
    for first in firsts.drain(..purged) {
        let name = segment::name(first);
        if !report.read_only {
            disk.remove(&name)
                .map_err(|e| Error::io("remove", &name, e))?;
        }
        report.removed.push(name);
    }
    if purged > 0 && !report.read_only {
        disk.sync_dir()
            .map_err(|e| Error::io("sync_dir", "data directory", e))?;
    }
    Ok(())
}

/// Verifies every sealed segment; at the first damage, removes every later
/// segment so that the damaged one becomes the tail and is cut there.
fn repair_sealed<D: Disk>(
    disk: &D,
    firsts: &mut Vec<u64>,
    report: &mut RecoveryReport,
) -> Result<()> {
    for position in 0..firsts.len().saturating_sub(1) {
        let name = segment::name(firsts[position]);
        let file = disk.open(&name).map_err(|e| Error::io("open", &name, e))?;
        let loaded = super::SealedView::load(&file, &name, firsts[position], firsts[position + 1]);
        let corruption = match loaded {
            Ok(_) => continue,
            Err(Error::Corruption(corruption)) => *corruption,
            Err(other) => return Err(other),
        };
        let mut repair = Repair {
            corruption,
            segments_removed: Vec::new(),
            bytes_dropped: 0,
        };
        for first in firsts.drain(position + 1..).rev() {
            let name = segment::name(first);
            let file = disk.open(&name).map_err(|e| Error::io("open", &name, e))?;
            repair.bytes_dropped += file.size().map_err(|e| Error::io("size", &name, e))?;
            disk.remove(&name)
                .map_err(|e| Error::io("remove", &name, e))?;
            repair.segments_removed.push(name);
        }
        disk.sync_dir()
            .map_err(|e| Error::io("sync_dir", "data directory", e))?;
        report.repair = Some(repair);
        return Ok(());
    }
    Ok(())
}

/// Opens and recovers the last segment, creating one if there is none or
/// if a purge past the end left it wholly purged. Returns the file, its
/// frames, and its capacity (see `Active::capacity`).
fn open_tail<D: Disk>(
    disk: &D,
    firsts: &mut Vec<u64>,
    meta: &Meta,
    mode: RecoveryMode,
    report: &mut RecoveryReport,
) -> Result<(D::File, Scan, u64)> {
    if let Some(&first) = firsts.last() {
        let name = segment::name(first);
        let file = disk.open(&name).map_err(|e| Error::io("open", &name, e))?;
        let (scan, capacity) = recover_tail(&file, &name, first, mode, report)?;
        if firsts.len() > 1 || scan.next_index >= meta.purged_next {
            return Ok((file, scan, capacity));
        }
        // The only segment ends below the purge point: a purge past the end
        // crashed before its new segment existed.
        if report.read_only {
            return Err(Error::ReadOnly {
                what: format!(
                    "finish a purge past the end of the log (its only segment {name} ends \
                     below the purge point {})",
                    meta.purged_next
                ),
            });
        }
        drop(file);
        disk.remove(&name)
            .map_err(|e| Error::io("remove", &name, e))?;
        report.removed.push(name);
        firsts.clear();
    }
    let first = meta.purged_next;
    let name = segment::name(first);
    if report.read_only {
        return Err(Error::ReadOnly {
            what: format!("create its first segment {name}: the directory holds no log yet"),
        });
    }
    let file = disk
        .create(&name)
        .map_err(|e| Error::io("create", &name, e))?;
    disk.sync_dir()
        .map_err(|e| Error::io("sync_dir", &name, e))?;
    firsts.push(first);
    let scan = Scan {
        next_index: first,
        ..Scan::default()
    };
    Ok((file, scan, 0))
}

/// Scans the tail segment; cuts a torn tail; refuses (or, in repair mode,
/// cuts) damage that a later frame proves was acknowledged. Syncs the
/// result, so everything left is durable. Returns the frames found and the
/// segment's capacity: its length when the frames end in zeros up to the
/// end of the file (a segment made from a spare), else 0.
fn recover_tail<F: DiskFile>(
    file: &F,
    name: &str,
    first: u64,
    mode: RecoveryMode,
    report: &mut RecoveryReport,
) -> Result<(Scan, u64)> {
    let size = file.size().map_err(|e| Error::io("size", name, e))?;
    let mut bytes = vec![0; usize::try_from(size).expect("segment fits memory")];
    file.read_at(0, &mut bytes)
        .map_err(|e| Error::io("read", name, e))?;
    let mut scan = segment::scan(&bytes, first);
    let mut capacity = 0;
    if scan.stop.is_some() && super::spare::all_zero(&bytes[scan.end as usize..]) {
        // Zeros to the end of the file: the unwritten rest of a segment
        // made from a spare, or writes a crash lost whole. Nothing was
        // written there that a crash could have torn, so it is a clean end.
        scan.stop = None;
        capacity = size;
    }
    if let Some(reason) = scan.stop {
        let bad_index = scan.next_index;
        let later = segment::later_frames(&bytes, scan.end, bad_index);
        let acknowledged = later.durable_next_max > bad_index
            || !segment::torn_explainable(&bytes, scan.end, later.successor);
        if acknowledged && mode != RecoveryMode::Repair {
            let reason = CorruptionReason::AcknowledgedFrame(reason);
            return Err(Error::corruption(name, scan.end, Some(bad_index), reason));
        }
        if !report.read_only {
            file.set_len(scan.end)
                .map_err(|e| Error::io("set_len", name, e))?;
        }
        let cut = size - scan.end;
        if acknowledged || report.repair.is_some() {
            record_repair(report, name, &scan, reason, cut);
        } else {
            if report.read_only {
                tracing::info!(file = name, offset = scan.end, bytes = cut, %reason, "read-only: a torn tail (or a tail being written) is left as it is");
            } else {
                tracing::warn!(file = name, offset = scan.end, bytes = cut, %reason, "cut a torn tail");
            }
            report.torn_tail = Some(TornTail {
                file: name.to_owned(),
                offset: scan.end,
                index: bad_index,
                reason,
                bytes_cut: cut,
                frames_dropped: later.frames,
            });
        }
    }
    if !report.read_only {
        file.sync_data()
            .map_err(|e| Error::io("sync_data", name, e))?;
    }
    Ok((scan, capacity))
}

fn record_repair(
    report: &mut RecoveryReport,
    name: &str,
    scan: &Scan,
    reason: FrameError,
    cut: u64,
) {
    let corruption = Corruption {
        file: name.to_owned(),
        offset: scan.end,
        index: Some(scan.next_index),
        reason: CorruptionReason::Frame(reason),
    };
    tracing::warn!(%corruption, bytes = cut, "repair cut the log");
    let repair = report.repair.get_or_insert_with(|| Repair {
        corruption,
        segments_removed: Vec::new(),
        bytes_dropped: 0,
    });
    repair.bytes_dropped += cut;
}

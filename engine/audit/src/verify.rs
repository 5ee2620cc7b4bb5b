//! The offline verifier: walks a data directory and checks every byte of
//! every file it holds, the hash chain, and every signature.
//!
//! What it checks, file by file:
//! - segments (`*.seg`): every frame's CRC, index continuity inside and
//!   across files, each frame's chain hash recomputed from its bytes, each
//!   link against the previous frame's hash, the first retained frame's
//!   link against the purge anchor in `log.meta`, and every entry's payload
//!   decoding as a Raft entry (event batches with their own checksums),
//!   every producer signature on an event (`audit::signing`);
//!   admin entries (the admin trail) counted, the erasures they carry
//!   checked as any erasure;
//!   every checkpoint entry's signature, its signer (against the trusted
//!   keys), and its head against the chain hash recomputed at its index;
//! - `log.meta`: checksum, version, bounds, the anchor;
//! - `state.snapshot`: checksum and decoding; the log id it covers must be
//!   in the log with the same term (the snapshot is derived from the log);
//! - key files (`*.key.pem`, `*.pub.pem`): parse, and a public key file
//!   matches its secret key file; their keys are trusted signers;
//! - leftovers of interrupted writes (`*.tmp`) are listed (open removes
//!   them); any other file is a finding: nothing in the directory goes
//!   unchecked.
//!
//! The walk stops at the first bad record, since nothing after it can be
//! trusted to be where it claims, and names it: file, byte offset, index.
//! The other files are still checked, and every finding is returned, bad
//! records first. There are no derived files to rebuild today (the
//! partition index lives in the snapshot, which is checked against the
//! log); a derived file added later must be checked here too.
//!
//! Reading goes through [`Disk`]; [`verify`] opens a directory with
//! [`OsDisk`]. The verifier never writes.

use std::fmt;
use std::path::Path;

use bytes::Bytes;

use super::checkpoint::Checkpoint;
use super::keys::{self, KeyPair};
use super::signing;
use crate::VerifySignature as _;
use sluice_core::io::os::OsDisk;
use sluice_core::io::{Disk, DiskFile};
use sluice_core::log::frame::{self, FrameError, GENESIS, Hash};
use sluice_core::log::{Record, meta, segment};
use sluice_core::raft::codec;
use sluice_model::constants::FRAME_HEADER_SIZE;
use sluice_model::state::Op;

/// What the verifier is told besides the directory.
#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    /// Public keys (SEC1) trusted to sign checkpoints and erasures, on top
    /// of the key files found in the directory.
    pub trusted_keys: Vec<Vec<u8>>,
}

/// Where the chain of the retained log starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ChainStart {
    /// Nothing was ever purged: the first frame links to GENESIS.
    #[default]
    Genesis,
    /// The first retained frame links to the anchor in `log.meta`.
    Anchored,
    /// No anchor is known (a snapshot was installed past the log's end):
    /// the first frame's link is trusted as it stands.
    Trusted,
}

/// What an intact directory holds; printed by `sluice verify`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Every file checked, by name.
    pub files: Vec<String>,
    /// Segment files.
    pub segments: u64,
    /// Bytes of frames walked in segments.
    pub segment_bytes: u64,
    /// Zeros after the last frame of the active segment (made from a
    /// spare) and in a spare segment being written: checked to be zeros.
    pub zero_bytes: u64,
    /// Frames (Raft entries) checked: CRC, chain hash, link.
    pub records: u64,
    /// Of those, event batches (publishes and transactions).
    pub batches: u64,
    /// Events in those batches.
    pub events: u64,
    /// Checkpoint entries.
    pub checkpoints: u64,
    /// Erasure tombstones (their signatures count in `signatures`), also
    /// those an admin entry carries.
    pub erasures: u64,
    /// Admin entries: the admin trail (`sluice audit export --admin`).
    pub admin_entries: u64,
    /// Signatures verified: checkpoints' and producers'.
    pub signatures: u64,
    /// Of those, producer signatures on events.
    pub producer_signatures: u64,
    /// Checkpoints whose index is purged, so their head cannot be
    /// recomputed (their signature is still checked).
    pub checkpoints_unrecomputable: u64,
    /// Signatures by keys no trusted key file or option names.
    pub signers_unpinned: u64,
    /// First and next index of the frames found.
    pub first_index: u64,
    /// Index after the last frame.
    pub next_index: u64,
    /// The chain hash of the last frame.
    pub head: Hash,
    /// How the chain starts.
    pub chain_start: ChainStart,
    /// Key files checked.
    pub key_files: u64,
    /// Leftovers of interrupted writes, not checked (open removes them).
    pub leftovers: Vec<String>,
}

/// One problem, located as precisely as the file allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The file.
    pub file: String,
    /// Byte offset in it, where meaningful.
    pub offset: Option<u64>,
    /// The log index of the record, where meaningful.
    pub index: Option<u64>,
    /// What is wrong.
    pub reason: FindingReason,
}

/// What is wrong with a file or record.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FindingReason {
    /// The frame fails its own checks (size, version, checksum, index).
    Frame(FrameError),
    /// The frame's bytes do not hash to the chain hash it stores: its
    /// payload or a header field was changed (and its CRC recomputed).
    HashMismatch {
        /// As stored.
        stored: Hash,
        /// As recomputed.
        computed: Hash,
    },
    /// The frame does not link to the frame before it: a record was
    /// removed, inserted or reordered, or the previous one rewritten.
    LinkMismatch {
        /// The link stored in this frame.
        stored: Hash,
        /// The previous frame's chain hash.
        expected: Hash,
    },
    /// The frame carries no chain (written with `ChainMode::Off`).
    Unchained,
    /// The chain does not meet the purge anchor in `log.meta`.
    AnchorMismatch {
        /// The anchor.
        anchor: Hash,
        /// The chain hash found.
        found: Hash,
    },
    /// The frame is intact but its payload is not a valid entry.
    Entry(String),
    /// A checkpoint or erasure entry does not verify.
    Checkpoint(String),
    /// Segment files do not form one log.
    Layout(String),
    /// `log.meta` is damaged.
    Meta(String),
    /// `state.snapshot` is damaged or does not match the log.
    Snapshot(String),
    /// A key file is damaged.
    Key(String),
    /// A file no part of sluice writes.
    UnknownFile,
    /// The spare segment (`log.spare`), which only ever holds zeros, holds
    /// data at this offset.
    SpareNotZero,
    /// The file could not be read.
    Io(String),
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(offset) = self.offset {
            write!(f, " at byte offset {offset}")?;
        }
        if let Some(index) = self.index {
            write!(f, " (record index {index})")?;
        }
        f.write_str(": ")?;
        match &self.reason {
            FindingReason::Frame(error) => write!(f, "{error}"),
            FindingReason::HashMismatch { stored, computed } => write!(
                f,
                "the record's bytes hash to {}, but it stores {}: its contents were changed",
                hex(computed),
                hex(stored)
            ),
            FindingReason::LinkMismatch { stored, expected } => write!(
                f,
                "the record links to {}, but the record before it hashes to {}: a record \
                 was removed, inserted or reordered, or the one before was rewritten",
                hex(stored),
                hex(expected)
            ),
            FindingReason::Unchained => {
                write!(
                    f,
                    "the record carries no hash chain (written with ChainMode::Off)"
                )
            }
            FindingReason::AnchorMismatch { anchor, found } => write!(
                f,
                "the chain reaches the purge point at {}, but log.meta anchors it at {}",
                hex(found),
                hex(anchor)
            ),
            FindingReason::Entry(what)
            | FindingReason::Checkpoint(what)
            | FindingReason::Layout(what)
            | FindingReason::Meta(what)
            | FindingReason::Snapshot(what)
            | FindingReason::Key(what)
            | FindingReason::Io(what) => f.write_str(what),
            FindingReason::UnknownFile => f.write_str(
                "not a file sluice writes; remove it or move it out of the data directory",
            ),
            FindingReason::SpareNotZero => f.write_str(
                "the spare segment holds data, but sluice only ever writes zeros into it",
            ),
        }
    }
}

/// Why verification failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// Something in the directory is damaged or was changed. `findings[0]`
    /// is the first bad record (or file).
    #[error("verification failed: {}", .findings[0])]
    Tampered {
        /// Every finding, first bad record first.
        findings: Vec<Finding>,
        /// What was checked.
        report: Box<Report>,
    },
    /// The directory cannot be listed.
    #[error("cannot read the data directory {dir}: {source}")]
    Io {
        /// The directory.
        dir: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Verifies the data directory `dir` (see the module docs).
pub fn verify(dir: impl AsRef<Path>, options: &VerifyOptions) -> Result<Report, VerifyError> {
    let dir = dir.as_ref();
    if !dir.is_dir() {
        return Err(VerifyError::Io {
            dir: dir.display().to_string(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "not a directory"),
        });
    }
    // Read-only: verifying never changes the directory, and works beside
    // the node that writes it.
    let disk = OsDisk::open_read_only(dir).map_err(|source| VerifyError::Io {
        dir: dir.display().to_string(),
        source,
    })?;
    verify_disk(&disk, options)
}

/// [`verify`] over any [`Disk`].
pub fn verify_disk<D: Disk>(disk: &D, options: &VerifyOptions) -> Result<Report, VerifyError> {
    verify_disk_until(disk, options, None)
}

/// [`verify_disk`] of the records up to log index `until` (all of them
/// when `None`): what a running node has applied, so that the frames it is
/// appending meanwhile, which a reader may see half written, are not read.
/// A snapshot that covers more than `until` is not judged.
pub fn verify_disk_until<D: Disk>(
    disk: &D,
    options: &VerifyOptions,
    until: Option<u64>,
) -> Result<Report, VerifyError> {
    let mut names = disk.list().map_err(|source| VerifyError::Io {
        dir: "data directory".into(),
        source,
    })?;
    names.sort();
    let mut walk = Walk {
        report: Report::default(),
        findings: Vec::new(),
        trusted: options.trusted_keys.clone(),
        hashes: Vec::new(),
        terms: Vec::new(),
        checkpoints: Vec::new(),
        erasure_signers: Vec::new(),
        until,
        bounded: false,
    };
    let mut firsts = Vec::new();
    let mut snapshot = None;
    let mut keys = Vec::new();
    for name in &names {
        if let Some(first) = segment::parse_name(name) {
            firsts.push(first);
        } else if name == sluice_core::log::SPARE_NAME {
            walk.check_spare(disk, name);
        } else if name.ends_with(".tmp") {
            walk.report.leftovers.push(name.clone());
            continue;
        } else if name == meta::NAME {
        } else if name == sluice_core::raft::state_machine::SNAPSHOT_FILE_NAME {
            snapshot = Some(name.clone());
        } else if name.ends_with(".pem") {
            keys.push(name.clone());
        } else {
            walk.finding(name, None, None, FindingReason::UnknownFile);
            continue;
        }
        walk.report.files.push(name.clone());
    }
    walk.check_keys(disk, &keys);
    let meta = walk.load_meta(disk, !firsts.is_empty());
    walk.check_segments(disk, &firsts, meta.as_ref());
    walk.check_checkpoints();
    walk.check_erasure_signers();
    if let Some(name) = snapshot {
        walk.check_snapshot(disk, &name);
    }
    if walk.findings.is_empty() {
        Ok(walk.report)
    } else {
        // Bad records first, in log order, then whole-file findings: the
        // message names the first bad record whenever there is one.
        walk.findings.sort_by_key(|f| f.index.is_none());
        Err(VerifyError::Tampered {
            findings: walk.findings,
            report: Box::new(walk.report),
        })
    }
}

struct Walk {
    report: Report,
    findings: Vec<Finding>,
    trusted: Vec<Vec<u8>>,
    /// Chain hash and term of every frame from `report.first_index`.
    hashes: Vec<Hash>,
    terms: Vec<u64>,
    /// Checkpoints found, with where they were found.
    checkpoints: Vec<(String, u64, u64, Checkpoint)>,
    /// Signers of erasures, with where they were found.
    erasure_signers: Vec<(String, u64, u64, Vec<u8>)>,
    /// The last index to read, if bounded.
    until: Option<u64>,
    /// Whether the walk stopped at `until` with records left after it.
    bounded: bool,
}

impl Walk {
    fn finding(
        &mut self,
        file: &str,
        offset: Option<u64>,
        index: Option<u64>,
        reason: FindingReason,
    ) {
        self.findings.push(Finding {
            file: file.to_owned(),
            offset,
            index,
            reason,
        });
    }

    fn read_file<D: Disk>(&mut self, disk: &D, name: &str) -> Option<Vec<u8>> {
        let read = disk.open(name).and_then(|file| {
            let size = file.size()?;
            let mut bytes = vec![0; usize::try_from(size).expect("file fits memory")];
            file.read_at(0, &mut bytes)?;
            Ok(bytes)
        });
        match read {
            Ok(bytes) => Some(bytes),
            Err(error) => {
                self.finding(name, None, None, FindingReason::Io(error.to_string()));
                None
            }
        }
    }

    fn check_keys<D: Disk>(&mut self, disk: &D, names: &[String]) {
        let mut secrets = Vec::new();
        for name in names {
            let Some(bytes) = self.read_file(disk, name) else {
                continue;
            };
            self.report.key_files += 1;
            let text = String::from_utf8_lossy(&bytes);
            let parsed = if let Some(stem) = name.strip_suffix(".key.pem") {
                KeyPair::from_pem(&text, keys::DISTID_DEFAULT, name)
                    .map(|key| (stem.to_owned(), true, key.public_key()))
            } else if let Some(stem) = name.strip_suffix(".pub.pem") {
                keys::public_key_from_pem(&text, name).map(|key| (stem.to_owned(), false, key))
            } else {
                self.finding(name, None, None, FindingReason::UnknownFile);
                continue;
            };
            match parsed {
                Ok((stem, secret, public)) => {
                    secrets.push((stem, secret, public.clone(), name.clone()));
                    self.trusted.push(public);
                }
                Err(error) => {
                    self.finding(name, Some(0), None, FindingReason::Key(error.to_string()))
                }
            }
        }
        // A public key file must match the secret key file of its name.
        for (stem, secret, public, name) in &secrets {
            if *secret {
                continue;
            }
            let pair = secrets
                .iter()
                .find(|(s, is_secret, ..)| s == stem && *is_secret);
            if let Some((.., derived, secret_name)) = pair {
                if derived != public {
                    let what =
                        format!("the public key does not match the secret key in {secret_name}");
                    self.finding(name, Some(0), None, FindingReason::Key(what));
                }
            }
        }
    }

    fn load_meta<D: Disk>(&mut self, disk: &D, segments_exist: bool) -> Option<meta::Meta> {
        let bytes = match disk.open(meta::NAME) {
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                if segments_exist {
                    let what = "log.meta is missing but segment files exist".to_owned();
                    self.finding(meta::NAME, None, None, FindingReason::Meta(what));
                }
                return None;
            }
            _ => self.read_file(disk, meta::NAME)?,
        };
        match meta::Meta::decode(&bytes) {
            Ok(meta) => Some(meta),
            Err(what) => {
                self.finding(meta::NAME, Some(0), None, FindingReason::Meta(what));
                None
            }
        }
    }

    fn check_segments<D: Disk>(&mut self, disk: &D, firsts: &[u64], meta: Option<&meta::Meta>) {
        let purged_next = meta.map_or(0, |m| m.purged_next);
        let anchor = meta.and_then(|m| m.anchor);
        let mut chain = Chain {
            expected_index: firsts.first().copied().unwrap_or(purged_next),
            previous: None,
            purged_next,
            anchor,
        };
        self.report.first_index = chain.expected_index;
        for (position, &first) in firsts.iter().enumerate() {
            let name = segment::name(first);
            self.report.segments += 1;
            if first != chain.expected_index {
                let what = format!(
                    "the segment starts at index {first}, but the log before it ends at index {}",
                    chain.expected_index
                );
                self.finding(
                    &name,
                    Some(0),
                    Some(chain.expected_index),
                    FindingReason::Layout(what),
                );
                return;
            }
            // Sealed segments are never written or shrunk (a truncation
            // into one renames a new file over it), so mapping them is safe
            // even beside a running node; the last one is read instead.
            let sealed = position + 1 < firsts.len();
            let bytes = if sealed {
                match disk.open(&name).and_then(|file| file.map()) {
                    Ok(map) => map,
                    Err(error) => {
                        self.finding(&name, None, None, FindingReason::Io(error.to_string()));
                        return;
                    }
                }
            } else {
                let Some(bytes) = self.read_file(disk, &name) else {
                    return;
                };
                Bytes::from(bytes)
            };
            if !self.walk_segment(&name, bytes, sealed, &mut chain) {
                if self.bounded {
                    break;
                }
                return;
            }
        }
        self.report.next_index = chain.expected_index;
        self.report.head = chain.previous.unwrap_or(anchor.unwrap_or(GENESIS));
        if chain.previous.is_none() {
            return;
        }
        if let Some(anchor) = anchor {
            if purged_next == chain.expected_index && self.report.head != anchor {
                let reason = FindingReason::AnchorMismatch {
                    anchor,
                    found: self.report.head,
                };
                self.finding(meta::NAME, Some(32), None, reason);
            }
        }
    }

    /// Checks that the spare segment holds zeros only.
    fn check_spare<D: Disk>(&mut self, disk: &D, name: &str) {
        let Some(bytes) = self.read_file(disk, name) else {
            return;
        };
        match bytes.iter().position(|&b| b != 0) {
            Some(at) => self.finding(name, Some(at as u64), None, FindingReason::SpareNotZero),
            None => self.report.zero_bytes += bytes.len() as u64,
        }
    }

    /// Walks one segment's frames; false at the first bad one. The active
    /// (last) segment may end in zeros (made from a spare): a clean end.
    fn walk_segment(&mut self, name: &str, bytes: Bytes, sealed: bool, chain: &mut Chain) -> bool {
        let mut offset = 0usize;
        while offset < bytes.len() {
            let index = chain.expected_index;
            if self.until.is_some_and(|until| index > until) {
                self.bounded = true;
                return false;
            }
            let at = Some(offset as u64);
            if !sealed && sluice_core::log::all_zero(&bytes[offset..]) {
                self.report.zero_bytes += (bytes.len() - offset) as u64;
                break;
            }
            let header = match frame::decode(&bytes[offset..]) {
                Ok(header) if header.index == index => header,
                Ok(header) => {
                    let error = FrameError::Index {
                        expected: index,
                        found: header.index,
                    };
                    self.finding(name, at, Some(index), FindingReason::Frame(error));
                    return false;
                }
                Err(error) => {
                    self.finding(name, at, Some(index), FindingReason::Frame(error));
                    return false;
                }
            };
            let size = header.size as usize;
            if let Err(reason) = chain.check(&header, &bytes[offset..offset + size]) {
                self.finding(name, at, Some(index), reason);
                return false;
            }
            if chain.previous.is_none() {
                self.report.chain_start = chain.start(&header);
            }
            chain.previous = Some(header.hash);
            chain.expected_index += 1;
            self.hashes.push(header.hash);
            self.terms.push(header.term);
            self.report.records += 1;
            let record = Record {
                index,
                term: header.term,
                kind: header.kind,
                timestamp_ms: header.timestamp_ms,
                hash: header.hash,
                payload: bytes.slice(offset + FRAME_HEADER_SIZE..offset + size),
            };
            if let Err(what) = self.entry(name, offset as u64, &record) {
                self.finding(name, at, Some(index), FindingReason::Entry(what));
                return false;
            }
            offset += size;
            self.report.segment_bytes += size as u64;
        }
        true
    }

    /// Decodes an entry and counts what it holds.
    fn entry(&mut self, name: &str, offset: u64, record: &Record) -> Result<(), String> {
        let entry = codec::decode(record).map_err(|e| e.to_string())?;
        let openraft::EntryPayload::Normal(command) = entry.payload else {
            return Ok(());
        };
        if let Op::Admin { .. } = command.op {
            self.report.admin_entries += 1;
        }
        match command.op.applied() {
            Op::Publish(batch) | Op::Transaction { events: batch, .. } => {
                self.report.batches += 1;
                self.report.events += batch.len() as u64;
                for (position, view) in batch.iter().enumerate() {
                    let signed = view.user_headers().any(|(name, _)| {
                        name == signing::HEADER_SIGNATURE || name == signing::HEADER_SIGNER
                    });
                    if !signed {
                        continue;
                    }
                    signing::check_view(&view)
                        .map_err(|e| format!("event {position} of the batch: {e}"))?;
                    self.report.signatures += 1;
                    self.report.producer_signatures += 1;
                }
            }
            Op::Checkpoint(checkpoint) => {
                self.checkpoints
                    .push((name.to_owned(), offset, record.index, checkpoint.clone()));
            }
            Op::Erase(erasure) => {
                self.report.erasures += 1;
                erasure
                    .verify_signature()
                    .map_err(|e| format!("erasure of subject {:?}: {e}", erasure.subject))?;
                self.report.signatures += 1;
                self.erasure_signers.push((
                    name.to_owned(),
                    offset,
                    record.index,
                    erasure.public_key.clone(),
                ));
            }
            _ => {}
        }
        Ok(())
    }

    /// Erasures must be signed by a trusted key, like checkpoints.
    fn check_erasure_signers(&mut self) {
        for (name, offset, index, public_key) in std::mem::take(&mut self.erasure_signers) {
            if self.trusted.is_empty() {
                self.report.signers_unpinned += 1;
            } else if !self.trusted.contains(&public_key) {
                let what = format!(
                    "erasure is signed by key {}, which no trusted key names",
                    keys::fingerprint(&public_key)
                );
                self.finding(
                    &name,
                    Some(offset),
                    Some(index),
                    FindingReason::Checkpoint(what),
                );
            }
        }
    }

    fn check_checkpoints(&mut self) {
        for (name, offset, index, checkpoint) in std::mem::take(&mut self.checkpoints) {
            self.report.checkpoints += 1;
            let at = (Some(offset), Some(index));
            let fail = |walk: &mut Walk, what: String| {
                walk.finding(&name, at.0, at.1, FindingReason::Checkpoint(what));
            };
            if let Err(error) = checkpoint.verify_signature() {
                fail(
                    self,
                    format!("checkpoint of index {}: {error}", checkpoint.index),
                );
                continue;
            }
            self.report.signatures += 1;
            if self.trusted.is_empty() {
                self.report.signers_unpinned += 1;
            } else if !self.trusted.contains(&checkpoint.public_key) {
                let what = format!(
                    "checkpoint of index {} is signed by key {}, which no trusted key names",
                    checkpoint.index,
                    keys::fingerprint(&checkpoint.public_key)
                );
                fail(self, what);
                continue;
            }
            if checkpoint.index >= index {
                let what = format!(
                    "checkpoint signs index {}, not before itself",
                    checkpoint.index
                );
                fail(self, what);
                continue;
            }
            let Some(position) = checkpoint.index.checked_sub(self.report.first_index) else {
                self.report.checkpoints_unrecomputable += 1;
                continue;
            };
            let recomputed = self.hashes[position as usize];
            if recomputed != checkpoint.head {
                let what = format!(
                    "checkpoint signs chain head {} at index {}, but the log hashes to {} there: \
                     a record at or before index {} was changed and the chain recomputed",
                    hex(&checkpoint.head),
                    checkpoint.index,
                    hex(&recomputed),
                    checkpoint.index
                );
                fail(self, what);
            }
        }
    }

    fn check_snapshot<D: Disk>(&mut self, disk: &D, name: &str) {
        let Some(bytes) = self.read_file(disk, name) else {
            return;
        };
        let covered = match sluice_core::raft::state_machine::check_snapshot(&bytes) {
            Ok(covered) => covered,
            Err(error) => {
                self.finding(
                    name,
                    Some(0),
                    None,
                    FindingReason::Snapshot(error.to_string()),
                );
                return;
            }
        };
        let (Some((term, index)), chain_head) = covered else {
            return;
        };
        if self.until.is_some_and(|until| index > until) {
            return;
        }
        let report = &self.report;
        let what = if index >= report.next_index {
            format!(
                "covers index {index}, past the log's end ({})",
                report.next_index
            )
        } else if index >= report.first_index {
            let position = (index - report.first_index) as usize;
            let (stored, hash) = (self.terms[position], self.hashes[position]);
            match chain_head {
                _ if stored != term => format!(
                    "covers index {index} at term {term}, but the log holds term {stored} there"
                ),
                Some(head) if head != hash => format!(
                    "records chain hash {} at index {index}, but the log hashes to {} there",
                    hex(&head),
                    hex(&hash)
                ),
                _ => return,
            }
        } else {
            return;
        };
        self.finding(name, Some(0), Some(index), FindingReason::Snapshot(what));
    }
}

/// The chain as the walk has seen it so far.
struct Chain {
    expected_index: u64,
    previous: Option<Hash>,
    purged_next: u64,
    anchor: Option<Hash>,
}

impl Chain {
    /// Checks one frame's chain fields.
    fn check(&self, header: &frame::Header, bytes: &[u8]) -> Result<(), FindingReason> {
        if header.flags & frame::FLAG_CHAINED == 0 {
            return Err(FindingReason::Unchained);
        }
        let computed = frame::recompute_hash(header, bytes);
        if computed != header.hash {
            return Err(FindingReason::HashMismatch {
                stored: header.hash,
                computed,
            });
        }
        let expected = match self.previous {
            Some(previous) => Some(previous),
            None if header.index == self.purged_next => Some(self.anchor.unwrap_or(GENESIS))
                .filter(|_| self.anchor.is_some() || self.purged_next == 0),
            None => None,
        };
        if let Some(expected) = expected {
            if header.link != expected {
                return Err(FindingReason::LinkMismatch {
                    stored: header.link,
                    expected,
                });
            }
        }
        // Frames below the purge point may still lie in the first segment:
        // the last purged one must hash to the anchor.
        if let Some(anchor) = self.anchor {
            if header.index + 1 == self.purged_next && header.hash != anchor {
                return Err(FindingReason::AnchorMismatch {
                    anchor,
                    found: header.hash,
                });
            }
        }
        Ok(())
    }

    fn start(&self, header: &frame::Header) -> ChainStart {
        if header.index == 0 && self.purged_next == 0 {
            ChainStart::Genesis
        } else if self.anchor.is_some() && header.index <= self.purged_next {
            ChainStart::Anchored
        } else if header.link == GENESIS && self.purged_next == 0 {
            ChainStart::Genesis
        } else {
            ChainStart::Trusted
        }
    }
}

fn hex(hash: &Hash) -> String {
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

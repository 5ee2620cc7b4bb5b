//! `sluice backup`: a consistent copy of a data directory, also of a node
//! that is running.
//!
//! A running node changes its directory in three ways, and the copy holds
//! against each:
//! - it appends to the active segment: the copy takes the bytes there when
//!   it reads them; a frame half written then is a torn tail, which the
//!   copy's own recovery cuts (an acknowledged event was synced before it
//!   was acknowledged, so it is whole in the file by then);
//! - it rolls to a new segment: a segment made after the listing is simply
//!   not in the copy, which is a prefix of the log;
//! - it replaces `log.meta` (a vote, a purge) and `state.snapshot`, and
//!   removes purged segments: `log.meta` is read before and after the
//!   segments, and an attempt during which it changed, or a segment
//!   vanished, is thrown away and made again.
//!
//! Every copy is then opened as a log (recovery, checksums of the tail):
//! a copy that does not open is thrown away too. The node's `LOCK`, its
//! spare segment and unfinished `*.tmp` files are not copied.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use sluice_core::io::os::{OsClock, OsDisk};
use sluice_core::log::{Log, Options, meta, segment};

use super::Outcome;

/// Attempts before the backup gives up on a node whose log keeps moving
/// under it (a purge or a vote in every attempt).
const BACKUP_ATTEMPTS_MAX: u32 = 5;

/// The state machine's snapshot file, replaced whole by the node.
const SNAPSHOT_FILE: &str = "state.snapshot";

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The data directory to copy (a running node's is fine).
    #[arg(long)]
    data_dir: PathBuf,
    /// Where the copy goes: a directory that does not exist yet, or an
    /// empty one.
    #[arg(long)]
    to: PathBuf,
}

/// Why an attempt was thrown away.
#[derive(Debug)]
enum Attempt {
    /// The node changed its log meanwhile: try again.
    Moved(String),
    /// Reading or writing failed for good.
    Failed(Box<dyn std::error::Error>),
}

impl From<io::Error> for Attempt {
    fn from(error: io::Error) -> Self {
        Attempt::Failed(error.into())
    }
}

pub(crate) fn run(args: Args) -> Outcome {
    if !args.data_dir.join(meta::NAME).is_file() {
        return Err(format!(
            "{} holds no {} : not a Sluice data directory",
            args.data_dir.display(),
            meta::NAME
        )
        .into());
    }
    if args.to.exists() && fs::read_dir(&args.to)?.next().is_some() {
        return Err(format!("{} exists and is not empty", args.to.display()).into());
    }
    let mut last = String::new();
    for attempt in 1..=BACKUP_ATTEMPTS_MAX {
        clear(&args.to)?;
        match copy_once(&args.data_dir, &args.to) {
            Ok(()) => match check(&args.to) {
                Ok(summary) => {
                    println!("{summary} (attempt {attempt})");
                    return Ok(ExitCode::SUCCESS);
                }
                Err(reason) => last = reason,
            },
            Err(Attempt::Moved(reason)) => last = reason,
            Err(Attempt::Failed(error)) => return Err(error),
        }
    }
    Err(format!(
        "no consistent copy of {} in {BACKUP_ATTEMPTS_MAX} attempts; the last: {last}. Try \
         again when the node is less busy, or back up a stopped node",
        args.data_dir.display()
    )
    .into())
}

/// Empties (or makes) the target directory.
fn clear(target: &Path) -> io::Result<()> {
    if target.exists() {
        fs::remove_dir_all(target)?;
    }
    fs::create_dir_all(target)
}

/// One attempt: the metadata, the snapshot, every segment, and the
/// metadata again.
fn copy_once(source: &Path, target: &Path) -> Result<(), Attempt> {
    let meta_before = fs::read(source.join(meta::NAME))?;
    match fs::read(source.join(SNAPSHOT_FILE)) {
        Ok(bytes) => write_synced(&target.join(SNAPSHOT_FILE), &bytes)?,
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => return Err(error.into()),
    }
    let mut segments: Vec<(u64, String)> = fs::read_dir(source)?
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| entry.file_name().into_string().ok())
        .filter_map(|name| segment::parse_name(&name).map(|first| (first, name)))
        .collect();
    segments.sort_unstable();
    for (_, name) in &segments {
        match fs::read(source.join(name)) {
            Ok(bytes) => write_synced(&target.join(name), &bytes)?,
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                return Err(Attempt::Moved(format!(
                    "segment {name} was removed while it was copied (a purge)"
                )));
            }
            Err(error) => return Err(error.into()),
        }
    }
    if fs::read(source.join(meta::NAME))? != meta_before {
        return Err(Attempt::Moved(format!(
            "{} changed while the segments were copied (a vote or a purge)",
            meta::NAME
        )));
    }
    write_synced(&target.join(meta::NAME), &meta_before)?;
    fs::File::open(target)?.sync_all()?;
    Ok(())
}

fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let file = fs::File::create(path)?;
    io::Write::write_all(&mut &file, bytes)?;
    file.sync_all()
}

/// Opens the copy as a log, as a node starting on it would: recovery cuts
/// a torn tail and checks what it keeps. Says what the copy holds.
fn check(target: &Path) -> Result<String, String> {
    let disk = OsDisk::open(target).map_err(|error| format!("the copy does not open: {error}"))?;
    let log = Log::open(disk, Arc::new(OsClock::new()), Options::default())
        .map_err(|error| format!("the copy is not a consistent log: {error}"))?;
    let cut = log
        .recovery_report()
        .torn_tail
        .as_ref()
        .map_or(String::new(), |torn| {
            format!(
                ", a partly written last frame cut ({} bytes)",
                torn.bytes_cut
            )
        });
    Ok(format!(
        "copied log entries {}..{} ({} bytes) to {}{cut}",
        log.first_index(),
        log.next_index(),
        log.size(),
        target.display()
    ))
}

//! The admin trail export: every admin entry of the log (`Op::Admin`: a
//! security change, a topic change or erasure made through a node, a
//! membership change or dead-letter replay recorded before it was made)
//! as one JSON line, in log order. Offline and read only, like the
//! subject export.
//!
//! Each line holds the entry's log index, the leader's time (`at_ms` and
//! `time`, UTC), the principal that asked, what kind of change it is
//! (`security`, `apply` or `record`), the change as text, and its
//! outcome: `applied`, or `refused: ...` when the state machine refused
//! it (a token that does not exist, overlapping tenants...), or null for
//! an entry the snapshot already covers. Each line says whether the
//! verifier vouches for it (`verified`: false at or after its first
//! finding). Outcomes come from replaying the log through
//! `State::apply`, from `state.snapshot` when the log was purged.

use std::io::Write;
use std::path::Path;

use serde_json::json;

use super::export::{
    ExportError, ExportSummary, READ_WINDOW_BYTES, for_each_record, starting_state,
};
use super::verify::{VerifyError, VerifyOptions, verify_disk};
use sluice_core::io::Disk;
use sluice_core::io::os::OsDisk;
use sluice_core::log::Record;
use sluice_core::raft::codec;
use sluice_model::state::{AdminAction, Op, Response};

/// Exports the admin trail of the data directory `dir`; see the module
/// docs.
pub fn export_admin(
    dir: impl AsRef<Path>,
    options: &VerifyOptions,
    out: &mut dyn Write,
) -> Result<ExportSummary, ExportError> {
    let dir = dir.as_ref();
    if !dir.is_dir() {
        return Err(ExportError::Io {
            what: dir.display().to_string(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "not a directory"),
        });
    }
    let disk = OsDisk::open_read_only(dir).map_err(|source| ExportError::Io {
        what: dir.display().to_string(),
        source,
    })?;
    export_admin_disk(&disk, options, out)
}

/// [`export_admin`] over any [`Disk`]; `summary.events` counts the admin
/// entries written.
pub fn export_admin_disk<D: Disk>(
    disk: &D,
    options: &VerifyOptions,
    out: &mut dyn Write,
) -> Result<ExportSummary, ExportError> {
    let (bad_index, first_finding) = match verify_disk(disk, options) {
        Ok(_) => (None, None),
        Err(VerifyError::Tampered { findings, .. }) => {
            let bad = findings.iter().filter_map(|f| f.index).min();
            (Some(bad.unwrap_or(0)), Some(findings[0].to_string()))
        }
        Err(VerifyError::Io { dir, source }) => return Err(ExportError::Io { what: dir, source }),
    };
    let (mut state, covered) = starting_state(disk);
    let mut lines = Vec::new();
    for_each_record(disk, READ_WINDOW_BYTES, |record: &Record| {
        let Ok(entry) = codec::decode(record) else {
            return;
        };
        let openraft::EntryPayload::Normal(command) = entry.payload else {
            return;
        };
        let fresh = covered.is_none_or(|covered| record.index > covered);
        let response = fresh.then(|| state.apply(record.index, &command));
        let Op::Admin { principal, action } = &command.op else {
            return;
        };
        let kind = match action {
            AdminAction::Security(_) => "security",
            AdminAction::Apply(_) => "apply",
            AdminAction::Record(_) => "record",
        };
        let outcome = match response {
            None => None,
            Some(Response::Error(error)) => Some(format!("refused: {error}")),
            Some(Response::Transaction(Err(error))) => Some(format!("refused: {error}")),
            Some(_) => Some("applied".to_owned()),
        };
        lines.push(json!({
            "entry_index": record.index,
            "at_ms": command.timestamp_ms,
            "time": utc(command.timestamp_ms),
            "principal": principal.to_string(),
            "kind": kind,
            "action": action.to_string(),
            "outcome": outcome,
            "verified": bad_index.is_none_or(|bad| record.index < bad),
        }));
    })?;
    for line in &lines {
        serde_json::to_writer(&mut *out, line).map_err(|e| ExportError::Output(e.into()))?;
        out.write_all(b"\n").map_err(ExportError::Output)?;
    }
    Ok(ExportSummary {
        events: lines.len() as u64,
        directory_verified: bad_index.is_none(),
        first_finding,
    })
}

/// `YYYY-MM-DDTHH:MM:SS.fffZ` for milliseconds since the Unix epoch
/// (Howard Hinnant's civil-from-days algorithm).
pub fn utc(ms: u64) -> String {
    let days = ms / 86_400_000;
    let in_day = ms % 86_400_000;
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        in_day / 3_600_000,
        in_day / 60_000 % 60,
        in_day / 1000 % 60,
        in_day % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::utc;

    #[test]
    fn times_print_in_utc() {
        assert_eq!(utc(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(utc(1_700_000_000_500), "2023-11-14T22:13:20.500Z");
        assert_eq!(utc(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(utc(4_107_542_399_999), "2100-02-28T23:59:59.999Z");
    }
}

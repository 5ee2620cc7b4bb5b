//! The audit commands: `sluice verify DIR` (the offline verifier) and
//! `sluice keys gen` (an SM2 key pair in PEM files).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use sluice::audit::{KeyPair, Report, VerifyError, VerifyOptions, keys};

/// `sluice verify`.
#[derive(Debug, Args)]
pub(crate) struct VerifyArgs {
    /// The data directory to check (read only).
    dir: PathBuf,
    /// A public key (PEM) trusted to sign checkpoints, on top of the key
    /// files in the directory; may be repeated.
    #[arg(long = "trust", value_name = "PEM")]
    trust: Vec<PathBuf>,
}

/// `sluice keys`.
#[derive(Debug, Subcommand)]
pub(crate) enum KeysCommand {
    /// Generate an SM2 key pair: NAME.key.pem (PKCS#8, mode 0600) and
    /// NAME.pub.pem (SubjectPublicKeyInfo) in DIR.
    Gen {
        /// Where to write the files.
        #[arg(long, default_value = ".")]
        out: PathBuf,
        /// File name stem.
        #[arg(long, default_value = "node")]
        name: String,
        /// The distinguishing id (GB/T 32918) the key signs with; printed
        /// for reference, it is configured where the key is used.
        #[arg(long, default_value = keys::DISTID_DEFAULT)]
        distid: String,
    },
}

/// Runs `sluice verify`: exit 0 with a summary, or 1 naming the first bad
/// record and listing every finding.
pub(crate) fn verify(args: VerifyArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let mut options = VerifyOptions::default();
    for path in &args.trust {
        let pem = std::fs::read_to_string(path)?;
        options.trusted_keys.push(keys::public_key_from_pem(
            &pem,
            &path.display().to_string(),
        )?);
    }
    let started = std::time::Instant::now();
    match sluice::audit::verify(&args.dir, &options) {
        Ok(report) => {
            print_summary(&args.dir, &report, started.elapsed());
            Ok(ExitCode::SUCCESS)
        }
        Err(VerifyError::Tampered { findings, report }) => {
            eprintln!("TAMPERED: {}", findings[0]);
            for finding in &findings[1..] {
                eprintln!("also: {finding}");
            }
            eprintln!(
                "checked before stopping: {} records in {} segments",
                report.records, report.segments
            );
            Ok(ExitCode::FAILURE)
        }
        Err(error) => Err(error.into()),
    }
}

fn print_summary(dir: &std::path::Path, report: &Report, elapsed: std::time::Duration) {
    let mib = report.segment_bytes as f64 / (1024.0 * 1024.0);
    println!("{}: intact", dir.display());
    println!(
        "  records {} (indexes {}..{}), batches {}, events {}",
        report.records, report.first_index, report.next_index, report.batches, report.events
    );
    println!(
        "  checkpoints {}, signatures checked {}, chain start {:?}",
        report.checkpoints, report.signatures, report.chain_start
    );
    println!(
        "  files {} ({} segments, {:.1} MiB; {} key files), {:.0} MiB/s",
        report.files.len(),
        report.segments,
        mib,
        report.key_files,
        mib / elapsed.as_secs_f64().max(1e-9)
    );
    println!(
        "  chain head {}",
        report
            .head
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    if report.signers_unpinned > 0 {
        println!(
            "  warning: {} signatures are by keys no trusted key names; pass --trust PEM",
            report.signers_unpinned
        );
    }
    if report.checkpoints_unrecomputable > 0 {
        println!(
            "  note: {} checkpoints sign purged indexes; their signatures were checked",
            report.checkpoints_unrecomputable
        );
    }
    for leftover in &report.leftovers {
        println!("  note: {leftover} is a leftover of an interrupted write (removed on open)");
    }
}

/// Runs `sluice keys`.
pub(crate) fn keys(command: KeysCommand) -> Result<ExitCode, Box<dyn std::error::Error>> {
    match command {
        KeysCommand::Gen { out, name, distid } => {
            let key = KeyPair::generate(&distid)?;
            std::fs::create_dir_all(&out)?;
            let secret = out.join(format!("{name}.key.pem"));
            let public = out.join(format!("{name}.pub.pem"));
            write_new(&secret, key.secret_pem().as_bytes(), 0o600)?;
            write_new(&public, key.public_pem().as_bytes(), 0o644)?;
            println!(
                "wrote {} and {} (key {}, distinguishing id {distid:?})",
                secret.display(),
                public.display(),
                keys::fingerprint(&key.public_key())
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Writes a new file (never over an existing one) with `mode`.
fn write_new(path: &std::path::Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

//! The audit commands: `sluice verify DIR` (the offline verifier),
//! `sluice keys gen` (an SM2 key pair in PEM files), `sluice audit export`
//! (a subject's events as JSON lines) and `sluice audit erase` (a signed
//! erasure tombstone): offline on a data directory (`--dir`, an embedded
//! bus for the erasure), or online through running nodes' audit API
//! (`--cluster`, `audit_http`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use sluice_audit::export::parse_time_ms;
use sluice_audit::{ExportQuery, KeyPair, Report, VerifyError, VerifyOptions, keys};

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
    match sluice_audit::verify(&args.dir, &options) {
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
        "  checkpoints {}, erasures {}, admin entries {}, signatures checked {} ({} by producers), chain start {:?}",
        report.checkpoints,
        report.erasures,
        report.admin_entries,
        report.signatures,
        report.producer_signatures,
        report.chain_start
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

/// `sluice audit`.
#[derive(Debug, Subcommand)]
pub(crate) enum AuditCommand {
    /// Write every event of a subject published in [FROM, TO] as JSON
    /// lines: its history in time order (published, appended, each
    /// durable group's deliveries and retries with their errors and final
    /// state, dead letter, replay, commits, erasure) and its verification
    /// status. Read only: from a data directory (`--dir`), or online from
    /// running nodes (`--cluster`), whose export ends with a summary line
    /// the node signs.
    Export {
        /// The data directory.
        #[arg(long, default_value = "./sluice-data")]
        dir: PathBuf,
        #[command(flatten)]
        online: OnlineArgs,
        /// The subject: the `subject` header, else the event key.
        #[arg(long, required_unless_present = "admin")]
        subject: Option<String>,
        /// Instead of a subject's events, the admin trail: one JSON line
        /// per admin change (security, topics, erasures, membership,
        /// dead-letter replays) with its time, principal, action and
        /// outcome, in log order. Offline only (`--dir`).
        #[arg(long, conflicts_with_all = ["subject", "from", "to", "cluster"])]
        admin: bool,
        /// Earliest publish time: ms since the epoch or
        /// `YYYY-MM-DDTHH:MM:SS[.fff]Z` (default: no limit).
        #[arg(long)]
        from: Option<String>,
        /// Latest publish time, same forms; default: no limit.
        #[arg(long)]
        to: Option<String>,
        /// A public key (PEM) trusted to sign checkpoints; may be repeated.
        #[arg(long = "trust", value_name = "PEM")]
        trust: Vec<PathBuf>,
        /// Write here instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Erase a subject: append a signed tombstone, after which reads mask
    /// the subject's payloads. With `--cluster`, a running node signs it
    /// with its key and commits it; with `--dir`, the directory is opened
    /// as an embedded bus (it must not be open elsewhere) and KEY signs.
    Erase {
        /// The data directory.
        #[arg(long, default_value = "./sluice-data")]
        dir: PathBuf,
        #[command(flatten)]
        online: OnlineArgs,
        /// The subject.
        #[arg(long)]
        subject: String,
        /// Why (a ticket, a legal basis).
        #[arg(long, default_value = "")]
        reason: String,
        /// The signer's secret key (PKCS#8 PEM); offline only (a node signs
        /// with its own).
        #[arg(long, value_name = "PEM", conflicts_with = "cluster")]
        key: Option<PathBuf>,
        /// The key's distinguishing id.
        #[arg(long, default_value = keys::DISTID_DEFAULT)]
        distid: String,
    },
}

/// How `audit` commands reach running nodes' audit API.
#[derive(Debug, Args)]
pub(crate) struct OnlineArgs {
    /// Comma-separated HTTP addresses (HOST:PORT, each node's
    /// `--http-listen`) of running nodes, tried in order; instead of
    /// `--dir`.
    #[arg(long, value_name = "ADDRS")]
    cluster: Option<String>,
    /// A bearer token (`sluice-token.…`) to present.
    #[arg(
        long,
        env = "SLUICE_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,
    /// How long a request may take, in seconds.
    #[arg(long, default_value_t = 300, value_name = "SECONDS")]
    timeout: u64,
    /// A directory made by `sluice certs`: HTTPS, trusting its `ca.pem`
    /// and presenting its client certificate if it has one.
    #[arg(long, env = "SLUICE_TLS_DIR", value_name = "DIR")]
    tls_dir: Option<std::path::PathBuf>,
}

impl OnlineArgs {
    fn api(&self) -> Result<Option<crate::audit_http::Api>, Box<dyn std::error::Error>> {
        let Some(cluster) = self.cluster.as_deref() else {
            return Ok(None);
        };
        let timeout = std::time::Duration::from_secs(self.timeout.max(1));
        Ok(Some(crate::audit_http::Api::new(
            cluster,
            self.token.clone(),
            timeout,
            self.tls_dir.as_deref(),
        )?))
    }
}

/// Runs `sluice audit`.
pub(crate) fn audit(command: AuditCommand) -> Result<ExitCode, Box<dyn std::error::Error>> {
    match command {
        AuditCommand::Export {
            dir,
            admin: true,
            trust,
            out,
            ..
        } => export_admin(&dir, &trust, out.as_deref()),
        AuditCommand::Export {
            dir,
            online,
            subject,
            from,
            to,
            trust,
            out,
            admin: false,
        } => {
            let query = ExportQuery {
                subject: subject.ok_or("name the subject to export (--subject), or --admin")?,
                from_ms: match from {
                    Some(from) => parse_time_ms(&from)?,
                    None => 0,
                },
                to_ms: match to {
                    Some(to) => parse_time_ms(&to)?,
                    None => u64::MAX,
                },
            };
            let options = trusted(&trust)?;
            let mut sink: Box<dyn std::io::Write> = match &out {
                Some(path) => Box::new(std::io::BufWriter::new(std::fs::File::create(path)?)),
                None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
            };
            if let Some(api) = online.api()? {
                let params = [
                    ("subject", query.subject.clone()),
                    ("from", query.from_ms.to_string()),
                    ("to", query.to_ms.to_string()),
                ];
                return api.export(params, &options.trusted_keys, &mut sink);
            }
            let summary = sluice_audit::export(&dir, &query, &options, &mut sink)?;
            sink.flush()?;
            eprintln!(
                "exported {} events of subject {:?}; directory {}",
                summary.events,
                query.subject,
                match &summary.first_finding {
                    None => "verified intact".to_owned(),
                    Some(finding) => format!("NOT intact: {finding}"),
                }
            );
            Ok(if summary.directory_verified {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        AuditCommand::Erase {
            dir,
            online,
            subject,
            reason,
            key,
            distid,
        } => {
            if let Some(api) = online.api()? {
                return api.erase(&subject, &reason);
            }
            let key = key.ok_or("an offline erasure needs --key PEM to sign with")?;
            let pem = std::fs::read_to_string(&key)?;
            let key = KeyPair::from_pem(&pem, &distid, &key.display().to_string())?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            let index = runtime.block_on(async {
                let bus = sluice_core::bus::Bus::open(&dir).await?;
                let (_, index) = bus.erase(&key, &subject, &reason).await?;
                bus.close().await?;
                Ok::<_, sluice_core::bus::BusError>(index)
            })?;
            println!(
                "erased subject {subject:?}: signed tombstone at log index {index} (key {})",
                keys::fingerprint(&key.public_key())
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `sluice audit export --admin`.
fn export_admin(
    dir: &std::path::Path,
    trust: &[PathBuf],
    out: Option<&std::path::Path>,
) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let options = trusted(trust)?;
    let mut sink: Box<dyn std::io::Write> = match out {
        Some(path) => Box::new(std::io::BufWriter::new(std::fs::File::create(path)?)),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let summary = sluice_audit::export_admin(dir, &options, &mut sink)?;
    sink.flush()?;
    eprintln!(
        "exported {} admin entries; directory {}",
        summary.events,
        match &summary.first_finding {
            None => "verified intact".to_owned(),
            Some(finding) => format!("NOT intact: {finding}"),
        }
    );
    Ok(if summary.directory_verified {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn trusted(paths: &[PathBuf]) -> Result<VerifyOptions, Box<dyn std::error::Error>> {
    let mut options = VerifyOptions::default();
    for path in paths {
        let pem = std::fs::read_to_string(path)?;
        options.trusted_keys.push(keys::public_key_from_pem(
            &pem,
            &path.display().to_string(),
        )?);
    }
    Ok(options)
}

//! `sluice`: the command-line tool.
//!
//! Today it runs the embedded demo; the cluster commands (`node`,
//! `cluster`, `topics`, `publish`, `tail`, `inspect`) arrive with the
//! network transport.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod audit_cmd;
mod demo;

#[derive(Debug, Parser)]
#[command(
    name = "sluice",
    version,
    about = "A durable, Raft-replicated event bus"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Publish and consume events on an embedded bus, reopening it midway,
    /// and report what was lost or duplicated (both must be 0) and how fast.
    Demo(demo::Args),
    /// Check a data directory offline: every frame checksum, the hash
    /// chain, every signature, every file. Exit 0 with a summary when
    /// intact; 1 naming the first bad record (file, byte offset, index).
    Verify(audit_cmd::VerifyArgs),
    /// SM2 keys for checkpoints and producer signatures.
    #[command(subcommand)]
    Keys(audit_cmd::KeysCommand),
    /// Audit trail: export a subject's events, erase a subject.
    #[command(subcommand)]
    Audit(audit_cmd::AuditCommand),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(args) => demo::run(args),
        Command::Verify(args) => audit_cmd::verify(args),
        Command::Keys(command) => audit_cmd::keys(command),
        Command::Audit(command) => audit_cmd::audit(command),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

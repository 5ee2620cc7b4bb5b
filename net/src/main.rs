//! `sluice`: the command-line tool.
//!
//! Today it runs the embedded demo; the cluster commands (`node`,
//! `cluster`, `topics`, `publish`, `tail`, `inspect`) arrive with the
//! network transport.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

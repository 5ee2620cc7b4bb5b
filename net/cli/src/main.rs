//! `sluice`: the command-line tool.
//!
//! `demo` runs the embedded bus; `node` runs a cluster node; `certs`
//! writes TLS certificates for nodes and clients; `cluster`,
//! `topics`, `publish` and `tail` are clients of a running cluster;
//! `inspect` reads a data directory.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod audit_cmd;
mod audit_http;
mod commands;
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
    /// Run a cluster node in the foreground.
    Node(commands::node::Args),
    /// Write a development CA with node and client certificates into a
    /// directory (for `--tls-dir`), or revoke one.
    Certs(commands::certs::Args),
    /// Initialise a cluster, show its status, add or remove members.
    #[command(subcommand)]
    Cluster(commands::cluster::Command),
    /// Create or list topics.
    #[command(subcommand)]
    Topics(commands::topics::Command),
    /// Publish one event per line of standard input (key before a tab).
    Publish(commands::publish::Args),
    /// Print a topic's events as they arrive.
    Tail(commands::tail::Args),
    /// Load a running cluster with producers (and consumers) over the
    /// network; print throughput and latency percentiles.
    Bench(commands::bench::Args),
    /// Show what a data directory holds.
    Inspect(commands::inspect::Args),
    /// Copy a data directory consistently, also a running node's.
    Backup(commands::backup::Args),
    /// List or replay a consumer group's dead letters.
    #[command(subcommand)]
    Dlq(commands::dlq::Command),
    /// Check a data directory offline: every frame checksum, the hash
    /// chain, every signature, every file. Exit 0 with a summary when
    /// intact; 1 naming the first bad record (file, byte offset, index).
    Verify(audit_cmd::VerifyArgs),
    /// SM2 keys for checkpoints and producer signatures.
    #[command(subcommand)]
    Keys(audit_cmd::KeysCommand),
    /// Audit trail: export a subject's events or the admin trail, erase
    /// a subject.
    #[command(subcommand)]
    Audit(audit_cmd::AuditCommand),
    /// Access-control rules: who may do what on which topics, groups,
    /// the cluster and the audit trail.
    #[command(subcommand)]
    Acl(commands::security::AclCommand),
    /// Bearer tokens for clients without a certificate.
    #[command(subcommand)]
    Token(commands::security::TokenCommand),
    /// Tenants: namespaces of topics and groups and their principals.
    #[command(subcommand)]
    Tenant(commands::security::TenantCommand),
    /// Per-principal limits of bytes and requests per second.
    #[command(subcommand)]
    Quota(commands::security::QuotaCommand),
}

/// Makes a write to a closed pipe end the process quietly, as it does
/// other Unix tools: `sluice verify DIR | head -2` stops once `head` has
/// its lines. Rust ignores SIGPIPE, so such a write would otherwise fail
/// with EPIPE and `println!` panic. Not for `sluice node`, which must
/// outlive a closed stderr. Sockets are unaffected: the transport writes
/// to them with `write`/`write_all`, which std sends with MSG_NOSIGNAL.
#[allow(unsafe_code)]
fn die_quietly_on_broken_pipe() {
    // SAFETY: called on the main thread before any other thread starts;
    // restoring a signal's default disposition has no other effect.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        // Colours only for a person at a terminal: a log file gets plain
        // `key=value` fields.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Node(_)) {
        die_quietly_on_broken_pipe();
    }
    let result = match cli.command {
        Command::Demo(args) => demo::run(args),
        Command::Node(args) => commands::node::run(args),
        Command::Bench(args) => commands::bench::run(args),
        Command::Certs(args) => commands::certs::run(args),
        Command::Cluster(command) => commands::cluster::run(command),
        Command::Topics(command) => commands::topics::run(command),
        Command::Publish(args) => commands::publish::run(args),
        Command::Tail(args) => commands::tail::run(args),
        Command::Inspect(args) => commands::inspect::run(args),
        Command::Backup(args) => commands::backup::run(args),
        Command::Dlq(command) => commands::dlq::run(command),
        Command::Verify(args) => audit_cmd::verify(args),
        Command::Keys(command) => audit_cmd::keys(command),
        Command::Audit(command) => audit_cmd::audit(command),
        Command::Acl(command) => commands::security::acl(command),
        Command::Token(command) => commands::security::token(command),
        Command::Tenant(command) => commands::security::tenant(command),
        Command::Quota(command) => commands::security::quota(command),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

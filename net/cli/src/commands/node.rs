//! `sluice node`: runs one cluster node in the foreground.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use tracing::{error, info, warn};

use sluice_client::tcp::{self, ServerConfig};
use sluice_client::tls::{Tls, TlsFiles};
use sluice_core::bus::BusError;
use sluice_core::io::os::{OsClock, OsDisk};
use sluice_core::log::{Corruption, Error as LogError, Log, Options, RecoveryMode};
use sluice_core::raft::Durability;
use sluice_model::constants::SEGMENT_SIZE_DEFAULT;
use sluice_model::security::Principal;
use sluice_server::node::{CHAIN_CHECK_INTERVAL_DEFAULT, ClusterNode, NodeConfig, NodeError};

use super::{Outcome, load_secret, load_tls, runtime};

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// This node's id in the cluster (1 or more).
    #[arg(long)]
    id: u64,
    /// Address to listen on for peers and clients (IP:PORT).
    #[arg(long)]
    listen: SocketAddr,
    /// Data directory (created if missing).
    #[arg(long)]
    data_dir: PathBuf,
    /// Directory with the cluster's CA (ca.pem), this node's certificate
    /// and key (node-ID.pem, node-ID-key.pem) and, if present, a
    /// revocation list (crl.pem), as `sluice certs` writes: every
    /// connection is then TLS. Reloaded on SIGHUP and when the files
    /// change.
    #[arg(
        long,
        env = "SLUICE_TLS_DIR",
        value_name = "DIR",
        conflicts_with = "secret_file"
    )]
    tls_dir: Option<PathBuf>,
    /// File holding the cluster secret every connection must prove (a
    /// cluster without TLS).
    #[arg(long, env = "SLUICE_SECRET_FILE")]
    secret_file: Option<PathBuf>,
    /// A principal allowed everything (User:NAME, Node:ID or Anonymous;
    /// repeatable). Default: User:admin with TLS, Anonymous without.
    #[arg(long, value_name = "PRINCIPAL", value_parser = parse_principal)]
    superuser: Vec<Principal>,
    /// Acknowledge publishes once in the page cache of a majority instead
    /// of after fsync.
    #[arg(long)]
    buffered: bool,
    /// Listen on a non-loopback address without TLS (plaintext: anyone on
    /// the network can read the traffic).
    #[arg(long)]
    insecure: bool,
    /// Serve HTTP on ADDR: Prometheus metrics at /metrics and the audit
    /// API at /api/ (net/OPERATIONS.md). `--metrics-listen` is an alias.
    #[arg(long, value_name = "ADDR", alias = "metrics-listen")]
    http_listen: Option<SocketAddr>,
    /// Serve gRPC on ADDR: the sluice.v1 Publisher and Admin services,
    /// grpc.health.v1.Health and server reflection (net/grpc/PROTOCOL.md).
    /// Plaintext: a non-loopback address needs --insecure.
    #[arg(long, value_name = "ADDR")]
    grpc_listen: Option<SocketAddr>,
    /// The node's SM2 secret key (PKCS#8 PEM, made by `sluice keys gen`):
    /// it signs checkpoints of the hash chain while it leads, export
    /// summaries and erasures. Without it the node writes no checkpoints.
    #[arg(long, value_name = "PEM", env = "SLUICE_SIGNING_KEY")]
    signing_key: Option<PathBuf>,
    /// The signing key's distinguishing id.
    #[arg(long, default_value = sluice_audit::keys::DISTID_DEFAULT, value_name = "ID")]
    signing_distid: String,
    /// How often the node compares its chain hash at the latest signed
    /// checkpoint with its peers' (a divergence raises
    /// sluice_chain_divergent and logs an error).
    #[arg(long, default_value_t = millis(CHAIN_CHECK_INTERVAL_DEFAULT), value_name = "MS")]
    chain_check_interval_ms: u64,
    /// The leader's heartbeat interval in milliseconds; across data
    /// centres, above the round trip by a third (elections take 3 to 6
    /// intervals). Use the same value on every node.
    #[arg(long, default_value_t = 50, value_name = "MS")]
    heartbeat_ms: u64,
    /// Open the log with RecoveryMode::Repair before starting: cut it at
    /// the first damaged record anywhere, dropping that record and every
    /// later one (logged), where a normal start refuses. Only when losing
    /// them is acceptable: the node then catches up from its peers what
    /// they hold.
    #[arg(long)]
    repair: bool,
    #[command(flatten)]
    bounds: BoundArgs,
}

/// A node that did not start because its log is damaged.
#[derive(Debug, thiserror::Error)]
#[error(
    "node {id} did not start: {corruption}. `sluice node --repair` opens the log with \
     RecoveryMode::Repair: start the node again with --repair (and the same --id, --listen, \
     --data-dir {}) to cut its log there",
    data_dir.display()
)]
struct DamagedLog {
    id: u64,
    data_dir: PathBuf,
    corruption: Box<Corruption>,
}

/// The node's resource bounds (listed in net/OPERATIONS.md).
#[derive(Debug, clap::Args)]
struct BoundArgs {
    /// Connections the node holds at once; more are closed as they arrive
    /// (counted in sluice_server_connections_refused_total).
    #[arg(long, default_value_t = tcp::CONNECTIONS_MAX, value_name = "N")]
    connections_max: usize,
    /// Connections from one IP address the node holds at once.
    #[arg(long, default_value_t = tcp::CONNECTIONS_PER_ADDRESS_MAX, value_name = "N")]
    connections_per_address_max: usize,
    /// Close a connection on which nothing happens for this long.
    #[arg(long, default_value_t = millis(tcp::IDLE_TIME_MAX), value_name = "MS")]
    idle_timeout_ms: u64,
    /// Close a connection whose frame has not arrived whole this long
    /// after its first byte.
    #[arg(long, default_value_t = millis(tcp::FRAME_READ_TIME_MAX), value_name = "MS")]
    frame_read_timeout_ms: u64,
    /// Bytes of large frames that connections which have not authenticated
    /// (all of them without a secret) may be reading at once; at least
    /// 16 MiB.
    #[arg(long, default_value_t = tcp::UNAUTHENTICATED_READ_BYTES_MAX, value_name = "BYTES")]
    unauthenticated_read_bytes_max: usize,
    /// How often the leader applies the topics' retention.
    #[arg(long, default_value_t = 60_000, value_name = "MS")]
    retention_interval_ms: u64,
    /// The size at which the log starts a new segment (retention drops
    /// whole segments).
    #[arg(long, default_value_t = SEGMENT_SIZE_DEFAULT, value_name = "BYTES")]
    segment_bytes: u64,
}

const fn millis(duration: Duration) -> u64 {
    duration.as_millis() as u64
}

pub(crate) fn run(args: Args) -> Outcome {
    let secret = load_secret(args.secret_file.as_deref())?;
    let listens = std::iter::once(args.listen).chain(args.http_listen);
    for address in listens {
        if args.tls_dir.is_none() && !address.ip().is_loopback() && !args.insecure {
            return Err(format!(
                "refusing to listen on {address} without TLS: anyone on the network could read \
                 the traffic (tokens included), and without a cluster secret read and write the \
                 cluster. Pass --tls-dir DIR (certificates from `sluice certs --dir DIR --nodes \
                 ...`), or --insecure if the network is private"
            )
            .into());
        }
    }
    let exposed = args
        .grpc_listen
        .filter(|address| !address.ip().is_loopback());
    if let (Some(address), false) = (exposed, args.insecure) {
        return Err(format!(
            "refusing to serve gRPC on {address} without TLS (the gRPC listener has no TLS \
             yet): anyone on the network could read the traffic and its bearer tokens. Use a \
             loopback address, or pass --insecure if the network is private"
        )
        .into());
    }
    let tls = args
        .tls_dir
        .as_deref()
        .map(|dir| load_tls(TlsFiles::node(dir, args.id)))
        .transpose()?;
    let superusers = if args.superuser.is_empty() {
        vec![match tls {
            Some(_) => Principal::user("admin"),
            None => Principal::Anonymous,
        }]
    } else {
        args.superuser.clone()
    };
    let config = NodeConfig {
        secret,
        tls: tls.clone(),
        superusers: superusers.clone(),
        durability: if args.buffered {
            Durability::Buffer
        } else {
            Durability::Sync
        },
        http_listen: args.http_listen,
        signing_key: signing_key(args.signing_key.as_deref(), &args.signing_distid)?,
        chain_check_interval: Duration::from_millis(args.chain_check_interval_ms.max(1)),
        heartbeat_interval: Duration::from_millis(args.heartbeat_ms.max(1)),
        server: ServerConfig {
            connections_max: args.bounds.connections_max,
            connections_per_address_max: args.bounds.connections_per_address_max,
            idle_time_max: Duration::from_millis(args.bounds.idle_timeout_ms),
            frame_read_time_max: Duration::from_millis(args.bounds.frame_read_timeout_ms),
            unauthenticated_read_bytes_max: args.bounds.unauthenticated_read_bytes_max,
            ..ServerConfig::default()
        },
        retention_interval: Duration::from_millis(args.bounds.retention_interval_ms.max(1)),
        segment_size: args.bounds.segment_bytes,
        ..NodeConfig::new(args.id, args.listen, args.data_dir.clone())
    };
    if args.repair {
        repair(&args.data_dir)?;
    }
    let (id, data_dir, grpc_listen) = (args.id, args.data_dir.clone(), args.grpc_listen);
    runtime()?.block_on(async move {
        let node = match ClusterNode::start(config).await {
            Ok(node) => node,
            Err(NodeError::Bus(BusError::Storage(LogError::Corruption(corruption)))) => {
                return Err(DamagedLog {
                    id,
                    data_dir,
                    corruption,
                }
                .into());
            }
            Err(error) => return Err(error.into()),
        };
        let _grpc = match grpc_listen {
            Some(address) => {
                let config = sluice_grpc::GrpcConfig::new(node.bus().clone(), superusers.clone());
                Some(sluice_grpc::serve(address, config).await?)
            }
            None => None,
        };
        info!(
            address = %node.local_address(),
            tls = tls.is_some(),
            "serving; initialise a new cluster with `sluice cluster init`, stop with Ctrl-C"
        );
        let reload = tokio::spawn(reload_on_hangup(tls));
        let _reload = AbortOnDrop(reload);
        tokio::select! {
            signalled = wait_for_stop() => {
                signalled?;
                info!("stopping");
                node.shutdown().await?;
                Ok(ExitCode::SUCCESS)
            }
            reason = node.stopped() => {
                error!(
                    %reason,
                    "Raft stopped; the node stops (exit code {EXIT_STORAGE}). If the disk is \
                     full or failed, fix it and start the node again: it recovers from its log"
                );
                let _ = node.shutdown().await;
                Ok(ExitCode::from(EXIT_STORAGE))
            }
        }
    })
}

/// The node's signing key, read from `path` if given.
fn signing_key(
    path: Option<&Path>,
    distid: &str,
) -> Result<Option<Arc<sluice_audit::KeyPair>>, Box<dyn std::error::Error>> {
    let Some(path) = path else {
        return Ok(None);
    };
    let pem = std::fs::read_to_string(path).map_err(|error| {
        format!(
            "cannot read the signing key {}: {error}; make one with `sluice keys gen`",
            path.display()
        )
    })?;
    let key = sluice_audit::KeyPair::from_pem(&pem, distid, &path.display().to_string())?;
    info!(
        key = %sluice_audit::keys::fingerprint(&key.public_key()),
        "signing checkpoints, export summaries and erasures"
    );
    Ok(Some(Arc::new(key)))
}

/// Opens the log in `data_dir` with [`RecoveryMode::Repair`], which cuts it
/// at the first damaged record, and logs what was cut; the node then opens
/// the repaired log as usual.
fn repair(data_dir: &Path) -> Result<(), Box<dyn std::error::Error>> {
    if !data_dir.is_dir() {
        warn!(data_dir = %data_dir.display(), "--repair: no data directory yet, nothing to repair");
        return Ok(());
    }
    let disk = OsDisk::open(data_dir)
        .map_err(|error| format!("--repair: cannot open {}: {error}", data_dir.display()))?;
    let options = Options {
        recovery: RecoveryMode::Repair,
        ..Options::default()
    };
    let log = Log::open(disk, Arc::new(OsClock::new()), options).map_err(|error| {
        format!(
            "--repair: the log in {} does not open even in repair mode: {error}",
            data_dir.display()
        )
    })?;
    let report = log.recovery_report();
    match &report.repair {
        Some(cut) => warn!(
            data_dir = %data_dir.display(),
            damage = %cut.corruption,
            segments_removed = ?cut.segments_removed,
            bytes_dropped = cut.bytes_dropped,
            log_now_ends_before = log.next_index(),
            "--repair cut the log at the first damaged record; it and every later record are dropped"
        ),
        None => {
            warn!(data_dir = %data_dir.display(), "--repair found no damaged record; nothing cut")
        }
    }
    if let Some(torn) = &report.torn_tail {
        warn!(
            file = %torn.file,
            offset = torn.offset,
            bytes_cut = torn.bytes_cut,
            reason = %torn.reason,
            "--repair also cut a torn tail (unacknowledged writes)"
        );
    }
    Ok(())
}

/// The exit code of a node whose Raft core stopped on its own (storage
/// failure or another fatal error).
const EXIT_STORAGE: u8 = 3;

/// Reloads the TLS material on every SIGHUP (it is also reloaded when
/// its files change); without TLS, logs that there is nothing to reload.
async fn reload_on_hangup(tls: Option<Arc<Tls>>) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangups = match signal(SignalKind::hangup()) {
        Ok(hangups) => hangups,
        Err(error) => {
            warn!(%error, "cannot watch for SIGHUP; TLS files still reload when they change");
            return;
        }
    };
    while hangups.recv().await.is_some() {
        match &tls {
            Some(tls) => tls.reload_logged("SIGHUP"),
            None => info!("SIGHUP: this node runs without TLS; nothing to reload"),
        }
    }
}

/// A task aborted when this is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn parse_principal(text: &str) -> Result<Principal, String> {
    Principal::parse(text).map_err(|error| error.to_string())
}

/// Returns on Ctrl-C or SIGTERM.
async fn wait_for_stop() -> std::io::Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result,
        _ = terminate.recv() => Ok(()),
    }
}

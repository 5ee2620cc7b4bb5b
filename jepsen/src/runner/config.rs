//! What a run is asked to do: the command line, and the configuration the
//! supervisor hands the worker (as JSON in the run directory).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::netns;
use super::schedule::Kind;

/// How the nodes are networked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Mode {
    /// A namespace per node on a bridge, faults by iptables (root).
    Netns,
    /// Nodes on 127.0.0.x behind a fault-injecting TCP proxy (no root
    /// needed for the network).
    Loopback,
}

/// The first port of the loopback mode: node `id` listens on
/// `127.0.0.(10 + id):PORT` and its proxy on `127.0.0.(40 + id):PORT`.
pub(crate) const LOOPBACK_PORT: u16 = 27_000;

/// The worker's configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct WorkerConfig {
    /// Nodes 1..=nodes.
    pub(crate) nodes: u64,
    /// How long the workload runs.
    pub(crate) time_limit_secs: u64,
    /// The seed of the nemesis schedule and the workload's choices.
    pub(crate) seed: u64,
    /// Enabled nemesis kinds, by name.
    pub(crate) nemesis: Vec<String>,
    /// Network mode.
    pub(crate) mode: Mode,
    /// The `sluice` binary.
    pub(crate) sluice: PathBuf,
    /// Where everything of this run goes.
    pub(crate) run_dir: PathBuf,
    /// The run's TLS directory (`sluice certs`): node certificates, the
    /// `admin` client (the nodes' superuser) as its default client, and
    /// the `jepsen` client the workload runs as, under access rules.
    pub(crate) tls_dir: PathBuf,
    /// The libfaketime library nodes run under (skew nemesis), if any.
    pub(crate) libfaketime: Option<PathBuf>,
    /// Whether each node's data directory is its own small tmpfs.
    pub(crate) tmpfs_data: bool,
    /// A planted bug passed to the nodes, if any.
    pub(crate) planted_bug: Option<String>,
    /// Producer processes at once.
    pub(crate) producers: u32,
    /// Plain consumer group members at once.
    pub(crate) consumers: u32,
    /// Transactional consume-transform-produce members at once.
    pub(crate) transactors: u32,
    /// How long a client request may take before it is indeterminate.
    pub(crate) request_timeout_secs: u64,
}

impl WorkerConfig {
    /// Whether nodes run under libfaketime (the skew nemesis).
    pub(crate) fn skew(&self) -> bool {
        self.libfaketime.is_some()
    }

    /// The enabled nemesis kinds.
    pub(crate) fn kinds(&self) -> Vec<Kind> {
        Kind::parse_list(&self.nemesis.join(",")).expect("validated by the supervisor")
    }

    /// The workload's time limit.
    pub(crate) fn time_limit(&self) -> Duration {
        Duration::from_secs(self.time_limit_secs)
    }

    /// Where node `id` listens.
    pub(crate) fn listen_address(&self, id: u64) -> SocketAddr {
        match self.mode {
            Mode::Netns => netns::node_address(id),
            Mode::Loopback => loopback(10 + id),
        }
    }

    /// Node `id`'s address in the Raft membership (what peers dial): the
    /// node itself, or its proxy in loopback mode.
    pub(crate) fn member_address(&self, id: u64) -> SocketAddr {
        match self.mode {
            Mode::Netns => netns::node_address(id),
            Mode::Loopback => loopback(40 + id),
        }
    }

    /// Node `id`'s data directory.
    pub(crate) fn data_dir(&self, id: u64) -> PathBuf {
        self.run_dir.join(format!("node-{id}")).join("data")
    }
}

fn loopback(last: u64) -> SocketAddr {
    assert!(last < 255, "at most 100 nodes");
    SocketAddr::from((Ipv4Addr::new(127, 0, 0, last as u8), LOOPBACK_PORT))
}

//! Deterministic simulation of Sluice clusters on madsim.
//!
//! Every part of a node that touches the world is replaced by a simulated
//! part named after the real one it stands for:
//!
//! | real | simulated | what the simulation adds |
//! |---|---|---|
//! | `OsEnv` | [`SimEnv`] | bundles the three below |
//! | `OsRuntime` (tokio) | [`SimRuntime`] | one thread, a seeded scheduler, virtual time |
//! | `OsClock` | [`SimClock`] | madsim's virtual time, per-node offset and drift |
//! | `OsDisk` | [`SimDisk`] | `CrashDisk` per node, crashed when madsim kills the node |
//! | `TcpTransport` | [`SimTransport`] | madsim's network: latency, loss, partitions |
//!
//! The same seed gives the same run: every source of nondeterminism (task
//! order, time, randomness, message latency and loss, disk crash outcomes)
//! is drawn from madsim's seeded generator.
//!
//! The whole crate exists only under `--cfg madsim` (`cargo simtest`, or the
//! `run_simulations` test that a plain `cargo test` runs): in a normal build
//! it is empty, so simulation code can never run on a real runtime, where it
//! would be nondeterministic.
#![cfg(madsim)]

mod clock;
mod cluster;
mod disk;
pub mod runner;
mod runtime;
pub mod scenario;
mod transport;
mod watch;
pub mod workload;

pub use clock::SimClock;
pub use cluster::{Proposal, SimCluster, SimRaft, raft_config, raft_config_with};
pub use disk::{SimDisk, SimDisks, read_file};
pub use runtime::{SimElapsed, SimEnv, SimRng, SimRuntime, SimTimeout};
pub use transport::{LinkFaults, SimServer, SimTransport, SimTransportConfig, node_address};
pub use watch::{SimWatch, SimWatchReceiver, SimWatchSender};

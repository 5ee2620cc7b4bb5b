//! Sluice's network side: the TCP implementation of the engine's
//! [`Transport`](sluice::io::transport::Transport) seam, its wire frames,
//! cluster nodes and their clients.
//!
//! - [`wire`]: the frame codec, pure (no sockets), fuzzed by
//!   `fuzz/fuzz_targets/wire_frame.rs`; layout in `src/WIRE.md`.
//! - [`tcp`]: [`tcp::TcpTransport`] and [`tcp::TcpServer`] on tokio.
//! - [`auth`]: cluster-secret challenge and answer on every connection.
//! - [`protocol`]: the client protocol (requests and answers).
//! - [`metrics_http`]: the node's optional `GET /metrics` endpoint.
//! - [`node`]: [`node::ClusterNode`], one member of a replicated cluster.
//! - [`client`]: [`client::Client`] (follows the leader, fails over) and
//!   [`client::RemoteProducer`] (idempotent producer over the network).
//!
//! The `sluice` command-line tool is this crate's binary.

pub mod auth;
pub mod client;
pub mod consumer;
pub mod metrics_http;
pub mod node;
pub mod protocol;
pub mod tcp;
pub mod wire;

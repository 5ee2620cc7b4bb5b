//! A Sluice cluster node: the embedded engine (`sluice-core`) behind the
//! client protocol over TCP (`sluice-client`'s transport and frames), with
//! Raft between the nodes on the same transport.
//!
//! - [`node`]: [`node::ClusterNode`], one member of a replicated cluster.
//! - `http`: the node's optional HTTP listener: `GET /metrics` and the
//!   audit API.
//! - [`chain_check`]: the periodic comparison of the node's chain hash at
//!   a checkpoint with its peers'.
//! - [`authorize`], [`quota`]: what each client request needs, and the
//!   principals' quotas; the gRPC listener (`sluice-grpc`) admits its
//!   calls through them too.
//! - `tokens`: the check of the tokens clients present over TLS.

pub mod authorize;
pub mod chain_check;
mod http;
pub mod node;
pub mod quota;
mod tokens;

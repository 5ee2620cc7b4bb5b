//! A Sluice cluster node: the embedded engine (`sluice-core`) behind the
//! client protocol over TCP (`sluice-client`'s transport and frames), with
//! Raft between the nodes on the same transport.
//!
//! - [`node`]: [`node::ClusterNode`], one member of a replicated cluster.
//! - [`metrics_http`]: the node's optional `GET /metrics` endpoint.
//! - `tokens`: the check of the tokens clients present over TLS.

pub mod metrics_http;
pub mod node;
mod tokens;

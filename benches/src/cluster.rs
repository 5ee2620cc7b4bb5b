//! A Sluice cluster of in-process nodes on loopback, for the benchmarks
//! that drive a cluster through the client protocol (`cluster_report`, the
//! peers benchmark).

use std::net::SocketAddr;
use std::path::Path;

use sluice::raft::Durability;
use sluice_net::client::{Client, ClientConfig};
use sluice_net::node::{ClusterNode, NodeConfig};
use sluice_net::protocol::{ClientRequest, ClientResponse};

use crate::{BenchResult, scratch};

/// A running cluster: its scratch directory (removed on drop), its nodes
/// and a client of all of them.
pub type LoopbackCluster = (tempfile::TempDir, Vec<ClusterNode>, Client);

/// Starts `count` nodes on free loopback ports, each with its own data
/// directory under `root`, and initialises them as one cluster.
pub async fn start(
    root: &Path,
    count: u64,
    durability: Durability,
) -> BenchResult<LoopbackCluster> {
    let dir = scratch(root, "cluster")?;
    let mut nodes = Vec::new();
    for id in 1..=count {
        let config = NodeConfig {
            durability,
            ..NodeConfig::new(
                id,
                "127.0.0.1:0".parse()?,
                dir.path().join(format!("node-{id}")),
            )
        };
        nodes.push(ClusterNode::start(config).await?);
    }
    let addresses: Vec<SocketAddr> = nodes.iter().map(ClusterNode::local_address).collect();
    let client = Client::new(ClientConfig::new(addresses.clone()))?;
    let members = (1..=count)
        .zip(&addresses)
        .map(|(id, address)| (id, address.to_string()))
        .collect();
    let answer = client
        .request_from(addresses[0], &ClientRequest::Initialize { members })
        .await?;
    if answer != ClientResponse::Done {
        return Err(format!("initialise: {answer:?}").into());
    }
    Ok((dir, nodes, client))
}

//! A Sluice cluster of in-process nodes on loopback, for the benchmarks
//! that drive a cluster through the client protocol (`cluster_report`, the
//! peers benchmark).

use std::net::SocketAddr;
use std::path::Path;

use sluice_client::client::{Client, ClientConfig};
use sluice_client::protocol::{ClientRequest, ClientResponse};
use sluice_core::raft::Durability;
use sluice_server::node::{ClusterNode, NodeConfig};

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

/// Warms a cluster up for [`crate::warm_up`]: 16 closed-loop remote
/// producers publish 256 B events to `topic` (latencies discarded) until
/// every node's log is on a segment written out ahead. Returns the seconds
/// it took.
pub async fn warm_up(client: &Client, nodes: &[ClusterNode], topic: &str) -> BenchResult<f64> {
    let mut producers = Vec::new();
    for _ in 0..16 {
        producers.push(client.producer().await?);
    }
    let load = |stop: std::sync::Arc<std::sync::atomic::AtomicBool>| async move {
        let mut tasks = Vec::new();
        for (p, mut producer) in producers.into_iter().enumerate() {
            let (stop, topic) = (stop.clone(), topic.to_owned());
            tasks.push(tokio::spawn(async move {
                let payload = bytes::Bytes::from(vec![b'w'; 256]);
                let key = bytes::Bytes::from((p as u64).to_le_bytes().to_vec());
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let headers = sluice_model::event::Headers::default();
                    let event = producer
                        .stamp(&topic, key.clone(), payload.clone(), headers)
                        .await?;
                    producer.publish(vec![event]).await?;
                }
                Ok::<(), crate::BenchError>(())
            }));
        }
        for task in tasks {
            task.await??;
        }
        Ok(())
    };
    let ready = || crate::prewritten(nodes.iter().map(ClusterNode::bus));
    Ok(crate::warm_up(ready, load).await?.0)
}

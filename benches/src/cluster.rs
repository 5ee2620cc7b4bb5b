//! A Sluice cluster of in-process nodes on loopback, for the benchmarks
//! that drive a cluster through the client protocol (`cluster_report`, the
//! peers benchmark).

use std::net::SocketAddr;
use std::path::Path;

use sluice_client::client::{Client, ClientConfig};
use sluice_client::protocol::{ClientRequest, ClientResponse};
use sluice_client::tls::{Tls, TlsFiles};
use sluice_core::raft::Durability;
use sluice_server::node::{ClusterNode, NodeConfig};

use crate::{BenchResult, scratch};

/// A running cluster: its scratch directory (removed on drop), its nodes
/// and a client of all of them.
pub type LoopbackCluster = (tempfile::TempDir, Vec<ClusterNode>, Client);

/// How the cluster's connections are secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Transport {
    /// Plain TCP, no authentication (a node started `--insecure`).
    Plain,
    /// TLS on every connection, client and node certificates from a CA
    /// made for the run (as `sluice node --tls-dir`).
    Tls,
}

/// Starts `count` nodes on free loopback ports, each with its own data
/// directory under `root`, and initialises them as one cluster.
pub async fn start(
    root: &Path,
    count: u64,
    durability: Durability,
) -> BenchResult<LoopbackCluster> {
    start_with(root, count, durability, Transport::Plain).await
}

/// [`start`] with the connections secured as `transport` says.
pub async fn start_with(
    root: &Path,
    count: u64,
    durability: Durability,
    transport: Transport,
) -> BenchResult<LoopbackCluster> {
    let dir = scratch(root, "cluster")?;
    let certs = dir.path().join("certs");
    if transport == Transport::Tls {
        write_certificates(&certs, count)?;
    }
    let mut nodes = Vec::new();
    for id in 1..=count {
        let tls = match transport {
            Transport::Plain => None,
            Transport::Tls => Some(Tls::load(TlsFiles::node(&certs, id))?),
        };
        let config = NodeConfig {
            durability,
            tls,
            ..NodeConfig::new(
                id,
                "127.0.0.1:0".parse()?,
                dir.path().join(format!("node-{id}")),
            )
        };
        nodes.push(ClusterNode::start(config).await?);
    }
    let addresses: Vec<SocketAddr> = nodes.iter().map(ClusterNode::local_address).collect();
    let mut client_config = ClientConfig::new(addresses.clone());
    if transport == Transport::Tls {
        client_config.tls = Some(Tls::load(TlsFiles::client(&certs))?);
    }
    let client = Client::new(client_config)?;
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

/// Writes a CA, nodes 1 to `count`'s certificates and a client's into
/// `dir`, in the layout `sluice certs` writes (ECDSA P-256 throughout).
fn write_certificates(dir: &Path, count: u64) -> BenchResult<()> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        SanType,
    };
    std::fs::create_dir_all(dir)?;
    let ca_key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, "benchmark CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = params.self_signed(&ca_key)?;
    std::fs::write(dir.join("ca.pem"), ca.pem())?;
    let leaf = |name: String, node: Option<u64>| -> BenchResult<(String, String)> {
        let key = KeyPair::generate()?;
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        if let Some(id) = node {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ServerAuth);
            let uri = format!("{}{id}", sluice_client::tls::NODE_URI_PREFIX);
            params.subject_alt_names.push(SanType::URI(uri.try_into()?));
        }
        let cert = params.signed_by(&key, &ca, &ca_key)?;
        Ok((cert.pem(), key.serialize_pem()))
    };
    for id in 1..=count {
        let (cert, key) = leaf(format!("node {id}"), Some(id))?;
        std::fs::write(dir.join(format!("node-{id}.pem")), cert)?;
        std::fs::write(dir.join(format!("node-{id}-key.pem")), key)?;
    }
    let (cert, key) = leaf("admin".to_owned(), None)?;
    std::fs::write(dir.join("client.pem"), cert)?;
    std::fs::write(dir.join("client-key.pem"), key)?;
    Ok(())
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

//! `sluice cluster`: initialise, inspect and change the membership.

use std::process::ExitCode;

use sluice_client::client::{Client, ClientConfig};
use sluice_client::protocol::{ClientRequest, ClientResponse};

use super::{ClusterArgs, Outcome, load_secret, resolve, runtime};

#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// Initialise a new cluster: the nodes (already running) become its
    /// first voters. Run once.
    Init {
        /// The members: ID=HOST:PORT,ID=HOST:PORT,...
        #[arg(long)]
        nodes: String,
        /// File holding the cluster secret, if the nodes use one.
        #[arg(long, env = "SLUICE_SECRET_FILE")]
        secret_file: Option<std::path::PathBuf>,
    },
    /// Show each reachable node's view: role, term, leader, log positions.
    Status {
        #[command(flatten)]
        cluster: ClusterArgs,
        /// One JSON object per node.
        #[arg(long)]
        json: bool,
    },
    /// Add a running node: it joins as a learner, catches up, then votes.
    Add {
        /// Its id.
        #[arg(long)]
        id: u64,
        /// Its address (IP:PORT).
        #[arg(long)]
        address: String,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    /// Remove a node from the cluster.
    Remove {
        /// Its id.
        #[arg(long)]
        id: u64,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
}

pub(crate) fn run(command: Command) -> Outcome {
    runtime()?.block_on(async move {
        match command {
            Command::Init { nodes, secret_file } => init(&nodes, secret_file.as_deref()).await,
            Command::Status { cluster, json } => status(&cluster, json).await,
            Command::Add {
                id,
                address,
                cluster,
            } => {
                let request = ClientRequest::AddNode { id, address };
                expect_done(cluster.client()?.request(&request).await?)?;
                println!("node {id} is a voting member");
                Ok(ExitCode::SUCCESS)
            }
            Command::Remove { id, cluster } => {
                let request = ClientRequest::RemoveNode { id };
                expect_done(cluster.client()?.request(&request).await?)?;
                println!("node {id} is no longer a member");
                Ok(ExitCode::SUCCESS)
            }
        }
    })
}

fn expect_done(response: ClientResponse) -> Result<(), Box<dyn std::error::Error>> {
    match response {
        ClientResponse::Done => Ok(()),
        other => Err(format!("unexpected answer: {other:?}").into()),
    }
}

async fn init(nodes: &str, secret_file: Option<&std::path::Path>) -> Outcome {
    let mut members = Vec::new();
    let mut addresses = Vec::new();
    for item in nodes.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (id, address) = item
            .split_once('=')
            .ok_or_else(|| format!("{item:?} is not ID=HOST:PORT"))?;
        let id: u64 = id
            .parse()
            .map_err(|error| format!("{id:?} in {item:?} is not a node id: {error}"))?;
        let resolved = resolve(address)?;
        members.push((id, resolved.to_string()));
        addresses.push(resolved);
    }
    let Some(&first) = addresses.first() else {
        return Err("--nodes names no member; give ID=HOST:PORT[,ID=HOST:PORT...]".into());
    };
    let mut config = ClientConfig::new(addresses);
    config.secret = load_secret(secret_file)?;
    let client = Client::new(config)?;
    let request = ClientRequest::Initialize {
        members: members.clone(),
    };
    expect_done(client.request_from(first, &request).await?)?;
    // Wait for the first leader, so that the next command finds one.
    let metadata = client.metadata().await?;
    let ids: Vec<String> = members.iter().map(|(id, _)| id.to_string()).collect();
    match metadata.leader {
        Some((leader, address)) => println!(
            "initialised a cluster of nodes {}; node {leader} at {address} leads",
            ids.join(", ")
        ),
        None => println!("initialised a cluster of nodes {}", ids.join(", ")),
    }
    Ok(ExitCode::SUCCESS)
}

async fn status(cluster: &ClusterArgs, json: bool) -> Outcome {
    let client = cluster.client()?;
    let mut reachable = 0;
    let addresses = cluster.addresses()?;
    if !json {
        println!("address\tnode\trole\tterm\tleader\tlast_log\tcommitted\tapplied\tmembers");
    }
    for address in &addresses {
        match client
            .request_from(*address, &ClientRequest::Metadata)
            .await
        {
            Ok(ClientResponse::Metadata(m)) => {
                reachable += 1;
                let members: Vec<String> = m
                    .members
                    .iter()
                    .map(|(id, a, voter)| {
                        format!("{id}={a}{}", if *voter { "" } else { "(learner)" })
                    })
                    .collect();
                if json {
                    let line = serde_json::json!({
                        "address": address.to_string(),
                        "node": m.node_id,
                        "role": m.role,
                        "term": m.term,
                        "leader": m.leader.as_ref().map(|(id, _)| id),
                        "last_log": m.log.0,
                        "committed": m.log.1,
                        "applied": m.log.2,
                        "members": members,
                        "topics": m.topics.len(),
                    });
                    println!("{line}");
                } else {
                    let show = |v: Option<u64>| v.map_or("-".to_owned(), |v| v.to_string());
                    println!(
                        "{address}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
                        m.node_id,
                        m.role,
                        m.term,
                        m.leader.map_or("-".to_owned(), |(id, _)| id.to_string()),
                        show(m.log.0),
                        show(m.log.1),
                        show(m.log.2),
                        members.join(",")
                    );
                }
            }
            Ok(other) => eprintln!("{address}: unexpected answer {other:?}"),
            Err(error) => {
                if json {
                    let line = serde_json::json!({
                        "address": address.to_string(),
                        "error": error.to_string(),
                    });
                    println!("{line}");
                } else {
                    println!("{address}\tunreachable: {error}");
                }
            }
        }
    }
    if reachable == 0 {
        eprintln!("error: no node answered");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

//! `sluice cluster`: initialise, inspect and change the membership.

use std::process::ExitCode;

use std::time::Duration;

use sluice_client::client::{Client, ClientConfig};
use sluice_client::protocol::{CATCH_UP_WAIT_MS_MAX, ClientRequest, ClientResponse, Metadata};

use super::{ClusterArgs, Credentials, Outcome, resolve, runtime};

#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// Initialise a new cluster: the nodes (already running) become its
    /// first voters. Run once.
    Init {
        /// The members: ID=HOST:PORT,ID=HOST:PORT,...
        #[arg(long)]
        nodes: String,
        #[command(flatten)]
        credentials: Credentials,
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
    /// Refused for id 0, a member's id or address, and a node that does
    /// not answer as that id with the cluster's secret; a learner that does
    /// not catch up in time is removed again.
    Add {
        /// Its id.
        #[arg(long)]
        id: u64,
        /// Its address (IP:PORT).
        #[arg(long)]
        address: String,
        /// How long it may take to catch up with the leader's log before
        /// the add is refused, in seconds.
        #[arg(long, default_value_t = 60, value_name = "SECS")]
        catch_up_timeout: u64,
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
            Command::Init { nodes, credentials } => init(&nodes, &credentials).await,
            Command::Status { cluster, json } => status(&cluster, json).await,
            Command::Add {
                id,
                address,
                catch_up_timeout,
                cluster,
            } => add(id, &address, catch_up_timeout, &cluster).await,
            Command::Remove { id, cluster } => remove(id, &cluster).await,
        }
    })
}

/// How long `cluster init`, refused, waits for the node to show the
/// members another init gave it.
const MEMBERS_SHOWN_WAIT_MAX: std::time::Duration = std::time::Duration::from_secs(3);

/// How long `cluster init` waits for the new cluster's first leader.
const LEADER_WAIT_MAX: std::time::Duration = std::time::Duration::from_secs(10);

/// A membership command the cluster's state rules out.
#[derive(Debug, thiserror::Error)]
enum MembershipError {
    /// `cluster init` on a cluster that has members already.
    #[error(
        "cluster already initialised with members {members}; `cluster init` runs once. \
         See the cluster with `sluice cluster status`, add a node with `sluice cluster add`"
    )]
    AlreadyInitialised {
        /// The members, as ID=ADDRESS.
        members: String,
    },
    /// The node asked to initialise refused, for another reason.
    #[error("the node at {address} refused to initialise the cluster: {message}")]
    InitRefused {
        /// The node asked.
        address: std::net::SocketAddr,
        /// Its answer.
        message: String,
    },
    /// `cluster remove` of a node that is not a member.
    #[error("node {id} is not a member (members: {members}); nothing was removed")]
    NotAMember {
        /// The node named.
        id: u64,
        /// The members, as ID=ADDRESS.
        members: String,
    },
}

/// Members as `ID=ADDRESS, ...`, learners marked.
fn member_list(metadata: &Metadata) -> String {
    let members: Vec<String> = metadata
        .members
        .iter()
        .map(|(id, address, voter)| {
            format!("{id}={address}{}", if *voter { "" } else { " (learner)" })
        })
        .collect();
    if members.is_empty() {
        return "none: the cluster is not initialised (sluice cluster init)".to_owned();
    }
    members.join(", ")
}

async fn remove(id: u64, cluster: &ClusterArgs) -> Outcome {
    let client = cluster.client()?;
    let metadata = client.metadata().await?;
    if !metadata.members.iter().any(|(member, _, _)| *member == id) {
        return Err(MembershipError::NotAMember {
            id,
            members: member_list(&metadata),
        }
        .into());
    }
    let request = ClientRequest::RemoveNode { id };
    expect_done(client.request(&request).await?)?;
    println!("node {id} is no longer a member");
    Ok(ExitCode::SUCCESS)
}

/// The cluster as the node at `address` sees it.
async fn metadata_of(
    client: &Client,
    address: std::net::SocketAddr,
) -> Result<Metadata, Box<dyn std::error::Error>> {
    match client
        .request_from(address, &ClientRequest::Metadata)
        .await?
    {
        ClientResponse::Metadata(metadata) => Ok(metadata),
        other => {
            Err(format!("the node at {address} answered {other:?} to a metadata request").into())
        }
    }
}

async fn add(id: u64, address: &str, catch_up_secs: u64, cluster: &ClusterArgs) -> Outcome {
    if id == 0 {
        return Err("node id 0 is reserved for clients; use 1 or more".into());
    }
    let catch_up_ms = catch_up_secs.saturating_mul(1000);
    let catch_up_ms = match u32::try_from(catch_up_ms) {
        Ok(ms) if ms <= CATCH_UP_WAIT_MS_MAX => ms,
        _ => {
            return Err(format!(
                "--catch-up-timeout {catch_up_secs} is above the most the leader waits, {} s",
                CATCH_UP_WAIT_MS_MAX / 1000
            )
            .into());
        }
    };
    let address = resolve(address)?.to_string();
    // The leader answers once the node has caught up (or it gives up):
    // the request may take the whole catch-up time, and a retry meanwhile
    // would only wait for the same node.
    let wait = Duration::from_millis(u64::from(catch_up_ms)) + ADD_ANSWER_MARGIN;
    let mut config = ClientConfig::new(cluster.addresses()?);
    cluster.credentials().apply(&mut config)?;
    config.request_timeout = Duration::from_secs(cluster.timeout).max(wait);
    config.attempt_timeout = config.attempt_timeout.max(wait);
    let client = Client::new(config)?;
    let request = ClientRequest::AddNode {
        id,
        address: address.clone(),
        catch_up_ms,
    };
    println!(
        "adding node {id} at {address} as a learner; it becomes a voter once it has caught up \
         (waiting up to {catch_up_secs} s)"
    );
    expect_done(client.request(&request).await?)?;
    println!("node {id} caught up and is a voting member");
    Ok(ExitCode::SUCCESS)
}

/// Beyond the catch-up time, what the leader's answer to an add may take:
/// the checks before and the membership changes after.
const ADD_ANSWER_MARGIN: Duration = Duration::from_secs(15);

fn expect_done(response: ClientResponse) -> Result<(), Box<dyn std::error::Error>> {
    match response {
        ClientResponse::Done => Ok(()),
        other => Err(format!("unexpected answer: {other:?}").into()),
    }
}

async fn init(nodes: &str, credentials: &Credentials) -> Outcome {
    let (members, addresses) = parse_members(nodes)?;
    let Some(&first) = addresses.first() else {
        return Err("--nodes names no member; give ID=HOST:PORT[,ID=HOST:PORT...]".into());
    };
    let mut config = ClientConfig::new(addresses);
    credentials.apply(&mut config)?;
    let client = Client::new(config)?;
    let before = metadata_of(&client, first).await?;
    if !before.members.is_empty() {
        return Err(already_initialised(&before).into());
    }
    let request = ClientRequest::Initialize {
        members: members.clone(),
    };
    match client.request_from(first, &request).await? {
        ClientResponse::Done => {}
        ClientResponse::Error { message, .. } => {
            return refused_init(&client, first, message).await;
        }
        other => expect_done(other)?,
    }
    // Wait (a while) for the first leader and for the members to show, so
    // that the next command finds them.
    let deadline = tokio::time::Instant::now() + LEADER_WAIT_MAX;
    let metadata = loop {
        let metadata = client.metadata().await?;
        let shown = metadata.leader.is_some() && !metadata.members.is_empty();
        if shown || tokio::time::Instant::now() >= deadline {
            break metadata;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
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

/// `ID=HOST:PORT,...` as (id, address) members and their resolved
/// addresses.
type Members = (Vec<(u64, String)>, Vec<std::net::SocketAddr>);

fn parse_members(nodes: &str) -> Result<Members, Box<dyn std::error::Error>> {
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
    Ok((members, addresses))
}

fn already_initialised(metadata: &Metadata) -> MembershipError {
    MembershipError::AlreadyInitialised {
        members: member_list(metadata),
    }
}

/// The node refused to initialise: another `cluster init` may have come
/// first, so recently that the node does not show its members yet.
async fn refused_init(client: &Client, first: std::net::SocketAddr, message: String) -> Outcome {
    let deadline = tokio::time::Instant::now() + MEMBERS_SHOWN_WAIT_MAX;
    loop {
        let after = metadata_of(client, first).await?;
        if !after.members.is_empty() {
            return Err(already_initialised(&after).into());
        }
        if tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    Err(MembershipError::InitRefused {
        address: first,
        message,
    }
    .into())
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

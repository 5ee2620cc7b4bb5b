//! `sluice dlq`: list a group's dead letters on a topic, or replay them
//! into the topic, exactly once (each batch is one transaction: the
//! republished events and the replay group's offsets on the dead-letter
//! topic).

use std::process::ExitCode;
use std::time::Duration;

use base64::Engine as _;

use sluice_client::client::{Client, ClientError};
use sluice_client::protocol::{ClientRequest, ClientResponse, FetchedEvent};
use sluice_model::event::EventBatch;
use sluice_model::names::{REPLAY_GROUP, dead_letter_topic};
use sluice_model::state::{OffsetCommit, Op, Response};

use super::{ClusterArgs, Outcome, runtime};

/// Dead letters fetched at a time.
const BATCH: u32 = 500;

#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// Print the dead letters not yet replayed, oldest first.
    List {
        /// The source topic.
        #[arg(long)]
        topic: String,
        /// The consumer group whose deliveries failed.
        #[arg(long)]
        group: String,
        #[command(flatten)]
        cluster: ClusterArgs,
        /// One JSON object per dead letter.
        #[arg(long)]
        json: bool,
    },
    /// Publish every dead letter not yet replayed back into its topic.
    Replay {
        /// The source topic.
        #[arg(long)]
        topic: String,
        /// The consumer group whose deliveries failed.
        #[arg(long)]
        group: String,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
}

pub(crate) fn run(command: Command) -> Outcome {
    runtime()?.block_on(async move {
        match command {
            Command::List {
                topic,
                group,
                cluster,
                json,
            } => list(&cluster.client()?, &topic, &group, json).await,
            Command::Replay {
                topic,
                group,
                cluster,
            } => {
                let replayed = replay(&cluster.client()?, &topic, &group).await?;
                println!("replayed {replayed} dead letter(s) into {topic}");
                Ok(ExitCode::SUCCESS)
            }
        }
    })
}

async fn committed(client: &Client, dead: &str) -> Result<u64, ClientError> {
    let request = ClientRequest::Committed {
        group: REPLAY_GROUP.to_owned(),
        topic: dead.to_owned(),
        partition: 0,
    };
    match client.request(&request).await? {
        ClientResponse::Committed(offset) => Ok(offset.unwrap_or(0)),
        other => Err(ClientError::Unexpected(format!("{other:?}"))),
    }
}

fn header(letter: &FetchedEvent, name: &str) -> String {
    letter
        .headers
        .user
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        .unwrap_or_default()
}

async fn list(client: &Client, topic: &str, group: &str, json: bool) -> Outcome {
    use sluice_model::names::dead_letter_headers as h;
    let dead = dead_letter_topic(topic, group);
    let mut offset = committed(client, &dead).await?;
    let mut count = 0u64;
    loop {
        let (letters, next, (_, end)) = client
            .fetch(&dead, 0, offset, BATCH, Duration::ZERO)
            .await?;
        for letter in &letters {
            count += 1;
            if json {
                let b64 = base64::engine::general_purpose::STANDARD;
                let line = serde_json::json!({
                    "offset": letter.offset,
                    "key": String::from_utf8_lossy(&letter.key),
                    "cause": header(letter, h::CAUSE),
                    "attempts": header(letter, h::ATTEMPTS),
                    "source": header(letter, h::SOURCE),
                    "first_ms": header(letter, h::FIRST_MS),
                    "last_ms": header(letter, h::LAST_MS),
                    "payload_base64": b64.encode(&letter.payload),
                });
                println!("{line}");
            } else {
                println!(
                    "{}\t{}\t{} attempt(s)\t{}\t{}",
                    letter.offset,
                    header(letter, h::SOURCE),
                    header(letter, h::ATTEMPTS),
                    String::from_utf8_lossy(&letter.key),
                    header(letter, h::CAUSE)
                );
            }
        }
        offset = next;
        if offset >= end {
            break;
        }
    }
    if !json {
        eprintln!("{count} dead letter(s) not yet replayed in {dead}");
    }
    Ok(ExitCode::SUCCESS)
}

async fn replay(client: &Client, topic: &str, group: &str) -> Result<u64, ClientError> {
    let dead = dead_letter_topic(topic, group);
    let member = format!("dlq-replay-{}", std::process::id());
    let join = Op::JoinGroup {
        group: REPLAY_GROUP.to_owned(),
        member: member.clone(),
        topics: vec![dead.clone()],
    };
    let generation = match client.write(join).await? {
        Response::Joined { generation, .. } => generation,
        other => return Err(ClientError::Unexpected(format!("{other:?}"))),
    };
    let mut producer = client.producer().await?;
    let mut offset = committed(client, &dead).await?;
    let mut replayed = 0;
    loop {
        let (letters, next, _) = client
            .fetch(&dead, 0, offset, BATCH, Duration::ZERO)
            .await?;
        if letters.is_empty() {
            break;
        }
        let mut events = Vec::with_capacity(letters.len());
        for letter in &letters {
            let mut headers = letter.headers.clone();
            headers
                .user
                .retain(|(name, _)| !name.starts_with("sluice-dlq-"));
            let event = producer
                .stamp(topic, letter.key.clone(), letter.payload.clone(), headers)
                .await?;
            events.push(event);
        }
        let events =
            EventBatch::encode(&events).map_err(|error| ClientError::Refused(error.to_string()))?;
        let commit = OffsetCommit {
            group: REPLAY_GROUP.to_owned(),
            member: member.clone(),
            generation,
            offsets: vec![(dead.clone(), 0, next)],
        };
        match client.write(Op::Transaction { events, commit }).await? {
            Response::Transaction(Ok(_)) => {}
            Response::Transaction(Err(error)) => {
                return Err(ClientError::Refused(error.to_string()));
            }
            other => return Err(ClientError::Unexpected(format!("{other:?}"))),
        }
        replayed += letters.len() as u64;
        offset = next;
    }
    let leave = Op::LeaveGroup {
        group: REPLAY_GROUP.to_owned(),
        member,
    };
    client.write(leave).await?;
    Ok(replayed)
}

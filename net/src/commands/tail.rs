//! `sluice tail`: prints a topic's events as they arrive, alone or as a
//! member of a consumer group.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use base64::Engine as _;

use sluice::state::{OffsetCommit, Op, Response, SESSION_TIMEOUT_MS};
use sluice_net::client::{Client, ClientError};
use sluice_net::protocol::{ClientRequest, ClientResponse, FetchedEvent};

use super::{ClusterArgs, Outcome, runtime};

/// Events asked for in one fetch.
const FETCH_MAX: u32 = 1000;
/// The pause after a round of fetches that found nothing.
const IDLE_PAUSE: Duration = Duration::from_millis(100);

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The topic to read.
    topic: String,
    #[command(flatten)]
    cluster: ClusterArgs,
    /// Consume as a member of this group: continue from its committed
    /// offsets and commit what was printed.
    #[arg(long)]
    group: Option<String>,
    /// Start at the first retained event (otherwise at the end, or at the
    /// group's committed offsets).
    #[arg(long)]
    from_beginning: bool,
    /// Exit after this many seconds without a new event.
    #[arg(long, value_name = "SECS")]
    idle_exit: Option<f64>,
    /// One JSON object per event: partition, offset, key, payload (or
    /// payload_base64 when it is not UTF-8).
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(args: Args) -> Outcome {
    if let Some(secs) = args.idle_exit {
        if !(secs.is_finite() && secs >= 0.0) {
            return Err("--idle-exit must be a number of seconds, 0 or more".into());
        }
    }
    let client = args.cluster.client()?;
    runtime()?.block_on(async move {
        let mut reader = Reader::new(&client, &args).await?;
        let idle_limit = args.idle_exit.map(Duration::from_secs_f64);
        let mut last_event = Instant::now();
        let mut out = std::io::stdout().lock();
        loop {
            let events = reader.round(&client).await?;
            for (partition, event) in &events {
                print_event(&mut out, *partition, event, args.json)?;
            }
            out.flush()?;
            if events.is_empty() {
                if idle_limit.is_some_and(|limit| last_event.elapsed() >= limit) {
                    break;
                }
                tokio::time::sleep(IDLE_PAUSE).await;
            } else {
                last_event = Instant::now();
                reader.commit(&client).await?;
            }
        }
        reader.leave(&client).await?;
        Ok(ExitCode::SUCCESS)
    })
}

/// Where the tail is in each partition, and its group membership.
struct Reader {
    topic: String,
    positions: BTreeMap<u32, u64>,
    group: Option<Membership>,
    from_beginning: bool,
}

struct Membership {
    group: String,
    member: String,
    generation: u64,
    heartbeat_at: Instant,
}

impl Reader {
    async fn new(client: &Client, args: &Args) -> Result<Reader, ClientError> {
        let mut reader = Reader {
            topic: args.topic.clone(),
            positions: BTreeMap::new(),
            group: None,
            from_beginning: args.from_beginning,
        };
        match &args.group {
            Some(group) => {
                let member = format!("tail-{}-{}", std::process::id(), unique());
                let op = Op::JoinGroup {
                    group: group.clone(),
                    member: member.clone(),
                    topics: vec![args.topic.clone()],
                };
                client.write(op).await?;
                reader.group = Some(Membership {
                    group: group.clone(),
                    member,
                    generation: 0,
                    heartbeat_at: Instant::now(),
                });
                reader.refresh_assignment(client).await?;
            }
            None => {
                let metadata = client.metadata().await?;
                let partitions = metadata
                    .topics
                    .iter()
                    .find(|(name, _)| *name == args.topic)
                    .map(|(_, partitions)| *partitions)
                    .ok_or_else(|| {
                        ClientError::Refused(format!("unknown topic {:?}", args.topic))
                    })?;
                for partition in 0..partitions {
                    let start = reader.start(client, partition, None).await?;
                    reader.positions.insert(partition, start);
                }
            }
        }
        Ok(reader)
    }

    /// Where to start reading `partition`: the committed offset, else the
    /// first or the next offset.
    async fn start(
        &self,
        client: &Client,
        partition: u32,
        committed: Option<u64>,
    ) -> Result<u64, ClientError> {
        let (_, _, (first, next)) = client
            .fetch(&self.topic, partition, 0, 1, Duration::ZERO)
            .await?;
        Ok(match committed {
            Some(offset) => offset.max(first),
            None if self.from_beginning => first,
            None => next,
        })
    }

    /// Takes the group's current assignment, if it changed.
    async fn refresh_assignment(&mut self, client: &Client) -> Result<(), ClientError> {
        let Some(membership) = &self.group else {
            return Ok(());
        };
        let request = ClientRequest::Group {
            group: membership.group.clone(),
            member: membership.member.clone(),
        };
        let (generation, assignment) = match client.request(&request).await? {
            ClientResponse::Group {
                generation,
                assignment,
            } => (generation, assignment),
            other => return Err(ClientError::Unexpected(format!("{other:?}"))),
        };
        if generation == membership.generation {
            return Ok(());
        }
        let mut positions = BTreeMap::new();
        for (topic, partition, committed) in assignment {
            if topic == self.topic {
                let start = self.start(client, partition, committed).await?;
                positions.insert(partition, start);
            }
        }
        self.positions = positions;
        if let Some(membership) = &mut self.group {
            membership.generation = generation;
        }
        Ok(())
    }

    /// Tells the group this member is alive, every third of the session
    /// timeout; joins again if the group removed it meanwhile.
    async fn heartbeat(&mut self, client: &Client) -> Result<(), ClientError> {
        let Some(membership) = &mut self.group else {
            return Ok(());
        };
        if membership.heartbeat_at.elapsed() < Duration::from_millis(SESSION_TIMEOUT_MS / 3) {
            return Ok(());
        }
        let heartbeat = Op::Heartbeat {
            group: membership.group.clone(),
            member: membership.member.clone(),
        };
        if let Err(ClientError::Refused(message)) = client.write(heartbeat).await {
            tracing::warn!(%message, "the group removed this member; joining again");
            let join = Op::JoinGroup {
                group: membership.group.clone(),
                member: membership.member.clone(),
                topics: vec![self.topic.clone()],
            };
            client.write(join).await?;
            membership.generation = 0;
        }
        membership.heartbeat_at = Instant::now();
        Ok(())
    }

    /// Fetches once from every partition.
    async fn round(&mut self, client: &Client) -> Result<Vec<(u32, FetchedEvent)>, ClientError> {
        self.heartbeat(client).await?;
        self.refresh_assignment(client).await?;
        let mut out = Vec::new();
        for (&partition, position) in self.positions.iter_mut() {
            let (events, next, _) = client
                .fetch(&self.topic, partition, *position, FETCH_MAX, Duration::ZERO)
                .await?;
            *position = next;
            out.extend(events.into_iter().map(|event| (partition, event)));
        }
        Ok(out)
    }

    /// Commits what was printed, as a group member.
    async fn commit(&mut self, client: &Client) -> Result<(), ClientError> {
        let Some(membership) = &self.group else {
            return Ok(());
        };
        let commit = OffsetCommit {
            group: membership.group.clone(),
            member: membership.member.clone(),
            generation: membership.generation,
            offsets: self
                .positions
                .iter()
                .map(|(&partition, &offset)| (self.topic.clone(), partition, offset))
                .collect(),
        };
        match client.write(Op::CommitOffsets(commit)).await {
            Ok(Response::Committed) => Ok(()),
            // A rebalance raced the commit: the new owner reads these
            // events again (at-least-once), and this member moves on.
            Err(ClientError::Refused(message)) => {
                tracing::info!(%message, "commit refused; taking the new assignment");
                self.refresh_assignment(client).await
            }
            Ok(other) => Err(ClientError::Unexpected(format!("{other:?}"))),
            Err(error) => Err(error),
        }
    }

    async fn leave(&self, client: &Client) -> Result<(), ClientError> {
        if let Some(membership) = &self.group {
            let op = Op::LeaveGroup {
                group: membership.group.clone(),
                member: membership.member.clone(),
            };
            client.write(op).await?;
        }
        Ok(())
    }
}

/// A number that differs between runs started in the same process id.
fn unique() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn print_event(
    out: &mut impl Write,
    partition: u32,
    event: &FetchedEvent,
    json: bool,
) -> std::io::Result<()> {
    if json {
        let mut line = serde_json::json!({
            "partition": partition,
            "offset": event.offset,
        });
        let object = line.as_object_mut().expect("an object");
        let b64 = base64::engine::general_purpose::STANDARD;
        match std::str::from_utf8(&event.key) {
            Ok(key) => object.insert("key".into(), key.into()),
            Err(_) => object.insert("key_base64".into(), b64.encode(&event.key).into()),
        };
        match std::str::from_utf8(&event.payload) {
            Ok(payload) => object.insert("payload".into(), payload.into()),
            Err(_) => object.insert("payload_base64".into(), b64.encode(&event.payload).into()),
        };
        writeln!(out, "{line}")
    } else {
        writeln!(
            out,
            "{partition}\t{}\t{}\t{}",
            event.offset,
            String::from_utf8_lossy(&event.key),
            String::from_utf8_lossy(&event.payload)
        )
    }
}

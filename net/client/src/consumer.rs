//! A consumer over the network: alone, or as a member of a consumer group.
//!
//! A group member joins the group (`Op::JoinGroup`, through Raft), asks
//! any node for its assignment (`ClientRequest::Group`: the generation and
//! the partitions with their committed offsets), reads its partitions with
//! `Fetch` from the committed offsets, and commits what it consumed
//! (`Op::CommitOffsets`, fenced by the generation: a member that a
//! rebalance left behind is refused, and takes the new assignment). It
//! heartbeats every third of the session timeout, and joins again if the
//! group removed it meanwhile. Delivery is at least once: what was polled
//! and not committed before a rebalance or a crash is read again by the
//! partition's next owner.
//!
//! ```no_run
//! # async fn example(client: sluice_client::client::Client) -> Result<(), sluice_client::client::ClientError> {
//! use sluice_client::consumer::{RemoteConsumer, Start};
//!
//! let mut consumer =
//!     RemoteConsumer::join(client, "ledger", "worker-1", &["payments"], Start::Earliest).await?;
//! loop {
//!     let events = consumer.poll().await?;
//!     for event in &events {
//!         println!("{} {} {}", event.topic, event.partition, event.event.offset);
//!     }
//!     consumer.commit().await?;
//! #   break;
//! }
//! consumer.leave().await?;
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use sluice_model::state::{OffsetCommit, Op, Response, SESSION_TIMEOUT_MS};

use crate::client::{Client, ClientError};
use crate::protocol::{ClientRequest, ClientResponse, FETCH_BYTES_MAX, FetchedEvent};

/// Events asked for in one fetch of one partition.
const FETCH_MAX: u32 = 1000;

/// Where a consumer starts in a partition that has no committed offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Start {
    /// At the first retained event.
    Earliest,
    /// At the end: only events published from now on.
    #[default]
    Latest,
}

/// One polled event and where it came from.
#[derive(Debug, Clone)]
pub struct Polled {
    /// Its topic.
    pub topic: String,
    /// Its partition.
    pub partition: u32,
    /// The event.
    pub event: FetchedEvent,
}

/// A consumer over the network; see the module docs.
#[derive(Debug)]
pub struct RemoteConsumer {
    client: Client,
    topics: Vec<String>,
    start: Start,
    /// The next offset to read, by (topic, partition).
    positions: BTreeMap<(String, u32), u64>,
    group: Option<Membership>,
    fetch_max_bytes: u32,
}

#[derive(Debug)]
struct Membership {
    group: String,
    member: String,
    generation: u64,
    heartbeat_at: Instant,
}

impl RemoteConsumer {
    /// Joins `group` as `member`, consuming `topics`; a partition without
    /// a committed offset starts at `start`.
    pub async fn join(
        client: Client,
        group: &str,
        member: &str,
        topics: &[&str],
        start: Start,
    ) -> Result<RemoteConsumer, ClientError> {
        let topics: Vec<String> = topics.iter().map(|t| (*t).to_owned()).collect();
        client
            .write(Op::JoinGroup {
                group: group.to_owned(),
                member: member.to_owned(),
                topics: topics.clone(),
            })
            .await?;
        let mut consumer = RemoteConsumer {
            client,
            topics,
            start,
            positions: BTreeMap::new(),
            fetch_max_bytes: FETCH_BYTES_MAX,
            group: Some(Membership {
                group: group.to_owned(),
                member: member.to_owned(),
                generation: 0,
                heartbeat_at: Instant::now(),
            }),
        };
        consumer.refresh_assignment().await?;
        Ok(consumer)
    }

    /// Reads every partition of `topics`, outside any group (nothing is
    /// committed), from `start`.
    pub async fn all_partitions(
        client: Client,
        topics: &[&str],
        start: Start,
    ) -> Result<RemoteConsumer, ClientError> {
        let metadata = client.metadata().await?;
        let mut consumer = RemoteConsumer {
            client,
            topics: topics.iter().map(|t| (*t).to_owned()).collect(),
            start,
            positions: BTreeMap::new(),
            group: None,
            fetch_max_bytes: FETCH_BYTES_MAX,
        };
        for topic in consumer.topics.clone() {
            let partitions = metadata
                .topics
                .iter()
                .find(|(name, _)| *name == topic)
                .map(|(_, partitions)| *partitions)
                .ok_or_else(|| {
                    ClientError::Refused(format!(
                        "unknown topic {topic:?}; create it with `sluice topics create`"
                    ))
                })?;
            for partition in 0..partitions {
                let position = consumer.start_of(&topic, partition, None).await?;
                consumer
                    .positions
                    .insert((topic.clone(), partition), position);
            }
        }
        Ok(consumer)
    }

    /// The partitions this consumer reads now, with the next offset of each.
    pub fn positions(&self) -> impl Iterator<Item = (&str, u32, u64)> {
        self.positions
            .iter()
            .map(|((topic, partition), offset)| (topic.as_str(), *partition, *offset))
    }

    /// Bounds the bytes of events one fetch of one partition returns
    /// (counted as their records in the log; the node caps it at
    /// [`FETCH_BYTES_MAX`], the default). A poll still returns at least one
    /// event of a partition that has one, whatever its size.
    pub fn set_fetch_max_bytes(&mut self, max_bytes: u32) {
        self.fetch_max_bytes = max_bytes;
    }

    /// The group generation of the current assignment (0 outside a group,
    /// or before the first).
    pub fn generation(&self) -> u64 {
        self.group.as_ref().map_or(0, |m| m.generation)
    }

    /// Heartbeats if due, takes a new assignment if the group changed, and
    /// fetches once from every assigned partition (without waiting): up to
    /// 1,000 events and the byte bound ([`RemoteConsumer::set_fetch_max_bytes`])
    /// of each.
    pub async fn poll(&mut self) -> Result<Vec<Polled>, ClientError> {
        self.heartbeat().await?;
        self.refresh_assignment().await?;
        let mut out = Vec::new();
        for ((topic, partition), position) in self.positions.iter_mut() {
            let (events, next, _) = self
                .client
                .fetch_bounded(
                    topic,
                    *partition,
                    *position,
                    FETCH_MAX,
                    self.fetch_max_bytes,
                    Duration::ZERO,
                )
                .await?;
            *position = next;
            out.extend(events.into_iter().map(|event| Polled {
                topic: topic.clone(),
                partition: *partition,
                event,
            }));
        }
        Ok(out)
    }

    /// Commits the positions reached (everything polled so far), as a
    /// group member; nothing outside a group. A commit the group refuses
    /// (a rebalance came first) takes the new assignment instead: the
    /// partitions' new owners read the uncommitted events again.
    pub async fn commit(&mut self) -> Result<(), ClientError> {
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
                .map(|((topic, partition), &offset)| (topic.clone(), *partition, offset))
                .collect(),
        };
        match self.client.write(Op::CommitOffsets(commit)).await {
            Ok(Response::Committed) => Ok(()),
            Err(ClientError::Refused(message)) => {
                tracing::info!(%message, "commit refused; taking the new assignment");
                self.refresh_assignment().await
            }
            Ok(other) => Err(ClientError::Unexpected(format!("{other:?}"))),
            Err(error) => Err(error),
        }
    }

    /// Leaves the group (its partitions go to the other members at once).
    pub async fn leave(self) -> Result<(), ClientError> {
        if let Some(membership) = &self.group {
            self.client
                .write(Op::LeaveGroup {
                    group: membership.group.clone(),
                    member: membership.member.clone(),
                })
                .await?;
        }
        Ok(())
    }

    /// Where to start reading a partition: the committed offset (or the
    /// first retained one, if retention passed it), else per [`Start`].
    async fn start_of(
        &self,
        topic: &str,
        partition: u32,
        committed: Option<u64>,
    ) -> Result<u64, ClientError> {
        let (_, _, (first, next)) = self
            .client
            .fetch(topic, partition, 0, 1, Duration::ZERO)
            .await?;
        Ok(match (committed, self.start) {
            (Some(offset), _) => offset.max(first),
            (None, Start::Earliest) => first,
            (None, Start::Latest) => next,
        })
    }

    /// Takes the group's current assignment, if its generation changed.
    async fn refresh_assignment(&mut self) -> Result<(), ClientError> {
        let Some(membership) = &self.group else {
            return Ok(());
        };
        let request = ClientRequest::Group {
            group: membership.group.clone(),
            member: membership.member.clone(),
        };
        let (generation, assignment) = match self.client.request(&request).await? {
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
            if self.topics.contains(&topic) {
                let start = self.start_of(&topic, partition, committed).await?;
                positions.insert((topic, partition), start);
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
    async fn heartbeat(&mut self) -> Result<(), ClientError> {
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
        if let Err(ClientError::Refused(message)) = self.client.write(heartbeat).await {
            tracing::warn!(%message, "the group removed this member; joining again");
            let join = Op::JoinGroup {
                group: membership.group.clone(),
                member: membership.member.clone(),
                topics: self.topics.clone(),
            };
            self.client.write(join).await?;
            membership.generation = 0;
        }
        membership.heartbeat_at = Instant::now();
        Ok(())
    }
}

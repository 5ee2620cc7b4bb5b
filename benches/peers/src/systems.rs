//! The systems under test, each behind the same two operations: a
//! producer sends `batch` events and returns once every one of them is
//! acknowledged, and a session reads back everything published to it.
//!
//! Every system gets the same layout: `PARTITIONS` partitions (Sluice topic
//! partitions, Redis streams, NATS subjects of one stream), producer `p`
//! writing to partition `p % PARTITIONS`, a fresh topic (stream) per
//! workload row, deleted afterwards.
//!
//! How a batch of 100 is sent, in each system's own idiom:
//! - Sluice embedded: 100 `Producer::send` calls (each queues the event and
//!   returns a receipt), then every receipt awaited; the batcher coalesces
//!   them. The embedded bus has no batch publish call.
//! - Sluice cluster and node processes: one `RemoteProducer::publish` of
//!   100 stamped events (one request).
//! - Redis: one pipeline of 100 `XADD`s (one round trip).
//! - NATS JetStream: 100 `publish` calls, then the 100 acks awaited.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use sluice_client::client::{Client, ClientConfig, RemoteProducer};
use sluice_client::protocol::PublishOutcome;
use sluice_core::bus::{Bus, BusConfig, Message, PendingReceipt, Producer};
use sluice_core::raft::Durability;
use sluice_model::event::Headers;
use sluice_model::state::TopicConfig;
use sluice_server::node::ClusterNode;

use crate::Outcome;

/// Partitions (streams, subjects) per topic.
pub(crate) const PARTITIONS: u32 = 16;
/// Events asked for per read call when reading back.
const READ_BATCH_MAX: usize = 1000;
/// How long a read back may go without any event before it gives up.
const READ_IDLE_MAX: Duration = Duration::from_secs(10);
/// Redis and NATS clients wait this long for an answer (Redis's own default
/// is 500 ms, which an `appendfsync always` stall can exceed).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// A system and durability setting, as configured for a run.
#[derive(Debug, Clone)]
pub(crate) enum Target {
    /// `sluice_core::bus::Bus`, in this process.
    Embedded(Durability),
    /// Three `ClusterNode`s on loopback in this process, driven through
    /// `sluice_client::client`.
    Cluster(Durability),
    /// `sluice node` processes started by `run.sh`, driven over the client
    /// protocol from this process, each producer on its own connection:
    /// the server path a service uses.
    Node {
        /// `durable` or `buffer-only`, as the nodes were started.
        setting: String,
        /// The nodes' client addresses.
        addresses: Vec<SocketAddr>,
    },
    /// A `redis-server` started by `run.sh`.
    Redis { setting: String, address: String },
    /// A `nats-server -js` started by `run.sh`.
    Nats { setting: String, address: String },
}

/// Whether a setting acknowledges only what is on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub(crate) enum Class {
    /// Acknowledged after fsync.
    Fsync,
    /// Acknowledged once in memory (page cache, periodic fsync).
    Memory,
}

impl Target {
    pub(crate) fn system(&self) -> &'static str {
        match self {
            Target::Embedded(_) => "Sluice embedded",
            Target::Cluster(_) => "Sluice 3-node cluster",
            Target::Node { addresses, .. } if addresses.len() == 1 => "Sluice node (process)",
            Target::Node { .. } => "Sluice 3 nodes (processes)",
            Target::Redis { .. } => "Redis Streams",
            Target::Nats { .. } => "NATS JetStream",
        }
    }

    pub(crate) fn setting(&self) -> String {
        match self {
            Target::Embedded(d) | Target::Cluster(d) => match d {
                Durability::Sync => "durable".to_owned(),
                Durability::Buffer => "buffer-only".to_owned(),
            },
            Target::Node { setting, .. } => setting.clone(),
            Target::Redis { setting, .. } => format!("appendfsync {setting}"),
            Target::Nats { setting, .. } => format!("sync_interval {setting}"),
        }
    }

    pub(crate) fn class(&self) -> Class {
        let fsync = match self {
            Target::Embedded(d) | Target::Cluster(d) => *d == Durability::Sync,
            Target::Node { setting, .. } => setting == "durable",
            Target::Redis { setting, .. } | Target::Nats { setting, .. } => setting == "always",
        };
        if fsync { Class::Fsync } else { Class::Memory }
    }

    /// Opens a fresh topic named `topic` on this system.
    pub(crate) async fn open(&self, root: &Path, topic: &str) -> Outcome<Session> {
        let topic = topic.to_owned();
        match self {
            Target::Embedded(durability) => {
                let dir = sluice_benches::scratch(root, "embedded")?;
                let config = BusConfig {
                    durability: *durability,
                    // Room for a whole batch of 100 per producer.
                    inflight_per_producer_max: 128,
                    ..BusConfig::default()
                };
                let bus = Bus::open_with_config(dir.path(), config).await?;
                bus.create_topic(&topic, PARTITIONS, TopicConfig::default())
                    .await?;
                // The steady state of a log written to for a while: on a
                // segment written out ahead (`log/spare.rs`). On a topic
                // of its own, which the read-back never sees.
                let warm = format!("{topic}-warm-up");
                bus.create_topic(&warm, PARTITIONS, TopicConfig::default())
                    .await?;
                sluice_benches::warm_up_bus(&bus, &warm)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(Session::Embedded {
                    bus,
                    topic,
                    _dir: dir,
                })
            }
            Target::Cluster(durability) => {
                let (dir, nodes, client) = sluice_benches::cluster::start(root, 3, *durability)
                    .await
                    .map_err(|e| e.to_string())?;
                client.create_topic(&topic, PARTITIONS).await?;
                let warm = format!("{topic}-warm-up");
                client.create_topic(&warm, PARTITIONS).await?;
                sluice_benches::cluster::warm_up(&client, &nodes, &warm)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(Session::Cluster {
                    nodes,
                    client,
                    topic,
                    _dir: dir,
                })
            }
            Target::Node { addresses, .. } => {
                let client = node_client(addresses)?;
                client.create_topic(&topic, PARTITIONS).await?;
                let warm = format!("{topic}-warm-up");
                client.create_topic(&warm, PARTITIONS).await?;
                warm_up_nodes(addresses, &warm).await?;
                Ok(Session::Node {
                    addresses: addresses.clone(),
                    client,
                    topic,
                })
            }
            Target::Redis { address, .. } => {
                let client = redis::Client::open(format!("redis://{address}/"))?;
                let mut connection = redis_connection(&client).await?;
                for p in 0..PARTITIONS {
                    redis::cmd("XGROUP")
                        .arg("CREATE")
                        .arg(format!("{topic}:{p}"))
                        .arg("reader")
                        .arg("0")
                        .arg("MKSTREAM")
                        .query_async::<()>(&mut connection)
                        .await?;
                }
                Ok(Session::Redis { client, topic })
            }
            Target::Nats { address, .. } => {
                let context = nats_context(address).await?;
                use async_nats::jetstream::stream;
                context
                    .create_stream(stream::Config {
                        name: topic.clone(),
                        subjects: vec![format!("{topic}.>")],
                        storage: stream::StorageType::File,
                        num_replicas: 1,
                        ..Default::default()
                    })
                    .await?;
                Ok(Session::Nats {
                    address: address.clone(),
                    context,
                    topic,
                })
            }
        }
    }
}

/// A client of the nodes at `addresses`, on a connection of its own.
fn node_client(addresses: &[SocketAddr]) -> Outcome<Client> {
    Ok(Client::new(ClientConfig::new(addresses.to_vec()))?)
}

/// How long the producers load a node process before a row is measured.
const NODE_WARM_UP: Duration = Duration::from_secs(2);

/// Single sends from 16 producers for [`NODE_WARM_UP`], so a row starts on
/// connections, sessions and a log that are already running (the nodes'
/// own state is not visible from here, unlike `cluster::warm_up`'s).
async fn warm_up_nodes(addresses: &[SocketAddr], topic: &str) -> Outcome<()> {
    let until = Instant::now() + NODE_WARM_UP;
    let mut tasks = Vec::new();
    for p in 0..16_u32 {
        let mut producer = node_client(addresses)?.producer().await?;
        let topic = topic.to_owned();
        tasks.push(tokio::spawn(async move {
            let payload = Bytes::from(vec![b'w'; 256]);
            let key = Bytes::from(p.to_le_bytes().to_vec());
            while Instant::now() < until {
                let event = producer
                    .stamp(&topic, key.clone(), payload.clone(), Headers::default())
                    .await?;
                producer.publish(vec![event]).await?;
            }
            Ok::<(), sluice_client::client::ClientError>(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}

async fn redis_connection(client: &redis::Client) -> Outcome<redis::aio::MultiplexedConnection> {
    let config = redis::AsyncConnectionConfig::new()
        .set_response_timeout(Some(ANSWER_TIMEOUT))
        .set_connection_timeout(Some(ANSWER_TIMEOUT));
    Ok(client
        .get_multiplexed_async_connection_with_config(&config)
        .await?)
}

async fn nats_context(address: &str) -> Outcome<async_nats::jetstream::Context> {
    let client = async_nats::connect(address).await?;
    Ok(async_nats::jetstream::ContextBuilder::new()
        .timeout(ANSWER_TIMEOUT)
        .ack_timeout(ANSWER_TIMEOUT)
        .build(client))
}

/// One workload row's topic on one system.
#[derive(Debug)]
pub(crate) enum Session {
    Embedded {
        bus: Bus,
        topic: String,
        _dir: tempfile::TempDir,
    },
    Cluster {
        nodes: Vec<ClusterNode>,
        client: Client,
        topic: String,
        _dir: tempfile::TempDir,
    },
    Node {
        addresses: Vec<SocketAddr>,
        client: Client,
        topic: String,
    },
    Redis {
        client: redis::Client,
        topic: String,
    },
    Nats {
        address: String,
        context: async_nats::jetstream::Context,
        topic: String,
    },
}

impl Session {
    /// Producer number `p`, with its own connection where the system has
    /// connections.
    pub(crate) async fn producer(&self, p: u32) -> Outcome<Sender> {
        let partition = p % PARTITIONS;
        Ok(match self {
            Session::Embedded { bus, topic, .. } => Sender::Embedded {
                producer: bus.producer().await?,
                topic: topic.clone(),
                partition,
                pending: Vec::new(),
            },
            Session::Cluster { client, topic, .. } => Sender::Cluster {
                producer: client.producer().await?,
                topic: topic.clone(),
                key: Bytes::from(p.to_le_bytes().to_vec()),
            },
            Session::Node {
                addresses, topic, ..
            } => Sender::Cluster {
                producer: node_client(addresses)?.producer().await?,
                topic: topic.clone(),
                key: Bytes::from(p.to_le_bytes().to_vec()),
            },
            Session::Redis { client, topic } => Sender::Redis {
                connection: redis_connection(client).await?,
                key: format!("{topic}:{partition}"),
            },
            Session::Nats { address, topic, .. } => Sender::Nats {
                context: nats_context(address).await?,
                subject: format!("{topic}.{partition}"),
                pending: Vec::new(),
            },
        })
    }

    /// Reads every event of the topic back from the start, as one
    /// consumer (in a group where the system has groups), without
    /// acknowledging each event. Returns how many it read; stops at
    /// `expected` or after `READ_IDLE_MAX` without progress.
    pub(crate) async fn read_back(&self, expected: u64) -> Outcome<u64> {
        match self {
            Session::Embedded { bus, topic, .. } => {
                let mut consumer = bus.consumer("reader", "reader-1", &[topic]).await?;
                read_until(expected, async || {
                    Ok(consumer.poll(READ_BATCH_MAX, READ_IDLE_MAX).await?.len() as u64)
                })
                .await
            }
            Session::Cluster { client, topic, .. } | Session::Node { client, topic, .. } => {
                let mut offsets = [0_u64; PARTITIONS as usize];
                let mut turn = 0;
                read_until(expected, async || {
                    // Partitions in turn; an empty one answers at once.
                    let mut got = 0;
                    for _ in 0..PARTITIONS {
                        let p = turn % PARTITIONS;
                        turn += 1;
                        let (events, next, _) = client
                            .fetch(
                                topic,
                                p,
                                offsets[p as usize],
                                READ_BATCH_MAX as u32,
                                Duration::ZERO,
                            )
                            .await?;
                        offsets[p as usize] = next;
                        got += events.len() as u64;
                        if got > 0 {
                            break;
                        }
                    }
                    Ok(got)
                })
                .await
            }
            Session::Redis { client, topic } => {
                let mut connection = redis_connection(client).await?;
                let keys: Vec<String> = (0..PARTITIONS).map(|p| format!("{topic}:{p}")).collect();
                let ids = vec![">"; keys.len()];
                let options = redis::streams::StreamReadOptions::default()
                    .group("reader", "reader-1")
                    .count(READ_BATCH_MAX);
                read_until(expected, async || {
                    let reply: Option<redis::streams::StreamReadReply> =
                        redis::AsyncCommands::xread_options(&mut connection, &keys, &ids, &options)
                            .await?;
                    Ok(reply.map_or(0, |r| r.keys.iter().map(|k| k.ids.len() as u64).sum()))
                })
                .await
            }
            Session::Nats { context, topic, .. } => {
                use async_nats::jetstream::consumer::{AckPolicy, pull};
                let stream = context.get_stream(topic).await?;
                let consumer = stream
                    .create_consumer(pull::Config {
                        durable_name: Some("reader".to_owned()),
                        ack_policy: AckPolicy::None,
                        ..Default::default()
                    })
                    .await?;
                let mut messages = consumer.messages().await?;
                read_until(expected, async || {
                    match tokio::time::timeout(READ_IDLE_MAX, messages.next()).await {
                        Ok(Some(message)) => {
                            message.map_err(|e| e.to_string())?;
                            Ok(1)
                        }
                        Ok(None) | Err(_) => Ok(0),
                    }
                })
                .await
            }
        }
    }

    /// Deletes the topic's data and stops what the session started.
    pub(crate) async fn close(self) -> Outcome<()> {
        match self {
            Session::Embedded { bus, .. } => bus.close().await?,
            Session::Cluster { nodes, .. } => {
                for node in nodes {
                    node.shutdown().await?;
                }
            }
            // Topics cannot be deleted yet: the row's topic stays on the
            // nodes, which `run.sh` removes with their data at the end.
            Session::Node { .. } => {}
            Session::Redis { client, topic } => {
                let mut connection = redis_connection(&client).await?;
                let keys: Vec<String> = (0..PARTITIONS).map(|p| format!("{topic}:{p}")).collect();
                redis::cmd("DEL")
                    .arg(&keys)
                    .query_async::<()>(&mut connection)
                    .await?;
            }
            Session::Nats { context, topic, .. } => {
                context.delete_stream(&topic).await?;
            }
        }
        Ok(())
    }
}

/// Calls `read` (which returns how many events it got) until `expected`
/// events are in, or until it has returned nothing for `READ_IDLE_MAX`.
async fn read_until(expected: u64, mut read: impl AsyncFnMut() -> Outcome<u64>) -> Outcome<u64> {
    let mut count = 0;
    let mut progress = Instant::now();
    while count < expected && progress.elapsed() < READ_IDLE_MAX {
        let got = read().await?;
        if got > 0 {
            count += got;
            progress = Instant::now();
        }
    }
    Ok(count)
}

/// A producer of one system; see the module docs for how each sends a
/// batch.
#[derive(Debug)]
pub(crate) enum Sender {
    Embedded {
        producer: Producer,
        topic: String,
        partition: u32,
        pending: Vec<PendingReceipt>,
    },
    Cluster {
        producer: RemoteProducer,
        topic: String,
        key: Bytes,
    },
    Redis {
        connection: redis::aio::MultiplexedConnection,
        key: String,
    },
    Nats {
        context: async_nats::jetstream::Context,
        subject: String,
        pending: Vec<async_nats::jetstream::context::PublishAckFuture>,
    },
}

impl Sender {
    /// Sends `batch` events of `payload` and returns once all are
    /// acknowledged.
    pub(crate) async fn send(&mut self, payload: &Bytes, batch: usize) -> Outcome<()> {
        assert!(batch > 0);
        match self {
            Sender::Embedded {
                producer,
                topic,
                partition,
                pending,
            } => {
                for _ in 0..batch {
                    let message =
                        Message::new(topic.as_str(), payload.clone()).partition(*partition);
                    pending.push(producer.send(message).await?);
                }
                for receipt in pending.drain(..) {
                    receipt.wait().await?;
                }
            }
            Sender::Cluster {
                producer,
                topic,
                key,
            } => {
                let mut events = Vec::with_capacity(batch);
                for _ in 0..batch {
                    let event = producer
                        .stamp(topic, key.clone(), payload.clone(), Headers::default())
                        .await?;
                    events.push(event);
                }
                for outcome in producer.publish(events).await? {
                    if let PublishOutcome::Refused { message } = outcome {
                        return Err(format!("refused: {message}").into());
                    }
                }
            }
            Sender::Redis { connection, key } => {
                let mut pipe = redis::pipe();
                for _ in 0..batch {
                    pipe.cmd("XADD")
                        .arg(&*key)
                        .arg("*")
                        .arg("d")
                        .arg(&payload[..]);
                }
                let ids: Vec<String> = pipe.query_async(connection).await?;
                assert_eq!(ids.len(), batch);
            }
            Sender::Nats {
                context,
                subject,
                pending,
            } => {
                for _ in 0..batch {
                    pending.push(context.publish(subject.clone(), payload.clone()).await?);
                }
                for ack in pending.drain(..) {
                    ack.await?;
                }
            }
        }
        Ok(())
    }
}

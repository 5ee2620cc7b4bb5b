//! Idempotent producers.
//!
//! A producer has an id and an epoch from the state machine and numbers
//! its events per partition. `send` assigns the sequence at once and queues
//! the event for the batcher; retrying the same event (`resend`) after an
//! ambiguous failure is deduplicated by the state machine, which answers
//! with the original offset. In-flight publishes are bounded per producer:
//! `send` waits for room (back-pressure).

use crate::io::Env;
use crate::io::os::OsEnv;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use openraft::alias::{OneshotReceiverOf, WatchReceiverOf};
use openraft::async_runtime::{MpscSender, WatchReceiver};
use openraft::type_config::TypeConfigExt;

use crate::io::wall_unix_ms;
use crate::raft::TypeConfig;
use sluice_model::event::{Event, Headers, ProducerStamp, partition_for};
use sluice_model::state::{Op, Response};

use super::batcher::Request;
pub(crate) use super::inflight::Gauge;
pub use super::inflight::Receipt;
use super::{Bus, BusError, Inner};

/// What to publish.
#[derive(Debug, Clone, Default)]
pub struct Message {
    /// Target topic.
    pub topic: String,
    /// Business key; events with the same key go to the same partition,
    /// in order. Empty: partitions are taken in turn.
    pub key: Bytes,
    /// The body, shared without copying.
    pub payload: Bytes,
    /// Business context: type, schema version, trace context, sensitivity.
    pub headers: Headers,
    /// An explicit partition, overriding the key.
    pub partition: Option<u32>,
}

impl Message {
    /// A message for `topic` carrying `payload`.
    pub fn new(topic: impl Into<String>, payload: impl Into<Bytes>) -> Self {
        Message {
            topic: topic.into(),
            payload: payload.into(),
            ..Message::default()
        }
    }

    /// Sets the business key.
    pub fn key(mut self, key: impl Into<Bytes>) -> Self {
        self.key = key.into();
        self
    }

    /// Sets the headers.
    pub fn headers(mut self, headers: Headers) -> Self {
        self.headers = headers;
        self
    }

    /// Sends to one partition explicitly.
    pub fn partition(mut self, partition: u32) -> Self {
        self.partition = Some(partition);
        self
    }
}

/// A publish on its way; `.wait()` for its receipt.
pub struct PendingReceipt<E: Env = OsEnv> {
    reply: OneshotReceiverOf<TypeConfig<E>, Result<Receipt, BusError>>,
    event: Event,
}

impl<E: Env> fmt::Debug for PendingReceipt<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingReceipt")
            .field("producer", &self.event.producer)
            .finish_non_exhaustive()
    }
}

impl<E: Env> PendingReceipt<E> {
    /// Waits until the event is durable (or refused).
    pub async fn wait(self) -> Result<Receipt, BusError> {
        self.reply
            .await
            .map_err(|_| BusError::raft("the bus stopped before answering"))?
    }

    /// The event as sent, with its producer stamp, for `Producer::resend`.
    pub fn event(&self) -> &Event {
        &self.event
    }
}

/// An idempotent producer; see the module docs.
pub struct Producer<E: Env = OsEnv> {
    bus: Bus<E>,
    id: u64,
    epoch: u32,
    sequences: HashMap<(String, u32), u64>,
    next_partition: u32,
    gauge: Arc<Gauge<E>>,
    released: WatchReceiverOf<TypeConfig<E>, u64>,
}

impl<E: Env> fmt::Debug for Producer<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Producer")
            .field("id", &self.id)
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}

impl<E: Env> Producer<E> {
    pub(crate) async fn init(bus: Bus<E>, name: Option<String>) -> Result<Self, BusError> {
        let (id, epoch) = match bus.write(Op::InitProducer { name }).await? {
            Response::ProducerInit { id, epoch } => (id, epoch),
            Response::Error(error) => return Err(error.into()),
            other => {
                return Err(BusError::raft(format!(
                    "unexpected answer to InitProducer: {other:?}"
                )));
            }
        };
        let (released, receiver) = TypeConfig::<E>::watch_channel(0u64);
        Ok(Producer {
            bus,
            id,
            epoch,
            sequences: HashMap::new(),
            next_partition: 0,
            gauge: Arc::new(Gauge::new(released)),
            released: receiver,
        })
    }

    /// This producer's id and epoch.
    pub fn identity(&self) -> (u64, u32) {
        (self.id, self.epoch)
    }

    /// Publishes and waits until the event is durable.
    pub async fn publish(&mut self, message: Message) -> Result<Receipt, BusError> {
        self.send(message).await?.wait().await
    }

    /// Queues an event (waiting for room if too many are in flight) and
    /// returns at once with a pending receipt: publishes pipeline.
    pub async fn send(&mut self, message: Message) -> Result<PendingReceipt<E>, BusError> {
        // A producer signature, if the message carries one, must verify
        // before anything is queued (`audit::signing`).
        super::audit::check_event(
            &*self.bus.inner().config.signatures,
            &sluice_model::records::SignedParts {
                topic: &message.topic,
                key: &message.key,
                payload: &message.payload,
                headers: &message.headers,
            },
        )?;
        let event = self.stamp(message)?;
        if let Err(error) = event.validate() {
            self.unstamp(&event);
            return Err(error.into());
        }
        self.enqueue(event).await
    }

    /// Sends an event again exactly as first sent (same producer stamp),
    /// after an ambiguous failure; the bus appends it at most once.
    pub async fn resend(&mut self, event: Event) -> Result<PendingReceipt<E>, BusError> {
        self.enqueue(event).await
    }

    async fn enqueue(&mut self, event: Event) -> Result<PendingReceipt<E>, BusError> {
        let max = self.bus.inner().config.inflight_per_producer_max;
        while self.gauge.count.load(Ordering::Acquire) >= max {
            self.released
                .changed()
                .await
                .map_err(|_| BusError::Closed)?;
        }
        queue(self.bus.inner(), event, &self.gauge).await
    }

    /// Waits until nothing this producer sent is in flight.
    pub async fn flush(&mut self) -> Result<(), BusError> {
        while self.gauge.count.load(Ordering::Acquire) > 0 {
            self.released
                .changed()
                .await
                .map_err(|_| BusError::Closed)?;
        }
        Ok(())
    }

    /// Turns a message into an event: chooses the partition and assigns
    /// the next sequence number of this producer in it.
    pub(crate) fn stamp(&mut self, message: Message) -> Result<Event, BusError> {
        let partitions = {
            let state = self.bus.inner().view.read();
            let topic = state
                .topic(&message.topic)
                .ok_or_else(|| BusError::UnknownTopic {
                    topic: message.topic.clone(),
                })?;
            topic.partitions
        };
        let partition = match message.partition {
            Some(p) if p >= partitions => {
                return Err(BusError::Invalid(format!(
                    "partition {p} of topic {:?}, which has {partitions}",
                    message.topic
                )));
            }
            Some(p) => p,
            None if message.key.is_empty() => {
                self.next_partition = self.next_partition.wrapping_add(1);
                self.next_partition % partitions
            }
            None => partition_for(&message.key, partitions),
        };
        let slot = self
            .sequences
            .entry((message.topic.clone(), partition))
            .or_insert(0);
        let sequence = *slot;
        *slot += 1;
        Ok(Event {
            topic: message.topic,
            key: message.key,
            payload: message.payload,
            headers: message.headers,
            producer: ProducerStamp {
                id: self.id,
                epoch: self.epoch,
                sequence,
            },
            partition,
            timestamp_ms: wall_unix_ms(&*self.bus.inner().clock),
        })
    }

    /// Gives back the sequence of an event that was never sent.
    pub(crate) fn unstamp(&mut self, event: &Event) {
        let slot = self
            .sequences
            .get_mut(&(event.topic.clone(), event.partition))
            .expect("stamped before");
        assert_eq!(
            *slot,
            event.producer.sequence + 1,
            "only the last stamp can be returned"
        );
        *slot -= 1;
    }

    /// The sequence counters, to roll back an aborted transaction.
    pub(crate) fn sequences(&self) -> HashMap<(String, u32), u64> {
        self.sequences.clone()
    }

    pub(crate) fn restore_sequences(&mut self, sequences: HashMap<(String, u32), u64>) {
        self.sequences = sequences;
    }
}

impl<E: Env> Bus<E> {
    /// Queues an event a remote producer stamped itself (producer id, epoch,
    /// sequence and partition), as a node does for its network clients.
    /// The state machine deduplicates and orders it exactly as a local
    /// producer's event; a resend with the same stamp returns the original
    /// offset. The caller bounds how many it has in flight. The event's
    /// timestamp is replaced by this node's clock. A producer signature,
    /// if the event carries one, must verify (`BusError::Signature`).
    pub async fn send_stamped(&self, mut event: Event) -> Result<PendingReceipt<E>, BusError> {
        let inner = self.inner();
        {
            let state = inner.view.read();
            let topic = state
                .topic(&event.topic)
                .ok_or_else(|| BusError::UnknownTopic {
                    topic: event.topic.clone(),
                })?;
            if event.partition >= topic.partitions {
                return Err(BusError::Invalid(format!(
                    "partition {} of topic {:?}, which has {}",
                    event.partition, event.topic, topic.partitions
                )));
            }
        }
        // A remote producer's signature is checked here, on the leader,
        // before anything is queued (`audit::signing`).
        super::audit::check_event(
            &*self.inner().config.signatures,
            &sluice_model::records::SignedParts {
                topic: &event.topic,
                key: &event.key,
                payload: &event.payload,
                headers: &event.headers,
            },
        )?;
        event.timestamp_ms = wall_unix_ms(&*inner.clock);
        event.validate()?;
        queue(inner, event, &inner.relay).await
    }
}

/// Hands `event` to the batcher, counted in `gauge` until it is answered.
async fn queue<E: Env>(
    inner: &Inner<E>,
    event: Event,
    gauge: &Arc<Gauge<E>>,
) -> Result<PendingReceipt<E>, BusError> {
    gauge.count.fetch_add(1, Ordering::AcqRel);
    let (reply, receiver) = TypeConfig::<E>::oneshot();
    let request = Request {
        event: event.clone(),
        reply,
        gauge: Arc::clone(gauge),
    };
    if inner.batcher.send(request).await.is_err() {
        gauge.release();
        return Err(BusError::Closed);
    }
    sluice_model::stage!(
        sluice_model::trace::stamp_key(event.producer.id, event.partition, event.producer.sequence),
        Enqueued
    );
    Ok(PendingReceipt {
        reply: receiver,
        event,
    })
}

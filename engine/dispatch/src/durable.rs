//! Durable typed subscriptions: the dispatch core over the bus's replicated
//! topics.
//!
//! `bus.subscribe::<T, _>(group, handler)` joins consumer group `group` on
//! the topic named `T::TYPE_NAME` and runs a task that, for every batch it
//! polls:
//!
//! 1. decodes each event as a `T` (its type and schema version must be
//!    `T`'s, and its content type a known [`Encoding`]; otherwise the
//!    event is a dead letter with that cause, never silently dropped);
//! 2. runs the handler under the delivery's deadline (the subscription's,
//!    or the event's own `sluice-deadline-ms` header if that comes first)
//!    and its business id's cancellation, retrying with backoff per the
//!    [`RetryPolicy`]; a panic is a failed attempt;
//! 3. commits, in **one** transaction (one Raft entry, all or nothing):
//!    the group's offsets past the batch, a lifecycle record per delivery
//!    on [`LIFECYCLE_TOPIC`] (its final state and cause, each attempt's
//!    start time and error, when it was reported), and a dead letter per failed, timed-out or undecodable
//!    delivery on [`dead_letter_topic`]`(topic, group)`, carrying the cause
//!    in its headers.
//!
//! So every delivery, retry and dead letter is in the log, exactly once
//! per committed batch; a crash before the commit delivers the batch again
//! (at-least-once handling, exactly-once records). Cancellation crosses the
//! cluster through the log: [`DurableBus::cancel`] appends the business id
//! and a reason to [`CANCEL_TOPIC`], which every subscription reads, before
//! each attempt and while one runs. A cancellation applies to the events
//! of its business id in *earlier* log entries only, whichever node or
//! producer wrote them: the log's order is the one order every node
//! agrees on, and an event published after the cancellation returned is
//! always in a later entry. Dead letters are
//! listed with [`Bus::dead_letters`] and replayed into the source topic
//! with [`Bus::replay_dead_letters`], itself one transaction per batch
//! (republish + commit of the replay group's offsets), so a replay that
//! crashes midway never replays a letter twice.

use sluice_core::io::Env;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::future::{Either, select};
use openraft::alias::JoinHandleOf;
use openraft::type_config::TypeConfigExt;

use super::class::SlaClass;
use super::context::{CancelRegistry, Context, State, SubscriptionShared};
use super::options::{EventOptions, delivery_headers};
use super::retry::RetryPolicy;
use super::typed::{Encoding, TypedEvent, to_event};
use super::worker::Handler;
use sluice_core::bus::{Bus, BusError, Consumer, Delivery, Message, Producer, Receipt};
use sluice_core::io::wall_unix_ms;
use sluice_core::raft::TypeConfig;
use sluice_model::event::Headers;
use sluice_model::state::{StateError, TopicConfig};

pub use sluice_model::names::{
    CANCEL_TOPIC, LIFECYCLE_TOPIC, REPLAY_GROUP, dead_letter_headers, dead_letter_topic,
};

/// How a durable subscription delivers.
#[derive(Debug, Clone)]
pub struct DurableConfig {
    /// Retries and backoff.
    pub retry: RetryPolicy,
    /// Time from a delivery's first attempt until it times out; an event
    /// whose `sluice-deadline-ms` header comes sooner times out then.
    pub deadline: Duration,
    /// The class of a delivery whose event names none in its
    /// `sluice-sla-class` header.
    pub class: SlaClass,
    /// Events handled per poll (and per transaction) at most.
    pub batch_max: usize,
    /// Partitions of the topic, if the subscription creates it.
    pub partitions: u32,
    /// The member name in the group; default `{group}-{process-unique n}`.
    pub member: Option<String>,
    /// A local dispatcher whose SLA classes (histograms, budgets, alerts,
    /// metrics) count these deliveries, publish → reported, and whose
    /// cancel registry they share; `None`: no SLA accounting.
    pub dispatcher: Option<super::DispatcherHandle>,
}

impl Default for DurableConfig {
    fn default() -> Self {
        DurableConfig {
            retry: RetryPolicy::default(),
            deadline: Duration::from_secs(30),
            class: SlaClass::P1,
            batch_max: 256,
            partitions: 4,
            member: None,
            dispatcher: None,
        }
    }
}

/// A running durable subscription; [`DurableSubscription::unsubscribe`]
/// stops it after its current batch and leaves the group.
pub struct DurableSubscription<E: Env> {
    group: String,
    topic: String,
    stop: Arc<AtomicBool>,
    task: JoinHandleOf<TypeConfig<E>, Result<(), BusError>>,
}

impl<E: Env> fmt::Debug for DurableSubscription<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DurableSubscription")
            .field("group", &self.group)
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl<E: Env> DurableSubscription<E> {
    /// The topic it consumes.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Stops after the batch in hand (committed as usual), leaves the
    /// group, and returns how the task ended.
    pub async fn unsubscribe(self) -> Result<(), BusError> {
        self.stop.store(true, Ordering::Release);
        self.task
            .await
            .map_err(|error| BusError::raft(format!("the subscription task failed: {error}")))?
    }
}

/// What one delivery did: how it ended, when each attempt started and
/// each failed attempt's error (`errors[i]` is attempt `i + 1`'s), and
/// what its event asked for.
#[derive(Debug)]
struct Attempts {
    outcome: Outcome,
    started_ms: Vec<u64>,
    errors: Vec<String>,
    class: SlaClass,
    deadline_ms: Option<u64>,
}

impl Attempts {
    fn count(&self) -> u32 {
        self.started_ms.len() as u32
    }
}

/// How one delivery ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Processed,
    Failed(String),
    TimedOut(Expiry),
    /// With the cancellation's reason.
    Cancelled(String),
    /// Not a `T` this subscription can decode, or its delivery headers do
    /// not parse.
    Undecodable(String),
}

/// Whose deadline a timed-out delivery missed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expiry {
    /// [`DurableConfig::deadline`] after the first attempt.
    Subscription,
    /// The event's `sluice-deadline-ms`.
    Event(u64),
}

impl Outcome {
    fn state(&self) -> &'static str {
        match self {
            Outcome::Processed => "processed",
            Outcome::Failed(_) => "failed",
            Outcome::TimedOut(_) => "timed_out",
            Outcome::Cancelled(_) => "cancelled",
            Outcome::Undecodable(_) => "undecodable",
        }
    }

    /// Why the delivery was given up; `Some` makes it a dead letter.
    fn cause(&self) -> Option<String> {
        match self {
            Outcome::Processed | Outcome::Cancelled(_) => None,
            Outcome::Failed(error) | Outcome::Undecodable(error) => Some(error.clone()),
            Outcome::TimedOut(Expiry::Subscription) => Some("timed out".to_owned()),
            Outcome::TimedOut(Expiry::Event(deadline_ms)) => Some(format!(
                "timed out: the event's deadline passed ({} {deadline_ms})",
                delivery_headers::DEADLINE_MS
            )),
        }
    }

    fn reason(&self) -> Option<&str> {
        match self {
            Outcome::Cancelled(reason) => Some(reason),
            _ => None,
        }
    }
}

/// Durable dispatch on a bus: bring this trait into scope and call
/// these on a `Bus`.
// Implemented only for `Bus`, so callers always see the concrete futures
// (which are `Send`); a `Send` bound in the trait would add nothing.
#[allow(async_fn_in_trait)]
pub trait DurableBus<E: Env> {
    /// Subscribes `handler` to the durable topic `T::TYPE_NAME` as a member
    /// of `group`, with default settings; see the module docs.
    async fn subscribe<T: TypedEvent, H: Handler<T>>(
        &self,
        group: &str,
        handler: H,
    ) -> Result<DurableSubscription<E>, BusError>;

    /// [`DurableBus::subscribe`] with settings.
    async fn subscribe_with<T: TypedEvent, H: Handler<T>>(
        &self,
        group: &str,
        handler: H,
        config: DurableConfig,
    ) -> Result<DurableSubscription<E>, BusError>;

    /// Publishes a typed event to its durable topic (`T::TYPE_NAME`)
    /// through `producer`, encoded with `encoding`.
    async fn publish_typed<T: TypedEvent>(
        &self,
        producer: &mut Producer<E>,
        value: &T,
        encoding: Encoding,
    ) -> Result<Receipt, BusError>;

    /// [`DurableBus::publish_typed`] with a deadline or an SLA class for
    /// every delivery, carried in the event's headers.
    async fn publish_typed_with<T: TypedEvent>(
        &self,
        producer: &mut Producer<E>,
        value: &T,
        encoding: Encoding,
        options: EventOptions,
    ) -> Result<Receipt, BusError>;

    /// Cancels, on every node, every delivery of the events of
    /// `business_id` published before this call (never one published
    /// after it returns): appends the id and `reason` to [`CANCEL_TOPIC`],
    /// which every durable subscription reads before each attempt and
    /// while one runs. The lifecycle record of a cancelled delivery
    /// carries the reason.
    async fn cancel(&self, business_id: impl Into<Bytes>, reason: &str) -> Result<(), BusError>;

    /// The dead letters of `group` on `topic` not yet replayed, oldest
    /// first (at most `max`).
    fn dead_letters(&self, topic: &str, group: &str, max: usize)
    -> Result<Vec<Delivery>, BusError>;

    /// Publishes every dead letter of `group` on `topic` not yet replayed
    /// back into `topic` (original key, payload and headers), each batch in
    /// one transaction with the replay group's offsets; returns how many
    /// were replayed.
    async fn replay_dead_letters(&self, topic: &str, group: &str) -> Result<u64, BusError>;
}

/// Creates a topic a durable subscription uses with the default retention
/// (7 days, `TopicConfig::default`); one that exists with the same
/// partition count is used as it is, whatever its retention (made without
/// one by an older version, or altered by an operator).
async fn ensure_topic<E: Env>(bus: &Bus<E>, name: &str, partitions: u32) -> Result<(), BusError> {
    match bus
        .create_topic(name, partitions, TopicConfig::default())
        .await
    {
        Err(BusError::State(StateError::TopicExists {
            partitions: existing,
            ..
        })) if existing == partitions => Ok(()),
        result => result,
    }
}

impl<E: Env> DurableBus<E> for Bus<E> {
    async fn subscribe<T: TypedEvent, H: Handler<T>>(
        &self,
        group: &str,
        handler: H,
    ) -> Result<DurableSubscription<E>, BusError> {
        self.subscribe_with(group, handler, DurableConfig::default())
            .await
    }

    async fn subscribe_with<T: TypedEvent, H: Handler<T>>(
        &self,
        group: &str,
        handler: H,
        config: DurableConfig,
    ) -> Result<DurableSubscription<E>, BusError> {
        if config.batch_max == 0 || config.retry.retries_max > super::RETRIES_MAX {
            return Err(BusError::Invalid(format!(
                "batch_max must be positive and retries at most {}",
                super::RETRIES_MAX
            )));
        }
        let topic = T::TYPE_NAME;
        let dead = dead_letter_topic(topic, group);
        ensure_topic(self, topic, config.partitions).await?;
        ensure_topic(self, &dead, 1).await?;
        ensure_topic(self, LIFECYCLE_TOPIC, 4).await?;
        ensure_topic(self, CANCEL_TOPIC, 1).await?;
        let member = config
            .member
            .clone()
            .unwrap_or_else(|| format!("{group}-{}", wall_unix_ms(&**self.clock())));
        let consumer = self.consumer(group, &member, &[topic]).await?;
        let producer = self.producer().await?;
        let stop = Arc::new(AtomicBool::new(false));
        let cancel = match &config.dispatcher {
            Some(handle) => Arc::clone(&handle.0.cancel),
            None => Arc::new(CancelRegistry::new(super::CANCELLED_IDS_MAX_DEFAULT)),
        };
        let runner = Runner::<T, H, E> {
            bus: self.clone(),
            handler,
            config,
            dead,
            shared: Arc::new(SubscriptionShared {
                group: Arc::from(group),
                cancel,
                clock: Arc::clone(self.clock()),
            }),
            cancellations: Cancellations::new(self.state().last_applied_index().unwrap_or(0)),
            stop: Arc::clone(&stop),
            _event: std::marker::PhantomData,
        };
        let task = TypeConfig::<E>::spawn(runner.run(consumer, producer));
        Ok(DurableSubscription {
            group: group.to_owned(),
            topic: topic.to_owned(),
            stop,
            task,
        })
    }

    async fn publish_typed<T: TypedEvent>(
        &self,
        producer: &mut Producer<E>,
        value: &T,
        encoding: Encoding,
    ) -> Result<Receipt, BusError> {
        self.publish_typed_with(producer, value, encoding, EventOptions::default())
            .await
    }

    async fn publish_typed_with<T: TypedEvent>(
        &self,
        producer: &mut Producer<E>,
        value: &T,
        encoding: Encoding,
        options: EventOptions,
    ) -> Result<Receipt, BusError> {
        let mut event = to_event(value, T::TYPE_NAME, encoding)
            .map_err(|error| BusError::Invalid(error.to_string()))?;
        options.write(&mut event.headers);
        let message = Message::new(event.topic, event.payload)
            .key(event.key)
            .headers(event.headers);
        producer.publish(message).await
    }

    async fn cancel(&self, business_id: impl Into<Bytes>, reason: &str) -> Result<(), BusError> {
        ensure_topic(self, CANCEL_TOPIC, 1).await?;
        let mut producer = self.producer().await?;
        let message = Message::new(CANCEL_TOPIC, Bytes::copy_from_slice(reason.as_bytes()))
            .key(business_id.into());
        producer.publish(message).await.map(drop)
    }

    fn dead_letters(
        &self,
        topic: &str,
        group: &str,
        max: usize,
    ) -> Result<Vec<Delivery>, BusError> {
        let dead = dead_letter_topic(topic, group);
        let from = self.committed(REPLAY_GROUP, &dead, 0).unwrap_or(0);
        Ok(self.read(&dead, 0, from, max)?.0)
    }

    async fn replay_dead_letters(&self, topic: &str, group: &str) -> Result<u64, BusError> {
        let dead = dead_letter_topic(topic, group);
        let member = format!("replay-{}", wall_unix_ms(&**self.clock()));
        let mut consumer = self.consumer(REPLAY_GROUP, &member, &[&dead]).await?;
        let mut producer = self.producer().await?;
        let mut replayed = 0;
        loop {
            let letters = consumer.poll(1024, Duration::ZERO).await?;
            if letters.is_empty() {
                break;
            }
            let mut transaction = consumer.transaction(&mut producer);
            for letter in &letters {
                let mut headers = letter.headers.clone();
                headers
                    .user
                    .retain(|(name, _)| !name.starts_with("sluice-dlq-"));
                let message = Message::new(topic, letter.payload.clone())
                    .key(letter.key.clone())
                    .headers(headers);
                transaction.publish(message)?;
            }
            transaction.commit().await?;
            replayed += letters.len() as u64;
        }
        consumer.leave().await?;
        Ok(replayed)
    }
}

/// The task of one durable subscription.
struct Runner<T, H, E: Env> {
    bus: Bus<E>,
    handler: H,
    config: DurableConfig,
    dead: String,
    shared: Arc<SubscriptionShared>,
    cancellations: Cancellations,
    stop: Arc<AtomicBool>,
    _event: std::marker::PhantomData<fn() -> T>,
}

/// How long one poll waits for events, so that a stop is noticed.
const POLL_WAIT: Duration = Duration::from_millis(100);

/// How often a running attempt looks for a cancellation of its delivery.
const CANCEL_WAIT: Duration = Duration::from_millis(50);

impl<T: TypedEvent, H: Handler<T>, E: Env> Runner<T, H, E> {
    async fn run(
        mut self,
        mut consumer: Consumer<E>,
        mut producer: Producer<E>,
    ) -> Result<(), BusError> {
        while !self.stop.load(Ordering::Acquire) {
            let deliveries = consumer.poll(self.config.batch_max, POLL_WAIT).await?;
            if deliveries.is_empty() {
                continue;
            }
            let mut records = Vec::with_capacity(deliveries.len());
            for delivery in &deliveries {
                let taken_ms = wall_unix_ms(&*self.shared.clock);
                let attempts = self.deliver(delivery).await?;
                let last_ms = wall_unix_ms(&*self.shared.clock);
                // When the first attempt started (read once: a clock read
                // before it can fall in the millisecond before), or when the
                // delivery was taken if no attempt ran.
                let first_ms = attempts.started_ms.first().copied().unwrap_or(taken_ms);
                self.account(delivery, &attempts, last_ms);
                records.push((attempts, first_ms, last_ms));
            }
            let mut transaction = consumer.transaction(&mut producer);
            for (delivery, (attempts, first_ms, last_ms)) in deliveries.iter().zip(records) {
                let record =
                    lifecycle_record(&self.shared.group, delivery, &attempts, first_ms, last_ms);
                let lifecycle = Message::new(LIFECYCLE_TOPIC, Bytes::from(record.to_string()))
                    .key(delivery.key.clone());
                transaction.publish(lifecycle)?;
                if let Some(cause) = attempts.outcome.cause() {
                    transaction
                        .publish(self.dead_letter(delivery, &attempts, cause, first_ms, last_ms))?;
                }
            }
            transaction.commit().await?;
        }
        consumer.leave().await
    }

    /// The dead letter of a delivery given up for `cause`.
    fn dead_letter(
        &self,
        delivery: &Delivery,
        attempts: &Attempts,
        cause: String,
        first_ms: u64,
        last_ms: u64,
    ) -> Message {
        let mut headers: Headers = delivery.headers.clone();
        let source = format!(
            "{}/{}/{}",
            delivery.topic, delivery.partition, delivery.offset
        );
        use dead_letter_headers as h;
        for (name, value) in [
            (h::CAUSE, cause),
            (h::ATTEMPTS, attempts.count().to_string()),
            (h::SOURCE, source),
            (h::FIRST_MS, first_ms.to_string()),
            (h::LAST_MS, last_ms.to_string()),
        ] {
            headers.user.push((name.to_owned(), Bytes::from(value)));
        }
        Message::new(self.dead.clone(), delivery.payload.clone())
            .key(delivery.key.clone())
            .headers(headers)
    }

    /// Counts a finished delivery in the dispatcher's SLA classes, if any.
    fn account(&self, delivery: &Delivery, attempts: &Attempts, last_ms: u64) {
        let Some(handle) = &self.config.dispatcher else {
            return;
        };
        let sla = &handle.0.sla;
        for _ in 1..attempts.count() {
            sla.record_retry(attempts.class);
        }
        let latency = last_ms.saturating_sub(delivery.timestamp_ms);
        let state = match attempts.outcome {
            Outcome::Processed => State::Processed,
            Outcome::TimedOut(_) => State::TimedOut,
            Outcome::Cancelled(_) => State::Cancelled,
            Outcome::Failed(_) | Outcome::Undecodable(_) => State::Failed,
        };
        sla.record(attempts.class, state, Duration::from_millis(latency));
    }

    /// Decodes and handles one delivery; returns its outcome, when each
    /// attempt started and each failed attempt's error. Fails only if the
    /// cancellations cannot be read (the bus is closing).
    async fn deliver(&mut self, delivery: &Delivery) -> Result<Attempts, BusError> {
        let mut attempts = Attempts {
            outcome: Outcome::Processed,
            started_ms: Vec::new(),
            errors: Vec::new(),
            class: self.config.class,
            deadline_ms: None,
        };
        let options = match EventOptions::from_headers(&delivery.headers) {
            Ok(options) => options,
            Err(error) => {
                attempts.outcome = Outcome::Undecodable(error.to_string());
                return Ok(attempts);
            }
        };
        attempts.class = options.class.unwrap_or(self.config.class);
        attempts.deadline_ms = options.deadline_ms;
        let value = match decode::<T>(delivery) {
            Ok(value) => Arc::new(value),
            Err(cause) => {
                attempts.outcome = Outcome::Undecodable(cause);
                return Ok(attempts);
            }
        };
        let event_index = self.log_index(delivery);
        let clock = Arc::clone(&self.shared.clock);
        let created_at = clock.monotonic();
        let (deadline, expiry) = deadline(
            created_at,
            self.config.deadline,
            options.deadline_ms,
            wall_unix_ms(&*clock),
        );
        // Cancellations in this process count from now on; those through
        // the log count by their place in it.
        let cancel_epoch = self.shared.cancel.epoch();
        let attempts_max = self.config.retry.attempts_max();
        for attempt in 1..=attempts_max {
            self.cancellations.read(&self.bus, &self.shared.cancel)?;
            if let Some(reason) = self.cancelled(&delivery.key, event_index, cancel_epoch) {
                attempts.outcome = Outcome::Cancelled(reason);
                return Ok(attempts);
            }
            let remaining = deadline.saturating_sub(clock.monotonic());
            if remaining.is_zero() {
                attempts.outcome = Outcome::TimedOut(expiry);
                return Ok(attempts);
            }
            let context = Context {
                subscription: Arc::clone(&self.shared),
                business_id: delivery.key.clone(),
                attempt,
                created_at,
                deadline,
                class: attempts.class,
                traceparent: delivery.headers.traceparent.as_deref().map(Arc::from),
                cancel_epoch,
            };
            let attempt_future =
                AssertUnwindSafe(self.handler.handle(Arc::clone(&value), context)).catch_unwind();
            let span = tracing::debug_span!(
                "dispatch.durable.deliver",
                type_name = T::TYPE_NAME,
                group = &*self.shared.group,
                partition = delivery.partition,
                offset = delivery.offset,
                attempt,
                traceparent = delivery.headers.traceparent.as_deref(),
            );
            let attempt_future = tracing::Instrument::instrument(attempt_future, span);
            let watch = self.cancellations.watch(
                &self.bus,
                &self.shared.cancel,
                &delivery.key,
                event_index,
                cancel_epoch,
            );
            attempts.started_ms.push(wall_unix_ms(&*clock));
            let (attempt_future, watch) = (std::pin::pin!(attempt_future), std::pin::pin!(watch));
            let raced = select(attempt_future, watch);
            match TypeConfig::<E>::timeout(remaining, raced).await {
                Ok(Either::Left((Ok(Ok(())), _))) => return Ok(attempts),
                Ok(Either::Left((Ok(Err(error)), _))) => attempts.errors.push(error.to_string()),
                Ok(Either::Left((Err(_panic), _))) => {
                    attempts.errors.push("the handler panicked".to_owned());
                }
                Ok(Either::Right((watched, _))) => {
                    attempts.outcome = Outcome::Cancelled(watched?);
                    return Ok(attempts);
                }
                Err(_elapsed) => {
                    attempts.outcome = Outcome::TimedOut(expiry);
                    return Ok(attempts);
                }
            }
            if attempt < attempts_max {
                let pause = self.config.retry.backoff(attempt);
                let remaining = deadline.saturating_sub(clock.monotonic());
                TypeConfig::<E>::sleep(pause.min(remaining)).await;
            }
        }
        let last = attempts.errors.last().cloned().unwrap_or_default();
        attempts.outcome = Outcome::Failed(last);
        Ok(attempts)
    }

    /// The log entry holding the delivered event. An event retention has
    /// already dropped from the index counts as older than every
    /// cancellation.
    fn log_index(&self, delivery: &Delivery) -> u64 {
        let state = self.bus.state();
        let location = state.locate(&delivery.topic, delivery.partition, delivery.offset);
        location.map_or(0, |location| location.log_index)
    }

    /// The reason `business_id`'s delivery is cancelled, if it is: by a
    /// cancellation later in the log than the event, or by one made in
    /// this process since the delivery started.
    fn cancelled(&self, business_id: &Bytes, event_index: u64, epoch: u64) -> Option<String> {
        cancelled(
            &self.cancellations,
            &self.shared.cancel,
            business_id,
            event_index,
            epoch,
        )
    }
}

fn cancelled(
    cancellations: &Cancellations,
    local: &CancelRegistry,
    business_id: &Bytes,
    event_index: u64,
    epoch: u64,
) -> Option<String> {
    if let Some(reason) = cancellations.applies(business_id, event_index) {
        return Some(reason.to_owned());
    }
    local
        .is_cancelled(business_id, epoch)
        .then(|| "cancelled in this process (Dispatcher::cancel)".to_owned())
}

/// A delivery's deadline on the monotonic clock, and whose it is: the
/// subscription's `timeout` from `now`, or the event's `deadline_ms` (wall
/// clock, read as `wall_ms` at `now`) if that comes first.
fn deadline(
    now: Duration,
    timeout: Duration,
    deadline_ms: Option<u64>,
    wall_ms: u64,
) -> (Duration, Expiry) {
    let subscription = now.saturating_add(timeout);
    match deadline_ms {
        Some(at_ms) => {
            let event = now.saturating_add(Duration::from_millis(at_ms.saturating_sub(wall_ms)));
            if event < subscription {
                (event, Expiry::Event(at_ms))
            } else {
                (subscription, Expiry::Subscription)
            }
        }
        None => (subscription, Expiry::Subscription),
    }
}

/// The cancellations a subscription has read from [`CANCEL_TOPIC`]: the
/// latest per business id, with the log index of its entry and its
/// reason. Bounded: past [`super::CANCELLED_IDS_MAX_DEFAULT`] ids the
/// oldest is forgotten (its events, long handled, are not looked up again).
struct Cancellations {
    /// Next offset of [`CANCEL_TOPIC`] to read.
    position: u64,
    by_id: HashMap<Bytes, Cancellation>,
    /// Ids in the order read, with the log index they were read with.
    order: VecDeque<(Bytes, u64)>,
    /// Cancellations in later entries are also handed to the local cancel
    /// registry, so that a dispatcher's local topics see them; earlier ones
    /// (read at start) are history for them.
    forward_after: u64,
}

struct Cancellation {
    log_index: u64,
    reason: String,
}

impl Cancellations {
    fn new(forward_after: u64) -> Cancellations {
        Cancellations {
            position: 0,
            by_id: HashMap::new(),
            order: VecDeque::new(),
            forward_after,
        }
    }

    /// Takes the cancellations appended since the last look.
    fn read<E: Env>(&mut self, bus: &Bus<E>, local: &CancelRegistry) -> Result<(), BusError> {
        loop {
            let (records, next) = bus.read(CANCEL_TOPIC, 0, self.position, 1024)?;
            if records.is_empty() {
                self.position = next;
                return Ok(());
            }
            let state = bus.state();
            for record in records {
                let Some(location) = state.locate(CANCEL_TOPIC, 0, record.offset) else {
                    // Dropped by retention since the read: older than any
                    // event still delivered.
                    continue;
                };
                let reason = String::from_utf8_lossy(&record.payload).into_owned();
                if location.log_index > self.forward_after {
                    local.cancel(record.key.clone());
                }
                self.insert(record.key, location.log_index, reason);
            }
            drop(state);
            self.position = next;
        }
    }

    fn insert(&mut self, business_id: Bytes, log_index: u64, reason: String) {
        self.order.push_back((business_id.clone(), log_index));
        self.by_id
            .insert(business_id, Cancellation { log_index, reason });
        while self.order.len() > super::CANCELLED_IDS_MAX_DEFAULT {
            let (id, log_index) = self.order.pop_front().expect("not empty");
            if self
                .by_id
                .get(&id)
                .is_some_and(|c| c.log_index == log_index)
            {
                self.by_id.remove(&id);
            }
        }
    }

    /// The reason of a cancellation of `business_id` in a later entry than
    /// `event_index`, if any. A cancellation in the same entry (a
    /// concurrent publish and cancel, batched together) does not apply.
    fn applies(&self, business_id: &Bytes, event_index: u64) -> Option<&str> {
        let cancellation = self.by_id.get(business_id)?;
        (cancellation.log_index > event_index).then_some(cancellation.reason.as_str())
    }

    /// Resolves, with the reason, once the delivery is cancelled, through
    /// the log or in this process; looks every [`CANCEL_WAIT`].
    async fn watch<E: Env>(
        &mut self,
        bus: &Bus<E>,
        local: &CancelRegistry,
        business_id: &Bytes,
        event_index: u64,
        epoch: u64,
    ) -> Result<String, BusError> {
        loop {
            TypeConfig::<E>::sleep(CANCEL_WAIT).await;
            self.read(bus, local)?;
            if let Some(reason) = cancelled(self, local, business_id, event_index, epoch) {
                return Ok(reason);
            }
        }
    }
}

/// The lifecycle record of one delivery (JSON, on [`LIFECYCLE_TOPIC`]);
/// the audit export joins it to the event at (topic, partition, offset).
fn lifecycle_record(
    group: &str,
    delivery: &Delivery,
    attempts: &Attempts,
    first_ms: u64,
    last_ms: u64,
) -> serde_json::Value {
    serde_json::json!({
        "topic": delivery.topic,
        "partition": delivery.partition,
        "offset": delivery.offset,
        "group": group,
        "type": delivery.headers.event_type,
        "schema_version": delivery.headers.schema_version,
        "published_ms": delivery.timestamp_ms,
        "first_attempt_ms": first_ms,
        "attempts_ms": attempts.started_ms,
        "reported_ms": last_ms,
        "class": attempts.class.as_str(),
        "deadline_ms": attempts.deadline_ms,
        "state": attempts.outcome.state(),
        "attempts": attempts.count(),
        "errors": attempts.errors,
        "cause": attempts.outcome.cause(),
        "reason": attempts.outcome.reason(),
    })
}

/// Decodes a delivery as a `T`, or says why it cannot be.
fn decode<T: TypedEvent>(delivery: &Delivery) -> Result<T, String> {
    let headers = &delivery.headers;
    if headers.event_type != T::TYPE_NAME {
        return Err(format!(
            "event type {:?} is not {:?}, the type this subscription handles",
            headers.event_type,
            T::TYPE_NAME
        ));
    }
    if headers.schema_version != T::SCHEMA_VERSION {
        return Err(format!(
            "unknown schema version {} of {:?}: this subscription handles version {}",
            headers.schema_version,
            T::TYPE_NAME,
            T::SCHEMA_VERSION
        ));
    }
    let encoding = Encoding::from_content_type(&headers.content_type).ok_or_else(|| {
        format!(
            "unknown content type {:?} (known: application/json, application/x-postcard)",
            headers.content_type
        )
    })?;
    encoding
        .decode::<T>(&delivery.payload)
        .map_err(|error| error.to_string())
}

//! The in-process dispatch core: typed events delivered to typed handlers
//! through local (non-durable) topics, with a lifecycle per delivery,
//! retries, dead letters and SLA classes.
//!
//! ```text
//! Dispatcher ── registry: (type name, schema version) ─► LocalTopic<T>
//!    │                                                     │ publish(Arc<T>)
//!    ├─ CancelRegistry (cancel by business id)             ▼
//!    ├─ SlaMonitor (histograms per class, alerts)   per group: bounded queue
//!    └─ observer (every state change)                      ▼
//!                                               worker ─► Handler<T> ─► outcome
//!                                                            retries, dead letters
//! ```
//!
//! - [`typed`]: the [`TypedEvent`] trait and the codecs ([`Encoding`]).
//! - [`topic`]: [`LocalTopic`], copy-on-write listener sets, bounded
//!   queues, back-pressure.
//! - [`worker`]: the per-subscription worker: deadline, cancellation,
//!   retries, reporting.
//! - [`context`]: the lifecycle states, [`Context`], [`CancelRegistry`].
//! - [`retry`]: [`RetryPolicy`] and dead letters.
//! - [`sla`]: [`SlaClass`], budgets, alerts, Prometheus text.
//!
//! Invariants: a Rust event type has at most one topic per dispatcher, and
//! a (type name, schema version) pair names at most one Rust type; users
//! see only typed values (the one type-erased step, from a `TypeId` to the
//! topic, happens inside [`Dispatcher::topic`]). Time is read only through
//! the dispatcher's [`Clock`]; waiting uses the runtime's timer.
//!
//! Fault model: handlers may fail, hang or panic; each costs at most its
//! own delivery (retried, then a dead letter) and never the subscription
//! or the publisher. Nothing here is durable: a process crash loses what
//! is queued. Durable delivery is the bus's job (`sluice_core::bus`); the
//! registry's [`Dispatcher::publish_encoded`] bridges bus deliveries into
//! local topics.
//!
//! Threads: handlers run on the runtime that [`LocalTopic::subscribe`] was
//! called in. For the lowest latency at a moderate rate, publish from the
//! same thread as the handlers (a current-thread runtime): a delivery is
//! then a task switch, not a thread wake-up (on 2 cores, p50 0.5 µs and
//! p99 under 30 µs at 1 M events/s, against p50 8–10 µs with the handlers
//! on another thread). For the most events per second, give the handlers
//! their own worker threads. `dispatch_report` in `benches/` measures both.

mod class;
mod context;
pub mod durable;
pub mod error;
pub mod options;
mod queue;
pub mod retry;
pub mod saga;
mod shared;
pub mod sla;
pub mod topic;
pub mod typed;
pub mod worker;

use sluice_core::io::Env;
use std::any::{Any, TypeId};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice_core::io::Clock;
use sluice_core::io::os::{OsClock, OsEnv};
use sluice_model::event::EventView;

pub use class::SlaClass;
pub use context::{CancelRegistry, Context, Observer, State, Transition};
pub use durable::{
    CANCEL_TOPIC, DurableBus, DurableConfig, DurableSubscription, LIFECYCLE_TOPIC, REPLAY_GROUP,
    dead_letter_topic,
};
pub use error::{DispatchError, RegistryError};
pub use options::{EventOptions, HeaderError};
pub use retry::{AttemptError, Cause, DeadLetter, RETRIES_MAX, RetryPolicy};
pub use sla::{AlertFn, SlaAlert, SlaConfig};
pub use topic::{LocalTopic, Publish, ReplayReport, SubscriptionHandle, TopicConfig};
pub use typed::{CodecError, Encoding, TypedEvent, to_event};
pub use worker::{Handler, HandlerError};

/// Largest queue of one subscription.
pub const QUEUE_CAPACITY_MAX: usize = 1 << 20;

/// Most deliveries a worker takes from its queue at once.
pub const RECV_BATCH_MAX: usize = 64;

/// Default number of cancelled business ids a dispatcher remembers.
pub const CANCELLED_IDS_MAX_DEFAULT: usize = 65_536;

const _: () = assert!(RECV_BATCH_MAX > 0 && RECV_BATCH_MAX <= QUEUE_CAPACITY_MAX);

/// How a dispatcher is built.
#[derive(Clone)]
pub struct DispatcherConfig {
    /// Every timestamp, deadline and latency is read from it.
    pub clock: Arc<dyn Clock>,
    /// Budgets and alerting.
    pub sla: SlaConfig,
    /// Called on every state change of every delivery.
    pub observer: Option<Observer>,
    /// What [`Dispatcher::topic`] gives a new topic.
    pub topic: TopicConfig,
    /// Cancelled business ids remembered.
    pub cancelled_ids_max: usize,
}

impl Default for DispatcherConfig {
    fn default() -> Self {
        DispatcherConfig {
            clock: Arc::new(OsClock::new()),
            sla: SlaConfig::default(),
            observer: None,
            topic: TopicConfig::default(),
            cancelled_ids_max: CANCELLED_IDS_MAX_DEFAULT,
        }
    }
}

impl fmt::Debug for DispatcherConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DispatcherConfig")
            .field("clock", &self.clock)
            .field("sla", &self.sla)
            .field("observer", &self.observer.is_some())
            .field("topic", &self.topic)
            .field("cancelled_ids_max", &self.cancelled_ids_max)
            .finish()
    }
}

/// What every topic of a dispatcher shares.
pub(crate) struct Core {
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) cancel: Arc<CancelRegistry>,
    pub(crate) sla: sla::SlaMonitor,
    pub(crate) observer: Option<Observer>,
}

/// A topic with its type erased, for decoding by name and for metrics.
trait ErasedTopic: Send + Sync {
    fn publish_encoded(&self, encoded: &Encoded<'_>) -> Result<PublishFuture<'_>, DispatchError>;
    fn dead_letter_count(&self) -> usize;
    fn dead_letters_dropped(&self) -> u64;
}

type PublishFuture<'a> = Pin<Box<dyn Future<Output = Result<usize, DispatchError>> + Send + 'a>>;

impl<T: TypedEvent, E: Env> ErasedTopic for LocalTopic<T, E> {
    fn publish_encoded(&self, encoded: &Encoded<'_>) -> Result<PublishFuture<'_>, DispatchError> {
        let encoding = Encoding::from_content_type(encoded.content_type).ok_or_else(|| {
            CodecError::UnknownContentType {
                content_type: encoded.content_type.to_owned(),
            }
        })?;
        let event = Arc::new(encoding.decode::<T>(encoded.payload)?);
        let options = Publish {
            class: encoded.options.class,
            deadline: encoded
                .options
                .deadline_ms
                .map(|deadline_ms| self.until_wall(deadline_ms)),
            traceparent: encoded.traceparent.map(Arc::from),
        };
        Ok(Box::pin(self.publish_with(event, options)))
    }

    fn dead_letter_count(&self) -> usize {
        LocalTopic::dead_letter_count(self)
    }

    fn dead_letters_dropped(&self) -> u64 {
        LocalTopic::dead_letters_dropped(self)
    }
}

/// An encoded event, as the durable bus delivers it.
#[derive(Debug, Clone, Copy)]
pub struct Encoded<'a> {
    /// `Headers::event_type`.
    pub type_name: &'a str,
    /// `Headers::schema_version`.
    pub schema_version: u32,
    /// `Headers::content_type`; names the [`Encoding`].
    pub content_type: &'a str,
    /// The payload.
    pub payload: &'a [u8],
    /// `Headers::traceparent`.
    pub traceparent: Option<&'a str>,
    /// The delivery headers: the event's deadline and SLA class.
    pub options: EventOptions,
}

impl<'a> Encoded<'a> {
    /// The fields of an event read from the bus; fails if a delivery
    /// header does not parse.
    pub fn from_view(view: &EventView<'a>) -> Result<Encoded<'a>, HeaderError> {
        Ok(Encoded {
            type_name: view.event_type(),
            schema_version: view.schema_version(),
            content_type: view.content_type(),
            payload: view.payload_slice(),
            traceparent: view.traceparent(),
            options: EventOptions::from_user_headers(view.user_headers())?,
        })
    }
}

struct Registered {
    type_id: TypeId,
    topic: Arc<dyn ErasedTopic>,
}

#[derive(Default)]
struct Topics {
    /// The typed topics, `LocalTopic<T, E>` behind `Any`.
    by_type: HashMap<TypeId, Arc<dyn Any + Send + Sync>>,
    /// Type name, then schema version.
    by_name: HashMap<&'static str, BTreeMap<u32, Registered>>,
}

/// Local topics of many event types, sharing one clock, cancel registry,
/// SLA monitor and observer.
pub struct Dispatcher<E = OsEnv> {
    core: Arc<Core>,
    topic_default: TopicConfig,
    topics: Mutex<Topics>,
    runtime: PhantomData<fn() -> E>,
}

impl<E> fmt::Debug for Dispatcher<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let topics = self.topics.lock().expect("topics poisoned");
        let names: Vec<_> = topics
            .by_name
            .iter()
            .flat_map(|(name, versions)| versions.keys().map(move |v| (*name, *v)))
            .collect();
        f.debug_struct("Dispatcher")
            .field("topics", &names)
            .finish()
    }
}

/// A dispatcher's SLA monitor and cancel registry, handed to durable
/// subscriptions ([`DurableConfig::dispatcher`]) so that their deliveries
/// count in the same per-class histograms, alerts and metrics, and
/// [`Dispatcher::cancel`] reaches them too (the durable deliveries under
/// way when it is called; only [`DurableBus::cancel`] goes through the log
/// and reaches every node).
#[derive(Clone)]
pub struct DispatcherHandle(pub(crate) Arc<Core>);

impl fmt::Debug for DispatcherHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DispatcherHandle")
    }
}

impl<E: Env> Dispatcher<E> {
    /// A handle for durable subscriptions; see [`DispatcherHandle`].
    pub fn handle(&self) -> DispatcherHandle {
        DispatcherHandle(Arc::clone(&self.core))
    }

    /// A dispatcher with no topics.
    pub fn new(config: DispatcherConfig) -> Dispatcher<E> {
        let core = Core {
            clock: config.clock,
            cancel: Arc::new(CancelRegistry::new(config.cancelled_ids_max)),
            sla: sla::SlaMonitor::new(config.sla),
            observer: config.observer,
        };
        Dispatcher {
            core: Arc::new(core),
            topic_default: config.topic,
            topics: Mutex::new(Topics::default()),
            runtime: PhantomData,
        }
    }

    /// The topic of `T`, made with the default [`TopicConfig`] if new.
    ///
    /// # Panics
    /// If another Rust type is registered with `T`'s type name and schema
    /// version: that is a bug in the program, not a runtime condition.
    pub fn topic<T: TypedEvent>(&self) -> LocalTopic<T, E> {
        let mut topics = self.topics.lock().expect("topics poisoned");
        if let Some(topic) = Self::find::<T>(&topics) {
            return topic;
        }
        let config = self.topic_default.clone();
        match self.insert::<T>(&mut topics, config) {
            Ok(topic) => topic,
            Err(error) => panic!("{error}"),
        }
    }

    /// Makes the topic of `T` with `config`; fails if it exists.
    pub fn register<T: TypedEvent>(
        &self,
        config: TopicConfig,
    ) -> Result<LocalTopic<T, E>, RegistryError> {
        let mut topics = self.topics.lock().expect("topics poisoned");
        if Self::find::<T>(&topics).is_some() {
            let (type_name, version) = (T::TYPE_NAME, T::SCHEMA_VERSION);
            return Err(RegistryError::AlreadyRegistered { type_name, version });
        }
        self.insert::<T>(&mut topics, config)
    }

    fn find<T: TypedEvent>(topics: &Topics) -> Option<LocalTopic<T, E>> {
        let topic = topics.by_type.get(&TypeId::of::<T>())?;
        let topic = topic.downcast_ref::<LocalTopic<T, E>>();
        Some(
            topic
                .expect("by_type maps each TypeId to its own topic type")
                .clone(),
        )
    }

    fn insert<T: TypedEvent>(
        &self,
        topics: &mut Topics,
        config: TopicConfig,
    ) -> Result<LocalTopic<T, E>, RegistryError> {
        let versions = topics.by_name.entry(T::TYPE_NAME).or_default();
        if versions.contains_key(&T::SCHEMA_VERSION) {
            let (type_name, version) = (T::TYPE_NAME, T::SCHEMA_VERSION);
            return Err(RegistryError::Duplicate { type_name, version });
        }
        let topic = LocalTopic::<T, E>::new(Arc::clone(&self.core), config);
        let registered = Registered {
            type_id: TypeId::of::<T>(),
            topic: Arc::new(topic.clone()),
        };
        versions.insert(T::SCHEMA_VERSION, registered);
        topics
            .by_type
            .insert(TypeId::of::<T>(), Arc::new(topic.clone()));
        Ok(topic)
    }

    /// Subscribes `handler` to `T` in `group`; see [`LocalTopic::subscribe`].
    pub fn subscribe<T: TypedEvent, H: Handler<T>>(
        &self,
        group: &str,
        handler: H,
    ) -> Result<SubscriptionHandle<T, E>, DispatchError> {
        self.topic::<T>().subscribe(group, handler)
    }

    /// Ends a subscription; see [`LocalTopic::unsubscribe`].
    pub async fn unsubscribe<T: TypedEvent>(
        &self,
        handle: SubscriptionHandle<T, E>,
    ) -> Result<(), DispatchError> {
        self.topic::<T>().unsubscribe(handle).await
    }

    /// Publishes to the topic of `T`; see [`LocalTopic::publish`].
    pub async fn publish<T: TypedEvent>(&self, event: Arc<T>) -> Result<usize, DispatchError> {
        self.topic::<T>().publish(event).await
    }

    /// Decodes an event by its type name, schema version and content type,
    /// and publishes it to the topic of the Rust type registered for them.
    /// An unregistered version is [`RegistryError::UnknownVersion`].
    pub async fn publish_encoded(&self, encoded: &Encoded<'_>) -> Result<usize, DispatchError> {
        let topic = self.lookup(encoded.type_name, encoded.schema_version)?;
        topic.publish_encoded(encoded)?.await
    }

    fn lookup(&self, type_name: &str, version: u32) -> Result<Arc<dyn ErasedTopic>, RegistryError> {
        let topics = self.topics.lock().expect("topics poisoned");
        let Some(versions) = topics.by_name.get(type_name) else {
            let type_name = type_name.to_owned();
            return Err(RegistryError::UnknownType { type_name });
        };
        match versions.get(&version) {
            Some(registered) => {
                assert!(topics.by_type.contains_key(&registered.type_id));
                Ok(Arc::clone(&registered.topic))
            }
            None => Err(RegistryError::UnknownVersion {
                type_name: type_name.to_owned(),
                version,
                known: versions.keys().copied().collect(),
            }),
        }
    }

    /// Cancels every delivery of `business_id` created before this call, in
    /// every topic of this process, and the durable deliveries of the
    /// subscriptions sharing this dispatcher that are under way; see
    /// [`CancelRegistry::cancel`]. [`DurableBus::cancel`] is the cluster-wide,
    /// log-ordered one.
    pub fn cancel(&self, business_id: impl Into<bytes::Bytes>) {
        self.core.cancel.cancel(business_id);
    }

    /// The p99 latency of `class` since the dispatcher was made.
    pub fn p99(&self, class: SlaClass) -> Duration {
        self.core.sla.p99(class)
    }

    /// Every metric in the Prometheus text exposition format (0.0.4).
    pub fn metrics_text(&self) -> String {
        let mut out = String::new();
        self.core.sla.write_metrics(&mut out);
        let topics = self.topics.lock().expect("topics poisoned");
        let name = "sluice_dispatch_dead_letters";
        let help = "Dead letters held, by event type and version.";
        sla::header(&mut out, name, "gauge", help);
        write_per_topic(&mut out, &topics, name, |t| t.dead_letter_count() as f64);
        let name = "sluice_dispatch_dead_letters_dropped_total";
        let help = "Dead letters dropped from a full sink, by event type and version.";
        sla::header(&mut out, name, "counter", help);
        write_per_topic(&mut out, &topics, name, |t| t.dead_letters_dropped() as f64);
        out
    }
}

fn write_per_topic(
    out: &mut String,
    topics: &Topics,
    name: &str,
    value: impl Fn(&dyn ErasedTopic) -> f64,
) {
    for (type_name, versions) in &topics.by_name {
        for (version, registered) in versions {
            let version = version.to_string();
            let labels = [("type", *type_name), ("version", version.as_str())];
            sla::sample(out, name, &labels, value(&*registered.topic));
        }
    }
}

#[cfg(test)]
mod tests;

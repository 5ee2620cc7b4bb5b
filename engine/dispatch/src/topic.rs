//! A local topic: one event type, in process, not durable.
//!
//! ```text
//! publish ─► listener snapshot (ArcSwap) ─► per group: one member's bounded queue
//!                                                          │
//!                                        worker task ◄─────┘ ─► handler (retries,
//!                                                               deadline, cancel)
//! ```
//!
//! Invariants:
//! - The listener set is immutable once published: subscribe and
//!   unsubscribe build a new set and swap it in atomically (copy-on-write),
//!   serialised by one writer lock. A publish works on the snapshot it
//!   loaded, so a swap never affects a publish in flight.
//! - Each publish gives each group exactly one delivery: to its only
//!   member, or to the member chosen by the key's hash.
//! - A subscription's worker stops only when every sender of its queue is
//!   gone, that is after it left the listener set *and* every snapshot
//!   holding it was dropped, and it drains its queue first. So an
//!   unsubscribe loses no delivery already queued, and none is delivered
//!   twice.
//! - Queues are bounded (`queue_capacity`): a publish waits for room
//!   (back-pressure) and never drops an event. Handlers run on their
//!   subscription's worker task, never on the publisher's.
//! - The event is shared (`Arc<T>`, key as `Bytes`): fan-out copies no
//!   payload.
//!
//! Ordering: one subscription handles its deliveries one at a time, in
//! queue order. While a group's membership is stable, events of one key go
//! to one member in publish order; across a membership change, an event may
//! reach a new member before the old member has drained its queue.

use sluice_core::io::Env;
use std::collections::VecDeque;
use std::fmt;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use openraft_rt::AsyncRuntime;

use super::Core;
use super::class::SlaClass;
use super::context::State;
use super::error::DispatchError;
use super::queue::{self, TrySendError};
use super::retry::{DeadLetter, DeadLetterSink};
pub use super::shared::TopicConfig;
use super::shared::{Envelope, Meta, TopicShared};
use super::typed::TypedEvent;
use super::worker::{self, Handler};
use sluice_core::io::os::OsEnv;
use sluice_core::io::wall_unix_ms;
use sluice_model::event::{check_topic_name, check_traceparent, key_hash};

/// Per-publish settings; `None` takes the topic's default.
#[derive(Debug, Clone, Default)]
pub struct Publish {
    /// SLA class of the deliveries.
    pub class: Option<SlaClass>,
    /// Time from now to the deadline.
    pub deadline: Option<Duration>,
    /// W3C `traceparent` to carry to the handlers; checked.
    pub traceparent: Option<Arc<str>>,
}

/// What [`LocalTopic::replay`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayReport {
    /// Dead letters delivered again to their group.
    pub replayed: usize,
    /// Dead letters kept: their group has no member now.
    pub kept: usize,
}

struct Member<T> {
    id: u64,
    sender: queue::Sender<Envelope<T>>,
}

struct Group<T> {
    name: Arc<str>,
    members: Vec<Member<T>>,
}

impl<T> Group<T> {
    fn pick(&self, business_id: &Bytes) -> &Member<T> {
        assert!(!self.members.is_empty());
        if self.members.len() == 1 {
            return &self.members[0];
        }
        let count = self.members.len() as u64;
        &self.members[(key_hash(business_id) % count) as usize]
    }
}

/// A listener set: groups in subscription order, each with its members.
struct Listeners<T> {
    groups: Vec<Group<T>>,
}

impl<T> Listeners<T> {
    fn group(&self, name: &str) -> Option<&Group<T>> {
        self.groups.iter().find(|g| &*g.name == name)
    }

    /// A copy with `member` added to `group`.
    fn with(&self, group: &Arc<str>, member: Member<T>) -> Listeners<T> {
        let mut groups = self.copy_without(u64::MAX);
        match groups.iter_mut().find(|g| g.name == *group) {
            Some(existing) => existing.members.push(member),
            None => groups.push(Group {
                name: Arc::clone(group),
                members: vec![member],
            }),
        }
        Listeners { groups }
    }

    /// The groups without member `id`; groups left empty disappear.
    fn copy_without(&self, id: u64) -> Vec<Group<T>> {
        let copy = |m: &Member<T>| Member {
            id: m.id,
            sender: m.sender.clone(),
        };
        let groups = self.groups.iter().map(|g| Group {
            name: Arc::clone(&g.name),
            members: g.members.iter().filter(|m| m.id != id).map(copy).collect(),
        });
        groups.filter(|g| !g.members.is_empty()).collect()
    }

    fn contains(&self, id: u64) -> bool {
        self.groups
            .iter()
            .flat_map(|g| &g.members)
            .any(|m| m.id == id)
    }
}

struct TopicInner<T> {
    shared: Arc<TopicShared<T>>,
    listeners: ArcSwap<Listeners<T>>,
    /// Serialises writers of `listeners`; readers never take it.
    writer: Mutex<()>,
    subscription_id_next: AtomicU64,
}

/// An in-process, non-durable topic of events of type `T`.
///
/// Cheap to clone; clones share the topic.
pub struct LocalTopic<T, E = OsEnv> {
    inner: Arc<TopicInner<T>>,
    runtime: PhantomData<fn() -> E>,
}

impl<T, E> Clone for LocalTopic<T, E> {
    fn clone(&self) -> Self {
        LocalTopic {
            inner: Arc::clone(&self.inner),
            runtime: PhantomData,
        }
    }
}

impl<T: TypedEvent, E> fmt::Debug for LocalTopic<T, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let listeners = self.inner.listeners.load();
        let groups: Vec<_> = listeners
            .groups
            .iter()
            .map(|g| (&*g.name, g.members.len()))
            .collect();
        f.debug_struct("LocalTopic")
            .field("type_name", &T::TYPE_NAME)
            .field("schema_version", &T::SCHEMA_VERSION)
            .field("groups", &groups)
            .finish()
    }
}

/// A live subscription; give it back to [`LocalTopic::unsubscribe`].
///
/// Dropping it leaves the subscription running until the topic is dropped.
pub struct SubscriptionHandle<T, E: Env = OsEnv> {
    id: u64,
    group: Arc<str>,
    worker: <E::Runtime as AsyncRuntime>::JoinHandle<()>,
    event: PhantomData<fn() -> T>,
}

impl<T, E: Env> SubscriptionHandle<T, E> {
    /// The subscription's group.
    pub fn group(&self) -> &str {
        &self.group
    }
}

impl<T: TypedEvent, E: Env> fmt::Debug for SubscriptionHandle<T, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubscriptionHandle")
            .field("type_name", &T::TYPE_NAME)
            .field("group", &self.group)
            .field("id", &self.id)
            .finish()
    }
}

impl<T: TypedEvent, E: Env> LocalTopic<T, E> {
    pub(super) fn new(core: Arc<Core>, config: TopicConfig) -> LocalTopic<T, E> {
        config.check();
        let dead_letters = DeadLetterSink::new(config.dead_letters_max);
        let shared = Arc::new(TopicShared {
            core,
            config,
            dead_letters,
        });
        let inner = TopicInner {
            shared,
            listeners: ArcSwap::from_pointee(Listeners { groups: Vec::new() }),
            writer: Mutex::new(()),
            subscription_id_next: AtomicU64::new(0),
        };
        LocalTopic {
            inner: Arc::new(inner),
            runtime: PhantomData,
        }
    }

    /// Starts a subscription in `group` (a name of `[A-Za-z0-9._-]`). Each
    /// event goes to one member of each group; members of one group share
    /// the events by key. Must be called inside the runtime.
    pub fn subscribe<H: Handler<T>>(
        &self,
        group: &str,
        handler: H,
    ) -> Result<SubscriptionHandle<T, E>, DispatchError> {
        check_topic_name(group.as_bytes())?;
        let group: Arc<str> = Arc::from(group);
        let shared = &self.inner.shared;
        let (sender, receiver) = queue::channel(shared.config.queue_capacity);
        let id = self
            .inner
            .subscription_id_next
            .fetch_add(1, Ordering::Relaxed);
        let job = worker::run::<T, H, E>(Arc::clone(shared), Arc::clone(&group), handler, receiver);
        let worker = E::Runtime::spawn(job);
        self.swap(|listeners| listeners.with(&group, Member { id, sender }));
        Ok(SubscriptionHandle {
            id,
            group,
            worker,
            event: PhantomData,
        })
    }

    /// Ends a subscription: it leaves the listener set at once (publishes
    /// already in flight keep their snapshot), then its worker handles
    /// what is queued and stops; this returns when it has.
    pub async fn unsubscribe(&self, handle: SubscriptionHandle<T, E>) -> Result<(), DispatchError> {
        let SubscriptionHandle {
            id, group, worker, ..
        } = handle;
        if !self.inner.listeners.load().contains(id) {
            return Err(DispatchError::UnknownSubscription {
                group: group.to_string(),
            });
        }
        self.swap(|listeners| Listeners {
            groups: listeners.copy_without(id),
        });
        worker.await.map_err(|error| DispatchError::WorkerFailed {
            group: group.to_string(),
            reason: error.to_string(),
        })
    }

    fn swap(&self, change: impl FnOnce(&Listeners<T>) -> Listeners<T>) {
        let _writer = self
            .inner
            .writer
            .lock()
            .expect("listener writer lock poisoned");
        let next = change(&self.inner.listeners.load());
        self.inner.listeners.store(Arc::new(next));
    }

    /// Publishes with the topic's defaults; see [`LocalTopic::publish_with`].
    pub async fn publish(&self, event: Arc<T>) -> Result<usize, DispatchError> {
        self.publish_with(event, Publish::default()).await
    }

    /// Queues one delivery of `event` per group, waiting for room where a
    /// queue is full; returns the number of groups reached (0 without
    /// subscribers: a local topic keeps nothing).
    pub async fn publish_with(
        &self,
        event: Arc<T>,
        options: Publish,
    ) -> Result<usize, DispatchError> {
        let meta = self.meta(options)?;
        let business_id = event.key();
        let guard = self.inner.listeners.load();
        // Fast path: no queue is full, nothing is awaited, no reference
        // count is touched beyond the event's.
        let mut blocked = None;
        for (index, group) in guard.groups.iter().enumerate() {
            let envelope = self.envelope(&event, &business_id, &meta, &group.name);
            match group.pick(&business_id).sender.try_send(envelope) {
                Ok(()) => {}
                Err(TrySendError::Full(envelope)) => {
                    blocked = Some((index, envelope));
                    break;
                }
                Err(TrySendError::Closed(_)) => return Err(gone(&group.name)),
            }
        }
        let Some((index, envelope)) = blocked else {
            return Ok(guard.groups.len());
        };
        // Slow path: keep this snapshot while waiting for room.
        let snapshot = arc_swap::Guard::into_inner(guard);
        let group = &snapshot.groups[index];
        send(group.pick(&business_id), envelope, &group.name).await?;
        for group in &snapshot.groups[index + 1..] {
            let envelope = self.envelope(&event, &business_id, &meta, &group.name);
            send(group.pick(&business_id), envelope, &group.name).await?;
        }
        Ok(snapshot.groups.len())
    }

    /// Time from now until the wall-clock time `deadline_ms` (zero if it
    /// has passed), at most the topic's deadline: the deadline of an event
    /// whose producer set one.
    pub(super) fn until_wall(&self, deadline_ms: u64) -> Duration {
        let shared = &self.inner.shared;
        let now_ms = wall_unix_ms(&*shared.core.clock);
        Duration::from_millis(deadline_ms.saturating_sub(now_ms)).min(shared.config.deadline)
    }

    fn meta(&self, options: Publish) -> Result<Meta, DispatchError> {
        if let Some(traceparent) = &options.traceparent {
            check_traceparent(traceparent.as_bytes())?;
        }
        let shared = &self.inner.shared;
        let created_at = shared.core.clock.monotonic();
        let deadline = options.deadline.unwrap_or(shared.config.deadline);
        Ok(Meta {
            created_at,
            deadline: created_at.saturating_add(deadline),
            class: options.class.unwrap_or(shared.config.class),
            traceparent: options.traceparent,
            cancel_epoch: shared.core.cancel.epoch(),
        })
    }

    fn envelope(
        &self,
        event: &Arc<T>,
        business_id: &Bytes,
        meta: &Meta,
        group: &str,
    ) -> Envelope<T> {
        self.inner
            .shared
            .observe(group, business_id, State::Created, 0);
        Envelope {
            event: Arc::clone(event),
            business_id: business_id.clone(),
            meta: meta.clone(),
        }
    }

    /// The dead letters, oldest first.
    pub fn dead_letters(&self) -> Vec<DeadLetter<T>> {
        self.inner.shared.dead_letters.snapshot()
    }

    /// Dead letters dropped because the sink was full.
    pub fn dead_letters_dropped(&self) -> u64 {
        self.inner.shared.dead_letters.dropped()
    }

    pub(super) fn dead_letter_count(&self) -> usize {
        self.inner.shared.dead_letters.len()
    }

    /// Delivers every dead letter again to a member of its group, with a
    /// fresh deadline and attempt count; letters whose group has no member
    /// now stay in the sink.
    pub async fn replay(&self) -> Result<ReplayReport, DispatchError> {
        let shared = &self.inner.shared;
        let mut letters = shared.dead_letters.take();
        let snapshot = self.inner.listeners.load_full();
        let mut kept = VecDeque::new();
        let mut replayed = 0;
        while let Some(letter) = letters.pop_front() {
            let Some(group) = snapshot.group(&letter.group) else {
                kept.push_back(letter);
                continue;
            };
            let envelope = self.replay_envelope(&letter)?;
            shared.observe(&group.name, &letter.business_id, State::Created, 0);
            if let Err(error) = send(group.pick(&letter.business_id), envelope, &group.name).await {
                kept.push_back(letter);
                kept.extend(letters);
                shared.dead_letters.restore(kept);
                return Err(error);
            }
            replayed += 1;
        }
        let report = ReplayReport {
            replayed,
            kept: kept.len(),
        };
        shared.dead_letters.restore(kept);
        Ok(report)
    }

    fn replay_envelope(&self, letter: &DeadLetter<T>) -> Result<Envelope<T>, DispatchError> {
        let options = Publish {
            class: Some(letter.class),
            deadline: None,
            traceparent: letter.traceparent.clone(),
        };
        Ok(Envelope {
            event: Arc::clone(&letter.event),
            business_id: letter.business_id.clone(),
            meta: self.meta(options)?,
        })
    }
}

async fn send<T>(
    member: &Member<T>,
    envelope: Envelope<T>,
    group: &str,
) -> Result<(), DispatchError> {
    member
        .sender
        .send(envelope)
        .await
        .map_err(|_closed| gone(group))
}

fn gone(group: &str) -> DispatchError {
    DispatchError::WorkerFailed {
        group: group.to_owned(),
        reason: "its worker task ended (the runtime shut down?)".to_owned(),
    }
}

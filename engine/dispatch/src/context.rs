//! The lifecycle of one delivery: its states, the context a handler sees,
//! and cancellation by business id.
//!
//! ```text
//! Created ─► Dispatched ─► Processed | Failed | TimedOut | Cancelled ─► Reported
//! ```
//!
//! A *delivery* is one event on its way to one subscription. It is
//! `Created` when it enters the subscription's queue, `Dispatched` when its
//! handler first runs, reaches exactly one terminal state, and is
//! `Reported` once its latency is recorded and (for `Failed` and
//! `TimedOut`) its dead letter is stored. A delivery that is cancelled or
//! times out while still queued goes from `Created` straight to its
//! terminal state.
//!
//! Cancellation keeps no state per delivery. The [`CancelRegistry`] counts
//! cancels (its *epoch*); a delivery remembers the epoch it was created at,
//! and it is cancelled when its business id was cancelled at a later
//! epoch. So the common case (no cancel since the delivery was created) is
//! one atomic load, and a cancel reaches queued and running deliveries
//! alike. A cancel does not reach events published after it.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Notify;

use super::class::SlaClass;
use sluice_core::io::Clock;

/// Where a delivery is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum State {
    /// Queued for its subscription.
    Created,
    /// Its handler has started (first attempt).
    Dispatched,
    /// The handler succeeded.
    Processed,
    /// Every attempt failed; the delivery is a dead letter.
    Failed,
    /// The deadline passed first; the delivery is a dead letter.
    TimedOut,
    /// Its business id was cancelled.
    Cancelled,
    /// Latency recorded, dead letter stored: the delivery is done.
    Reported,
}

impl State {
    /// Whether this is one of the four outcomes.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            State::Processed | State::Failed | State::TimedOut | State::Cancelled
        )
    }

    /// Lower-case name, for metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Created => "created",
            State::Dispatched => "dispatched",
            State::Processed => "processed",
            State::Failed => "failed",
            State::TimedOut => "timed_out",
            State::Cancelled => "cancelled",
            State::Reported => "reported",
        }
    }
}

/// One state change, as the lifecycle observer sees it.
#[derive(Debug, Clone, Copy)]
pub struct Transition<'a> {
    /// The event's `TYPE_NAME`.
    pub type_name: &'static str,
    /// The event's `SCHEMA_VERSION`.
    pub schema_version: u32,
    /// The subscription's group.
    pub group: &'a str,
    /// The event's key.
    pub business_id: &'a Bytes,
    /// The state entered.
    pub state: State,
    /// Attempts made so far.
    pub attempt: u32,
    /// When, on the dispatcher's monotonic clock.
    pub at: Duration,
}

/// Called on every state change of every delivery.
pub type Observer = Arc<dyn Fn(&Transition<'_>) + Send + Sync>;

/// What every delivery of one subscription shares (one reference count
/// per delivery instead of three).
#[derive(Debug)]
pub(super) struct SubscriptionShared {
    pub(super) group: Arc<str>,
    pub(super) cancel: Arc<CancelRegistry>,
    pub(super) clock: Arc<dyn Clock>,
}

/// What a handler is told about the delivery it runs.
#[derive(Debug, Clone)]
pub struct Context {
    pub(super) subscription: Arc<SubscriptionShared>,
    pub(super) business_id: Bytes,
    pub(super) attempt: u32,
    pub(super) created_at: Duration,
    pub(super) deadline: Duration,
    pub(super) class: SlaClass,
    pub(super) traceparent: Option<Arc<str>>,
    pub(super) cancel_epoch: u64,
}

impl Context {
    /// The subscription's group.
    pub fn group(&self) -> &str {
        &self.subscription.group
    }

    /// The event's key.
    pub fn business_id(&self) -> &Bytes {
        &self.business_id
    }

    /// This attempt's number, from 1.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// When the delivery was created, on the dispatcher's monotonic clock.
    pub fn created_at(&self) -> Duration {
        self.created_at
    }

    /// When the delivery times out, on the dispatcher's monotonic clock.
    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    /// Time left before the deadline (zero once it has passed).
    pub fn remaining(&self) -> Duration {
        self.deadline
            .saturating_sub(self.subscription.clock.monotonic())
    }

    /// The delivery's SLA class.
    pub fn class(&self) -> SlaClass {
        self.class
    }

    /// The W3C `traceparent` the event was published with, if any.
    pub fn traceparent(&self) -> Option<&str> {
        self.traceparent.as_deref()
    }

    /// Whether the business id has been cancelled since the delivery was
    /// created. Long handlers may poll this; the dispatcher also stops
    /// awaiting a handler once it is cancelled.
    pub fn is_cancelled(&self) -> bool {
        let cancel = &self.subscription.cancel;
        cancel.is_cancelled(&self.business_id, self.cancel_epoch)
    }
}

/// Cancellation by business id, shared by every topic of a dispatcher.
///
/// It remembers the last `ids_max` cancelled ids; a delivery older than
/// the oldest remembered cancel of its id is no longer reached by it.
#[derive(Debug)]
pub struct CancelRegistry {
    epoch: AtomicU64,
    ids_max: usize,
    cancelled: Mutex<Cancelled>,
    pub(super) notify: Notify,
}

#[derive(Debug, Default)]
struct Cancelled {
    by_id: HashMap<Bytes, u64>,
    order: VecDeque<(Bytes, u64)>,
}

impl CancelRegistry {
    /// A registry remembering at most `ids_max` cancelled ids.
    pub fn new(ids_max: usize) -> CancelRegistry {
        assert!(ids_max > 0);
        CancelRegistry {
            epoch: AtomicU64::new(0),
            ids_max,
            cancelled: Mutex::new(Cancelled::default()),
            notify: Notify::new(),
        }
    }

    /// Cancels every delivery of `business_id` created before this call,
    /// queued or running, in every topic of the dispatcher.
    pub fn cancel(&self, business_id: impl Into<Bytes>) {
        let business_id = business_id.into();
        {
            let mut cancelled = self.cancelled.lock().expect("cancel registry poisoned");
            let epoch = self.epoch.fetch_add(1, Ordering::SeqCst) + 1;
            cancelled.by_id.insert(business_id.clone(), epoch);
            cancelled.order.push_back((business_id, epoch));
            while cancelled.order.len() > self.ids_max {
                let (id, epoch) = cancelled.order.pop_front().expect("not empty");
                if cancelled.by_id.get(&id) == Some(&epoch) {
                    cancelled.by_id.remove(&id);
                }
            }
        }
        // The epoch moved before the wake-up: a worker that registers for
        // wake-ups and then checks cannot miss this cancel.
        self.notify.notify_waiters();
    }

    /// The number of cancels so far.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// Whether `business_id` was cancelled after `since` (an epoch).
    pub fn is_cancelled(&self, business_id: &Bytes, since: u64) -> bool {
        if self.epoch() == since {
            return false;
        }
        let cancelled = self.cancelled.lock().expect("cancel registry poisoned");
        cancelled
            .by_id
            .get(business_id)
            .is_some_and(|&epoch| epoch > since)
    }
}

//! What a local topic and its workers share: the topic's configuration,
//! the envelopes in its queues and the state every worker reads. Kept
//! apart from both, so the topic (which starts workers) and the worker
//! (which reads the topic's state) need not import each other.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::class::SlaClass;
use super::context::{State, Transition};
use super::retry::{DeadLetterSink, RetryPolicy};
use super::typed::TypedEvent;
use super::{Core, QUEUE_CAPACITY_MAX};

/// How one local topic behaves.
#[derive(Debug, Clone)]
pub struct TopicConfig {
    /// Deliveries each subscription may have queued before publishers wait.
    pub queue_capacity: usize,
    /// Retries and backoff of failed deliveries.
    pub retry: RetryPolicy,
    /// Time from publish to deadline, unless the publish says otherwise.
    pub deadline: Duration,
    /// SLA class, unless the publish says otherwise.
    pub class: SlaClass,
    /// Dead letters kept; beyond, the oldest is dropped and counted.
    pub dead_letters_max: usize,
}

impl Default for TopicConfig {
    fn default() -> Self {
        TopicConfig {
            queue_capacity: 1024,
            retry: RetryPolicy::default(),
            deadline: Duration::from_secs(10),
            class: SlaClass::default(),
            dead_letters_max: 10_000,
        }
    }
}

impl TopicConfig {
    pub(super) fn check(&self) {
        assert!(self.queue_capacity > 0 && self.queue_capacity <= QUEUE_CAPACITY_MAX);
        assert!(self.dead_letters_max > 0);
        self.retry.check();
    }
}

/// One delivery in a queue.
pub(super) struct Envelope<T> {
    pub(super) event: Arc<T>,
    pub(super) business_id: Bytes,
    pub(super) meta: Meta,
}

/// What every delivery of one publish shares.
#[derive(Debug, Clone)]
pub(super) struct Meta {
    pub(super) created_at: Duration,
    pub(super) deadline: Duration,
    pub(super) class: SlaClass,
    pub(super) traceparent: Option<Arc<str>>,
    pub(super) cancel_epoch: u64,
}

/// What a topic's workers share: everything but the listener set, so that
/// dropping the topic closes the queues and stops the workers.
pub(super) struct TopicShared<T> {
    pub(super) core: Arc<Core>,
    pub(super) config: TopicConfig,
    pub(super) dead_letters: DeadLetterSink<T>,
}

impl<T: TypedEvent> TopicShared<T> {
    /// Tells the observer (if any) and `tracing` of a state change.
    pub(super) fn observe(&self, group: &str, business_id: &Bytes, state: State, attempt: u32) {
        tracing::trace!(
            type_name = T::TYPE_NAME,
            group,
            state = state.as_str(),
            attempt,
            "delivery state"
        );
        if let Some(observer) = &self.core.observer {
            observer(&Transition {
                type_name: T::TYPE_NAME,
                schema_version: T::SCHEMA_VERSION,
                group,
                business_id,
                state,
                attempt,
                at: self.core.clock.monotonic(),
            });
        }
    }
}

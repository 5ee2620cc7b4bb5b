//! Bounded retries with exponential backoff, and the in-memory dead-letter
//! sink of a local topic.
//!
//! A delivery whose handler fails is tried again after a backoff, at most
//! `retries_max` times; after the last failure, or when its deadline
//! passes, it becomes a [`DeadLetter`] that keeps the event, every
//! attempt's error and the timestamps. The sink is bounded: past
//! `dead_letters_max` the oldest letter is dropped and counted, so a
//! failing handler cannot exhaust memory (a local topic is not durable;
//! dead letters of the durable bus belong in its log).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;

use super::class::SlaClass;

/// Most retries a policy may ask for.
pub const RETRIES_MAX: u32 = 16;

/// How often and how patiently a failed delivery is tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt (default 3, at most [`RETRIES_MAX`]).
    pub retries_max: u32,
    /// Wait before the first retry; doubled for each further retry.
    pub backoff_first: Duration,
    /// Longest wait between two attempts.
    pub backoff_max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            retries_max: 3,
            backoff_first: Duration::from_millis(10),
            backoff_max: Duration::from_secs(1),
        }
    }
}

impl RetryPolicy {
    /// Attempts a delivery gets in all.
    pub fn attempts_max(&self) -> u32 {
        self.retries_max + 1
    }

    /// The wait after failed attempt number `attempt` (from 1).
    pub fn backoff(&self, attempt: u32) -> Duration {
        assert!(attempt >= 1);
        let doublings = (attempt - 1).min(31);
        self.backoff_first
            .saturating_mul(1 << doublings)
            .min(self.backoff_max)
    }

    pub(super) fn check(&self) {
        assert!(
            self.retries_max <= RETRIES_MAX,
            "retries_max above {RETRIES_MAX}"
        );
        assert!(self.backoff_first <= self.backoff_max);
    }
}

/// Why a delivery became a dead letter.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Cause {
    /// Every attempt failed; the last error's text.
    Failed {
        /// The last attempt's error.
        error: String,
    },
    /// The deadline passed before an attempt succeeded.
    TimedOut,
}

/// One failed attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptError {
    /// The attempt's number, from 1.
    pub attempt: u32,
    /// When it failed, on the dispatcher's monotonic clock.
    pub at: Duration,
    /// The handler's error, as text.
    pub error: String,
}

/// A delivery that did not succeed, kept for inspection and replay.
#[derive(Debug)]
pub struct DeadLetter<T> {
    /// The event, shared with every other holder.
    pub event: Arc<T>,
    /// The subscription group it failed in; replay delivers it there.
    pub group: Arc<str>,
    /// The event's key.
    pub business_id: Bytes,
    /// Its SLA class.
    pub class: SlaClass,
    /// Its `traceparent`, if any.
    pub traceparent: Option<Arc<str>>,
    /// Why it is here.
    pub cause: Cause,
    /// Attempts made (0 if it timed out in the queue).
    pub attempts: u32,
    /// Every failed attempt, in order.
    pub errors: Vec<AttemptError>,
    /// When it was published, on the dispatcher's monotonic clock.
    pub created_at: Duration,
    /// When it became a dead letter, on the monotonic clock.
    pub dead_at: Duration,
    /// When it became a dead letter, in ms since the Unix epoch.
    pub dead_at_wall_ms: u64,
}

// By hand: a derived `Clone` would ask for `T: Clone`, and the event is
// shared through its `Arc`, never copied.
impl<T> Clone for DeadLetter<T> {
    fn clone(&self) -> Self {
        DeadLetter {
            event: Arc::clone(&self.event),
            group: Arc::clone(&self.group),
            business_id: self.business_id.clone(),
            class: self.class,
            traceparent: self.traceparent.clone(),
            cause: self.cause.clone(),
            attempts: self.attempts,
            errors: self.errors.clone(),
            created_at: self.created_at,
            dead_at: self.dead_at,
            dead_at_wall_ms: self.dead_at_wall_ms,
        }
    }
}

/// The bounded dead letters of one topic, oldest first.
#[derive(Debug)]
pub(super) struct DeadLetterSink<T> {
    letters: Mutex<VecDeque<DeadLetter<T>>>,
    letters_max: usize,
    dropped: AtomicU64,
}

impl<T> DeadLetterSink<T> {
    pub(super) fn new(letters_max: usize) -> DeadLetterSink<T> {
        assert!(letters_max > 0);
        DeadLetterSink {
            letters: Mutex::new(VecDeque::new()),
            letters_max,
            dropped: AtomicU64::new(0),
        }
    }

    pub(super) fn push(&self, letter: DeadLetter<T>) {
        let mut letters = self.lock();
        if letters.len() == self.letters_max {
            letters.pop_front();
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        letters.push_back(letter);
    }

    /// Dead letters dropped because the sink was full.
    pub(super) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    pub(super) fn len(&self) -> usize {
        self.lock().len()
    }

    /// Removes and returns every letter, oldest first.
    pub(super) fn take(&self) -> VecDeque<DeadLetter<T>> {
        std::mem::take(&mut *self.lock())
    }

    /// Puts letters that could not be replayed back in front, keeping order.
    pub(super) fn restore(&self, kept: VecDeque<DeadLetter<T>>) {
        let mut letters = self.lock();
        for letter in kept.into_iter().rev() {
            if letters.len() == self.letters_max {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            letters.push_front(letter);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<DeadLetter<T>>> {
        self.letters.lock().expect("dead-letter sink poisoned")
    }
}

impl<T> DeadLetterSink<T> {
    pub(super) fn snapshot(&self) -> Vec<DeadLetter<T>> {
        self.lock().iter().cloned().collect()
    }
}

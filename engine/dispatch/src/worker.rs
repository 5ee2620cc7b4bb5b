//! A subscription's worker: takes deliveries from its queue, runs the
//! handler under the delivery's deadline and cancellation, retries, and
//! reports the outcome.
//!
//! Invariants:
//! - Each delivery reaches exactly one outcome and is reported exactly
//!   once; `Failed` and `TimedOut` deliveries become dead letters.
//! - A handler is never polled after it finished, panicked, timed out or
//!   was cancelled. A panic is caught and counts as a failed attempt, so
//!   one bad event cannot stop the subscription.
//! - The common path (handler ready at its first poll, nothing cancelled)
//!   arms no timer, takes no lock and allocates nothing.

use sluice_core::io::Env;
use std::any::Any;
use std::future::{Future, poll_fn};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use openraft_rt::AsyncRuntime;
use tracing::Instrument;

use super::RECV_BATCH_MAX;
use super::context::{CancelRegistry, Context, State, SubscriptionShared};
use super::queue::Receiver;
use super::retry::{AttemptError, Cause, DeadLetter};
use super::shared::{Envelope, TopicShared};
use super::typed::TypedEvent;
use sluice_core::io::wall_unix_ms;

/// What a handler returns on failure; any error converts with `?`, and a
/// `&str` or `String` with `.into()`.
pub type HandlerError = Box<dyn std::error::Error + Send + Sync>;

/// Handles events of type `T`. Closures `Fn(Arc<T>, Context) -> impl
/// Future<Output = Result<(), HandlerError>>` implement it.
pub trait Handler<T>: Send + Sync + 'static {
    /// Handles one delivery. Called again, with a new attempt number, after
    /// a failure, until the retry policy gives up.
    fn handle(
        &self,
        event: Arc<T>,
        context: Context,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send;
}

impl<T, F, Fut> Handler<T> for F
where
    F: Fn(Arc<T>, Context) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send,
{
    fn handle(
        &self,
        event: Arc<T>,
        context: Context,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send {
        self(event, context)
    }
}

/// The worker task of one subscription.
pub(super) async fn run<T, H, E>(
    shared: Arc<TopicShared<T>>,
    group: Arc<str>,
    handler: H,
    mut receiver: Receiver<Envelope<T>>,
) where
    T: TypedEvent,
    H: Handler<T>,
    E: Env,
{
    let subscription = Arc::new(SubscriptionShared {
        group,
        cancel: Arc::clone(&shared.core.cancel),
        clock: Arc::clone(&shared.core.clock),
    });
    let mut batch = Vec::with_capacity(RECV_BATCH_MAX);
    while receiver.recv_many(&mut batch, RECV_BATCH_MAX).await > 0 {
        // One clock read per delivery: the time its predecessor was
        // reported is "now" for its deadline check (it can only be late,
        // by the few instructions in between).
        let mut now = shared.core.clock.monotonic();
        for envelope in batch.drain(..) {
            let mut delivery = Delivery {
                shared: &shared,
                subscription: &subscription,
                envelope,
                attempt: 0,
                errors: Vec::new(),
            };
            let span = tracing::debug_span!(
                "dispatch.deliver",
                type_name = T::TYPE_NAME,
                group = &*subscription.group,
                class = delivery.envelope.meta.class.as_str(),
                traceparent = delivery.envelope.meta.traceparent.as_deref(),
            );
            let outcome = delivery
                .run::<H, E>(&handler, now)
                .instrument(span.clone())
                .await;
            now = span.in_scope(|| delivery.report(outcome));
        }
    }
}

/// How a delivery ended.
enum Outcome {
    Processed,
    Failed(String),
    TimedOut,
    Cancelled,
}

impl Outcome {
    fn state(&self) -> State {
        match self {
            Outcome::Processed => State::Processed,
            Outcome::Failed(_) => State::Failed,
            Outcome::TimedOut => State::TimedOut,
            Outcome::Cancelled => State::Cancelled,
        }
    }
}

/// How one awaited future ended.
enum Race<O> {
    Done(O),
    Panicked(String),
    TimedOut,
    Cancelled,
}

struct Delivery<'a, T> {
    shared: &'a TopicShared<T>,
    subscription: &'a Arc<SubscriptionShared>,
    envelope: Envelope<T>,
    attempt: u32,
    errors: Vec<AttemptError>,
}

impl<T: TypedEvent> Delivery<'_, T> {
    /// Runs the attempts; `now` is a recent reading of the clock.
    async fn run<H: Handler<T>, E: Env>(&mut self, handler: &H, mut now: Duration) -> Outcome {
        let policy = self.shared.config.retry;
        loop {
            let Some(remaining) = self.remaining(now) else {
                return self.stopped();
            };
            self.attempt += 1;
            if self.attempt == 1 {
                self.observe(State::Dispatched);
            }
            let event = Arc::clone(&self.envelope.event);
            let attempt = handler.handle(event, self.context());
            let span = tracing::trace_span!("dispatch.attempt", attempt = self.attempt);
            let error = match self.race::<_, E>(attempt.instrument(span), remaining).await {
                Race::Done(Ok(())) => return Outcome::Processed,
                Race::Done(Err(error)) => error.to_string(),
                Race::Panicked(message) => format!("handler panicked: {message}"),
                Race::TimedOut => return Outcome::TimedOut,
                Race::Cancelled => return Outcome::Cancelled,
            };
            let at = self.shared.core.clock.monotonic();
            let attempt = self.attempt;
            self.errors.push(AttemptError { attempt, at, error });
            if self.attempt >= policy.attempts_max() {
                let last = self.errors.last().expect("just pushed");
                return Outcome::Failed(last.error.clone());
            }
            self.shared.core.sla.record_retry(self.envelope.meta.class);
            let Some(remaining) = self.remaining(at) else {
                return self.stopped();
            };
            let backoff = policy.backoff(self.attempt).min(remaining);
            match self
                .race::<_, E>(E::Runtime::sleep(backoff), remaining)
                .await
            {
                Race::Done(()) | Race::TimedOut => now = self.shared.core.clock.monotonic(),
                Race::Cancelled => return Outcome::Cancelled,
                Race::Panicked(message) => {
                    return Outcome::Failed(format!("backoff timer panicked: {message}"));
                }
            }
        }
    }

    /// Time left, or `None` if the delivery must stop (cancelled or past
    /// its deadline); see [`Delivery::stopped`].
    fn remaining(&self, now: Duration) -> Option<Duration> {
        if self.is_cancelled() {
            return None;
        }
        let remaining = self.envelope.meta.deadline.saturating_sub(now);
        (!remaining.is_zero()).then_some(remaining)
    }

    fn stopped(&self) -> Outcome {
        if self.is_cancelled() {
            Outcome::Cancelled
        } else {
            Outcome::TimedOut
        }
    }

    fn is_cancelled(&self) -> bool {
        let cancel = &self.shared.core.cancel;
        cancel.is_cancelled(&self.envelope.business_id, self.envelope.meta.cancel_epoch)
    }

    fn context(&self) -> Context {
        let meta = &self.envelope.meta;
        Context {
            subscription: Arc::clone(self.subscription),
            business_id: self.envelope.business_id.clone(),
            attempt: self.attempt,
            created_at: meta.created_at,
            deadline: meta.deadline,
            class: meta.class,
            traceparent: meta.traceparent.clone(),
            cancel_epoch: meta.cancel_epoch,
        }
    }

    /// Awaits `future` until it finishes, `remaining` passes or the
    /// delivery is cancelled. The timer and the cancel wake-up are armed
    /// only if the future is not ready at its first poll.
    async fn race<F: Future, E: Env>(&self, future: F, remaining: Duration) -> Race<F::Output> {
        let mut future = pin!(future);
        if let Poll::Ready(race) =
            poll_fn(|cx| Poll::Ready(poll_guarded(future.as_mut(), cx))).await
        {
            return race;
        }
        let cancel: &CancelRegistry = &self.shared.core.cancel;
        let mut notified = pin!(cancel.notify.notified());
        notified.as_mut().enable();
        // Checked after registering: a cancel from now on wakes us.
        if self.is_cancelled() {
            return Race::Cancelled;
        }
        let mut sleep = pin!(E::Runtime::sleep(remaining));
        poll_fn(|cx| {
            if let Poll::Ready(race) = poll_guarded(future.as_mut(), cx) {
                return Poll::Ready(race);
            }
            if sleep.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Race::TimedOut);
            }
            while notified.as_mut().poll(cx).is_ready() {
                // Re-register before checking, so that no cancel falls
                // between the check and the next wake-up.
                notified.set(cancel.notify.notified());
                if self.is_cancelled() {
                    return Poll::Ready(Race::Cancelled);
                }
            }
            Poll::Pending
        })
        .await
    }

    fn observe(&self, state: State) {
        let business_id = &self.envelope.business_id;
        let group = &self.subscription.group;
        self.shared.observe(group, business_id, state, self.attempt);
    }

    /// Records the outcome: state, latency, dead letter, then `Reported`.
    /// Returns the time it read.
    fn report(&mut self, outcome: Outcome) -> Duration {
        let state = outcome.state();
        self.observe(state);
        let core = &self.shared.core;
        let now = core.clock.monotonic();
        let meta = &self.envelope.meta;
        core.sla
            .record(meta.class, state, now.saturating_sub(meta.created_at));
        let cause = match outcome {
            Outcome::Processed | Outcome::Cancelled => None,
            Outcome::Failed(error) => Some(Cause::Failed { error }),
            Outcome::TimedOut => Some(Cause::TimedOut),
        };
        if let Some(cause) = cause {
            let group = &self.subscription.group;
            tracing::warn!(
                type_name = T::TYPE_NAME,
                group = &**group,
                ?cause,
                attempts = self.attempt,
                "dead letter"
            );
            self.shared.dead_letters.push(DeadLetter {
                event: Arc::clone(&self.envelope.event),
                group: Arc::clone(group),
                business_id: self.envelope.business_id.clone(),
                class: meta.class,
                traceparent: meta.traceparent.clone(),
                cause,
                attempts: self.attempt,
                errors: std::mem::take(&mut self.errors),
                created_at: meta.created_at,
                dead_at: now,
                dead_at_wall_ms: wall_unix_ms(&*core.clock),
            });
        }
        self.observe(State::Reported);
        now
    }
}

/// Polls `future` once, catching a panic.
fn poll_guarded<F: Future>(future: Pin<&mut F>, cx: &mut TaskContext<'_>) -> Poll<Race<F::Output>> {
    match catch_unwind(AssertUnwindSafe(|| future.poll(cx))) {
        Ok(Poll::Ready(output)) => Poll::Ready(Race::Done(output)),
        Ok(Poll::Pending) => Poll::Pending,
        Err(panic) => Poll::Ready(Race::Panicked(panic_text(&*panic))),
    }
}

fn panic_text(panic: &(dyn Any + Send)) -> String {
    if let Some(text) = panic.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = panic.downcast_ref::<String>() {
        text.clone()
    } else {
        "a non-text panic payload".to_owned()
    }
}

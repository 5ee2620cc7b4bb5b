//! Sagas: sequences of typed steps, each an action and its compensation,
//! whose state lives in the log (the white paper's §4.2 compensating
//! transaction framework).
//!
//! A [`Saga`] names its steps in order; each [`Step`] has an action, which
//! returns the step's *effect* (events to publish) and the *undo* value
//! its compensation will need, and a compensation, which returns the
//! events that undo the effect. [`Sagas`] coordinates sagas of one
//! definition on a bus:
//!
//! 1. **PreCommit.** Step *k*'s action runs (retried, at most
//!    [`SAGA_RETRIES_MAX`] times, with the same idempotency key); once it is
//!    confirmed (returns its effect) the effect and a `pre_commit` record
//!    with its undo value commit in **one** transaction on
//!    [`SAGA_TOPIC`]: the resources are held and the undo log says how to
//!    release them, or neither happened.
//! 2. **Commit.** The last step's transaction also carries `commit`: the
//!    saga is confirmed. A saga of *n* steps that succeeds costs *n* Raft
//!    entries.
//! 3. **Compensate.** A step not confirmed within its timeout (default
//!    3 s, all attempts together) or whose attempts all fail is recorded as
//!    `failed`; then the steps already done are compensated in reverse,
//!    each compensation's effect committing with its `compensate` record,
//!    the last one with `compensated`.
//!
//! **Recovery.** A coordinator reads its pending sagas back from the log
//! when it opens, and an asynchronous scanner ([`SagaConfig::scan_interval`])
//! drives every saga left pending (by a crash, a dropped [`Sagas::run`]
//! future, or a compensation that kept failing) to its end: with
//! [`Recovery::Compensate`] (the white paper's rollback) it records the
//! saga as failed at the step it had reached and compensates; with
//! [`Recovery::Resume`] it runs the remaining steps. Because every record
//! commits with its effect, and the next record is decided from the
//! records alone, a crash at any point neither loses a step's effect nor
//! compensates a step twice.
//!
//! **One writer per saga.** The coordinator is a member of its own consumer
//! group (`__sluice.saga.{name}.{owner}`) and each of its transactions is
//! fenced by that group's generation. Opening a coordinator with the same
//! owner again (a restart, or a takeover) bumps the generation before it
//! reads the log, so a previous incarnation still running can no longer
//! commit anything ([`SagaError::Fenced`]) and the new one sees all it did.
//!
//! **What a step must guarantee.** Its action may run more than once (a
//! retry, or a crash after it ran but before its record committed): it
//! must be idempotent under [`StepContext::idempotency_key`]. Its effect on
//! the bus is exactly-once by construction. An effect outside the bus (a
//! call to another system) is the step's own to make idempotent; and under
//! [`Recovery::Compensate`], a step interrupted by a crash before its
//! record committed is never compensated (there is no record of it), so
//! such a step should make its outside change through its effect events
//! (a participant consuming them), or the saga should use
//! [`Recovery::Resume`], which retries it with the same key.
//!
//! Fault model: the coordinator's process may crash at any point; the log
//! is the only state that survives. Actions and compensations may fail,
//! hang or panic (a panic is a failed attempt). A compensation that fails
//! every attempt leaves the saga pending ([`SagaError::Compensation`]); the
//! scanner tries again on its next pass, for as long as it takes.

mod record;

use sluice_core::io::Env;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use openraft::alias::JoinHandleOf;
use openraft::type_config::TypeConfigExt;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::retry::RetryPolicy;
use super::worker::HandlerError;
use record::{End, Kind, Next, Progress, Record};
use sluice_core::bus::{Bus, BusError, Consumer, Message, Producer};
use sluice_core::io::Clock;
use sluice_core::io::os::OsEnv;
use sluice_core::raft::TypeConfig;
pub use sluice_model::constants::{
    SAGA_ID_SIZE_MAX, SAGA_RETRIES_MAX, SAGA_STEP_TIMEOUT_DEFAULT, SAGA_STEPS_MAX,
    SAGAS_PENDING_MAX,
};
use sluice_model::event::check_topic_name;
pub use sluice_model::names::SAGA_TOPIC;
use sluice_model::state::{CommitError, StateError, TopicConfig, TxnError};

/// Partitions of [`SAGA_TOPIC`].
const SAGA_PARTITIONS: u32 = 4;

/// Records read from [`SAGA_TOPIC`] per read when a coordinator opens.
const READ_BATCH: usize = 1024;

/// What a step's action did: the undo value its compensation will get,
/// and its effect, the events committed with its record.
#[derive(Debug, Clone)]
pub struct Done<U> {
    /// What the compensation needs to undo the step.
    pub undo: U,
    /// Events published in the step's transaction.
    pub effect: Vec<Message>,
}

impl<U> Done<U> {
    /// A step done with `undo` and no effect yet.
    pub fn new(undo: U) -> Done<U> {
        Done {
            undo,
            effect: Vec::new(),
        }
    }

    /// Adds an event to the effect.
    pub fn publish(mut self, message: Message) -> Done<U> {
        self.effect.push(message);
        self
    }
}

/// One step of a saga over input `I`. Closures do not fit (two functions
/// and an associated type); implement it on a small struct.
pub trait Step<I>: Send + Sync + 'static {
    /// What the compensation needs from the action, recorded in the undo
    /// log (JSON).
    type Undo: Serialize + DeserializeOwned + Send + Sync + 'static;

    /// Does the step and returns its effect. Idempotent under
    /// [`StepContext::idempotency_key`]: it may run more than once.
    fn action(
        &self,
        input: Arc<I>,
        context: StepContext,
    ) -> impl Future<Output = Result<Done<Self::Undo>, HandlerError>> + Send;

    /// Undoes a done step; returns the events that undo its effect.
    /// Idempotent too: it may run more than once, though its record (and
    /// so its effect) commits once.
    fn compensate(
        &self,
        input: Arc<I>,
        undo: Self::Undo,
        context: StepContext,
    ) -> impl Future<Output = Result<Vec<Message>, HandlerError>> + Send;
}

/// What an action or compensation is told about its attempt.
#[derive(Debug, Clone)]
pub struct StepContext {
    saga: Arc<str>,
    step: usize,
    step_name: Arc<str>,
    attempt: u32,
    deadline: Duration,
    clock: Arc<dyn Clock>,
}

impl StepContext {
    /// The saga's id.
    pub fn saga(&self) -> &str {
        &self.saga
    }

    /// The step's index, from 0.
    pub fn step(&self) -> usize {
        self.step
    }

    /// The step's name.
    pub fn step_name(&self) -> &str {
        &self.step_name
    }

    /// This attempt's number, from 1.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// `{saga}/{step}`: the same for every attempt of the step, before and
    /// after a crash; a participant deduplicates on it.
    pub fn idempotency_key(&self) -> String {
        format!("{}/{}", self.saga, self.step)
    }

    /// Time left before the step times out (zero once it has).
    pub fn remaining(&self) -> Duration {
        self.deadline.saturating_sub(self.clock.monotonic())
    }
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A step with its undo type erased to JSON.
trait ErasedStep<I>: Send + Sync {
    fn action(
        &self,
        input: Arc<I>,
        context: StepContext,
    ) -> BoxFuture<'_, Result<(serde_json::Value, Vec<Message>), HandlerError>>;

    fn compensate(
        &self,
        input: Arc<I>,
        undo: serde_json::Value,
        context: StepContext,
    ) -> BoxFuture<'_, Result<Vec<Message>, HandlerError>>;
}

impl<I: Send + Sync + 'static, S: Step<I>> ErasedStep<I> for S {
    fn action(
        &self,
        input: Arc<I>,
        context: StepContext,
    ) -> BoxFuture<'_, Result<(serde_json::Value, Vec<Message>), HandlerError>> {
        Box::pin(async move {
            let done = Step::action(self, input, context).await?;
            Ok((serde_json::to_value(&done.undo)?, done.effect))
        })
    }

    fn compensate(
        &self,
        input: Arc<I>,
        undo: serde_json::Value,
        context: StepContext,
    ) -> BoxFuture<'_, Result<Vec<Message>, HandlerError>> {
        Box::pin(async move {
            let undo: S::Undo = serde_json::from_value(undo)?;
            Step::compensate(self, input, undo, context).await
        })
    }
}

/// A saga definition: a name and its steps in order, over input `I`.
pub struct Saga<I> {
    name: String,
    steps: Vec<(Arc<str>, Box<dyn ErasedStep<I>>)>,
}

impl<I> fmt::Debug for Saga<I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let steps: Vec<&str> = self.steps.iter().map(|(name, _)| &**name).collect();
        f.debug_struct("Saga")
            .field("name", &self.name)
            .field("steps", &steps)
            .finish()
    }
}

impl<I: Serialize + DeserializeOwned + Send + Sync + 'static> Saga<I> {
    /// A saga named `name` (`[A-Za-z0-9._-]`, as a topic name), no steps
    /// yet. The name keys its records: keep it while sagas are pending.
    pub fn new(name: &str) -> Saga<I> {
        Saga {
            name: name.to_owned(),
            steps: Vec::new(),
        }
    }

    /// Adds a step after the others.
    pub fn step<S: Step<I>>(mut self, name: &str, step: S) -> Saga<I> {
        self.steps.push((Arc::from(name), Box::new(step)));
        self
    }

    /// The number of steps.
    pub fn len(&self) -> usize {
        self.steps.len()
    }

    /// Whether it has no step.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }
}

/// What the scanner does with a saga left pending.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Recovery {
    /// Record it as failed at the step it had reached and compensate the
    /// steps done (the white paper's rollback).
    #[default]
    Compensate,
    /// Run the remaining steps, from the first without a record (it is
    /// retried with the same idempotency key).
    Resume,
}

/// How a coordinator runs sagas.
#[derive(Debug, Clone)]
pub struct SagaConfig {
    /// Names this coordinator in its records and its group; another
    /// coordinator opened with the same owner takes its sagas over and
    /// fences it. Default `node-{bus node id}`.
    pub owner: Option<String>,
    /// How long a step's action (or compensation) has, all attempts
    /// together, to be confirmed.
    pub step_timeout: Duration,
    /// Retries of a failed attempt (at most [`SAGA_RETRIES_MAX`]) and the
    /// backoff between them.
    pub retry: RetryPolicy,
    /// What the scanner does with a saga left pending.
    pub recovery: Recovery,
    /// How often the scanner looks for sagas left pending.
    pub scan_interval: Duration,
}

impl Default for SagaConfig {
    fn default() -> Self {
        SagaConfig {
            owner: None,
            step_timeout: SAGA_STEP_TIMEOUT_DEFAULT,
            retry: RetryPolicy::default(),
            recovery: Recovery::default(),
            scan_interval: Duration::from_secs(1),
        }
    }
}

/// How a saga ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SagaOutcome {
    /// Every step is done and the saga is confirmed.
    Committed,
    /// Step `failed_step` was not confirmed; the steps before it are
    /// compensated, in the order given.
    Compensated {
        /// The step that failed.
        failed_step: usize,
        /// Why.
        cause: String,
        /// The steps compensated, last done first.
        compensated: Vec<usize>,
    },
}

/// Why a saga could not be run or driven.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SagaError {
    /// The bus refused or failed; a saga begun stays pending for the
    /// scanner.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// The configuration or the definition cannot work.
    #[error("invalid saga setup: {0}")]
    Invalid(String),
    /// The id is empty, too long, or already running or pending.
    #[error("saga id {id:?} refused: {reason}")]
    Id {
        /// The id.
        id: String,
        /// Why.
        reason: String,
    },
    /// [`SAGAS_PENDING_MAX`] sagas are pending already.
    #[error(
        "{pending} sagas are pending, the most one coordinator keeps: let the scanner finish some"
    )]
    TooManyPending {
        /// Sagas pending now.
        pending: usize,
    },
    /// Another coordinator opened with this owner; this one can no longer
    /// commit and has stopped.
    #[error(
        "coordinator {owner:?} of saga {name:?} was fenced: another one opened with its owner name"
    )]
    Fenced {
        /// The saga definition.
        name: String,
        /// The owner name.
        owner: String,
    },
    /// A compensation failed every attempt; the saga stays pending and
    /// the scanner tries again.
    #[error("compensation of step {step} ({step_name}) of saga {saga:?} failed: {cause}")]
    Compensation {
        /// The saga's id.
        saga: String,
        /// The step.
        step: usize,
        /// Its name.
        step_name: String,
        /// The last attempt's error.
        cause: String,
    },
    /// An input or a record does not encode or decode.
    #[error("saga {saga:?}: {what} does not encode or decode: {source}")]
    Codec {
        /// The saga's id.
        saga: String,
        /// What.
        what: &'static str,
        /// serde_json's error.
        #[source]
        source: serde_json::Error,
    },
    /// The log holds records of a saga that this definition cannot follow
    /// (steps added or removed while it was pending, or damage).
    #[error(
        "saga {saga:?} of {name:?}: {reason}; finish pending sagas before changing a definition, or give the new one another name"
    )]
    Record {
        /// The saga definition.
        name: String,
        /// The saga's id.
        saga: String,
        /// What does not follow.
        reason: String,
    },
}

/// What one pass of the scanner did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScanReport {
    /// Sagas it drove to `commit`.
    pub committed: usize,
    /// Sagas it drove to `compensated`.
    pub compensated: usize,
    /// Sagas still pending after it tried (a compensation kept failing,
    /// or the bus refused).
    pub still_pending: usize,
}

/// The coordinator's lane to the log: its group member and producer. One
/// transaction at a time.
struct Lane<E: Env> {
    consumer: Consumer<E>,
    producer: Producer<E>,
}

#[derive(Default)]
struct Index {
    /// Sagas begun and not ended, with their progress.
    pending: HashMap<String, Progress>,
    /// Sagas a task of this process is driving now.
    in_flight: HashSet<String>,
}

struct Inner<I, E: Env> {
    bus: Bus<E>,
    saga: Saga<I>,
    config: SagaConfig,
    owner: String,
    lane: tokio::sync::Mutex<Lane<E>>,
    index: Mutex<Index>,
    fenced: AtomicBool,
    stop: AtomicBool,
}

/// The scanner task's handle.
type Scanner<E> = JoinHandleOf<TypeConfig<E>, ()>;

/// The coordinator of one saga definition on a bus; see the module docs.
/// Cheap to clone: clones share the coordinator.
pub struct Sagas<I, E: Env = OsEnv> {
    inner: Arc<Inner<I, E>>,
    scanner: Arc<Mutex<Option<Scanner<E>>>>,
    /// Wakes the scanner from its sleep when the coordinator closes.
    wake: Arc<tokio::sync::Notify>,
}

impl<I, E: Env> Clone for Sagas<I, E> {
    fn clone(&self) -> Self {
        Sagas {
            inner: Arc::clone(&self.inner),
            scanner: Arc::clone(&self.scanner),
            wake: Arc::clone(&self.wake),
        }
    }
}

impl<I, E: Env> fmt::Debug for Sagas<I, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sagas")
            .field("saga", &self.inner.saga)
            .field("owner", &self.inner.owner)
            .finish_non_exhaustive()
    }
}

/// Removes a saga from the in-flight set when its driver ends or is
/// dropped.
struct Claim<'a> {
    index: &'a Mutex<Index>,
    id: String,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        let mut index = self.index.lock().expect("saga index poisoned");
        index.in_flight.remove(&self.id);
    }
}

impl<I, E> Sagas<I, E>
where
    I: Serialize + DeserializeOwned + Send + Sync + 'static,
    E: Env,
{
    /// Opens the coordinator of `saga` on `bus`: joins its group (fencing
    /// an earlier incarnation), reads its pending sagas back from
    /// [`SAGA_TOPIC`], and starts the scanner, which drives them first.
    pub async fn open(bus: &Bus<E>, saga: Saga<I>, config: SagaConfig) -> Result<Self, SagaError> {
        let owner = config
            .owner
            .clone()
            .unwrap_or_else(|| format!("node-{}", bus.node_id()));
        check(&saga, &config, &owner)?;
        ensure_topic(bus).await?;
        let group = format!("__sluice.saga.{}.{owner}", saga.name);
        // Joining bumps the group's generation before the log is read: an
        // earlier incarnation can commit nothing after this, and everything
        // it committed before is in what is read below.
        let consumer = bus.consumer(&group, &owner, &[SAGA_TOPIC]).await?;
        let producer = bus.producer().await?;
        let pending = read_pending(bus, &saga, &owner)?;
        let inner = Arc::new(Inner {
            bus: bus.clone(),
            saga,
            config,
            owner,
            lane: tokio::sync::Mutex::new(Lane { consumer, producer }),
            index: Mutex::new(Index {
                pending,
                in_flight: HashSet::new(),
            }),
            fenced: AtomicBool::new(false),
            stop: AtomicBool::new(false),
        });
        let wake = Arc::new(tokio::sync::Notify::new());
        let scanner = TypeConfig::<E>::spawn(scan_loop(Arc::downgrade(&inner), Arc::clone(&wake)));
        Ok(Sagas {
            inner,
            scanner: Arc::new(Mutex::new(Some(scanner))),
            wake,
        })
    }

    /// Runs saga `id` with `input` to its end: every step done and
    /// confirmed, or the steps done compensated. An id must be new: one
    /// running or pending is refused.
    ///
    /// If this future is dropped, or the bus fails, the saga stays pending
    /// and the scanner finishes it.
    pub async fn run(&self, id: &str, input: I) -> Result<SagaOutcome, SagaError> {
        let inner = &*self.inner;
        inner.check_running()?;
        if id.is_empty() || id.len() > SAGA_ID_SIZE_MAX {
            return Err(SagaError::Id {
                id: id.to_owned(),
                reason: format!("an id has 1 to {SAGA_ID_SIZE_MAX} bytes"),
            });
        }
        let claim = inner.claim(id, true)?;
        let codec = |source| SagaError::Codec {
            saga: id.to_owned(),
            what: "the input",
            source,
        };
        let progress = Progress::starting(serde_json::to_value(&input).map_err(codec)?);
        inner.drive(&claim, Arc::new(input), progress).await
    }

    /// The ids of the sagas pending now (begun, not ended), sorted.
    pub fn pending(&self) -> Vec<String> {
        let index = self.inner.index.lock().expect("saga index poisoned");
        let mut ids: Vec<String> = index.pending.keys().cloned().collect();
        ids.sort();
        ids
    }

    /// One pass of the scanner, now: drives every saga pending and not
    /// running in this process to its end, as far as it can.
    pub async fn scan(&self) -> Result<ScanReport, SagaError> {
        self.inner.scan().await
    }

    /// Stops the scanner after its current pass and leaves the group;
    /// pending sagas stay pending, for the next coordinator of this owner.
    pub async fn close(self) -> Result<(), SagaError> {
        self.inner.stop.store(true, Ordering::Release);
        self.wake.notify_one();
        let scanner = self.scanner.lock().expect("scanner handle poisoned").take();
        if let Some(scanner) = scanner {
            // It ends after its current pass, if any; it holds no strong
            // reference between passes.
            let _ended = scanner.await;
        }
        let Ok(inner) = Arc::try_unwrap(self.inner) else {
            // Another clone still uses the coordinator: it stays a member.
            return Ok(());
        };
        let lane = inner.lane.into_inner();
        lane.consumer.leave().await.map_err(SagaError::from)
    }
}

/// Refuses a definition or configuration that cannot work.
fn check<I>(saga: &Saga<I>, config: &SagaConfig, owner: &str) -> Result<(), SagaError> {
    let invalid = |what: String| Err(SagaError::Invalid(what));
    if saga.steps.is_empty() || saga.steps.len() > SAGA_STEPS_MAX {
        return invalid(format!(
            "saga {:?} has {} steps; a saga has 1 to {SAGA_STEPS_MAX}",
            saga.name,
            saga.steps.len()
        ));
    }
    for (what, name) in [("saga name", &*saga.name), ("owner", owner)] {
        if let Err(error) = check_topic_name(name.as_bytes()) {
            return invalid(format!("{what} {name:?}: {error}"));
        }
    }
    if config.retry.retries_max > SAGA_RETRIES_MAX {
        return invalid(format!(
            "{} retries; a saga step retries at most {SAGA_RETRIES_MAX} times",
            config.retry.retries_max
        ));
    }
    if config.step_timeout.is_zero() || config.scan_interval.is_zero() {
        return invalid("the step timeout and the scan interval must be positive".into());
    }
    Ok(())
}

async fn ensure_topic<E: Env>(bus: &Bus<E>) -> Result<(), BusError> {
    match bus
        .create_topic(SAGA_TOPIC, SAGA_PARTITIONS, TopicConfig::default())
        .await
    {
        Err(BusError::State(StateError::TopicExists { partitions, .. }))
            if partitions == SAGA_PARTITIONS =>
        {
            Ok(())
        }
        result => result,
    }
}

/// The sagas of `saga` and `owner` begun and not ended, from the log.
fn read_pending<I, E: Env>(
    bus: &Bus<E>,
    saga: &Saga<I>,
    owner: &str,
) -> Result<HashMap<String, Progress>, SagaError> {
    let mut progress: HashMap<String, Progress> = HashMap::new();
    for partition in 0..SAGA_PARTITIONS {
        let mut offset = 0;
        loop {
            let (records, next) = bus.read(SAGA_TOPIC, partition, offset, READ_BATCH)?;
            if records.is_empty() {
                break;
            }
            offset = next;
            for delivery in records {
                let record: Record =
                    serde_json::from_slice(&delivery.payload).map_err(|source| {
                        SagaError::Codec {
                            saga: String::from_utf8_lossy(&delivery.key).into_owned(),
                            what: "a record",
                            source,
                        }
                    })?;
                if record.name != saga.name || record.owner != owner {
                    continue;
                }
                let entry = progress.entry(record.saga.clone()).or_default();
                entry
                    .apply(&record.kind, saga.steps.len())
                    .map_err(|error| SagaError::Record {
                        name: saga.name.clone(),
                        saga: record.saga.clone(),
                        reason: error.0,
                    })?;
            }
        }
    }
    progress.retain(|_, progress| progress.end.is_none());
    Ok(progress)
}

/// The scanner: a pass every interval while the coordinator lives and is
/// not closed; `wake` cuts a sleep short.
async fn scan_loop<I, E>(inner: Weak<Inner<I, E>>, wake: Arc<tokio::sync::Notify>)
where
    I: Serialize + DeserializeOwned + Send + Sync + 'static,
    E: Env,
{
    let mut first = true;
    loop {
        let interval = {
            let Some(inner) = inner.upgrade() else {
                return;
            };
            if inner.stop.load(Ordering::Acquire) || inner.fenced.load(Ordering::Acquire) {
                return;
            }
            inner.config.scan_interval
        };
        if !first {
            let sleep = std::pin::pin!(TypeConfig::<E>::sleep(interval));
            let woken = std::pin::pin!(wake.notified());
            futures_util::future::select(sleep, woken).await;
        }
        first = false;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        if inner.stop.load(Ordering::Acquire) {
            return;
        }
        match inner.scan().await {
            Ok(report) if report != ScanReport::default() => {
                tracing::debug!(?report, saga = %inner.saga.name, "saga scan");
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, saga = %inner.saga.name, "saga scan failed"),
        }
    }
}

impl<I, E> Inner<I, E>
where
    I: Serialize + DeserializeOwned + Send + Sync + 'static,
    E: Env,
{
    fn check_running(&self) -> Result<(), SagaError> {
        if self.fenced.load(Ordering::Acquire) {
            return Err(self.fenced_error());
        }
        Ok(())
    }

    fn fenced_error(&self) -> SagaError {
        SagaError::Fenced {
            name: self.saga.name.clone(),
            owner: self.owner.clone(),
        }
    }

    /// Marks saga `id` as driven by the caller; `new`: it must not be
    /// pending either.
    fn claim(&self, id: &str, new: bool) -> Result<Claim<'_>, SagaError> {
        let mut index = self.index.lock().expect("saga index poisoned");
        let refuse = |reason: &str| SagaError::Id {
            id: id.to_owned(),
            reason: reason.to_owned(),
        };
        if index.in_flight.contains(id) {
            return Err(refuse("a saga with this id is running"));
        }
        if new {
            if index.pending.contains_key(id) {
                return Err(refuse("a saga with this id is pending"));
            }
            if index.pending.len() >= SAGAS_PENDING_MAX {
                let pending = index.pending.len();
                return Err(SagaError::TooManyPending { pending });
            }
        }
        index.in_flight.insert(id.to_owned());
        Ok(Claim {
            index: &self.index,
            id: id.to_owned(),
        })
    }

    async fn scan(&self) -> Result<ScanReport, SagaError> {
        self.check_running()?;
        let idle: Vec<String> = {
            let index = self.index.lock().expect("saga index poisoned");
            let mut ids: Vec<String> = index
                .pending
                .keys()
                .filter(|id| !index.in_flight.contains(*id))
                .cloned()
                .collect();
            ids.sort();
            ids
        };
        let mut report = ScanReport::default();
        for id in idle {
            if self.stop.load(Ordering::Acquire) {
                break;
            }
            let Ok(claim) = self.claim(&id, false) else {
                continue; // a run took it meanwhile
            };
            let progress = {
                let index = self.index.lock().expect("saga index poisoned");
                index.pending.get(&id).cloned()
            };
            let Some(progress) = progress else {
                continue; // it ended meanwhile
            };
            match self.recover(&claim, progress).await {
                Ok(SagaOutcome::Committed) => report.committed += 1,
                Ok(SagaOutcome::Compensated { .. }) => report.compensated += 1,
                Err(error @ SagaError::Fenced { .. }) => return Err(error),
                Err(error) => {
                    tracing::warn!(%error, saga = %id, "a pending saga could not be finished yet");
                    report.still_pending += 1;
                }
            }
        }
        Ok(report)
    }

    /// Drives a saga found pending, by the recovery policy.
    async fn recover(
        &self,
        claim: &Claim<'_>,
        mut progress: Progress,
    ) -> Result<SagaOutcome, SagaError> {
        let id = &claim.id;
        let value = progress.input.clone().ok_or_else(|| SagaError::Record {
            name: self.saga.name.clone(),
            saga: id.clone(),
            reason: "pending without its input".into(),
        })?;
        let input: I = serde_json::from_value(value).map_err(|source| SagaError::Codec {
            saga: id.clone(),
            what: "the recorded input",
            source,
        })?;
        if self.config.recovery == Recovery::Compensate && progress.failed.is_none() {
            let step = progress.undo.len();
            let cause = format!(
                "abandoned at step {step} ({}): left pending (a crash, or its run was dropped) \
                 and recovered by compensation",
                self.saga.steps[step].0
            );
            let kinds = failure(step, cause, progress.undo.len());
            self.record(id, &mut progress, kinds, Vec::new()).await?;
        }
        self.drive(claim, Arc::new(input), progress).await
    }

    /// Takes a saga from `progress` to its end.
    async fn drive(
        &self,
        claim: &Claim<'_>,
        input: Arc<I>,
        mut progress: Progress,
    ) -> Result<SagaOutcome, SagaError> {
        let id = &claim.id;
        let steps = self.saga.steps.len();
        loop {
            match progress.next(steps) {
                Next::Done(End::Committed) => return Ok(SagaOutcome::Committed),
                Next::Done(End::Compensated) => {
                    let (failed_step, cause) = progress.failed.clone().expect("a failed saga");
                    return Ok(SagaOutcome::Compensated {
                        failed_step,
                        cause,
                        compensated: progress.compensated_steps(),
                    });
                }
                Next::Run(step) => self.run_step(id, &input, &mut progress, step).await?,
                Next::Compensate(step) => {
                    self.compensate_step(id, &input, &mut progress, step)
                        .await?;
                }
                Next::Commit => {
                    self.record(id, &mut progress, vec![Kind::Commit], Vec::new())
                        .await?;
                }
                Next::Finish => {
                    self.record(id, &mut progress, vec![Kind::Compensated], Vec::new())
                        .await?;
                }
            }
        }
    }

    async fn run_step(
        &self,
        id: &str,
        input: &Arc<I>,
        progress: &mut Progress,
        step: usize,
    ) -> Result<(), SagaError> {
        let (name, erased) = &self.saga.steps[step];
        let attempt = |context| erased.action(Arc::clone(input), context);
        match self.attempts(id, step, attempt).await {
            Ok((undo, effect)) => {
                let mut kinds = vec![Kind::PreCommit {
                    step,
                    step_name: name.to_string(),
                    undo,
                    input: (step == 0).then(|| progress.input.clone()).flatten(),
                }];
                if step + 1 == self.saga.steps.len() {
                    kinds.push(Kind::Commit);
                }
                self.record(id, progress, kinds, effect).await
            }
            Err(cause) => {
                let cause = format!("step {step} ({name}) not confirmed: {cause}");
                let kinds = failure(step, cause, progress.undo.len());
                self.record(id, progress, kinds, Vec::new()).await
            }
        }
    }

    async fn compensate_step(
        &self,
        id: &str,
        input: &Arc<I>,
        progress: &mut Progress,
        step: usize,
    ) -> Result<(), SagaError> {
        let (name, erased) = &self.saga.steps[step];
        let undo = progress.undo[step].clone();
        let attempt = |context| erased.compensate(Arc::clone(input), undo.clone(), context);
        match self.attempts(id, step, attempt).await {
            Ok(effect) => {
                let mut kinds = vec![Kind::Compensate {
                    step,
                    step_name: name.to_string(),
                }];
                if step == 0 {
                    kinds.push(Kind::Compensated);
                }
                self.record(id, progress, kinds, effect).await
            }
            Err(cause) => Err(SagaError::Compensation {
                saga: id.to_owned(),
                step,
                step_name: name.to_string(),
                cause,
            }),
        }
    }

    /// Runs `attempt` until it succeeds, its retries run out or the step
    /// times out; returns its output or the cause of the failure.
    async fn attempts<'a, T>(
        &'a self,
        id: &str,
        step: usize,
        attempt: impl Fn(StepContext) -> BoxFuture<'a, Result<T, HandlerError>>,
    ) -> Result<T, String> {
        let clock = Arc::clone(self.bus.clock());
        let timeout = self.config.step_timeout;
        let deadline = clock.monotonic().saturating_add(timeout);
        let attempts_max = self.config.retry.attempts_max();
        let mut last = String::new();
        for number in 1..=attempts_max {
            let remaining = deadline.saturating_sub(clock.monotonic());
            if remaining.is_zero() {
                break;
            }
            let context = StepContext {
                saga: Arc::from(id),
                step,
                step_name: Arc::clone(&self.saga.steps[step].0),
                attempt: number,
                deadline,
                clock: Arc::clone(&clock),
            };
            let future = AssertUnwindSafe(attempt(context)).catch_unwind();
            match TypeConfig::<E>::timeout(remaining, future).await {
                Ok(Ok(Ok(output))) => return Ok(output),
                Ok(Ok(Err(error))) => last = error.to_string(),
                Ok(Err(_panic)) => last = "it panicked".to_owned(),
                Err(_elapsed) => {
                    return Err(format!("timed out after {timeout:?} ({number} attempts)"));
                }
            }
            if number < attempts_max {
                let pause = self.config.retry.backoff(number);
                let remaining = deadline.saturating_sub(clock.monotonic());
                TypeConfig::<E>::sleep(pause.min(remaining)).await;
            }
        }
        Err(format!("failed after {attempts_max} attempts: {last}"))
    }

    /// Commits `kinds` (in order) and `effect` in one transaction, then
    /// takes the records into `progress` and the index.
    async fn record(
        &self,
        id: &str,
        progress: &mut Progress,
        kinds: Vec<Kind>,
        effect: Vec<Message>,
    ) -> Result<(), SagaError> {
        let steps = self.saga.steps.len();
        // Checked on a copy first: a record that would not follow is a bug
        // here, never something to write.
        let mut next = progress.clone();
        for kind in &kinds {
            if let Err(error) = next.apply(kind, steps) {
                panic!("saga {id:?} would write a record out of order: {error}");
            }
        }
        let mut messages = Vec::with_capacity(kinds.len() + effect.len());
        for kind in kinds {
            let record = Record {
                saga: id.to_owned(),
                name: self.saga.name.clone(),
                owner: self.owner.clone(),
                kind,
            };
            let payload = serde_json::to_vec(&record).expect("a record encodes");
            messages
                .push(Message::new(SAGA_TOPIC, payload).key(Bytes::copy_from_slice(id.as_bytes())));
        }
        messages.extend(effect);
        self.commit(messages).await?;
        *progress = next;
        let mut index = self.index.lock().expect("saga index poisoned");
        if progress.end.is_some() {
            index.pending.remove(id);
        } else {
            index.pending.insert(id.to_owned(), progress.clone());
        }
        Ok(())
    }

    /// One transaction on the lane, fenced by the group's generation.
    async fn commit(&self, messages: Vec<Message>) -> Result<(), SagaError> {
        self.check_running()?;
        let mut lane = self.lane.lock().await;
        let Lane { consumer, producer } = &mut *lane;
        let mut transaction = consumer.transaction(producer);
        for message in messages {
            if let Err(error) = transaction.publish(message) {
                transaction.abort();
                return Err(error.into());
            }
        }
        match transaction.commit().await {
            Ok(_receipts) => Ok(()),
            Err(BusError::Transaction(TxnError::Commit(
                CommitError::StaleGeneration { .. } | CommitError::UnknownMember { .. },
            ))) => {
                self.fenced.store(true, Ordering::Release);
                Err(self.fenced_error())
            }
            Err(error) => Err(error.into()),
        }
    }
}

/// The records of a failure at `step` with `done` steps done: with none
/// done, the saga ends compensated at once.
fn failure(step: usize, cause: String, done: usize) -> Vec<Kind> {
    let mut kinds = vec![Kind::Failed { step, cause }];
    if done == 0 {
        kinds.push(Kind::Compensated);
    }
    kinds
}

impl<I> Saga<I> {
    /// The definition's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

//! Sagas on the embedded bus: confirmed, compensated after a failure or a
//! timeout, finished by the scanner after a compensation kept failing,
//! fencing of an old coordinator; and a model test: random scripts of
//! step outcomes with a reboot at a random step, every saga's records and
//! effects in the log checked against a model of what must happen.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use proptest::prelude::*;
use serde_json::json;
use sluice_core::bus::{Bus, Message};
use sluice_dispatch::RetryPolicy;
use sluice_dispatch::saga::{
    Done, Recovery, SAGA_TOPIC, Saga, SagaConfig, SagaError, SagaOutcome, Sagas, Step, StepContext,
};
use sluice_dispatch::worker::HandlerError;
use sluice_model::state::TopicConfig;

const LEDGER: &str = "ledger";

async fn bounded<T>(test: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), test)
        .await
        .expect("the test took longer than 60 s")
}

/// What a step's action does, attempt by attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Act {
    Ok,
    /// Fails this many attempts, then succeeds.
    FailFirst(u32),
    Fail,
    Hang,
}

/// Where the first run of a saga crashes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Crash {
    None,
    /// As step `k`'s action runs.
    InAction(usize),
    /// As step `k`'s compensation runs.
    InCompensation(usize),
}

#[derive(Debug)]
struct Script {
    acts: Vec<Act>,
    /// Failed calls of each compensation (across runs and reboots) before
    /// it succeeds.
    undo_failures: Vec<u32>,
    crash: Crash,
    /// 1 on the first run; the crash happens only then.
    incarnation: AtomicU32,
    crashed: tokio::sync::Notify,
    /// Attempts per (step, "do" | "undo"), across incarnations.
    calls: Mutex<HashMap<(usize, &'static str), u32>>,
}

impl Script {
    fn new(acts: Vec<Act>, undo_failures: Vec<u32>, crash: Crash) -> Arc<Script> {
        assert_eq!(acts.len(), undo_failures.len());
        Arc::new(Script {
            acts,
            undo_failures,
            crash,
            incarnation: AtomicU32::new(1),
            crashed: tokio::sync::Notify::new(),
            calls: Mutex::default(),
        })
    }

    fn count(&self, step: usize, op: &'static str) -> u32 {
        let mut calls = self.calls.lock().unwrap();
        let count = calls.entry((step, op)).or_default();
        *count += 1;
        *count
    }

    /// Crashes here if this is the first run and the crash point.
    async fn maybe_crash(&self, here: Crash) {
        if self.crash == here && self.incarnation.load(Ordering::SeqCst) == 1 {
            self.crashed.notify_one();
            std::future::pending::<()>().await;
        }
    }

    fn definition(self: &Arc<Script>) -> Saga<Order> {
        let mut saga = Saga::new("checkout");
        for step in 0..self.acts.len() {
            let scripted = Scripted {
                step,
                script: Arc::clone(self),
            };
            saga = saga.step(&format!("step-{step}"), scripted);
        }
        saga
    }
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct Order {
    id: String,
    cents: u64,
}

struct Scripted {
    step: usize,
    script: Arc<Script>,
}

fn ledger(context: &StepContext, op: &str) -> Message {
    let body = json!({"saga": context.saga(), "step": context.step(), "op": op});
    Message::new(LEDGER, Bytes::from(body.to_string())).key(Bytes::from(context.saga().to_owned()))
}

impl Step<Order> for Scripted {
    type Undo = u64;

    async fn action(
        &self,
        order: Arc<Order>,
        context: StepContext,
    ) -> Result<Done<u64>, HandlerError> {
        assert_eq!(context.saga(), order.id);
        assert_eq!(context.step(), self.step);
        self.script.count(self.step, "do");
        self.script.maybe_crash(Crash::InAction(self.step)).await;
        match self.script.acts[self.step] {
            Act::Ok => {}
            Act::FailFirst(failures) if context.attempt() > failures => {}
            Act::FailFirst(_) | Act::Fail => {
                return Err(format!("step {} refused", self.step).into());
            }
            Act::Hang => std::future::pending::<()>().await,
        }
        let undo = order.cents + self.step as u64;
        Ok(Done::new(undo).publish(ledger(&context, "do")))
    }

    async fn compensate(
        &self,
        order: Arc<Order>,
        undo: u64,
        context: StepContext,
    ) -> Result<Vec<Message>, HandlerError> {
        assert_eq!(
            undo,
            order.cents + self.step as u64,
            "the undo value recorded"
        );
        let calls = self.script.count(self.step, "undo");
        self.script
            .maybe_crash(Crash::InCompensation(self.step))
            .await;
        if calls <= self.script.undo_failures[self.step] {
            return Err(format!("undo of step {} refused", self.step).into());
        }
        Ok(vec![ledger(&context, "undo")])
    }
}

fn config(recovery: Recovery) -> SagaConfig {
    SagaConfig {
        owner: Some("node-a".into()),
        step_timeout: Duration::from_millis(150),
        retry: RetryPolicy {
            retries_max: 3,
            backoff_first: Duration::from_millis(1),
            backoff_max: Duration::from_millis(2),
        },
        recovery,
        // Only the pass at open runs by itself; the tests scan when they
        // want to.
        scan_interval: Duration::from_secs(3600),
    }
}

async fn open_bus(dir: &std::path::Path) -> Bus {
    let bus = Bus::open(dir).await.unwrap();
    match bus.create_topic(LEDGER, 1, TopicConfig::default()).await {
        Ok(()) | Err(sluice_core::bus::BusError::State(_)) => {}
        Err(error) => panic!("{error}"),
    }
    bus
}

/// One saga's records, as (state, step) with the log index of each, and
/// its ledger events as (op, step) with theirs, in log order.
struct Logged {
    records: Vec<(String, Option<u64>, u64)>,
    effects: Vec<(String, u64, u64)>,
}

fn logged(bus: &Bus, saga: &str) -> Logged {
    let mut records = Vec::new();
    for partition in 0..4 {
        let (deliveries, _) = bus.read(SAGA_TOPIC, partition, 0, 100_000).unwrap();
        for delivery in deliveries.iter().filter(|d| d.key == saga.as_bytes()) {
            let record: serde_json::Value = serde_json::from_slice(&delivery.payload).unwrap();
            let index = log_index(bus, SAGA_TOPIC, partition, delivery.offset);
            let state = record["state"].as_str().unwrap().to_owned();
            records.push((state, record["step"].as_u64(), index));
        }
    }
    let (deliveries, _) = bus.read(LEDGER, 0, 0, 100_000).unwrap();
    let mut effects = Vec::new();
    for delivery in deliveries.iter().filter(|d| d.key == saga.as_bytes()) {
        let effect: serde_json::Value = serde_json::from_slice(&delivery.payload).unwrap();
        let index = log_index(bus, LEDGER, 0, delivery.offset);
        let op = effect["op"].as_str().unwrap().to_owned();
        effects.push((op, effect["step"].as_u64().unwrap(), index));
    }
    Logged { records, effects }
}

fn log_index(bus: &Bus, topic: &str, partition: u32, offset: u64) -> u64 {
    bus.state()
        .locate(topic, partition, offset)
        .expect("retained")
        .log_index
}

/// The records a saga must leave, as (state, step).
fn expected_records(outcome: &Expected, steps: usize) -> Vec<(String, Option<u64>)> {
    let record = |state: &str, step: Option<usize>| (state.to_owned(), step.map(|s| s as u64));
    match outcome {
        Expected::Absent => Vec::new(),
        Expected::Committed => {
            let mut out: Vec<_> = (0..steps).map(|s| record("pre_commit", Some(s))).collect();
            out.push(record("commit", None));
            out
        }
        Expected::Compensated { failed_step } => {
            let mut out: Vec<_> = (0..*failed_step)
                .map(|s| record("pre_commit", Some(s)))
                .collect();
            out.push(record("failed", Some(*failed_step)));
            out.extend(
                (0..*failed_step)
                    .rev()
                    .map(|s| record("compensate", Some(s))),
            );
            out.push(record("compensated", None));
            out
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Expected {
    /// No record at all: it failed before any step was done, by a crash.
    Absent,
    Committed,
    Compensated {
        failed_step: usize,
    },
}

/// Checks a saga's records against `expected`, and that each effect
/// committed in the same log entry as its record, once.
fn check_log(bus: &Bus, saga: &str, expected: &Expected, steps: usize) {
    let logged = logged(bus, saga);
    let states: Vec<(String, Option<u64>)> = logged
        .records
        .iter()
        .map(|(state, step, _)| (state.clone(), *step))
        .collect();
    assert_eq!(
        states,
        expected_records(expected, steps),
        "records of {saga}"
    );
    let mut with_effect: Vec<(String, u64, u64)> = Vec::new();
    for (state, step, index) in &logged.records {
        let op = match state.as_str() {
            "pre_commit" => "do",
            "compensate" => "undo",
            _ => continue,
        };
        with_effect.push((op.to_owned(), step.unwrap(), *index));
    }
    assert_eq!(
        logged.effects, with_effect,
        "each effect of {saga} once, in its record's entry"
    );
    // A confirmed saga of n steps is n entries: the last step's record,
    // its effect and `commit` share one.
    if *expected == Expected::Committed {
        let mut entries: Vec<u64> = logged.records.iter().map(|(_, _, i)| *i).collect();
        entries.dedup();
        assert_eq!(entries.len(), steps, "{saga}: one entry per step");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_commits_one_entry_per_step_with_its_effects() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let bus = open_bus(dir.path()).await;
        let script = Script::new(
            vec![Act::Ok, Act::FailFirst(2), Act::Ok],
            vec![0; 3],
            Crash::None,
        );
        let sagas = Sagas::open(&bus, script.definition(), config(Recovery::Compensate))
            .await
            .unwrap();
        let order = Order {
            id: "order-1".into(),
            cents: 500,
        };
        let outcome = sagas.run("order-1", order).await.unwrap();
        assert_eq!(outcome, SagaOutcome::Committed);
        assert_eq!(script.calls.lock().unwrap()[&(1, "do")], 3, "two retries");
        check_log(&bus, "order-1", &Expected::Committed, 3);
        assert!(sagas.pending().is_empty());
        let again = sagas
            .run(
                "",
                Order {
                    id: String::new(),
                    cents: 0,
                },
            )
            .await;
        assert!(matches!(again, Err(SagaError::Id { .. })), "{again:?}");
        sagas.close().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_or_late_step_compensates_the_steps_done_in_reverse() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let bus = open_bus(dir.path()).await;
        for (id, act) in [("fails", Act::Fail), ("hangs", Act::Hang)] {
            let script = Script::new(vec![Act::Ok, Act::Ok, act], vec![0, 1, 0], Crash::None);
            let sagas = Sagas::open(&bus, script.definition(), config(Recovery::Compensate))
                .await
                .unwrap();
            let order = Order {
                id: id.into(),
                cents: 7,
            };
            let outcome = sagas.run(id, order).await.unwrap();
            let SagaOutcome::Compensated {
                failed_step,
                cause,
                compensated,
            } = outcome
            else {
                panic!("{id}: {outcome:?}");
            };
            assert_eq!((failed_step, compensated), (2, vec![1, 0]), "{id}");
            let calls = script.calls.lock().unwrap().clone();
            match act {
                Act::Fail => {
                    assert!(cause.contains("failed after 4 attempts"), "{cause}");
                    assert_eq!(calls[&(2, "do")], 4, "one attempt and three retries");
                }
                _ => {
                    assert!(cause.contains("timed out"), "{cause}");
                    assert_eq!(calls[&(2, "do")], 1);
                }
            }
            assert_eq!(calls[&(1, "undo")], 2, "a retried compensation");
            assert!(
                !calls.contains_key(&(2, "undo")),
                "the failed step is not undone"
            );
            check_log(&bus, id, &Expected::Compensated { failed_step: 2 }, 3);
            sagas.close().await.unwrap();
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compensation_that_keeps_failing_is_finished_by_the_scanner() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let bus = open_bus(dir.path()).await;
        // Step 0's compensation fails its first 4 attempts: all of the
        // run's, so the saga stays pending; the scanner's pass succeeds.
        let script = Script::new(vec![Act::Ok, Act::Fail], vec![4, 0], Crash::None);
        let sagas = Sagas::open(&bus, script.definition(), config(Recovery::Compensate))
            .await
            .unwrap();
        let order = Order {
            id: "stuck".into(),
            cents: 1,
        };
        let refused = sagas.run("stuck", order.clone()).await;
        assert!(
            matches!(refused, Err(SagaError::Compensation { step: 0, .. })),
            "{refused:?}"
        );
        assert_eq!(sagas.pending(), ["stuck"]);
        let busy = sagas.run("stuck", order).await;
        assert!(matches!(busy, Err(SagaError::Id { .. })), "{busy:?}");
        let report = sagas.scan().await.unwrap();
        assert_eq!(report.compensated, 1, "{report:?}");
        assert!(sagas.pending().is_empty());
        check_log(&bus, "stuck", &Expected::Compensated { failed_step: 1 }, 2);
        sagas.close().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_coordinator_of_an_owner_fences_the_first() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let bus = open_bus(dir.path()).await;
        let script = Script::new(vec![Act::Ok, Act::Ok], vec![0, 0], Crash::None);
        let old = Sagas::open(&bus, script.definition(), config(Recovery::Resume))
            .await
            .unwrap();
        let new = Sagas::open(&bus, script.definition(), config(Recovery::Resume))
            .await
            .unwrap();
        let order = Order {
            id: "zombie".into(),
            cents: 3,
        };
        let fenced = old.run("zombie", order.clone()).await;
        assert!(
            matches!(fenced, Err(SagaError::Fenced { .. })),
            "{fenced:?}"
        );
        assert!(logged(&bus, "zombie").records.is_empty(), "nothing written");
        assert_eq!(
            new.run("zombie", order).await.unwrap(),
            SagaOutcome::Committed
        );
        new.close().await.unwrap();
    })
    .await;
}

/// The outcome a script must reach, given where the first run crashed and
/// what the scanner does afterwards.
fn model(script: &Script, recovery: Recovery) -> Expected {
    let first_failure = script.acts.iter().position(|act| match act {
        Act::Ok => false,
        Act::FailFirst(failures) => *failures > 3,
        Act::Fail | Act::Hang => true,
    });
    let without_crash = match first_failure {
        Some(failed_step) => Expected::Compensated { failed_step },
        None => Expected::Committed,
    };
    match (script.crash, recovery) {
        // Nothing was recorded: no coordinator knows of the saga.
        (Crash::InAction(0), _) => Expected::Absent,
        (Crash::InAction(step), Recovery::Compensate) => {
            Expected::Compensated { failed_step: step }
        }
        _ => without_crash,
    }
}

/// Every point a script's first run can crash at: the action of each step
/// it reaches, and each compensation it runs.
fn crash_points(acts: &[Act]) -> Vec<Crash> {
    let reached = acts
        .iter()
        .position(|act| !matches!(act, Act::Ok | Act::FailFirst(0..=3)))
        .unwrap_or(acts.len() - 1);
    let mut points = vec![Crash::None];
    points.extend((0..=reached).map(Crash::InAction));
    if reached < acts.len() && !matches!(acts[reached], Act::Ok | Act::FailFirst(0..=3)) {
        points.extend((0..reached).map(Crash::InCompensation));
    }
    points
}

fn act() -> impl Strategy<Value = Act> {
    prop_oneof![
        4 => Just(Act::Ok),
        2 => (0u32..=5).prop_map(Act::FailFirst),
        1 => Just(Act::Fail),
        1 => Just(Act::Hang),
    ]
}

/// Runs one saga by `script`, crashing (closing the bus under it) where
/// the script says, reopening and letting a new coordinator finish it.
async fn run_scripted(script: Arc<Script>, recovery: Recovery) {
    let dir = tempfile::tempdir().unwrap();
    let bus = open_bus(dir.path()).await;
    let steps = script.acts.len();
    let sagas = Sagas::open(&bus, script.definition(), config(recovery))
        .await
        .unwrap();
    let order = Order {
        id: "s".into(),
        cents: 40,
    };
    let run = sagas.run("s", order);
    let outcome = tokio::select! {
        outcome = run => Some(outcome.unwrap()),
        () = script.crashed.notified() => None,
    };
    let expected = model(&script, recovery);
    let bus = match outcome {
        Some(outcome) => {
            assert_eq!(
                script.crash,
                Crash::None,
                "ran to the end past the crash point"
            );
            let reached = match &outcome {
                SagaOutcome::Committed => Expected::Committed,
                SagaOutcome::Compensated { failed_step, .. } => Expected::Compensated {
                    failed_step: *failed_step,
                },
            };
            assert_eq!(reached, expected);
            sagas.close().await.unwrap();
            bus
        }
        None => {
            // Power off: the coordinator just stops; what it committed is
            // all that is left. Then the node starts again.
            drop(sagas);
            bus.close().await.unwrap();
            script.incarnation.store(2, Ordering::SeqCst);
            let bus = open_bus(dir.path()).await;
            let sagas = Sagas::open(&bus, script.definition(), config(recovery))
                .await
                .unwrap();
            for _ in 0..200 {
                if sagas.pending().is_empty() {
                    break;
                }
                sagas.scan().await.unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            assert!(sagas.pending().is_empty(), "the scanner finished it");
            sagas.close().await.unwrap();
            bus
        }
    };
    check_log(&bus, "s", &expected, steps);
    bus.close().await.unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn sagas_match_the_model_across_a_reboot(
        acts in proptest::collection::vec(act(), 1..=3),
        undo_failures in proptest::collection::vec(0u32..=3, 3),
        crash_choice in any::<u8>(),
        resume in any::<bool>(),
    ) {
        let points = crash_points(&acts);
        let crash = points[crash_choice as usize % points.len()];
        let undo_failures = undo_failures[..acts.len()].to_vec();
        let script = Script::new(acts, undo_failures, crash);
        let recovery = if resume { Recovery::Resume } else { Recovery::Compensate };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(bounded(run_scripted(script, recovery)));
    }
}

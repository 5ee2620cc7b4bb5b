//! The in-process dispatch core: typed subscriptions, hot swap under load,
//! back-pressure, the delivery lifecycle (deadline, cancellation), retries
//! and dead letters with replay, SLA alerts and metrics, and the registry
//! of schema versions.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sluice_core::io::ManualClock;
use sluice_dispatch::{
    Cause, Context, DispatchError, Dispatcher, DispatcherConfig, Encoded, Encoding, EventOptions,
    Publish, RegistryError, RetryPolicy, SlaAlert, SlaClass, SlaConfig, State, TopicConfig,
    TypedEvent,
};
use tokio::sync::Semaphore;

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Order {
    id: String,
    seq: u64,
}

impl TypedEvent for Order {
    const TYPE_NAME: &'static str = "order.placed";
    const SCHEMA_VERSION: u32 = 1;

    fn key(&self) -> Bytes {
        Bytes::from(self.id.clone())
    }
}

/// A later schema of the same event type, with its own Rust type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct OrderV2 {
    id: String,
    seq: u64,
    currency: String,
}

impl TypedEvent for OrderV2 {
    const TYPE_NAME: &'static str = "order.placed";
    const SCHEMA_VERSION: u32 = 2;

    fn key(&self) -> Bytes {
        Bytes::from(self.id.clone())
    }
}

fn order(id: &str, seq: u64) -> Arc<Order> {
    Arc::new(Order {
        id: id.to_owned(),
        seq,
    })
}

type Log = Arc<Mutex<Vec<(String, State)>>>;

/// A config whose observer appends (business id, state) to the log.
fn observed(config: DispatcherConfig) -> (DispatcherConfig, Log) {
    let log: Log = Arc::default();
    let sink = Arc::clone(&log);
    let observer = move |t: &sluice_dispatch::Transition<'_>| {
        let id = String::from_utf8_lossy(t.business_id).into_owned();
        sink.lock().unwrap().push((id, t.state));
    };
    let config = DispatcherConfig {
        observer: Some(Arc::new(observer)),
        ..config
    };
    (config, log)
}

fn states_of(log: &Log, id: &str) -> Vec<State> {
    let log = log.lock().unwrap();
    log.iter()
        .filter(|(i, _)| i == id)
        .map(|(_, s)| *s)
        .collect()
}

fn reported(log: &Log, id: &str) -> usize {
    states_of(log, id)
        .iter()
        .filter(|s| **s == State::Reported)
        .count()
}

/// Waits (in real time, up to 10 s) until `done` holds.
async fn until(what: &str, done: impl Fn() -> bool) {
    for _ in 0..10_000 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("timed out waiting for {what}");
}

fn manual_clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(
        UNIX_EPOCH + Duration::from_secs(1_700_000_000),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_swap_under_load_loses_and_duplicates_nothing() {
    const EVENTS: u64 = 20_000;
    let config = DispatcherConfig {
        topic: TopicConfig {
            queue_capacity: 64,
            ..TopicConfig::default()
        },
        ..DispatcherConfig::default()
    };
    let dispatcher: Dispatcher = Dispatcher::new(config);
    let topic = dispatcher.topic::<Order>();
    let stable: Arc<Vec<AtomicU32>> = Arc::new((0..EVENTS).map(|_| AtomicU32::new(0)).collect());
    let swapped: Arc<Vec<AtomicU32>> = Arc::new((0..EVENTS).map(|_| AtomicU32::new(0)).collect());
    let counter = |counts: &Arc<Vec<AtomicU32>>| {
        let counts = Arc::clone(counts);
        move |event: Arc<Order>, _: Context| {
            counts[event.seq as usize].fetch_add(1, Ordering::Relaxed);
            async { Ok(()) }
        }
    };
    let stable_handle = topic.subscribe("stable", counter(&stable)).unwrap();
    let mut members = vec![topic.subscribe("swapped", counter(&swapped)).unwrap()];

    let publisher = {
        let topic = topic.clone();
        tokio::spawn(async move {
            for seq in 0..EVENTS {
                let id = format!("order-{}", seq % 97);
                assert_eq!(topic.publish(order(&id, seq)).await.unwrap(), 2);
            }
        })
    };
    // Swap members of "swapped" in and out while the publisher runs.
    let mut swaps = 0;
    while !publisher.is_finished() {
        members.push(topic.subscribe("swapped", counter(&swapped)).unwrap());
        if members.len() > 3 {
            topic.unsubscribe(members.remove(0)).await.unwrap();
        }
        swaps += 1;
        tokio::task::yield_now().await;
    }
    publisher.await.unwrap();
    for handle in members.into_iter().chain([stable_handle]) {
        topic.unsubscribe(handle).await.unwrap();
    }
    assert!(swaps > 10, "only {swaps} swaps happened during the load");
    for (group, counts) in [("stable", &stable), ("swapped", &swapped)] {
        for (seq, count) in counts.iter().enumerate() {
            let count = count.load(Ordering::Relaxed);
            assert_eq!(
                count, 1,
                "event {seq} delivered {count} times to group {group}"
            );
        }
    }
}

#[tokio::test]
async fn publish_waits_for_room_in_a_full_queue() {
    let config = DispatcherConfig {
        topic: TopicConfig {
            queue_capacity: 2,
            ..TopicConfig::default()
        },
        ..DispatcherConfig::default()
    };
    let dispatcher: Dispatcher = Dispatcher::new(config);
    let gate = Arc::new(Semaphore::new(0));
    let handled = Arc::new(AtomicU64::new(0));
    let (gate_in, handled_in) = (Arc::clone(&gate), Arc::clone(&handled));
    let handle = dispatcher
        .subscribe("g", move |_: Arc<Order>, _: Context| {
            let (gate, handled) = (Arc::clone(&gate_in), Arc::clone(&handled_in));
            async move {
                gate.acquire().await.unwrap().forget();
                handled.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        })
        .unwrap();
    // One delivery is taken by the worker (blocked in its handler) and two
    // fill the queue; the next publish must wait.
    dispatcher.publish(order("a", 0)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    dispatcher.publish(order("a", 1)).await.unwrap();
    dispatcher.publish(order("a", 2)).await.unwrap();
    let blocked =
        tokio::time::timeout(Duration::from_millis(50), dispatcher.publish(order("a", 3)));
    assert!(
        blocked.await.is_err(),
        "a publish into a full queue returned"
    );
    gate.add_permits(4);
    dispatcher.publish(order("a", 3)).await.unwrap();
    dispatcher.unsubscribe(handle).await.unwrap();
    assert_eq!(handled.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn processed_delivery_goes_through_every_state_with_its_context() {
    let (config, log) = observed(DispatcherConfig::default());
    let dispatcher: Dispatcher = Dispatcher::new(config);
    let seen = Arc::new(Mutex::new(None));
    let seen_in = Arc::clone(&seen);
    let handle = dispatcher
        .subscribe("billing", move |event: Arc<Order>, ctx: Context| {
            let traceparent = ctx.traceparent().map(str::to_owned);
            *seen_in.lock().unwrap() = Some((
                event.seq,
                ctx.group().to_owned(),
                ctx.attempt(),
                traceparent,
                ctx.class(),
            ));
            async { Ok(()) }
        })
        .unwrap();
    let options = Publish {
        class: Some(SlaClass::P0),
        deadline: None,
        traceparent: Some(Arc::from(TRACEPARENT)),
    };
    let topic = dispatcher.topic::<Order>();
    topic.publish_with(order("o-1", 7), options).await.unwrap();
    dispatcher.unsubscribe(handle).await.unwrap();
    let expected = (
        7,
        "billing".to_owned(),
        1,
        Some(TRACEPARENT.to_owned()),
        SlaClass::P0,
    );
    assert_eq!(seen.lock().unwrap().take(), Some(expected));
    let states = states_of(&log, "o-1");
    assert_eq!(
        states,
        [
            State::Created,
            State::Dispatched,
            State::Processed,
            State::Reported
        ]
    );

    let bad = Publish {
        traceparent: Some(Arc::from("not-a-trace")),
        ..Publish::default()
    };
    let refused = topic.publish_with(order("o-2", 8), bad).await;
    assert!(
        matches!(refused, Err(DispatchError::Traceparent(_))),
        "{refused:?}"
    );
}

#[tokio::test]
async fn deadline_expiry_stops_a_hung_handler() {
    let (config, log) = observed(DispatcherConfig::default());
    let dispatcher: Dispatcher = Dispatcher::new(config);
    let topic = dispatcher.topic::<Order>();
    let _handle = topic
        .subscribe("g", |_: Arc<Order>, _: Context| std::future::pending())
        .unwrap();
    let options = Publish {
        deadline: Some(Duration::from_millis(30)),
        ..Publish::default()
    };
    topic.publish_with(order("slow", 0), options).await.unwrap();
    until("the hung delivery to be reported", || {
        reported(&log, "slow") == 1
    })
    .await;
    let states = states_of(&log, "slow");
    assert_eq!(
        states,
        [
            State::Created,
            State::Dispatched,
            State::TimedOut,
            State::Reported
        ]
    );
    let letters = topic.dead_letters();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].cause, Cause::TimedOut);
    assert_eq!(letters[0].attempts, 1);
    assert!(letters[0].dead_at - letters[0].created_at >= Duration::from_millis(30));
}

#[tokio::test]
async fn deadline_passed_in_the_queue_skips_the_handler() {
    let clock = manual_clock();
    let (config, log) = observed(DispatcherConfig {
        clock: clock.clone(),
        ..DispatcherConfig::default()
    });
    let dispatcher: Dispatcher = Dispatcher::new(config);
    let gate = Arc::new(Semaphore::new(0));
    let calls = Arc::new(AtomicU32::new(0));
    let (gate_in, calls_in) = (Arc::clone(&gate), Arc::clone(&calls));
    let topic = dispatcher.topic::<Order>();
    let _handle = topic
        .subscribe("g", move |_: Arc<Order>, _: Context| {
            calls_in.fetch_add(1, Ordering::SeqCst);
            let gate = Arc::clone(&gate_in);
            async move {
                gate.acquire().await.unwrap().forget();
                Ok(())
            }
        })
        .unwrap();
    topic.publish(order("first", 0)).await.unwrap();
    until("the first delivery to start", || {
        calls.load(Ordering::SeqCst) == 1
    })
    .await;
    let options = Publish {
        deadline: Some(Duration::from_millis(10)),
        ..Publish::default()
    };
    topic.publish_with(order("late", 1), options).await.unwrap();
    clock.advance(Duration::from_millis(20));
    gate.add_permits(1);
    until("the late delivery to be reported", || {
        reported(&log, "late") == 1
    })
    .await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "the late delivery's handler ran"
    );
    assert_eq!(
        states_of(&log, "late"),
        [State::Created, State::TimedOut, State::Reported]
    );
    assert_eq!(topic.dead_letters()[0].attempts, 0);
}

#[tokio::test]
async fn cancel_by_business_id_reaches_running_and_queued_deliveries_only() {
    let (config, log) = observed(DispatcherConfig::default());
    let dispatcher: Dispatcher = Dispatcher::new(config);
    let started = Arc::new(AtomicU32::new(0));
    let started_in = Arc::clone(&started);
    let topic = dispatcher.topic::<Order>();
    let _handle = topic
        .subscribe("g", move |event: Arc<Order>, _: Context| {
            started_in.fetch_add(1, Ordering::SeqCst);
            let hang = event.seq == 0;
            async move {
                if hang {
                    std::future::pending::<()>().await;
                }
                Ok(())
            }
        })
        .unwrap();
    topic.publish(order("order-1", 0)).await.unwrap(); // runs, hangs
    until("the first delivery to start", || {
        started.load(Ordering::SeqCst) == 1
    })
    .await;
    topic.publish(order("order-1", 1)).await.unwrap(); // queued
    topic.publish(order("order-2", 2)).await.unwrap(); // queued, other id
    dispatcher.cancel("order-1");
    topic.publish(order("order-1", 3)).await.unwrap(); // after the cancel
    until("every delivery to be reported", || {
        reported(&log, "order-1") == 3 && reported(&log, "order-2") == 1
    })
    .await;
    let outcomes = |id| -> Vec<State> {
        let states = states_of(&log, id);
        states.into_iter().filter(|s| s.is_terminal()).collect()
    };
    assert_eq!(
        outcomes("order-1"),
        [State::Cancelled, State::Cancelled, State::Processed]
    );
    assert_eq!(outcomes("order-2"), [State::Processed]);
    assert_eq!(
        started.load(Ordering::SeqCst),
        3,
        "a cancelled queued delivery ran"
    );
    assert!(
        topic.dead_letters().is_empty(),
        "a cancel is not a dead letter"
    );
}

fn retrying(retries_max: u32) -> DispatcherConfig {
    DispatcherConfig {
        topic: TopicConfig {
            retry: RetryPolicy {
                retries_max,
                backoff_first: Duration::from_millis(1),
                backoff_max: Duration::from_millis(4),
            },
            ..TopicConfig::default()
        },
        ..DispatcherConfig::default()
    }
}

#[tokio::test]
async fn retries_then_dead_letter_with_its_cause() {
    let (config, log) = observed(retrying(3));
    let dispatcher: Dispatcher = Dispatcher::new(config);
    let calls = Arc::new(AtomicU32::new(0));
    let calls_in = Arc::clone(&calls);
    let topic = dispatcher.topic::<Order>();
    let _handle = topic
        .subscribe("payments", move |_: Arc<Order>, ctx: Context| {
            calls_in.fetch_add(1, Ordering::SeqCst);
            async move { Err(format!("card declined (attempt {})", ctx.attempt()).into()) }
        })
        .unwrap();
    topic.publish(order("pay-1", 0)).await.unwrap();
    until("the dead letter", || reported(&log, "pay-1") == 1).await;
    assert_eq!(calls.load(Ordering::SeqCst), 4, "1 attempt + 3 retries");
    let letters = topic.dead_letters();
    assert_eq!(letters.len(), 1);
    let letter = &letters[0];
    let error = "card declined (attempt 4)".to_owned();
    assert_eq!(letter.cause, Cause::Failed { error });
    assert_eq!(
        (letter.attempts, &*letter.group, &letter.business_id[..]),
        (4, "payments", &b"pay-1"[..])
    );
    let attempts: Vec<u32> = letter.errors.iter().map(|e| e.attempt).collect();
    assert_eq!(attempts, [1, 2, 3, 4]);
    assert!(
        letter.errors.windows(2).all(|w| w[0].at < w[1].at),
        "backoff between attempts"
    );
    assert!(letter.dead_at_wall_ms > 0);
    let states = states_of(&log, "pay-1");
    assert_eq!(
        states,
        [
            State::Created,
            State::Dispatched,
            State::Failed,
            State::Reported
        ]
    );
    let metrics = dispatcher.metrics_text();
    assert!(
        metrics.contains("sluice_dispatch_retries_total{class=\"P1\"} 3\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("sluice_dispatch_deliveries_total{class=\"P1\",outcome=\"failed\"} 1\n")
    );
    assert!(
        metrics.contains("sluice_dispatch_dead_letters{type=\"order.placed\",version=\"1\"} 1\n")
    );
}

#[tokio::test]
async fn a_panicking_handler_costs_only_its_delivery() {
    let (config, log) = observed(retrying(1));
    let dispatcher: Dispatcher = Dispatcher::new(config);
    let topic = dispatcher.topic::<Order>();
    let _handle = topic
        .subscribe("g", |event: Arc<Order>, _: Context| async move {
            assert!(event.seq != 0, "boom on seq 0");
            Ok(())
        })
        .unwrap();
    topic.publish(order("bad", 0)).await.unwrap();
    topic.publish(order("good", 1)).await.unwrap();
    until("both deliveries", || {
        reported(&log, "bad") + reported(&log, "good") == 2
    })
    .await;
    let letters = topic.dead_letters();
    let Cause::Failed { error } = &letters[0].cause else {
        panic!("{:?}", letters[0].cause)
    };
    assert!(error.contains("handler panicked: boom on seq 0"), "{error}");
    assert!(states_of(&log, "good").contains(&State::Processed));
}

#[tokio::test]
async fn replay_delivers_dead_letters_to_their_group_again() {
    let (config, log) = observed(retrying(0));
    let dispatcher: Dispatcher = Dispatcher::new(config);
    let healthy = Arc::new(AtomicU32::new(0));
    let topic = dispatcher.topic::<Order>();
    let handler = |healthy: &Arc<AtomicU32>| {
        let healthy = Arc::clone(healthy);
        move |_: Arc<Order>, _: Context| {
            let ok = healthy.load(Ordering::SeqCst) > 0;
            async move {
                if ok {
                    Ok(())
                } else {
                    Err("downstream unavailable".into())
                }
            }
        }
    };
    let _ledger = topic.subscribe("ledger", handler(&healthy)).unwrap();
    let gone = topic.subscribe("gone", handler(&healthy)).unwrap();
    topic.publish(order("r-1", 0)).await.unwrap();
    until("two dead letters", || topic.dead_letters().len() == 2).await;
    topic.unsubscribe(gone).await.unwrap();
    healthy.store(1, Ordering::SeqCst);

    let report = topic.replay().await.unwrap();
    assert_eq!((report.replayed, report.kept), (1, 1));
    until("the replayed delivery", || reported(&log, "r-1") == 3).await;
    let letters = topic.dead_letters();
    assert_eq!(letters.len(), 1, "the letter of the departed group stays");
    assert_eq!(&*letters[0].group, "gone");
    let outcomes: Vec<State> = states_of(&log, "r-1")
        .into_iter()
        .filter(|s| s.is_terminal())
        .collect();
    assert_eq!(outcomes, [State::Failed, State::Failed, State::Processed]);
}

/// A P0 dispatcher on a manual clock whose handler takes `latency`.
fn sla_run(latency: Duration) -> (Dispatcher, Arc<Mutex<Vec<SlaAlert>>>, Arc<ManualClock>) {
    let clock = manual_clock();
    let alerts: Arc<Mutex<Vec<SlaAlert>>> = Arc::default();
    let sink = Arc::clone(&alerts);
    let config = DispatcherConfig {
        clock: clock.clone(),
        sla: SlaConfig {
            window_events: 10,
            alert: Some(Arc::new(move |alert: &SlaAlert| {
                sink.lock().unwrap().push(*alert)
            })),
            ..SlaConfig::default()
        },
        topic: TopicConfig {
            class: SlaClass::P0,
            ..TopicConfig::default()
        },
        ..DispatcherConfig::default()
    };
    let dispatcher: Dispatcher = Dispatcher::new(config);
    let clock_in = Arc::clone(&clock);
    dispatcher
        .subscribe("g", move |_: Arc<Order>, _: Context| {
            clock_in.advance(latency);
            async { Ok(()) }
        })
        .unwrap();
    (dispatcher, alerts, clock)
}

/// Publishes `count` events one at a time, each after the previous one
/// was processed, so that each latency is the handler's alone (on a manual
/// clock, a queued event would also be charged its predecessors' time).
async fn publish_and_settle(dispatcher: &Dispatcher, count: u64) {
    for seq in 0..count {
        dispatcher.publish(order("sla", seq)).await.unwrap();
        let processed = seq + 1;
        let line = format!(
            "sluice_dispatch_deliveries_total{{class=\"P0\",outcome=\"processed\"}} {processed}\n"
        );
        until("the delivery", || dispatcher.metrics_text().contains(&line)).await;
    }
}

#[tokio::test]
async fn sla_alert_fires_once_when_a_class_breaks_its_budget() {
    let (dispatcher, alerts, _clock) = sla_run(Duration::from_millis(300));
    publish_and_settle(&dispatcher, 30).await;
    let alerts = alerts.lock().unwrap().clone();
    assert_eq!(
        alerts.len(),
        1,
        "edge-triggered: one alert for a long breach: {alerts:?}"
    );
    assert_eq!(alerts[0].class, SlaClass::P0);
    assert_eq!(alerts[0].budget, Duration::from_millis(200));
    assert!(
        alerts[0].p99 >= Duration::from_millis(300),
        "{:?}",
        alerts[0]
    );
    assert!(dispatcher.p99(SlaClass::P0) >= Duration::from_millis(300));
    let metrics = dispatcher.metrics_text();
    assert!(
        metrics.contains("sluice_dispatch_sla_breached{class=\"P0\"} 1\n"),
        "{metrics}"
    );
    assert!(metrics.contains("sluice_dispatch_sla_alerts_total{class=\"P0\"} 1\n"));
}

#[tokio::test]
async fn sla_alert_stays_silent_within_budget() {
    let (dispatcher, alerts, _clock) = sla_run(Duration::from_millis(150));
    publish_and_settle(&dispatcher, 50).await;
    assert!(alerts.lock().unwrap().is_empty());
    let metrics = dispatcher.metrics_text();
    assert!(
        metrics.contains("sluice_dispatch_sla_breached{class=\"P0\"} 0\n"),
        "{metrics}"
    );
    assert!(metrics.contains("sluice_dispatch_sla_budget_seconds{class=\"P0\"} 0.2\n"));
    assert!(metrics.contains("sluice_dispatch_latency_seconds_count{class=\"P0\"} 50\n"));
    assert!(metrics.contains("# TYPE sluice_dispatch_latency_seconds summary\n"));
    for line in metrics.lines().filter(|l| !l.starts_with('#')) {
        let (_, value) = line.rsplit_once(' ').expect("name and value");
        value
            .parse::<f64>()
            .unwrap_or_else(|_| panic!("bad sample line {line:?}"));
    }
}

#[tokio::test]
async fn registry_decodes_by_version_and_names_an_unknown_one() {
    let dispatcher: Dispatcher = Dispatcher::new(DispatcherConfig::default());
    let got: Arc<Mutex<Vec<String>>> = Arc::default();
    let (v1, v2) = (Arc::clone(&got), Arc::clone(&got));
    let h1 = dispatcher
        .subscribe("g", move |e: Arc<Order>, _: Context| {
            v1.lock().unwrap().push(format!("v1 {}", e.seq));
            async { Ok(()) }
        })
        .unwrap();
    let h2 = dispatcher
        .subscribe("g", move |e: Arc<OrderV2>, _: Context| {
            v2.lock()
                .unwrap()
                .push(format!("v2 {} {}", e.seq, e.currency));
            async { Ok(()) }
        })
        .unwrap();
    let json = Encoding::Json.encode(&*order("a", 1)).unwrap();
    let v2_event = OrderV2 {
        id: "b".into(),
        seq: 2,
        currency: "EUR".into(),
    };
    let postcard = Encoding::Postcard.encode(&v2_event).unwrap();
    assert!(postcard.len() < Encoding::Json.encode(&v2_event).unwrap().len());
    let encoded = |version, content_type, payload| Encoded {
        type_name: "order.placed",
        schema_version: version,
        content_type,
        payload,
        traceparent: None,
        options: Default::default(),
    };
    dispatcher
        .publish_encoded(&encoded(1, "application/json", &json))
        .await
        .unwrap();
    dispatcher
        .publish_encoded(&encoded(2, "application/x-postcard", &postcard))
        .await
        .unwrap();

    let unknown = dispatcher
        .publish_encoded(&encoded(3, "application/json", &json))
        .await;
    let Err(DispatchError::Registry(RegistryError::UnknownVersion {
        type_name,
        version,
        known,
    })) = unknown
    else {
        panic!("expected UnknownVersion, got {unknown:?}");
    };
    assert_eq!(
        (type_name.as_str(), version, known),
        ("order.placed", 3, vec![1, 2])
    );
    let mut unknown_type = encoded(1, "application/json", &json);
    unknown_type.type_name = "refund.issued";
    let refused = dispatcher.publish_encoded(&unknown_type).await;
    assert!(matches!(
        refused,
        Err(DispatchError::Registry(RegistryError::UnknownType { .. }))
    ));
    let wrong_codec = dispatcher
        .publish_encoded(&encoded(1, "text/plain", &json))
        .await;
    assert!(
        matches!(wrong_codec, Err(DispatchError::Codec(_))),
        "{wrong_codec:?}"
    );
    let again = dispatcher.register::<Order>(TopicConfig::default());
    assert!(matches!(
        again,
        Err(RegistryError::AlreadyRegistered { .. })
    ));

    dispatcher.unsubscribe(h1).await.unwrap();
    dispatcher.unsubscribe(h2).await.unwrap();
    assert_eq!(*got.lock().unwrap(), ["v1 1", "v2 2 EUR"]);
    let event = sluice_dispatch::to_event(&v2_event, "orders", Encoding::Postcard).unwrap();
    assert_eq!((event.headers.schema_version, &*event.key), (2, &b"b"[..]));
    assert_eq!(event.headers.content_type, "application/x-postcard");
}

/// An event read from the bus brings its producer's deadline and SLA
/// class (headers) to the local listeners it is bridged to.
#[tokio::test]
async fn a_bus_event_brings_its_deadline_and_class_to_local_listeners() {
    let clock = manual_clock();
    let now_ms = 1_700_000_000_000;
    let (config, log) = observed(DispatcherConfig {
        clock: clock.clone(),
        ..DispatcherConfig::default()
    });
    let dispatcher: Dispatcher = Dispatcher::new(config);
    let classes: Arc<Mutex<Vec<(String, SlaClass)>>> = Arc::default();
    let sink = Arc::clone(&classes);
    let _handle = dispatcher
        .subscribe::<Order, _>("g", move |order: Arc<Order>, context: Context| {
            sink.lock()
                .unwrap()
                .push((order.id.clone(), context.class()));
            async { Ok(()) }
        })
        .unwrap();
    for (id, deadline_ms) in [("expired", now_ms - 1), ("in-time", now_ms + 60_000)] {
        let payload = Encoding::Json.encode(&*order(id, 0)).unwrap();
        let encoded = Encoded {
            type_name: "order.placed",
            schema_version: 1,
            content_type: "application/json",
            payload: &payload,
            traceparent: None,
            options: EventOptions {
                deadline_ms: Some(deadline_ms),
                class: Some(SlaClass::P0),
            },
        };
        dispatcher.publish_encoded(&encoded).await.unwrap();
    }
    until("both deliveries to be reported", || {
        reported(&log, "expired") == 1 && reported(&log, "in-time") == 1
    })
    .await;
    assert_eq!(
        states_of(&log, "expired"),
        [State::Created, State::TimedOut, State::Reported]
    );
    assert_eq!(
        *classes.lock().unwrap(),
        [("in-time".to_owned(), SlaClass::P0)]
    );
    let letters = dispatcher.topic::<Order>().dead_letters();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].cause, Cause::TimedOut);
    assert_eq!(letters[0].class, SlaClass::P0);
}

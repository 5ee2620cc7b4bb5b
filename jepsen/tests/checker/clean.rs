use sluice_jepsen::{AnomalyClass, FinalReadOp, HistoryBuilder, OpKind, PollOp, SendOp, check};

use crate::common::{background, baseline, commit, final_read};

#[test]
fn clean_history_with_retries_rebalances_and_transactions_passes() {
    let report = baseline();
    assert!(report.valid, "{report}");
    assert_eq!(report.failures(), Vec::<AnomalyClass>::new(), "{report}");
    // Informational classes are reported without failing the history.
    assert_eq!(report.count(AnomalyClass::Recovered), 1, "{report}");
    assert_eq!(report.count(AnomalyClass::Redelivery), 2, "{report}");
    let stats = &report.stats;
    assert_eq!(
        (stats.sends.ok, stats.sends.fail, stats.sends.info),
        (10, 1, 4)
    );
    assert_eq!((stats.txns.ok, stats.txns.fail, stats.txns.info), (2, 1, 1));
    assert_eq!(stats.final_read_topics, 3);
    assert_eq!(stats.final_read_events, 15);
    assert_eq!(stats.nemesis_ops, 3);
}

#[test]
fn idempotent_retry_acknowledged_with_an_old_offset_keeps_realtime_order() {
    // "a" times out but was appended at 0; "b" is appended at 1 and
    // acknowledged; the retry of "a" is acknowledged with offset 0. That
    // ack comes after b's, but a was first invoked before b was acked.
    let mut b = HistoryBuilder::new();
    background(&mut b);
    b.call(1, OpKind::Info, SendOp::new("t", "a").producer(9, 0, 0));
    b.call(
        2,
        OpKind::Ok,
        SendOp::new("t", "b").producer(9, 0, 1).acked(0, 1),
    );
    b.call(
        3,
        OpKind::Ok,
        SendOp::new("t", "a").producer(9, 0, 0).acked(0, 0),
    );
    final_read(&mut b, 4, "t", &[(0, 0, "a"), (0, 1, "b")]);
    let report = check(&b.build());
    assert!(report.valid, "{report}");
    assert_eq!(
        report.count(AnomalyClass::Recovered),
        baseline().count(AnomalyClass::Recovered)
    );
}

#[test]
fn counts_are_exact_while_examples_are_bounded() {
    let mut b = HistoryBuilder::new();
    for offset in 0..20 {
        b.call(
            1,
            OpKind::Ok,
            SendOp::new("t", format!("v{offset}")).acked(0, offset),
        );
    }
    final_read(&mut b, 2, "t", &[]);
    let options = sluice_jepsen::CheckOptions {
        examples_per_class_max: 3,
        ..sluice_jepsen::CheckOptions::default()
    };
    let report = sluice_jepsen::check_with(&b.build(), &options);
    assert_eq!(report.count(AnomalyClass::Lost), 20);
    assert_eq!(report.examples(AnomalyClass::Lost).len(), 3);
    assert_eq!(report.examples(AnomalyClass::Lost)[0].values, ["v0"]);
}

/// Sends `count` events to "t" (two producers, two partitions), polls them
/// in a group 100 at a time, commits, and reads them all back.
fn workload(count: u64) -> sluice_jepsen::History {
    let mut b = HistoryBuilder::new();
    let mut events = Vec::new();
    for n in 0..count {
        let (partition, offset) = ((n % 2) as u32, n / 2);
        let value = format!("v{n}");
        let send = SendOp::new("t", value.clone()).producer(u64::from(partition), 0, offset);
        b.call(1, OpKind::Ok, send.acked(partition, offset));
        events.push((partition, offset, value));
    }
    for chunk in events.chunks(100) {
        let poll = PollOp::new(7, "t")
            .group("g", 1)
            .events(chunk.iter().cloned());
        b.call(2, OpKind::Ok, poll);
        let (_, last, _) = chunk[chunk.len() - 1];
        b.call(
            2,
            OpKind::Ok,
            commit(7, ("g", 1), "t", &[(0, last + 1), (1, last + 1)]),
        );
    }
    b.call(3, OpKind::Ok, FinalReadOp::new("t", events));
    b.build()
}

#[test]
fn a_large_history_is_checked() {
    // 100 000 ops. This guards against quadratic passes creeping in
    // (they would take minutes here).
    let report = check(&workload(50_000));
    assert!(report.valid, "{report}");
    assert_eq!(report.stats.final_read_events, 50_000);
}

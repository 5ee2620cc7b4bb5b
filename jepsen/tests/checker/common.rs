//! Shared helpers: payload shorthands, a clean background workload, and
//! the assertion that a planted anomaly is reported alone.

use sluice_jepsen::{
    AnomalyClass, CommitOp, FinalReadOp, HistoryBuilder, OpKind, PollOp, Report, SeekOp, SendOp,
    TxnOp, TxnOutput, check,
};

/// The process that runs the planted histories' final reads.
pub(crate) const READER: u64 = 999;

pub(crate) fn send_ok(
    b: &mut HistoryBuilder,
    process: u64,
    topic: &str,
    value: &str,
    at: (u32, u64),
) -> usize {
    b.call(
        process,
        OpKind::Ok,
        SendOp::new(topic, value).acked(at.0, at.1),
    )
}

pub(crate) fn final_read(
    b: &mut HistoryBuilder,
    process: u64,
    topic: &str,
    events: &[(u32, u64, &str)],
) {
    b.call(
        process,
        OpKind::Ok,
        FinalReadOp::new(topic, events.iter().copied()),
    );
}

pub(crate) fn poll(
    consumer: u64,
    group: Option<(&str, u64)>,
    topic: &str,
    events: &[(u32, u64, &str)],
) -> PollOp {
    let poll = PollOp::new(consumer, topic).events(events.iter().copied());
    match group {
        Some((group, generation)) => poll.group(group, generation),
        None => poll,
    }
}

pub(crate) fn commit(
    consumer: u64,
    group: (&str, u64),
    topic: &str,
    offsets: &[(u32, u64)],
) -> CommitOp {
    CommitOp {
        consumer,
        group: group.0.to_owned(),
        generation: group.1,
        topic: topic.to_owned(),
        offsets_next: offsets.iter().copied().collect(),
    }
}

pub(crate) fn seek(
    consumer: u64,
    generation: Option<u64>,
    topic: &str,
    partition: u32,
    offset: u64,
) -> SeekOp {
    SeekOp {
        consumer,
        generation,
        topic: topic.to_owned(),
        partition,
        offset,
    }
}

/// A transaction from `topics.0` to `topics.1` by consumer `who.0` of
/// group `who.1` in generation `who.2`; outputs are (input, value).
pub(crate) fn txn(
    topics: (&str, &str),
    who: (u64, &str, u64),
    inputs: &[(u32, u64, &str)],
    outputs: &[(&str, &str)],
    offsets: &[(u32, u64)],
) -> TxnOp {
    TxnOp {
        consumer: who.0,
        group: who.1.to_owned(),
        generation: who.2,
        input_topic: topics.0.to_owned(),
        inputs: inputs.iter().copied().map(Into::into).collect(),
        output_topic: topics.1.to_owned(),
        outputs: outputs
            .iter()
            .map(|(input, value)| TxnOutput {
                input: (*input).to_owned(),
                value: (*value).to_owned(),
            })
            .collect(),
        offsets_next: offsets.iter().copied().collect(),
    }
}

/// A clean workload on topics of its own ("bg", "bg-in", "bg-out"),
/// processes and consumers 1000 and up: idempotent retries, failed and
/// indeterminate sends, concurrent sends, a plain group rebalanced after a
/// crash, a groupless reader that seeks, and a transactional group whose
/// transactions abort, time out and are redone after a rebalance.
pub(crate) fn background(b: &mut HistoryBuilder) {
    background_sends(b);
    background_plain_group(b);
    background_transactions(b);
    final_read(
        b,
        1999,
        "bg",
        &[
            (0, 0, "bg-0"),
            (0, 1, "bg-1"),
            (0, 2, "bg-r"),
            (0, 3, "bg-6"),
            (0, 4, "bg-5"),
            (1, 0, "bg-3"),
            (1, 1, "bg-4"),
        ],
    );
    final_read(
        b,
        1999,
        "bg-in",
        &[
            (0, 0, "in-0"),
            (0, 1, "in-1"),
            (0, 2, "in-2"),
            (0, 3, "in-3"),
        ],
    );
    final_read(
        b,
        1999,
        "bg-out",
        &[
            (0, 0, "out-0"),
            (0, 1, "out-1"),
            (0, 2, "out-2"),
            (0, 3, "out-3"),
        ],
    );
}

fn background_sends(b: &mut HistoryBuilder) {
    b.call(
        1000,
        OpKind::Ok,
        SendOp::new("bg", "bg-0").producer(1, 0, 0).acked(0, 0),
    );
    // A timeout, then an idempotent retry under a new process id.
    b.call(
        1000,
        OpKind::Info,
        SendOp::new("bg", "bg-1").producer(1, 0, 1),
    );
    b.nemesis("partition n1 | n2 n3");
    b.call(
        1001,
        OpKind::Ok,
        SendOp::new("bg", "bg-1").producer(1, 0, 1).acked(0, 1),
    );
    b.call(1002, OpKind::Fail, SendOp::new("bg", "bg-x"));
    // Indeterminate, and it did take effect: recovered.
    b.call(1002, OpKind::Info, SendOp::new("bg", "bg-r"));
    b.nemesis("heal");
    b.call(
        1003,
        OpKind::Ok,
        SendOp::new("bg", "bg-3").producer(2, 0, 0).acked(1, 0),
    );
    b.call(
        1003,
        OpKind::Ok,
        SendOp::new("bg", "bg-4").producer(2, 0, 1).acked(1, 1),
    );
    // Concurrent sends may be ordered either way.
    b.invoke(1004, SendOp::new("bg", "bg-5"));
    b.invoke(1005, SendOp::new("bg", "bg-6"));
    b.ok(1005, SendOp::new("bg", "bg-6").acked(0, 3));
    b.ok(1004, SendOp::new("bg", "bg-5").acked(0, 4));
    // Indeterminate and never applied; and one still in flight at the end.
    b.call(1006, OpKind::Info, SendOp::new("bg", "bg-7"));
    b.invoke(1007, SendOp::new("bg", "bg-8"));
    for (offset, value) in ["in-0", "in-1", "in-2", "in-3"].into_iter().enumerate() {
        send_ok(b, 1010, "bg-in", value, (0, offset as u64));
    }
}

fn background_plain_group(b: &mut HistoryBuilder) {
    let group = "bg-g";
    b.call(
        1100,
        OpKind::Ok,
        poll(
            1100,
            Some((group, 1)),
            "bg",
            &[(0, 0, "bg-0"), (0, 1, "bg-1")],
        ),
    );
    b.call(1100, OpKind::Ok, commit(1100, (group, 1), "bg", &[(0, 2)]));
    b.call(
        1100,
        OpKind::Ok,
        poll(
            1100,
            Some((group, 1)),
            "bg",
            &[(0, 2, "bg-r"), (0, 3, "bg-6")],
        ),
    );
    // Consumer 1100 dies before committing; 1101 takes over from offset 2.
    b.nemesis("kill consumer 1100");
    b.call(
        1101,
        OpKind::Ok,
        poll(
            1101,
            Some((group, 2)),
            "bg",
            &[(0, 2, "bg-r"), (0, 3, "bg-6"), (0, 4, "bg-5")],
        ),
    );
    b.call(
        1101,
        OpKind::Fail,
        commit(1100, (group, 1), "bg", &[(0, 4)]),
    );
    b.call(1101, OpKind::Ok, commit(1101, (group, 2), "bg", &[(0, 5)]));
    b.call(
        1101,
        OpKind::Ok,
        poll(
            1101,
            Some((group, 2)),
            "bg",
            &[(1, 0, "bg-3"), (1, 1, "bg-4")],
        ),
    );
    b.call(1101, OpKind::Ok, commit(1101, (group, 2), "bg", &[(1, 2)]));
    // A groupless reader that rewinds with a seek.
    b.call(
        1102,
        OpKind::Ok,
        poll(
            1102,
            None,
            "bg",
            &[(0, 0, "bg-0"), (0, 1, "bg-1"), (0, 2, "bg-r")],
        ),
    );
    b.call(1102, OpKind::Ok, seek(1102, None, "bg", 0, 1));
    b.call(
        1102,
        OpKind::Ok,
        poll(
            1102,
            None,
            "bg",
            &[(0, 1, "bg-1"), (0, 2, "bg-r"), (0, 3, "bg-6")],
        ),
    );
}

fn background_transactions(b: &mut HistoryBuilder) {
    let topics = ("bg-in", "bg-out");
    let group = "bg-tx";
    b.call(
        1200,
        OpKind::Ok,
        poll(
            1200,
            Some((group, 1)),
            "bg-in",
            &[(0, 0, "in-0"), (0, 1, "in-1")],
        ),
    );
    let both = txn(
        topics,
        (1200, group, 1),
        &[(0, 0, "in-0"), (0, 1, "in-1")],
        &[("in-0", "out-0"), ("in-1", "out-1")],
        &[(0, 2)],
    );
    b.call(1200, OpKind::Ok, both);
    b.call(
        1200,
        OpKind::Ok,
        poll(1200, Some((group, 1)), "bg-in", &[(0, 2, "in-2")]),
    );
    let third = txn(
        topics,
        (1200, group, 1),
        &[(0, 2, "in-2")],
        &[("in-2", "out-2")],
        &[(0, 3)],
    );
    b.call(1200, OpKind::Info, third);
    // Rebalance: 1201 resumes from the committed offset 2; its first try
    // aborts, it seeks back and redoes the work.
    b.call(
        1201,
        OpKind::Ok,
        poll(1201, Some((group, 2)), "bg-in", &[(0, 2, "in-2")]),
    );
    let aborted = txn(
        topics,
        (1201, group, 2),
        &[(0, 2, "in-2")],
        &[("in-2", "out-2")],
        &[(0, 3)],
    );
    b.call(1201, OpKind::Fail, aborted);
    b.call(1201, OpKind::Ok, seek(1201, Some(2), "bg-in", 0, 2));
    b.call(
        1201,
        OpKind::Ok,
        poll(
            1201,
            Some((group, 2)),
            "bg-in",
            &[(0, 2, "in-2"), (0, 3, "in-3")],
        ),
    );
    let redo = txn(
        topics,
        (1201, group, 2),
        &[(0, 2, "in-2"), (0, 3, "in-3")],
        &[("in-2", "out-2"), ("in-3", "out-3")],
        &[(0, 4)],
    );
    b.call(1201, OpKind::Ok, redo);
}

/// The report of the background alone.
pub(crate) fn baseline() -> Report {
    let mut b = HistoryBuilder::new();
    background(&mut b);
    check(&b.build())
}

/// Builds the background plus `plant`, checks it, and asserts that each
/// class's count is the baseline's plus what `expected` lists: the planted
/// anomaly is reported and nothing unrelated is.
pub(crate) fn assert_planted(
    plant: impl FnOnce(&mut HistoryBuilder),
    expected: &[(AnomalyClass, u64)],
) -> Report {
    let base = baseline();
    let mut b = HistoryBuilder::new();
    background(&mut b);
    plant(&mut b);
    let report = check(&b.build());
    for class in AnomalyClass::ALL {
        let planted = expected
            .iter()
            .filter(|(c, _)| *c == class)
            .map(|(_, n)| n)
            .sum::<u64>();
        assert_eq!(
            report.count(class),
            base.count(class) + planted,
            "class {class}: expected {planted} over the baseline\n{report}"
        );
    }
    for (class, _) in expected {
        assert!(
            !report.examples(*class).is_empty(),
            "no example for {class}\n{report}"
        );
    }
    let failed = expected
        .iter()
        .any(|(class, n)| class.is_failure() && *n > 0);
    assert_eq!(report.valid, !failed, "{report}");
    report
}

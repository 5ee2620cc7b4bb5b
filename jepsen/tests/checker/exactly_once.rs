//! Planted anomalies on the transactional path.

use sluice_jepsen::AnomalyClass::*;
use sluice_jepsen::{HistoryBuilder, OpKind};

use crate::common::{READER, assert_planted, final_read, poll, send_ok, txn};

const TOPICS: (&str, &str) = ("in", "out");

/// Inputs "i0", "i1", "i2" at offsets 0..3 of topic "in".
fn inputs(b: &mut HistoryBuilder) {
    for (offset, value) in ["i0", "i1", "i2"].into_iter().enumerate() {
        send_ok(b, 1, "in", value, (0, offset as u64));
    }
}

const INPUTS: [(u32, u64, &str); 3] = [(0, 0, "i0"), (0, 1, "i1"), (0, 2, "i2")];

#[test]
fn aborted_transaction_output_read_is_g1a() {
    let report = assert_planted(
        |b| {
            inputs(b);
            b.call(60, OpKind::Ok, poll(60, Some(("g", 1)), "in", &INPUTS[..1]));
            let t = txn(
                TOPICS,
                (60, "g", 1),
                &INPUTS[..1],
                &[("i0", "o0")],
                &[(0, 1)],
            );
            b.call(60, OpKind::Fail, t);
            b.call(61, OpKind::Ok, poll(61, None, "out", &[(0, 0, "o0")]));
            final_read(b, READER, "in", &INPUTS);
            final_read(b, READER, "out", &[(0, 0, "o0")]);
        },
        &[(G1a, 1)],
    );
    assert_eq!(report.examples(G1a)[0].values, ["o0"]);
}

#[test]
fn committed_input_without_its_output_breaks_exactly_once() {
    let report = assert_planted(
        |b| {
            inputs(b);
            b.call(60, OpKind::Ok, poll(60, Some(("g", 1)), "in", &INPUTS[..2]));
            // The first transaction times out and did not apply; the next
            // one commits past its input anyway.
            let first = txn(
                TOPICS,
                (60, "g", 1),
                &INPUTS[..1],
                &[("i0", "o0")],
                &[(0, 1)],
            );
            b.call(60, OpKind::Info, first);
            let second = txn(
                TOPICS,
                (60, "g", 1),
                &INPUTS[1..2],
                &[("i1", "o1")],
                &[(0, 2)],
            );
            b.call(61, OpKind::Ok, second);
            final_read(b, READER, "in", &INPUTS);
            final_read(b, READER, "out", &[(0, 0, "o1")]);
        },
        &[(ExactlyOnceViolation, 1)],
    );
    let example = &report.examples(ExactlyOnceViolation)[0];
    assert_eq!(example.offsets, [0]);
    assert_eq!(example.values, ["i0"]);
}

#[test]
fn committed_input_no_transaction_took_breaks_exactly_once() {
    let report = assert_planted(
        |b| {
            inputs(b);
            let first = txn(
                TOPICS,
                (60, "g", 1),
                &INPUTS[..1],
                &[("i0", "o0")],
                &[(0, 1)],
            );
            b.call(60, OpKind::Ok, first);
            let third = txn(
                TOPICS,
                (60, "g", 1),
                &INPUTS[2..],
                &[("i2", "o2")],
                &[(0, 3)],
            );
            b.call(60, OpKind::Ok, third);
            final_read(b, READER, "in", &INPUTS);
            final_read(b, READER, "out", &[(0, 0, "o0"), (0, 1, "o2")]);
        },
        &[(ExactlyOnceViolation, 1)],
    );
    assert_eq!(report.examples(ExactlyOnceViolation)[0].values, ["i1"]);
}

#[test]
fn output_published_twice_breaks_exactly_once_and_duplicates() {
    assert_planted(
        |b| {
            inputs(b);
            // A zombie's transaction was not fenced: both applied.
            let once = txn(
                TOPICS,
                (60, "g", 1),
                &INPUTS[..1],
                &[("i0", "o0")],
                &[(0, 1)],
            );
            b.call(60, OpKind::Ok, once.clone());
            b.call(61, OpKind::Ok, once);
            final_read(b, READER, "in", &INPUTS);
            final_read(b, READER, "out", &[(0, 0, "o0"), (0, 1, "o0")]);
        },
        &[(ExactlyOnceViolation, 1), (Duplicated, 1)],
    );
}

#[test]
fn outputs_of_two_attempts_both_present_break_exactly_once() {
    // Attempts tag their outputs, so no value is duplicated, yet the input
    // was processed twice.
    assert_planted(
        |b| {
            inputs(b);
            let first = txn(
                TOPICS,
                (60, "g", 1),
                &INPUTS[..1],
                &[("i0", "o0#1")],
                &[(0, 1)],
            );
            b.call(60, OpKind::Info, first);
            let second = txn(
                TOPICS,
                (61, "g", 2),
                &INPUTS[..1],
                &[("i0", "o0#2")],
                &[(0, 1)],
            );
            b.call(61, OpKind::Ok, second);
            final_read(b, READER, "in", &INPUTS);
            final_read(b, READER, "out", &[(0, 0, "o0#1"), (0, 1, "o0#2")]);
        },
        &[(ExactlyOnceViolation, 1), (Recovered, 1)],
    );
}

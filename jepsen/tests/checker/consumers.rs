//! Planted anomalies on the consumer side.

use sluice_jepsen::AnomalyClass::*;
use sluice_jepsen::{HistoryBuilder, OpKind};

use crate::common::{READER, assert_planted, commit, final_read, poll, seek, send_ok};

/// Three events "a", "b", "c" at offsets 0..3 of topic "t", read in full.
fn three_events(b: &mut HistoryBuilder) {
    send_ok(b, 1, "t", "a", (0, 0));
    send_ok(b, 1, "t", "b", (0, 1));
    send_ok(b, 1, "t", "c", (0, 2));
}

const ABC: [(u32, u64, &str); 3] = [(0, 0, "a"), (0, 1, "b"), (0, 2, "c")];

#[test]
fn poll_going_backwards_is_reported() {
    let report = assert_planted(
        |b| {
            three_events(b);
            b.call(50, OpKind::Ok, poll(50, None, "t", &ABC[..2]));
            b.call(50, OpKind::Ok, poll(50, None, "t", &ABC[..1]));
            final_read(b, READER, "t", &ABC);
        },
        &[(NonmonotonicPoll, 1)],
    );
    assert_eq!(report.examples(NonmonotonicPoll)[0].offsets, [2, 0]);
}

#[test]
fn rebalance_allows_a_poll_to_go_back() {
    assert_planted(
        |b| {
            three_events(b);
            b.call(50, OpKind::Ok, poll(50, Some(("g", 1)), "t", &ABC[..2]));
            b.call(50, OpKind::Ok, poll(50, Some(("g", 2)), "t", &ABC));
            b.call(50, OpKind::Ok, commit(50, ("g", 2), "t", &[(0, 3)]));
            final_read(b, READER, "t", &ABC);
        },
        &[(Redelivery, 2)],
    );
}

#[test]
fn poll_skipping_an_offset_is_reported() {
    let report = assert_planted(
        |b| {
            three_events(b);
            b.call(50, OpKind::Ok, poll(50, None, "t", &ABC[..1]));
            b.call(50, OpKind::Ok, poll(50, None, "t", &ABC[2..]));
            final_read(b, READER, "t", &ABC);
        },
        &[(PollSkip, 1)],
    );
    assert_eq!(report.examples(PollSkip)[0].offsets, [1, 2]);
}

#[test]
fn seek_allows_a_poll_to_skip_ahead() {
    assert_planted(
        |b| {
            three_events(b);
            b.call(50, OpKind::Ok, poll(50, None, "t", &ABC[..1]));
            b.call(50, OpKind::Ok, seek(50, None, "t", 0, 2));
            b.call(50, OpKind::Ok, poll(50, None, "t", &ABC[2..]));
            final_read(b, READER, "t", &ABC);
        },
        &[],
    );
}

#[test]
fn redelivery_after_a_crash_is_informational() {
    let report = assert_planted(
        |b| {
            three_events(b);
            b.call(70, OpKind::Ok, poll(70, Some(("pg", 1)), "t", &ABC[..2]));
            // Consumer 70 dies before committing; 71 starts over.
            b.call(71, OpKind::Ok, poll(71, Some(("pg", 2)), "t", &ABC));
            b.call(71, OpKind::Ok, commit(71, ("pg", 2), "t", &[(0, 3)]));
            final_read(b, READER, "t", &ABC);
        },
        &[(Redelivery, 2)],
    );
    assert!(report.valid);
}

#[test]
fn committed_but_undelivered_events_are_reported() {
    let report = assert_planted(
        |b| {
            three_events(b);
            b.call(72, OpKind::Ok, poll(72, Some(("pg", 1)), "t", &ABC[..1]));
            b.call(72, OpKind::Ok, commit(72, ("pg", 1), "t", &[(0, 3)]));
            final_read(b, READER, "t", &ABC);
        },
        &[(Undelivered, 2)],
    );
    assert_eq!(report.examples(Undelivered)[0].offsets, [1]);
}

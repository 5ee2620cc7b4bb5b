//! Planted ordering anomalies on the send side.

use sluice_jepsen::AnomalyClass::*;
use sluice_jepsen::SendOp;

use crate::common::{READER, assert_planted, final_read, send_ok};

#[test]
fn producer_events_out_of_sequence_order_are_reported() {
    let report = assert_planted(
        |b| {
            // Concurrent, so real time allows either order; sequence does not.
            b.invoke(1, SendOp::new("t", "a").producer(7, 0, 0));
            b.invoke(2, SendOp::new("t", "b").producer(7, 0, 1));
            b.ok(2, SendOp::new("t", "b").producer(7, 0, 1).acked(0, 0));
            b.ok(1, SendOp::new("t", "a").producer(7, 0, 0).acked(0, 1));
            final_read(b, READER, "t", &[(0, 0, "b"), (0, 1, "a")]);
        },
        &[(NonmonotonicSend, 1)],
    );
    assert_eq!(report.examples(NonmonotonicSend)[0].values, ["a", "b"]);
}

#[test]
fn acknowledgement_order_against_real_time_is_reported() {
    let report = assert_planted(
        |b| {
            send_ok(b, 1, "t", "a", (0, 1));
            send_ok(b, 2, "t", "b", (0, 0));
            final_read(b, READER, "t", &[(0, 0, "b"), (0, 1, "a")]);
        },
        &[(RealtimeOrder, 1)],
    );
    assert_eq!(report.examples(RealtimeOrder)[0].offsets, [1, 0]);
}

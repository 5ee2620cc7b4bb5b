//! Planted anomalies about what the log holds.

use sluice_jepsen::AnomalyClass::*;
use sluice_jepsen::{CheckOptions, HistoryBuilder, OpKind, Retention, SendOp, check, check_with};

use crate::common::{READER, assert_planted, final_read, send_ok};

#[test]
fn lost_acknowledged_send_is_reported() {
    let report = assert_planted(
        |b| {
            send_ok(b, 1, "t", "a", (0, 0));
            send_ok(b, 1, "t", "b", (0, 1));
            final_read(b, READER, "t", &[(0, 0, "a")]);
        },
        &[(Lost, 1)],
    );
    let example = &report.examples(Lost)[0];
    assert_eq!(example.values, ["b"]);
    assert_eq!(
        (example.topic.as_deref(), example.partition),
        (Some("t"), Some(0))
    );
    assert_eq!(example.offsets, [1]);
}

#[test]
fn duplicated_value_in_the_log_is_reported() {
    let report = assert_planted(
        |b| {
            send_ok(b, 1, "t", "a", (0, 0));
            send_ok(b, 1, "t", "b", (0, 1));
            final_read(b, READER, "t", &[(0, 0, "a"), (0, 1, "b"), (0, 2, "a")]);
        },
        &[(Duplicated, 1)],
    );
    assert_eq!(report.examples(Duplicated)[0].offsets, [0, 2]);
}

#[test]
fn unexpected_value_is_reported() {
    let report = assert_planted(
        |b| {
            send_ok(b, 1, "t", "a", (0, 0));
            final_read(b, READER, "t", &[(0, 0, "a"), (0, 1, "ghost")]);
        },
        &[(Unexpected, 1)],
    );
    assert_eq!(report.examples(Unexpected)[0].values, ["ghost"]);
}

#[test]
fn recovered_indeterminate_send_is_informational() {
    let report = assert_planted(
        |b| {
            b.call(1, OpKind::Info, SendOp::new("t", "a"));
            send_ok(b, 2, "t", "b", (0, 1));
            final_read(b, READER, "t", &[(0, 0, "a"), (0, 1, "b")]);
        },
        &[(Recovered, 1)],
    );
    assert!(report.valid);
}

#[test]
fn definitely_failed_send_that_is_present_is_reported() {
    assert_planted(
        |b| {
            b.call(1, OpKind::Fail, SendOp::new("t", "a"));
            send_ok(b, 1, "t", "b", (0, 1));
            final_read(b, READER, "t", &[(0, 0, "a"), (0, 1, "b")]);
        },
        &[(FailedButPresent, 1)],
    );
}

#[test]
fn inconsistent_offsets_between_two_final_reads_are_reported() {
    let report = assert_planted(
        |b| {
            send_ok(b, 1, "t", "a", (0, 0));
            send_ok(b, 1, "t", "b", (0, 1));
            send_ok(b, 1, "t", "c", (0, 1));
            final_read(b, READER, "t", &[(0, 0, "a"), (0, 1, "b")]);
            final_read(b, READER, "t", &[(0, 0, "a"), (0, 1, "c")]);
        },
        &[(InconsistentOffsets, 1)],
    );
    let example = &report.examples(InconsistentOffsets)[0];
    assert_eq!(example.offsets, [1]);
    assert_eq!(example.values, ["b", "c"]);
}

#[test]
fn offset_gap_in_the_final_read_is_reported() {
    let report = assert_planted(
        |b| {
            send_ok(b, 1, "t", "a", (0, 0));
            send_ok(b, 1, "t", "b", (0, 3));
            final_read(b, READER, "t", &[(0, 0, "a"), (0, 3, "b")]);
        },
        &[(OffsetGap, 1)],
    );
    assert_eq!(report.examples(OffsetGap)[0].offsets, [0, 3]);
}

#[test]
fn retention_may_drop_a_prefix_only_when_allowed() {
    let mut b = HistoryBuilder::new();
    send_ok(&mut b, 1, "t", "a", (0, 0));
    send_ok(&mut b, 1, "t", "b", (0, 1));
    send_ok(&mut b, 1, "t", "c", (0, 2));
    final_read(&mut b, READER, "t", &[(0, 1, "b"), (0, 2, "c")]);
    let history = b.build();
    // By default a missing prefix is lost data.
    let strict = check(&history);
    assert_eq!(strict.failures(), [Lost], "{strict}");
    let options = CheckOptions {
        retention: Retention::PrefixMayBeDeleted,
        ..CheckOptions::default()
    };
    let lenient = check_with(&history, &options);
    assert!(lenient.valid, "{lenient}");
}

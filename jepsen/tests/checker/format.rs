//! The history format: JSON lines, and breaches of its rules.

use std::io::BufReader;

use sluice_jepsen::AnomalyClass::*;
use sluice_jepsen::{
    AnomalyClass, FinalReadOp, History, HistoryBuilder, HistoryError, OpKind, SendOp, check,
};

use crate::common::{READER, assert_planted, background, final_read, send_ok, txn};

#[test]
fn jsonl_round_trips() {
    let mut b = HistoryBuilder::new();
    background(&mut b);
    let history = b.build();
    let mut encoded = Vec::new();
    history.to_jsonl(&mut encoded).unwrap();
    let text = String::from_utf8(encoded.clone()).unwrap();
    assert_eq!(text.lines().count(), history.ops.len());
    // Blank lines are allowed and skipped.
    let spaced = text.replacen('\n', "\n\n", 1);
    let decoded = History::from_jsonl(BufReader::new(spaced.as_bytes())).unwrap();
    assert_eq!(decoded, history);
}

#[test]
fn malformed_jsonl_names_the_line() {
    let text = concat!(
        r#"{"process":1,"kind":"invoke","time_ns":1,"f":{"send":{"topic":"t","value":"a"}}}"#,
        "\n",
        r#"{"process":1,"kind":"ok","time_ns":2,"f":{"send":{"topic":"t","value":"a","partition":0,"offset":0}}}"#,
        "\n",
        r#"{"process":1,"kind":"okay","time_ns":3,"f":{"send":{"topic":"t","value":"b"}}}"#,
        "\n",
    );
    let error = History::from_jsonl(text.as_bytes()).unwrap_err();
    assert!(
        matches!(error, HistoryError::Parse { line: 3, .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains("history line 3"), "{error}");
    // A misspelt field is refused, not silently dropped.
    let typo =
        r#"{"process":1,"kind":"ok","time_ns":2,"f":{"send":{"topic":"t","value":"a","ofset":0}}}"#;
    let error = History::from_jsonl(typo.as_bytes()).unwrap_err();
    assert!(
        matches!(error, HistoryError::Parse { line: 1, .. }),
        "{error:?}"
    );
}

#[test]
fn report_serializes_every_class_with_its_count() {
    let mut b = HistoryBuilder::new();
    send_ok(&mut b, 1, "t", "a", (0, 0));
    final_read(&mut b, READER, "t", &[]);
    let report = check(&b.build());
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["valid"], false);
    assert_eq!(json["classes"]["lost"]["count"], 1);
    assert_eq!(json["classes"]["lost"]["severity"], "failure");
    assert_eq!(json["classes"]["G1a"]["count"], 0);
    assert_eq!(json["classes"]["redelivery"]["severity"], "informational");
    assert_eq!(
        json["classes"].as_object().unwrap().len(),
        AnomalyClass::ALL.len()
    );
    let text = report.to_string();
    assert!(text.contains("result: INVALID (lost)"), "{text}");
    assert!(text.contains("\"a\""), "{text}");
}

#[test]
fn completion_without_invocation_is_malformed() {
    assert_planted(
        |b| {
            b.ok(1, SendOp::new("t", "a").acked(0, 0));
        },
        &[(Malformed, 1)],
    );
}

#[test]
fn acknowledged_topic_without_final_read_is_malformed() {
    let report = assert_planted(
        |b| {
            send_ok(b, 1, "t", "a", (0, 0));
        },
        &[(Malformed, 1)],
    );
    assert!(
        report.examples(Malformed)[0]
            .message
            .contains("no ok final read")
    );
}

#[test]
fn process_reused_after_info_is_malformed() {
    assert_planted(
        |b| {
            b.call(1, OpKind::Info, SendOp::new("t", "a"));
            send_ok(b, 1, "t", "b", (0, 0));
            final_read(b, READER, "t", &[(0, 0, "b")]);
        },
        &[(Malformed, 1)],
    );
}

#[test]
fn time_going_backwards_is_malformed() {
    let mut b = HistoryBuilder::new();
    send_ok(&mut b, 1, "t", "a", (0, 0));
    final_read(&mut b, READER, "t", &[(0, 0, "a")]);
    let mut history = b.build();
    history.ops[1].time_ns = 0;
    let report = check(&history);
    assert_eq!(report.failures(), [Malformed], "{report}");
    assert_eq!(report.count(Malformed), 1);
}

#[test]
fn completion_of_another_kind_of_op_is_malformed() {
    assert_planted(
        |b| {
            b.invoke(1, SendOp::new("t", "a"));
            b.ok(1, FinalReadOp::new("t", [(0, 0, "a")]));
        },
        &[(Malformed, 1)],
    );
}

#[test]
fn transaction_output_naming_no_input_is_malformed() {
    assert_planted(
        |b| {
            send_ok(b, 1, "in", "i0", (0, 0));
            let t = txn(
                ("in", "out"),
                (60, "g", 1),
                &[(0, 0, "i0")],
                &[("i0", "o0"), ("i9", "o9")],
                &[(0, 1)],
            );
            b.call(60, OpKind::Ok, t);
            final_read(b, READER, "in", &[(0, 0, "i0")]);
            final_read(b, READER, "out", &[(0, 0, "o0"), (0, 1, "o9")]);
        },
        &[(Malformed, 1)],
    );
}

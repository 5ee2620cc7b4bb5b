//! Rules about what the log holds: per value (lost, duplicated, unexpected,
//! recovered, failed-but-present, G1a), per position (inconsistent-offsets),
//! per partition (offset-gap), and the final reads those rules need.
//!
//! One occurrence is one value, one position, or one run of missing
//! offsets respectively.

use super::index::{Index, ValueInfo, WriteStatus};
use super::{Findings, Retention};
use crate::report::{AnomalyClass, Example};

pub(crate) fn check(index: &Index<'_>, retention: Retention, findings: &mut Findings) {
    check_final_reads_present(index, findings);
    for value in &index.values {
        check_presence(index, value, retention, findings);
        check_duplicated(index, value, findings);
    }
    check_inconsistent_offsets(index, findings);
    check_offset_gaps(index, findings);
}

/// A topic with acknowledged writes must have been read in full, or the
/// lost and exactly-once rules would pass it vacuously.
fn check_final_reads_present(index: &Index<'_>, findings: &mut Findings) {
    for (&topic, &op) in &index.final_read_needed {
        if index.has_final_read(topic) {
            continue;
        }
        findings.record(AnomalyClass::Malformed, || {
            let name = index.topic_name(topic);
            let message = format!(
                "topic {name:?} has acknowledged writes (op {op}) but no ok final read, \
                 so lost events cannot be judged"
            );
            Example::new(message).ops([op]).topic(name)
        });
    }
}

/// Lost, unexpected, recovered, failed-but-present and G1a: what a value's
/// presence means given how its writes ended.
fn check_presence(
    index: &Index<'_>,
    value: &ValueInfo<'_>,
    retention: Retention,
    findings: &mut Findings,
) {
    let name = index.topic_name(value.topic);
    let write_op = value.write.map(|(op, _)| op);
    match (value.status(), value.read_op) {
        (WriteStatus::Acknowledged, _)
            if value.final_count == 0
                && index.has_final_read(value.topic)
                && !deleted_by_retention(index, value, retention) =>
        {
            let read = index.final_read_op(value.topic);
            findings.record(AnomalyClass::Lost, || lost_example(name, value, read));
        }
        (WriteStatus::Unwritten, Some(read)) => {
            findings.record(AnomalyClass::Unexpected, || {
                let message = format!(
                    "{name}/{:?} was read (op {read}) but never sent",
                    value.value
                );
                Example::new(message)
                    .ops([read])
                    .topic(name)
                    .values([value.value])
            });
        }
        (WriteStatus::Indeterminate, Some(read)) => {
            findings.record(AnomalyClass::Recovered, || {
                let message = format!(
                    "{name}/{:?} was written by indeterminate ops only and is present (op {read})",
                    value.value
                );
                Example::new(message)
                    .ops(write_op.into_iter().chain([read]))
                    .topic(name)
                    .values([value.value])
            });
        }
        (WriteStatus::Failed, Some(read)) => {
            // A failed transaction is an abort; seeing its output is G1a.
            let (class, what) = if value.by_txn {
                (AnomalyClass::G1a, "output of an aborted transaction")
            } else {
                (
                    AnomalyClass::FailedButPresent,
                    "value of a definitely failed send",
                )
            };
            findings.record(class, || {
                let message = format!("{name}/{:?}, the {what}, was read (op {read})", value.value);
                Example::new(message)
                    .ops(write_op.into_iter().chain([read]))
                    .topic(name)
                    .values([value.value])
            });
        }
        _ => {}
    }
}

/// Whether the value's acknowledged offset lies below what its partition's
/// final read starts at, when retention may have deleted it.
fn deleted_by_retention(index: &Index<'_>, value: &ValueInfo<'_>, retention: Retention) -> bool {
    let Some(ack) = value.ack else { return false };
    match retention {
        Retention::KeepAll => false,
        Retention::PrefixMayBeDeleted => {
            let entries = index.final_partition(ack.pos.topic, ack.pos.partition);
            entries
                .first()
                .is_some_and(|(first, _)| ack.pos.offset < *first)
        }
    }
}

fn lost_example(name: &str, value: &ValueInfo<'_>, read: Option<usize>) -> Example {
    let write = value.write.map(|(op, _)| op);
    let ops = write
        .into_iter()
        .chain(value.ack.map(|ack| ack.op))
        .chain(read);
    let Some(ack) = value.ack else {
        // Transaction outputs are acknowledged by the transaction, not
        // one by one.
        let message = format!(
            "{name}/{:?} was written by an ok transaction but is absent from the final read",
            value.value
        );
        return Example::new(message)
            .ops(ops)
            .topic(name)
            .values([value.value]);
    };
    let message = format!(
        "{name}/{:?} was acknowledged at partition {} offset {} but is absent from the final read",
        value.value, ack.pos.partition, ack.pos.offset
    );
    Example::new(message)
        .ops(ops)
        .partition(name, ack.pos.partition)
        .offsets([ack.pos.offset])
        .values([value.value])
}

/// A value at two or more positions (by acks, polls or final reads) was
/// appended more than once.
fn check_duplicated(index: &Index<'_>, value: &ValueInfo<'_>, findings: &mut Findings) {
    if value.positions.len() < 2 {
        return;
    }
    findings.record(AnomalyClass::Duplicated, || {
        let name = index.topic_name(value.topic);
        let places: Vec<String> = value
            .positions
            .iter()
            .map(|(pos, op)| {
                format!(
                    "partition {} offset {} (op {op})",
                    pos.partition, pos.offset
                )
            })
            .collect();
        let message = format!("{name}/{:?} is at {}", value.value, places.join(", "));
        Example::new(message)
            .ops(value.positions.iter().map(|(_, op)| op))
            .topic(name)
            .offsets(value.positions.iter().map(|(pos, _)| pos.offset))
            .values([value.value])
    });
}

/// One position, one value: any two observations of a position agree.
fn check_inconsistent_offsets(index: &Index<'_>, findings: &mut Findings) {
    for position in index
        .positions
        .iter()
        .filter(|position| position.values.len() > 1)
    {
        findings.record(AnomalyClass::InconsistentOffsets, || {
            let pos = position.pos;
            let name = index.topic_name(pos.topic);
            let seen: Vec<String> = position
                .values
                .iter()
                .map(|(id, op)| format!("{:?} (op {op})", index.values[id].value))
                .collect();
            let message = format!(
                "{name} partition {} offset {} was seen holding {}",
                pos.partition,
                pos.offset,
                seen.join(", ")
            );
            Example::new(message)
                .ops(position.values.iter().map(|(_, op)| op))
                .partition(name, pos.partition)
                .offsets([pos.offset])
                .values(position.values.iter().map(|(id, _)| index.values[id].value))
        });
    }
}

/// Offsets are assigned densely, so a final read from the first retained
/// offset on has no holes. One occurrence is one run of missing offsets.
fn check_offset_gaps(index: &Index<'_>, findings: &mut Findings) {
    for (&(topic, partition), entries) in &index.final_log {
        for pair in entries.windows(2) {
            let (before, after) = (pair[0].0, pair[1].0);
            if after <= before + 1 {
                continue;
            }
            findings.record(AnomalyClass::OffsetGap, || {
                let name = index.topic_name(topic);
                let message = format!(
                    "final read of {name} partition {partition} jumps from offset {before} to \
                     {after}: offsets {}..={} are missing",
                    before + 1,
                    after - 1
                );
                Example::new(message)
                    .partition(name, partition)
                    .offsets([before, after])
            });
        }
    }
}

//! Order rules on acknowledged sends, per (topic, partition):
//!
//! - nonmonotonic-send (producer order): one producer's (id, epoch)
//!   acknowledged events, sorted by sequence number, have increasing
//!   offsets. One occurrence is one adjacent pair out of order.
//! - realtime-order: if send A was acknowledged before send B was invoked,
//!   A's offset is below B's. For a retried value the earliest invocation
//!   and the earliest acknowledgement count, because a retry of an event
//!   appended long ago is rightly acknowledged with its old offset. One
//!   occurrence is one send B preceded in real time by a higher offset.
//!
//! Transaction outputs carry no per-event acknowledgement, so these rules
//! see sends only.

use std::collections::BTreeMap;

use super::Findings;
use super::index::{Ack, Index, TopicId, ValueId};
use crate::report::{AnomalyClass, Example};

pub(crate) fn check(index: &Index<'_>, findings: &mut Findings) {
    check_producer_order(index, findings);
    check_realtime_order(index, findings);
}

/// (topic, producer id, epoch, partition) → (seq, offset, value).
type Runs = BTreeMap<(TopicId, u64, u64, u32), Vec<(u64, u64, ValueId)>>;

fn check_producer_order(index: &Index<'_>, findings: &mut Findings) {
    let mut runs = Runs::new();
    for (id, value) in index.values.iter().enumerate() {
        let (Some(stamp), Some(ack)) = (value.producer, value.ack) else {
            continue;
        };
        let key = (value.topic, stamp.id, stamp.epoch, ack.pos.partition);
        runs.entry(key)
            .or_default()
            .push((stamp.seq, ack.pos.offset, id));
    }
    for ((topic, producer, epoch, partition), mut run) in runs {
        run.sort_unstable();
        for pair in run.windows(2) {
            let ((seq_a, offset_a, a), (seq_b, offset_b, b)) = (pair[0], pair[1]);
            // Equal offsets are two values at one position: inconsistent-offsets.
            if seq_a == seq_b || offset_a <= offset_b {
                continue;
            }
            findings.record(AnomalyClass::NonmonotonicSend, || {
                let name = index.topic_name(topic);
                let (value_a, value_b) = (index.values[a].value, index.values[b].value);
                let message = format!(
                    "producer {producer} epoch {epoch} in {name} partition {partition}: seq \
                     {seq_a} ({value_a:?}) is at offset {offset_a} but seq {seq_b} ({value_b:?}) \
                     at offset {offset_b}"
                );
                Example::new(message)
                    .ops(ack_op(index, a).into_iter().chain(ack_op(index, b)))
                    .partition(name, partition)
                    .offsets([offset_a, offset_b])
                    .values([value_a, value_b])
            });
        }
    }
}

fn ack_op(index: &Index<'_>, id: ValueId) -> Option<usize> {
    index.values[id].ack.map(|ack| ack.op)
}

/// An acknowledged send: its value, first ack, and first invocation time.
type AckedSend = (ValueId, Ack, u64);

fn check_realtime_order(index: &Index<'_>, findings: &mut Findings) {
    let mut partitions: BTreeMap<(TopicId, u32), Vec<AckedSend>> = BTreeMap::new();
    for (id, value) in index.values.iter().enumerate() {
        let (Some(ack), Some((_, invoke_ns))) = (value.ack, value.write) else {
            continue;
        };
        partitions
            .entry((value.topic, ack.pos.partition))
            .or_default()
            .push((id, ack, invoke_ns));
    }
    for ((topic, partition), sends) in partitions {
        sweep_partition(index, topic, partition, sends, findings);
    }
}

/// Visits sends by invocation time while folding in, by acknowledgement
/// time, every send acknowledged strictly earlier; the highest offset
/// among those must be below the invoked send's offset. O(n log n).
fn sweep_partition(
    index: &Index<'_>,
    topic: TopicId,
    partition: u32,
    mut by_invoke: Vec<AckedSend>,
    findings: &mut Findings,
) {
    let mut by_ack = by_invoke.clone();
    by_ack.sort_unstable_by_key(|(id, ack, _)| (ack.time_ns, *id));
    by_invoke.sort_unstable_by_key(|(id, _, invoke_ns)| (*invoke_ns, *id));
    let mut next = 0;
    let mut highest: Option<(ValueId, Ack)> = None;
    for (b, ack_b, invoke_ns) in by_invoke {
        while next < by_ack.len() && by_ack[next].1.time_ns < invoke_ns {
            let (a, ack_a, _) = by_ack[next];
            if highest.is_none_or(|(_, top)| ack_a.pos.offset > top.pos.offset) {
                highest = Some((a, ack_a));
            }
            next += 1;
        }
        let Some((a, ack_a)) = highest else { continue };
        if ack_a.pos.offset <= ack_b.pos.offset {
            continue;
        }
        findings.record(AnomalyClass::RealtimeOrder, || {
            let name = index.topic_name(topic);
            let (value_a, value_b) = (index.values[a].value, index.values[b].value);
            let invoke_b = index.values[b].write.map(|(op, _)| op);
            let message = format!(
                "{name} partition {partition}: {value_a:?} was acknowledged at offset {} (op {}) \
                 before {value_b:?} was invoked, yet {value_b:?} got the lower offset {}",
                ack_a.pos.offset, ack_a.op, ack_b.pos.offset
            );
            Example::new(message)
                .ops([ack_a.op].into_iter().chain(invoke_b).chain([ack_b.op]))
                .partition(name, partition)
                .offsets([ack_a.pos.offset, ack_b.pos.offset])
                .values([value_a, value_b])
        });
    }
}

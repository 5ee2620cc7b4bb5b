//! Exactly-once processing on the transactional path.
//!
//! A transaction (consume-transform-produce) names its input events and,
//! for each output, the input it was computed from. Every attempt counts,
//! whatever its outcome: an `info` attempt may have committed, a `fail`
//! one must not have. For each (group, input) the checker gathers the
//! attempts' output sets and counts each output value's distinct positions
//! in the output topic's final read. The input is processed exactly once
//! when:
//!
//! - no output value is present more than once, and
//! - the outputs present are exactly one attempt's outputs, or none at all
//!   while the input is not yet covered by the group's commits.
//!
//! An input is *covered* when an `ok` transaction or commit of the group
//! committed a next offset above it. A covered input that no transaction
//! ever took as input, at or above the lowest input offset the group ever
//! processed in that partition, was skipped: also a violation.
//!
//! One occurrence is one (group, input). Outputs should be deterministic
//! (a retry recomputes the same values) or distinct per attempt; both
//! work. A duplicate output is also reported as `duplicated`, and an `ok`
//! transaction's missing output as `lost`.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::Findings;
use super::index::{Covered, GroupPartition, Index, TopicId};
use super::pairing::Outcome;
use crate::history::{Payload, TxnOp};
use crate::report::{AnomalyClass, Example};

/// One attempt's outputs for one input: sorted, distinct values.
#[derive(Debug)]
struct Attempt<'h> {
    output_topic: TopicId,
    values: Vec<&'h str>,
}

/// One input of one group, and every attempt to process it.
#[derive(Debug)]
struct Input<'h> {
    group: &'h str,
    topic: TopicId,
    value: &'h str,
    partition: u32,
    offset: u64,
    attempts: Vec<Attempt<'h>>,
    /// The invocations of those attempts.
    ops: Vec<usize>,
}

#[derive(Debug, Default)]
struct Ledger<'h> {
    ids: HashMap<(&'h str, TopicId, &'h str), usize>,
    inputs: Vec<Input<'h>>,
    /// Highest next offset committed by an ok txn or commit, and its op.
    committed: BTreeMap<GroupPartition<'h>, (u64, usize)>,
    /// Lowest input offset any attempt took.
    lowest: HashMap<GroupPartition<'h>, u64>,
}

pub(crate) fn check(index: &Index<'_>, findings: &mut Findings) {
    if index.txn_groups.is_empty() {
        return;
    }
    let ledger = Ledger::collect(index, findings);
    for input in &ledger.inputs {
        judge_attempted(index, &ledger, input, findings);
    }
    check_unattempted(index, &ledger, findings);
}

impl<'h> Ledger<'h> {
    fn collect(index: &Index<'h>, findings: &mut Findings) -> Self {
        let mut ledger = Ledger::default();
        for pair in &index.pairs {
            let ok = match (pair.outcome, pair.completion) {
                (Outcome::Ok, Some(completion)) => Some(completion),
                _ => None,
            };
            match &index.history.ops[pair.invoke].f {
                Payload::Txn(txn) => {
                    ledger.add_attempt(index, pair.invoke, txn, findings);
                    if let Some(op) = ok {
                        ledger.commit(index, op, &txn.group, &txn.input_topic, &txn.offsets_next);
                    }
                }
                Payload::Commit(commit) if index.txn_groups.contains(commit.group.as_str()) => {
                    if let Some(op) = ok {
                        ledger.commit(
                            index,
                            op,
                            &commit.group,
                            &commit.topic,
                            &commit.offsets_next,
                        );
                    }
                }
                _ => {}
            }
        }
        ledger
    }

    fn commit(
        &mut self,
        index: &Index<'h>,
        op: usize,
        group: &'h str,
        topic: &str,
        offsets_next: &BTreeMap<u32, u64>,
    ) {
        let Some(topic) = index.find_topic(topic) else {
            return;
        };
        for (&partition, &next) in offsets_next {
            let entry = self
                .committed
                .entry((group, topic, partition))
                .or_insert((next, op));
            if next > entry.0 {
                *entry = (next, op);
            }
        }
    }

    fn add_attempt(
        &mut self,
        index: &Index<'h>,
        op: usize,
        txn: &'h TxnOp,
        findings: &mut Findings,
    ) {
        let (Some(input_topic), Some(output_topic)) = (
            index.find_topic(&txn.input_topic),
            index.find_topic(&txn.output_topic),
        ) else {
            unreachable!("the index registers every transaction's topics");
        };
        let mut outputs: Vec<(&str, &str)> = txn
            .outputs
            .iter()
            .map(|out| (out.input.as_str(), out.value.as_str()))
            .collect();
        outputs.sort_unstable();
        outputs.dedup();
        check_outputs_name_inputs(op, txn, &outputs, findings);
        for event in &txn.inputs {
            let first = outputs.partition_point(|(input, _)| *input < event.value.as_str());
            let values: Vec<&str> = outputs[first..]
                .iter()
                .take_while(|(input, _)| *input == event.value)
                .map(|(_, value)| *value)
                .collect();
            let next = self.inputs.len();
            let id = *self
                .ids
                .entry((&txn.group, input_topic, &event.value))
                .or_insert(next);
            if id == next {
                self.inputs.push(Input {
                    group: &txn.group,
                    topic: input_topic,
                    value: &event.value,
                    partition: event.partition,
                    offset: event.offset,
                    attempts: Vec::new(),
                    ops: Vec::new(),
                });
            }
            self.inputs[id].attempts.push(Attempt {
                output_topic,
                values,
            });
            self.inputs[id].ops.push(op);
            let lowest = self
                .lowest
                .entry((&txn.group, input_topic, event.partition));
            let lowest = lowest.or_insert(event.offset);
            *lowest = (*lowest).min(event.offset);
        }
    }
}

/// Every output must name one of the transaction's inputs, or it could
/// never be tied to the input whose exactly-once it proves.
fn check_outputs_name_inputs(
    op: usize,
    txn: &TxnOp,
    outputs: &[(&str, &str)],
    findings: &mut Findings,
) {
    let inputs: HashSet<&str> = txn
        .inputs
        .iter()
        .map(|event| event.value.as_str())
        .collect();
    for &(input, value) in outputs.iter().filter(|(input, _)| !inputs.contains(input)) {
        findings.record(AnomalyClass::Malformed, || {
            let message =
                format!("op {op}: transaction output {value:?} names {input:?}, which is not one of its inputs");
            Example::new(message).ops([op]).values([value, input])
        });
    }
}

fn judge_attempted(
    index: &Index<'_>,
    ledger: &Ledger<'_>,
    input: &Input<'_>,
    findings: &mut Findings,
) {
    // Unread output topics were reported as malformed; nothing to judge.
    if input
        .attempts
        .iter()
        .any(|attempt| !index.has_final_read(attempt.output_topic))
    {
        return;
    }
    let commit = ledger
        .committed
        .get(&(input.group, input.topic, input.partition));
    let covered = commit.is_some_and(|(next, _)| input.offset < *next);
    let present = present_outputs(index, input);
    let once = present.iter().all(|(_, _, count)| *count == 1);
    let one_attempt = input.attempts.iter().any(|attempt| {
        attempt.values.len() == present.len()
            && present.iter().all(|(topic, value, _)| {
                *topic == attempt.output_topic && attempt.values.binary_search(value).is_ok()
            })
    });
    if once && (one_attempt || (!covered && present.is_empty())) {
        return;
    }
    findings.record(AnomalyClass::ExactlyOnceViolation, || {
        let name = index.topic_name(input.topic);
        let seen: Vec<String> = present
            .iter()
            .map(|(_, value, count)| format!("{value:?} x{count}"))
            .collect();
        let expected: Vec<String> = input
            .attempts
            .iter()
            .map(|attempt| format!("{:?}", attempt.values))
            .collect();
        let committed = commit.map_or(String::from("not committed"), |(next, op)| {
            format!("committed up to {next} by op {op}")
        });
        let message = format!(
            "group {:?} input {name} partition {} offset {} ({:?}, {committed}): outputs present \
             [{}], expected exactly one of the attempts' outputs {}",
            input.group,
            input.partition,
            input.offset,
            input.value,
            seen.join(", "),
            expected.join(" or ")
        );
        Example::new(message)
            .ops(input.ops.iter().copied().chain(commit.map(|(_, op)| *op)))
            .partition(name, input.partition)
            .offsets([input.offset])
            .values(
                [input.value]
                    .into_iter()
                    .chain(present.iter().map(|(_, value, _)| *value)),
            )
    });
}

/// The attempts' output values that are in the final read, with how many
/// distinct positions each holds; sorted and distinct.
fn present_outputs<'h>(index: &Index<'h>, input: &Input<'h>) -> Vec<(TopicId, &'h str, u32)> {
    let mut present: Vec<(TopicId, &'h str, u32)> = input
        .attempts
        .iter()
        .flat_map(|attempt| {
            attempt
                .values
                .iter()
                .map(|value| (attempt.output_topic, *value))
        })
        .filter_map(|(topic, value)| {
            let id = index.find_value(topic, value)?;
            let count = index.values[id].final_count;
            (count > 0).then_some((topic, value, count))
        })
        .collect();
    present.sort_unstable();
    present.dedup();
    present
}

/// Covered inputs that no transaction ever took were skipped.
fn check_unattempted(index: &Index<'_>, ledger: &Ledger<'_>, findings: &mut Findings) {
    for covered in index.covered(&ledger.committed, &ledger.lowest) {
        let Covered {
            group,
            topic,
            partition,
            next,
            commit_op,
            offset,
            id,
        } = covered;
        let value = index.values[id].value;
        if ledger.ids.contains_key(&(group, topic, value)) {
            continue;
        }
        findings.record(AnomalyClass::ExactlyOnceViolation, || {
            let name = index.topic_name(topic);
            let message = format!(
                "group {group:?} committed {name} partition {partition} up to {next} (op \
                 {commit_op}) but no transaction ever processed offset {offset} ({value:?})"
            );
            Example::new(message)
                .ops([commit_op])
                .partition(name, partition)
                .offsets([offset])
                .values([value])
        });
    }
}

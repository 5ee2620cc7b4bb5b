//! Matches each invocation with its completion, and reports breaches of
//! the format's rules as `malformed`.
//!
//! Rules enforced (see [`crate::history`]): one outstanding op per process;
//! a completion follows an invocation of the same process and payload
//! variant; a process that completed `info` is not reused; `time_ns` never
//! decreases. An invocation left open at the end counts as `info`.
//!
//! Pairs come out in completion order (open ones last, in invocation
//! order), because that is the order in which clients learned results:
//! rules that replay a consumer's view (polls, seeks, commits) need it.

use std::collections::{HashMap, HashSet};
use std::mem;

use super::Findings;
use crate::history::{History, Op, OpKind, Payload};
use crate::report::{AnomalyClass, Example};

/// How an operation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Ok,
    Fail,
    /// Indeterminate, or never completed.
    Info,
}

/// An invocation and its completion, as op indices.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pair {
    pub(crate) invoke: usize,
    /// `None` when the history ended with the op outstanding.
    pub(crate) completion: Option<usize>,
    pub(crate) outcome: Outcome,
}

/// Pairs every non-nemesis op of `history`.
pub(crate) fn pair(history: &History, findings: &mut Findings) -> Vec<Pair> {
    let mut pairs = Vec::with_capacity(history.ops.len() / 2);
    let mut open: HashMap<u64, usize> = HashMap::new();
    let mut gone: HashSet<u64> = HashSet::new();
    let mut time_ns_max = 0;
    for (index, op) in history.ops.iter().enumerate() {
        if op.time_ns < time_ns_max {
            findings.record(AnomalyClass::Malformed, || {
                let message = format!(
                    "op {index} at {} ns is earlier than a previous op at {time_ns_max} ns",
                    op.time_ns
                );
                Example::new(message).ops([index])
            });
        }
        time_ns_max = time_ns_max.max(op.time_ns);
        if matches!(op.f, Payload::Nemesis(_)) {
            continue;
        }
        match op.kind {
            OpKind::Invoke => invoke(index, op, &mut open, &gone, &mut pairs, findings),
            OpKind::Ok | OpKind::Fail | OpKind::Info => {
                complete(history, index, &mut open, &mut gone, &mut pairs, findings);
            }
        }
    }
    let mut unfinished: Vec<usize> = open.into_values().collect();
    unfinished.sort_unstable();
    pairs.extend(unfinished.into_iter().map(|invoke| Pair {
        invoke,
        completion: None,
        outcome: Outcome::Info,
    }));
    pairs
}

fn invoke(
    index: usize,
    op: &Op,
    open: &mut HashMap<u64, usize>,
    gone: &HashSet<u64>,
    pairs: &mut Vec<Pair>,
    findings: &mut Findings,
) {
    let process = op.process;
    if gone.contains(&process) {
        findings.record(AnomalyClass::Malformed, || {
            let message = format!(
                "op {index}: process {process} invokes again after an info result; \
                 a crashed client must take a new process id"
            );
            Example::new(message).ops([index])
        });
    }
    if let Some(previous) = open.insert(process, index) {
        findings.record(AnomalyClass::Malformed, || {
            let message =
                format!("op {index}: process {process} invokes while op {previous} is still open");
            Example::new(message).ops([previous, index])
        });
        // Keep the earlier op as indeterminate: it may have taken effect.
        pairs.push(Pair {
            invoke: previous,
            completion: None,
            outcome: Outcome::Info,
        });
    }
}

fn complete(
    history: &History,
    index: usize,
    open: &mut HashMap<u64, usize>,
    gone: &mut HashSet<u64>,
    pairs: &mut Vec<Pair>,
    findings: &mut Findings,
) {
    let op = &history.ops[index];
    let Some(invoke) = open.remove(&op.process) else {
        findings.record(AnomalyClass::Malformed, || {
            let message = format!(
                "op {index}: {:?} completion of process {} without an open invocation",
                op.kind, op.process
            );
            Example::new(message).ops([index])
        });
        return;
    };
    let invoked = &history.ops[invoke].f;
    if mem::discriminant(invoked) != mem::discriminant(&op.f) {
        findings.record(AnomalyClass::Malformed, || {
            let message = format!(
                "op {index}: process {} completes a {} but op {invoke} invoked a {}",
                op.process,
                op.f.name(),
                invoked.name()
            );
            Example::new(message).ops([invoke, index])
        });
        // The result cannot be attributed, so the invocation stays in doubt.
        pairs.push(Pair {
            invoke,
            completion: None,
            outcome: Outcome::Info,
        });
        return;
    }
    let outcome = match op.kind {
        OpKind::Ok => Outcome::Ok,
        OpKind::Fail => Outcome::Fail,
        OpKind::Info => {
            gone.insert(op.process);
            Outcome::Info
        }
        OpKind::Invoke => unreachable!("pair() hands invocations to invoke()"),
    };
    pairs.push(Pair {
        invoke,
        completion: Some(index),
        outcome,
    });
}

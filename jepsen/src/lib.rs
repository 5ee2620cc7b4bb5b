//! Histories of operations against a Sluice cluster and the checker that
//! judges them. Used by the deterministic simulator (`sluice-sim`) and by the
//! Jepsen-style runner, so that both apply the same rules. The checker is a
//! pure function of a finished history: no runtime, no clock, no I/O.
//!
//! - [`history`]: the format ([`History`], [`Op`], [`Payload`]) and its JSON
//!   lines encoding;
//! - [`HistoryBuilder`]: writes histories op by op;
//! - [`check`]: judges a history and returns a [`Report`].
//!
//! # The rules
//!
//! This implements exactly-once as `jepsen/README.md` ("Workload and what
//! is checked") defines it. Values are unique per
//! published event within a topic (a retried send reuses its value), so a
//! value identifies an event. Observations are acknowledgements (the
//! partition and offset of an `ok` send), `ok` polls and `ok` final reads;
//! the final reads of a topic, merged, are the log.
//!
//! A value's write status folds every attempt that wrote it (sends and
//! transaction outputs): *acknowledged* if one was `ok`, else
//! *indeterminate* if one was `info` or never completed, else *failed* if
//! one was `fail`, else *unwritten*.
//!
//! Failures (any occurrence makes the history invalid):
//!
//! - **lost**: an acknowledged value (sent `ok`, or output of an `ok`
//!   transaction) absent from its topic's final read. With
//!   [`Retention::PrefixMayBeDeleted`] an acknowledged offset below the
//!   lowest offset of its partition's final read is not judged.
//! - **duplicated**: a value observed at two or more (topic, partition,
//!   offset) positions, by acks, polls or final reads.
//! - **unexpected**: a value observed that no send or transaction wrote.
//! - **failed-but-present**: a value observed whose every send definitely
//!   failed.
//! - **G1a** (aborted read): an output of a transaction observed whose
//!   every attempt definitely failed (aborted).
//! - **inconsistent-offsets**: one position observed holding two values.
//! - **offset-gap**: a final read of a partition missing offsets between its
//!   lowest and highest (retention may drop a prefix, never a middle).
//! - **nonmonotonic-send** (producer order): one producer's (id, epoch)
//!   acknowledged events in one partition, sorted by sequence number, not
//!   in increasing offset order.
//! - **realtime-order**: send A acknowledged (first ack) before send B was
//!   invoked (first invocation), in the same partition, yet A's offset is
//!   above B's.
//! - **nonmonotonic-poll**: within one consumer id, group generation and
//!   partition, a delivered offset below the last delivered one plus one
//!   (or below an `ok` seek's offset).
//! - **poll-skip**: within the same scope, a delivered offset above the
//!   next expected one while the final read holds offsets in between.
//! - **exactly-once-violation**: on the transactional path, a (group,
//!   input) whose outputs present in the final read are not exactly one
//!   attempt's outputs each once (none is allowed only while the input is
//!   not covered by a commit), or a committed input no transaction took.
//! - **undelivered**: in a plain group, an event between the lowest offset
//!   the group was delivered and its highest commit that no member was
//!   delivered (at-least-once broken).
//! - **malformed**: the history breaks its own format (see [`history`]) or
//!   a topic with acknowledged writes has no final read: the verdict would
//!   otherwise be vacuous.
//!
//! Informational (counted, allowed):
//!
//! - **recovered**: a value whose writes were all indeterminate is present:
//!   the `info` op took effect. Jepsen's queue checker reports the same.
//! - **redelivery**: a plain group delivered the same event twice, as
//!   at-least-once allows after a crash or rebalance; counted apart from
//!   duplicates in the log.
//!
//! Each submodule of the checker documents its rules in more detail and
//! what one occurrence is.

pub mod builder;
pub mod checker;
pub mod history;
pub mod report;

pub use builder::HistoryBuilder;
pub use checker::{CheckOptions, Retention, check, check_with};
pub use history::{
    CommitOp, Event, FinalReadOp, History, HistoryError, NemesisOp, Op, OpKind, Payload, PollOp,
    ProducerStamp, SeekOp, SendOp, TxnOp, TxnOutput,
};
pub use report::{AnomalyClass, ClassReport, Example, Outcomes, Report, Severity, Stats};

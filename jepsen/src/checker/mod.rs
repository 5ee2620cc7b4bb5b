//! The exactly-once checker: judges a finished [`History`] and returns a
//! [`Report`]. The rules are listed in the crate docs; each submodule
//! implements a family of them over a shared index (`index.rs`):
//!
//! - `pairing`: matches invocations with completions (format rules);
//! - `index`: what was written, acknowledged and observed, per value and
//!   per (topic, partition, offset);
//! - `log`: lost, duplicated, unexpected, recovered, failed-but-present,
//!   G1a, inconsistent-offsets, offset-gap;
//! - `order`: nonmonotonic-send (producer order), realtime-order;
//! - `poll`: nonmonotonic-poll, poll-skip, redelivery, undelivered;
//! - `exactly_once`: the transactional path's exactly-once rule.
//!
//! Every pass is a hash-map or sort-and-sweep pass, O(n log n) in the size
//! of the history, so a million-op history checks in seconds.

mod exactly_once;
mod index;
mod log;
mod order;
mod pairing;
mod poll;

use std::collections::BTreeMap;

use crate::history::History;
use crate::report::{AnomalyClass, ClassReport, Example, Report, Stats};

/// How many examples each class keeps unless told otherwise.
pub const EXAMPLES_PER_CLASS_MAX_DEFAULT: usize = 8;

/// Whether the final reads may lack a prefix of a partition.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Retention {
    /// Nothing was deleted: every acknowledged event must be in the final
    /// read. Use this for test runs; it also catches a lost prefix.
    #[default]
    KeepAll,
    /// Retention ran: an acknowledged event below the lowest offset of its
    /// partition's final read is not judged lost.
    PrefixMayBeDeleted,
}

/// Knobs of the checker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckOptions {
    /// Examples kept per class; the count is always exact.
    pub examples_per_class_max: usize,
    /// Whether retention may have deleted a prefix of the log.
    pub retention: Retention,
}

impl Default for CheckOptions {
    fn default() -> Self {
        Self {
            examples_per_class_max: EXAMPLES_PER_CLASS_MAX_DEFAULT,
            retention: Retention::KeepAll,
        }
    }
}

/// Checks `history` with the default options.
pub fn check(history: &History) -> Report {
    check_with(history, &CheckOptions::default())
}

/// Checks `history`: every rule, every class counted.
pub fn check_with(history: &History, options: &CheckOptions) -> Report {
    let mut findings = Findings::new(options.examples_per_class_max);
    let pairs = pairing::pair(history, &mut findings);
    let index = index::Index::build(history, pairs, &mut findings);
    log::check(&index, options.retention, &mut findings);
    order::check(&index, &mut findings);
    poll::check(&index, &mut findings);
    exactly_once::check(&index, &mut findings);
    findings.into_report(index.stats)
}

/// Anomalies found so far: exact counts, a bounded number of examples.
#[derive(Debug)]
pub(crate) struct Findings {
    classes: BTreeMap<AnomalyClass, ClassReport>,
    examples_per_class_max: usize,
}

impl Findings {
    fn new(examples_per_class_max: usize) -> Self {
        let classes = AnomalyClass::ALL
            .iter()
            .map(|class| {
                let report = ClassReport {
                    severity: class.severity(),
                    count: 0,
                    examples: Vec::new(),
                };
                (*class, report)
            })
            .collect();
        Self {
            classes,
            examples_per_class_max,
        }
    }

    /// Counts one occurrence of `class`. The example is built only if it
    /// will be kept, so that a badly broken history does not allocate a
    /// message per anomaly.
    pub(crate) fn record(&mut self, class: AnomalyClass, example: impl FnOnce() -> Example) {
        let report = self
            .classes
            .get_mut(&class)
            .expect("every class is present");
        report.count += 1;
        if report.examples.len() < self.examples_per_class_max {
            report.examples.push(example());
        }
    }

    fn into_report(mut self, stats: Stats) -> Report {
        for report in self.classes.values_mut() {
            // Rules run in turn, so sort to show examples in history order.
            report
                .examples
                .sort_by_key(|example| example.ops.first().copied());
        }
        let valid = self
            .classes
            .iter()
            .all(|(class, report)| !class.is_failure() || report.count == 0);
        Report {
            valid,
            classes: self.classes,
            stats,
        }
    }
}

//! The checker's verdict: per anomaly class a count and examples, plus
//! statistics about the history. Serializes to `results.json`; `Display`
//! prints a summary table for people.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// The kinds of anomaly the checker reports. See the crate docs for the
/// exact rule behind each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum AnomalyClass {
    /// A send acknowledged `ok` whose value is absent from the final read.
    Lost,
    /// A value observed at more than one (topic, partition, offset).
    Duplicated,
    /// A value observed in the log that no send or transaction wrote.
    Unexpected,
    /// A value observed whose every send definitely failed.
    FailedButPresent,
    /// One (topic, partition, offset) observed holding different values.
    InconsistentOffsets,
    /// The final read of a partition skips offsets.
    OffsetGap,
    /// A producer's acknowledged events out of sequence order in a
    /// partition (producer order).
    NonmonotonicSend,
    /// Send A acknowledged before send B was invoked, yet A's offset is
    /// after B's in the same partition.
    RealtimeOrder,
    /// A consumer's polls of one partition went backwards.
    NonmonotonicPoll,
    /// A consumer's polls of one partition skipped offsets in the log.
    PollSkip,
    /// Aborted read: an output of a transaction that definitely failed was
    /// observed.
    #[serde(rename = "G1a")]
    G1a,
    /// A transactional group's input whose outputs are not in the output
    /// topic exactly once.
    ExactlyOnceViolation,
    /// An event below a plain group's committed offset that no consumer of
    /// the group was delivered (at-least-once broken).
    Undelivered,
    /// The history breaks the format's rules or lacks what a rule needs.
    Malformed,
    /// Informational: a value written by an indeterminate (`info`) op is
    /// present.
    Recovered,
    /// Informational: a plain group was delivered the same event again
    /// (at-least-once redelivery after a crash or rebalance).
    Redelivery,
}

/// Whether a class makes the history invalid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Severity {
    /// Any occurrence makes the history invalid.
    Failure,
    /// Counted and shown, but allowed.
    Informational,
}

impl AnomalyClass {
    /// Every class, in report order.
    pub const ALL: [AnomalyClass; 16] = [
        AnomalyClass::Lost,
        AnomalyClass::Duplicated,
        AnomalyClass::Unexpected,
        AnomalyClass::FailedButPresent,
        AnomalyClass::InconsistentOffsets,
        AnomalyClass::OffsetGap,
        AnomalyClass::NonmonotonicSend,
        AnomalyClass::RealtimeOrder,
        AnomalyClass::NonmonotonicPoll,
        AnomalyClass::PollSkip,
        AnomalyClass::G1a,
        AnomalyClass::ExactlyOnceViolation,
        AnomalyClass::Undelivered,
        AnomalyClass::Malformed,
        AnomalyClass::Recovered,
        AnomalyClass::Redelivery,
    ];

    /// The class's name as in `results.json`.
    pub fn name(self) -> &'static str {
        match self {
            AnomalyClass::Lost => "lost",
            AnomalyClass::Duplicated => "duplicated",
            AnomalyClass::Unexpected => "unexpected",
            AnomalyClass::FailedButPresent => "failed-but-present",
            AnomalyClass::InconsistentOffsets => "inconsistent-offsets",
            AnomalyClass::OffsetGap => "offset-gap",
            AnomalyClass::NonmonotonicSend => "nonmonotonic-send",
            AnomalyClass::RealtimeOrder => "realtime-order",
            AnomalyClass::NonmonotonicPoll => "nonmonotonic-poll",
            AnomalyClass::PollSkip => "poll-skip",
            AnomalyClass::G1a => "G1a",
            AnomalyClass::ExactlyOnceViolation => "exactly-once-violation",
            AnomalyClass::Undelivered => "undelivered",
            AnomalyClass::Malformed => "malformed",
            AnomalyClass::Recovered => "recovered",
            AnomalyClass::Redelivery => "redelivery",
        }
    }

    /// Whether the class is a failure or informational.
    pub fn severity(self) -> Severity {
        match self {
            // Both are what at-least-once and indeterminate results allow.
            AnomalyClass::Recovered | AnomalyClass::Redelivery => Severity::Informational,
            _ => Severity::Failure,
        }
    }

    /// Whether any occurrence makes the history invalid.
    pub fn is_failure(self) -> bool {
        self.severity() == Severity::Failure
    }
}

impl fmt::Display for AnomalyClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One occurrence of an anomaly, with what is needed to find it in the
/// history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Example {
    /// A sentence saying what is wrong, naming values and positions.
    pub message: String,
    /// Indices (0-based) of the ops involved.
    pub ops: Vec<usize>,
    /// The topic, when the anomaly is about one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// The partition, when the anomaly is about one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<u32>,
    /// The offsets involved.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub offsets: Vec<u64>,
    /// The values involved.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

impl Example {
    pub(crate) fn new(message: String) -> Self {
        Self {
            message,
            ops: Vec::new(),
            topic: None,
            partition: None,
            offsets: Vec::new(),
            values: Vec::new(),
        }
    }

    pub(crate) fn ops(mut self, ops: impl IntoIterator<Item = usize>) -> Self {
        self.ops.extend(ops);
        self
    }

    pub(crate) fn topic(mut self, topic: &str) -> Self {
        self.topic = Some(topic.to_owned());
        self
    }

    pub(crate) fn partition(mut self, topic: &str, partition: u32) -> Self {
        self.partition = Some(partition);
        self.topic(topic)
    }

    pub(crate) fn offsets(mut self, offsets: impl IntoIterator<Item = u64>) -> Self {
        self.offsets.extend(offsets);
        self
    }

    pub(crate) fn values<'a>(mut self, values: impl IntoIterator<Item = &'a str>) -> Self {
        self.values.extend(values.into_iter().map(str::to_owned));
        self
    }
}

/// The result for one class.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassReport {
    /// Failure or informational.
    pub severity: Severity,
    /// How many occurrences (each rule's doc says what one occurrence is).
    pub count: u64,
    /// The first few occurrences, in history order.
    pub examples: Vec<Example>,
}

/// Operation outcomes of one kind of op.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcomes {
    /// Completed `ok`.
    pub ok: u64,
    /// Completed `fail`.
    pub fail: u64,
    /// Completed `info`, or never completed.
    pub info: u64,
}

/// Facts about the history, to judge how much a run exercised.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Ops in the history, nemesis entries included.
    pub ops: u64,
    /// Nemesis entries.
    pub nemesis_ops: u64,
    /// Send attempts (a retry is another attempt).
    pub sends: Outcomes,
    /// Transaction attempts.
    pub txns: Outcomes,
    /// Poll attempts.
    pub polls: Outcomes,
    /// Commit attempts.
    pub commits: Outcomes,
    /// Events delivered by ok polls (redeliveries included).
    pub events_polled: u64,
    /// Distinct (topic, value) pairs written by a send or a transaction.
    pub values_written: u64,
    /// Of those, acknowledged by at least one `ok`.
    pub values_acknowledged: u64,
    /// Topics with an ok final read.
    pub final_read_topics: u64,
    /// Distinct (topic, partition, offset, value) entries in final reads.
    pub final_read_events: u64,
}

/// The checker's verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// True when no failure class occurred.
    pub valid: bool,
    /// Every class, with its count (zero included) and examples.
    pub classes: BTreeMap<AnomalyClass, ClassReport>,
    /// Facts about the history.
    pub stats: Stats,
}

impl Report {
    /// Occurrences of `class`.
    pub fn count(&self, class: AnomalyClass) -> u64 {
        self.classes.get(&class).map_or(0, |report| report.count)
    }

    /// The recorded examples of `class`.
    pub fn examples(&self, class: AnomalyClass) -> &[Example] {
        self.classes
            .get(&class)
            .map_or(&[], |report| &report.examples)
    }

    /// The failure classes that occurred.
    pub fn failures(&self) -> Vec<AnomalyClass> {
        self.occurred().filter(|class| class.is_failure()).collect()
    }

    /// The classes that occurred, failures and informational.
    pub fn occurred(&self) -> impl Iterator<Item = AnomalyClass> + '_ {
        self.classes
            .iter()
            .filter(|(_, report)| report.count > 0)
            .map(|(class, _)| *class)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_stats(f, &self.stats)?;
        writeln!(f, "{:<24} {:<14} {:>10}", "class", "severity", "count")?;
        for (class, report) in &self.classes {
            let severity = match report.severity {
                Severity::Failure => "failure",
                Severity::Informational => "informational",
            };
            writeln!(
                f,
                "{:<24} {:<14} {:>10}",
                class.name(),
                severity,
                report.count
            )?;
        }
        if self.valid {
            writeln!(f, "result: VALID")?;
        } else {
            let failures: Vec<&str> = self
                .failures()
                .into_iter()
                .map(AnomalyClass::name)
                .collect();
            writeln!(f, "result: INVALID ({})", failures.join(", "))?;
        }
        for (class, report) in self.classes.iter().filter(|(_, report)| report.count > 0) {
            writeln!(
                f,
                "{} ({}), first {}:",
                class,
                report.count,
                report.examples.len()
            )?;
            for example in &report.examples {
                writeln!(f, "  ops {:?}: {}", example.ops, example.message)?;
            }
        }
        Ok(())
    }
}

fn write_stats(f: &mut fmt::Formatter<'_>, stats: &Stats) -> fmt::Result {
    let outcomes = |o: &Outcomes| format!("ok {} fail {} info {}", o.ok, o.fail, o.info);
    writeln!(f, "ops: {} ({} nemesis)", stats.ops, stats.nemesis_ops)?;
    writeln!(f, "sends: {}", outcomes(&stats.sends))?;
    writeln!(f, "txns: {}", outcomes(&stats.txns))?;
    writeln!(
        f,
        "polls: {} ({} events)",
        outcomes(&stats.polls),
        stats.events_polled
    )?;
    writeln!(f, "commits: {}", outcomes(&stats.commits))?;
    writeln!(
        f,
        "values: {} written, {} acknowledged; final read: {} events in {} topics",
        stats.values_written,
        stats.values_acknowledged,
        stats.final_read_events,
        stats.final_read_topics
    )
}

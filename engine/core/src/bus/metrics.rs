//! The bus's metrics in the Prometheus text format (version 0.0.4).

use crate::io::Env;
use std::fmt::Write as _;

use openraft::ServerState;
use openraft::async_runtime::WatchReceiver;

use sluice_model::state::State;

use super::Bus;

/// One gauge: its name, help text and labelled samples.
type Gauge = (&'static str, &'static str, Vec<(String, u64)>);

impl<E: Env> Bus<E> {
    /// This node's Raft position and every partition's offsets and every
    /// group's generation and committed offsets, as Prometheus text. The
    /// state's read lock is held only while the samples are copied, not
    /// while they are formatted.
    pub fn metrics_text(&self) -> String {
        let mut gauges = self.raft_gauges();
        {
            let state = self.state();
            gauges.extend(partition_gauges(&state));
            gauges.extend(group_gauges(&state));
        }
        let mut out = String::new();
        for (name, help, samples) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            for (labels, value) in samples {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        }
        out
    }

    fn raft_gauges(&self) -> Vec<Gauge> {
        let metrics = self.raft().metrics().borrow_watched().clone();
        let node = format!("{{node=\"{}\"}}", self.node_id());
        let leader = u64::from(metrics.state == ServerState::Leader);
        let index = |id: Option<u64>| id.map_or(0, |i| i + 1);
        let applied = index(metrics.last_applied.map(|id| id.index));
        vec![
            (
                "sluice_raft_term",
                "Current Raft term.",
                vec![(node.clone(), metrics.current_term)],
            ),
            (
                "sluice_raft_leader",
                "1 if this node leads.",
                vec![(node.clone(), leader)],
            ),
            (
                "sluice_raft_log_next_index",
                "Index after the last log entry.",
                vec![(node.clone(), index(metrics.last_log_index))],
            ),
            (
                "sluice_raft_applied_next_index",
                "Index after the last applied entry.",
                vec![(node, applied)],
            ),
        ]
    }
}

fn partition_gauges(state: &State) -> [Gauge; 2] {
    let mut first = Vec::new();
    let mut next = Vec::new();
    for topic in state.topics() {
        let name = escape(&topic.name);
        for partition in 0..topic.partitions {
            let (f, n) = state
                .partition_range(&topic.name, partition)
                .unwrap_or((0, 0));
            let labels = format!("{{topic=\"{name}\",partition=\"{partition}\"}}");
            first.push((labels.clone(), f));
            next.push((labels, n));
        }
    }
    [
        (
            "sluice_partition_first_offset",
            "First retained offset.",
            first,
        ),
        (
            "sluice_partition_next_offset",
            "Offset the next event gets.",
            next,
        ),
    ]
}

fn group_gauges(state: &State) -> [Gauge; 3] {
    let mut generations = Vec::new();
    let mut committed = Vec::new();
    let mut members = Vec::new();
    for (group, info) in state.groups() {
        let group = escape(group);
        let labels = format!("{{group=\"{group}\"}}");
        generations.push((labels.clone(), info.generation));
        members.push((labels, info.members.len() as u64));
        for (topic, partitions) in &info.offsets {
            let topic = escape(topic);
            for (partition, offset) in partitions {
                let labels =
                    format!("{{group=\"{group}\",topic=\"{topic}\",partition=\"{partition}\"}}");
                committed.push((labels, *offset));
            }
        }
    }
    [
        (
            "sluice_group_generation",
            "Consumer group generation.",
            generations,
        ),
        ("sluice_group_members", "Consumer group members.", members),
        (
            "sluice_group_committed_offset",
            "Committed offset.",
            committed,
        ),
    ]
}

/// A label value as the text format wants it: backslash, double quote and
/// newline escaped.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    #[test]
    fn label_values_are_escaped() {
        assert_eq!(super::escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}

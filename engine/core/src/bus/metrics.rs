//! The bus's metrics in the Prometheus text format (version 0.0.4).

use crate::io::Env;
use std::fmt::Write as _;

use openraft::ServerState;
use openraft::async_runtime::WatchReceiver;

use super::Bus;

impl<E: Env> Bus<E> {
    /// This node's Raft position and every partition's offsets and every
    /// group's generation and committed offsets, as Prometheus text.
    pub fn metrics_text(&self) -> String {
        let metrics = self.raft().metrics().borrow_watched().clone();
        let mut out = String::new();
        let mut gauge = |name: &str, help: &str, samples: &[(String, u64)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            for (labels, value) in samples {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        let node = format!("{{node=\"{}\"}}", self.node_id());
        let leader = u64::from(metrics.state == ServerState::Leader);
        gauge(
            "sluice_raft_term",
            "Current Raft term.",
            &[(node.clone(), metrics.current_term)],
        );
        gauge(
            "sluice_raft_leader",
            "1 if this node leads.",
            &[(node.clone(), leader)],
        );
        let index = |id: Option<u64>| id.map_or(0, |i| i + 1);
        gauge(
            "sluice_raft_log_next_index",
            "Index after the last log entry.",
            &[(node.clone(), index(metrics.last_log_index))],
        );
        gauge(
            "sluice_raft_applied_next_index",
            "Index after the last applied entry.",
            &[(node.clone(), index(metrics.last_applied.map(|id| id.index)))],
        );
        let state = self.state();
        let mut first = Vec::new();
        let mut next = Vec::new();
        for topic in state.topics() {
            for partition in 0..topic.partitions {
                let (f, n) = state
                    .partition_range(&topic.name, partition)
                    .unwrap_or((0, 0));
                let labels = format!("{{topic=\"{}\",partition=\"{partition}\"}}", topic.name);
                first.push((labels.clone(), f));
                next.push((labels, n));
            }
        }
        gauge(
            "sluice_partition_first_offset",
            "First retained offset.",
            &first,
        );
        gauge(
            "sluice_partition_next_offset",
            "Offset the next event gets.",
            &next,
        );
        let mut generations = Vec::new();
        let mut committed = Vec::new();
        let mut members = Vec::new();
        for (group, info) in state.groups() {
            let group = escape(group);
            let labels = format!("{{group=\"{group}\"}}");
            generations.push((labels.clone(), info.generation));
            members.push((labels, info.members.len() as u64));
            for (topic, partitions) in &info.offsets {
                for (partition, offset) in partitions {
                    let labels = format!(
                        "{{group=\"{group}\",topic=\"{topic}\",partition=\"{partition}\"}}"
                    );
                    committed.push((labels, *offset));
                }
            }
        }
        gauge(
            "sluice_group_generation",
            "Consumer group generation.",
            &generations,
        );
        gauge("sluice_group_members", "Consumer group members.", &members);
        gauge(
            "sluice_group_committed_offset",
            "Committed offset.",
            &committed,
        );
        out
    }
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

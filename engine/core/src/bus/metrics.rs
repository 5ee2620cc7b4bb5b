//! The bus's metrics: a `prometheus-client` [`Collector`] that reads this
//! node's Raft position, every partition's offsets and every group's
//! generation, members and committed offsets at each scrape.
//!
//! A node serves them with its own collectors (connections, the chain
//! check) from one registry; [`Bus::metrics_text`] encodes them alone in the
//! Prometheus text format (version 0.0.4).

use crate::io::Env;
use std::fmt;

use openraft::ServerState;
use openraft::async_runtime::WatchReceiver;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use sluice_model::state::State;

use super::Bus;

/// The bus's metrics as a collector; see the module docs. Holds a clone of
/// the bus.
pub struct BusCollector<E: Env> {
    bus: Bus<E>,
}

impl<E: Env> fmt::Debug for BusCollector<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BusCollector")
            .field("node_id", &self.bus.node_id())
            .finish()
    }
}

impl<E: Env> Bus<E> {
    /// A collector of this bus's metrics, to register with a node's
    /// registry.
    pub fn collector(&self) -> BusCollector<E> {
        BusCollector { bus: self.clone() }
    }

    /// This bus's metrics alone, in the Prometheus text format.
    pub fn metrics_text(&self) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(self.collector()));
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)
            .expect("writing to a String does not fail");
        out
    }
}

/// Labelled gauge samples of one metric.
type Samples = Vec<(Vec<(&'static str, String)>, u64)>;

impl<E: Env> Collector for BusCollector<E> {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let raft = self.raft_samples();
        // The state's read lock is held only while the samples are copied,
        // not while they are encoded.
        let (partitions, groups) = {
            let state = self.bus.state();
            (partition_samples(&state), group_samples(&state))
        };
        for (name, help, samples) in raft.into_iter().chain(partitions).chain(groups) {
            encode_gauge(&mut encoder, name, help, &samples)?;
        }
        Ok(())
    }
}

impl<E: Env> BusCollector<E> {
    fn raft_samples(&self) -> [(&'static str, &'static str, Samples); 4] {
        let metrics = self.bus.raft().metrics().borrow_watched().clone();
        let node = || vec![("node", self.bus.node_id().to_string())];
        let leader = u64::from(metrics.state == ServerState::Leader);
        let index = |id: Option<u64>| id.map_or(0, |i| i + 1);
        let applied = index(metrics.last_applied.map(|id| id.index));
        [
            (
                "sluice_raft_term",
                "Current Raft term.",
                vec![(node(), metrics.current_term)],
            ),
            (
                "sluice_raft_leader",
                "1 if this node leads.",
                vec![(node(), leader)],
            ),
            (
                "sluice_raft_log_next_index",
                "Index after the last log entry.",
                vec![(node(), index(metrics.last_log_index))],
            ),
            (
                "sluice_raft_applied_next_index",
                "Index after the last applied entry.",
                vec![(node(), applied)],
            ),
        ]
    }
}

/// Writes one gauge and its samples.
pub fn encode_gauge<S: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: &[(S, u64)],
) -> fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in samples {
        ConstGauge::new(*value).encode(metric.encode_family(labels)?)?;
    }
    Ok(())
}

fn partition_samples(state: &State) -> [(&'static str, &'static str, Samples); 2] {
    let mut first = Vec::new();
    let mut next = Vec::new();
    for topic in state.topics() {
        for partition in 0..topic.partitions {
            let (f, n) = state
                .partition_range(&topic.name, partition)
                .unwrap_or((0, 0));
            let labels = vec![
                ("topic", topic.name.clone()),
                ("partition", partition.to_string()),
            ];
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

fn group_samples(state: &State) -> [(&'static str, &'static str, Samples); 3] {
    let mut generations = Vec::new();
    let mut committed = Vec::new();
    let mut members = Vec::new();
    for (group, info) in state.groups() {
        let labels = vec![("group", group.to_string())];
        generations.push((labels.clone(), info.generation));
        members.push((labels, info.members.len() as u64));
        for (topic, partitions) in &info.offsets {
            for (partition, offset) in partitions {
                let labels = vec![
                    ("group", group.to_string()),
                    ("topic", topic.to_string()),
                    ("partition", partition.to_string()),
                ];
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

#[cfg(test)]
mod tests {
    use prometheus_client::collector::Collector;
    use prometheus_client::encoding::DescriptorEncoder;
    use prometheus_client::registry::Registry;

    #[derive(Debug)]
    struct Labelled;

    impl Collector for Labelled {
        fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
            let samples = [(vec![("topic", "a\"b\\c\nd".to_owned())], 7)];
            super::encode_gauge(&mut encoder, "sluice_test", "A test.", &samples)
        }
    }

    /// Label values are escaped as the text format wants: backslash,
    /// double quote and newline.
    #[test]
    fn label_values_are_escaped() {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Labelled));
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &registry).unwrap();
        assert_eq!(
            out,
            "# HELP sluice_test A test.\n# TYPE sluice_test gauge\n\
             sluice_test{topic=\"a\\\"b\\\\c\\nd\"} 7\n"
        );
    }
}

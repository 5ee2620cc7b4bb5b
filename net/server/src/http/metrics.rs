//! `GET /metrics`: one `prometheus-client` registry holding the bus's
//! collector (`sluice_raft_*`, `sluice_partition_*`, `sluice_group_*`),
//! the server's connection counters (`sluice_server_*`) and the chain
//! check's (`sluice_chain_*`), encoded in the Prometheus text format at
//! each scrape.

use std::fmt;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use sluice_client::tcp::ServerStats;
use sluice_core::bus::Bus;

use super::HttpState;
use crate::chain_check::ChainCheckMetrics;

/// The node's registry: the bus, the server's connections, the chain
/// check.
pub(crate) fn registry(
    bus: &Bus,
    server: Arc<ServerStats>,
    chain: Arc<ChainCheckMetrics>,
) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(bus.collector()));
    registry.register_collector(Box::new(ServerCollector(server)));
    registry.register_collector(Box::new(chain));
    registry
}

pub(crate) async fn get(State(state): State<Arc<HttpState>>) -> Response {
    let mut body = String::new();
    match prometheus_client::encoding::prometheus_text::encode(&mut body, &state.registry) {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            )],
            body,
        )
            .into_response(),
        Err(fmt::Error) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "the metrics could not be encoded\n",
        )
            .into_response(),
    }
}

/// The TCP server's connection counters.
#[derive(Debug)]
struct ServerCollector(Arc<ServerStats>);

impl Collector for ServerCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let stats = &self.0;
        let gauge = ConstGauge::new(stats.connections_open());
        gauge.encode(encoder.encode_descriptor(
            "sluice_server_connections_open",
            "Connections the node holds.",
            None,
            gauge.metric_type(),
        )?)?;
        let counters = [
            (
                "sluice_server_connections_refused",
                "Connections closed at accept: the per-node or per-address bound was reached.",
                stats.connections_refused(),
            ),
            (
                "sluice_server_connections_idle_closed",
                "Connections closed after the idle timeout.",
                stats.closed_idle(),
            ),
            (
                "sluice_server_connections_slow_frame_closed",
                "Connections closed because a frame did not arrive whole within the \
                 frame-read timeout.",
                stats.closed_slow_frame(),
            ),
        ];
        for (name, help, value) in counters {
            let counter = ConstCounter::new(value);
            // The encoder appends `_total` to a counter's name.
            counter.encode(encoder.encode_descriptor(
                name,
                help,
                None,
                counter.metric_type(),
            )?)?;
        }
        Ok(())
    }
}

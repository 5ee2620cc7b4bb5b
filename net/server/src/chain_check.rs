//! The chain check: every node, periodically, compares the chain hash it
//! stores at the latest signed checkpoint's index with its peers' and with
//! the checkpoint's signed head, and raises a metric and a log line when
//! they differ.
//!
//! Replicas of one log hold the same chain hashes at every index (the hash
//! covers only replicated fields, `engine/core/src/log/FORMAT.md`), so two
//! nodes that store different hashes at an applied index hold different
//! histories: one of the logs was changed on disk after it was written
//! (re-chained, so that each log alone still verifies). A node whose hash
//! differs from the signed head is itself the changed one, or the signer
//! lied.
//!
//! The checkpoints are found by reading the applied entries since the last
//! look, at most `CHECKPOINT_SCAN_ENTRIES_MAX` of them each time (the
//! newest). A peer is asked with `ClientRequest::ChainHash` over the
//! cluster's transport; one that has not applied the index yet, no longer
//! holds it, or does not answer is skipped until the next round.
//!
//! Metrics: `sluice_chain_checks_total`, `sluice_chain_checked_index`,
//! `sluice_chain_divergent{peer}` (1 while that peer's hash differs),
//! `sluice_chain_divergences_total` (rounds that found one) and
//! `sluice_chain_checkpoint_mismatch` (1 while this node's own hash differs
//! from the signed head).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use tokio::task::JoinHandle;
use tracing::{debug, error, info};

use sluice_client::protocol::{CLIENT_GROUP, ClientRequest, ClientResponse, decode, encode};
use sluice_client::tcp::TcpTransport;
use sluice_core::bus::{Bus, BusError, Checkpoint, encode_gauge};
use sluice_model::records::Hash;
use sluice_model::transport::{MessageKind, NodeId, Request, Transport};

/// What the chain check counts; a collector for the node's registry.
#[derive(Debug, Default)]
pub struct ChainCheckMetrics {
    checks: AtomicU64,
    checked_index: AtomicU64,
    divergences: AtomicU64,
    checkpoint_mismatch: AtomicU64,
    /// Peers whose hash differed at the last comparison, with the index.
    divergent: Mutex<BTreeMap<NodeId, u64>>,
}

impl ChainCheckMetrics {
    /// Peers whose chain hash differed from this node's at the last
    /// comparison, with the checkpoint index compared.
    pub fn divergent(&self) -> BTreeMap<NodeId, u64> {
        self.divergent.lock().expect("chain check lock").clone()
    }
}

impl Collector for ChainCheckMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        for (name, help, value) in [
            (
                "sluice_chain_checks",
                "Comparisons of this node's chain hash at a checkpoint with its peers'.",
                self.checks.load(Ordering::Relaxed),
            ),
            (
                "sluice_chain_divergences",
                "Comparisons that found a peer storing another chain hash.",
                self.divergences.load(Ordering::Relaxed),
            ),
        ] {
            let counter = ConstCounter::new(value);
            counter.encode(encoder.encode_descriptor(
                name,
                help,
                None,
                counter.metric_type(),
            )?)?;
        }
        let no_labels: [(Vec<(&str, String)>, u64); 2] = [
            (Vec::new(), self.checked_index.load(Ordering::Relaxed)),
            (Vec::new(), self.checkpoint_mismatch.load(Ordering::Relaxed)),
        ];
        encode_gauge(
            &mut encoder,
            "sluice_chain_checked_index",
            "The checkpoint index last compared.",
            &no_labels[..1],
        )?;
        encode_gauge(
            &mut encoder,
            "sluice_chain_checkpoint_mismatch",
            "1 if this node's chain hash differs from the signed checkpoint's head.",
            &no_labels[1..],
        )?;
        let divergent: Vec<_> = self
            .divergent()
            .into_keys()
            .map(|peer| (vec![("peer", peer.to_string())], 1))
            .collect();
        encode_gauge(
            &mut encoder,
            "sluice_chain_divergent",
            "1 for each peer storing another chain hash at the checkpoint index.",
            &divergent,
        )
    }
}

/// Answers a peer's [`ClientRequest::ChainHash`].
pub(crate) fn answer(bus: &Bus, index: u64) -> Result<ClientResponse, BusError> {
    Ok(ClientResponse::ChainHash(bus.applied_chain_hash(index)?))
}

/// Runs the check every `interval` until the task is aborted.
pub(crate) fn start(
    bus: Bus,
    transport: TcpTransport,
    interval: Duration,
    metrics: Arc<ChainCheckMetrics>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut check = Check {
            bus,
            transport,
            metrics,
            scanned_next: 0,
            latest: None,
        };
        loop {
            tokio::time::sleep(interval).await;
            if let Err(failure) = check.round().await {
                debug!(%failure, "chain check skipped; will retry");
            }
        }
    })
}

struct Check {
    bus: Bus,
    transport: TcpTransport,
    metrics: Arc<ChainCheckMetrics>,
    /// The next applied index to look at for checkpoints.
    scanned_next: u64,
    /// The newest checkpoint seen.
    latest: Option<Checkpoint>,
}

impl Check {
    async fn round(&mut self) -> Result<(), BusError> {
        let (applied, _) = self.bus.applied_chain_head()?;
        let found = self
            .bus
            .applied_checkpoints(self.scanned_next, applied + 1)?;
        self.scanned_next = applied + 1;
        if let Some((_, checkpoint)) = found.into_iter().last() {
            self.latest = Some(checkpoint);
        }
        let Some(checkpoint) = &self.latest else {
            return Ok(());
        };
        let index = checkpoint.index;
        let Some(own) = self.bus.applied_chain_hash(index)? else {
            return Ok(());
        };
        let mismatch = own != checkpoint.head;
        if mismatch && self.metrics.checkpoint_mismatch.load(Ordering::Relaxed) == 0 {
            error!(
                index,
                here = %hex(&own),
                signed = %hex(&checkpoint.head),
                "this node's chain hash differs from the signed checkpoint: its log was \
                 changed after it was written; run `sluice verify` on its data directory"
            );
        }
        let metrics = &self.metrics;
        metrics
            .checkpoint_mismatch
            .store(u64::from(mismatch), Ordering::Relaxed);
        let answers = self.ask_peers(index).await;
        let mut divergent = metrics.divergent.lock().expect("chain check lock");
        let was_divergent = !divergent.is_empty();
        let mut found = false;
        for (peer, theirs) in answers {
            if theirs == own {
                divergent.remove(&peer);
                continue;
            }
            found = true;
            if divergent.insert(peer, index) != Some(index) {
                error!(
                    peer,
                    index,
                    here = %hex(&own),
                    there = %hex(&theirs),
                    "chain divergence: this node and peer {peer} store different chain hashes \
                     at checkpoint index {index}, so one of the two logs was changed; run \
                     `sluice verify --trust KEY` on both data directories"
                );
            }
        }
        metrics.checks.fetch_add(1, Ordering::Relaxed);
        metrics.checked_index.store(index, Ordering::Relaxed);
        if found {
            metrics.divergences.fetch_add(1, Ordering::Relaxed);
        } else if was_divergent && divergent.is_empty() {
            info!(index, "chain check: every peer agrees again");
        }
        Ok(())
    }

    /// The hash each peer that answered stores at `index`.
    async fn ask_peers(&self, index: u64) -> Vec<(NodeId, Hash)> {
        let this = self.bus.node_id();
        let peers: Vec<NodeId> = {
            let metrics = self.bus.raft().metrics();
            let metrics = metrics.borrow_watched();
            let membership = metrics.membership_config.membership();
            membership
                .nodes()
                .map(|(id, _)| *id)
                .filter(|id| *id != this)
                .collect()
        };
        let asked = peers.into_iter().map(|peer| async move {
            let request = Request {
                kind: MessageKind::Client as u8,
                group: CLIENT_GROUP,
                body: encode(&ClientRequest::ChainHash { index }),
            };
            let answer = match self.transport.call(peer, request).await {
                Ok(answer) => answer,
                Err(failure) => {
                    debug!(peer, %failure, "chain check: the peer did not answer");
                    return None;
                }
            };
            match decode::<ClientResponse>(&answer, "response") {
                Ok(ClientResponse::ChainHash(hash)) => hash.map(|hash| (peer, hash)),
                other => {
                    debug!(
                        peer,
                        ?other,
                        "chain check: the peer answered something else"
                    );
                    None
                }
            }
        });
        futures_util::future::join_all(asked)
            .await
            .into_iter()
            .flatten()
            .collect()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

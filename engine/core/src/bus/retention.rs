//! Retention: which prefix of the log may go, decided by the leader and
//! carried through the log, so every node drops the same prefix and no
//! node's skewed clock deletes data early elsewhere.
//!
//! Topics share one log, so a prefix can go only when every topic's policy
//! lets it go: the most permissive policy decides (a topic without a limit
//! keeps everything), and some topics keep more than they asked for. The
//! point never passes what a consumer group still needs (its committed
//! offsets) unless `BusConfig::unconsumed` is `Unconsumed::Drop`.
//!
//! Steps: (1) the leader computes the point from whole sealed segments by
//! size and by age on its clock; (2) proposes `Op::Retention`, which every
//! state machine applies (partition first offsets move up); (3) builds a
//! snapshot covering it; (4) asks openraft to purge the log up to it. A
//! node that caught up by a snapshot holds bodies below Raft's purge point
//! (the snapshot's tail, `raft/snapshot.rs`); those it removes itself
//! (`LogStoreReader::purge_bodies_before`), since openraft no longer knows
//! them.

use crate::io::Env;
use std::time::Duration;

use openraft::type_config::TypeConfigExt;

use crate::log::Retention;
use crate::raft::TypeConfig;
use sluice_model::state::{Op, Response, State};

use super::{Bus, BusError};

/// The log-wide policy the topics' policies allow: the most permissive.
pub(crate) fn policy(state: &State) -> Option<Retention> {
    let mut size_max: Option<u64> = Some(0);
    let mut age_ms_max: Option<u64> = Some(0);
    let mut any = false;
    for topic in state.topics() {
        any = true;
        size_max = size_max
            .zip(topic.config.retention_bytes)
            .map(|(a, b)| a.max(b));
        age_ms_max = age_ms_max
            .zip(topic.config.retention_ms)
            .map(|(a, b)| a.max(b));
    }
    if !any || (size_max.is_none() && age_ms_max.is_none()) {
        return None;
    }
    Some(Retention {
        size_max,
        age_max: age_ms_max.map(Duration::from_millis),
    })
}

impl<E: Env> Bus<E> {
    /// Applies the topics' retention now (it also runs every
    /// `BusConfig::retention_interval`); returns the first log index kept.
    /// The leader decides the point and proposes it through the log; every
    /// node (leader or follower) then drops its own log before the point
    /// its state machine has applied.
    pub async fn enforce_retention(&self) -> Result<u64, BusError> {
        let inner = self.inner();
        let leader = inner.raft.current_leader().await == Some(inner.config.node_id);
        if leader {
            self.propose_retention().await?;
        }
        let point = inner.view.read().purged_before();
        self.purge_locally(point).await?;
        Ok(point)
    }

    /// On the leader: decides the retention point and, when it moved,
    /// proposes it through the log.
    async fn propose_retention(&self) -> Result<(), BusError> {
        let inner = self.inner();
        let (policy, needed, purged) = {
            let state = inner.view.read();
            (
                policy(&state),
                state.min_needed_log_index(),
                state.purged_before(),
            )
        };
        let Some(policy) = policy else {
            return Ok(());
        };
        let mut point = inner.reader.retention_point(&policy)?;
        if inner.config.unconsumed == super::Unconsumed::Keep {
            point = point.min(needed.unwrap_or(u64::MAX));
        }
        if point <= purged {
            return Ok(());
        }
        let op = Op::Retention {
            log_index_before: point,
        };
        if let Response::Error(error) = self.write(op).await? {
            return Err(error.into());
        }
        Ok(())
    }

    /// On every node: drops this node's log before `point` (which the
    /// state machine has applied), after a snapshot covers it. Bodies
    /// below Raft's purge point (kept by a snapshot install with a tail)
    /// go without openraft, which no longer knows them.
    async fn purge_locally(&self, point: u64) -> Result<(), BusError> {
        let inner = self.inner();
        let raft = &inner.raft;
        let (first, _) = inner.reader.bounds();
        if point <= first {
            return Ok(());
        }
        if point <= inner.reader.raft_first() {
            let reader = inner.reader.clone();
            TypeConfig::<E>::spawn_blocking(move || reader.purge_bodies_before(point))
                .await
                .map_err(BusError::raft)??;
            return Ok(());
        }
        raft.trigger().snapshot().await.map_err(BusError::raft)?;
        raft.wait(Some(inner.config.open_timeout))
            .metrics(
                |m| m.snapshot.is_some_and(|s| s.index + 1 >= point),
                "retention: a snapshot covers the purge point",
            )
            .await
            .map_err(BusError::raft)?;
        raft.trigger()
            .purge_log(point - 1)
            .await
            .map_err(BusError::raft)?;
        raft.wait(Some(inner.config.open_timeout))
            .metrics(
                |m| m.purged.is_some_and(|p| p.index + 1 >= point),
                "retention: the log is purged up to the point",
            )
            .await
            .map_err(BusError::raft)?;
        Ok(())
    }
}

/// Runs retention every `interval` while the bus is open.
pub(crate) async fn run<E: Env>(bus: std::sync::Weak<super::Inner<E>>, interval: Duration) {
    loop {
        TypeConfig::<E>::sleep(interval).await;
        let Some(inner) = bus.upgrade() else { return };
        let bus = Bus { inner };
        if let Err(error) = bus.enforce_retention().await {
            tracing::warn!(%error, "retention failed; will retry");
        }
    }
}

//! Retention: which prefix of the log may go, decided by the leader and
//! carried through the log, so every node drops the same prefix and no
//! node's skewed clock deletes data early elsewhere.
//!
//! Topics share one log, so a prefix can go only when every topic's policy
//! lets it go: the point is the smallest any topic's policy allows (a
//! topic without a limit keeps everything), and some topics keep more
//! than they asked for. Topics get a 7-day policy unless created or
//! altered otherwise (`TopicConfig::default`). The point never passes what
//! a consumer group still needs (its committed offsets) unless
//! `BusConfig::unconsumed` is `Unconsumed::Drop`.
//!
//! Steps: (1) the leader computes the point from whole sealed segments by
//! size and by age on its clock, for each distinct policy; (2) proposes `Op::Retention`, which every
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
use sluice_model::state::{Op, Response, State, TopicConfig};

use super::{Bus, BusError};

/// The distinct retention policies of the topics. The log may be trimmed
/// up to the smallest point any of them allows, so that every topic keeps
/// at least what it asked for. `None` when there is no topic, or when one
/// keeps everything ([`TopicConfig::UNLIMITED`]): then nothing may go.
pub(crate) fn policies(state: &State) -> Option<Vec<Retention>> {
    let mut configs: Vec<TopicConfig> = Vec::new();
    for topic in state.topics() {
        if topic.config.is_unlimited() {
            return None;
        }
        if !configs.contains(&topic.config) {
            configs.push(topic.config);
        }
    }
    if configs.is_empty() {
        return None;
    }
    let policies = configs
        .into_iter()
        .map(|config| Retention {
            size_max: config.retention_bytes,
            age_max: config.retention_ms.map(Duration::from_millis),
        })
        .collect();
    Some(policies)
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
        let (policies, needed, purged) = {
            let state = inner.view.read();
            (
                policies(&state),
                state.min_needed_log_index(),
                state.purged_before(),
            )
        };
        let Some(policies) = policies else {
            return Ok(());
        };
        let mut point = u64::MAX;
        for policy in &policies {
            point = point.min(inner.reader.retention_point(policy)?);
        }
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, UNIX_EPOCH};

    use sluice_model::state::TopicConfig;

    use crate::bus::{Bus, BusConfig, Message};
    use crate::io::{CrashDisk, CrashEnv, ManualClock};

    const HOUR_MS: u64 = 3_600_000;

    /// Each topic keeps what its own policy asks for and no more is kept
    /// than the strictest combination needs: a topic limited by age and
    /// one limited by size let the log go where both allow, which a
    /// single log-wide policy (the most permissive limit of each kind)
    /// would not, since neither kind is set on every topic. An unlimited
    /// topic keeps everything until it is altered.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_log_goes_as_far_as_every_topic_allows() {
        let disk = CrashDisk::new(26);
        let clock = Arc::new(ManualClock::new(
            UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        ));
        let segment_size = 8192;
        let config = BusConfig {
            segment_size,
            retention_interval: None,
            ..BusConfig::default()
        };
        let bus: Bus<CrashEnv> = Bus::open_on(disk, clock.clone(), config).await.unwrap();
        let recent = TopicConfig {
            retention_ms: Some(HOUR_MS),
            retention_bytes: None,
        };
        let small = TopicConfig {
            retention_ms: None,
            retention_bytes: Some(20_000),
        };
        bus.create_topic("recent", 1, recent).await.unwrap();
        bus.create_topic("small", 1, small).await.unwrap();
        bus.create_topic("forever", 1, TopicConfig::UNLIMITED)
            .await
            .unwrap();
        let mut producer = bus.producer().await.unwrap();
        for i in 0..300 {
            producer
                .publish(Message::new("small", format!("{i:0>200}")))
                .await
                .unwrap();
        }
        clock.advance(Duration::from_millis(2 * HOUR_MS));
        bus.enforce_retention().await.unwrap();
        assert_eq!(
            bus.describe_topic("small").unwrap().partitions[0],
            (0, 300),
            "an unlimited topic keeps the whole log"
        );
        let altered = bus
            .alter_topic("forever", Some(Some(HOUR_MS)), None)
            .await
            .unwrap();
        assert_eq!(altered, recent);
        bus.enforce_retention().await.unwrap();
        let (first, next) = bus.describe_topic("small").unwrap().partitions[0];
        assert_eq!(next, 300);
        assert!(first > 100, "old segments went: first offset {first}");
        let bytes: u64 = bus.segments().iter().map(|segment| segment.size).sum();
        assert!(
            (20_000..=20_000 + 2 * segment_size).contains(&bytes),
            "the log holds {bytes} bytes; `small` asked for the newest 20000"
        );
    }
}

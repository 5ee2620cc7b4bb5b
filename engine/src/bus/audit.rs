//! The bus's side of the audit trail: signed checkpoints of the log's hash
//! chain head, proposed through Raft so they are in the log themselves.
//!
//! A checkpoint signs the chain hash at the last *applied* index: applied
//! entries are committed and can never be truncated, so the signed hash
//! stays in the log (a checkpoint of an uncommitted entry could name a hash
//! a leader change later removes).

use std::sync::Weak;
use std::time::Duration;

use openraft::async_runtime::watch::WatchReceiver;
use openraft::type_config::TypeConfigExt;
use openraft_rt::AsyncRuntime;

use crate::audit::{Checkpoint, CheckpointPolicy, Erasure, KeyPair};
use crate::io::{Disk, wall_unix_ms};
use crate::raft::TypeConfig;
use crate::state::{Command, Op};

use super::{Bus, BusError, Inner};

/// Longest sleep of the checkpoint task between looks at the log.
const CHECKPOINT_TICK_MAX: Duration = Duration::from_millis(250);

impl<RT: AsyncRuntime, D: Disk + Clone> Bus<RT, D> {
    /// Signs the chain head at the last applied entry with `key` and
    /// appends it as an `Op::Checkpoint` entry; returns the checkpoint and
    /// the index of the entry that holds it.
    pub async fn checkpoint(&self, key: &KeyPair) -> Result<(Checkpoint, u64), BusError> {
        let inner = self.inner();
        let index = inner.view.applied().borrow_watched().index;
        let head = inner.reader.chain_hash_at(index)?;
        let checkpoint = Checkpoint::sign(key, index, head);
        let command = Command {
            timestamp_ms: wall_unix_ms(&*inner.clock),
            op: Op::Checkpoint(checkpoint.clone()),
        };
        let written = inner
            .raft
            .client_write(command)
            .await
            .map_err(BusError::raft)?;
        Ok((checkpoint, written.log_id.index))
    }

    /// Erases `subject`: appends an `Op::Erase` tombstone signed with
    /// `key`, after which every read through the bus masks the subject's
    /// payloads. Returns the tombstone and the index of its entry.
    pub async fn erase(
        &self,
        key: &KeyPair,
        subject: &str,
        reason: &str,
    ) -> Result<(Erasure, u64), BusError> {
        if subject.is_empty() {
            return Err(BusError::Invalid(
                "an erasure needs a non-empty subject".into(),
            ));
        }
        let inner = self.inner();
        let now_ms = wall_unix_ms(&*inner.clock);
        let erasure = Erasure::sign(key, subject, reason, now_ms);
        let command = Command {
            timestamp_ms: now_ms,
            op: Op::Erase(erasure.clone()),
        };
        let written = inner
            .raft
            .client_write(command)
            .await
            .map_err(BusError::raft)?;
        Ok((erasure, written.log_id.index))
    }

    /// Signs a checkpoint whenever `policy` says one is due, until every
    /// clone of the bus is dropped. Failures (a follower, a closing node)
    /// are logged and retried at the next tick.
    pub fn start_checkpoints(&self, key: KeyPair, policy: CheckpointPolicy) {
        assert!(
            policy.entries > 0,
            "a checkpoint needs at least one entry to sign"
        );
        let weak = std::sync::Arc::downgrade(&self.inner);
        // Detached: ends once every clone of the bus is dropped.
        drop(TypeConfig::<RT>::spawn(run(weak, key, policy)));
    }
}

async fn run<RT: AsyncRuntime, D: Disk + Clone>(
    bus: Weak<Inner<RT, D>>,
    key: KeyPair,
    policy: CheckpointPolicy,
) {
    let tick = policy.interval.min(CHECKPOINT_TICK_MAX);
    let mut last_entry = None::<u64>;
    let mut last_at = None::<Duration>;
    loop {
        TypeConfig::<RT>::sleep(tick).await;
        let Some(inner) = bus.upgrade() else { return };
        let bus = Bus { inner };
        let applied = bus.inner().view.applied().borrow_watched().index;
        let now = bus.inner().clock.monotonic();
        let since = last_entry.map_or(applied + 1, |entry| applied.saturating_sub(entry));
        let elapsed = last_at.map_or(Duration::MAX, |at| now.saturating_sub(at));
        if !policy.due(since, elapsed) {
            continue;
        }
        match bus.checkpoint(&key).await {
            Ok((_, entry)) => {
                last_entry = Some(entry);
                last_at = Some(now);
            }
            Err(error) => tracing::debug!(%error, "checkpoint not written; will retry"),
        }
    }
}

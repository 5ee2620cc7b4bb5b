//! The bus's side of the audit trail: signed checkpoints of the log's hash
//! chain head, proposed through Raft so they are in the log themselves;
//! signed erasures; and the check of producer signatures before an event
//! is queued.
//!
//! The bus signs and verifies through two traits, [`Signer`] and
//! [`SignatureCheck`], which `sluice-audit` implements with SM2: the engine
//! itself links no signature scheme.
//!
//! A checkpoint signs the chain hash at the last *applied* index: applied
//! entries are committed and can never be truncated, so the signed hash
//! stays in the log (a checkpoint of an uncommitted entry could name a hash
//! a leader change later removes).

use crate::io::Env;
use sluice_model::constants::{CHECKPOINT_SCAN_ENTRIES_MAX, CHECKPOINT_TICK_MAX};
use std::fmt;
use std::sync::{Arc, Weak};
use std::time::Duration;

use openraft::async_runtime::watch::WatchReceiver;
use openraft::type_config::TypeConfigExt;

use crate::io::wall_unix_ms;
use crate::raft::TypeConfig;
use sluice_model::records::{HEADER_SIGNATURE, HEADER_SIGNER, Hash, SignedParts};
use sluice_model::state::{Command, Op};

pub use sluice_model::records::{Checkpoint, Erasure};

use super::{Bus, BusError, Inner};

/// When the bus signs a checkpoint: every `entries` log entries or every
/// `interval`, whichever comes first, and only if the log grew since the
/// last one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointPolicy {
    /// Entries (batches and other Raft entries) between checkpoints.
    pub entries: u64,
    /// Longest time between checkpoints while the log grows.
    pub interval: std::time::Duration,
}

impl Default for CheckpointPolicy {
    fn default() -> Self {
        CheckpointPolicy {
            entries: 1024,
            interval: std::time::Duration::from_secs(10),
        }
    }
}

impl CheckpointPolicy {
    /// Whether a checkpoint is due, `entries_since` entries and `elapsed`
    /// after the last one.
    pub fn due(&self, entries_since: u64, elapsed: std::time::Duration) -> bool {
        entries_since >= self.entries || (entries_since > 0 && elapsed >= self.interval)
    }
}

/// Signs audit records for the bus; `sluice-audit`'s SM2 `KeyPair`
/// implements it.
pub trait Signer: Send + Sync + fmt::Debug + 'static {
    /// Signs `head`, the chain hash at log index `index`.
    fn sign_checkpoint(&self, index: u64, head: Hash) -> Checkpoint;
    /// Signs a request to erase `subject`, made at `requested_ms`.
    fn sign_erasure(&self, subject: &str, reason: &str, requested_ms: u64) -> Erasure;
}

/// Verifies the signatures a bus is handed: producer signatures on events
/// (checked on the leader before an event is queued) and erasure requests
/// from clients. `sluice-audit` implements it with SM2.
pub trait SignatureCheck: Send + Sync + fmt::Debug + 'static {
    /// Checks a signed event's signature; called only for events that
    /// carry a signature header.
    fn check_event(&self, parts: &SignedParts<'_>) -> Result<(), SignatureRefused>;
    /// Checks an erasure request's signature.
    fn check_erasure(&self, erasure: &Erasure) -> Result<(), SignatureRefused>;
}

/// Why a signature was refused, with the verifier's own error as cause.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct SignatureRefused(pub Box<dyn std::error::Error + Send + Sync>);

/// The check of a bus opened without a verifier: it cannot verify, so it
/// refuses every signed event and every erasure rather than accept them
/// unchecked.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoSignatureCheck;

#[derive(Debug, thiserror::Error)]
#[error(
    "this bus has no signature verifier (open it through the `sluice` crate, or set BusConfig::signatures)"
)]
struct NoVerifier;

impl SignatureCheck for NoSignatureCheck {
    fn check_event(&self, _: &SignedParts<'_>) -> Result<(), SignatureRefused> {
        Err(SignatureRefused(Box::new(NoVerifier)))
    }
    fn check_erasure(&self, _: &Erasure) -> Result<(), SignatureRefused> {
        Err(SignatureRefused(Box::new(NoVerifier)))
    }
}

/// Checks `parts`' producer signature if it carries one; an unsigned event
/// passes.
pub(crate) fn check_event(
    check: &dyn SignatureCheck,
    parts: &SignedParts<'_>,
) -> Result<(), SignatureRefused> {
    let signed = parts
        .headers
        .user
        .iter()
        .any(|(name, _)| name == HEADER_SIGNATURE || name == HEADER_SIGNER);
    if signed {
        check.check_event(parts)
    } else {
        Ok(())
    }
}

impl<E: Env> Bus<E> {
    /// Signs the chain head at the last applied entry with `signer` and
    /// appends it as an `Op::Checkpoint` entry; returns the checkpoint and
    /// the index of the entry that holds it.
    pub async fn checkpoint(&self, signer: &dyn Signer) -> Result<(Checkpoint, u64), BusError> {
        let inner = self.inner();
        let index = inner.view.applied().borrow_watched().index;
        let head = inner.reader.chain_hash_at(index)?;
        let checkpoint = signer.sign_checkpoint(index, head);
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

    /// Erases `subject`: appends an `Op::Erase` tombstone signed by
    /// `signer`, after which every read through the bus masks the subject's
    /// payloads. Returns the tombstone and the index of its entry.
    pub async fn erase(
        &self,
        signer: &dyn Signer,
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
        let erasure = signer.sign_erasure(subject, reason, now_ms);
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

    /// The last applied index and the chain hash stored there: what this
    /// node vouches for (applied entries are committed and stay).
    pub fn applied_chain_head(&self) -> Result<(u64, Hash), BusError> {
        let inner = self.inner();
        let index = inner.view.applied().borrow_watched().index;
        Ok((index, inner.reader.chain_hash_at(index)?))
    }

    /// The chain hash stored at `index`, if this node has applied that
    /// entry and still holds it; `None` otherwise (not applied yet, or
    /// dropped by retention). What peers compare (`ChainCheck` in
    /// `sluice-server`).
    pub fn applied_chain_hash(&self, index: u64) -> Result<Option<Hash>, BusError> {
        let inner = self.inner();
        let applied = inner.view.applied().borrow_watched().index;
        let (first, next) = inner.reader.bounds();
        if index > applied || index < first || index >= next {
            return Ok(None);
        }
        Ok(Some(inner.reader.chain_hash_at(index)?))
    }

    /// The checkpoints among the applied entries `start..end` (at most
    /// [`CHECKPOINT_SCAN_ENTRIES_MAX`] of them are read: the last ones),
    /// with the index of the entry that holds each, in log order. Entries
    /// retention dropped are skipped.
    pub fn applied_checkpoints(
        &self,
        start: u64,
        end: u64,
    ) -> Result<Vec<(u64, Checkpoint)>, BusError> {
        let inner = self.inner();
        let applied = inner.view.applied().borrow_watched().index;
        let end = end.min(applied + 1);
        let start = start.max(end.saturating_sub(CHECKPOINT_SCAN_ENTRIES_MAX));
        let mut records = Vec::new();
        inner.reader.read_records(start, end, &mut records)?;
        let mut checkpoints = Vec::new();
        for record in &records {
            let Ok(entry) = crate::raft::codec::decode(record) else {
                continue;
            };
            if let openraft::EntryPayload::Normal(command) = entry.payload {
                if let Op::Checkpoint(checkpoint) = command.op.applied() {
                    checkpoints.push((record.index, checkpoint.clone()));
                }
            }
        }
        Ok(checkpoints)
    }

    /// Signs a checkpoint whenever `policy` says one is due, until every
    /// clone of the bus is dropped. Failures (a follower, a closing node)
    /// are logged and retried at the next tick.
    pub fn start_checkpoints(&self, signer: Arc<dyn Signer>, policy: CheckpointPolicy) {
        assert!(
            policy.entries > 0,
            "a checkpoint needs at least one entry to sign"
        );
        let weak = Arc::downgrade(&self.inner);
        // Detached: ends once every clone of the bus is dropped.
        drop(TypeConfig::<E>::spawn(run(weak, signer, policy)));
    }
}

async fn run<E: Env>(bus: Weak<Inner<E>>, signer: Arc<dyn Signer>, policy: CheckpointPolicy) {
    let tick = policy.interval.min(CHECKPOINT_TICK_MAX);
    let mut last_entry = None::<u64>;
    let mut last_at = None::<Duration>;
    loop {
        TypeConfig::<E>::sleep(tick).await;
        let Some(inner) = bus.upgrade() else { return };
        let bus = Bus { inner };
        let applied = bus.inner().view.applied().borrow_watched().index;
        let now = bus.inner().clock.monotonic();
        let since = last_entry.map_or(applied + 1, |entry| applied.saturating_sub(entry));
        let elapsed = last_at.map_or(Duration::MAX, |at| now.saturating_sub(at));
        if !policy.due(since, elapsed) {
            continue;
        }
        match bus.checkpoint(&*signer).await {
            Ok((_, entry)) => {
                last_entry = Some(entry);
                last_at = Some(now);
            }
            Err(error) => tracing::debug!(%error, "checkpoint not written; will retry"),
        }
    }
}

//! Signed checkpoints of the hash chain head.
//!
//! A checkpoint names a log index `i` and the chain hash `hash(i)` of the
//! frame there (`log/FORMAT.md`), signed with the node's SM2 key. It is
//! proposed as an ordinary Raft entry (`Op::Checkpoint`), so it is itself
//! in the log, chained and replicated; the verifier recomputes `hash(i)`
//! from the frames and checks both the hash and the signature. The chain
//! alone can be recomputed by anyone who rewrites the log; a checkpoint
//! cannot be forged without the key.
//!
//! Signed message: `"sluice checkpoint v1\0" ‖ index (u64 LE) ‖ hash(i)`.

use serde::{Deserialize, Serialize};

use super::keys::{self, KeyError, KeyPair};
use crate::log::frame::Hash;

const DOMAIN: &[u8] = b"sluice checkpoint v1\0";

/// A signed chain head; see the module docs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The log index whose chain hash is signed.
    pub index: u64,
    /// `hash(index)`.
    pub head: Hash,
    /// The signer's distinguishing id.
    pub distid: String,
    /// The signer's public key, SEC1 uncompressed.
    pub public_key: Vec<u8>,
    /// SM2 signature `r ‖ s` over [`Checkpoint::message`].
    pub signature: Vec<u8>,
}

impl Checkpoint {
    /// Signs `head`, the chain hash at `index`, with `key`.
    pub fn sign(key: &KeyPair, index: u64, head: Hash) -> Checkpoint {
        let signature = key.sign(&Self::message(index, &head)).to_vec();
        Checkpoint {
            index,
            head,
            distid: key.distid().to_owned(),
            public_key: key.public_key(),
            signature,
        }
    }

    /// The bytes that are signed.
    pub fn message(index: u64, head: &Hash) -> Vec<u8> {
        let mut out = Vec::with_capacity(DOMAIN.len() + 8 + 32);
        out.extend_from_slice(DOMAIN);
        out.extend_from_slice(&index.to_le_bytes());
        out.extend_from_slice(head);
        out
    }

    /// Checks the signature over this checkpoint's own index and head. The
    /// caller also checks that `head` is the chain hash at `index`.
    pub fn verify_signature(&self) -> Result<(), KeyError> {
        keys::verify(
            &self.public_key,
            &self.distid,
            &Self::message(self.index, &self.head),
            &self.signature,
        )
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_verifies_and_any_change_breaks_it() {
        let key = KeyPair::generate(keys::DISTID_DEFAULT).unwrap();
        let checkpoint = Checkpoint::sign(&key, 42, [7; 32]);
        checkpoint.verify_signature().unwrap();
        let mut moved = checkpoint.clone();
        moved.index = 43;
        assert!(moved.verify_signature().is_err());
        let mut other_head = checkpoint.clone();
        other_head.head[0] ^= 1;
        assert!(other_head.verify_signature().is_err());
        let mut other_id = checkpoint;
        other_id.distid = "someone else".into();
        assert!(other_id.verify_signature().is_err());
    }

    #[test]
    fn the_policy_fires_by_count_or_by_time_only_when_the_log_grew() {
        let policy = CheckpointPolicy {
            entries: 10,
            interval: std::time::Duration::from_secs(5),
        };
        assert!(policy.due(10, std::time::Duration::ZERO));
        assert!(!policy.due(9, std::time::Duration::from_secs(4)));
        assert!(policy.due(1, std::time::Duration::from_secs(5)));
        assert!(!policy.due(0, std::time::Duration::from_secs(500)));
    }
}

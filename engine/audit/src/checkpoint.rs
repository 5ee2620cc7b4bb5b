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

use sluice_model::records::Hash;

pub use sluice_model::records::Checkpoint;

use super::keys::{self, KeyError, KeyPair};

/// Signs `head`, the chain hash at `index`, with `key`.
pub fn sign(key: &KeyPair, index: u64, head: Hash) -> Checkpoint {
    let signature = key.sign(&Checkpoint::message(index, &head)).to_vec();
    Checkpoint {
        index,
        head,
        distid: key.distid().to_owned(),
        public_key: key.public_key(),
        signature,
    }
}

impl crate::VerifySignature for Checkpoint {
    fn verify_signature(&self) -> Result<(), KeyError> {
        verify_signature(self)
    }
}

/// Checks a checkpoint's signature over its own index and head. The caller
/// also checks that `head` is the chain hash at `index`.
pub fn verify_signature(checkpoint: &Checkpoint) -> Result<(), KeyError> {
    keys::verify(
        &checkpoint.public_key,
        &checkpoint.distid,
        &Checkpoint::message(checkpoint.index, &checkpoint.head),
        &checkpoint.signature,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::VerifySignature as _;

    #[test]
    fn a_checkpoint_verifies_and_any_change_breaks_it() {
        let key = KeyPair::generate(keys::DISTID_DEFAULT).unwrap();
        let checkpoint = sign(&key, 42, [7; 32]);
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
}

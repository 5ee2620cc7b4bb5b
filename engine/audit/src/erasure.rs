//! Erasure requests: a signed tombstone for a subject, carried through Raft
//! as `Op::Erase`, after which every read through the bus masks that
//! subject's payloads. The stored records are not touched (they stay in
//! the hash chain and still verify); the tombstone is itself a chained,
//! signed record, which the verifier checks like a checkpoint.
//!
//! An event's *subject* is its user header `subject` (UTF-8), or else its
//! key when that is non-empty UTF-8.
//!
//! Signed message: `"sluice erasure v1\0"`, then the subject, the reason
//! (each as u32 LE length and bytes) and `requested_ms` (u64 LE).

pub use sluice_model::records::{Erasure, HEADER_ERASED, HEADER_SUBJECT, mask_erased, subject_of};

use super::keys::{self, KeyError, KeyPair};

/// A request to erase `subject`, signed by `key`.
pub fn sign(key: &KeyPair, subject: &str, reason: &str, requested_ms: u64) -> Erasure {
    let signature = key
        .sign(&Erasure::message(subject, reason, requested_ms))
        .to_vec();
    Erasure {
        subject: subject.to_owned(),
        reason: reason.to_owned(),
        requested_ms,
        distid: key.distid().to_owned(),
        public_key: key.public_key(),
        signature,
    }
}

impl crate::VerifySignature for Erasure {
    fn verify_signature(&self) -> Result<(), KeyError> {
        verify_signature(self)
    }
}

/// Checks an erasure's signature.
pub fn verify_signature(erasure: &Erasure) -> Result<(), KeyError> {
    keys::verify(
        &erasure.public_key,
        &erasure.distid,
        &Erasure::message(&erasure.subject, &erasure.reason, erasure.requested_ms),
        &erasure.signature,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::VerifySignature as _;

    #[test]
    fn an_erasure_verifies_and_changes_break_it() {
        let key = KeyPair::generate(keys::DISTID_DEFAULT).unwrap();
        let erasure = sign(
            &key,
            "customer-42",
            "GDPR art. 17, ticket 991",
            1_700_000_000_000,
        );
        erasure.verify_signature().unwrap();
        let mut other = erasure.clone();
        other.subject = "customer-43".into();
        assert!(other.verify_signature().is_err());
        let mut later = erasure;
        later.requested_ms += 1;
        assert!(later.verify_signature().is_err());
    }
}

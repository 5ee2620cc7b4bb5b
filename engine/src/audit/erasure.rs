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

use serde::{Deserialize, Serialize};

use super::keys::{self, KeyError, KeyPair};
use crate::event::EventView;

const DOMAIN: &[u8] = b"sluice erasure v1\0";

/// The user header that names an event's subject.
pub const HEADER_SUBJECT: &str = "subject";

/// The user header a masked delivery carries instead of its payload.
pub const HEADER_ERASED: &str = "sluice.erased";

/// A signed request to erase a subject; see the module docs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Erasure {
    /// The subject whose payloads are masked from now on.
    pub subject: String,
    /// Why (a ticket, a legal basis); recorded, not interpreted.
    pub reason: String,
    /// When it was requested (the requester's clock, ms since the epoch).
    pub requested_ms: u64,
    /// The signer's distinguishing id.
    pub distid: String,
    /// The signer's public key, SEC1 uncompressed.
    pub public_key: Vec<u8>,
    /// SM2 signature `r ‖ s` over [`Erasure::message`].
    pub signature: Vec<u8>,
}

impl Erasure {
    /// A request signed by `key`.
    pub fn sign(key: &KeyPair, subject: &str, reason: &str, requested_ms: u64) -> Erasure {
        let signature = key
            .sign(&Self::message(subject, reason, requested_ms))
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

    /// The bytes that are signed.
    pub fn message(subject: &str, reason: &str, requested_ms: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(DOMAIN.len() + subject.len() + reason.len() + 16);
        out.extend_from_slice(DOMAIN);
        for field in [subject.as_bytes(), reason.as_bytes()] {
            out.extend_from_slice(&(field.len() as u32).to_le_bytes());
            out.extend_from_slice(field);
        }
        out.extend_from_slice(&requested_ms.to_le_bytes());
        out
    }

    /// Checks the signature.
    pub fn verify_signature(&self) -> Result<(), KeyError> {
        keys::verify(
            &self.public_key,
            &self.distid,
            &Self::message(&self.subject, &self.reason, self.requested_ms),
            &self.signature,
        )
    }
}

/// An event's subject: its `subject` header, else its key as UTF-8.
pub fn subject_of<'a>(view: &EventView<'a>) -> Option<std::borrow::Cow<'a, str>> {
    for (name, value) in view.user_headers() {
        if name == HEADER_SUBJECT {
            return std::str::from_utf8(&value)
                .ok()
                .map(|s| std::borrow::Cow::Owned(s.to_owned()));
        }
    }
    let key = view.key_slice();
    if key.is_empty() {
        return None;
    }
    std::str::from_utf8(key)
        .ok()
        .map(std::borrow::Cow::Borrowed)
}

/// Masks a delivery of an erased subject's event: the payload becomes
/// empty and a `sluice.erased` header says so. Events of other subjects
/// are left alone.
pub fn mask_erased(
    erased: &std::collections::BTreeSet<String>,
    view: &EventView<'_>,
    payload: &mut bytes::Bytes,
    headers: &mut crate::event::Headers,
) {
    let Some(subject) = subject_of(view) else {
        return;
    };
    if erased.contains(subject.as_ref()) {
        *payload = bytes::Bytes::new();
        headers
            .user
            .push((HEADER_ERASED.to_owned(), bytes::Bytes::from_static(b"1")));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_erasure_verifies_and_changes_break_it() {
        let key = KeyPair::generate(keys::DISTID_DEFAULT).unwrap();
        let erasure = Erasure::sign(
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

//! The audit records the state machine stores, as plain data: a signed
//! checkpoint of the hash chain head and a signed erasure of a subject.
//! The state machine keeps and replicates them without interpreting their
//! signatures; `sluice-audit` signs and verifies them (SM2), so the model
//! depends on no cryptography beyond SHA-256.
//!
//! Checkpoint message: `"sluice checkpoint v1\0" ‖ index (u64 LE) ‖ hash(i)`.
//! Erasure message: `"sluice erasure v1\0"`, then the subject, the reason
//! (each as u32 LE length and bytes) and `requested_ms` (u64 LE).
//!
//! An event's *subject* is its user header `subject` (UTF-8), or else its
//! key when that is non-empty UTF-8.

use serde::{Deserialize, Serialize};

use crate::event::{EventView, Headers};

/// A SHA-256 digest: a chain hash or an event digest.
pub type Hash = [u8; 32];

const CHECKPOINT_DOMAIN: &[u8] = b"sluice checkpoint v1\0";
const ERASURE_DOMAIN: &[u8] = b"sluice erasure v1\0";

/// User header holding the signature.
pub const HEADER_SIGNATURE: &str = "sluice.sig";
/// User header holding the signer's key and distinguishing id.
pub const HEADER_SIGNER: &str = "sluice.signer";

/// The user header that names an event's subject.
pub const HEADER_SUBJECT: &str = "subject";

/// The user header a masked delivery carries instead of its payload.
pub const HEADER_ERASED: &str = "sluice.erased";

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
    /// The bytes that are signed.
    pub fn message(index: u64, head: &Hash) -> Vec<u8> {
        let mut out = Vec::with_capacity(CHECKPOINT_DOMAIN.len() + 8 + 32);
        out.extend_from_slice(CHECKPOINT_DOMAIN);
        out.extend_from_slice(&index.to_le_bytes());
        out.extend_from_slice(head);
        out
    }
}

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
    /// The bytes that are signed.
    pub fn message(subject: &str, reason: &str, requested_ms: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(ERASURE_DOMAIN.len() + subject.len() + reason.len() + 16);
        out.extend_from_slice(ERASURE_DOMAIN);
        for field in [subject.as_bytes(), reason.as_bytes()] {
            out.extend_from_slice(&(field.len() as u32).to_le_bytes());
            out.extend_from_slice(field);
        }
        out.extend_from_slice(&requested_ms.to_le_bytes());
        out
    }
}

/// The parts of an event a signature covers.
#[derive(Debug, Clone, Copy)]
pub struct SignedParts<'a> {
    /// Topic.
    pub topic: &'a str,
    /// Business key.
    pub key: &'a [u8],
    /// Payload.
    pub payload: &'a [u8],
    /// Headers (the signature headers among the user headers are skipped).
    pub headers: &'a Headers,
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
    headers: &mut Headers,
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

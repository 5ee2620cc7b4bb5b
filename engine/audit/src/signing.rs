//! Producer signatures, optional per producer: SM2 over an event's digest,
//! carried in two user headers, verified by the leader before the event is
//! queued for appending and again by the offline verifier.
//!
//! - `sluice.sig`: the signature `r ‖ s` (64 bytes);
//! - `sluice.signer`: the signer's public key, SEC1 uncompressed (65
//!   bytes), then its distinguishing id (UTF-8).
//!
//! The digest is SHA-256 of `"sluice event v1\0"` and then, each as a u32
//! LE length and its bytes (numbers as u32/u8 LE without length): topic,
//! key, payload, event type, schema version, content type, traceparent
//! (empty if none), sensitivity, and every user header other than the two
//! above, name then value, in order. It leaves out what the bus assigns
//! (producer stamp, partition, timestamps), so a producer signs before
//! sending and the signature holds wherever the event lands.

use sha2::{Digest, Sha256};

use super::keys::{self, KeyError, KeyPair};
use sluice_model::event::{EventView, Headers};
use sluice_model::records::Hash;

pub use sluice_model::records::{HEADER_SIGNATURE, HEADER_SIGNER, SignedParts as Parts};

const DOMAIN: &[u8] = b"sluice event v1\0";
const PUBLIC_KEY_SIZE: usize = 65;

/// Why a signed event is refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    /// One of the two headers is present without the other, or repeated.
    #[error(
        "the event carries {found} of the headers {HEADER_SIGNATURE} and {HEADER_SIGNER}; \
         a signed event carries each exactly once"
    )]
    Headers {
        /// How many of them it carries.
        found: usize,
    },
    /// `sluice.signer` is malformed.
    #[error("the {HEADER_SIGNER} header is malformed: {0}")]
    Signer(String),
    /// The signature does not verify: the event was changed after it was
    /// signed, or signed with another key or id.
    #[error("the producer signature does not verify: {0}; nothing was appended")]
    Invalid(#[source] KeyError),
}

/// What [`check`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signed {
    /// No signature headers.
    Unsigned,
    /// A valid signature by this key (SEC1) and id.
    By {
        /// The signer's public key.
        public_key: Vec<u8>,
        /// Its distinguishing id.
        distid: String,
    },
}

/// The digest a producer signs.
pub fn digest(parts: &Parts<'_>) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update(DOMAIN);
    let mut field = |bytes: &[u8]| {
        hasher.update((bytes.len() as u32).to_le_bytes());
        hasher.update(bytes);
    };
    let headers = parts.headers;
    field(parts.topic.as_bytes());
    field(parts.key);
    field(parts.payload);
    field(headers.event_type.as_bytes());
    field(&headers.schema_version.to_le_bytes());
    field(headers.content_type.as_bytes());
    field(headers.traceparent.as_deref().unwrap_or("").as_bytes());
    field(&[headers.sensitivity as u8]);
    for (name, value) in &headers.user {
        if name == HEADER_SIGNATURE || name == HEADER_SIGNER {
            continue;
        }
        field(name.as_bytes());
        field(value);
    }
    hasher.finalize().into()
}

/// Signs an event's parts with `key` and appends the two signature
/// headers to `headers` (replacing earlier ones).
pub fn sign(topic: &str, key_bytes: &[u8], payload: &[u8], headers: &mut Headers, key: &KeyPair) {
    headers
        .user
        .retain(|(name, _)| name != HEADER_SIGNATURE && name != HEADER_SIGNER);
    let digest = digest(&Parts {
        topic,
        key: key_bytes,
        payload,
        headers,
    });
    let signature = key.sign(&digest);
    let mut signer = key.public_key();
    signer.extend_from_slice(key.distid().as_bytes());
    headers
        .user
        .push((HEADER_SIGNATURE.to_owned(), signature.to_vec().into()));
    headers.user.push((HEADER_SIGNER.to_owned(), signer.into()));
}

/// Checks an event's signature, if it carries one.
pub fn check(parts: &Parts<'_>) -> Result<Signed, SignatureError> {
    let find = |wanted: &'static str| -> Vec<&[u8]> {
        parts
            .headers
            .user
            .iter()
            .filter(|(name, _)| name == wanted)
            .map(|(_, value)| value.as_ref())
            .collect()
    };
    let signatures = find(HEADER_SIGNATURE);
    let signers = find(HEADER_SIGNER);
    match (signatures.len(), signers.len()) {
        (0, 0) => return Ok(Signed::Unsigned),
        (1, 1) => {}
        (a, b) => return Err(SignatureError::Headers { found: a + b }),
    }
    let signer = signers[0];
    if signer.len() <= PUBLIC_KEY_SIZE {
        return Err(SignatureError::Signer(format!(
            "{} bytes, expected a {PUBLIC_KEY_SIZE}-byte key and an id",
            signer.len()
        )));
    }
    let (public_key, distid) = signer.split_at(PUBLIC_KEY_SIZE);
    let distid = std::str::from_utf8(distid)
        .map_err(|_| SignatureError::Signer("the distinguishing id is not UTF-8".into()))?;
    keys::verify(public_key, distid, &digest(parts), signatures[0])
        .map_err(SignatureError::Invalid)?;
    Ok(Signed::By {
        public_key: public_key.to_vec(),
        distid: distid.to_owned(),
    })
}

/// [`check`] of a stored event.
pub fn check_view(view: &EventView<'_>) -> Result<Signed, SignatureError> {
    let headers = view.headers();
    check(&Parts {
        topic: view.topic(),
        key: view.key_slice(),
        payload: view.payload_slice(),
        headers: &headers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_parts_verify_and_any_change_is_refused() {
        let key = KeyPair::generate("producer-7").unwrap();
        let mut headers = Headers {
            event_type: "payment.settled".into(),
            ..Headers::default()
        };
        sign(
            "payments",
            b"acct-1",
            b"{\"amount\":10}",
            &mut headers,
            &key,
        );
        let parts = Parts {
            topic: "payments",
            key: b"acct-1",
            payload: b"{\"amount\":10}",
            headers: &headers,
        };
        assert_eq!(
            check(&parts).unwrap(),
            Signed::By {
                public_key: key.public_key(),
                distid: "producer-7".into()
            }
        );
        let changed = Parts {
            payload: b"{\"amount\":99}",
            ..parts
        };
        assert!(matches!(check(&changed), Err(SignatureError::Invalid(_))));
        let mut other_type = headers.clone();
        other_type.event_type = "payment.refunded".into();
        let retyped = Parts {
            headers: &other_type,
            ..parts
        };
        assert!(check(&retyped).is_err());
        let mut half = headers.clone();
        half.user.retain(|(n, _)| n != HEADER_SIGNER);
        let half = Parts {
            headers: &half,
            ..parts
        };
        assert!(matches!(
            check(&half),
            Err(SignatureError::Headers { found: 1 })
        ));
        let plain = Headers::default();
        let unsigned = Parts {
            headers: &plain,
            ..parts
        };
        assert_eq!(check(&unsigned).unwrap(), Signed::Unsigned);
    }
}

//! SM2 keys (GB/T 32918) for the node's checkpoints and producers'
//! signatures: generation, PEM files, signing and verification.
//!
//! A signature is SM2DSA over SM3(Z ‖ message), where Z binds the signer's
//! public key and its *distinguishing id* (GB/T 32918.2 § 5.5); the id is
//! part of every key here and is stored next to each signature, so a
//! verifier needs the public key and the id. Public keys travel as SEC1
//! uncompressed points (65 bytes), signatures as `r ‖ s` (64 bytes).
//!
//! Key files: the secret key as PKCS#8 PEM (`*.key.pem`), the public key as
//! SubjectPublicKeyInfo PEM (`*.pub.pem`).

use std::fmt;

use sha2::{Digest, Sha256};
use sm2::dsa::signature::{Signer, Verifier};
use sm2::dsa::{Signature, SigningKey, VerifyingKey};
use sm2::elliptic_curve::Generate;
use sm2::pkcs8::{
    DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, LineEnding,
};
use sm2::{PublicKey, SecretKey};

/// The distinguishing id GB/T 32918 uses when none is agreed
/// ("1234567812345678").
pub const DISTID_DEFAULT: &str = "1234567812345678";

/// Longest distinguishing id: its bit length must fit the standard's u16.
pub const DISTID_SIZE_MAX: usize = 1024;

/// Size of a signature: `r ‖ s`.
pub const SIGNATURE_SIZE: usize = 64;

/// What can go wrong with keys and signatures.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// A PEM file does not hold a key of the expected kind.
    #[error("{what} does not parse as an SM2 {kind} key in PEM: {detail}")]
    Pem {
        /// The file or source named by the caller.
        what: String,
        /// "secret" or "public".
        kind: &'static str,
        /// The parser's message.
        detail: String,
    },
    /// The distinguishing id is empty or too long.
    #[error("distinguishing id of {size} bytes is outside 1 to {DISTID_SIZE_MAX} bytes")]
    DistId {
        /// Its size.
        size: usize,
    },
    /// Bytes that should be a SEC1 public key are not one.
    #[error("not an SM2 public key (SEC1): {0}")]
    PublicKey(String),
    /// The signature does not verify for this key, id and message.
    #[error("SM2 signature does not verify (signer {signer}, id {distid:?})")]
    BadSignature {
        /// Fingerprint of the public key.
        signer: String,
        /// The distinguishing id used.
        distid: String,
    },
}

/// A node's or producer's SM2 key pair with its distinguishing id.
#[derive(Clone)]
pub struct KeyPair {
    secret: SecretKey,
    signing: SigningKey,
    distid: String,
}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyPair")
            .field("public", &fingerprint(&self.public_key()))
            .field("distid", &self.distid)
            .finish_non_exhaustive()
    }
}

impl KeyPair {
    /// A fresh key from the operating system's random source.
    pub fn generate(distid: &str) -> Result<Self, KeyError> {
        Self::from_secret(SecretKey::generate(), distid)
    }

    /// Reads a PKCS#8 PEM secret key.
    pub fn from_pem(pem: &str, distid: &str, what: &str) -> Result<Self, KeyError> {
        let secret = SecretKey::from_pkcs8_pem(pem).map_err(|e| KeyError::Pem {
            what: what.to_owned(),
            kind: "secret",
            detail: e.to_string(),
        })?;
        Self::from_secret(secret, distid)
    }

    fn from_secret(secret: SecretKey, distid: &str) -> Result<Self, KeyError> {
        check_distid(distid)?;
        let signing = SigningKey::new(distid, &secret)
            .map_err(|_| KeyError::DistId { size: distid.len() })?;
        Ok(KeyPair {
            secret,
            signing,
            distid: distid.to_owned(),
        })
    }

    /// The secret key as PKCS#8 PEM.
    pub fn secret_pem(&self) -> String {
        self.secret
            .to_pkcs8_pem(LineEnding::LF)
            .expect("an SM2 key encodes")
            .to_string()
    }

    /// The public key as SubjectPublicKeyInfo PEM.
    pub fn public_pem(&self) -> String {
        self.secret
            .public_key()
            .to_public_key_pem(LineEnding::LF)
            .expect("an SM2 key encodes")
    }

    /// The public key, SEC1 uncompressed.
    pub fn public_key(&self) -> Vec<u8> {
        self.signing.verifying_key().to_sec1_bytes().into_vec()
    }

    /// The distinguishing id.
    pub fn distid(&self) -> &str {
        &self.distid
    }

    /// Signs `message` (SM2DSA with this key's id): `r ‖ s`.
    pub fn sign(&self, message: &[u8]) -> [u8; SIGNATURE_SIZE] {
        let signature: Signature = self.signing.sign(message);
        signature.to_bytes().into()
    }
}

/// Reads a SubjectPublicKeyInfo PEM public key; returns it SEC1
/// uncompressed.
pub fn public_key_from_pem(pem: &str, what: &str) -> Result<Vec<u8>, KeyError> {
    let key = PublicKey::from_public_key_pem(pem).map_err(|e| KeyError::Pem {
        what: what.to_owned(),
        kind: "public",
        detail: e.to_string(),
    })?;
    Ok(VerifyingKey::new(DISTID_DEFAULT, key)
        .expect("the default id is valid")
        .to_sec1_bytes()
        .into_vec())
}

/// Verifies an SM2 signature (`r ‖ s`) over `message` by `public_key`
/// (SEC1) with distinguishing id `distid`.
pub fn verify(
    public_key: &[u8],
    distid: &str,
    message: &[u8],
    signature: &[u8],
) -> Result<(), KeyError> {
    check_distid(distid)?;
    let key = VerifyingKey::from_sec1_bytes(distid, public_key)
        .map_err(|e| KeyError::PublicKey(e.to_string()))?;
    let bad = || KeyError::BadSignature {
        signer: fingerprint(public_key),
        distid: distid.to_owned(),
    };
    let signature = Signature::from_slice(signature).map_err(|_| bad())?;
    key.verify(message, &signature).map_err(|_| bad())
}

/// A short, stable name of a public key: the first 8 bytes of its SHA-256,
/// in hex.
pub fn fingerprint(public_key: &[u8]) -> String {
    let digest = Sha256::digest(public_key);
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

fn check_distid(distid: &str) -> Result<(), KeyError> {
    if distid.is_empty() || distid.len() > DISTID_SIZE_MAX {
        return Err(KeyError::DistId { size: distid.len() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_and_pem_round_trip() {
        let key = KeyPair::generate("node-1@sluice").unwrap();
        let signature = key.sign(b"message");
        verify(&key.public_key(), "node-1@sluice", b"message", &signature).unwrap();
        // Wrong message, wrong id, wrong key: all refused.
        assert!(verify(&key.public_key(), "node-1@sluice", b"messagf", &signature).is_err());
        assert!(verify(&key.public_key(), DISTID_DEFAULT, b"message", &signature).is_err());
        let other = KeyPair::generate("node-1@sluice").unwrap();
        assert!(verify(&other.public_key(), "node-1@sluice", b"message", &signature).is_err());
        let again = KeyPair::from_pem(&key.secret_pem(), "node-1@sluice", "test").unwrap();
        assert_eq!(again.public_key(), key.public_key());
        let public = public_key_from_pem(&key.public_pem(), "test").unwrap();
        assert_eq!(public, key.public_key());
        assert!(KeyPair::from_pem("not pem", DISTID_DEFAULT, "x").is_err());
        assert!(KeyPair::generate("").is_err());
    }
}

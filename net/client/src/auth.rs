//! Cluster-secret authentication of connections.
//!
//! Every node and client of a secured cluster holds the same secret (a
//! file). Both ends of a connection prove they hold it, before any request:
//!
//! 1. The node that accepts the connection sends a challenge: a frame of
//!    kind [`MessageKind::Auth`](sluice_model::transport::MessageKind::Auth) carrying 32 fresh random bytes.
//! 2. The connecting side answers with its proof (HMAC-SHA256 over a
//!    context string, the challenge and the node id it claims) followed by
//!    a challenge of its own. Anything else, a wrong proof, or no answer
//!    within [`AUTH_TIMEOUT`] closes the connection with a logged reason.
//! 3. The node answers the connecting side's challenge with its own proof
//!    (under a different context string, so neither side's proof can be
//!    reflected back as the other's). The connecting side sends nothing
//!    until that proof checks: an impostor listening on a node's address
//!    cannot take publishes (and acknowledge them) without the secret.
//!
//! The secret itself never crosses the network, and a recorded proof is
//! useless on another connection (its challenge differs).
//!
//! What this does not do: encrypt traffic. Use a private network, or TLS
//! (`crate::tls`), where that matters.
//!
//! With TLS, certificates authenticate nodes and clients; a client without
//! a certificate presents a token instead, in a frame of kind `Auth` right
//! after the handshake ([`token_frame`], checked by an [`Authenticator`]).

use std::fmt;
use std::io;
use std::path::Path;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use sluice_model::security::{Principal, Token};
use sluice_model::transport::NodeId;

pub use sluice_model::constants::TOKEN_FRAME_BODY_MAX;

pub use sluice_model::constants::AUTH_TIMEOUT;

/// The size of a challenge and of a proof.
pub const NONCE_SIZE: usize = 32;

/// The shortest secret accepted: 16 bytes (128 bits).
pub const SECRET_SIZE_MIN: usize = 16;

/// Binds the connecting side's proof to this protocol and version.
const CONTEXT: &[u8] = b"sluice-auth-v2";

/// Binds the accepting node's proof: distinct from [`CONTEXT`], so a proof
/// from one side never passes as the other's.
const CONTEXT_NODE: &[u8] = b"sluice-auth-v2-node";

/// A cluster secret. Its `Debug` output does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    /// A secret from bytes; at least [`SECRET_SIZE_MIN`] of them.
    pub fn new(bytes: impl Into<Vec<u8>>) -> io::Result<Secret> {
        let bytes = bytes.into();
        if bytes.len() < SECRET_SIZE_MIN {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "the cluster secret has {} bytes; use at least {SECRET_SIZE_MIN} \
                     (for example: head -c 32 /dev/urandom | base64 > secret)",
                    bytes.len()
                ),
            ));
        }
        Ok(Secret(bytes))
    }

    /// Reads a secret file; surrounding whitespace (a trailing newline) is
    /// not part of the secret.
    pub fn from_file(path: &Path) -> io::Result<Secret> {
        let bytes = std::fs::read(path).map_err(|error| {
            io::Error::new(
                error.kind(),
                format!("cannot read the secret file {}: {error}", path.display()),
            )
        })?;
        let trimmed = bytes.trim_ascii();
        Secret::new(trimmed)
            .map_err(|error| io::Error::new(error.kind(), format!("{}: {error}", path.display())))
    }

    /// The answer to `challenge` for a connection from node `source`.
    pub fn proof(&self, challenge: &[u8], source: NodeId) -> [u8; NONCE_SIZE] {
        self.mac(CONTEXT, challenge, source)
            .finalize()
            .into_bytes()
            .into()
    }

    /// Whether `proof` answers `challenge` for node `source`; compares in
    /// constant time.
    pub fn verify(&self, challenge: &[u8], source: NodeId, proof: &[u8]) -> bool {
        self.mac(CONTEXT, challenge, source)
            .verify_slice(proof)
            .is_ok()
    }

    /// The accepting node `node`'s answer to the connecting side's
    /// `challenge`.
    pub fn node_proof(&self, challenge: &[u8], node: NodeId) -> [u8; NONCE_SIZE] {
        self.mac(CONTEXT_NODE, challenge, node)
            .finalize()
            .into_bytes()
            .into()
    }

    /// Whether `proof` is node `node`'s answer to `challenge`; compares in
    /// constant time.
    pub fn verify_node(&self, challenge: &[u8], node: NodeId, proof: &[u8]) -> bool {
        self.mac(CONTEXT_NODE, challenge, node)
            .verify_slice(proof)
            .is_ok()
    }

    fn mac(&self, context: &[u8], challenge: &[u8], source: NodeId) -> Hmac<Sha256> {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes keys of any length");
        mac.update(context);
        mac.update(challenge);
        mac.update(&source.to_le_bytes());
        mac
    }
}

/// 32 fresh random bytes from the operating system.
pub fn challenge() -> io::Result<[u8; NONCE_SIZE]> {
    let mut nonce = [0u8; NONCE_SIZE];
    getrandom::fill(&mut nonce).map_err(|error| {
        io::Error::other(format!(
            "the operating system gave no random bytes: {error}"
        ))
    })?;
    Ok(nonce)
}

/// Checks the tokens clients present. A node implements it over its
/// replicated state (token records hold only salted hashes).
pub trait Authenticator: Send + Sync + fmt::Debug + 'static {
    /// The principal `token` authenticates as, or why it does not (unknown,
    /// revoked, wrong secret: the reason goes back to the client and into
    /// the node's log, so it never includes the secret).
    fn token(&self, token: &Token) -> Result<Principal, String>;
}

/// The body of a token frame: the token as its holder writes it.
pub fn token_frame(token: &Token) -> Vec<u8> {
    token.expose().into_bytes()
}

/// The token a token frame's body carries; why not, if it carries none.
/// Never echoes the bytes (they may hold a secret).
pub fn decode_token_frame(body: &[u8]) -> Result<Token, String> {
    if body.len() > TOKEN_FRAME_BODY_MAX {
        return Err(format!(
            "the token frame has {} bytes; a token has at most {TOKEN_FRAME_BODY_MAX}",
            body.len()
        ));
    }
    let text = std::str::from_utf8(body)
        .map_err(|error| format!("the token frame is not UTF-8 text: {error}"))?;
    Token::parse(text).map_err(|error| error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proof_verifies_only_for_its_challenge_source_and_secret() {
        let secret = Secret::new(*b"0123456789abcdef").unwrap();
        let other = Secret::new(*b"0123456789abcdeF").unwrap();
        let challenge = challenge().unwrap();
        let proof = secret.proof(&challenge, 7);
        assert!(secret.verify(&challenge, 7, &proof));
        assert!(!secret.verify(&challenge, 8, &proof));
        assert!(!other.verify(&challenge, 7, &proof));
        let mut changed = challenge;
        changed[0] ^= 1;
        assert!(!secret.verify(&changed, 7, &proof));
        assert!(!secret.verify(&challenge, 7, &proof[..31]));
        // Neither side's proof passes as the other's.
        let node_proof = secret.node_proof(&challenge, 7);
        assert!(secret.verify_node(&challenge, 7, &node_proof));
        assert!(!secret.verify_node(&challenge, 7, &proof));
        assert!(!secret.verify(&challenge, 7, &node_proof));
        assert!(!other.verify_node(&challenge, 7, &node_proof));
    }

    #[test]
    fn token_frames_round_trip_and_bad_ones_are_refused() {
        let token = Token::new([7; 8], [9; 32]);
        let body = token_frame(&token);
        assert!(body.len() <= TOKEN_FRAME_BODY_MAX);
        assert_eq!(decode_token_frame(&body).unwrap(), token);
        assert!(decode_token_frame(b"sluice-token.zz.00").is_err());
        assert!(decode_token_frame(&[0xff, 0xfe]).is_err());
        assert!(decode_token_frame(&[b'a'; TOKEN_FRAME_BODY_MAX + 1]).is_err());
    }

    #[test]
    fn short_secrets_are_refused_and_files_are_trimmed() {
        assert!(Secret::new(*b"short").is_err());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "0123456789abcdef\n").unwrap();
        assert_eq!(
            Secret::from_file(&path).unwrap(),
            Secret::new(*b"0123456789abcdef").unwrap()
        );
        let missing = Secret::from_file(&dir.path().join("none")).unwrap_err();
        assert!(missing.to_string().contains("cannot read the secret file"));
    }
}

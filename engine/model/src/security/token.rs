//! Bearer tokens: what a client without a certificate authenticates with.
//!
//! A token is `sluice-token.ID.SECRET`: the id names its record in the
//! replicated state, the secret proves possession. The state stores only a
//! random salt and SHA-256(salt ‖ secret), so neither a snapshot nor a log
//! holds a usable token. Randomness comes from the caller (the model does
//! no I/O): a node or the CLI draws the id, the secret and the salt.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{RuleError, valid_principal_name};

/// What every token starts with, so a leaked one is recognisable (secret
/// scanners look for such prefixes).
pub const TOKEN_PREFIX: &str = "sluice-token";

/// Bytes of randomness in a token's id.
const ID_BYTES: usize = 8;

/// Bytes of randomness in a token's secret (256 bits).
const SECRET_BYTES: usize = 32;

/// Bytes of a record's salt.
const SALT_BYTES: usize = 16;

/// A token as its holder has it. `Debug` does not show the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    id: String,
    secret: Vec<u8>,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token({}.…)", self.id)
    }
}

impl Token {
    /// A token from fresh random bytes: `id` and `secret` must come from a
    /// cryptographic generator.
    pub fn new(id: [u8; ID_BYTES], secret: [u8; SECRET_BYTES]) -> Token {
        Token {
            id: hex(&id),
            secret: secret.to_vec(),
        }
    }

    /// Parses `sluice-token.ID.SECRET` (surrounding whitespace ignored).
    pub fn parse(text: &str) -> Result<Token, TokenError> {
        let mut parts = text.trim().split('.');
        let (Some(TOKEN_PREFIX), Some(id), Some(secret), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let secret = unhex(secret).ok_or(TokenError::Malformed)?;
        if id.len() != 2 * ID_BYTES || unhex(id).is_none() || secret.len() != SECRET_BYTES {
            return Err(TokenError::Malformed);
        }
        Ok(Token {
            id: id.to_owned(),
            secret,
        })
    }

    /// The id: public, names the record.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The record to store for this token, owned by `principal`, with a
    /// fresh random `salt`.
    pub fn record(
        &self,
        principal: &str,
        salt: [u8; SALT_BYTES],
        created_ms: u64,
    ) -> Result<TokenRecord, RuleError> {
        if !valid_principal_name(principal) {
            return Err(RuleError::Principal(principal.to_owned()));
        }
        Ok(TokenRecord {
            id: self.id.clone(),
            principal: principal.to_owned(),
            salt: salt.to_vec(),
            hash: salted_hash(&salt, &self.secret).to_vec(),
            created_ms,
            revoked: false,
        })
    }

    /// The whole token as its holder writes it down. Shown once, when it
    /// is created.
    pub fn expose(&self) -> String {
        format!("{TOKEN_PREFIX}.{}.{}", self.id, hex(&self.secret))
    }
}

/// A stored token: no secret, only its salted hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// The token's id.
    pub id: String,
    /// The user principal the token authenticates as.
    pub principal: String,
    /// Random salt.
    pub salt: Vec<u8>,
    /// SHA-256(salt ‖ secret).
    pub hash: Vec<u8>,
    /// When it was created (the proposing node's wall clock), ms since the
    /// Unix epoch.
    pub created_ms: u64,
    /// Revoked tokens stay, so their ids are never reused.
    pub revoked: bool,
}

impl TokenRecord {
    /// Whether `token` is this record's token (compared in constant time).
    pub fn verifies(&self, token: &Token) -> bool {
        if token.id != self.id || self.revoked {
            return false;
        }
        let hash = salted_hash(&self.salt, &token.secret);
        hash.len() == self.hash.len()
            && hash
                .iter()
                .zip(&self.hash)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }

    pub(super) fn check(&self) -> Result<(), RuleError> {
        if !valid_principal_name(&self.principal) {
            return Err(RuleError::Principal(self.principal.clone()));
        }
        if self.id.len() != 2 * ID_BYTES || unhex(&self.id).is_none() {
            return Err(RuleError::Name(self.id.clone()));
        }
        Ok(())
    }
}

/// Why a token was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not `sluice-token.ID.SECRET` with hex id and secret of the right
    /// sizes.
    #[error("not a Sluice token: expected {TOKEN_PREFIX}.<16 hex digits>.<64 hex digits>")]
    Malformed,
}

fn salted_hash(salt: &[u8], secret: &[u8]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(salt);
    hasher.update(secret);
    hasher.finalize().into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(text.get(at..at + 2)?, 16).ok())
        .collect()
}

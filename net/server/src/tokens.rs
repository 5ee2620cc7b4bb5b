//! Checks the tokens clients present after the TLS handshake, against the
//! token records in the replicated state (salted hashes only).

use std::fmt;

use sluice_client::auth::Authenticator;
use sluice_core::bus::Bus;
use sluice_model::security::{Principal, Token};

/// The node's [`Authenticator`]: a token is good if the replicated state
/// holds its record, unrevoked, and the secret hashes to the record's hash.
pub(crate) struct Tokens {
    pub(crate) bus: Bus,
}

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokens")
            .field("node", &self.bus.node_id())
            .finish_non_exhaustive()
    }
}

impl Authenticator for Tokens {
    fn token(&self, token: &Token) -> Result<Principal, String> {
        let state = self.bus.state();
        // One answer for unknown, revoked and wrong: a prober learns
        // nothing about which ids exist.
        let refused = || {
            "the token is unknown, revoked or wrong; ask an admin for a new one \
             (sluice token create)"
                .to_owned()
        };
        let record = state.security().token(token.id()).ok_or_else(refused)?;
        if !record.verifies(token) {
            return Err(refused());
        }
        Ok(Principal::user(&record.principal))
    }
}

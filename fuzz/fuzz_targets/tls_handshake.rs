//! Arbitrary bytes from a stranger into a node's side of a connection: as
//! TLS records into a rustls server connection, as the token frame that
//! follows the handshake, and as a peer's certificate.
//! `sluice_client::tls::fuzzing::server_handshake` must return for every
//! input.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    sluice_client::tls::fuzzing::server_handshake(data);
});

//! The TLS and authentication path a node runs on an accepted connection,
//! as a pure function of the bytes a peer sends: the fuzz target
//! `tls_handshake` calls it, and `cargo test` replays its corpus
//! (`net/client/tests/tls_corpus.rs`).
//!
//! The certificates below are throwaway material made by `sluice certs`
//! for this purpose only (their keys are public here): they let the
//! server side of the handshake be built without files.

use std::io;
use std::sync::{Arc, OnceLock};

use bytes::BytesMut;
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use sluice_model::transport::MessageKind;

use crate::{auth, wire};

/// The fuzzing CA's certificate.
pub const CA_PEM: &str = "-----BEGIN CERTIFICATE-----
MIIBkzCCATmgAwIBAgIQe3Ymh0HgYABgiKY7Mk4CADAKBggqhkjOPQQDAjApMScw
JQYDVQQDDB5TbHVpY2UgZGV2ZWxvcG1lbnQgQ0EgYTE0OTA1NDAwHhcNMjYxMjA4
MDAwNTQ0WhcNMzYxMjA1MDEwNTQ0WjApMScwJQYDVQQDDB5TbHVpY2UgZGV2ZWxv
cG1lbnQgQ0EgYTE0OTA1NDAwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAARtgZ/6
JdmSxEhQrqrez2MW+p0mkOy2iUDH446ajCoHesmsFXmVepvfxrGWGH25YtLBqBpi
sawYq/vJ3rGQtTrbo0MwQTAPBgNVHQ8BAf8EBQMDB4YAMB0GA1UdDgQWBBTXbAEQ
C41t67zmCM/+OBFce9fC9jAPBgNVHRMBAf8EBTADAQH/MAoGCCqGSM49BAMCA0gA
MEUCIQDYjyDj9l00Twlpimx+P8cNUzgXPHi67wijvgXZmQc8EwIgUrb4IAeHQAwa
9s6fP3OhFhYK+fQCePKS/+BEJZQC2ho=
-----END CERTIFICATE-----
";

/// Node 1's certificate, issued by [`CA_PEM`].
pub const NODE_PEM: &str = "-----BEGIN CERTIFICATE-----
MIIB0jCCAXmgAwIBAgIQM33QWO1+A7qkhMt8WpHZfjAKBggqhkjOPQQDAjApMScw
JQYDVQQDDB5TbHVpY2UgZGV2ZWxvcG1lbnQgQ0EgYTE0OTA1NDAwIBcNMjYxMjA4
MDAwNTQ0WhgPMjEyNjExMTQwMTA1NDRaMBgxFjAUBgNVBAMMDXNsdWljZSBub2Rl
IDEwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAARuuM/RH2vr2f0mRGQW0K0AYqMt
PzojzW2+Ia9KzlSJGmm2pZED5X1UK0wpcFXm4fBE473Z+OFVlcwF0v/A7wj+o4GR
MIGOMB8GA1UdIwQYMBaAFNdsARALjW3rvOYIz/44EVx718L2MDsGA1UdEQQ0MDKG
DXNsdWljZTpub2RlOjGCCWxvY2FsaG9zdIcEfwAAAYcQAAAAAAAAAAAAAAAAAAAA
ATAPBgNVHQ8BAf8EBQMDB4AAMB0GA1UdJQQWMBQGCCsGAQUFBwMBBggrBgEFBQcD
AjAKBggqhkjOPQQDAgNHADBEAiAIdThTHHieXGNmDRKOMvsV1/FxHHiZTQca0Qzq
T+WLzQIgROIDm2TkFhi5yQy2a7Y+eR5nJSZwO3rBLLzm8yoew1Y=
-----END CERTIFICATE-----
";

/// Node 1's key (public: fuzzing only).
pub const NODE_KEY_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgR9jMBoMReoqh1pm1
D6bI6JLNNN3+Kj7FDYKr0sNBZ2OhRANCAARuuM/RH2vr2f0mRGQW0K0AYqMtPzoj
zW2+Ia9KzlSJGmm2pZED5X1UK0wpcFXm4fBE473Z+OFVlcwF0v/A7wj+
-----END PRIVATE KEY-----
";

/// The client `fuzzer`'s certificate, issued by [`CA_PEM`].
pub const CLIENT_PEM: &str = "-----BEGIN CERTIFICATE-----
MIIBgzCCASmgAwIBAgIQfadbvFRZ8D1ABuehl8AK7TAKBggqhkjOPQQDAjApMScw
JQYDVQQDDB5TbHVpY2UgZGV2ZWxvcG1lbnQgQ0EgYTE0OTA1NDAwIBcNMjYxMjA4
MDAwNTQ0WhgPMjEyNjExMTQwMTA1NDRaMBExDzANBgNVBAMMBmZ1enplcjBZMBMG
ByqGSM49AgEGCCqGSM49AwEHA0IABJZfb5lE1tUpCOIHWk1Ns7dwJVXZ9H7WmQhw
D/20AX52m08QfxGEOu7IJON5XcguH8Qfl5n/fXgBGdAKY7xB4ROjSTBHMB8GA1Ud
IwQYMBaAFNdsARALjW3rvOYIz/44EVx718L2MA8GA1UdDwEB/wQFAwMHgAAwEwYD
VR0lBAwwCgYIKwYBBQUHAwIwCgYIKoZIzj0EAwIDSAAwRQIgftb/k7HN9Q9JGkOD
RbMYNgwbgMydSTPTPZh4Z/2votUCIQCBJpqlD6lGo891Ch46ysuDqPWWisRw2ah/
mD62xEtpPQ==
-----END CERTIFICATE-----
";

/// The client `fuzzer`'s key (public: fuzzing only).
pub const CLIENT_KEY_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgTjXzj9XuyKrs71wU
6Blkir9TDCyKjr53d+Fk3KcwEv2hRANCAASWX2+ZRNbVKQjiB1pNTbO3cCVV2fR+
1pkIcA/9tAF+dptPEH8RhDruyCTjeV3ILh/EH5eZ/314ARnQCmO8QeET
-----END PRIVATE KEY-----
";

/// The most TLS output drained per input: a server answers a handshake in
/// a few kilobytes.
const OUTPUT_BYTES_MAX: usize = 1 << 20;

/// The node's server configuration, as [`super::Tls`] builds it (client
/// certificates verified against the CA, optional for token clients).
pub fn server_config() -> Arc<rustls::ServerConfig> {
    static CONFIG: OnceLock<Arc<rustls::ServerConfig>> = OnceLock::new();
    Arc::clone(CONFIG.get_or_init(|| {
        let provider = super::provider();
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(CA_PEM.as_bytes()).expect("CA PEM"))
            .expect("CA");
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
                .allow_unauthenticated()
                .build()
                .expect("verifier");
        let chain = vec![CertificateDer::from_pem_slice(NODE_PEM.as_bytes()).expect("node PEM")];
        let key = PrivateKeyDer::from_pem_slice(NODE_KEY_PEM.as_bytes()).expect("key PEM");
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .expect("server config");
        Arc::new(config)
    }))
}

/// Feeds `data` to everything a node does with a stranger's bytes before
/// any request: as TLS records into a server connection (and, should a
/// handshake complete, its plaintext as the token frame); as the token
/// frame that follows a handshake; as a peer's certificate. Must return
/// for every input. Returns the TLS bytes the node would send back (a
/// server hello, an alert), for tests to see how far an input got.
pub fn server_handshake(data: &[u8]) -> usize {
    let mut connection =
        rustls::ServerConnection::new(server_config()).expect("a server connection");
    let mut input = data;
    let mut output = Vec::new();
    while !input.is_empty() {
        match connection.read_tls(&mut input) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let processed = connection.process_new_packets();
        while connection.wants_write() && output.len() < OUTPUT_BYTES_MAX {
            if connection.write_tls(&mut output).is_err() {
                break;
            }
        }
        if processed.is_err() {
            break;
        }
        if !connection.is_handshaking() {
            let mut plaintext = Vec::new();
            let _ = io::Read::read_to_end(&mut connection.reader(), &mut plaintext);
            auth_frames(&plaintext);
        }
    }
    if let Some(chain) = connection.peer_certificates() {
        let _ = super::principal_of(&chain[0]);
    }
    auth_frames(data);
    let _ = super::principal_of(&CertificateDer::from(data));
    output.len()
}

/// The frames a node reads right after the handshake: a token frame is
/// decoded as one (bounded like the node's read of it).
fn auth_frames(data: &[u8]) {
    let mut buf = BytesMut::from(data);
    while let Ok(Some(frame)) = wire::decode(&mut buf) {
        if frame.header.kind == MessageKind::Auth as u8 {
            let token = auth::decode_token_frame(&frame.body);
            if let Ok(token) = token {
                assert!(auth::token_frame(&token).len() <= auth::TOKEN_FRAME_BODY_MAX);
            }
        }
    }
}

//! A light client for Sluice clusters. It links the data model
//! (`sluice-model`) and tokio, not the engine: no openraft, no SM2.
//!
//! - [`wire`]: the frame codec, pure (no sockets), fuzzed by
//!   `fuzz/fuzz_targets/wire_frame.rs`; layout in `src/WIRE.md`.
//! - [`tcp`]: [`tcp::TcpTransport`] (the client side of a connection, also
//!   Raft's transport between nodes) and [`tcp::TcpServer`].
//! - [`auth`]: cluster-secret challenge and answer on every connection;
//!   token frames and the [`auth::Authenticator`] that checks them.
//! - [`tls`]: TLS material (CA, certificate, key, revocation list) from
//!   files, reloadable, and the principal a certificate names.
//! - [`protocol`]: the client protocol (requests and answers).
//! - [`client`]: [`client::Client`] (follows the leader, fails over) and
//!   [`client::RemoteProducer`] (idempotent producer over the network).
//! - [`consumer`]: [`consumer::RemoteConsumer`], a consumer group member
//!   over the network.

pub mod auth;
pub mod client;
pub mod consumer;
pub mod protocol;
pub mod tcp;
pub mod tls;
pub mod wire;

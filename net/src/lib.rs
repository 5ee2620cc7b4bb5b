//! Sluice's network side: the TCP implementation of the engine's
//! [`Transport`](sluice::io::transport::Transport) seam and its wire
//! frames.
//!
//! - [`wire`]: the frame codec, pure (no sockets), fuzzed by
//!   `fuzz/fuzz_targets/wire_frame.rs`; layout in `src/WIRE.md`.
//! - [`tcp`]: [`tcp::TcpTransport`] and [`tcp::TcpServer`] on tokio.
//!
//! The `sluice` command-line tool is this crate's binary.

pub mod tcp;
pub mod wire;

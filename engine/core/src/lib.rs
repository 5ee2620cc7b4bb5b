//! Sluice's engine internals, serving Sluice's own crates. There is no
//! stability promise here: applications embed the `sluice` crate, whose
//! small API wraps this one.
//!
//! Everything is written against three seams, so the same code runs on
//! real I/O in production and under a seeded, deterministic simulator:
//!
//! - [`io::Clock`]: monotonic and wall time;
//! - [`io::Disk`]: small, synchronous, offset-based file operations on one
//!   data directory, with a stated crash contract;
//! - `sluice_model::transport::Transport`: request/response messages
//!   between node ids.
//!
//! [`log`] is the segmented, checksummed log that is both the Raft log and
//! the event log; [`raft`] runs openraft over it and over the state machine
//! of `sluice_model::state`; [`bus`] is the embedded node. See
//! `ARCHITECTURE.md` at the repository root for the map.

pub mod bus;
pub mod io;
pub mod log;
pub mod raft;

//! Sluice: a durable, Raft-replicated event bus.
//!
//! This crate is the engine users embed. It is written against three seams
//! so that the same code runs on real I/O in production and under a seeded,
//! deterministic simulator in tests:
//!
//! - [`io::Clock`]: monotonic and wall time;
//! - [`io::Disk`]: small, synchronous, offset-based file operations on one
//!   data directory, with a stated crash contract;
//! - [`io::transport::Transport`]: request/response messages between node
//!   ids, and serving them.
//!
//! [`log`] is the segmented, checksummed log that is both the Raft log and
//! the event log; [`raft`] runs openraft over it; [`state`] is the
//! replicated state machine; [`bus`] is the embedded bus users open;
//! [`dispatch`] is the typed in-process dispatcher. See
//! `ARCHITECTURE.md` at the repository root for the map of the whole
//! system.

pub mod audit;
pub mod bus;
pub mod constants;
pub mod dispatch;
pub mod event;
pub mod io;
pub mod log;
pub mod raft;
pub mod state;
#[cfg(feature = "planted-bugs")]
pub mod testing;
#[cfg(feature = "stage-trace")]
pub mod trace;

/// Records a stage when the `stage-trace` feature is on; nothing otherwise.
#[macro_export]
macro_rules! stage {
    ($key:expr, $stage:ident) => {
        #[cfg(feature = "stage-trace")]
        $crate::trace::record($key, $crate::trace::Stage::$stage);
    };
}

/// The README's code blocks, compiled and run as doc tests.
#[doc = include_str!("../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

//! Sluice's data model, shared by nodes and clients.
//!
//! Nothing here does I/O or knows an async runtime, so a client links it
//! without the engine:
//!
//! - [`event`]: the event and batch codec (the bytes a Raft entry holds);
//! - [`state`]: the replicated state machine, a pure function of its state
//!   and the next command (topics, partitions, producer sessions, consumer
//!   groups);
//! - [`records`]: the audit records the state machine stores (signed
//!   checkpoints and erasures, as data) and the header names that carry
//!   signatures and subjects;
//! - [`security`]: principals, access rules, tokens, tenants, quotas;
//! - [`transport`]: the network seam, request/response between node ids;
//! - [`constants`]: every bound of the engine, in one place.

pub mod constants;
pub mod event;
pub mod names;
pub mod records;
pub mod security;
pub mod state;
#[cfg(feature = "planted-bugs")]
pub mod testing;
#[cfg(feature = "stage-trace")]
pub mod trace;
pub mod transport;

/// Records a stage when the calling crate's `stage-trace` feature is on;
/// nothing otherwise.
#[macro_export]
macro_rules! stage {
    ($key:expr, $stage:ident) => {
        #[cfg(feature = "stage-trace")]
        $crate::trace::record($key, $crate::trace::Stage::$stage);
    };
}

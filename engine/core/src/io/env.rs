//! The environment a node runs in, chosen once: its async runtime, its
//! disk and its clock. Engine types take one `E: Env` parameter instead of
//! a runtime and a disk each (as openraft bundles its choices into one
//! `RaftTypeConfig`); production uses [`OsEnv`](super::os::OsEnv), the
//! simulator its own.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::time::Duration;

use openraft_rt::AsyncRuntime;

use super::{Clock, Disk};

/// An environment: which runtime, disk and clock a node uses.
///
/// ### To ensure correctness:
/// - Everything the engine does that depends on the runtime goes through
///   [`Env::Runtime`]'s methods; no engine code asks which runtime it is.
pub trait Env: Sized + Send + Sync + 'static {
    /// Spawns tasks, sleeps, runs blocking work.
    type Runtime: Runtime;
    /// Holds the data directory.
    type Disk: Disk + Clone;
    /// Tells time (one object per node, so simulated nodes drift apart).
    type Clock: Clock;
}

/// openraft's async runtime, plus what the engine needs beyond it.
pub trait Runtime: AsyncRuntime {
    /// Sleeps for `duration`, precisely even below a millisecond: the
    /// gather phase of group commit waits tens of microseconds, which a
    /// millisecond timer wheel would round up to a whole tick.
    fn sleep_precise(duration: Duration) -> impl Future<Output = ()> + Send;
}

/// An environment assembled from parts: for tests and tools that pair a
/// runtime with a disk or clock of their own.
pub struct Assembled<R, D, C>(PhantomData<Parts<R, D, C>>);

/// What [`Assembled`] names, as a marker that is `Send` and `Sync`
/// whatever the parts are.
type Parts<R, D, C> = fn() -> (R, D, C);

impl<R: Runtime, D: Disk + Clone, C: Clock> Env for Assembled<R, D, C> {
    type Runtime = R;
    type Disk = D;
    type Clock = C;
}

impl<R, D, C> fmt::Debug for Assembled<R, D, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Assembled")
    }
}

//! Planted bugs: deliberate violations of Sluice's guarantees that a test
//! build can switch on, one at a time, to prove that the simulator's
//! checker catches each of them. A checker that never fails proves nothing.
//!
//! Only the feature `planted-bugs` compiles this module and the hooks that
//! consult it; only `sluice-sim` enables the feature. Production builds
//! contain neither the switch nor the hooks (CI builds `sluice` without it).
//!
//! Each hook is one `if planted::is_planted(Bug::X)` at the place the bug
//! lives, marked `#[cfg(feature = "planted-bugs")]`; `Bug`'s docs name
//! those places.
//!
//! ### Why per thread
//! The switch is thread-local: madsim runs a whole simulated cluster (every
//! node, every task, `spawn_blocking` included) on one thread, one thread
//! per seed, while the test harness runs several tests on several threads.
//! A per-thread switch plants a bug in exactly one simulation.

use std::cell::Cell;
use std::fmt;

/// A bug that can be planted. See the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Bug {
    /// `raft::propose` answers a leader's publish from a scratch apply of
    /// its current state as soon as the entry is proposed, without waiting
    /// for a quorum to commit it. An entry that never commits (an isolated
    /// leader's) was still acknowledged.
    AckBeforeCommit,
    /// `State::publish` appends a retried event again instead of answering
    /// it as a duplicate with its original offset.
    SkipProducerDedup,
    /// `Groups::check_commit` accepts an offset commit (or a transaction's
    /// commit) carrying an older group generation: a zombie member's.
    AcceptStaleGeneration,
    /// `LogStore::append` reports appends durable to Raft once they are in
    /// the page cache, as `Durability::Buffer` does, although the store was
    /// opened with `Durability::Sync`: a power failure of a quorum loses
    /// committed entries.
    AckBeforeSync,
}

impl Bug {
    /// Every plantable bug.
    pub const ALL: [Bug; 4] = [
        Bug::AckBeforeCommit,
        Bug::SkipProducerDedup,
        Bug::AcceptStaleGeneration,
        Bug::AckBeforeSync,
    ];

    /// A short stable name, for test output and command lines.
    pub fn name(self) -> &'static str {
        match self {
            Bug::AckBeforeCommit => "ack-before-commit",
            Bug::SkipProducerDedup => "skip-producer-dedup",
            Bug::AcceptStaleGeneration => "accept-stale-generation",
            Bug::AckBeforeSync => "ack-before-sync",
        }
    }

    /// The bug named `name` (see [`Bug::name`]).
    pub fn from_name(name: &str) -> Option<Bug> {
        Bug::ALL.into_iter().find(|bug| bug.name() == name)
    }
}

impl fmt::Display for Bug {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

thread_local! {
    static PLANTED: Cell<Option<Bug>> = const { Cell::new(None) };
}

/// Plants `bug` (or none) on the current thread, replacing any other.
pub fn plant(bug: Option<Bug>) {
    PLANTED.with(|planted| planted.set(bug));
}

/// Whether `bug` is planted on the current thread.
pub fn is_planted(bug: Bug) -> bool {
    PLANTED.with(|planted| planted.get() == Some(bug))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(
        clippy::disallowed_methods,
        reason = "a second thread shows the switch is per thread"
    )]
    fn one_bug_per_thread() {
        assert!(!is_planted(Bug::AckBeforeSync));
        plant(Some(Bug::AckBeforeSync));
        assert!(is_planted(Bug::AckBeforeSync));
        assert!(!is_planted(Bug::SkipProducerDedup));
        let other = std::thread::spawn(|| is_planted(Bug::AckBeforeSync));
        assert!(!other.join().expect("joined"), "other threads are clean");
        plant(None);
        assert!(!is_planted(Bug::AckBeforeSync));
        for bug in Bug::ALL {
            assert_eq!(Bug::from_name(bug.name()), Some(bug));
        }
    }
}

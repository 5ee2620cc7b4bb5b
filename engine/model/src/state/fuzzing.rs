//! Entry point for a fuzz target (feature `testing`): must return normally
//! for every input.

use super::{Command, Op, State};

/// Restores arbitrary bytes as a snapshot; a state that restores must hold
/// its invariants, snapshot and restore to itself, and keep applying.
pub fn snapshot_restore(data: &[u8]) {
    let Ok(mut state) = State::restore(data) else {
        return;
    };
    state
        .check_invariants()
        .expect("a restored state holds its invariants");
    let again = State::restore(&state.snapshot()).expect("a restored state snapshots");
    assert_eq!(again, state);
    let next = state
        .last_applied_index()
        .map_or(0, |last| last.saturating_add(1));
    if next > 0 && next < u64::MAX {
        let noop = Command {
            timestamp_ms: 0,
            op: Op::Noop,
        };
        state.apply(next, &noop);
        state
            .check_invariants()
            .expect("invariants hold after apply");
    }
}

//! Histories of operations against a Sluice cluster and the checker that
//! judges them. Used by the deterministic simulator (`sluice-sim`) and by the
//! Jepsen-style runner, so that both apply the same rules.

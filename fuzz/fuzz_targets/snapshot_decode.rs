//! Arbitrary bytes as a snapshot received from the leader:
//! `sluice_core::raft::snapshot::fuzzing::snapshot_decode` must return for every
//! input.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = sluice_core::raft::snapshot::fuzzing::snapshot_decode(data);
});

//! Arbitrary bytes as one or two segment files of a log on `CrashDisk`,
//! opened in both recovery modes, read, verified, appended to and
//! reopened: `sluice_core::log::fuzzing::segment_recovery` must return for
//! every input.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    sluice_core::log::fuzzing::segment_recovery(data);
});

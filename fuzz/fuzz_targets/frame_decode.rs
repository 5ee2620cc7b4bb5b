//! Arbitrary bytes through the frame decoder and the segment scan:
//! `sluice_core::log::fuzzing::frame_decode` must return for every input.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    sluice_core::log::fuzzing::frame_decode(data);
});

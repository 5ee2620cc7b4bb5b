//! Arbitrary bytes through the wire frame decoder, whole and in two pieces:
//! `sluice_client::wire::fuzzing::frame_decode` must return for every input.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    sluice_client::wire::fuzzing::frame_decode(data);
});

//! Arbitrary bytes as security changes (postcard) and as rule text:
//! `sluice_model::security::fuzzing::acl_decode` must return for every
//! input.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    sluice_model::security::fuzzing::acl_decode(data);
});

//! Fuzzes a butterfly part header and payload, decoded against the anchor as a group member does. See `murmur_node::fuzzing::butterfly_part`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    murmur_node::fuzzing::butterfly_part(data);
});

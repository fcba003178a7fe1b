//! Fuzzes a state download: signed-range headers and payloads assembled and checked as a late joiner does. See `murmur_node::fuzzing::state_ranges`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    murmur_node::fuzzing::state_ranges(data);
});

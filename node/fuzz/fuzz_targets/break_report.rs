//! Fuzzes a break report's payload (the peer id of the neighbour a member blames), as the member that re-plans decodes it. See `murmur_node::fuzzing::break_report`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    murmur_node::fuzzing::break_report(data);
});

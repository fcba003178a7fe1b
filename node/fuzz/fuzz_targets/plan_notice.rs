//! Fuzzes a plan notice as a member receives it (decode, bit-exact re-encode, membership's checks and the plan recomputed from its inputs); odd first byte: edits of a valid notice. See `murmur_node::fuzzing::plan_notice`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    murmur_node::fuzzing::plan_notice(data);
});

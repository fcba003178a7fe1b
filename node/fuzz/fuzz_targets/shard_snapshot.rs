//! Fuzzes a pipeline snapshot for a stage range (decode, range and finiteness checks); odd first byte after the range: edits of a valid snapshot. See `murmur_node::fuzzing::shard_snapshot`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    murmur_node::fuzzing::shard_snapshot(data);
});

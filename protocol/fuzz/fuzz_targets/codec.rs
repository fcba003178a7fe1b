//! Fuzzes the payload decoders: the first 9 bytes choose a codec and an element count,
//! the rest is the payload. Decoding must never panic and only ever return finite values.
//! The element count is the receiver's own (its model size), so it is bounded here as a
//! node bounds it; the payload and codec parameters are fully attacker-controlled.
#![no_main]

use libfuzzer_sys::fuzz_target;
use murmur_protocol::Codec;

fuzz_target!(|data: &[u8]| {
    if data.len() < 9 {
        return;
    }
    let n = u64::from(u32::from_le_bytes([data[1], data[2], data[3], data[4]]) % (1 << 20));
    let param = u32::from_le_bytes([data[5], data[6], data[7], data[8]]);
    let codec = match data[0] % 5 {
        0 => Codec::RawF32,
        1 => Codec::F16,
        2 => Codec::Bf16,
        3 => Codec::Int8Block { block: param },
        _ => Codec::TopK { k: u64::from(param) },
    };
    if let Ok(values) = codec.decode(&data[9..], n) {
        assert_eq!(values.len() as u64, n);
        assert!(values.iter().all(|v| v.is_finite()));
    }
});

//! Fuzzes the stream framing readers with small limits: arbitrary streams must give a
//! typed error or a payload whose digest matches, never a panic or an over-allocation.
#![no_main]

use futures::executor::block_on;
use futures::io::Cursor;
use libfuzzer_sys::fuzz_target;
use murmur_protocol::Digest;
use murmur_protocol::framing::{FrameLimits, read_message, read_payload};

fuzz_target!(|data: &[u8]| {
    let limits = FrameLimits { max_payload: 1 << 16, max_chunk: 1 << 12 };
    if let Ok((payload, digest)) = block_on(read_payload(&mut Cursor::new(data), &limits)) {
        assert_eq!(Digest::of(&payload), digest);
    }
    let _ = block_on(read_message(&mut Cursor::new(data), 1 << 12));
});

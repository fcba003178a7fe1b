//! Fuzzes the envelope and message decoders: arbitrary bytes must give `Ok` or a typed
//! error, never a panic, and whatever decodes must re-encode to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use murmur_protocol::envelope::MAX_ENVELOPE_BYTES;
use murmur_protocol::{Message, SignedEnvelope};

fuzz_target!(|data: &[u8]| {
    if let Ok(env) = SignedEnvelope::from_bytes(data, MAX_ENVELOPE_BYTES) {
        assert_eq!(env.to_bytes(), data);
        let _ = env.open();
    }
    if let Ok(msg) = Message::from_bytes(data) {
        assert_eq!(msg.to_bytes().ok().as_deref(), Some(data));
    }
});

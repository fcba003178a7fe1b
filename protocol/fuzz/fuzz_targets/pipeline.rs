//! Fuzzes the pipeline header decoder and the tensor payload check: the first byte splits the
//! input into a header and a payload. Decoding must give `Ok` or a typed error, never a panic;
//! what decodes must re-encode to the same bytes, and a payload it accepts must hold exactly
//! the declared elements.
#![no_main]

use libfuzzer_sys::fuzz_target;
use murmur_protocol::pipeline::PipeHeader;

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let at = usize::from(split).min(rest.len());
    let (header, payload) = rest.split_at(at);
    let Ok(decoded) = PipeHeader::from_bytes(header) else {
        return;
    };
    assert_eq!(decoded.to_bytes().ok().as_deref(), Some(header));
    if let Some(tensor) = &decoded.tensor
        && let Ok(n) = tensor.check_payload(payload)
    {
        assert_eq!(n.checked_mul(4), Some(payload.len()));
    }
});

//! Assembling a peer's model state from the signed ranges it serves (sans-IO): the checks
//! every range's header must pass against the request and the ranges before it, and the
//! final digest and finiteness check. The download task (`state_sync`) fetches; this decides.
//! Nothing a peer declares sizes an allocation: the buffer is bounded by this node's own
//! model size.

use murmur_protocol::{Digest, StateHeader};

/// Why a peer's state ranges do not make a state this node can adopt.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AssemblyError {
    /// The state does not have this model's size.
    #[error("state of {got} bytes, expected {expected}")]
    WrongSize {
        /// The announced size.
        got: u64,
        /// This model's size.
        expected: u64,
    },
    /// The range sent is not the range asked for, or runs past the state's end.
    #[error("range does not match the request")]
    RangeMismatch,
    /// The range sent is empty.
    #[error("empty range")]
    EmptyRange,
    /// Another round's state arrived part way through.
    #[error("the peer's state changed during the download")]
    Changed,
    /// The state is older than the round the peer announced.
    #[error("state is older than the peer announced")]
    Older,
    /// The peer sent no state at all, or stopped before its end.
    #[error("incomplete state")]
    Incomplete,
    /// The bytes do not hash to the announced digest.
    #[error("state digest mismatch")]
    DigestMismatch,
    /// The state holds NaN or infinite values.
    #[error("state holds non-finite values")]
    NonFinite,
}

/// One state download in progress: the bytes received so far and the first range's header.
#[derive(Debug)]
pub struct StateAssembly {
    expected_len: u64,
    announced_round: u64,
    buf: Vec<u8>,
    first: Option<StateHeader>,
}

impl StateAssembly {
    /// A download of a state of `param_count` parameters from a peer that announced
    /// `announced_round`.
    pub fn new(param_count: usize, announced_round: u64) -> Self {
        Self {
            expected_len: (param_count as u64).saturating_mul(4),
            announced_round,
            buf: Vec::new(),
            first: None,
        }
    }

    /// The offset of the next range to ask for; `None` once the state is whole.
    pub fn next_offset(&self) -> Option<u64> {
        let have = self.buf.len() as u64;
        match &self.first {
            Some(h) if have >= h.total_len => None,
            _ => Some(have),
        }
    }

    /// Takes one range (`header` as signed by the peer, `payload` as received), checked
    /// against this model's size, the offset asked for and the ranges before it.
    pub fn push(&mut self, header: StateHeader, payload: &[u8]) -> Result<(), AssemblyError> {
        if header.total_len != self.expected_len {
            return Err(AssemblyError::WrongSize {
                got: header.total_len,
                expected: self.expected_len,
            });
        }
        let offset = self.buf.len() as u64;
        let end = offset.checked_add(payload.len() as u64);
        if header.offset != offset
            || header.range_len != payload.len() as u64
            || end.is_none_or(|end| end > self.expected_len)
        {
            return Err(AssemblyError::RangeMismatch);
        }
        if payload.is_empty() {
            return Err(AssemblyError::EmptyRange);
        }
        if let Some(f) = &self.first
            && (f.total_digest != header.total_digest || f.round != header.round)
        {
            return Err(AssemblyError::Changed);
        }
        if header.round < self.announced_round {
            return Err(AssemblyError::Older);
        }
        if self.buf.is_empty() {
            // Bounded by this node's own model size, checked above.
            self.buf.reserve_exact(self.expected_len as usize);
        }
        self.buf.extend_from_slice(payload);
        self.first.get_or_insert(header);
        Ok(())
    }

    /// The whole state as (round, parameters), once its digest and values check out.
    /// CPU-bound (hashes the whole state): run it off the async runtime.
    pub fn finish(self) -> Result<(u64, Vec<f32>), AssemblyError> {
        let Some(header) = self.first else {
            return Err(AssemblyError::Incomplete);
        };
        if (self.buf.len() as u64) != header.total_len {
            return Err(AssemblyError::Incomplete);
        }
        if Digest::of(&self.buf) != header.total_digest {
            return Err(AssemblyError::DigestMismatch);
        }
        let params: Vec<f32> = self
            .buf
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        if params.iter().any(|v| !v.is_finite()) {
            return Err(AssemblyError::NonFinite);
        }
        Ok((header.round, params))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use murmur_protocol::{ModelFingerprint, PeerKey, RunId};

    fn bytes_of(values: &[f32]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    fn header(state: &[u8], round: u64, offset: u64, len: u64) -> StateHeader {
        StateHeader {
            peer: PeerKey([3; 32]),
            run: RunId([1; 32]),
            model: ModelFingerprint([2; 32]),
            round,
            samples: 0,
            total_len: state.len() as u64,
            total_digest: Digest::of(state),
            offset,
            range_len: len,
        }
    }

    #[test]
    fn ranges_in_order_make_the_state() {
        let values: Vec<f32> = (0..10).map(|i| i as f32 * 0.5).collect();
        let state = bytes_of(&values);
        let mut a = StateAssembly::new(10, 7);
        assert_eq!(a.next_offset(), Some(0));
        a.push(header(&state, 9, 0, 16), &state[..16]).unwrap();
        assert_eq!(a.next_offset(), Some(16));
        a.push(header(&state, 9, 16, 24), &state[16..]).unwrap();
        assert_eq!(a.next_offset(), None);
        assert_eq!(a.finish().unwrap(), (9, values));
    }

    #[test]
    fn a_peer_cannot_size_the_buffer_or_bend_the_ranges() {
        let state = bytes_of(&[1.0; 10]);
        // A declared size other than the model's is refused before anything is kept.
        let mut big = header(&state, 9, 0, 40);
        big.total_len = u64::MAX;
        let mut a = StateAssembly::new(10, 7);
        assert!(matches!(
            a.push(big, &state),
            Err(AssemblyError::WrongSize { .. })
        ));
        // A range past the end, one at another offset, one whose length lies.
        let mut past = StateAssembly::new(10, 7);
        past.push(header(&state, 9, 0, 32), &state[..32]).unwrap();
        let mut extra = state[32..].to_vec();
        extra.extend_from_slice(&[0; 8]);
        assert_eq!(
            past.push(header(&state, 9, 32, 16), &extra),
            Err(AssemblyError::RangeMismatch)
        );
        assert_eq!(
            a.push(header(&state, 9, 8, 8), &state[8..16]),
            Err(AssemblyError::RangeMismatch)
        );
        assert_eq!(
            a.push(header(&state, 9, 0, 9), &state[..8]),
            Err(AssemblyError::RangeMismatch)
        );
        assert_eq!(
            a.push(header(&state, 9, 0, 0), &[]),
            Err(AssemblyError::EmptyRange)
        );
        // An older round than announced, a round that changes part way through.
        assert_eq!(
            a.push(header(&state, 6, 0, 8), &state[..8]),
            Err(AssemblyError::Older)
        );
        a.push(header(&state, 9, 0, 8), &state[..8]).unwrap();
        assert_eq!(
            a.push(header(&state, 10, 8, 8), &state[8..16]),
            Err(AssemblyError::Changed)
        );
    }

    #[test]
    fn the_whole_state_must_hash_to_its_digest_and_be_finite() {
        let state = bytes_of(&[1.0; 4]);
        let mut forged = header(&state, 9, 0, 16);
        forged.total_digest = Digest::of(b"another state");
        let mut a = StateAssembly::new(4, 0);
        a.push(forged, &state).unwrap();
        assert_eq!(a.finish(), Err(AssemblyError::DigestMismatch));

        let nan = bytes_of(&[1.0, f32::NAN, 0.0, 2.0]);
        let mut b = StateAssembly::new(4, 0);
        b.push(header(&nan, 1, 0, 16), &nan).unwrap();
        assert_eq!(b.finish(), Err(AssemblyError::NonFinite));

        let mut c = StateAssembly::new(4, 0);
        c.push(header(&state, 1, 0, 8), &state[..8]).unwrap();
        assert_eq!(c.finish(), Err(AssemblyError::Incomplete));
        assert_eq!(
            StateAssembly::new(4, 0).finish(),
            Err(AssemblyError::Incomplete)
        );
    }
}

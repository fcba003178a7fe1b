//! Producing the outgoing delta: a sync (mass, merge, outer step, round clock) ends with the
//! signed, compressed message for the next fan-out; a send that failed is folded back in.

use murmur_protocol::{
    Codec, DeltaHeader, Digest, Message, SignedEnvelope, envelope::MAX_ENVELOPE_BYTES,
};

use super::Averager;
use crate::averaging::AveragingError;
use crate::averaging::mixing::{self, Weighted};

/// A signed message ready to be sent to each chosen peer.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// The round it belongs to.
    pub round: u64,
    /// Encoded `SignedEnvelope` with the delta header.
    pub header: Vec<u8>,
    /// The encoded payload.
    pub payload: bytes::Bytes,
    /// BLAKE3 digest of `payload` (signed in the header; the transfer need not hash again).
    pub digest: Digest,
    /// Mass given to each recipient (returned to the sender if a send fails).
    pub mass_each: f64,
}

impl Averager {
    /// Gives back a send that failed: the model it carried, decoded from the very bytes
    /// that were to be sent, is folded back in with its mass. Push-sum then conserves the
    /// network's weighted total exactly, however many syncs happened since the send.
    /// A send from before an adopted or restored state is dropped with its mass (the
    /// state it belonged to is gone, as in [`adopt`](Self::adopt)).
    pub fn returned(&mut self, outgoing: &Outgoing, params: &mut [f32]) {
        if outgoing.round < self.returns_from {
            return;
        }
        let decoded = SignedEnvelope::open_bytes(&outgoing.header, MAX_ENVELOPE_BYTES)
            .ok()
            .and_then(|(_, message)| match message {
                Message::Delta(h) => h
                    .decode_received_payload(
                        &outgoing.payload,
                        self.anchor.len() as u64,
                        &outgoing.digest,
                    )
                    .ok(),
                _ => None,
            });
        let Some(mut values) = decoded else {
            // Cannot happen for a message this engine built; keep the mass at least.
            tracing::warn!(
                round = outgoing.round,
                "returned delta unreadable; mass kept"
            );
            self.set_mass(self.mass + outgoing.mass_each);
            return;
        };
        for (v, a) in values.iter_mut().zip(&self.anchor) {
            *v += a;
        }
        let mass = mixing::absorb(
            params,
            self.mass,
            Weighted {
                values: &values,
                mass: outgoing.mass_each,
            },
        );
        self.set_mass(mass);
    }

    /// One sync: adds `fresh_samples` to the mass, merges the queued deltas into `params`,
    /// applies the outer optimizer, and returns the message for `recipients` peers (none
    /// when there is nobody to send to).
    pub fn sync(
        &mut self,
        params: &mut [f32],
        fresh_samples: u64,
        local_steps: u32,
        recipients: usize,
    ) -> Result<Option<Outgoing>, AveragingError> {
        if params.len() != self.anchor.len() {
            return Err(AveragingError::WrongLength {
                expected: self.anchor.len(),
                actual: params.len(),
            });
        }
        self.set_mass(self.mass + fresh_samples as f64);
        self.merge_pending(params);
        if let Some((optimizer, previous)) = &mut self.outer {
            if previous.len() == params.len() {
                optimizer.step(previous, params);
            }
            previous.clear();
            previous.extend_from_slice(params);
        }
        let round = self.round;
        self.set_round(self.round.saturating_add(1));
        if let Err(err) = self.replay.prune(self.round) {
            tracing::warn!(%err, "could not prune the merged-pairs set");
        }
        if recipients == 0 {
            return Ok(None);
        }
        let mut relative = std::mem::take(&mut self.relative);
        relative.clear();
        relative.extend(params.iter().zip(&self.anchor).map(|(x, a)| x - a));
        let compressed = self.feedback.compress(&relative, self.config.codec);
        self.relative = relative;
        let compressed = compressed?;
        let (kept, each) = mixing::split_mass(self.mass, recipients);
        self.mass = kept;
        let header = DeltaHeader {
            run: self.config.run,
            model: self.config.model,
            peer: self.me,
            base_round: round,
            local_steps,
            samples: fresh_samples,
            weight: each,
            codec: self.config.codec,
            element_count: params.len() as u64,
            payload_len: compressed.payload.len() as u64,
            payload_digest: compressed.digest,
            timestamp_ms: crate::net::now_ms(),
        };
        let envelope = SignedEnvelope::sign(&self.key, &Message::Delta(header))?;
        Ok(Some(Outgoing {
            round,
            header: envelope.to_bytes(),
            payload: compressed.payload.into(),
            digest: compressed.digest,
            mass_each: each,
        }))
    }

    /// The smallest change of the model (relative to its distance from the anchor) worth
    /// passing on while only averaging: about the codec's own relative rounding of a delta,
    /// below which a re-send mostly repeats what the peers were sent (see
    /// `session::worker`'s idle syncs). 0 for sparse codecs: never quiet.
    pub fn quiet_change(&self) -> f64 {
        match self.config.codec {
            Codec::RawF32 => 1e-6,
            Codec::F16 => 1e-4,
            Codec::Bf16 => 1e-3,
            Codec::Int8Block { .. } => 5e-3,
            // Sparse deltas rely on error feedback over many sends: never quiet.
            Codec::TopK { .. } => 0.0,
        }
    }
}

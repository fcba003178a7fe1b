//! Admission of a received delta: the envelope, signer, run, model, membership, replay,
//! staleness and lead checks, decoding into a reused buffer, and queueing the result for the
//! next sync. Every refusal is counted.
//!
//! One sender holds at most one place in the queue: a second delta from it before the next
//! sync is folded into the first (their mass-weighted mean, with both masses), which is what
//! push-sum would have merged anyway. A peer id is free, but one identity that sends many
//! deltas with distinct rounds no longer fills the queue and pushes honest deltas out, nor
//! casts more than one vote in a robust merge.

use libp2p::PeerId;
use murmur_protocol::{CodecError, Digest};

use super::gate::open_header;
use super::{Averager, Candidate};
use crate::averaging::{Rejection, beyond_lead};

impl Averager {
    /// Checks a received delta and queues it for the next sync. Every refusal is counted.
    pub fn receive(
        &mut self,
        sender: &PeerId,
        header: &[u8],
        payload: &[u8],
    ) -> Result<(), Rejection> {
        self.receive_transferred(sender, header, payload, None)
    }

    /// Like [`receive`](Self::receive) for a payload whose digest the transfer already
    /// computed and checked (`transfer_digest`): a match with the signed digest saves hashing
    /// the payload again.
    pub fn receive_transferred(
        &mut self,
        sender: &PeerId,
        header: &[u8],
        payload: &[u8],
        transfer_digest: Option<&Digest>,
    ) -> Result<(), Rejection> {
        let result = self.check(sender, header, payload, transfer_digest);
        match result {
            Ok(candidate) => {
                if let Some(queued) = self.pending.iter().position(|c| c.peer == candidate.peer) {
                    let folded = self.fold(queued, candidate);
                    self.recycle(folded);
                    return Ok(());
                }
                self.pending.push(candidate);
                let cap = 4 * self.config.fanout.max(1) + 8;
                if self.pending.len() > cap {
                    let dropped = self.pending.remove(0);
                    self.recycle(dropped.values);
                    self.counts.reject(Rejection::Overloaded);
                }
                Ok(())
            }
            Err(reason) => {
                self.counts.reject(reason);
                Err(reason)
            }
        }
    }

    fn check(
        &mut self,
        sender: &PeerId,
        header: &[u8],
        payload: &[u8],
        transfer_digest: Option<&Digest>,
    ) -> Result<Candidate, Rejection> {
        let (signer, h) = open_header(&self.config, sender, header)?;
        if self.replay.contains(&signer, h.base_round) {
            return Err(Rejection::Replay);
        }
        let lag = self.lag(h.base_round)?;
        let expected = self.anchor.len() as u64;
        let mut values = self.spare.pop().unwrap_or_default();
        let decoded = match transfer_digest {
            Some(digest) => h.decode_received_payload_into(payload, expected, digest, &mut values),
            None => h.decode_payload_into(payload, expected, &mut values),
        };
        if let Err(e) = decoded {
            self.recycle(values);
            return Err(match e {
                CodecError::NonFinite(_) => Rejection::NonFinite,
                _ => Rejection::BadPayload,
            });
        }
        // One pass: back to absolute values, the distance from the anchor (the outlier
        // check's figure), and finiteness after adding the anchor.
        let mut norm_sq = 0.0f64;
        let mut finite = true;
        for (v, a) in values.iter_mut().zip(&self.anchor) {
            norm_sq += f64::from(*v) * f64::from(*v);
            *v += a;
            finite &= v.is_finite();
        }
        if !finite {
            self.recycle(values);
            return Err(Rejection::NonFinite);
        }
        // Recording the pair can only fail on a storage error; the delta is still good.
        if let Err(err) = self.replay.insert(signer, h.base_round) {
            tracing::warn!(%err, "could not persist a merged (peer, round) pair");
        }
        // Rounds are a Lamport clock: a node that hears of a later round moves up to it, so
        // peers that sync at different rates keep comparable round numbers and `lag`
        // measures real staleness.
        self.set_round(self.round.max(h.base_round));
        let discount = self
            .config
            .staleness_discount
            .powi(lag.saturating_sub(1).min(64) as i32);
        Ok(Candidate {
            peer: signer,
            values,
            mass: h.weight * discount,
            norm: norm_sq.sqrt(),
        })
    }

    /// How many rounds a delta made at `base_round` lags this node's clock (0 while not
    /// training: then nothing is stale); refused when too stale or too far ahead.
    fn lag(&self, base_round: u64) -> Result<u64, Rejection> {
        if beyond_lead(base_round, self.round, self.config.max_lead) {
            return Err(Rejection::TooFarAhead);
        }
        let lag = if self.training {
            self.round.saturating_sub(base_round)
        } else {
            0
        };
        if lag > self.config.max_staleness {
            return Err(Rejection::Stale);
        }
        Ok(lag)
    }

    /// Folds `later` into the queued candidate at `queued` (same sender): the mass-weighted
    /// mean of both models with the sum of their masses. Returns the buffer left over.
    fn fold(&mut self, queued: usize, later: Candidate) -> Vec<f32> {
        let anchor = &self.anchor;
        let first = &mut self.pending[queued];
        let total = first.mass + later.mass;
        if total <= 0.0 || !total.is_finite() {
            // Nothing to weigh by: the later delta stands alone.
            let earlier = std::mem::replace(first, later);
            return earlier.values;
        }
        let (a, b) = (first.mass / total, later.mass / total);
        let mut norm_sq = 0.0f64;
        for ((x, y), base) in first.values.iter_mut().zip(&later.values).zip(anchor) {
            let mixed = (a * f64::from(*x) + b * f64::from(*y)) as f32;
            *x = mixed;
            let d = f64::from(mixed - base);
            norm_sq += d * d;
        }
        first.mass = total;
        first.norm = norm_sq.sqrt();
        self.counts.folded += 1;
        later.values
    }
}

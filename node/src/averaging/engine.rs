//! [`Averager`]: one node's side of gossip averaging — validates received deltas, merges them
//! at each sync (push-sum or robust), applies the optional outer optimizer, and produces the
//! signed, compressed message for the next fan-out.
//!
//! It is plain synchronous code over flat `f32` vectors, owned by the node's training thread;
//! the network only moves its bytes.

use libp2p::PeerId;
use murmur_protocol::{
    Codec, CodecError, DeltaHeader, Digest, ErrorFeedback, Message, ModelFingerprint, PeerKey,
    RunId, SignedEnvelope, envelope::MAX_ENVELOPE_BYTES,
};
use serde::{Deserialize, Serialize};

use super::mixing::{self, RobustConfig, Weighted};
use super::outer::{OuterConfig, OuterOptimizer};
use super::reject::{MergeCounts, Rejection};
use super::replay::ReplayGuard;
use super::{Admission, AveragingError, Tamper};
use crate::net::key_matches_peer;

/// Settings of the averaging engine.
#[derive(Debug, Clone)]
pub struct AveragerConfig {
    /// The run.
    pub run: RunId,
    /// The architecture fingerprint every delta must carry.
    pub model: ModelFingerprint,
    /// Payload codec (lossy codecs run with error feedback).
    pub codec: Codec,
    /// Peers each sync is sent to.
    pub fanout: usize,
    /// A delta `d` rounds behind the receiver's clock is weighted by `discount^(d-1)` (one
    /// round of lag is free).
    pub staleness_discount: f64,
    /// Deltas more rounds behind than this are refused.
    pub max_staleness: u64,
    /// A model whose distance from the anchor exceeds this multiple of the median distance
    /// (own model included) is refused as an outlier.
    pub outlier_ratio: f64,
    /// Robust merging (clipping + trimmed mean) instead of plain push-sum.
    pub robust: Option<RobustConfig>,
    /// DiLoCo-style outer optimizer applied to the merged model.
    pub outer: Option<OuterConfig>,
    /// Who may contribute.
    pub admission: Admission,
    /// Averaging mass the node starts with (samples).
    pub initial_mass: f64,
    /// Red-team switch: corrupt what this node sends (testnets only).
    pub tamper: Option<Tamper>,
    /// Average in butterfly rounds (exact group means) instead of push-sum gossip.
    pub butterfly: Option<super::ButterflyConfig>,
}

impl AveragerConfig {
    /// Defaults for `run` and `model`: int8 blocks with error feedback, fan-out 2.
    pub fn new(run: RunId, model: ModelFingerprint) -> Self {
        Self {
            run,
            model,
            codec: Codec::Int8Block {
                block: murmur_protocol::codec::DEFAULT_INT8_BLOCK,
            },
            fanout: 2,
            staleness_discount: 0.8,
            max_staleness: 16,
            outlier_ratio: 10.0,
            robust: None,
            outer: None,
            admission: Admission::Open,
            initial_mass: 1.0,
            tamper: None,
            butterfly: None,
        }
    }
}

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

/// What a checkpoint keeps of the engine.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AveragerState {
    /// Next round number.
    pub round: u64,
    /// Mass held.
    pub mass: f64,
    /// Error-feedback residual.
    pub residual: Vec<f32>,
    /// Outer momentum and the model at the last sync (empty without an outer optimizer).
    pub outer_momentum: Vec<f32>,
    /// Model at the last sync (outer optimizer only).
    pub outer_previous: Vec<f32>,
}

#[derive(Debug)]
struct Candidate {
    values: Vec<f32>,
    mass: f64,
    /// Distance of `values` from the anchor (computed while decoding).
    norm: f64,
}

/// Model-sized buffers kept for reuse between deltas: decoding a large model's delta into a
/// fresh vector every time costs a page fault per 4 KiB (glibc maps allocations this large
/// afresh each time), more than the decoding itself.
const SPARE_BUFFERS: usize = 4;

/// The averaging engine of one node.
#[derive(Debug)]
pub struct Averager {
    config: AveragerConfig,
    key: ed25519_dalek::SigningKey,
    me: PeerKey,
    anchor: Vec<f32>,
    round: u64,
    mass: f64,
    feedback: ErrorFeedback,
    outer: Option<(OuterOptimizer, Vec<f32>)>,
    pending: Vec<Candidate>,
    replay: ReplayGuard,
    counts: MergeCounts,
    /// Failed sends of earlier rounds are dropped when they come back: after adopting or
    /// restoring a state, the model and mass they carried are no longer this node's share.
    returns_from: u64,
    training: bool,
    /// Norms (distance from the anchor) of recently merged models.
    norm_history: History,
    /// Distances from the own model of recently merged models (robust clipping radius).
    distance_history: History,
    /// Decoding buffers of merged or refused deltas, reused by the next ones.
    spare: Vec<Vec<f32>>,
    /// Scratch for the model relative to the anchor at a sync.
    relative: Vec<f32>,
}

/// The last few values of a statistic, for robust reference levels.
#[derive(Debug, Default)]
struct History(std::collections::VecDeque<f64>);

impl History {
    const LEN: usize = 32;

    fn push(&mut self, value: f64) {
        if self.0.len() == Self::LEN {
            self.0.pop_front();
        }
        self.0.push_back(value);
    }

    fn median(&self) -> Option<f64> {
        let values: Vec<f64> = self.0.iter().copied().collect();
        (values.len() >= 3).then(|| mixing::median(&values))
    }
}

impl Averager {
    /// An engine whose payloads are encoded relative to `anchor` (the run's initial model,
    /// identical on every peer).
    pub fn new(
        config: AveragerConfig,
        key: ed25519_dalek::SigningKey,
        anchor: Vec<f32>,
        replay: ReplayGuard,
    ) -> Self {
        let me = PeerKey(key.verifying_key().to_bytes());
        let outer = config
            .outer
            .map(|c| (OuterOptimizer::new(c, anchor.len()), Vec::new()));
        Self {
            mass: config.initial_mass,
            config,
            key,
            me,
            feedback: ErrorFeedback::new(anchor.len()),
            anchor,
            round: 0,
            outer,
            pending: Vec::new(),
            replay,
            counts: MergeCounts::default(),
            returns_from: 0,
            training: true,
            norm_history: History::default(),
            distance_history: History::default(),
            spare: Vec::new(),
            relative: Vec::new(),
        }
    }

    /// Current round (number of syncs done).
    pub fn round(&self) -> u64 {
        self.round
    }
    /// Mass held, in samples.
    pub fn mass(&self) -> f64 {
        self.mass
    }
    /// Merge and rejection counters.
    pub fn counts(&self) -> &MergeCounts {
        &self.counts
    }

    /// The run's initial model, which payloads are encoded relative to.
    pub fn anchor(&self) -> &[f32] {
        &self.anchor
    }

    /// The signing key and peer key of this node.
    pub fn signer(&self) -> (&ed25519_dalek::SigningKey, PeerKey) {
        (&self.key, self.me)
    }

    /// Butterfly rounds: adds trained samples to the mass.
    pub fn add_mass(&mut self, samples: f64) {
        self.mass += samples;
    }

    /// Butterfly rounds: counts parts averaged in.
    pub fn count_merged(&mut self, parts: u64) {
        self.counts.merged += parts;
    }
    /// Deltas waiting for the next sync.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }
    /// The configuration.
    pub fn config(&self) -> &AveragerConfig {
        &self.config
    }

    /// Whether this node still trains. Staleness only matters while models move: with
    /// training off, old messages are merged at full weight so no mass is lost and the
    /// average stays exact.
    pub fn set_training(&mut self, training: bool) {
        self.training = training;
    }

    /// Counts a delta dropped before it reached the engine.
    pub fn count_rejection(&mut self, reason: Rejection) {
        self.counts.reject(reason);
    }

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
        let (signer, message) = SignedEnvelope::open_bytes(header, MAX_ENVELOPE_BYTES)
            .map_err(|_| Rejection::BadEnvelope)?;
        let Message::Delta(h) = message else {
            return Err(Rejection::NotADelta);
        };
        if !key_matches_peer(&signer, sender) {
            return Err(Rejection::SignerMismatch);
        }
        if h.run != self.config.run {
            return Err(Rejection::WrongRun);
        }
        if h.model != self.config.model {
            return Err(Rejection::WrongModel);
        }
        if !self.config.admission.admits(&signer) {
            return Err(Rejection::NotMember);
        }
        if self.replay.contains(&signer, h.base_round) {
            return Err(Rejection::Replay);
        }
        let lag = if self.training {
            self.round.saturating_sub(h.base_round)
        } else {
            0
        };
        if lag > self.config.max_staleness {
            return Err(Rejection::Stale);
        }
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
        self.round = self.round.max(h.base_round);
        let discount = self
            .config
            .staleness_discount
            .powi(lag.saturating_sub(1).min(64) as i32);
        Ok(Candidate {
            values,
            mass: h.weight * discount,
            norm: norm_sq.sqrt(),
        })
    }

    /// Keeps a decoding buffer for the next delta (up to [`SPARE_BUFFERS`]).
    fn recycle(&mut self, buffer: Vec<f32>) {
        if self.spare.len() < SPARE_BUFFERS && buffer.capacity() >= self.anchor.len() {
            self.spare.push(buffer);
        }
    }

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
            self.mass += outgoing.mass_each;
            return;
        };
        for (v, a) in values.iter_mut().zip(&self.anchor) {
            *v += a;
        }
        self.mass = mixing::absorb(
            params,
            self.mass,
            Weighted {
                values: &values,
                mass: outgoing.mass_each,
            },
        );
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
        self.mass += fresh_samples as f64;
        self.merge_pending(params);
        if let Some((optimizer, previous)) = &mut self.outer {
            if previous.len() == params.len() {
                optimizer.step(previous, params);
            }
            previous.clear();
            previous.extend_from_slice(params);
        }
        let round = self.round;
        self.round += 1;
        if let Err(err) = self.replay.prune(self.round) {
            tracing::warn!(%err, "could not prune the merged-pairs set");
        }
        if recipients == 0 {
            return Ok(None);
        }
        let mut relative = std::mem::take(&mut self.relative);
        relative.clear();
        relative.extend(params.iter().zip(&self.anchor).map(|(x, a)| x - a));
        if let Some(tamper) = self.config.tamper {
            tamper.apply(&mut relative);
        }
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

    /// Merges the queued deltas into `params` without producing a message (a later
    /// [`sync`](Self::sync) then has nothing left to merge). Errors when `params` has the
    /// wrong length.
    pub fn merge(&mut self, params: &mut [f32]) -> Result<(), AveragingError> {
        if params.len() != self.anchor.len() {
            return Err(AveragingError::WrongLength {
                expected: self.anchor.len(),
                actual: params.len(),
            });
        }
        self.merge_pending(params);
        Ok(())
    }

    /// How far `to` is from `from`, relative to `from`'s distance from the anchor (what
    /// deltas encode).
    pub fn relative_distance(&self, from: &[f32], to: &[f32]) -> f64 {
        let scale = mixing::l2_distance(from, &self.anchor);
        mixing::l2_distance(from, to) / scale.max(f64::MIN_POSITIVE)
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

    fn merge_pending(&mut self, params: &mut [f32]) {
        let pending = std::mem::take(&mut self.pending);
        if pending.is_empty() {
            return;
        }
        // Norm outliers: a model much further from the anchor than this node's own model and
        // than the models merged recently (e.g. a delta scaled ×100) is refused. The candidate
        // itself never sets the reference, so a lone attacker cannot raise it.
        let own_norm = mixing::l2_distance(params, &self.anchor);
        let reference = self.norm_history.median().unwrap_or(0.0).max(own_norm);
        let limit = self.config.outlier_ratio * reference.max(1e-12);
        let mut accepted = Vec::with_capacity(pending.len());
        for candidate in pending {
            if candidate.norm > limit {
                self.counts.reject(Rejection::NormOutlier);
                self.recycle(candidate.values);
            } else {
                self.norm_history.push(candidate.norm);
                accepted.push(candidate);
            }
        }
        self.counts.merged += accepted.len() as u64;
        match self.config.robust {
            Some(robust) => {
                let others: Vec<&[f32]> = accepted.iter().map(|c| c.values.as_slice()).collect();
                let reference = self.distance_history.median();
                for other in &others {
                    self.distance_history
                        .push(mixing::l2_distance(params, other));
                }
                mixing::robust_aggregate(params, &others, robust, reference);
                self.mass += accepted.iter().map(|c| c.mass).sum::<f64>();
            }
            None => {
                let weighted: Vec<Weighted<'_>> = accepted
                    .iter()
                    .map(|c| Weighted {
                        values: &c.values,
                        mass: c.mass,
                    })
                    .collect();
                self.mass = mixing::absorb_all(params, self.mass, &weighted);
            }
        }
        for candidate in accepted {
            self.recycle(candidate.values);
        }
    }

    /// Adopts a model downloaded from a peer (late join): its parameters are the caller's,
    /// the round jumps to the peer's, queued deltas are dropped.
    ///
    /// The node's mass is forfeited: its old model is gone, and keeping the mass with the
    /// adopted copy would count the peer's model twice in the network-wide average.
    pub fn adopt(&mut self, round: u64) {
        self.round = self.round.max(round);
        self.mass = 0.0;
        self.pending.clear();
        self.returns_from = self.round;
        if let Some((_, previous)) = &mut self.outer {
            previous.clear();
        }
    }

    /// Moves the round clock forward to at least `round` (never backwards).
    pub fn advance_round(&mut self, round: u64) {
        self.round = self.round.max(round);
    }

    /// What a checkpoint keeps.
    pub fn state(&self) -> AveragerState {
        let (outer_momentum, outer_previous) = match &self.outer {
            Some((opt, prev)) => (opt.momentum().to_vec(), prev.clone()),
            None => (Vec::new(), Vec::new()),
        };
        AveragerState {
            round: self.round,
            mass: self.mass,
            residual: self.feedback.residual().to_vec(),
            outer_momentum,
            outer_previous,
        }
    }

    /// Restores a checkpointed state; `min_round` (e.g. the last round persisted as sent)
    /// keeps round numbers from being reused after a crash.
    pub fn restore(&mut self, state: AveragerState, min_round: u64) {
        self.round = state.round.max(min_round);
        self.mass = state.mass;
        if state.residual.len() == self.anchor.len() {
            self.feedback = ErrorFeedback::from_residual(state.residual);
        }
        if let Some((opt, prev)) = &mut self.outer {
            let config = self.config.outer.unwrap_or_default();
            *opt =
                OuterOptimizer::new(config, self.anchor.len()).with_momentum(state.outer_momentum);
            *prev = state.outer_previous;
        }
        self.pending.clear();
        self.returns_from = self.round;
    }
}

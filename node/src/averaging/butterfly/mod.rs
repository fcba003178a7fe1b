//! Butterfly (scatter-reduce) averaging: a round in which every member of the group ends
//! with the same sample-weighted mean, moving each element of the model twice instead of
//! once per peer as push-sum's full fan-out does.
//!
//! A round of a group of `n` peers (this node and its live peers, ordered by peer id, so
//! every member computes the same split) cuts the model into `n` contiguous parts; member `k`
//! owns part `k`. Each member sends every owner its slice of the owner's part, weighted by
//! its mass; each owner averages what it received with its own slice and sends the mean back
//! to every contributor. Everyone then holds the same values (the owner applies the mean as
//! rounded by the codec, as the others decode it).
//!
//! A node's mass (the samples behind its model) is its weight in every round and is not
//! changed by averaging: each part's mean then keeps `Σ mass × value` over the members that
//! took part in it, so a round that only part of the group completes (a member vanished, a
//! mean came late) moves every member towards the same weighted mean and biases nothing. A
//! mean that arrives after its round ended is still added (relative to what was sent).
//!
//! Nothing waits without bound: an owner averages whatever arrived within half the window,
//! a contributor keeps its own slice of any part whose mean does not arrive within the
//! window, and a part whose contribution could not be delivered is not waited for. A peer
//! that hears of a round it has not started joins it (the "pull"), so one node's timer
//! starts the round for all. Peers whose views of the group differ for a moment send parts
//! that do not match the owner's split; those are refused ([`Rejection::PartMismatch`]),
//! the round ends early, and the next one uses the views as they are by then.
//!
//! [`Butterfly`] is plain synchronous state owned by the training thread; [`wire`] encodes,
//! signs and checks the parts, [`inbox`] takes in received ones.

mod gate;
mod inbox;
mod round;
pub(crate) mod wire;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use libp2p::PeerId;
use murmur_protocol::{Codec, PartPhase};

use super::{AveragerConfig, AveragingError, Rejection};
pub use gate::PartGate;
use inbox::EarlyPart;
use round::{LateMeans, Round};
pub use wire::PartSend;
use wire::Signer;

/// Settings of butterfly averaging.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ButterflyConfig {
    /// Payload codec of the parts: a dense one (raw, f16, bf16): a round has no error
    /// feedback to carry a sparse or int8 codec's residual.
    pub codec: Codec,
    /// How long a round of a small model may take: owners average what arrived within half
    /// of it, and contributors stop waiting for means after all of it. Each round adds the
    /// time its parts need at [`MIN_PART_RATE`], so large models are not cut short.
    pub window: Duration,
}

impl Default for ButterflyConfig {
    fn default() -> Self {
        Self {
            codec: Codec::F16,
            window: Duration::from_secs(4),
        }
    }
}

impl ButterflyConfig {
    /// This configuration with `codec` when it is dense, otherwise f16.
    pub fn with_codec_if_dense(mut self, codec: Codec) -> Self {
        if matches!(codec, Codec::RawF32 | Codec::F16 | Codec::Bf16) {
            self.codec = codec;
        }
        self
    }
}

/// Slowest rate, bytes per second, at which a node is expected to take in one phase of a
/// round (its `n − 1` slices, or its `n − 1` means): sizes the window of large models.
pub const MIN_PART_RATE: f64 = 25e6;

/// Most rounds a part may be ahead of the receiver's clock (a peer far ahead is caught up
/// with by downloading its state, not by jumping the round clock to whatever a part says).
pub const MAX_ROUND_LEAD: u64 = 64;

/// Ended rounds whose missing means are still taken in.
const MAX_LATE_ROUNDS: usize = 8;

/// How a round ended.
#[derive(Debug, Clone, PartialEq)]
pub struct RoundEnd {
    /// The round.
    pub round: u64,
    /// Every part was averaged over the whole group.
    pub complete: bool,
    /// The group the round was run with (this node included, sorted).
    pub group: Vec<PeerId>,
}

/// What a received part did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// A contribution to this node's part of the current round.
    Contribution,
    /// A mean of one of the current round's parts, now in the corrections.
    Mean,
    /// A mean of a round that had ended, now in the corrections: the model moved away from
    /// what the group agreed on.
    LateMean,
    /// A part of a later round: this node should join it.
    Early,
}

/// A part's mean (absolute values) to bring into the model: the elements from `offset` move
/// by `mean − sent`
/// (training may have moved them since they were sent); those that did not move become the
/// mean exactly, so the members of a round hold bit-identical values.
#[derive(Debug, Clone)]
pub struct Correction {
    /// First element.
    pub offset: usize,
    /// Mean minus the values the node contributed.
    pub mean: Vec<f32>,
    /// The values this node contributed.
    pub sent: Vec<f32>,
}

/// One node's side of butterfly averaging.
#[derive(Debug)]
pub struct Butterfly {
    config: ButterflyConfig,
    signer: Signer,
    local: PeerId,
    total: usize,
    current: Option<Round>,
    /// Recently ended rounds whose means did not all arrive, newest last.
    late: Vec<LateMeans>,
    /// Rounds up to this one are over (or were never taken part in).
    finished: Option<u64>,
    early: BTreeMap<u64, Vec<EarlyPart>>,
    corrections: Vec<Correction>,
    scratch: Vec<f32>,
    /// The model copy of the last round, reused by the next.
    spare: Vec<f32>,
    /// The early check of inbound parts, kept up to date with the rounds.
    gate: Arc<PartGate>,
}

impl Butterfly {
    /// The butterfly side of a node whose gossip averaging is configured by `averager`,
    /// signing with `key`, for models of `total` elements.
    pub fn new(
        config: ButterflyConfig,
        averager: &AveragerConfig,
        key: ed25519_dalek::SigningKey,
        local: PeerId,
        total: usize,
    ) -> Self {
        let me = murmur_protocol::envelope::peer_key(&key);
        let signer = Signer {
            run: averager.run,
            model: averager.model,
            key,
            me,
            codec: config.codec,
            admission: averager.admission.clone(),
        };
        Self {
            config,
            gate: Arc::new(PartGate::new(signer.clone(), local, total)),
            signer,
            local,
            total,
            current: None,
            late: Vec::new(),
            finished: None,
            early: BTreeMap::new(),
            corrections: Vec::new(),
            scratch: Vec::new(),
            spare: Vec::new(),
        }
    }

    /// The first round this node may start, given its round clock `own_round`: never one
    /// that is over (an abandoned round's number is not reused).
    pub fn next_round(&self, own_round: u64) -> u64 {
        self.finished
            .map_or(own_round, |f| own_round.max(f.saturating_add(1)))
    }

    /// The early check of inbound parts, for the part stream subscription.
    pub fn gate(&self) -> Arc<PartGate> {
        self.gate.clone()
    }

    /// The reasons of the parts the gate refused since the last call. A member's part that
    /// did not match the split of the round in progress ends that round early, as if it had
    /// been received in full.
    pub fn take_refusals(&mut self) -> Vec<Rejection> {
        let refusals = self.gate.take();
        if let (Some(round), Some(current)) = (refusals.mismatched, self.current.as_mut())
            && current.number() == round
        {
            current.mark_mismatched();
        }
        refusals.reasons
    }

    fn publish_gate(&self) {
        let current = self
            .current
            .as_ref()
            .map(|c| (c.number(), c.group(), c.reduced()));
        self.gate.publish(self.finished, current);
    }

    /// Whether a round is in progress.
    pub fn busy(&self) -> bool {
        self.current.is_some()
    }

    /// A later round a peer has started, which this idle node should join.
    pub fn pulled(&self) -> Option<u64> {
        if self.current.is_some() {
            return None;
        }
        self.early.keys().next_back().copied()
    }

    /// Allocates and touches the buffers every round reuses (the model copy a round keeps,
    /// the scratch its parts are encoded from), so that the first round does not pay a page
    /// fault per 4 KiB of them. Run by the training thread when it starts.
    pub fn prepare(&mut self) {
        self.spare.clear();
        self.spare.resize(self.total, 0.0);
        // A part is at most half the model (a group has two members or more).
        self.scratch.clear();
        self.scratch.resize(self.total.div_ceil(2), 0.0);
    }

    /// The buffer for the copy of the model the next round starts from (see
    /// [`Butterfly::start`]): model-sized when a round or [`Butterfly::prepare`] left it,
    /// otherwise empty; either way the caller fills it with the whole model.
    pub fn take_model_buffer(&mut self) -> Vec<f32> {
        std::mem::take(&mut self.spare)
    }

    /// Starts round `round` with `sent` (a copy of the model now, kept by the round),
    /// `weight` (its mass) and the live `peers`; returns the contributions to send. Early
    /// parts of this round are taken in; those of earlier rounds are dropped.
    pub fn start(
        &mut self,
        round: u64,
        sent: Vec<f32>,
        anchor: &[f32],
        weight: f64,
        peers: &[PeerId],
    ) -> Result<Vec<PartSend>, AveragingError> {
        if sent.len() != self.total {
            let actual = sent.len();
            self.spare = sent;
            return Err(AveragingError::WrongLength {
                expected: self.total,
                actual,
            });
        }
        let early = self.early.remove(&round).unwrap_or_default();
        self.early.retain(|r, _| *r > round);
        // The members who already sent parts of this round are in it, seen live or not.
        let mut group: Vec<PeerId> = peers
            .iter()
            .chain(early.iter().map(|p| &p.peer))
            .copied()
            .filter(|p| *p != self.local)
            .collect();
        group.push(self.local);
        group.sort();
        group.dedup();
        let window = self.window_for(group.len());
        let mut current = Round::new(round, group, self.local, sent, weight, window);
        let sends = current.contributions(&self.signer, anchor, &mut self.scratch)?;
        for part in early {
            let _ = current.collect(
                &part.peer,
                &part.header,
                &part.payload,
                &part.digest,
                anchor,
            );
        }
        self.current = Some(current);
        self.publish_gate();
        Ok(sends)
    }

    /// A part this node sent for `round` to `peer` could not be delivered: its mean is not
    /// waited for.
    pub fn send_failed(&mut self, peer: &PeerId, round: u64, phase: PartPhase) {
        if phase != PartPhase::Contribution {
            // A mean that did not reach its contributor: nothing is awaited from it.
            return;
        }
        if let Some(current) = self.current.as_mut().filter(|c| c.number() == round) {
            current.give_up_on(peer);
        }
    }

    /// Moves the round on at `now`: averages this node's part once every member's slice is
    /// in or the owner's deadline passed (returns the means to send), and ends the round
    /// once every mean is in, or the window passed, or a member's split differs, or a member
    /// started a later round.
    pub fn advance(
        &mut self,
        now: Instant,
        anchor: &[f32],
    ) -> Result<(Vec<PartSend>, Option<RoundEnd>), AveragingError> {
        let Some(current) = self.current.as_mut() else {
            return Ok((Vec::new(), None));
        };
        let mut sends = Vec::new();
        let moved_on: Vec<PeerId> = self
            .early
            .range(current.number().saturating_add(1)..)
            .flat_map(|(_, parts)| parts.iter().map(|p| p.peer))
            .collect();
        if current.ready_to_reduce(now, &moved_on) {
            let (means, correction) = current.reduce(&self.signer, anchor, &mut self.scratch)?;
            sends = means;
            self.corrections.extend(correction);
            self.gate.publish(
                self.finished,
                Some((current.number(), current.group(), true)),
            );
        }
        // A member that started a later round has sent the means it will send for this one;
        // the rest may still come, and are taken in late.
        let superseded = self
            .early
            .keys()
            .next_back()
            .is_some_and(|r| *r > current.number());
        if !current.over(now, superseded) {
            return Ok((sends, None));
        }
        let end = current.end();
        self.finished = Some(end.round);
        self.early.retain(|r, _| *r > end.round);
        if let Some(ended) = self.current.take() {
            let (late, sent) = ended.into_late();
            self.spare = sent;
            if !late.is_empty() {
                if self.late.len() >= MAX_LATE_ROUNDS {
                    self.late.remove(0);
                }
                self.late.push(late);
            }
        }
        self.publish_gate();
        Ok((sends, Some(end)))
    }

    /// The window of a round of `members`: the configured one plus twice (two phases) the
    /// time a member's share of the traffic takes at [`MIN_PART_RATE`].
    fn window_for(&self, members: usize) -> Duration {
        let n = members.max(1);
        let bytes_per_element = self.signer.codec.payload_len(1).unwrap_or(4) as f64;
        let phase_bytes = (self.total / n * (n - 1)) as f64 * bytes_per_element;
        self.config.window + Duration::from_secs_f64(2.0 * phase_bytes / MIN_PART_RATE)
    }

    /// Drops the round in progress (the node adopted another state).
    pub fn abandon(&mut self) {
        if let Some(current) = self.current.take() {
            self.finished = Some(current.number());
            self.spare = current.into_sent();
        }
        self.late.clear();
        self.corrections.clear();
        self.publish_gate();
    }

    /// The changes received since the last call, to add to the model.
    pub fn take_corrections(&mut self) -> Vec<Correction> {
        std::mem::take(&mut self.corrections)
    }

    /// When the round in progress next needs [`advance`](Self::advance) without any input.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.current.as_ref().map(Round::next_deadline)
    }
}

#[cfg(test)]
mod tests;

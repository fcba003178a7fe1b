//! One butterfly round as one member sees it: the group's split, the slices collected for
//! this node's part, and the means still awaited for the others.

use std::ops::Range;
use std::time::{Duration, Instant};

use libp2p::PeerId;
use murmur_protocol::{Digest, PartHeader, PartPhase};

use super::wire::{self, PartMeta, PartSend, Signer};
use super::{Correction, RoundEnd};
use crate::averaging::{AveragingError, DEFAULT_MAX_WEIGHT_RATIO, Rejection};

/// A slice of this node's part from a member.
#[derive(Debug)]
struct Slice {
    peer: PeerId,
    weight: f64,
    values: Vec<f32>,
}

/// One round in progress.
#[derive(Debug)]
pub(super) struct Round {
    number: u64,
    group: Vec<PeerId>,
    ranges: Vec<Range<usize>>,
    mine: usize,
    /// The model as this node contributed it.
    sent: Vec<f32>,
    weight: f64,
    started: Instant,
    collected: Vec<Slice>,
    /// This node's part is averaged (and its means sent).
    reduced: bool,
    /// Parts whose mean is still awaited, by index in the group.
    awaiting: Vec<bool>,
    /// Parts whose mean was taken in (a mean no longer awaited is still taken in once: a
    /// send reported as failed may have been delivered).
    taken: Vec<bool>,
    means: usize,
    /// A member split the model otherwise: the views of the group differ.
    mismatched: bool,
    /// A contribution of this node could not be delivered.
    undelivered: bool,
    /// How long one of this round's sends may take: half the window (contributions must
    /// reach owners before they average, means before contributors stop waiting).
    send_limit: Duration,
    /// How long the round may take.
    window: Duration,
}

impl Round {
    pub(super) fn new(
        number: u64,
        group: Vec<PeerId>,
        local: PeerId,
        sent: Vec<f32>,
        weight: f64,
        window: Duration,
    ) -> Self {
        let mine = group.iter().position(|p| *p == local).unwrap_or(0);
        let ranges = wire::split(sent.len(), group.len());
        let awaiting = ranges
            .iter()
            .enumerate()
            .map(|(k, r)| k != mine && !r.is_empty())
            .collect();
        let taken = vec![false; group.len()];
        Self {
            number,
            taken,
            group,
            ranges,
            mine,
            sent,
            weight,
            started: Instant::now(),
            collected: Vec::new(),
            reduced: false,
            awaiting,
            means: 0,
            mismatched: false,
            undelivered: false,
            send_limit: window / 2,
            window,
        }
    }

    pub(super) fn number(&self) -> u64 {
        self.number
    }

    /// The group, sorted.
    pub(super) fn group(&self) -> &[PeerId] {
        &self.group
    }

    /// Whether this node averaged its part.
    pub(super) fn reduced(&self) -> bool {
        self.reduced
    }

    /// A member's part (refused by the gate before its payload) did not match the split.
    pub(super) fn mark_mismatched(&mut self) {
        self.mismatched = true;
    }

    /// This node's slice of every other member's part, signed.
    pub(super) fn contributions(
        &self,
        signer: &Signer,
        anchor: &[f32],
        scratch: &mut Vec<f32>,
    ) -> Result<Vec<PartSend>, AveragingError> {
        let mut sends = Vec::with_capacity(self.group.len().saturating_sub(1));
        for (k, range) in self.ranges.iter().enumerate() {
            if k == self.mine || range.is_empty() {
                continue;
            }
            let meta = PartMeta {
                phase: PartPhase::Contribution,
                round: self.number,
                offset: range.start,
                total: self.sent.len(),
                weight: self.weight,
                members: 0,
            };
            let part = signer.encode(
                meta,
                &self.sent[range.clone()],
                &anchor[range.clone()],
                scratch,
            )?;
            sends.push(part.to(self.group[k], self.number, self.send_limit));
        }
        Ok(sends)
    }

    /// Whether `part` covers part `k` of this round's split; a member whose split differs
    /// means the views of the group differ, and ends the round early.
    fn matches(&mut self, part: &PartHeader, k: usize, member: bool) -> Result<(), Rejection> {
        let range = &self.ranges[k];
        if part.offset != range.start as u64 || part.body.element_count != range.len() as u64 {
            self.mismatched |= member;
            return Err(Rejection::PartMismatch);
        }
        Ok(())
    }

    /// Slices collected from members of the group (a peer outside it may contribute, but
    /// does not make the part complete).
    fn member_slices(&self) -> usize {
        self.collected
            .iter()
            .filter(|s| self.group.contains(&s.peer))
            .count()
    }

    /// Takes in a member's slice of this node's part.
    pub(super) fn collect(
        &mut self,
        peer: &PeerId,
        part: &PartHeader,
        payload: &[u8],
        digest: &Digest,
        anchor: &[f32],
    ) -> Result<(), Rejection> {
        if self.reduced {
            return Err(Rejection::Stale);
        }
        let member = self.group.contains(peer);
        self.matches(part, self.mine, member)?;
        if self.collected.iter().any(|s| s.peer == *peer) {
            return Err(Rejection::Replay);
        }
        // Peers outside the group (whose view of it differs for a moment) may add a slice,
        // but no more of them than the group has members: what one round holds is bounded.
        if !member && self.collected.len() - self.member_slices() >= self.group.len() {
            return Err(Rejection::Overloaded);
        }
        let range = self.ranges[self.mine].clone();
        let mut values = Vec::new();
        wire::decode(part, payload, digest, &anchor[range], &mut values)?;
        // A slice's weight is its sender's claim: bounded by this node's own, as in push-sum
        // merges (masses in a group end each round equal, so honest ones stay well within).
        let weight = part
            .body
            .weight
            .min(DEFAULT_MAX_WEIGHT_RATIO * self.weight.max(1.0));
        self.collected.push(Slice {
            peer: *peer,
            weight,
            values,
        });
        Ok(())
    }

    /// Takes in the owner's mean of one of the other parts.
    pub(super) fn take_mean(
        &mut self,
        peer: &PeerId,
        part: &PartHeader,
        payload: &[u8],
        digest: &Digest,
        anchor: &[f32],
    ) -> Result<Correction, Rejection> {
        let k = self
            .group
            .iter()
            .position(|p| p == peer)
            .filter(|k| *k != self.mine)
            .ok_or(Rejection::PartMismatch)?;
        self.matches(part, k, true)?;
        if self.taken[k] {
            return Err(Rejection::Replay);
        }
        let range = self.ranges[k].clone();
        let mut mean = Vec::new();
        wire::decode(part, payload, digest, &anchor[range.clone()], &mut mean)?;
        self.awaiting[k] = false;
        self.taken[k] = true;
        self.means += 1;
        Ok(Correction {
            offset: range.start,
            mean,
            sent: self.sent[range].to_vec(),
        })
    }

    /// The model copy this round was started with (a round abandoned whole).
    pub(super) fn into_sent(self) -> Vec<f32> {
        self.sent
    }

    /// What is needed to take in the means of this round that have not come yet, once
    /// the round is over: the slices this node sent for them (nothing for a complete round).
    /// Also gives back the model copy, for reuse.
    pub(super) fn into_late(self) -> (LateMeans, Vec<f32>) {
        let pending = self
            .ranges
            .iter()
            .enumerate()
            .filter(|(k, r)| *k != self.mine && !r.is_empty() && !self.taken[*k])
            .map(|(k, r)| (self.group[k], r.start, self.sent[r.clone()].to_vec()))
            .collect();
        (
            LateMeans {
                number: self.number,
                pending,
            },
            self.sent,
        )
    }

    /// The mean of the part sent to `peer` will not come.
    pub(super) fn give_up_on(&mut self, peer: &PeerId) {
        if let Some(k) = self.group.iter().position(|p| p == peer)
            && self.awaiting[k]
        {
            self.awaiting[k] = false;
            self.undelivered = true;
        }
    }

    /// Slices this node's part should receive (none when the part is empty).
    fn expected_slices(&self) -> usize {
        if self.ranges[self.mine].is_empty() {
            0
        } else {
            self.group.len().saturating_sub(1)
        }
    }

    /// Whether to average this node's part now: every slice is in, or the slices missing are
    /// those of members that `moved_on` to a later round (they will not send them), or a
    /// split differs, or the owner's deadline passed.
    pub(super) fn ready_to_reduce(&self, now: Instant, moved_on: &[PeerId]) -> bool {
        let owner_wait = self.window / 2;
        if self.reduced {
            return false;
        }
        let complete = self.member_slices() >= self.expected_slices();
        let rest_moved_on = || {
            self.group.iter().enumerate().all(|(k, p)| {
                k == self.mine
                    || moved_on.contains(p)
                    || self.collected.iter().any(|s| s.peer == *p)
            })
        };
        complete || self.mismatched || now >= self.started + owner_wait || rest_moved_on()
    }

    /// Averages this node's part over the slices collected; returns the means to send and
    /// the change to this node's own slice (the mean as the codec rounds it, so that every
    /// member ends with the same values).
    pub(super) fn reduce(
        &mut self,
        signer: &Signer,
        anchor: &[f32],
        scratch: &mut Vec<f32>,
    ) -> Result<(Vec<PartSend>, Option<Correction>), AveragingError> {
        let range = self.ranges[self.mine].clone();
        let total = self.weight + self.collected.iter().map(|s| s.weight).sum::<f64>();
        let members = self.collected.len() + 1;
        self.reduced = true;
        if self.collected.is_empty() || range.is_empty() {
            return Ok((Vec::new(), None));
        }
        // Weights normalised once; a group without mass averages uniformly.
        let share = |w: f64| {
            if total > 0.0 {
                (w / total) as f32
            } else {
                1.0 / members as f32
            }
        };
        let own = &self.sent[range.clone()];
        let mut mean: Vec<f32> = own.iter().map(|v| v * share(self.weight)).collect();
        for slice in &self.collected {
            let s = share(slice.weight);
            for (m, v) in mean.iter_mut().zip(&slice.values) {
                *m += s * v;
            }
        }
        let meta = PartMeta {
            phase: PartPhase::Result,
            round: self.number,
            offset: range.start,
            total: self.sent.len(),
            weight: total,
            members: members as u32,
        };
        // What the contributors will decode: the codec's rounding of `mean - anchor`. A mean
        // the codec cannot carry (bf16 rounding a value near f32::MAX to infinity) leaves the
        // part local for everyone: no mean is sent.
        let encoded = signer.encode(meta, &mean, &anchor[range.clone()], scratch);
        let Ok(part) = encoded.and_then(|part| {
            signer
                .codec
                .decode_into(&part.payload, range.len() as u64, None, &mut mean)?;
            Ok(part)
        }) else {
            tracing::warn!(
                round = self.number,
                "butterfly mean not representable; part left local"
            );
            return Ok((Vec::new(), None));
        };
        for (m, a) in mean.iter_mut().zip(&anchor[range.clone()]) {
            *m += a;
        }
        let sends = self
            .collected
            .iter()
            .map(|slice| part.to(slice.peer, self.number, 2 * self.send_limit))
            .collect();
        Ok((
            sends,
            Some(Correction {
                offset: range.start,
                mean,
                sent: own.to_vec(),
            }),
        ))
    }

    /// Whether the round is over at `now` (`superseded`: a member started a later one).
    pub(super) fn over(&self, now: Instant, superseded: bool) -> bool {
        let window = self.window;
        self.reduced
            && (self.mismatched
                || superseded
                || !self.awaiting.iter().any(|a| *a)
                || now >= self.started + window)
    }

    /// When the round next needs attention without any input.
    pub(super) fn next_deadline(&self) -> Instant {
        let window = self.window;
        if self.reduced {
            self.started + window
        } else {
            self.started + window / 2
        }
    }

    /// The round's outcome (call once it is over).
    pub(super) fn end(&self) -> RoundEnd {
        let expected_means = self
            .ranges
            .iter()
            .enumerate()
            .filter(|(k, r)| *k != self.mine && !r.is_empty())
            .count();
        let complete = !self.mismatched
            && !self.undelivered
            && self.member_slices() == self.expected_slices()
            && self.means == expected_means;
        RoundEnd {
            round: self.number,
            complete,
            group: self.group.clone(),
        }
    }
}

/// An ended round's parts whose means had not arrived: the owner, the part's offset and
/// the slice this node contributed. A mean that comes late is still added (relative to what
/// was contributed): the owner counted this node's slice in it, so dropping it would bias
/// the group's average.
#[derive(Debug)]
pub(super) struct LateMeans {
    number: u64,
    pending: Vec<(PeerId, usize, Vec<f32>)>,
}

impl LateMeans {
    pub(super) fn number(&self) -> u64 {
        self.number
    }

    /// Whether no mean is missing.
    pub(super) fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Takes in a late mean from `peer`.
    pub(super) fn take_mean(
        &mut self,
        peer: &PeerId,
        part: &PartHeader,
        payload: &[u8],
        digest: &Digest,
        anchor: &[f32],
    ) -> Result<Correction, Rejection> {
        let i = self
            .pending
            .iter()
            .position(|(owner, offset, sent)| {
                owner == peer
                    && part.offset == *offset as u64
                    && part.body.element_count == sent.len() as u64
            })
            .ok_or(Rejection::Stale)?;
        let (_, offset, sent) = &self.pending[i];
        let range = *offset..*offset + sent.len();
        let mut mean = Vec::new();
        wire::decode(part, payload, digest, &anchor[range], &mut mean)?;
        let (_, offset, sent) = self.pending.swap_remove(i);
        Ok(Correction { offset, mean, sent })
    }
}

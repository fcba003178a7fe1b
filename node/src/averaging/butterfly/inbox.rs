//! Receiving a butterfly part: checking it against the round clock, routing it to the round
//! in progress or to a recently ended one (late means), and keeping, within bounds, the
//! contributions of a later round this node has not started yet.

use libp2p::PeerId;
use murmur_protocol::{Digest, PartHeader, PartPhase};

use super::round::Round;
use super::{Butterfly, MAX_ROUND_LEAD, Received};
use crate::averaging::{Rejection, beyond_lead};

/// A part received for a round this node has not started: checked, not decoded yet.
#[derive(Debug)]
pub(super) struct EarlyPart {
    pub(super) peer: PeerId,
    pub(super) header: PartHeader,
    pub(super) payload: Vec<u8>,
    pub(super) digest: Digest,
}

/// Most early parts kept (all of one round, the latest heard of).
const MAX_EARLY: usize = 256;
/// Most payload bytes of early parts kept, in f32-encoded models of this node's size.
const MAX_EARLY_MODELS: usize = 2;

impl Butterfly {
    /// Checks and takes in a part from `peer` (`digest`: as checked by the transfer).
    /// `own_round` is the node's round clock: parts more than [`MAX_ROUND_LEAD`] rounds
    /// ahead of it are refused.
    pub fn receive(
        &mut self,
        peer: &PeerId,
        header: &[u8],
        payload: Vec<u8>,
        digest: &Digest,
        anchor: &[f32],
        own_round: u64,
    ) -> Result<Received, Rejection> {
        let part = self.signer.open(peer, header, self.total)?;
        let round = part.body.base_round;
        if beyond_lead(round, self.next_round(own_round), MAX_ROUND_LEAD) {
            return Err(Rejection::Stale);
        }
        if part.phase == PartPhase::Result
            && let Some(late) = self.late.iter_mut().find(|l| l.number() == round)
        {
            let correction = late.take_mean(peer, &part, &payload, digest, anchor)?;
            self.corrections.push(correction);
            self.late.retain(|l| !l.is_empty());
            return Ok(Received::LateMean);
        }
        let current = self.current.as_ref().map(Round::number);
        if self.finished.is_some_and(|f| round <= f) || current.is_some_and(|c| round < c) {
            return Err(Rejection::Stale);
        }
        if current != Some(round) {
            if part.phase != PartPhase::Contribution {
                return Err(Rejection::PartMismatch);
            }
            return self.keep_early(*peer, part, payload, *digest);
        }
        let Some(current) = self.current.as_mut() else {
            return Err(Rejection::Stale);
        };
        match part.phase {
            PartPhase::Contribution => current
                .collect(peer, &part, &payload, digest, anchor)
                .map(|()| Received::Contribution),
            PartPhase::Result => {
                let correction = current.take_mean(peer, &part, &payload, digest, anchor)?;
                self.corrections.push(correction);
                Ok(Received::Mean)
            }
        }
    }

    fn keep_early(
        &mut self,
        peer: PeerId,
        header: PartHeader,
        payload: Vec<u8>,
        digest: Digest,
    ) -> Result<Received, Rejection> {
        let round = header.body.base_round;
        // Decoded only once the round starts: the bytes are checked against the signed
        // digest now (the transfer's digest saves hashing them again when it matches).
        let signed = header.body.payload_digest;
        if payload.len() as u64 != header.body.payload_len
            || (digest != signed && Digest::of(&payload) != signed)
        {
            return Err(Rejection::BadPayload);
        }
        if self
            .early
            .keys()
            .next_back()
            .is_some_and(|latest| round < *latest)
        {
            return Err(Rejection::Stale);
        }
        // Only the latest round heard of is worth joining.
        self.early.retain(|r, _| *r >= round);
        let parts = self.early.entry(round).or_default();
        if parts.iter().any(|p| p.peer == peer) {
            return Err(Rejection::Replay);
        }
        let held: usize = parts.iter().map(|p| p.payload.len()).sum();
        if parts.len() >= MAX_EARLY || held + payload.len() > MAX_EARLY_MODELS * 4 * self.total {
            return Err(Rejection::Overloaded);
        }
        parts.push(EarlyPart {
            peer,
            header,
            payload,
            digest,
        });
        Ok(Received::Early)
    }
}

//! The network side's early check of delta headers: run on each inbound delta stream after
//! its header and before its payload (an [`Admission`](crate::net::Admission)), it refuses
//! what the training thread would refuse from the header alone — a forged or mis-signed
//! envelope, another run or model, a sender outside a closed pool, a round too far ahead, an
//! element count or payload length that does not fit the model — so that such a delta costs
//! its sender a header, not a model-sized payload read, hashed and queued.
//!
//! The gate mirrors the engine's round clock (published by it whenever the clock moves); a
//! clock a moment old may refuse a delta at the very edge of the lead, which its sender's next
//! sync replaces (honest peers are a round or two apart, the lead is 64). Refusals are queued (at most [`MAX_QUEUED`]) for the
//! training thread to count and to charge to the senders' scores, as if it had refused them.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use libp2p::PeerId;
use murmur_protocol::envelope::MAX_ENVELOPE_BYTES;
use murmur_protocol::{DeltaHeader, Message, PeerKey, SignedEnvelope};

use super::AveragerConfig;
use crate::averaging::{Rejection, beyond_lead, check_origin};

/// Refusals queued for the training thread, at most (more are only logged).
const MAX_QUEUED: usize = 1024;

/// Early checks of inbound delta headers; shared between the engine and the delta streams.
#[derive(Debug)]
pub struct DeltaGate {
    config: AveragerConfig,
    elements: u64,
    round: AtomicU64,
    refused: Mutex<Vec<(PeerId, Rejection)>>,
    /// The training thread was told of refusals it has not taken yet (one wake-up for many).
    told: AtomicBool,
}

impl DeltaGate {
    pub(super) fn new(config: AveragerConfig, elements: u64) -> Self {
        Self {
            config,
            elements,
            round: AtomicU64::new(0),
            refused: Mutex::new(Vec::new()),
            told: AtomicBool::new(false),
        }
    }

    /// Checks the header of a delta `peer` is sending; an error refuses its payload (the
    /// reason's name is what the sender is told).
    pub fn admit(&self, peer: &PeerId, header: &[u8]) -> Result<(), Rejection> {
        let verdict = self.judge(peer, header);
        if let Err(reason) = verdict {
            let mut refused = self.refused.lock().unwrap_or_else(PoisonError::into_inner);
            if refused.len() < MAX_QUEUED {
                refused.push((*peer, reason));
            } else {
                tracing::debug!(%peer, %reason, "delta refused early; refusal queue full");
            }
        }
        verdict
    }

    fn judge(&self, peer: &PeerId, header: &[u8]) -> Result<(), Rejection> {
        let (_, h) = open_header(&self.config, peer, header)?;
        let round = self.round.load(Ordering::Acquire);
        if beyond_lead(h.base_round, round, self.config.max_lead) {
            return Err(Rejection::TooFarAhead);
        }
        if h.element_count != self.elements
            || h.codec.check_len(self.elements, h.payload_len).is_err()
        {
            return Err(Rejection::BadPayload);
        }
        Ok(())
    }

    /// Whether the training thread should be woken for a refusal: true once until it takes
    /// them, so a burst of refusals costs it one wake-up.
    pub fn should_wake(&self) -> bool {
        !self.told.swap(true, Ordering::AcqRel)
    }

    /// Takes the refusals queued so far.
    pub fn take_refused(&self) -> Vec<(PeerId, Rejection)> {
        self.told.store(false, Ordering::Release);
        std::mem::take(&mut *self.refused.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// The engine's round clock moved to `round`.
    pub(super) fn publish_round(&self, round: u64) {
        self.round.store(round, Ordering::Release);
    }
}

/// The checks of a delta header that need nothing but the header and the settings: the
/// envelope and its signature, the signer against the sending peer, the run, the model and
/// the pool. Returns the signer and the header.
pub(super) fn open_header(
    config: &AveragerConfig,
    sender: &PeerId,
    header: &[u8],
) -> Result<(PeerKey, DeltaHeader), Rejection> {
    let (signer, message) = SignedEnvelope::open_bytes(header, MAX_ENVELOPE_BYTES)
        .map_err(|_| Rejection::BadEnvelope)?;
    let Message::Delta(h) = message else {
        return Err(Rejection::NotADelta);
    };
    let origin = (&config.run, &config.model);
    check_origin(&signer, sender, &h, origin, &config.admission)?;
    Ok((signer, h))
}

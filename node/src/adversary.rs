//! The red team: a node that corrupts what it sends, for robustness tests and
//! `murmur testnet --malicious`. The trusted averaging engine knows nothing of it: the
//! adversary rewrites each delta after the engine made it — decodes the payload, corrupts the
//! model change, re-encodes it and signs a new header — so what honest nodes receive is a
//! validly signed delta of a corrupted model, exactly what a hostile peer could send. The
//! session asks it, too, what round to announce and what state to serve a late joiner.

use std::fmt;
use std::str::FromStr;

use ed25519_dalek::SigningKey;
use murmur_protocol::envelope::MAX_ENVELOPE_BYTES;
use murmur_protocol::{
    CodecError, DeltaHeader, EnvelopeError, Message, MessageError, SignedEnvelope,
};

use crate::averaging::Outgoing;
use crate::averaging::butterfly::PartSend;

/// How a malicious test node corrupts what it sends.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Tamper {
    /// Multiply the model change by a factor (e.g. 100).
    Scale(f32),
    /// Negate the model change.
    Flip,
    /// Send the untrained anchor (no model change) with the largest finite weight, to replace
    /// receivers' models and blow their masses up.
    Weight,
    /// Claim a round far ahead (2⁴⁰ rounds), to drag receivers' round clocks there and make
    /// every honest delta stale.
    RoundJump,
    /// Send each (sign-flipped) delta [`REPLAY_ROUNDS`] times re-signed for the following
    /// rounds, and each of those twice byte for byte: a flood of valid deltas to take many
    /// places in the receivers' queues and be merged many times.
    ReplayFlood,
    /// Late-join capture: average honestly, but announce a round [`CAPTURE_LEAD`] ahead (far
    /// enough for newcomers to download from it, within the lead bound) and serve late
    /// joiners a poisoned state (the model sign-flipped).
    LateJoinCapture,
    /// Butterfly takeover: take part in butterfly rounds (contributing early to be counted
    /// in groups) with every part sent — contributions and the means of the parts it owns —
    /// sign-flipped and scaled by [`TAKEOVER_FACTOR`].
    ButterflyTakeover,
    /// Slow loris: train and send honestly, and beside that hold delta streams open at every
    /// peer, one byte every couple of seconds (`session::slow_loris`).
    SlowLoris,
}

/// How far ahead a [`Tamper::RoundJump`] delta claims to be.
const ROUND_JUMP: u64 = 1 << 40;
/// How many rounds a [`Tamper::ReplayFlood`] delta is re-signed for.
pub const REPLAY_ROUNDS: u64 = 8;
/// How far ahead of its true round a [`Tamper::LateJoinCapture`] node claims to be.
pub const CAPTURE_LEAD: u64 = 32;
/// What a [`Tamper::ButterflyTakeover`] node multiplies its parts' changes by.
pub const TAKEOVER_FACTOR: f32 = -4.0;

impl Tamper {
    /// Applies a corruption of the model change (the header-only kinds leave it alone, except
    /// [`Tamper::Weight`], which sends no change at all).
    pub fn apply(self, values: &mut [f32]) {
        let factor = match self {
            Tamper::Scale(s) => s,
            Tamper::Flip | Tamper::ReplayFlood => -1.0,
            Tamper::ButterflyTakeover => TAKEOVER_FACTOR,
            Tamper::Weight => 0.0,
            Tamper::RoundJump | Tamper::LateJoinCapture | Tamper::SlowLoris => return,
        };
        for v in values {
            *v *= factor;
        }
    }

    /// Applies a corruption of the header's claims.
    fn apply_header(self, header: &mut DeltaHeader) {
        match self {
            Tamper::Weight => header.weight = f64::MAX,
            Tamper::RoundJump => header.base_round = header.base_round.saturating_add(ROUND_JUMP),
            Tamper::Scale(_)
            | Tamper::Flip
            | Tamper::ReplayFlood
            | Tamper::LateJoinCapture
            | Tamper::ButterflyTakeover
            | Tamper::SlowLoris => {}
        }
    }

    /// The round a node at `round` announces.
    pub fn announced_round(self, round: u64) -> u64 {
        match self {
            Tamper::LateJoinCapture => round.saturating_add(CAPTURE_LEAD),
            _ => round,
        }
    }

    /// Corrupts the state (`round`, `params`) a node serves to late joiners.
    pub fn serve_state(self, round: &mut u64, params: &mut [f32]) {
        if self == Tamper::LateJoinCapture {
            *round = self.announced_round(*round);
            for v in params {
                *v = -*v;
            }
        }
    }
}

impl fmt::Display for Tamper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tamper::Scale(factor) => write!(f, "scale:{factor}"),
            Tamper::Flip => f.write_str("flip"),
            Tamper::Weight => f.write_str("weight"),
            Tamper::RoundJump => f.write_str("round-jump"),
            Tamper::ReplayFlood => f.write_str("replay-flood"),
            Tamper::LateJoinCapture => f.write_str("late-join-capture"),
            Tamper::ButterflyTakeover => f.write_str("butterfly-takeover"),
            Tamper::SlowLoris => f.write_str("slow-loris"),
        }
    }
}

impl FromStr for Tamper {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "flip" => Ok(Tamper::Flip),
            "weight" => Ok(Tamper::Weight),
            "round-jump" => Ok(Tamper::RoundJump),
            "replay-flood" => Ok(Tamper::ReplayFlood),
            "late-join-capture" => Ok(Tamper::LateJoinCapture),
            "butterfly-takeover" => Ok(Tamper::ButterflyTakeover),
            "slow-loris" => Ok(Tamper::SlowLoris),
            _ => s
                .strip_prefix("scale:")
                .and_then(|f| f.parse::<f32>().ok())
                .filter(|f| f.is_finite())
                .map(Tamper::Scale)
                .ok_or_else(|| {
                    format!(
                        "bad tamper mode {s:?}: expected flip, scale:F, weight, round-jump, \
                         replay-flood, late-join-capture, butterfly-takeover or slow-loris"
                    )
                }),
        }
    }
}

/// How a malicious pipeline member attacks beside its (honestly computing) stage; see
/// `shard::pipeline::attack`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PipeTamper {
    /// Once a plan runs, send the other members the next epoch's plan computed from made-up
    /// capacities (every rival at 1 kFLOP/s, itself at 1 PFLOP/s), citing their true ones:
    /// the plan gives it every stage and plans the honest members out.
    PlanHijack,
    /// Once a plan runs, send the other members the running plan again with an epoch 2⁴⁰
    /// ahead (and one just past the step bound): taken, it stops every stage and makes every
    /// later honest notice look old.
    EpochJump,
    /// Once a plan runs, send the other members poisoned snapshots (finite garbage) of the
    /// ranges it does not hold, and of every range at a step far ahead, for a few seconds;
    /// then leave, so that the survivors re-plan from the snapshots they kept.
    SnapshotPoison,
    /// While the pipeline forms, send every member hundreds of junk pipeline messages (stage
    /// traffic, plan notices and snapshots that do not decode).
    FormationJunk,
    /// Once each plan runs, report a break that did not happen to the member that re-plans,
    /// then send the other members valid next plans of honest inputs (the running plan again,
    /// its capacities cited, eight epochs ahead one after another): each one taken stops every
    /// stage and rolls it back to the last snapshot.
    ReplanFlood,
    /// Once each plan runs, send each neighbour in its chain stage messages out of protocol
    /// (a forward and a backward claiming another micro-batch count): before blame, each one
    /// ended the run.
    StageGarbage,
}

impl PipeTamper {
    /// Every kind, as `--malicious` names them.
    pub const ALL: [PipeTamper; 6] = [
        PipeTamper::PlanHijack,
        PipeTamper::EpochJump,
        PipeTamper::SnapshotPoison,
        PipeTamper::FormationJunk,
        PipeTamper::ReplanFlood,
        PipeTamper::StageGarbage,
    ];

    fn name(self) -> &'static str {
        match self {
            PipeTamper::PlanHijack => "plan-hijack",
            PipeTamper::EpochJump => "epoch-jump",
            PipeTamper::SnapshotPoison => "snapshot-poison",
            PipeTamper::FormationJunk => "formation-junk",
            PipeTamper::ReplanFlood => "replan-flood",
            PipeTamper::StageGarbage => "stage-garbage",
        }
    }
}

impl fmt::Display for PipeTamper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for PipeTamper {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                format!(
                    "bad pipeline attack {s:?}: expected plan-hijack, epoch-jump, snapshot-poison, \
                 formation-junk, replan-flood or stage-garbage"
                )
            })
    }
}

/// Why a delta could not be corrupted.
#[derive(Debug, thiserror::Error)]
pub enum AdversaryError {
    /// The engine's own envelope did not open.
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    /// The new header could not be signed.
    #[error(transparent)]
    Message(#[from] MessageError),
    /// The payload could not be decoded or re-encoded.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// The envelope holds no delta.
    #[error("the outgoing envelope holds no delta")]
    NotADelta,
}

/// A node's red-team switch: corrupts its outgoing deltas with `tamper`, signing with `key`
/// (the node's own: the deltas are its, only their contents are hostile).
#[derive(Debug, Clone)]
pub struct Adversary {
    tamper: Tamper,
    key: SigningKey,
}

impl Adversary {
    /// An adversary that corrupts by `tamper` and signs with `key`.
    pub fn new(tamper: Tamper, key: SigningKey) -> Self {
        Self { tamper, key }
    }

    /// What goes on the wire instead of `outgoing`: its corrupted version first (same round,
    /// recipients' mass and codec), then any extra copies the attack sends after it.
    pub fn corrupt(&self, outgoing: &Outgoing) -> Result<Vec<Outgoing>, AdversaryError> {
        let first = self.corrupt_one(outgoing)?;
        if self.tamper != Tamper::ReplayFlood {
            return Ok(vec![first]);
        }
        let mut wires = vec![first.clone(), first.clone()];
        for ahead in 1..REPLAY_ROUNDS {
            let copy = self.resign(&first, |h| {
                h.base_round = h.base_round.saturating_add(ahead)
            })?;
            wires.extend([copy.clone(), copy]);
        }
        Ok(wires)
    }

    /// What goes on the wire instead of the butterfly part `part`: its change corrupted (by
    /// [`Tamper::apply`]), the header re-signed for the new payload.
    pub fn corrupt_part(&self, part: &PartSend) -> Result<PartSend, AdversaryError> {
        let (_, message) = SignedEnvelope::open_bytes(&part.header, MAX_ENVELOPE_BYTES)?;
        let Message::Part(mut header) = message else {
            return Err(AdversaryError::NotADelta);
        };
        let mut values = header
            .body
            .codec
            .decode(&part.payload, header.body.element_count)?;
        self.tamper.apply(&mut values);
        let mut payload = Vec::new();
        let digest = header.body.codec.encode_into(&values, &mut payload)?;
        header.body.payload_len = payload.len() as u64;
        header.body.payload_digest = digest;
        let envelope = SignedEnvelope::sign(&self.key, &Message::Part(header))?;
        Ok(PartSend {
            header: envelope.to_bytes(),
            payload: payload.into(),
            digest,
            ..part.clone()
        })
    }

    /// `outgoing` with its header changed by `change` and signed again.
    fn resign(
        &self,
        outgoing: &Outgoing,
        change: impl FnOnce(&mut DeltaHeader),
    ) -> Result<Outgoing, AdversaryError> {
        let (_, message) = SignedEnvelope::open_bytes(&outgoing.header, MAX_ENVELOPE_BYTES)?;
        let Message::Delta(mut header) = message else {
            return Err(AdversaryError::NotADelta);
        };
        change(&mut header);
        let envelope = SignedEnvelope::sign(&self.key, &Message::Delta(header))?;
        Ok(Outgoing {
            header: envelope.to_bytes(),
            ..outgoing.clone()
        })
    }

    fn corrupt_one(&self, outgoing: &Outgoing) -> Result<Outgoing, AdversaryError> {
        let (_, message) = SignedEnvelope::open_bytes(&outgoing.header, MAX_ENVELOPE_BYTES)?;
        let Message::Delta(mut header) = message else {
            return Err(AdversaryError::NotADelta);
        };
        let mut values = header
            .codec
            .decode(&outgoing.payload, header.element_count)?;
        self.tamper.apply(&mut values);
        self.tamper.apply_header(&mut header);
        let mut payload = Vec::new();
        let digest = header.codec.encode_into(&values, &mut payload)?;
        header.payload_len = payload.len() as u64;
        header.payload_digest = digest;
        let envelope = SignedEnvelope::sign(&self.key, &Message::Delta(header))?;
        Ok(Outgoing {
            round: outgoing.round,
            header: envelope.to_bytes(),
            payload: payload.into(),
            digest,
            mass_each: outgoing.mass_each,
        })
    }
}

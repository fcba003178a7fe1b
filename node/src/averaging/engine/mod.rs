//! [`Averager`]: one node's side of gossip averaging — validates received deltas, merges them
//! at each sync (push-sum or robust), applies the optional outer optimizer, and produces the
//! signed, compressed message for the next fan-out.
//!
//! It is plain synchronous code over flat `f32` vectors, owned by the node's training thread;
//! the network only moves its bytes.
//!
//! - [`gate`]: the early check of delta headers, before their payloads are read;
//! - [`admit`]: checking a received delta and queueing it;
//! - [`merge`]: merging the queued deltas (outlier filter, push-sum or robust);
//! - [`outgoing`]: a sync's signed, compressed message, and failed sends folded back;
//! - [`state`]: checkpoints and the round clock.

mod admit;
mod gate;
mod merge;
mod outgoing;
mod state;

use std::sync::Arc;

use murmur_protocol::{Codec, ErrorFeedback, ModelFingerprint, PeerKey, RunId};

use super::Admission;
use super::mixing::RobustConfig;
use super::outer::{OuterConfig, OuterOptimizer};
use super::reject::{MergeCounts, Rejection};
use super::replay::ReplayGuard;
pub use gate::DeltaGate;
use merge::History;
pub use outgoing::Outgoing;
pub use state::AveragerState;

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
    /// Deltas more rounds ahead of this node's clock than this are refused, and never move
    /// it: a peer's round is a number it chooses, and a clock that jumps to it would make
    /// every honest delta look stale (see [`DEFAULT_MAX_LEAD`]).
    pub max_lead: u64,
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
    /// A sender's mass in one merge is at most this multiple of the node's own mass (at least
    /// one sample's worth); more is clipped (see [`DEFAULT_MAX_WEIGHT_RATIO`]).
    pub max_weight_ratio: f64,
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
            max_lead: DEFAULT_MAX_LEAD,
            outlier_ratio: 10.0,
            robust: None,
            outer: None,
            admission: Admission::Open,
            initial_mass: 1.0,
            max_weight_ratio: DEFAULT_MAX_WEIGHT_RATIO,
            butterfly: None,
        }
    }
}

/// How far ahead of this node's round clock a delta may be: honest peers that sync at
/// different rates stay within a round or two of each other (each moves its clock up to the
/// rounds it hears), so 64 leaves room for a node that paused, and a node further behind
/// than that catches up by adopting a peer's state, not by merging.
pub const DEFAULT_MAX_LEAD: u64 = 64;

/// How heavy one sender's delta may be, as a multiple of the receiver's own mass. A delta's
/// weight is a number its sender chooses: unbounded, one signed delta of weight 1e30 replaced
/// the receiver's model and mass, that mass then spread through the network, and two deltas
/// near `f64::MAX` made it infinite. Honest weights are the sender's mass over `fanout + 1`,
/// but push-sum masses drift apart (four idle nodes starting 3× apart were seen 8× apart a
/// moment later, a newcomer starts far lighter), and a clipped honest delta loses mass and
/// makes the average inexact; so the cap is generous: push-sum stays exact while the masses
/// of peers that merge stay within 32× of each other. It bounds runaway masses (at most ×33 a
/// merge, and `MAX_MASS`), not influence: a sender at the cap moves one merge 32/33 of the
/// way, and a tighter cap would not stop a peer that pulls merge after merge anyway — that is
/// `--robust`'s job (see `docs/security.md`).
pub const DEFAULT_MAX_WEIGHT_RATIO: f64 = 32.0;

/// The most mass a node holds, in samples: far beyond any real run (10¹⁵ samples), but finite,
/// so a mass inflated by clipped-but-heavy deltas sync after sync never overflows into
/// infinity, which a delta header cannot carry.
pub const MAX_MASS: f64 = 1e15;

/// A received delta that passed admission, waiting for the next sync. Deltas of one sender
/// between two syncs are folded into one (see `admit`).
#[derive(Debug)]
struct Candidate {
    /// Its signer.
    peer: PeerKey,
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
    /// Each recent sender's latest distance from the own model (robust clipping radius and
    /// count of voters).
    distances: merge::SenderDistances,
    /// Live training peers the node knows of (see [`set_live_peers`](Self::set_live_peers)).
    live_peers: usize,
    /// Decoding buffers of merged or refused deltas, reused by the next ones.
    spare: Vec<Vec<f32>>,
    /// Scratch for the model relative to the anchor at a sync.
    relative: Vec<f32>,
    /// The early check of inbound delta headers, which mirrors the round clock.
    gate: Arc<DeltaGate>,
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
        let gate = Arc::new(DeltaGate::new(config.clone(), anchor.len() as u64));
        let mut averager = Self {
            gate,
            mass: 0.0,
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
            distances: merge::SenderDistances::default(),
            live_peers: 0,
            spare: Vec::new(),
            relative: Vec::new(),
        };
        averager.set_mass(averager.config.initial_mass);
        averager
    }

    /// Current round (number of syncs done).
    pub fn round(&self) -> u64 {
        self.round
    }
    /// Mass held, in samples.
    pub fn mass(&self) -> f64 {
        self.mass
    }
    /// Tells the engine how many live training peers the node knows of: with robust merging,
    /// a merge counts each one that sent nothing as a vote for the node's own model, so a few
    /// deltas arriving together (two sybils, say) cannot carry the model away.
    pub fn set_live_peers(&mut self, peers: usize) {
        self.live_peers = peers;
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
        self.set_mass(self.mass + samples);
    }

    /// The early check of inbound delta headers (for the delta streams' admission).
    pub fn gate(&self) -> Arc<DeltaGate> {
        self.gate.clone()
    }

    /// Counts the deltas the gate refused before their payloads; returns them with their
    /// senders, to be charged as if this engine had refused them.
    pub fn take_gate_refusals(&mut self) -> Vec<(libp2p::PeerId, Rejection)> {
        let refused = self.gate.take_refused();
        for (_, reason) in &refused {
            self.counts.reject(*reason);
        }
        refused
    }

    /// Moves the round clock (and the gate's copy of it).
    fn set_round(&mut self, round: u64) {
        self.round = round;
        self.gate.publish_round(round);
    }

    /// Sets the mass, kept within `0..=MAX_MASS` (NaN, from a damaged checkpoint, is 0).
    fn set_mass(&mut self, mass: f64) {
        self.mass = if mass.is_nan() {
            0.0
        } else {
            mass.clamp(0.0, MAX_MASS)
        };
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

    /// Keeps a decoding buffer for the next delta (up to [`SPARE_BUFFERS`]).
    fn recycle(&mut self, buffer: Vec<f32>) {
        if self.spare.len() < SPARE_BUFFERS && buffer.capacity() >= self.anchor.len() {
            self.spare.push(buffer);
        }
    }
}

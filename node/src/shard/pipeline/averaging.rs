//! Data-parallel replicas of a range kept in agreement by gossip averaging.
//!
//! With several chains (see [`crate::shard::planner::group_peers`]), every range has one
//! holder per chain, each training it on its chain's data. Every `average_every` steps a holder
//! runs one sync of the training issue's [`Averager`] over its range's flat parameters: the
//! signed deltas its range-mates sent since the last sync are merged (push-sum, weighted by the
//! samples behind them, stale ones discounted, bad ones refused and scored), and its own delta
//! goes to up to `fanout` of them over the delta stream protocol. Gossip stays asynchronous: a
//! sync merges what has arrived and never waits for a mate, so a slow chain never holds a fast
//! one back. Each (epoch, range) has its own engine and fingerprint, so a delta of another
//! range or of an epoch that is over is refused as a wrong model.

use std::collections::HashSet;
use std::ops::Range;

use ed25519_dalek::SigningKey;
use libp2p::PeerId;
use murmur_protocol::{ModelFingerprint, RunId};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::PipelineError;
use crate::averaging::{Averager, AveragerConfig, MergeCounts, Outgoing, Rejection, ReplayGuard};
use crate::errors::chain;
use crate::net::{IncomingPayload, Network, PayloadKind};

/// Range-mates each sync's delta is sent to, at most.
const FANOUT: usize = 2;
/// Received deltas taken in per sync, at most (the rest wait for the next one).
const MAX_PER_SYNC: usize = 64;

/// What the averaging of this node's ranges did, over every epoch of the run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AveragingReport {
    /// Syncs run.
    pub syncs: u64,
    /// Deltas sent (delivered).
    pub sent: u64,
    /// Deltas merged.
    pub merged: u64,
    /// Deltas refused, all reasons.
    pub rejected: u64,
}

/// The engine of the range held in one epoch.
struct RangeEngine {
    epoch: u64,
    engine: Box<Averager>,
    mates: Vec<PeerId>,
}

/// One node's averaging of the ranges it holds; lives for the whole run (it owns the
/// subscription to inbound deltas).
pub(crate) struct RangeAveraging {
    net: Network,
    key: SigningKey,
    run: RunId,
    model: ModelFingerprint,
    inbound: mpsc::Receiver<IncomingPayload>,
    current: Option<RangeEngine>,
    /// Sends in flight: (epoch, recipient, the message when the send failed).
    sends: JoinSet<(u64, PeerId, Option<Outgoing>)>,
    busy: HashSet<PeerId>,
    rng: StdRng,
    report: AveragingReport,
    /// Counts of the engines of epochs that are over.
    earlier: MergeCounts,
}

impl RangeAveraging {
    /// Subscribes to inbound deltas for the run `run` of model `model`.
    pub(crate) fn open(
        net: &Network,
        key: SigningKey,
        run: RunId,
        model: ModelFingerprint,
        seed: u64,
    ) -> Result<Self, PipelineError> {
        Ok(Self {
            inbound: net.subscribe_payloads(PayloadKind::Delta)?,
            net: net.clone(),
            key,
            run,
            model,
            current: None,
            sends: JoinSet::new(),
            busy: HashSet::new(),
            rng: StdRng::seed_from_u64(seed),
            report: AveragingReport::default(),
            earlier: MergeCounts::default(),
        })
    }

    /// Starts averaging `range` of epoch `epoch` with `mates` (its other holders), from the
    /// shared initial parameters `anchor` of the range.
    pub(crate) fn begin(
        &mut self,
        epoch: u64,
        range: &Range<usize>,
        anchor: Vec<f32>,
        mates: Vec<PeerId>,
    ) {
        self.end_epoch();
        let config = AveragerConfig::new(self.run, range_fingerprint(self.model, epoch, range));
        let engine = Averager::new(config, self.key.clone(), anchor, ReplayGuard::in_memory());
        self.current = Some(RangeEngine {
            epoch,
            engine: Box::new(engine),
            mates,
        });
    }

    fn end_epoch(&mut self) {
        if let Some(old) = self.current.take() {
            let counts = old.engine.counts();
            self.earlier.merged += counts.merged;
            for (reason, n) in &counts.rejected {
                *self.earlier.rejected.entry(*reason).or_default() += n;
            }
        }
    }

    /// What was done so far.
    pub(crate) fn report(&self) -> AveragingReport {
        let (merged, rejected) = match &self.current {
            Some(c) => (c.engine.counts().merged, c.engine.counts().rejected_total()),
            None => (0, 0),
        };
        AveragingReport {
            merged: self.earlier.merged + merged,
            rejected: self.earlier.rejected_total() + rejected,
            ..self.report.clone()
        }
    }

    /// One sync of the range's parameters `params`, `fresh_samples` trained into them over
    /// `local_steps` steps since the last one: merges what the mates sent, sends this node's
    /// delta on, and returns the merged parameters.
    pub(crate) async fn sync(
        &mut self,
        mut params: Vec<f32>,
        fresh_samples: u64,
        local_steps: u32,
    ) -> Result<Vec<f32>, PipelineError> {
        let returned = self.reap_sends();
        let received = self.take_received();
        let Some(mut current) = self.current.take() else {
            return Ok(params);
        };
        let idle: Vec<PeerId> = current
            .mates
            .iter()
            .filter(|p| !self.busy.contains(p))
            .copied()
            .collect();
        let recipients: Vec<PeerId> = idle
            .choose_multiple(&mut self.rng, FANOUT)
            .copied()
            .collect();
        let count = recipients.len();
        let work = tokio::task::spawn_blocking(move || {
            let engine = &mut current.engine;
            let mut refused = Vec::new();
            for outgoing in &returned {
                engine.returned(outgoing, &mut params);
            }
            for incoming in received {
                if !current.mates.contains(&incoming.peer) {
                    engine.count_rejection(Rejection::NotMember);
                    continue;
                }
                let (peer, digest) = (incoming.peer, incoming.digest);
                if let Err(reason) = engine.receive_transferred(
                    &peer,
                    &incoming.header,
                    &incoming.payload,
                    Some(&digest),
                ) {
                    refused.push((peer, reason));
                }
            }
            let outgoing = engine.sync(&mut params, fresh_samples, local_steps, count);
            (current, params, outgoing, refused)
        });
        let (current, params, outgoing, refused) = work.await?;
        let epoch = current.epoch;
        self.current = Some(current);
        self.report.syncs += 1;
        for (peer, reason) in refused {
            tracing::warn!(%peer, %reason, "range delta refused");
            if reason.penalty() > 0 {
                let why = format!("range delta rejected: {reason}");
                let _ = self
                    .net
                    .report_misbehaviour(peer, reason.penalty(), why)
                    .await;
            }
        }
        let outgoing = outgoing?;
        if let Some(outgoing) = outgoing {
            for peer in recipients {
                self.spawn_send(epoch, peer, outgoing.clone());
            }
        }
        Ok(params)
    }

    fn spawn_send(&mut self, epoch: u64, peer: PeerId, outgoing: Outgoing) {
        let net = self.net.clone();
        self.busy.insert(peer);
        self.sends.spawn(async move {
            let sent = net
                .send_hashed_payload(
                    peer,
                    PayloadKind::Delta,
                    &outgoing.header,
                    &outgoing.payload,
                    outgoing.digest,
                )
                .await;
            match sent {
                Ok(_) => (epoch, peer, None),
                Err(err) => {
                    tracing::debug!(%peer, err = %chain(&err), "range delta not delivered; mass returned");
                    (epoch, peer, Some(outgoing))
                }
            }
        });
    }

    /// Finished sends; the failed ones of the current epoch, whose mass comes back.
    fn reap_sends(&mut self) -> Vec<Outgoing> {
        let epoch = self.current.as_ref().map(|c| c.epoch);
        let mut returned = Vec::new();
        while let Some(done) = self.sends.try_join_next() {
            let Ok((sent_in, peer, failed)) = done else {
                continue;
            };
            self.busy.remove(&peer);
            match failed {
                None => self.report.sent += 1,
                Some(outgoing) if Some(sent_in) == epoch => returned.push(outgoing),
                Some(_) => {}
            }
        }
        returned
    }

    fn take_received(&mut self) -> Vec<IncomingPayload> {
        let mut received = Vec::new();
        while received.len() < MAX_PER_SYNC {
            match self.inbound.try_recv() {
                Ok(incoming) => received.push(incoming),
                Err(_) => break,
            }
        }
        received
    }
}

/// The fingerprint deltas of `range` in `epoch` carry: the model's, bound to the range and
/// the epoch.
fn range_fingerprint(
    model: ModelFingerprint,
    epoch: u64,
    range: &Range<usize>,
) -> ModelFingerprint {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"murmur/range-averaging/v1");
    hasher.update(&model.0);
    hasher.update(&epoch.to_le_bytes());
    hasher.update(&(range.start as u64).to_le_bytes());
    hasher.update(&(range.end as u64).to_le_bytes());
    ModelFingerprint(*hasher.finalize().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_differ_by_range_and_epoch() {
        let model = ModelFingerprint([7; 32]);
        let a = range_fingerprint(model, 1, &(0..2));
        assert_eq!(a, range_fingerprint(model, 1, &(0..2)));
        assert_ne!(a, range_fingerprint(model, 2, &(0..2)));
        assert_ne!(a, range_fingerprint(model, 1, &(0..3)));
        assert_ne!(a, model);
    }
}

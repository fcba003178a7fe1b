//! [`PushSum`]: the training thread's side of push-sum gossip. A sync merges the queued
//! deltas and sends the model to a few peers chosen at random among those not yet told it and
//! not still receiving a previous send (back-pressure); a send that fails gives its model and
//! mass back. An idle node syncs in rounds and only while it has news (see
//! [`PushSum::idle_sync`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use libp2p::PeerId;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;

use super::WorkerOutput;
use super::mode::Mode;
use super::shared::Shared;
use crate::averaging::Outgoing;
use crate::session::SessionError;
use crate::session::in_flight::SendsInFlight;

/// How long a peer sent the current model counts as having it (idle averaging).
const TOLD_EXPIRES: Duration = Duration::from_secs(30);

/// Longest wait for the rest of a round before merging part of it (idle averaging).
const MAX_ROUND_WAIT: Duration = Duration::from_secs(10);

/// Push-sum gossip state: who has the model, the sends in flight, the round timing.
pub(super) struct PushSum {
    /// Chooses the recipients of each sync.
    rng: StdRng,
    /// Sends handed to the network and not finished yet (finished by the send tasks).
    in_flight: Arc<SendsInFlight>,
    /// Peers sent the model since it last changed (trained, merged beyond the codec's
    /// rounding, adopted, or took a failed send back): an idle node whose every live peer
    /// has its model has nothing to tell anyone.
    told: HashMap<PeerId, Instant>,
    /// While only averaging: the model as the peers in `told` were sent it, so that many
    /// small merges that together move it far are news.
    told_model: Option<Vec<f32>>,
    /// The allocation of a `told_model` that went stale, reused for the next one.
    told_spare: Vec<f32>,
    /// When the oldest delta still waiting to be merged arrived.
    pending_since: Option<Instant>,
    /// When this node's last fan-out was handed to the network, until seen delivered.
    sent_at: Option<Instant>,
    /// How long this node's last fan-out took to deliver: about how long the peers'
    /// deltas of a round take to arrive after the first one.
    fanout_took: Duration,
}

impl PushSum {
    /// Push-sum state choosing peers with `rng`, its sends tracked in `in_flight`.
    pub(super) fn new(rng: StdRng, in_flight: Arc<SendsInFlight>) -> Self {
        Self {
            rng,
            in_flight,
            told: HashMap::new(),
            told_model: None,
            told_spare: Vec::new(),
            pending_since: None,
            sent_at: None,
            fanout_took: Duration::ZERO,
        }
    }

    /// The recipients of the next sync.
    fn choose_peers(&mut self, shared: &Shared) -> Vec<PeerId> {
        // Back-pressure: while a whole fan-out is still in flight (slow links), merge but
        // do not send more, and never send to a peer still receiving the previous delta;
        // the transfers' deadlines bound how long that lasts.
        let fanout = shared.averager.config().fanout;
        if self.in_flight.total() >= fanout.max(1) {
            return Vec::new();
        }
        // Peers that already have the current model gain nothing from it again.
        let idle: Vec<PeerId> = shared
            .live_peers
            .snapshot()
            .into_iter()
            .filter(|p| !self.in_flight.busy(p) && !self.has_told(p))
            .collect();
        idle.choose_multiple(&mut self.rng, fanout)
            .copied()
            .collect()
    }

    /// A sync of the replica's current parameters.
    fn sync(&mut self, shared: &mut Shared) -> Result<(), SessionError> {
        let params = shared.current_params()?;
        self.sync_params(shared, params)
    }

    /// A sync of `params` (the replica's current parameters).
    fn sync_params(
        &mut self,
        shared: &mut Shared,
        mut params: Vec<f32>,
    ) -> Result<(), SessionError> {
        let peers = self.choose_peers(shared);
        let live = shared.live_peers.count();
        shared.averager.set_live_peers(live);
        let outgoing = shared.averager.sync(
            &mut params,
            shared.samples_since_sync,
            u32::try_from(shared.steps_since_sync).unwrap_or(u32::MAX),
            peers.len(),
        )?;
        shared.replica.set_params(&params)?;
        self.pending_since = None;
        shared.sync_done();
        shared.refresh_status();
        shared.record_next_round(shared.averager.round())?;
        if let Some(outgoing) = outgoing {
            self.sent_at = Some(Instant::now());
            let now = Instant::now();
            self.told.extend(peers.iter().map(|p| (*p, now)));
            if !shared.status.training && self.told_model.is_none() {
                let mut told = std::mem::take(&mut self.told_spare);
                told.clear();
                told.extend_from_slice(&params);
                self.told_model = Some(told);
            }
            self.in_flight.begin(&peers);
            shared.send(WorkerOutput::Send { peers, outgoing });
        }
        shared.params_buffer = params;
        shared.checkpoint_if_due()
    }

    /// A sync while not training; the model is evaluated again only if the sync merged
    /// something (held-out evaluation of a large model costs more than a sync).
    ///
    /// Averaging alone runs in rounds: a node merges and passes on as soon as every live
    /// peer's delta is here; otherwise the timer's sync waits until this node's own sends
    /// are done and, after the first delta of a round arrived, about as long as its own last
    /// fan-out took (the peers' sends to it take about as long), so a large model is not
    /// re-encoded and re-sent with a fraction of the round merged. A node sends only while it
    /// has news (see `has_news`): a merge that moves the model less than the codec's rounding
    /// ([`Averager::quiet_change`](crate::averaging::Averager::quiet_change)) is kept but is
    /// no news, so once the peers agree and each has told every other its model the network
    /// goes quiet instead of re-sending the model every period (a peer with news wakes it
    /// up). With nothing to merge and no news, the sync is skipped: it would copy the model
    /// twice and advance the round clock for nothing.
    fn idle_sync(&mut self, shared: &mut Shared) -> Result<(), SessionError> {
        if self.waits(shared) {
            shared.last_sync = Instant::now();
            // Rejections and peers still change: keep the status current (cheap).
            shared.publish();
            return Ok(());
        }
        let merged = shared.averager.counts().merged;
        let mut params = shared.current_params()?;
        // Samples trained since the last sync weigh this node's model in the merge: a sync
        // adds them to the mass first, so it merges.
        if shared.samples_since_sync > 0 {
            self.changed();
        } else {
            let live = shared.live_peers.count();
            shared.averager.set_live_peers(live);
            shared.averager.merge(&mut params)?;
        }
        self.pending_since = None;
        let moved = self.told_model.as_ref().map_or(f64::INFINITY, |told| {
            shared.averager.relative_distance(told, &params)
        });
        if moved > shared.averager.quiet_change() {
            self.changed();
        }
        if self.has_news(shared) {
            self.sync_params(shared, params)?;
        } else {
            shared.store_params(params)?;
            shared.last_sync = Instant::now();
        }
        if shared.averager.counts().merged != merged || shared.status.eval.is_none() {
            shared.evaluate()?;
        }
        shared.publish();
        Ok(())
    }

    /// Whether an idle sync waits: the round is not complete, and this node's sends are
    /// still in flight, the rest of the round is still coming, or there is nothing to do.
    fn waits(&mut self, shared: &Shared) -> bool {
        let live = shared.live_peers.count();
        let pending = shared.averager.pending();
        let round_complete = live > 0 && pending >= live;
        let sending = self.in_flight.total() > 0;
        if !sending && let Some(sent) = self.sent_at.take() {
            self.fanout_took = sent.elapsed().min(MAX_ROUND_WAIT);
        }
        // The rest of a round arrives within about one fan-out time of its first delta.
        let patient = self
            .pending_since
            .is_some_and(|first| first.elapsed() < self.fanout_took);
        let nothing_to_send = !self.has_news(shared);
        !round_complete && (sending || patient || (pending == 0 && nothing_to_send))
    }

    /// The model changed beyond the codec's rounding: it is news for every peer.
    fn changed(&mut self) {
        self.told.clear();
        if let Some(told) = self.told_model.take() {
            self.told_spare = told;
        }
    }

    /// Whether `peer` was sent the current model, recently enough: a delta can be delivered
    /// and still be dropped before it is merged (a full queue, a restart), so a peer is told
    /// again after [`TOLD_EXPIRES`].
    fn has_told(&self, peer: &PeerId) -> bool {
        self.told
            .get(peer)
            .is_some_and(|at| at.elapsed() < TOLD_EXPIRES)
    }

    /// Whether an idle node has something to send: a live peer that has not been sent the
    /// model since it last changed. Each node passing its own changes to every peer is what
    /// spreads the average (push-sum mixes only along sends), and it ends: merges shrink
    /// below the codec's rounding, and then every peer has been told.
    fn has_news(&self, shared: &Shared) -> bool {
        let live = shared.live_peers.snapshot();
        // Sparse codecs carry what they leave out in their error feedback: always news.
        let never_quiet = shared.averager.quiet_change() <= 0.0;
        !live.is_empty() && (never_quiet || live.iter().any(|p| !self.has_told(p)))
    }
}

impl Mode for PushSum {
    fn trained(&mut self, shared: &mut Shared, due: bool) -> Result<(), SessionError> {
        self.changed();
        if due {
            self.sync(shared)?;
        }
        Ok(())
    }

    fn idle_wait(&self, shared: &Shared) -> Duration {
        shared
            .config
            .idle_sync
            .saturating_sub(shared.last_sync.elapsed())
    }

    fn idle_input(&mut self, shared: &mut Shared) -> Result<(), SessionError> {
        // Averaging only: merge and pass on as soon as every live peer's delta is here,
        // instead of waiting for the timer.
        let live = shared.live_peers.count();
        if live > 0 && shared.averager.pending() >= live {
            self.idle_sync(shared)?;
        }
        Ok(())
    }

    fn idle_timeout(&mut self, shared: &mut Shared) -> Result<(), SessionError> {
        self.idle_sync(shared)
    }

    fn delta_queued(&mut self) {
        self.pending_since.get_or_insert_with(Instant::now);
    }

    fn send_failed(
        &mut self,
        shared: &mut Shared,
        outgoing: &Outgoing,
    ) -> Result<(), SessionError> {
        shared.take_back(outgoing)?;
        self.changed();
        Ok(())
    }

    fn adopted(&mut self) {
        self.pending_since = None;
        self.changed();
    }
}

#[cfg(test)]
#[path = "gossip_tests.rs"]
mod tests;

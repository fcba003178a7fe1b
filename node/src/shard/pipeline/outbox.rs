//! The pipeline's outbound side.
//!
//! [`Outbox`] sends each payload as its own task, in two pools. *Required* sends (activations,
//! gradients, commits, snapshots for the own chain) run at most `max_in_flight` at once and
//! their first lasting failure fails the run. *Best-effort* sends (snapshots for peers of other
//! chains, which may have finished or gone) have a pool of their own, one at a time per peer,
//! so a vanished peer never holds up the chain or the other peers' snapshots: a send to a peer
//! whose previous one is still in flight is skipped (a later snapshot supersedes it), and a
//! failure is only logged. Every send, retries included, is bounded by the peer
//! deadline plus the payload's time at the slowest acceptable rate, so a neighbour whose
//! connection is gone (where a dial would wait for the transport's own timeouts) fails the send
//! as soon as a silent neighbour would fail a receive. Transient failures are retried a few
//! times, so a receiver may see a message twice and must ignore repeats.

use std::collections::HashSet;
use std::time::Duration;

use libp2p::PeerId;
use murmur_protocol::pipeline::PipeHeader;
use tokio::task::JoinSet;

use super::PipelineError;
use crate::errors::chain;
use crate::net::{Network, PayloadKind};

/// How long a finished shard lets its best-effort sends complete before dropping them.
const FLUSH_GRACE: Duration = Duration::from_secs(2);

/// Whether the run depends on a send arriving.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Delivery {
    /// A lasting failure fails the run (a neighbour is gone).
    Required,
    /// A lasting failure is logged (e.g. a snapshot for a peer of another chain, which may
    /// have finished its steps).
    BestEffort,
}

/// Bounded concurrent sends to the other members.
#[derive(Debug)]
pub(crate) struct Outbox {
    net: Network,
    required: JoinSet<Result<(), PipelineError>>,
    /// Best-effort sends, each returning its peer.
    best_effort: JoinSet<PeerId>,
    /// The peers with a best-effort send in flight.
    best_effort_peers: HashSet<PeerId>,
    max_in_flight: usize,
    deadline: Duration,
}

impl Outbox {
    /// Sends over `net`, at most `max_in_flight` of each [`Delivery`] at once, each within
    /// `deadline` (plus the payload's time at the network's slowest acceptable rate).
    pub(crate) fn new(net: Network, max_in_flight: usize, deadline: Duration) -> Self {
        Self {
            net,
            required: JoinSet::new(),
            best_effort: JoinSet::new(),
            best_effort_peers: HashSet::new(),
            max_in_flight: max_in_flight.max(1),
            deadline,
        }
    }

    /// Queues a required send (see [`send_as`](Self::send_as)).
    pub(crate) async fn send(
        &mut self,
        peer: PeerId,
        kind: PayloadKind,
        header: &PipeHeader,
        payload: Vec<u8>,
    ) -> Result<(), PipelineError> {
        self.send_as(peer, kind, header, payload, Delivery::Required)
            .await
    }

    /// Queues a send of the given [`Delivery`]: a required one waits while `max_in_flight`
    /// required sends are running; a best-effort one is skipped while one to the same peer (or
    /// `max_in_flight` in all) is. Errors with the first failed earlier required send.
    pub(crate) async fn send_as(
        &mut self,
        peer: PeerId,
        kind: PayloadKind,
        header: &PipeHeader,
        payload: Vec<u8>,
        delivery: Delivery,
    ) -> Result<(), PipelineError> {
        let header = header.to_bytes()?;
        self.reap()?;
        let (net, deadline) = (self.net.clone(), self.deadline);
        match delivery {
            Delivery::Required => {
                while self.required.len() >= self.max_in_flight {
                    if let Some(done) = self.required.join_next().await {
                        flatten(done)?;
                    }
                }
                self.required.spawn(async move {
                    send_with_retries(&net, peer, kind, &header, &payload, deadline).await
                });
            }
            Delivery::BestEffort
                if self.best_effort_peers.contains(&peer)
                    || self.best_effort.len() >= self.max_in_flight =>
            {
                tracing::info!(%peer, "best-effort pipeline send skipped: an earlier one is still in flight");
            }
            Delivery::BestEffort => {
                self.best_effort_peers.insert(peer);
                self.best_effort.spawn(async move {
                    if let Err(error) =
                        send_with_retries(&net, peer, kind, &header, &payload, deadline).await
                    {
                        tracing::info!(error = %chain(&error), "best-effort pipeline send dropped");
                    }
                    peer
                });
            }
        }
        Ok(())
    }

    /// Collects finished sends; errors with the first failed required one.
    pub(crate) fn reap(&mut self) -> Result<(), PipelineError> {
        while let Some(done) = self.best_effort.try_join_next() {
            if let Ok(peer) = done {
                self.best_effort_peers.remove(&peer);
            }
        }
        while let Some(done) = self.required.try_join_next() {
            flatten(done)?;
        }
        Ok(())
    }

    /// The first required send that fails from now on (pending while none does: for a
    /// `select!` beside the wait for a message). Cancel-safe.
    pub(crate) async fn failure(&mut self) -> PipelineError {
        loop {
            match self.required.join_next().await {
                None => std::future::pending::<()>().await,
                Some(done) => {
                    if let Err(err) = flatten(done) {
                        return err;
                    }
                }
            }
        }
    }

    /// Waits for every required send, then up to [`FLUSH_GRACE`] for the best-effort ones
    /// (the rest are dropped: the shard is done, and their receivers may be too).
    pub(crate) async fn flush(&mut self) -> Result<(), PipelineError> {
        while let Some(done) = self.required.join_next().await {
            flatten(done)?;
        }
        let drained = async { while self.best_effort.join_next().await.is_some() {} };
        if tokio::time::timeout(FLUSH_GRACE, drained).await.is_err() {
            tracing::debug!(
                left = self.best_effort.len(),
                "best-effort pipeline sends dropped at the end of the run"
            );
            self.best_effort.abort_all();
        }
        self.best_effort_peers.clear();
        Ok(())
    }
}

/// Sends one payload, retrying transient failures, all within `deadline` plus the payload's
/// time at the slowest acceptable rate (the outbox's sends, and the control messages sent
/// outside a stage: plan notices, snapshots for a new plan, break reports).
pub(super) async fn send_with_retries(
    net: &Network,
    peer: PeerId,
    kind: PayloadKind,
    header: &[u8],
    payload: &[u8],
    deadline: Duration,
) -> Result<(), PipelineError> {
    let rate = net.limits().min_transfer_rate.max(1) as f64;
    let limit = deadline + Duration::from_secs_f64(payload.len() as f64 / rate);
    net.send_with_retries(peer, kind, header, payload, None, limit)
        .await
        .map(|_| ())
        .map_err(|error| PipelineError::Send {
            peer,
            error: Box::new(error),
        })
}

fn flatten(
    done: Result<Result<(), PipelineError>, tokio::task::JoinError>,
) -> Result<(), PipelineError> {
    done?
}

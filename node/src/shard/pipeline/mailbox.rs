//! The pipeline's inbound and outbound sides.
//!
//! [`Mailbox`] subscribes to the activation, gradient and control stream protocols, decodes and
//! validates each header (a malformed one is logged and scored against its sender, never passed
//! on), drops other runs' messages, and hands the rest to the stage in arrival order through one
//! bounded channel. [`Outbox`] sends each payload as its own task, at most `max_in_flight` at
//! once, retries transient failures a few times (so a receiver may see a message twice and
//! must ignore repeats), and surfaces the first lasting failure.

use std::collections::VecDeque;
use std::time::Duration;

use libp2p::PeerId;
use murmur_protocol::RunId;
use murmur_protocol::pipeline::PipeHeader;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::PipelineError;
use crate::net::{IncomingPayload, Network, PayloadKind};

/// Misbehaviour points for a malformed pipeline header.
const MALFORMED_POINTS: u32 = 10;

/// Further attempts after a transient send failure.
const SEND_RETRIES: u32 = 3;
/// Wait before the first retry (doubling, tripling… after).
const RETRY_BACKOFF: Duration = Duration::from_millis(100);

/// A decoded pipeline message.
#[derive(Debug)]
pub(crate) struct Inbound {
    /// The (Noise-authenticated) sender.
    pub(crate) peer: PeerId,
    /// Its header.
    pub(crate) header: PipeHeader,
    /// The payload (tensor bytes, plan JSON, or empty).
    pub(crate) payload: Vec<u8>,
}

/// Inbound pipeline messages of one run.
#[derive(Debug)]
pub(crate) struct Mailbox {
    rx: mpsc::Receiver<Inbound>,
    backlog: VecDeque<Inbound>,
}

impl Mailbox {
    /// Subscribes to the pipeline protocols of `net` for `run`.
    pub(crate) fn open(net: &Network, run: RunId) -> Result<Self, PipelineError> {
        let (tx, rx) = mpsc::channel(64);
        for kind in [
            PayloadKind::Activations,
            PayloadKind::Gradients,
            PayloadKind::Control,
        ] {
            let incoming = net.subscribe_payloads(kind)?;
            tokio::spawn(forward(net.clone(), run, incoming, tx.clone()));
        }
        Ok(Self {
            rx,
            backlog: VecDeque::new(),
        })
    }

    /// The next message, or `None` when nothing arrived within `wait` (or the network stopped).
    pub(crate) async fn recv(&mut self, wait: Duration) -> Option<Inbound> {
        if let Some(message) = self.backlog.pop_front() {
            return Some(message);
        }
        tokio::time::timeout(wait, self.rx.recv())
            .await
            .ok()
            .flatten()
    }

    /// Puts messages back, to be received before anything new (in the given order).
    pub(crate) fn requeue(&mut self, messages: Vec<Inbound>) {
        for message in messages.into_iter().rev() {
            self.backlog.push_front(message);
        }
    }
}

async fn forward(
    net: Network,
    run: RunId,
    mut incoming: mpsc::Receiver<IncomingPayload>,
    tx: mpsc::Sender<Inbound>,
) {
    while let Some(payload) = incoming.recv().await {
        let header = match PipeHeader::from_bytes(&payload.header) {
            Ok(header) => header,
            Err(err) => {
                tracing::warn!(peer = %payload.peer, %err, "malformed pipeline header");
                let reason = format!("malformed pipeline header: {err}");
                let _ = net
                    .report_misbehaviour(payload.peer, MALFORMED_POINTS, reason)
                    .await;
                continue;
            }
        };
        if header.run != run {
            tracing::debug!(peer = %payload.peer, "pipeline message of another run dropped");
            continue;
        }
        let message = Inbound {
            peer: payload.peer,
            header,
            payload: payload.payload,
        };
        if tx.send(message).await.is_err() {
            return;
        }
    }
}

/// Whether the run depends on a send arriving.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Delivery {
    /// A lasting failure fails the run (a neighbour is gone).
    Required,
    /// A lasting failure is logged (e.g. a snapshot for a peer of another chain, which may
    /// have finished its steps).
    BestEffort,
}

/// Bounded concurrent sends to neighbours.
#[derive(Debug)]
pub(crate) struct Outbox {
    net: Network,
    sends: JoinSet<Result<(), PipelineError>>,
    max_in_flight: usize,
}

impl Outbox {
    /// Sends over `net`, at most `max_in_flight` at once.
    pub(crate) fn new(net: Network, max_in_flight: usize) -> Self {
        Self {
            net,
            sends: JoinSet::new(),
            max_in_flight: max_in_flight.max(1),
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

    /// Queues a send of the given [`Delivery`] (waits while `max_in_flight` are running);
    /// errors with the first failed earlier send that was required.
    pub(crate) async fn send_as(
        &mut self,
        peer: PeerId,
        kind: PayloadKind,
        header: &PipeHeader,
        payload: Vec<u8>,
        delivery: Delivery,
    ) -> Result<(), PipelineError> {
        let header = header
            .to_bytes()
            .map_err(|e| PipelineError::Protocol(e.to_string()))?;
        self.reap()?;
        while self.sends.len() >= self.max_in_flight {
            if let Some(done) = self.sends.join_next().await {
                flatten(done)?;
            }
        }
        let net = self.net.clone();
        self.sends.spawn(async move {
            let mut attempt = 0;
            loop {
                match net.send_payload(peer, kind, &header, &payload).await {
                    Ok(_) => return Ok(()),
                    Err(error) if error.is_transient() && attempt < SEND_RETRIES => {
                        attempt += 1;
                        tracing::debug!(%peer, %error, attempt, "pipeline send retried");
                        tokio::time::sleep(RETRY_BACKOFF * attempt).await;
                    }
                    Err(error) if delivery == Delivery::Required => {
                        return Err(PipelineError::Send {
                            peer,
                            error: Box::new(error),
                        });
                    }
                    Err(error) => {
                        tracing::info!(%peer, %error, "best-effort pipeline send dropped");
                        return Ok(());
                    }
                }
            }
        });
        Ok(())
    }

    /// Collects finished sends; errors with the first failure.
    pub(crate) fn reap(&mut self) -> Result<(), PipelineError> {
        while let Some(done) = self.sends.try_join_next() {
            flatten(done)?;
        }
        Ok(())
    }

    /// Waits for every queued send.
    pub(crate) async fn flush(&mut self) -> Result<(), PipelineError> {
        while let Some(done) = self.sends.join_next().await {
            flatten(done)?;
        }
        Ok(())
    }
}

fn flatten(
    done: Result<Result<(), PipelineError>, tokio::task::JoinError>,
) -> Result<(), PipelineError> {
    done.map_err(|e| PipelineError::Compute(format!("send task failed: {e}")))?
}

//! The pipeline's inbound side (the outbound one is [`super::outbox`]).
//!
//! The driver's [`Mailbox`] subscribes to the activation, gradient and control stream
//! protocols, decodes and validates each header (a malformed one is logged and scored against
//! its sender, never passed on), drops other runs' messages (in a closed pool, refuses
//! non-members' streams on their header), and hands the rest on in arrival
//! order through one bounded channel. A stage's mailbox is fed by the driver with its epoch's
//! messages (see [`Mailbox::for_stage`]).

use std::collections::VecDeque;
use std::sync::Arc;

use libp2p::PeerId;
use murmur_protocol::RunId;
use murmur_protocol::pipeline::PipeHeader;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::PipelineError;
use crate::averaging::Admission;
use crate::errors::chain;
use crate::net::{self, IncomingPayload, Network, PayloadKind};

/// Misbehaviour points for a malformed pipeline header.
const MALFORMED_POINTS: u32 = 10;

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

/// Inbound pipeline messages of one run (the driver's) or of one epoch (a stage's).
#[derive(Debug)]
pub(crate) struct Mailbox {
    rx: mpsc::Receiver<Inbound>,
    backlog: VecDeque<Inbound>,
    /// The tasks reading the network's subscriptions (none for a stage's); aborted on drop.
    _readers: JoinSet<()>,
}

impl Mailbox {
    /// Subscribes to the pipeline protocols of `net` for `run`; in a closed pool, streams
    /// from peers outside `admission` are refused on their header, before their payloads.
    pub(crate) fn open(
        net: &Network,
        run: RunId,
        admission: &Admission,
    ) -> Result<Self, PipelineError> {
        let (tx, rx) = mpsc::channel(64);
        let mut readers = JoinSet::new();
        for kind in [
            PayloadKind::Activations,
            PayloadKind::Gradients,
            PayloadKind::Control,
        ] {
            let incoming = match admission {
                Admission::Open => net.subscribe_payloads(kind)?,
                Admission::Closed(_) => {
                    let pool = admission.clone();
                    let members: net::Admission = Arc::new(move |peer, _header| {
                        if pool.admits_peer(peer) {
                            Ok(())
                        } else {
                            Err("not_member".to_owned())
                        }
                    });
                    net.subscribe_payloads_admitting(kind, members)?
                }
            };
            readers.spawn(forward(net.clone(), run, incoming, tx.clone()));
        }
        Ok(Self {
            rx,
            backlog: VecDeque::new(),
            _readers: readers,
        })
    }

    /// A stage's mailbox: `early` first (messages of its epoch that came before it started),
    /// then what the driver sends on `rx`.
    pub(crate) fn for_stage(rx: mpsc::Receiver<Inbound>, early: Vec<Inbound>) -> Self {
        Self {
            rx,
            backlog: early.into(),
            _readers: JoinSet::new(),
        }
    }

    /// The next message; None once every sender is gone. Cancel-safe.
    pub(crate) async fn next(&mut self) -> Option<Inbound> {
        if let Some(message) = self.backlog.pop_front() {
            return Some(message);
        }
        self.rx.recv().await
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
                tracing::warn!(peer = %payload.peer, err = %chain(&err), "malformed pipeline header");
                let reason = format!("malformed pipeline header: {}", chain(&err));
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use murmur_protocol::RunId;

    use super::Mailbox;
    use crate::averaging::Admission;
    use crate::identity::NodeIdentity;
    use crate::net::{NetConfig, Network, PayloadKind, TransferError};

    async fn node(seed: u8, run: RunId) -> Network {
        let identity = NodeIdentity::from_secret([seed; 32]).expect("identity");
        let (net, _events) = Network::start(identity.keypair(), NetConfig::loopback(run), None)
            .await
            .expect("network");
        net
    }

    /// A closed pool's pipeline refuses a non-member's stream on its header: the sender is
    /// told `not_member` and its payload is never read (before: `--pool` was refused with
    /// `--sharded`, and anyone's pipeline messages were read).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_closed_pool_refuses_a_non_members_pipeline_stream_on_its_header() {
        let run = RunId::from_name("mailbox-pool");
        let member = NodeIdentity::from_secret([2; 32]).expect("identity");
        let pool = Admission::Closed([member.peer_key()].into());
        let receiver = node(1, run).await;
        let _mailbox = Mailbox::open(&receiver, run, &pool).expect("mailbox");
        let outsider = node(3, run).await;
        let addrs = receiver.listen_addrs().await.expect("addrs");
        let addr = addrs[0]
            .clone()
            .with(libp2p::multiaddr::Protocol::P2p(receiver.local_peer_id()));
        outsider.dial(addr).await.expect("dial");
        let to = receiver.local_peer_id();
        let mut outcome = None;
        for _ in 0..50 {
            let sent = tokio::time::timeout(
                Duration::from_secs(10),
                outsider.send_payload(to, PayloadKind::Control, b"header", &[0; 1024]),
            )
            .await
            .expect("a send ends within 10 s");
            match sent {
                Err(TransferError::Open { .. }) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                other => {
                    outcome = Some(other);
                    break;
                }
            }
        }
        assert!(
            matches!(&outcome, Some(Err(TransferError::Refused(r))) if r == "not_member"),
            "{outcome:?}"
        );
        outsider.shutdown().await;
        receiver.shutdown().await;
    }
}

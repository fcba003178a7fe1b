//! The cheap, cloneable [`Network`] handle and the state it shares with transfer tasks.
//!
//! Control operations go to the owner task over a bounded command channel and are answered
//! on oneshots. Bulk transfers bypass the owner task: they open `libp2p-stream` streams
//! directly and run in the caller's task (outgoing) or a tracked task (incoming), each with
//! a deadline.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use libp2p::{Multiaddr, PeerId};
use murmur_protocol::{Digest, SignedEnvelope};
use tokio::sync::{mpsc, oneshot, watch};

use super::config::NetLimits;
use super::error::{NetError, TransferError};
use super::event_loop::Command;
use super::events::{IncomingPayload, TransferStats};
use super::inbound::{SHUTDOWN_GRACE, spawn_accept_loop};
use super::open::open_stream;
use super::peers::PeerInfo;
use super::shared::Shared;
use super::state::{self, StateRequestEvent, StateResponse};
use super::transfer::{self, Admission, PayloadKind};
use crate::errors::chain;

/// Further attempts of [`Network::send_with_retries`] after a transient failure.
const SEND_RETRIES: u32 = 5;
/// The pause before the second retry (doubled, tripled… after; the first is at once, as the
/// usual transient failure is one of several connections to the peer closing under the
/// stream): 2.5 s in all, time for a peer known only from its gossiped announcement to
/// become dialable.
const RETRY_BACKOFF: Duration = Duration::from_millis(250);

/// Handle to the node's network. Cheap to clone; all methods are safe to call concurrently.
#[derive(Clone, Debug)]
pub struct Network {
    pub(crate) shared: Arc<Shared>,
    pub(crate) commands: mpsc::Sender<Command>,
}

impl Network {
    /// This node's peer id.
    pub fn local_peer_id(&self) -> PeerId {
        self.shared.local_peer_id
    }

    /// The limits this node runs with.
    pub fn limits(&self) -> &NetLimits {
        &self.shared.limits
    }

    async fn request<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, NetError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(make(reply))
            .await
            .map_err(|_| NetError::Shutdown)?;
        answer.await.map_err(|_| NetError::Shutdown)
    }

    /// Pushes `payload` with an application `header` to `peer` on `kind`'s stream protocol.
    /// Returns once the receiver verified the digest and queued the payload.
    pub async fn send_payload(
        &self,
        peer: PeerId,
        kind: PayloadKind,
        header: &[u8],
        payload: &[u8],
    ) -> Result<TransferStats, TransferError> {
        self.push(peer, kind, header, payload, None).await
    }

    /// Like [`send_payload`](Self::send_payload) for a payload whose BLAKE3 digest the caller
    /// already holds (e.g. a delta's, from its signed header): it is not hashed again. A wrong
    /// digest makes the receiver refuse the payload.
    pub async fn send_hashed_payload(
        &self,
        peer: PeerId,
        kind: PayloadKind,
        header: &[u8],
        payload: &[u8],
        digest: Digest,
    ) -> Result<TransferStats, TransferError> {
        self.push(peer, kind, header, payload, Some(digest)).await
    }

    /// Like [`send_hashed_payload`](Self::send_hashed_payload) (`digest` when the caller holds
    /// it), retrying a transient failure (a stream that cannot be opened yet, a connection
    /// closed under it) up to [`SEND_RETRIES`] times with a growing pause, all within `limit`.
    /// A retried payload may reach the receiver twice: receivers refuse replays.
    pub async fn send_with_retries(
        &self,
        peer: PeerId,
        kind: PayloadKind,
        header: &[u8],
        payload: &[u8],
        digest: Option<Digest>,
        limit: Duration,
    ) -> Result<TransferStats, TransferError> {
        let attempts = async {
            let mut attempt = 0;
            loop {
                match self.push(peer, kind, header, payload, digest).await {
                    Ok(stats) => return Ok(stats),
                    Err(error) if error.is_transient() && attempt < SEND_RETRIES => {
                        attempt += 1;
                        tracing::debug!(%peer, error = %chain(&error), attempt, "send retried");
                        tokio::time::sleep(RETRY_BACKOFF * (attempt - 1)).await;
                    }
                    Err(error) => return Err(error),
                }
            }
        };
        tokio::time::timeout(limit, attempts)
            .await
            .unwrap_or(Err(TransferError::Deadline(limit)))
    }

    async fn push(
        &self,
        peer: PeerId,
        kind: PayloadKind,
        header: &[u8],
        payload: &[u8],
        digest: Option<Digest>,
    ) -> Result<TransferStats, TransferError> {
        let shared = &self.shared;
        let _active = shared.transfer_started();
        let deadline = shared.limits.transfer_deadline(payload.len());
        let mut control = shared.control();
        let work = async {
            let stream = open_stream(&mut control, peer, kind.protocol()).await?;
            transfer::send(stream, header, payload, digest, &shared.limits).await
        };
        let stats = shared.bounded(deadline, work).await?;
        let _ = self.commands.try_send(Command::RecordThroughput {
            peer,
            bytes_per_sec: stats.bytes_per_sec(),
        });
        Ok(stats)
    }

    /// Starts accepting payloads of `kind`; received payloads arrive on the returned bounded
    /// channel. Each kind can have one subscriber; without one, senders get `Open` errors.
    pub fn subscribe_payloads(
        &self,
        kind: PayloadKind,
    ) -> Result<mpsc::Receiver<IncomingPayload>, NetError> {
        self.subscribe(kind, None)
    }

    /// Like [`subscribe_payloads`](Self::subscribe_payloads), with `admission` checking each
    /// header before its payload is read: a refused one costs the sender only the header
    /// (it gets [`TransferError::Refused`] with the reason).
    pub fn subscribe_payloads_admitting(
        &self,
        kind: PayloadKind,
        admission: Admission,
    ) -> Result<mpsc::Receiver<IncomingPayload>, NetError> {
        self.subscribe(kind, Some(admission))
    }

    fn subscribe(
        &self,
        kind: PayloadKind,
        admission: Option<Admission>,
    ) -> Result<mpsc::Receiver<IncomingPayload>, NetError> {
        let incoming = self
            .shared
            .control()
            .accept(kind.protocol())
            .map_err(|_| NetError::AlreadySubscribed(kind.protocol_str()))?;
        let (tx, rx) = mpsc::channel(self.shared.limits.event_queue);
        let shared = self.shared.clone();
        spawn_accept_loop(
            self.shared.clone(),
            kind.protocol_str(),
            kind.queues_when_busy(),
            incoming,
            move |peer, stream| {
                let (shared, tx, admission) = (shared.clone(), tx.clone(), admission.clone());
                async move {
                    let limits = &shared.limits;
                    transfer::receive(peer, kind, stream, limits, &tx, admission.as_ref()).await
                }
            },
        );
        Ok(rx)
    }

    /// Fetches state from `peer`: sends `request`, receives the server's header and payload.
    pub async fn fetch_state(
        &self,
        peer: PeerId,
        request: &[u8],
    ) -> Result<StateResponse, TransferError> {
        let shared = &self.shared;
        let _active = shared.transfer_started();
        let deadline = shared
            .limits
            .transfer_deadline(shared.limits.max_payload_bytes);
        let mut control = shared.control();
        let work = async {
            let stream = open_stream(&mut control, peer, state::STATE_PROTOCOL).await?;
            state::fetch(stream, request, &shared.limits).await
        };
        shared.bounded(deadline, work).await
    }

    /// Starts serving state requests; each arrives on the returned channel to be answered.
    pub fn serve_state(&self) -> Result<mpsc::Receiver<StateRequestEvent>, NetError> {
        let incoming = self
            .shared
            .control()
            .accept(state::STATE_PROTOCOL)
            .map_err(|_| NetError::AlreadySubscribed("/murmur/state/1.0.0"))?;
        let (tx, rx) = mpsc::channel(self.shared.limits.event_queue);
        let shared = self.shared.clone();
        spawn_accept_loop(
            self.shared.clone(),
            "/murmur/state/1.0.0",
            false,
            incoming,
            move |peer, stream| {
                let (shared, tx) = (shared.clone(), tx.clone());
                async move { state::serve(peer, stream, &shared.limits, &tx).await }
            },
        );
        Ok(rx)
    }

    /// Publishes a signed announcement on the run's topic.
    pub async fn publish_announcement(&self, envelope: &SignedEnvelope) -> Result<(), NetError> {
        self.publish_bytes(envelope.to_bytes()).await
    }

    /// Publishes pre-encoded bytes on the run's topic as they are (no local validation).
    /// Fails with `Publish` until at least one peer subscribed to the topic.
    pub async fn publish_bytes(&self, bytes: Vec<u8>) -> Result<(), NetError> {
        self.request(|reply| Command::Publish(bytes, reply)).await?
    }

    /// A receiver that is marked changed whenever the peer book changes in a way that
    /// [`peers`](Self::peers) would show: a peer's first connection or last disconnection, or a
    /// new announcement. Wait on it instead of looking at the peer book on a timer.
    pub fn peer_changes(&self) -> watch::Receiver<u64> {
        self.shared.peer_changes.clone()
    }

    /// Known peers with addresses, latest announcement, RTT, throughput and score.
    pub async fn peers(&self) -> Result<Vec<PeerInfo>, NetError> {
        self.request(Command::Peers).await
    }

    /// Dials an address (`/p2p/<id>` suffix recommended).
    pub async fn dial(&self, addr: Multiaddr) -> Result<(), NetError> {
        self.request(|reply| Command::Dial(addr, reply)).await?
    }

    /// Addresses this node listens on.
    pub async fn listen_addrs(&self) -> Result<Vec<Multiaddr>, NetError> {
        self.request(Command::ListenAddrs).await
    }

    /// Confirmed external addresses of this node.
    pub async fn external_addrs(&self) -> Result<Vec<Multiaddr>, NetError> {
        self.request(Command::ExternalAddrs).await
    }

    /// Adds misbehaviour points to `peer` (e.g. for an invalid delta); at the ban score the
    /// peer is disconnected and refused.
    pub async fn report_misbehaviour(
        &self,
        peer: PeerId,
        points: u32,
        reason: String,
    ) -> Result<(), NetError> {
        let command = Command::Penalize {
            peer,
            points,
            reason,
        };
        self.commands
            .send(command)
            .await
            .map_err(|_| NetError::Shutdown)
    }

    /// Transfers in flight (outgoing and incoming), for monitoring and leak checks.
    pub fn active_transfers(&self) -> usize {
        self.shared.active.load(Ordering::SeqCst)
    }

    /// Raw stream access for custom protocols and tooling.
    pub fn stream_control(&self) -> libp2p_stream::Control {
        self.shared.control()
    }

    /// Opens a raw stream of `protocol` to `peer` as the node's own transfers do (asking again
    /// when a request stalls, see `net/open.rs`), within `limit`.
    pub async fn open_raw_stream(
        &self,
        peer: PeerId,
        protocol: libp2p::StreamProtocol,
        limit: Duration,
    ) -> Result<libp2p::Stream, TransferError> {
        let mut control = self.shared.control();
        tokio::time::timeout(limit, open_stream(&mut control, peer, protocol))
            .await
            .map_err(|_| TransferError::Deadline(limit))?
    }

    /// Stops the network: cancels outbound transfers, lets inbound ones under way finish for
    /// up to [`SHUTDOWN_GRACE`] (so a payload this node took in is acknowledged), then writes
    /// the peer book and closes connections. Waits at most a few seconds in all.
    pub async fn shutdown(&self) {
        self.shared.cancel.cancel();
        self.shared.inbound.close();
        let inbound = self.shared.inbound.wait();
        let _ = tokio::time::timeout(SHUTDOWN_GRACE * 2, inbound).await;
        let _ = self.request(Command::Shutdown).await;
        self.shared.tasks.close();
        let wind_down = async {
            self.shared.tasks.wait().await;
            self.shared.inbound.wait().await;
        };
        let _ = tokio::time::timeout(Duration::from_secs(5), wind_down).await;
    }
}

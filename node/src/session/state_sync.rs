//! Model state for late joiners: serving it in digest-checked byte ranges, and downloading
//! it (resumably, range by range) when this node finds itself far behind its peers — from
//! several of them, adopting only what independent peers agree on (`super::state_check`).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use libp2p::PeerId;
use murmur_protocol::envelope::MAX_ENVELOPE_BYTES;
use murmur_protocol::{
    Digest, EnvelopeError, Message, MessageError, SignedEnvelope, StateHeader, StateRequest,
};
use tokio::sync::{mpsc, oneshot};

use super::state_ranges::{AssemblyError, StateAssembly};
use super::worker::{Snapshot, WorkerInput};
use super::{Context, state_check};
use crate::errors::chain;
use crate::net::{StateReply, StateRequestEvent, TransferError, key_matches_peer};

/// Bytes per requested range.
const RANGE_BYTES: u64 = 8 * 1024 * 1024;
/// Attempts per range before giving up on a peer.
const RANGE_ATTEMPTS: usize = 3;
/// How long after start the node looks for peers far ahead of it.
const JOIN_WINDOW: Duration = Duration::from_secs(30);
/// Wait after a failed or refused state download before the next try.
const RETRY_AFTER: Duration = Duration::from_secs(2);
/// How long a joiner with states to cross-check waits for its view of the live peers to be
/// complete.
const VIEW_WAIT: Duration = Duration::from_secs(5);
/// A served snapshot is reused for range requests this long.
const SNAPSHOT_TTL: Duration = Duration::from_secs(60);

/// Why a state request is refused; its text, causes included, is the refusal sent back.
#[derive(Debug, thiserror::Error)]
enum Refusal {
    /// The request is not a valid signed envelope.
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    /// The envelope holds another message.
    #[error("not a state request")]
    NotARequest,
    /// The envelope is signed by someone other than the requesting peer.
    #[error("signer is not the requesting peer")]
    WrongSigner,
    /// The request is for another run or model.
    #[error("another run or model")]
    OtherRun,
    /// The requester is not a member of this closed pool.
    #[error("not a member of this closed pool")]
    NotAMember,
    /// The requested range starts past the end of the state.
    #[error("offset {offset} beyond {total} bytes")]
    OffsetBeyond {
        /// The requested offset.
        offset: u64,
        /// The state's size.
        total: u64,
    },
    /// The reply's header could not be signed.
    #[error("cannot sign the state header")]
    Sign(#[source] MessageError),
}

/// Why downloading a peer's state failed.
#[derive(Debug, thiserror::Error)]
enum DownloadError {
    /// The request could not be signed.
    #[error("cannot sign the state request")]
    Sign(#[source] MessageError),
    /// The range could not be fetched (the peer refused, the transfer broke…).
    #[error(transparent)]
    Fetch(#[from] TransferError),
    /// The reply's header is not a valid signed envelope.
    #[error("invalid state header")]
    Header(#[source] EnvelopeError),
    /// The reply's header holds another message.
    #[error("not a state header")]
    NotAHeader,
    /// The header is signed by someone other than the peer asked.
    #[error("state signed by another peer")]
    WrongSigner,
    /// The state is of another run or model.
    #[error("state of another run or model")]
    OtherRun,
    /// The ranges do not make a state this node can adopt.
    #[error(transparent)]
    Assembly(#[from] AssemblyError),
    /// The task checking the state panicked or was cancelled.
    #[error("checking the state failed")]
    Check(#[source] tokio::task::JoinError),
}

#[derive(Debug)]
struct Served {
    round: u64,
    samples: u64,
    bytes: Bytes,
    digest: Digest,
    taken: Instant,
}

/// Answers state requests from admitted peers of this run and model.
pub(crate) async fn serve(ctx: Arc<Context>, mut requests: mpsc::Receiver<StateRequestEvent>) {
    let mut cached: Option<Served> = None;
    loop {
        let event = tokio::select! {
            _ = ctx.cancel.cancelled() => return,
            event = requests.recv() => match event { Some(e) => e, None => return },
        };
        let peer = event.peer;
        let request = match check_request(&ctx, &peer, &event.request) {
            Ok(request) => request,
            Err(refusal) => {
                let reason = chain(&refusal).to_string();
                tracing::warn!(%peer, %reason, "state request refused");
                ctx.traffic.states_refused.fetch_add(1, Ordering::Relaxed);
                event.respond(StateReply::Refuse(reason));
                continue;
            }
        };
        let fresh = request.offset == 0
            || cached
                .as_ref()
                .is_none_or(|c| c.taken.elapsed() > SNAPSHOT_TTL);
        if fresh {
            match snapshot(&ctx).await {
                Some(s) => cached = Some(s),
                None => {
                    event.respond(StateReply::Refuse("no snapshot available".into()));
                    continue;
                }
            }
        }
        let Some(served) = &cached else { continue };
        match reply(&ctx, served, &request) {
            Ok(reply) => {
                ctx.traffic.states_served.fetch_add(1, Ordering::Relaxed);
                event.respond(reply);
            }
            Err(refusal) => event.respond(StateReply::Refuse(chain(&refusal).to_string())),
        }
    }
}

fn check_request(ctx: &Context, peer: &PeerId, bytes: &[u8]) -> Result<StateRequest, Refusal> {
    let (signer, message) = SignedEnvelope::open_bytes(bytes, MAX_ENVELOPE_BYTES)?;
    let Message::StateRequest(request) = message else {
        return Err(Refusal::NotARequest);
    };
    if !key_matches_peer(&signer, peer) {
        return Err(Refusal::WrongSigner);
    }
    let averager = &ctx.config.averager;
    if request.run != averager.run || request.model != averager.model {
        return Err(Refusal::OtherRun);
    }
    if !averager.admission.admits(&signer) {
        return Err(Refusal::NotAMember);
    }
    Ok(request)
}

async fn snapshot(ctx: &Context) -> Option<Served> {
    let (tx, rx) = oneshot::channel();
    if !ctx.deliver(WorkerInput::Snapshot(tx)).await {
        return None;
    }
    let Snapshot {
        mut round,
        samples,
        mut params,
    } = tokio::time::timeout(Duration::from_secs(20), rx)
        .await
        .ok()?
        .ok()?;
    if let Some(tamper) = ctx.config.tamper {
        tamper.serve_state(&mut round, &mut params);
    }
    // Serialising and hashing a whole model is heavy: keep it off the async workers.
    let (bytes, digest) = tokio::task::spawn_blocking(move || {
        let bytes: Vec<u8> = params.iter().flat_map(|v| v.to_le_bytes()).collect();
        let digest = Digest::of(&bytes);
        (bytes, digest)
    })
    .await
    .ok()?;
    Some(Served {
        round,
        samples,
        bytes: bytes.into(),
        digest,
        taken: Instant::now(),
    })
}

fn reply(ctx: &Context, served: &Served, request: &StateRequest) -> Result<StateReply, Refusal> {
    let total = served.bytes.len() as u64;
    if request.offset > total {
        return Err(Refusal::OffsetBeyond {
            offset: request.offset,
            total,
        });
    }
    let wanted = if request.max_len == 0 {
        total
    } else {
        request.max_len
    };
    let len = wanted.min(total - request.offset);
    let header = StateHeader {
        peer: ctx.identity.peer_key(),
        run: ctx.config.averager.run,
        model: ctx.config.averager.model,
        round: served.round,
        samples: served.samples,
        total_len: total,
        total_digest: served.digest,
        offset: request.offset,
        range_len: len,
    };
    let envelope = SignedEnvelope::sign(ctx.identity.signing_key(), &Message::State(header))
        .map_err(Refusal::Sign)?;
    let start = request.offset as usize;
    Ok(StateReply::Serve {
        header: envelope.to_bytes(),
        payload: served.bytes.slice(start..start + len as usize),
    })
}

/// Watches for peers far ahead (late join, restart after a long outage) and adopts, once,
/// a state that independent peers agree on (`super::state_check`): it downloads from up to
/// three of them and adopts only what at least two agree on. It looks when the peer book
/// changes (announcements carry the rounds), during [`JOIN_WINDOW`] from the start; after a
/// failed or refused attempt it waits [`RETRY_AFTER`]. With fewer than two peers far ahead
/// it adopts nothing and keeps training and averaging.
pub(crate) async fn join(ctx: Arc<Context>) {
    // Only a training node can be behind: with training off every model is as good as any
    // other, and averaging alone brings it to the mean.
    let Some(anchor) = ctx.anchor.clone().filter(|_| ctx.trains) else {
        return;
    };
    let window = tokio::time::sleep(JOIN_WINDOW);
    tokio::pin!(window);
    let mut changes = ctx.net.peer_changes();
    let start_round = ctx.status.borrow().worker.round;
    let mut told_alone = false;
    // Until when a joiner with sources waits for a complete view (see below).
    let mut view_deadline: Option<tokio::time::Instant> = None;
    loop {
        let Ok(peers) = ctx.net.peers().await else {
            return;
        };
        let live = super::presence::live_peers(&ctx, &peers);
        let ahead = far_ahead(&ctx, &live, &peers, start_round);
        let sources = state_check::sources(ahead, ctx.config.averager.max_lead);
        match sources.len() {
            0 => {}
            1 => {
                if !told_alone {
                    tracing::info!(peer = %sources[0].1, "one peer far ahead; waiting for a second to cross-check its state");
                    told_alone = true;
                }
            }
            // Cross-check against the fullest view: wait (for the next peer-book change, at
            // most VIEW_WAIT: behind a NAT some linked peer may never be reached) while a
            // live peer links to a training peer whose announcement has not come yet — it
            // may be far ahead too.
            _ if !super::presence::view_complete(&ctx, &live, &peers)
                && tokio::time::Instant::now()
                    < *view_deadline
                        .get_or_insert_with(|| tokio::time::Instant::now() + VIEW_WAIT) => {}
            _ => {
                if adopt_agreed(&ctx, &sources, &anchor).await {
                    return;
                }
                tokio::select! {
                    biased;
                    () = ctx.cancel.cancelled() => return,
                    () = &mut window => return,
                    () = tokio::time::sleep(RETRY_AFTER) => {}
                }
            }
        }
        // Wakes at the end of the wait for a complete view (a deadline passed waits no more).
        let view_wait = async {
            match view_deadline.filter(|d| *d > tokio::time::Instant::now()) {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            () = ctx.cancel.cancelled() => return,
            () = &mut window => return,
            changed = changes.changed() => if changed.is_err() { return },
            () = view_wait => {}
        }
    }
}

/// Downloads the states of `sources` and adopts what they agree on; returns whether the
/// training thread took a state (or is gone: nothing more to do).
async fn adopt_agreed(ctx: &Context, sources: &[(u64, PeerId)], anchor: &[f32]) -> bool {
    let mut offers = Vec::with_capacity(sources.len());
    for &(announced, peer) in sources {
        match download(ctx, peer, announced).await {
            Ok((round, params)) => offers.push(state_check::Offer {
                peer,
                round,
                params,
            }),
            Err(err) => {
                tracing::warn!(%peer, err = %chain(&err), "state download failed; will retry");
            }
        }
    }
    match state_check::cross_check(&offers, anchor) {
        state_check::Verdict::Adopt {
            round,
            params,
            peers,
        } => {
            tracing::info!(?peers, round, "downloaded model state agreed by peers");
            let adopt = WorkerInput::Adopt {
                round,
                params,
                from: peers,
            };
            if !ctx.deliver(adopt).await {
                tracing::warn!(round, "downloaded state not adopted: node stopping");
            }
            true
        }
        state_check::Verdict::Disagree => {
            tracing::warn!(
                offers = offers.len(),
                "the states of the peers far ahead do not agree; none adopted, training on"
            );
            false
        }
    }
}

/// Live peers announcing a round far enough ahead of this node to adopt a state from.
fn far_ahead(
    ctx: &Context,
    live: &[PeerId],
    peers: &[crate::net::PeerInfo],
    start_round: u64,
) -> Vec<(u64, PeerId)> {
    let progress = Progress {
        start_round,
        trained_rounds: ctx.status.borrow().worker.trained_rounds,
    };
    peers
        .iter()
        .filter(|p| live.contains(&p.peer_id))
        .filter_map(|p| p.announcement.as_ref().map(|a| (a.round, p.peer_id)))
        .filter(|(round, _)| progress.is_far_behind(*round, ctx.config.join_lag_rounds))
        .collect()
}

/// How far this node's model has come on its own, for telling whether a peer is far ahead.
#[derive(Debug, Clone, Copy)]
struct Progress {
    /// The round it started from (0, or its checkpoint's).
    start_round: u64,
    /// Rounds it has trained through since.
    trained_rounds: u64,
}

impl Progress {
    /// Whether a peer announcing `round` is more than `lag` rounds ahead of this node's own
    /// progress, so that adopting its state beats merging towards it.
    ///
    /// The node's round clock is no measure of that: merging peers' deltas moves it forward
    /// without bringing the model up to date. Nor are the peers' rounds alone: idle rounds
    /// (nodes done training, still averaging) move them too. So only a node that has trained
    /// at most `lag` rounds of its own can be a late joiner. One that has trained more mixes
    /// with its peers by merging; were it to adopt a newcomer's state, carried to a high round
    /// by merges, it would throw its training away for a barely trained model. (A newcomer
    /// that trains more than `lag` rounds alone before it finds anyone merges towards its
    /// peers instead of downloading.)
    fn is_far_behind(self, round: u64, lag: u64) -> bool {
        self.trained_rounds <= lag
            && round
                > self
                    .start_round
                    .saturating_add(self.trained_rounds)
                    .saturating_add(lag)
    }
}

/// Downloads `peer`'s state range by range, resuming a failed range up to a few times,
/// and checks it against the announced round, the whole-state digest and the model size.
async fn download(
    ctx: &Context,
    peer: PeerId,
    announced_round: u64,
) -> Result<(u64, Vec<f32>), DownloadError> {
    let mut assembly = StateAssembly::new(ctx.param_count, announced_round);
    while let Some(offset) = assembly.next_offset() {
        let mut attempt = 0;
        let (header, payload) = loop {
            attempt += 1;
            match fetch_range(ctx, peer, offset).await {
                Ok(got) => break got,
                Err(err) if attempt < RANGE_ATTEMPTS => {
                    let err = chain(&err);
                    tracing::debug!(%peer, %err, offset, "state range failed, resuming");
                }
                Err(err) => return Err(err),
            }
        };
        assembly.push(header, &payload)?;
    }
    let state = tokio::task::spawn_blocking(move || assembly.finish())
        .await
        .map_err(DownloadError::Check)??;
    Ok(state)
}

async fn fetch_range(
    ctx: &Context,
    peer: PeerId,
    offset: u64,
) -> Result<(StateHeader, Vec<u8>), DownloadError> {
    let request = StateRequest {
        peer: ctx.identity.peer_key(),
        run: ctx.config.averager.run,
        model: ctx.config.averager.model,
        offset,
        max_len: RANGE_BYTES,
    };
    let envelope =
        SignedEnvelope::sign(ctx.identity.signing_key(), &Message::StateRequest(request))
            .map_err(DownloadError::Sign)?;
    let response = ctx.net.fetch_state(peer, &envelope.to_bytes()).await?;
    let (signer, message) = SignedEnvelope::open_bytes(&response.header, MAX_ENVELOPE_BYTES)
        .map_err(DownloadError::Header)?;
    let Message::State(header) = message else {
        return Err(DownloadError::NotAHeader);
    };
    if !key_matches_peer(&signer, &peer) {
        return Err(DownloadError::WrongSigner);
    }
    if header.run != ctx.config.averager.run || header.model != ctx.config.averager.model {
        return Err(DownloadError::OtherRun);
    }
    Ok((header, response.payload))
}

#[cfg(test)]
mod tests {
    use super::Progress;

    #[test]
    fn a_node_that_trained_along_is_not_behind_a_newcomer_carried_forward_by_merges() {
        let lag = 8;
        let newcomer = Progress {
            start_round: 0,
            trained_rounds: 3,
        };
        // The leaders trained 60 rounds and are at 62: the newcomer is far behind them.
        assert!(newcomer.is_far_behind(62, lag));
        let leader = Progress {
            start_round: 0,
            trained_rounds: 60,
        };
        // The newcomer announces 65 after adopting 62, or 78 after idle rounds: no reason
        // for a leader that trained all along to adopt its state.
        assert!(!leader.is_far_behind(65, lag));
        assert!(!leader.is_far_behind(78, lag));
        // Nor for a node that has trained more rounds than the lag, however far ahead.
        let started = Progress {
            start_round: 0,
            trained_rounds: 9,
        };
        assert!(!started.is_far_behind(500, lag));
        // The boundary: `lag` rounds trained still counts as joining.
        let at_lag = Progress {
            start_round: 0,
            trained_rounds: lag,
        };
        assert!(at_lag.is_far_behind(2 * lag + 1, lag));
        assert!(!at_lag.is_far_behind(2 * lag, lag));
        // No overflow near the top of the range.
        let late = Progress {
            start_round: u64::MAX - 1,
            trained_rounds: 1,
        };
        assert!(!late.is_far_behind(u64::MAX, lag));
        // A restart from a checkpoint counts from the checkpoint's round.
        let restarted = Progress {
            start_round: 40,
            trained_rounds: 0,
        };
        assert!(!restarted.is_far_behind(48, lag));
        assert!(restarted.is_far_behind(49, lag));
    }
}

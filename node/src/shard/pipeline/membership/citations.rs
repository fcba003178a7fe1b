//! Signed capacity citations: a plan notice carries, for every peer it plans with except its
//! issuer, that peer's own signed announcement giving the capacity the planner was told. A
//! member accepts the notice only if each planned capacity is one its peer signed for this
//! run and model, so an issuer can choose among what its peers said, never put words in
//! their mouths (say a rival has no memory, or a stranger has the fastest GPU). The issuer's
//! own capacity is its claim in the notice it sends, as self-declared as any announcement.

use libp2p::PeerId;
use murmur_protocol::envelope::MAX_ENVELOPE_BYTES;
use murmur_protocol::{Announcement, Message, ModelFingerprint, PeerKey, RunId, SignedEnvelope};

use super::super::PipelineError;
use super::super::notice::PlanNotice;
use crate::net::{PeerInfo, key_matches_peer};
use crate::shard::planner::{PeerCapacity, PlanInput};

/// A citation opened (its signature verified): the announcement's signer and body.
type Opened = (PeerKey, Announcement);

/// Opens `citation`: a signed announcement, or `None`.
fn open(citation: &[u8]) -> Option<Opened> {
    match SignedEnvelope::open_bytes(citation, MAX_ENVELOPE_BYTES) {
        Ok((signer, Message::Announcement(a))) => Some((signer, a)),
        _ => None,
    }
}

/// Whether the opened announcement is `capacity.id`'s, for `run` and `model`, of exactly
/// `capacity` (FLOP/s and memory, the numbers the planner reads).
fn says(
    (signer, a): &Opened,
    capacity: &PeerCapacity,
    run: &RunId,
    model: &ModelFingerprint,
) -> bool {
    capacity
        .id
        .parse::<PeerId>()
        .is_ok_and(|peer| key_matches_peer(signer, &peer))
        && a.peer == *signer
        && a.run == *run
        && a.model == *model
        && a.capacity.flops_per_sec.to_bits() == capacity.flops_per_sec.to_bits()
        && a.capacity.memory_bytes == capacity.memory_bytes
}

/// Whether `citation` is `capacity.id`'s signed announcement of exactly `capacity`.
fn cites(citation: &[u8], capacity: &PeerCapacity, run: &RunId, model: &ModelFingerprint) -> bool {
    open(citation).is_some_and(|opened| says(&opened, capacity, run, model))
}

/// Cites the capacity of every peer of `input` other than `issuer`, in the order of
/// `input.peers`: the first of `pool` (announcements the capacities were read from) that cites
/// it; failing that, the peer's latest announcement in `latest`, whose capacity then replaces
/// the planned one (a re-plan inherits capacities whose announcements it may not hold).
/// Errors, naming the peer, when neither has a signed announcement of it.
pub(crate) fn cite(
    input: &mut PlanInput,
    issuer: PeerId,
    (pool, latest): (&[&[u8]], &[PeerInfo]),
    (run, model): (&RunId, &ModelFingerprint),
) -> Result<Vec<Vec<u8>>, PipelineError> {
    let issuer = issuer.to_string();
    // Each signature is verified once, however many peers are planned.
    let opened: Vec<(Opened, &[u8])> = pool.iter().filter_map(|c| Some((open(c)?, *c))).collect();
    let mut citations = Vec::new();
    for planned in input.peers.iter_mut().filter(|p| p.id != issuer) {
        if let Some((_, c)) = opened.iter().find(|(o, _)| says(o, planned, run, model)) {
            citations.push(c.to_vec());
            continue;
        }
        let announced = latest
            .iter()
            .filter(|i| i.peer_id.to_string() == planned.id)
            .find_map(|i| Some((i.announcement.as_ref()?, i.announcement_envelope.as_ref()?)));
        let Some((a, envelope)) = announced else {
            return Err(PipelineError::Formation(format!(
                "no signed announcement of {} to cite for its capacity",
                planned.id
            )));
        };
        let refreshed = PeerCapacity {
            id: planned.id.clone(),
            flops_per_sec: a.capacity.flops_per_sec,
            memory_bytes: a.capacity.memory_bytes,
        };
        if !cites(envelope, &refreshed, run, model) {
            return Err(PipelineError::Formation(format!(
                "the announcement of {} is not of this run",
                planned.id
            )));
        }
        *planned = refreshed;
        citations.push(envelope.to_vec());
    }
    Ok(citations)
}

/// [`cite`] from the citations of an earlier notice (`previous`) and the announcements of
/// `latest` (the peer book): what re-plans, re-balances and the red team cite from.
pub(crate) fn cite_known(
    input: &mut PlanInput,
    issuer: PeerId,
    (previous, latest): (&[Vec<u8>], &[PeerInfo]),
    origin: (&RunId, &ModelFingerprint),
) -> Result<Vec<Vec<u8>>, PipelineError> {
    let pool: Vec<&[u8]> = previous
        .iter()
        .map(Vec::as_slice)
        .chain(
            latest
                .iter()
                .filter_map(|p| p.announcement_envelope.as_deref()),
        )
        .collect();
    cite(input, issuer, (&pool, latest), origin)
}

/// Errors unless every peer of `notice`'s input other than its sender `from` has a citation of
/// its planned capacity (and the notice carries no more citations than that).
pub(crate) fn check(
    notice: &PlanNotice,
    from: PeerId,
    (run, model): (&RunId, &ModelFingerprint),
) -> Result<(), PipelineError> {
    let from = from.to_string();
    let cited: Vec<&PeerCapacity> = notice.input.peers.iter().filter(|p| p.id != from).collect();
    if notice.citations.len() != cited.len() {
        return Err(PipelineError::Protocol(format!(
            "the plan cites {} announcements for {} peers",
            notice.citations.len(),
            cited.len()
        )));
    }
    for (peer, citation) in cited.into_iter().zip(&notice.citations) {
        if !cites(citation, peer, run, model) {
            return Err(PipelineError::Protocol(format!(
                "the plan's capacity of {} is not one it signed",
                peer.id
            )));
        }
    }
    Ok(())
}

//! Entry points for the fuzz targets in `node/fuzz/` (not part of the node's API): each feeds
//! bytes a peer controls to the decoder and checks the node runs on them, and asserts what
//! must hold of whatever they accept. A panic, a hang or an allocation beyond the decoder's
//! bound is a finding.

use std::sync::OnceLock;
use std::time::Duration;

use libp2p::PeerId;
use murmur_models::pipeline::{FlatAdamW, ShardState};
use murmur_protocol::{Digest, Message, ModelFingerprint, RunId};

use crate::averaging::Admission;
use crate::averaging::butterfly::wire;
use crate::session::state_ranges::StateAssembly;
use crate::shard::pipeline::membership::Rules;
use crate::shard::pipeline::notice::{PlanNotice, decode_notice, encode_notice};
use crate::shard::pipeline::{Placement, snapshots};
use crate::shard::planner::{PeerCapacity, PlanInput, PlanStage};

/// Applies `edits` to `base`: each 3-byte group is a little-endian position (modulo the
/// length) and a byte XORed into it. Mutating a valid encoding reaches the checks past the
/// decoder that random bytes rarely reach.
fn mutated(base: &[u8], edits: &[u8]) -> Vec<u8> {
    let mut out = base.to_vec();
    if out.is_empty() {
        return out;
    }
    for e in edits.chunks_exact(3) {
        let at = usize::from(u16::from_le_bytes([e[0], e[1]])) % out.len();
        out[at] ^= e[2];
    }
    out
}

/// The first byte chooses: even, the rest is taken as is; odd, it edits a valid encoding.
fn raw_or_mutated(data: &[u8], base: impl FnOnce() -> Vec<u8>) -> Vec<u8> {
    match data.split_first() {
        Some((mode, rest)) if mode % 2 == 1 => mutated(&base(), rest),
        Some((_, rest)) => rest.to_vec(),
        None => Vec::new(),
    }
}

fn peers(n: u8) -> Vec<PeerId> {
    (0..n)
        .map(|i| {
            let key = libp2p::identity::Keypair::ed25519_from_bytes([i + 1; 32])
                .unwrap_or_else(|_| libp2p::identity::Keypair::generate_ed25519());
            key.public().to_peer_id()
        })
        .collect()
}

/// The signed announcements of the capacities `notice` plans with, for its peers but `issuer`
/// (the peers of [`peers`], whose keys are known).
fn citations_of(notice: &PlanNotice, issuer: Option<PeerId>) -> Vec<Vec<u8>> {
    let issuer = issuer.map(|p| p.to_string());
    notice
        .input
        .peers
        .iter()
        .filter(|p| Some(&p.id) != issuer.as_ref())
        .filter_map(|p| {
            let seed = (1..=8u8)
                .find(|s| peers(*s).last().map(PeerId::to_string) == Some(p.id.clone()))?;
            let key = murmur_protocol::ed25519_dalek::SigningKey::from_bytes(&[seed; 32]);
            let announcement = murmur_protocol::Announcement {
                peer: murmur_protocol::envelope::peer_key(&key),
                run: RunId([0; 32]),
                model: ModelFingerprint([0; 32]),
                capacity: murmur_protocol::Capacity {
                    samples_per_sec: 1.0,
                    flops_per_sec: p.flops_per_sec,
                    memory_bytes: p.memory_bytes,
                    device: "fuzz".into(),
                    links: Vec::new(),
                },
                round: 0,
                listen_addrs: Vec::new(),
                timestamp_ms: 0,
            };
            let message = Message::Announcement(announcement);
            murmur_protocol::SignedEnvelope::sign(&key, &message)
                .ok()
                .map(|e| e.to_bytes())
        })
        .collect()
}

fn reference_notice() -> &'static (Vec<u8>, Vec<PeerId>) {
    static NOTICE: OnceLock<(Vec<u8>, Vec<PeerId>)> = OnceLock::new();
    NOTICE.get_or_init(|| {
        let members = peers(3);
        let stages = (0..6)
            .map(|i| PlanStage {
                flops_per_sample: 1e6 * f64::from(i + 1),
                activation_bytes_per_sample: 256,
                param_bytes: 4096,
            })
            .collect();
        let capacities = members
            .iter()
            .zip([1e9, 2e9, 3e9])
            .map(|(p, f)| PeerCapacity {
                id: p.to_string(),
                flops_per_sec: f,
                memory_bytes: 1 << 30,
            })
            .collect();
        let input = PlanInput::new(stages, capacities);
        let issuer = members.iter().min_by_key(|p| p.to_string()).copied();
        let bytes = PlanNotice::compute(1, Placement::CapacityAware, &members, input, 1)
            .map(|mut n| {
                n.citations = citations_of(&n, issuer);
                n
            })
            .and_then(|n| encode_notice(&n))
            .unwrap_or_default();
        (bytes, members)
    })
}

/// A plan notice as a member receives it: decoded, re-encoded bit-exact, then checked as
/// membership checks it (the rules take the notice's own stages and chain count, so checks
/// past those are reached), from the lowest member to the first.
pub fn plan_notice(data: &[u8]) -> bool {
    let (reference, members) = reference_notice();
    let bytes = raw_or_mutated(data, || reference.clone());
    let Ok(notice) = decode_notice(&bytes) else {
        return false;
    };
    assert_eq!(encode_notice(&notice).ok().as_deref(), Some(&bytes[..]));
    let rules = Rules {
        run: RunId([0; 32]),
        model: ModelFingerprint([0; 32]),
        members: notice.members.len(),
        replicas: notice.replicas,
        placement: notice.placement,
        form_timeout: Duration::from_secs(1),
        replans: true,
        stages: notice.input.stages.clone(),
        memory: notice.input.memory,
        admission: Admission::Open,
    };
    let from = notice
        .member_ids()
        .into_iter()
        .min_by_key(PeerId::to_string)
        .unwrap_or(members[0]);
    let me = notice.member_ids().first().copied().unwrap_or(members[1]);
    let Ok(accepted) = rules.check_notice(from, &bytes, me) else {
        return false;
    };
    assert!(accepted.is_member(&me));
    assert!(accepted.check_ids().is_ok());
    true
}

/// A pipeline snapshot as a member receives it for stages `start..end` (the first 8 bytes).
pub fn shard_snapshot(data: &[u8]) -> bool {
    let Some((range, rest)) = data.split_at_checked(8) else {
        return false;
    };
    let start = u32::from_le_bytes([range[0], range[1], range[2], range[3]]) % 64;
    let end = u32::from_le_bytes([range[4], range[5], range[6], range[7]]) % 64;
    let bytes = raw_or_mutated(rest, || {
        let n = 16;
        let state = ShardState {
            range: start as usize..end as usize,
            steps: 3,
            params: vec![0.5; n],
            optim: FlatAdamW {
                m: vec![0.1; n],
                v: vec![0.01; n],
                steps: 3,
            },
        };
        snapshots::encode(&state).unwrap_or_default()
    });
    let Ok(state) = snapshots::decode(&bytes, start, end) else {
        return false;
    };
    assert_eq!(state.range, start as usize..end as usize);
    assert!(state.params.iter().all(|v| v.is_finite()));
    true
}

/// A butterfly part: the header (a `Message`, length in the first two bytes) and its payload,
/// decoded against an anchor of the part's declared element count (bounded as a node bounds
/// it: by its own model).
pub fn butterfly_part(data: &[u8]) -> bool {
    let Some((len, rest)) = data.split_at_checked(2) else {
        return false;
    };
    let at = usize::from(u16::from_le_bytes([len[0], len[1]])).min(rest.len());
    let (header, payload) = rest.split_at(at);
    let Ok(Message::Part(part)) = Message::from_bytes(header) else {
        return false;
    };
    let elements = (part.body.element_count % (1 << 20)) as usize;
    let anchor = vec![0.25_f32; elements];
    let mut out = Vec::new();
    if wire::decode(&part, payload, &Digest::of(payload), &anchor, &mut out).is_err() {
        return false;
    }
    assert_eq!(out.len(), elements);
    assert!(out.iter().all(|v| v.is_finite()));
    true
}

/// A state download: the first two bytes give the model's size (parameters), then ranges,
/// each a header (a `Message`) and a payload, both with a two-byte length prefix.
pub fn state_ranges(data: &[u8]) -> bool {
    let Some((size, mut rest)) = data.split_at_checked(2) else {
        return false;
    };
    let params = usize::from(u16::from_le_bytes([size[0], size[1]])) % 4096;
    let mut assembly = StateAssembly::new(params, 1);
    while assembly.next_offset().is_some() {
        let Some((h, tail)) = take(rest) else { break };
        let Some((payload, tail)) = take(tail) else {
            break;
        };
        rest = tail;
        let Ok(Message::State(header)) = Message::from_bytes(h) else {
            return false;
        };
        if assembly.push(header, payload).is_err() {
            return false;
        }
    }
    let Ok((_, values)) = assembly.finish() else {
        return false;
    };
    assert_eq!(values.len(), params);
    assert!(values.iter().all(|v| v.is_finite()));
    true
}

/// Splits a two-byte length prefix and that many bytes off `data`.
fn take(data: &[u8]) -> Option<(&[u8], &[u8])> {
    let (len, rest) = data.split_at_checked(2)?;
    rest.split_at_checked(usize::from(u16::from_le_bytes([len[0], len[1]])))
}

/// A break report's payload as the member that re-plans receives it: the peer it blames,
/// bounded before it is parsed; what is accepted re-encodes to the same bytes. Odd first
/// byte: edits of a valid peer id's bytes.
pub fn break_report(data: &[u8]) -> bool {
    let bytes = raw_or_mutated(data, || peers(1)[0].to_bytes());
    match crate::shard::pipeline::notice::decode_blame(&bytes) {
        Ok(Some(peer)) => {
            assert_eq!(peer.to_bytes(), bytes);
            true
        }
        Ok(None) => {
            assert!(bytes.is_empty());
            true
        }
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use murmur_protocol::{Codec, DeltaHeader, PartHeader, PartPhase, PeerKey, StateHeader};

    fn framed(parts: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for p in parts {
            out.extend_from_slice(&(p.len() as u16).to_le_bytes());
            out.extend_from_slice(p);
        }
        out
    }

    /// Each entry point accepts a valid input (so a fuzz run reaches its checks past the
    /// decoders) and refuses a damaged one.
    #[test]
    fn valid_inputs_pass_and_damaged_ones_are_refused() {
        let (reference, _) = reference_notice();
        assert!(plan_notice(&[[1].as_slice(), &[]].concat()));
        assert!(plan_notice(&[[0].as_slice(), reference].concat()));
        assert!(!plan_notice(&[1, 28, 0, 0x01]));
        assert!(shard_snapshot(&[2, 0, 0, 0, 5, 0, 0, 0, 1]));
        assert!(!shard_snapshot(&[2, 0, 0, 0, 5, 0, 0, 0, 1, 0, 0, 0x80]));

        let values: Vec<u8> = [1.5_f32, -2.0, 0.25]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let state = StateHeader {
            peer: PeerKey([1; 32]),
            run: RunId([0; 32]),
            model: ModelFingerprint([0; 32]),
            round: 4,
            samples: 10,
            total_len: 12,
            total_digest: Digest::of(&values),
            offset: 0,
            range_len: 12,
        };
        let header = Message::State(state).to_bytes().unwrap_or_default();
        let download = [vec![3, 0], framed(&[&header, &values])].concat();
        assert!(state_ranges(&download));
        let mut damaged = download.clone();
        *damaged.last_mut().unwrap_or(&mut 0) ^= 1;
        assert!(!state_ranges(&damaged));

        let part = PartHeader {
            body: DeltaHeader {
                run: RunId([0; 32]),
                model: ModelFingerprint([0; 32]),
                peer: PeerKey([1; 32]),
                base_round: 1,
                local_steps: 1,
                samples: 1,
                weight: 1.0,
                codec: Codec::RawF32,
                element_count: 3,
                payload_len: 12,
                payload_digest: Digest::of(&values),
                timestamp_ms: 0,
            },
            phase: PartPhase::Contribution,
            offset: 0,
            total_elements: 3,
            members: 2,
        };
        let header = Message::Part(part).to_bytes().unwrap_or_default();
        let input = [(header.len() as u16).to_le_bytes().to_vec(), header, values].concat();
        assert!(butterfly_part(&input));
        assert!(!butterfly_part(&input[..input.len() - 1]));

        assert!(break_report(&[1]));
        assert!(break_report(&[0]));
        assert!(!break_report(&[0, 1, 2, 3]));
        assert!(!break_report(&[vec![0, 0, 0x20], vec![7; 64]].concat()));
    }
}

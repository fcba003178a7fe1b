//! Who the members of a pipeline are and what the planner is told about them: candidates from
//! signed announcements, a running pipeline's plan issuer, measured links, and the planner input
//! for a first plan or for re-balancing a running one.

use libp2p::PeerId;
use murmur_protocol::pipeline::PipeBody;

use super::PipelineConfig;
use super::notice::{PlanNotice, control_header};
use crate::net::{Network, PayloadKind, PeerInfo};
use crate::shard::capacity::Capacity;
use crate::shard::planner::{Link, LinkSpec, MemoryModel, PeerCapacity, PlanInput, PlanStage};

/// Link assumed between members with no measured throughput: a 1 Gbit/s LAN, 1 ms round trip.
pub(super) const DEFAULT_LINK: LinkSpec = LinkSpec {
    bytes_per_sec: 125e6,
    rtt_secs: 0.001,
};

/// The plan epoch a member announces once its part of the run is over (done, failed or left
/// out): it is no longer a candidate for a plan, a re-plan or a plan issuer.
pub(crate) const FINISHED_EPOCH: u64 = u64::MAX;

/// Whether `peer`'s latest announcement says its part of the run is over.
pub(super) fn has_finished(peer: &PeerInfo) -> bool {
    peer.announcement
        .as_ref()
        .is_some_and(|a| a.round == FINISHED_EPOCH)
}

/// Connected peers announcing this run with no plan epoch: forming, or restarted (after a
/// crash, with the same identity) and holding neither the running plan nor snapshots.
pub(super) fn restarted_members(peers: &[PeerInfo], config: &PipelineConfig) -> Vec<String> {
    peers
        .iter()
        .filter(|p| p.connected)
        .filter(|p| {
            p.announcement
                .as_ref()
                .is_some_and(|a| a.run == config.run && a.round == 0)
        })
        .map(|p| p.peer_id.to_string())
        .collect()
}

/// The lowest-id member of a pipeline of this run that is already running (announcing a plan
/// epoch), if any.
pub(super) fn running_leader(peers: &[PeerInfo], config: &PipelineConfig) -> Option<PeerId> {
    peers
        .iter()
        .filter(|p| p.connected)
        .filter(|p| {
            p.announcement.as_ref().is_some_and(|a| {
                a.run == config.run
                    && a.model == config.model
                    && a.round > 0
                    && a.round != FINISHED_EPOCH
            })
        })
        .map(|p| p.peer_id)
        .min_by_key(|p| p.to_string())
}

/// The planner input for re-balancing a running pipeline: the members of `previous` still
/// connected plus newcomers announcing this run, each with its latest announced capacity (this
/// node's from `own`), and the previous links among them.
pub(crate) fn rebalance_input(
    config: &PipelineConfig,
    previous: &PlanNotice,
    peers: &[PeerInfo],
    me: PeerId,
    own: Capacity,
) -> (Vec<String>, PlanInput) {
    let mut members = candidates(peers, config);
    members.retain(|(p, _)| {
        let id = p.to_string();
        // Keep members still connected; newcomers must be connected to be planned in.
        peers.iter().any(|i| i.peer_id == *p && i.connected) || previous.members.contains(&id)
    });
    members.retain(|(p, _)| *p != me);
    members.push((me, own));
    members.sort_by_key(|(p, _)| p.to_string());
    let ids: Vec<String> = members.iter().map(|(p, _)| p.to_string()).collect();
    let mut input = previous.input.clone();
    input.peers = members
        .iter()
        .map(|(p, c)| PeerCapacity {
            id: p.to_string(),
            flops_per_sec: c.flops_per_sec,
            memory_bytes: c.memory_bytes,
        })
        .collect();
    input
        .links
        .retain(|l| ids.contains(&l.from) && ids.contains(&l.to));
    (ids, input)
}

/// How recent an announcement of a member that is not connected must be, milliseconds.
const RECENT_MS: u64 = 10_000;

/// Connected or recently announced peers announcing this run and model with a measured capacity.
pub(super) fn candidates(peers: &[PeerInfo], config: &PipelineConfig) -> Vec<(PeerId, Capacity)> {
    // Announcements reach every member through the gossip mesh; a member not (yet) connected
    // directly is dialled when the plan is sent, so a recent announcement is enough.
    let now = crate::net::now_ms();
    peers
        .iter()
        .filter(|p| p.connected || now.saturating_sub(p.last_seen_ms) < RECENT_MS)
        .filter_map(|p| {
            let a = p.announcement.as_ref()?;
            let usable = a.run == config.run
                && a.model == config.model
                && a.round != FINISHED_EPOCH
                && a.capacity.flops_per_sec.is_finite()
                && a.capacity.flops_per_sec > 0.0
                && a.capacity.memory_bytes > 0;
            usable.then(|| {
                let capacity = Capacity {
                    flops_per_sec: a.capacity.flops_per_sec,
                    samples_per_sec: f64::from(a.capacity.samples_per_sec),
                    memory_bytes: a.capacity.memory_bytes,
                };
                (p.peer_id, capacity)
            })
        })
        .collect()
}

/// Measures the link from this node to each other member the way pipeline messages use it:
/// the round trip is the fastest of three small pushes (stream open, frame, acknowledgement),
/// the throughput comes from one 1 MiB push. Members that cannot be reached get no link (the
/// planner then assumes [`DEFAULT_LINK`]).
pub(super) async fn probe_links(
    net: &Network,
    config: &PipelineConfig,
    members: &[(PeerId, Capacity)],
) -> Vec<Link> {
    const SMALL: usize = 1024;
    const LARGE: usize = 1 << 20;
    let me = net.local_peer_id();
    let Ok(header) = control_header(config, 0, 0, PipeBody::Probe) else {
        return Vec::new();
    };
    let push = |peer: PeerId, len: usize| {
        let header = header.clone();
        async move {
            net.send_payload(peer, PayloadKind::Control, &header, &vec![0u8; len])
                .await
                .map(|stats| stats.elapsed.as_secs_f64())
        }
    };
    let mut links = Vec::new();
    for (peer, _) in members.iter().filter(|(p, _)| *p != me) {
        let mut rtt = f64::INFINITY;
        for _ in 0..3 {
            if let Ok(secs) = push(*peer, SMALL).await {
                rtt = rtt.min(secs);
            }
        }
        let Ok(large) = push(*peer, LARGE).await else {
            continue;
        };
        if !rtt.is_finite() {
            continue;
        }
        links.push(Link {
            from: me.to_string(),
            to: peer.to_string(),
            spec: LinkSpec {
                bytes_per_sec: LARGE as f64 / (large - rtt).max(1e-6),
                rtt_secs: rtt,
            },
        });
    }
    links
}

/// The planner's input: the model's stage costs, the members' capacities, and the links the
/// leader measured to each member.
pub(super) fn plan_input(
    config: &PipelineConfig,
    members: &[(PeerId, Capacity)],
    links: Vec<Link>,
) -> PlanInput {
    let stages = plan_stages(config);
    let capacities = members
        .iter()
        .map(|(peer, c)| PeerCapacity {
            id: peer.to_string(),
            flops_per_sec: c.flops_per_sec,
            memory_bytes: c.memory_bytes,
        })
        .collect();
    PlanInput {
        links,
        default_link: DEFAULT_LINK,
        memory: MemoryModel {
            state_multiplier: 4,
            micro_batch_samples: config.micro_samples().max(1) as u64,
            in_flight_micro_batches: u64::from(config.micro_batches.max(1)),
        },
        ..PlanInput::new(stages, capacities)
    }
}

/// The run's model stages as the planner sees them.
pub(super) fn plan_stages(config: &PipelineConfig) -> Vec<PlanStage> {
    config
        .spec
        .stage_costs()
        .iter()
        .map(|c| PlanStage {
            flops_per_sample: c.flops_per_sample as f64,
            activation_bytes_per_sample: c.activation_bytes_per_sample,
            param_bytes: c.param_bytes,
        })
        .collect()
}

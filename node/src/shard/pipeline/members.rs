//! The I/O side of membership: measuring the links to the members before a first plan, and
//! the planner input for re-balancing a running pipeline from the peer book.

use libp2p::PeerId;
use murmur_protocol::RunId;
use murmur_protocol::pipeline::PipeBody;

use super::membership::Rules;
use super::notice::{PlanNotice, control_header};
use crate::errors::chain;
use crate::net::{Network, PayloadKind, PeerInfo};
use crate::shard::capacity::Capacity;
use crate::shard::planner::{Link, LinkSpec, PeerCapacity, PlanInput};

/// Longest one link probe push may take, so a stuck member does not hold the plan back.
const PROBE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(5);

/// The planner input for re-balancing a running pipeline: the members `previous` planned in
/// that are still connected plus newcomers announcing this run, each with its latest announced
/// capacity (this node's from `own`), and the previous links among them. Members `previous`
/// left out are not candidates: they stopped when it was agreed, though their last
/// announcement can outlive them by a few seconds (or never say that they finished).
/// `wall_ms` is the wall clock now (the clock of announcements). Members `excluded` broke the
/// protocol (see `membership::blame`): never candidates.
pub(crate) fn rebalance_input(
    rules: &Rules,
    (previous, excluded): (&PlanNotice, &[PeerId]),
    (peers, wall_ms): (&[PeerInfo], u64),
    me: PeerId,
    own: Capacity,
) -> (Vec<PeerId>, PlanInput) {
    let mut members = rules.candidates(peers, wall_ms);
    members.retain(|(p, _)| {
        if excluded.contains(p) {
            return false;
        }
        if previous.is_member(p) {
            return previous.is_planned(p);
        }
        // Newcomers must be connected to be planned in.
        peers.iter().any(|i| i.peer_id == *p && i.connected)
    });
    members.retain(|(p, _)| *p != me);
    members.push((me, own));
    members.sort_by_key(|(p, _)| p.to_string());
    let ids: Vec<String> = members.iter().map(|(p, _)| p.to_string()).collect();
    let peer_ids = members.iter().map(|(p, _)| *p).collect();
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
    (peer_ids, input)
}

/// Measures the link from this node to each other member the way pipeline messages use it:
/// the round trip is the fastest of three small pushes (stream open, frame, acknowledgement),
/// the throughput comes from one 1 MiB push. Members that cannot be reached, or whose small push
/// takes longer than [`PROBE_DEADLINE`], get no link (the planner then assumes the default
/// link of `membership::rules`); a large push past the deadline gives the throughput bound
/// it implies. Members are probed at once, so the probes take at most four deadlines however
/// many members there are, and one stuck member delays the plan by one deadline.
pub(super) async fn probe_links(net: &Network, run: RunId, members: &[PeerId]) -> Vec<Link> {
    const SMALL: usize = 1024;
    const LARGE: usize = 1 << 20;
    let me = net.local_peer_id();
    let Ok(header) = control_header(run, 0, 0, PipeBody::Probe) else {
        return Vec::new();
    };
    let push = |peer: PeerId, len: usize| {
        let header = header.clone();
        async move {
            let filler = vec![0u8; len];
            let sent = net.send_payload(peer, PayloadKind::Control, &header, &filler);
            match tokio::time::timeout(PROBE_DEADLINE, sent).await {
                Ok(Ok(stats)) => Some(stats.elapsed.as_secs_f64()),
                Ok(Err(err)) => {
                    tracing::debug!(%peer, err = %chain(&err), "link probe failed");
                    None
                }
                Err(_) => {
                    tracing::debug!(%peer, "link probe timed out");
                    None
                }
            }
        }
    };
    let probe = |peer: PeerId| async move {
        let mut rtt = f64::INFINITY;
        for _ in 0..3 {
            rtt = rtt.min(push(peer, SMALL).await?);
        }
        // A member that answers small pushes but not a large one in time is a slow link: it
        // gets the throughput bound the deadline implies rather than the LAN default.
        let large = push(peer, LARGE)
            .await
            .unwrap_or(rtt + PROBE_DEADLINE.as_secs_f64());
        Some(Link {
            from: me.to_string(),
            to: peer.to_string(),
            spec: LinkSpec {
                bytes_per_sec: LARGE as f64 / (large - rtt).max(1e-6),
                rtt_secs: rtt,
            },
        })
    };
    let probes = members.iter().filter(|p| **p != me).map(|p| probe(*p));
    futures::future::join_all(probes)
        .await
        .into_iter()
        .flatten()
        .collect()
}

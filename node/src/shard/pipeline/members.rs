//! The I/O side of membership: measuring the links to the members before a first plan, and
//! the planner input for re-balancing a running pipeline from the peer book.

use libp2p::PeerId;
use murmur_protocol::RunId;
use murmur_protocol::pipeline::PipeBody;

use super::membership::Rules;
use super::notice::{PlanNotice, control_header};
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
pub(crate) fn rebalance_input(
    rules: &Rules,
    previous: &PlanNotice,
    peers: &[PeerInfo],
    me: PeerId,
    own: Capacity,
) -> (Vec<PeerId>, PlanInput) {
    let mut members = rules.candidates(peers, crate::net::now_ms());
    members.retain(|(p, _)| {
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
/// takes longer than [`PROBE_DEADLINE`], get no link (the planner then assumes
/// the default link of `membership::rules`); a large push past the deadline gives the throughput bound it implies. One
/// stuck member delays the plan by one deadline, not by four transfer deadlines.
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
                    tracing::debug!(%peer, %err, "link probe failed");
                    None
                }
                Err(_) => {
                    tracing::debug!(%peer, "link probe timed out");
                    None
                }
            }
        }
    };
    let mut links = Vec::new();
    'members: for peer in members.iter().filter(|p| **p != me) {
        let mut rtt = f64::INFINITY;
        for _ in 0..3 {
            match push(*peer, SMALL).await {
                Some(secs) => rtt = rtt.min(secs),
                None => continue 'members,
            }
        }
        // A member that answers small pushes but not a large one in time is a slow link: it
        // gets the throughput bound the deadline implies rather than the LAN default.
        let large = push(*peer, LARGE)
            .await
            .unwrap_or(rtt + PROBE_DEADLINE.as_secs_f64());
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use murmur_models::{ModelKind, builtin_data, spec_for};
    use murmur_protocol::{Announcement, ModelFingerprint, PeerKey, RunId};

    use super::*;
    use crate::shard::pipeline::{PipelineConfig, Placement};

    fn config() -> PipelineConfig {
        let data = builtin_data(ModelKind::CharGpt).expect("embedded corpus");
        PipelineConfig {
            run: RunId::from_name("members-test"),
            spec: spec_for(ModelKind::CharGpt, data.train.shape()).expect("spec"),
            model: ModelFingerprint([3; 32]),
            train: murmur_models::TrainConfig::default(),
            micro_batches: 4,
            steps: 10,
            members: 3,
            placement: Placement::CapacityAware,
            slowdown: 1.0,
            device: murmur_models::Device::flex(),
            device_name: "flex".into(),
            data: data.train,
            peer_deadline: Duration::from_secs(20),
            form_timeout: Duration::from_secs(30),
            capacity_budget: Duration::from_millis(50),
            replicate_every: 2,
            replicas: 1,
            average_every: 0,
        }
    }

    fn capacity(flops_per_sec: f64) -> Capacity {
        Capacity {
            flops_per_sec,
            samples_per_sec: flops_per_sec / 1e8,
            memory_bytes: 1 << 32,
        }
    }

    /// A fixed peer id for `seed`.
    fn peer(seed: u8) -> PeerId {
        libp2p::identity::Keypair::ed25519_from_bytes([seed; 32])
            .expect("a valid ed25519 secret")
            .public()
            .to_peer_id()
    }

    /// Peer `seed` announcing `config`'s run at `round` with `flops`, seen just now.
    fn announcing(
        config: &PipelineConfig,
        seed: u8,
        connected: bool,
        round: u64,
        flops: f64,
    ) -> PeerInfo {
        let c = capacity(flops);
        PeerInfo {
            peer_id: peer(seed),
            addrs: Vec::new(),
            connected,
            announcement: Some(Announcement {
                peer: PeerKey([0; 32]),
                run: config.run,
                model: config.model,
                capacity: murmur_protocol::Capacity {
                    samples_per_sec: c.samples_per_sec as f32,
                    flops_per_sec: c.flops_per_sec,
                    memory_bytes: c.memory_bytes,
                    device: "flex".into(),
                    links: Vec::new(),
                },
                round,
                listen_addrs: Vec::new(),
                timestamp_ms: crate::net::now_ms(),
            }),
            rtt: None,
            throughput_bps: None,
            misbehaviour: 0,
            last_seen_ms: crate::net::now_ms(),
        }
    }

    /// A member the plan left out stops at once, but its last announcement (of a capacity, not
    /// of being finished) stays recent for seconds: re-balancing must not plan it back in, or
    /// the new plan is sent to a node that is gone.
    #[test]
    fn members_the_plan_left_out_are_not_rebalanced_back_in() {
        let config = config();
        let me = peer(1);
        let fast = announcing(&config, 2, true, 1, 2e10);
        // Far too slow to be worth a shard: the lean plan leaves it out.
        let slow = announcing(&config, 3, true, 1, 1e8);
        let mut members = vec![
            (me, capacity(2e10)),
            (fast.peer_id, capacity(2e10)),
            (slow.peer_id, capacity(1e8)),
        ];
        members.sort_by_key(|(p, _)| p.to_string());
        let ids: Vec<PeerId> = members.iter().map(|(p, _)| *p).collect();
        let input = Rules::of(&config).plan_input(&members, Vec::new());
        let previous = PlanNotice::compute(1, Placement::CapacityAware, &ids, input, 1)
            .expect("a plan for two fast peers and a slow one");
        assert!(!previous.is_planned(&slow.peer_id));
        assert!(previous.is_planned(&fast.peer_id));

        let newcomer = announcing(&config, 4, true, 0, 1e10);
        // A newcomer must be connected to be planned in.
        let unconnected = announcing(&config, 5, false, 0, 1e10);
        let peers = vec![fast.clone(), slow.clone(), newcomer.clone(), unconnected];
        let rules = Rules::of(&config);
        let (ids, input) = rebalance_input(&rules, &previous, &peers, me, capacity(2e10));
        let mut expected: Vec<String> = [me, fast.peer_id, newcomer.peer_id]
            .iter()
            .map(PeerId::to_string)
            .collect();
        expected.sort();
        assert_eq!(
            ids.iter().map(PeerId::to_string).collect::<Vec<_>>(),
            expected
        );
        let planned: Vec<&str> = input.peers.iter().map(|p| p.id.as_str()).collect();
        assert_eq!(
            planned,
            expected.iter().map(String::as_str).collect::<Vec<_>>()
        );
    }
}

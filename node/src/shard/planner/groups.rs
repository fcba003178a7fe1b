//! Replica groups: data-parallel copies of the pipeline.
//!
//! With `R` replicas, the peers are grouped `R` at a time and the planner places stages on the
//! *groups*: every member of a group holds the same range, and member `c` of each group forms
//! chain `c`, so `R` chains train the same model on different data and the holders of a range
//! keep their copies in agreement by gossip averaging. A chain runs at the pace of its slowest
//! peer at each position, so peers are grouped with peers of similar speed: sorted by capacity
//! (fastest first, ties by id), consecutive runs of `R` form a group, and the slowest
//! `n mod R` peers are left out. A group counts as one planner peer with its slowest member's
//! compute, its smallest memory, and, towards another group, the worst link between their
//! members; the plan's throughput is then that of every chain, and the run's is `R` times it.
//!
//! Deterministic like the planner: every peer derives the same groups from the same input.
//! With one replica the input is left exactly as it is.

use super::{Link, LinkSpec, PeerCapacity, PlanError, PlanInput};

/// Peers grouped for `R` replicas, and the planner input over the groups.
#[derive(Debug, Clone, PartialEq)]
pub struct Grouped {
    /// Input whose peers are the groups (each named by its fastest member's id).
    pub input: PlanInput,
    /// The members of each group, fastest first; `members[g][c]` is in chain `c`.
    pub members: Vec<Vec<String>>,
}

impl Grouped {
    /// The members of the group named `id` (its fastest member's id).
    pub fn group(&self, id: &str) -> Option<&[String]> {
        self.members
            .iter()
            .find(|g| g.first().is_some_and(|first| first == id))
            .map(Vec::as_slice)
    }
}

/// Groups the peers of `input` for `replicas` chains (at least 1; fewer when there are fewer
/// peers than replicas).
pub fn group_peers(input: &PlanInput, replicas: usize) -> Result<Grouped, PlanError> {
    if input.peers.is_empty() {
        return Err(PlanError::NoPeers);
    }
    let r = replicas.clamp(1, input.peers.len());
    if r == 1 {
        // One chain: every peer is its own group and the input is the planner's as given
        // (directed links, chain order).
        return Ok(Grouped {
            input: input.clone(),
            members: input.peers.iter().map(|p| vec![p.id.clone()]).collect(),
        });
    }
    let mut peers: Vec<&PeerCapacity> = input.peers.iter().collect();
    peers.sort_by(|a, b| {
        b.flops_per_sec
            .total_cmp(&a.flops_per_sec)
            .then_with(|| a.id.cmp(&b.id))
    });
    let members: Vec<Vec<String>> = peers
        .chunks_exact(r)
        .map(|g| g.iter().map(|p| p.id.clone()).collect())
        .collect();
    let capacities = peers
        .chunks_exact(r)
        .map(|g| PeerCapacity {
            id: g[0].id.clone(),
            flops_per_sec: g
                .iter()
                .map(|p| p.flops_per_sec)
                .fold(f64::INFINITY, f64::min),
            memory_bytes: g.iter().map(|p| p.memory_bytes).min().unwrap_or(0),
        })
        .collect();
    let links = group_links(input, &members);
    Ok(Grouped {
        input: PlanInput {
            peers: capacities,
            links,
            ..input.clone()
        },
        members,
    })
}

/// The worst measured link from each group to each other (lowest bandwidth, highest round
/// trip over the member pairs with a measurement in either direction); pairs of groups with
/// no measurement at all keep the input's default link.
fn group_links(input: &PlanInput, members: &[Vec<String>]) -> Vec<Link> {
    let measured = |from: &str, to: &str| -> Option<LinkSpec> {
        let mut found: Option<LinkSpec> = None;
        for link in &input.links {
            let forward = link.from == from && link.to == to;
            let backward = link.from == to && link.to == from;
            if forward || backward {
                found = Some(match found {
                    None => link.spec,
                    Some(worst) => LinkSpec {
                        bytes_per_sec: worst.bytes_per_sec.min(link.spec.bytes_per_sec),
                        rtt_secs: worst.rtt_secs.max(link.spec.rtt_secs),
                    },
                });
            }
        }
        found
    };
    let mut links = Vec::new();
    for (i, a) in members.iter().enumerate() {
        for b in members
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, b)| b)
        {
            let specs: Vec<LinkSpec> = a
                .iter()
                .flat_map(|x| b.iter().filter_map(move |y| measured(x, y)))
                .collect();
            let Some(first) = specs.first().copied() else {
                continue;
            };
            let worst = specs.iter().fold(first, |w, s| LinkSpec {
                bytes_per_sec: w.bytes_per_sec.min(s.bytes_per_sec),
                rtt_secs: w.rtt_secs.max(s.rtt_secs),
            });
            links.push(Link {
                from: a[0].clone(),
                to: b[0].clone(),
                spec: worst,
            });
        }
    }
    links
}

#[cfg(test)]
mod tests {
    use super::super::tests::stage;
    use super::super::{ChainOrder, plan};
    use super::*;

    fn peer(id: &str, flops: f64) -> PeerCapacity {
        PeerCapacity {
            id: id.into(),
            flops_per_sec: flops,
            memory_bytes: 1 << 40,
        }
    }

    fn input(peers: Vec<PeerCapacity>) -> PlanInput {
        let stages = (0..8).map(|_| stage(1e6, 1000, 1000)).collect();
        PlanInput::new(stages, peers)
    }

    #[test]
    fn peers_of_similar_speed_share_a_group_and_the_slowest_leftover_is_dropped() {
        let peers = vec![
            peer("a", 1e9),
            peer("b", 4e9),
            peer("c", 1.1e9),
            peer("d", 3.9e9),
            peer("e", 0.5e9),
        ];
        let grouped = group_peers(&input(peers), 2).unwrap();
        assert_eq!(grouped.members, vec![vec!["b", "d"], vec!["c", "a"]]);
        let speeds: Vec<f64> = grouped
            .input
            .peers
            .iter()
            .map(|p| p.flops_per_sec)
            .collect();
        assert_eq!(speeds, vec![3.9e9, 1e9]);
        assert_eq!(grouped.group("c"), Some(&["c".to_string(), "a".into()][..]));
        assert_eq!(grouped.group("a"), None);
    }

    #[test]
    fn one_replica_is_the_plain_plan_and_groups_never_outnumber_peers() {
        let peers = vec![peer("a", 1e9), peer("b", 2e9), peer("c", 4e9)];
        let grouped = group_peers(&input(peers.clone()), 1).unwrap();
        assert_eq!(grouped.input, input(peers.clone()));
        assert_eq!(
            plan(&grouped.input).unwrap(),
            plan(&input(peers.clone())).unwrap()
        );
        let all = group_peers(&input(peers), 9).unwrap();
        assert_eq!(all.members.len(), 1);
        assert_eq!(all.members[0].len(), 3);
        assert!(matches!(
            group_peers(&input(Vec::new()), 2),
            Err(PlanError::NoPeers)
        ));
    }

    #[test]
    fn the_worst_member_link_is_the_groups_link() {
        let mut i = input(vec![
            peer("a", 4e9),
            peer("b", 4e9),
            peer("c", 1e9),
            peer("d", 1e9),
        ]);
        i.order = ChainOrder::Given;
        let fast = LinkSpec {
            bytes_per_sec: 1e9,
            rtt_secs: 0.001,
        };
        let slow = LinkSpec {
            bytes_per_sec: 1e6,
            rtt_secs: 0.05,
        };
        i.links = vec![
            Link {
                from: "a".into(),
                to: "c".into(),
                spec: fast,
            },
            Link {
                from: "d".into(),
                to: "b".into(),
                spec: slow,
            },
        ];
        let grouped = group_peers(&i, 2).unwrap();
        let ab_to_cd = grouped
            .input
            .links
            .iter()
            .find(|l| l.from == "a" && l.to == "c")
            .unwrap();
        assert_eq!(ab_to_cd.spec, slow);
    }

    #[test]
    fn grouping_ignores_the_order_of_the_peers() {
        let peers = vec![
            peer("a", 1e9),
            peer("b", 2e9),
            peer("c", 2e9),
            peer("d", 3e9),
        ];
        let mut reversed = peers.clone();
        reversed.reverse();
        assert_eq!(
            group_peers(&input(peers), 2).unwrap().members,
            group_peers(&input(reversed), 2).unwrap().members
        );
    }
}

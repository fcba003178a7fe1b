//! The plan notice: the plan every member of an epoch runs, with the inputs it was computed
//! from; its bit-exact encoding; and sending it (with the snapshots newcomers need) to the
//! members. The checks a member applies before accepting one are membership's
//! (`membership::Rules::check_notice`).

use libp2p::PeerId;
use murmur_protocol::RunId;
use murmur_protocol::pipeline::{PIPE_VERSION, PipeBody, PipeHeader};
use serde::{Deserialize, Serialize};

use super::outbox::send_with_retries;
use super::snapshots::{self, Snapshots};
use super::{PipelineConfig, PipelineError, Placement};
use crate::errors::chain;
use crate::net::{Network, PayloadKind};
use crate::shard::planner::{Plan, PlanInput, even_split, group_peers, lean_plan};

/// Largest plan notice accepted, bytes.
pub const MAX_NOTICE_BYTES: usize = 4 << 20;

/// The plan every member runs, with what it was computed from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanNotice {
    /// Plan epoch (1 for the first plan of a run).
    pub epoch: u64,
    /// Placement policy used.
    pub placement: Placement,
    /// The members' peer ids.
    pub members: Vec<String>,
    /// The planner's inputs.
    pub input: PlanInput,
    /// The plan that runs.
    pub plan: Plan,
    /// The step training resumes from (0 at the start; after a re-plan, the latest step of
    /// which a snapshot of every range of the previous plan is held).
    pub resume_step: u64,
    /// The stage ranges of the previous plan, whose snapshots at `resume_step` every member
    /// builds its new range from (empty for the first plan).
    pub previous_ranges: Vec<std::ops::Range<usize>>,
    /// Data-parallel copies of the pipeline (chains); 1 for a single chain.
    pub replicas: u32,
    /// For each assignment of `plan`, the peers holding its range, one per chain (the
    /// assignment's `peer` first); see [`group_peers`].
    pub groups: Vec<Vec<String>>,
    /// For each peer of `input` other than the issuer, in that order, its signed announcement
    /// of the capacity `input` gives it (see `membership::citations`).
    pub citations: Vec<Vec<u8>>,
}

/// Where one peer sits in a plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seat {
    /// The assignment (position in the chain).
    pub index: usize,
    /// The chain (data-parallel replica) it belongs to.
    pub lane: usize,
}

impl PlanNotice {
    /// Computes the notice for `input` under `placement`, with `replicas` chains (the peers
    /// grouped by [`group_peers`]; one chain when `replicas` ≤ 1).
    pub fn compute(
        epoch: u64,
        placement: Placement,
        members: &[PeerId],
        input: PlanInput,
        replicas: u32,
    ) -> Result<Self, PipelineError> {
        let grouped = group_peers(&input, replicas.max(1) as usize)?;
        let plan = match placement {
            Placement::CapacityAware => lean_plan(&grouped.input)?,
            Placement::Even => even_split(&grouped.input)?,
        };
        let groups = plan
            .assignments
            .iter()
            .map(|a| {
                grouped
                    .group(&a.peer)
                    .map(<[String]>::to_vec)
                    .ok_or_else(|| {
                        PipelineError::Protocol(format!("no replica group named {:?}", a.peer))
                    })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            epoch,
            placement,
            members: members.iter().map(PeerId::to_string).collect(),
            input,
            plan,
            resume_step: 0,
            previous_ranges: Vec::new(),
            replicas: replicas.max(1),
            groups,
            citations: Vec::new(),
        })
    }

    /// The stage ranges of the plan, in order.
    pub fn ranges(&self) -> Vec<std::ops::Range<usize>> {
        self.plan.assignments.iter().map(|a| a.stages()).collect()
    }

    /// Whether the notice lists `peer` as a member.
    pub fn is_member(&self, peer: &PeerId) -> bool {
        let id = peer.to_string();
        self.members.contains(&id)
    }

    /// Whether the plan gives `peer` a range.
    pub fn is_planned(&self, peer: &PeerId) -> bool {
        self.seat(peer).is_some()
    }

    /// Where `peer` sits, if the plan uses it.
    pub fn seat(&self, peer: &PeerId) -> Option<Seat> {
        let id = peer.to_string();
        self.groups.iter().enumerate().find_map(|(index, group)| {
            let lane = group.iter().position(|m| *m == id)?;
            Some(Seat { index, lane })
        })
    }

    /// The listed members (every one parses: see [`Self::check_ids`]).
    pub fn member_ids(&self) -> Vec<PeerId> {
        self.members.iter().filter_map(|m| m.parse().ok()).collect()
    }

    /// Errors unless every member and every planned peer is a valid peer id, each listed once,
    /// and every planned peer is a member.
    pub fn check_ids(&self) -> Result<(), PipelineError> {
        let members = self
            .members
            .iter()
            .map(|m| parse_peer(m))
            .collect::<Result<Vec<_>, _>>()?;
        let unique: std::collections::HashSet<&PeerId> = members.iter().collect();
        if unique.len() != members.len() {
            return Err(PipelineError::Protocol("a member is listed twice".into()));
        }
        for peer in self.planned()? {
            if !unique.contains(&peer) {
                return Err(PipelineError::Protocol(format!(
                    "{peer} is planned but not a member"
                )));
            }
        }
        Ok(())
    }

    /// Number of chains the plan runs.
    pub fn lanes(&self) -> usize {
        self.groups.iter().map(Vec::len).min().unwrap_or(0)
    }

    /// The peers of chain `lane` in pipeline order.
    pub fn chain(&self, lane: usize) -> Result<Vec<PeerId>, PipelineError> {
        self.groups
            .iter()
            .map(|group| {
                group
                    .get(lane)
                    .ok_or_else(|| PipelineError::Protocol(format!("no chain {lane}")))
                    .and_then(|m| parse_peer(m))
            })
            .collect()
    }

    /// The holders of assignment `index`'s range, one per chain.
    pub fn group(&self, index: usize) -> Result<Vec<PeerId>, PipelineError> {
        self.groups
            .get(index)
            .map_or(&[][..], Vec::as_slice)
            .iter()
            .map(|m| parse_peer(m))
            .collect()
    }

    /// Every peer the plan uses.
    pub fn planned(&self) -> Result<Vec<PeerId>, PipelineError> {
        self.groups
            .iter()
            .flatten()
            .map(|m| parse_peer(m))
            .collect()
    }

    /// The members the plan uses, in member order (those it leaves out have stopped).
    pub fn planned_members(&self) -> Vec<PeerId> {
        self.member_ids()
            .into_iter()
            .filter(|m| self.is_planned(m))
            .collect()
    }

    /// The lowest peer id the plan uses (it watches for joins and drift).
    pub fn watcher(&self) -> Option<PeerId> {
        self.groups.iter().flatten().min()?.parse().ok()
    }

    /// An even split of the stages over the same groups, for comparison.
    pub fn even(&self) -> Result<Plan, PipelineError> {
        let grouped = group_peers(&self.input, self.replicas.max(1) as usize)?;
        Ok(even_split(&grouped.input)?)
    }
}

fn parse_peer(member: &str) -> Result<PeerId, PipelineError> {
    member
        .parse()
        .map_err(|_| PipelineError::Protocol(format!("bad peer id {member:?}")))
}

/// The encoded header of a control message (no micro-batch, no tensor).
pub(super) fn control_header(
    run: RunId,
    epoch: u64,
    step: u64,
    body: PipeBody,
) -> Result<Vec<u8>, PipelineError> {
    let header = PipeHeader {
        version: PIPE_VERSION,
        run,
        epoch,
        step,
        micro: 0,
        micros: 1,
        tensor: None,
        body,
    };
    Ok(header.to_bytes()?)
}

/// Sends `notice` to every member but this node. A member the plan leaves out may already
/// have gone (it stops once it sees it is not needed): failing to reach it is logged, not an
/// error. Failing to reach a peer of the chain is.
pub(super) async fn send_notice(
    net: &Network,
    config: &PipelineConfig,
    notice: &PlanNotice,
) -> Result<(), PipelineError> {
    let me = net.local_peer_id();
    let bytes = encode_notice(notice)?;
    let header = control_header(config.run, notice.epoch, 0, PipeBody::Plan)?;
    for member in notice.member_ids().into_iter().filter(|m| *m != me) {
        match send_control(net, config, member, &header, &bytes).await {
            Ok(()) => {}
            Err(err) if !notice.is_planned(&member) => {
                tracing::info!(%member, err = %chain(&err), "plan notice not delivered to a member left out of the plan");
            }
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

/// Tells `leader`, the lowest surviving member of the plan of `epoch`, that this node's chain
/// broke. With several chains the leader may sit in a healthy one that would never notice;
/// without the nudge the broken chain's survivors would wait for a plan that never comes.
pub(super) async fn report_broken(
    net: &Network,
    config: &PipelineConfig,
    (epoch, blame): (u64, Option<PeerId>),
    leader: PeerId,
) -> Result<(), PipelineError> {
    let header = control_header(config.run, epoch, 0, PipeBody::Broken)?;
    let payload = blame.map(|p| p.to_bytes()).unwrap_or_default();
    send_control(net, config, leader, &header, &payload).await
}

/// The member a break report's payload blames, if any (bounded before it is parsed).
pub fn decode_blame(payload: &[u8]) -> Result<Option<PeerId>, PipelineError> {
    if payload.is_empty() {
        return Ok(None);
    }
    if payload.len() > murmur_protocol::pipeline::MAX_BLAME_BYTES {
        return Err(PipelineError::Protocol(format!(
            "a break report blaming a peer id of {} bytes",
            payload.len()
        )));
    }
    PeerId::from_bytes(payload)
        .map(Some)
        .map_err(|_| PipelineError::Protocol("a break report blaming no valid peer id".into()))
}

/// Sends one control message to `peer` (retrying transient failures within the peer
/// deadline).
async fn send_control(
    net: &Network,
    config: &PipelineConfig,
    peer: PeerId,
    header: &[u8],
    payload: &[u8],
) -> Result<(), PipelineError> {
    let kind = PayloadKind::Control;
    send_with_retries(net, peer, kind, header, payload, config.peer_deadline).await
}

/// bincode (serde) with fixed-width little-endian numbers: floats travel bit-exact, so every
/// member re-computes the plan from exactly the leader's inputs.
fn notice_config() -> impl bincode::config::Config {
    bincode::config::standard()
        .with_little_endian()
        .with_fixed_int_encoding()
        .with_limit::<MAX_NOTICE_BYTES>()
}

/// Encodes a plan notice (the payload of a `Plan` control message).
pub fn encode_notice(notice: &PlanNotice) -> Result<Vec<u8>, PipelineError> {
    bincode::serde::encode_to_vec(notice, notice_config()).map_err(|source| PipelineError::Encode {
        what: "the plan",
        source,
    })
}

/// Decodes a plan notice; at most [`MAX_NOTICE_BYTES`], no trailing bytes.
pub fn decode_notice(bytes: &[u8]) -> Result<PlanNotice, PipelineError> {
    if bytes.len() > MAX_NOTICE_BYTES {
        return Err(PipelineError::Protocol("plan notice too large".into()));
    }
    let (notice, used) =
        bincode::serde::decode_from_slice(bytes, notice_config()).map_err(|source| {
            PipelineError::Decode {
                what: "plan notice",
                source,
            }
        })?;
    if used != bytes.len() {
        return Err(PipelineError::Protocol(
            "trailing bytes after the plan notice".into(),
        ));
    }
    Ok(notice)
}

/// Sends each member `notice` plans outside this node's chain of the `previous` plan (and
/// those of `also`) the snapshots (at the notice's resume step) of the ranges the notice is
/// built from (`previous_ranges`), which
/// it builds its new range from: members new to the pipeline hold none, and members of other
/// chains hold this chain's only if best-effort sends got through (or stand at another step);
/// `also` names members known to hold none (restarted ones). Nothing to send
/// when the notice starts from the initial model. A member that cannot take them is logged,
/// not an error: it is gone, and breaks the new plan in turn.
pub(crate) async fn send_parts_beyond_own_chain(
    net: &Network,
    config: &PipelineConfig,
    notice: &PlanNotice,
    previous: &PlanNotice,
    snapshots: &std::sync::Mutex<Snapshots>,
    also: &[PeerId],
) -> Result<(), PipelineError> {
    if notice.resume_step == 0 {
        return Ok(());
    }
    let me = net.local_peer_id();
    let own_chain: Vec<PeerId> = match previous.seat(&me) {
        Some(seat) => previous.chain(seat.lane)?,
        None => Vec::new(),
    };
    let old = &notice.previous_ranges;
    let mut states = Vec::with_capacity(old.len());
    for range in old {
        let parts = snapshots::lock(snapshots).parts(
            std::slice::from_ref(range),
            range,
            notice.resume_step,
        )?;
        for state in parts {
            let body = PipeBody::Snapshot {
                start: range.start as u32,
                end: range.end as u32,
            };
            let header = control_header(config.run, notice.epoch, notice.resume_step, body)?;
            states.push((header, state));
        }
    }
    // Snapshots can be large: encode them off the async runtime.
    let parts = tokio::task::spawn_blocking(move || {
        states
            .into_iter()
            .map(|(header, state)| Ok((header, snapshots::encode(&state)?)))
            .collect::<Result<Vec<_>, PipelineError>>()
    })
    .await??;
    let recipients = notice
        .planned_members()
        .into_iter()
        .filter(|m| *m != me)
        .filter(|m| !own_chain.contains(m) || also.contains(m));
    for member in recipients {
        for (header, bytes) in &parts {
            if let Err(err) = send_control(net, config, member, header, bytes).await {
                tracing::warn!(%member, err = %chain(&err), "snapshots for the new plan not delivered");
                break;
            }
        }
    }
    Ok(())
}

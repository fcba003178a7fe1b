//! The run's membership rules as pure functions of the peer book and the plan: who is a
//! candidate, who runs a pipeline already, who restarted, who survives a break and who
//! re-plans, what the planner is told, and which plan notices are accepted.

use std::ops::Range;
use std::time::Duration;

use libp2p::PeerId;
use murmur_protocol::{ModelFingerprint, RunId};

use super::super::notice::{PlanNotice, decode_notice};
use super::super::{PipelineConfig, PipelineError, Placement};
use super::citations;
use crate::averaging::Admission;
use crate::net::PeerInfo;
use crate::shard::capacity::Capacity;
use crate::shard::planner::{Link, LinkSpec, MemoryModel, PeerCapacity, PlanInput, PlanStage};

/// Link assumed between members with no measured throughput: a 1 Gbit/s LAN, 1 ms round trip.
pub(crate) const DEFAULT_LINK: LinkSpec = LinkSpec {
    bytes_per_sec: 125e6,
    rtt_secs: 0.001,
};

/// The plan epoch a member announces once its part of the run is over (done, failed or left
/// out): it is no longer a candidate for a plan, a re-plan or a plan issuer.
pub(crate) const FINISHED_EPOCH: u64 = u64::MAX;

/// Most members a plan notice may list (every chain's, so up to the planner's bound on
/// peers per chain position times a few chains).
pub(crate) const MAX_NOTICE_MEMBERS: usize = 1024;

/// How recent an announcement of a member that is not connected must be, milliseconds.
const RECENT_MS: u64 = 10_000;

/// Where a plan after the running one resumes: the ranges whose snapshots it is built from
/// and the step (see `super::super::form::resume_point`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ResumePoint {
    /// The ranges of the plan the snapshots were taken under.
    pub ranges: Vec<Range<usize>>,
    /// The step of the snapshots (0: the shared initial model).
    pub step: u64,
}

/// What membership needs of the run's configuration.
#[derive(Debug, Clone)]
pub(crate) struct Rules {
    /// The run.
    pub run: RunId,
    /// The model fingerprint members share.
    pub model: ModelFingerprint,
    /// Members the first plan waits for.
    pub members: usize,
    /// Chains (data-parallel replicas of the pipeline).
    pub replicas: u32,
    /// Capacity-aware or even placement.
    pub placement: Placement,
    /// Longest wait for the members and for a plan notice.
    pub form_timeout: Duration,
    /// Whether a broken plan is re-planned (snapshots are kept).
    pub replans: bool,
    /// The model's stages as the planner sees them.
    pub stages: Vec<PlanStage>,
    /// What the planner assumes of each stage's memory.
    pub memory: MemoryModel,
    /// Who may be planned in: anyone, or a closed pool's members.
    pub admission: Admission,
}

impl Rules {
    /// The rules of `config`'s run.
    pub(crate) fn of(config: &PipelineConfig) -> Self {
        let stages = config
            .spec
            .stage_costs()
            .iter()
            .map(|c| PlanStage {
                flops_per_sample: c.flops_per_sample as f64,
                activation_bytes_per_sample: c.activation_bytes_per_sample,
                param_bytes: c.param_bytes,
            })
            .collect();
        Self {
            run: config.run,
            model: config.model,
            members: config.members,
            replicas: config.replicas.max(1),
            placement: config.placement,
            form_timeout: config.form_timeout,
            replans: config.snapshot_every > 0,
            stages,
            admission: config.admission.clone(),
            memory: MemoryModel {
                state_multiplier: 4,
                micro_batch_samples: config.micro_samples().max(1) as u64,
                in_flight_micro_batches: u64::from(config.micro_batches.max(1)),
            },
        }
    }

    /// Connected or recently announced (`now_ms`) peers announcing this run and model with a
    /// measured capacity (in a closed pool, its members only). Announcements reach every member through the gossip mesh; a member
    /// not (yet) connected directly is dialled when the plan is sent.
    pub(crate) fn candidates(&self, peers: &[PeerInfo], now_ms: u64) -> Vec<(PeerId, Capacity)> {
        peers
            .iter()
            .filter(|p| p.connected || now_ms.saturating_sub(p.last_seen_ms) < RECENT_MS)
            .filter(|p| self.admission.admits_peer(&p.peer_id))
            .filter_map(|p| {
                let a = p.announcement.as_ref()?;
                let usable = a.run == self.run
                    && a.model == self.model
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

    /// The lowest-id member of a pipeline of this run that is already running (announcing a
    /// plan epoch), if any: connected, or announced recently (`now_ms`) like a candidate. A
    /// newcomer that has the announcement of a running member before a connection to one
    /// must not take the running members for candidates of a first plan of its own (it would
    /// issue one, and a re-plan of it reaches the running members as a later epoch).
    pub(crate) fn running_leader(&self, peers: &[PeerInfo], now_ms: u64) -> Option<PeerId> {
        peers
            .iter()
            .filter(|p| p.connected || now_ms.saturating_sub(p.last_seen_ms) < RECENT_MS)
            .filter(|p| {
                p.announcement.as_ref().is_some_and(|a| {
                    a.run == self.run
                        && a.model == self.model
                        && a.round > 0
                        && a.round != FINISHED_EPOCH
                })
            })
            .map(|p| p.peer_id)
            .min_by_key(PeerId::to_string)
    }

    /// Connected peers announcing this run with no plan epoch: forming, or restarted (after a
    /// crash, with the same identity) and holding neither the running plan nor snapshots.
    pub(crate) fn restarted(&self, peers: &[PeerInfo]) -> Vec<PeerId> {
        peers
            .iter()
            .filter(|p| p.connected)
            .filter(|p| {
                p.announcement
                    .as_ref()
                    .is_some_and(|a| a.run == self.run && a.round == 0)
            })
            .map(|p| p.peer_id)
            .collect()
    }

    /// After `previous` broke: the members it planned in that are still connected and not
    /// finished (this node always), sorted, and the one that re-plans — the lowest that still
    /// runs the old plan (a restarted one holds neither the notice nor snapshots).
    pub(crate) fn survivors(
        &self,
        previous: &PlanNotice,
        peers: &[PeerInfo],
        me: PeerId,
    ) -> Result<(Vec<PeerId>, PeerId), PipelineError> {
        let connected: Vec<PeerId> = peers
            .iter()
            .filter(|p| p.connected && !has_finished(p))
            .map(|p| p.peer_id)
            .collect();
        let restarted = self.restarted(peers);
        let mut survivors: Vec<PeerId> = previous
            .planned_members()
            .into_iter()
            .filter(|m| *m == me || connected.contains(m))
            .collect();
        sort_by_id(&mut survivors);
        let leader = *survivors
            .iter()
            .find(|s| !restarted.contains(s))
            .ok_or_else(|| PipelineError::Formation("no members left".into()))?;
        Ok((survivors, leader))
    }

    /// The planner's input: the model's stage costs, the members' capacities, and the links
    /// the issuer measured to each member.
    pub(crate) fn plan_input(&self, members: &[(PeerId, Capacity)], links: Vec<Link>) -> PlanInput {
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
            memory: self.memory,
            ..PlanInput::new(self.stages.clone(), capacities)
        }
    }

    /// Decodes and checks a plan notice `from` a member: it must be for this run's stages and
    /// chain count, list this node, come from the member entitled to issue it (the lowest
    /// member for a first plan, a listed member for later epochs), cite each other peer's
    /// signed announcement of the capacity it plans with, and be exactly the plan its own
    /// inputs give.
    pub(crate) fn check_notice(
        &self,
        from: PeerId,
        payload: &[u8],
        me: PeerId,
    ) -> Result<PlanNotice, PipelineError> {
        let notice = decode_notice(payload)?;
        // The plan's ranges index this node's model: its stages must be this run's.
        if notice.input.stages != self.stages {
            return Err(PipelineError::Protocol(
                "the plan is for other model stages".into(),
            ));
        }
        if notice.replicas != self.replicas {
            return Err(PipelineError::Protocol(format!(
                "the plan runs {} chains, this run {}",
                notice.replicas, self.replicas
            )));
        }
        if notice.members.len() > MAX_NOTICE_MEMBERS
            || notice.input.peers.len() > MAX_NOTICE_MEMBERS
        {
            return Err(PipelineError::Protocol(format!(
                "the plan lists more than {MAX_NOTICE_MEMBERS} members"
            )));
        }
        notice.check_ids()?;
        let allowed = if notice.epoch <= 1 {
            notice.members.iter().min() == Some(&from.to_string())
        } else {
            notice.is_member(&from)
        };
        if !allowed {
            return Err(PipelineError::Protocol(
                "the sender may not issue this plan".into(),
            ));
        }
        citations::check(&notice, from, (&self.run, &self.model))?;
        if !notice.is_member(&me) {
            return Err(PipelineError::Protocol(
                "this node is not a listed member".into(),
            ));
        }
        if !notice
            .member_ids()
            .iter()
            .all(|m| self.admission.admits_peer(m))
        {
            return Err(PipelineError::Protocol(
                "the plan lists a peer outside the pool".into(),
            ));
        }
        let again = PlanNotice::compute(
            notice.epoch,
            notice.placement,
            &notice.member_ids(),
            notice.input.clone(),
            notice.replicas,
        )?;
        if again.plan.assignments != notice.plan.assignments || again.groups != notice.groups {
            return Err(PipelineError::Protocol(
                "the plan is not what its inputs give".into(),
            ));
        }
        notice.planned()?;
        Ok(notice)
    }
}

/// Whether `peer`'s latest announcement says its part of the run is over.
pub(crate) fn has_finished(peer: &PeerInfo) -> bool {
    peer.announcement
        .as_ref()
        .is_some_and(|a| a.round == FINISHED_EPOCH)
}

/// Sorts peers the way membership orders them: by their text (the planner's ids), so every
/// member derives the same order.
pub(crate) fn sort_by_id(peers: &mut [PeerId]) {
    peers.sort_by_key(PeerId::to_string);
}

/// `input` with only the peers (and links among them) of `peers`.
pub(crate) fn restricted(input: &PlanInput, peers: &[PeerId]) -> PlanInput {
    let ids: Vec<String> = peers.iter().map(PeerId::to_string).collect();
    let mut out = input.clone();
    out.peers.retain(|p| ids.contains(&p.id));
    out.links
        .retain(|l| ids.contains(&l.from) && ids.contains(&l.to));
    out
}

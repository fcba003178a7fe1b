//! The forming phases of [`Membership`]: looking at the peer book until enough candidates
//! are in, probing their links (the issuer), and computing the first plan.

use std::time::Instant;

use libp2p::PeerId;

use super::super::PipelineError;
use super::super::notice::PlanNotice;
use super::entitled::{self, Judged};
use super::{
    Action, LOOK_EVERY, Membership, OnSendFailure, PROBE_BUDGET, Phase, Replanning, citations,
};
use crate::net::PeerInfo;
use crate::shard::planner::Link;

impl Membership {
    pub(super) fn on_tick(
        &mut self,
        now: Instant,
        wall_ms: u64,
        peers: &[PeerInfo],
    ) -> Vec<Action> {
        self.last_look = Some(now);
        let actions = match self.judge_held(now, peers) {
            Judged::Acted(actions) => return actions,
            Judged::Waiting(until) => entitled::wake_by(self.look(now, wall_ms, peers), until),
            Judged::Nothing => self.look(now, wall_ms, peers),
        };
        self.judge_rebalance(now, actions)
    }

    /// What a look at `peers` does in this phase.
    fn look(&mut self, now: Instant, wall_ms: u64, peers: &[PeerInfo]) -> Vec<Action> {
        match &self.phase {
            Phase::Forming { deadline } => {
                let deadline = *deadline;
                self.form(now, wall_ms, deadline, peers)
            }
            Phase::Probing { deadline, .. } if now >= *deadline => {
                tracing::warn!(
                    budget = ?PROBE_BUDGET,
                    "link probes did not finish in time; planning with the default link"
                );
                self.on_probed(now, Vec::new())
            }
            Phase::Probing { deadline, .. } => vec![Action::Wake(*deadline)],
            Phase::Awaiting {
                leader, deadline, ..
            } if now >= *deadline => self.fail(PipelineError::PeerSilent {
                peer: *leader,
                waited: self.rules.form_timeout,
            }),
            Phase::Awaiting {
                leader,
                deadline,
                replanning: Some(replanning),
                ..
            } => {
                // The member awaited left or finished its part: the survivors choose again,
                // by the same deadline (a member that comes and goes does not extend it).
                let gone = self
                    .rules
                    .survivors(&replanning.previous, peers, self.me)
                    .is_ok_and(|(_, next)| next != *leader);
                let deadline = *deadline;
                if !gone {
                    return vec![Action::Wake(deadline)];
                }
                let Phase::Awaiting {
                    replanning: Some(replanning),
                    ..
                } = std::mem::replace(&mut self.phase, Phase::Over)
                else {
                    return Vec::new();
                };
                let Replanning { previous, resume } = *replanning;
                tracing::warn!(
                    epoch = previous.epoch,
                    "the re-planning member left or finished; the survivors choose again"
                );
                self.replan(deadline, &previous, resume, peers)
            }
            Phase::Awaiting { deadline, .. } => vec![Action::Wake(*deadline)],
            Phase::Grace { until, .. } if now < *until => vec![Action::Wake(*until)],
            Phase::Grace { .. } => {
                let Phase::Grace {
                    previous, resume, ..
                } = std::mem::replace(&mut self.phase, Phase::Over)
                else {
                    return Vec::new();
                };
                self.replan(now + self.rules.form_timeout, &previous, resume, peers)
            }
            _ => Vec::new(),
        }
    }

    /// One look while forming (see the module docs).
    fn form(
        &mut self,
        now: Instant,
        wall_ms: u64,
        deadline: Instant,
        peers: &[PeerInfo],
    ) -> Vec<Action> {
        if let Some(running) = self.rules.running_leader(peers, wall_ms) {
            tracing::info!(%running, "a pipeline of this run is running; waiting to be planned in");
            self.phase = Phase::Awaiting {
                leader: running,
                epoch: 1,
                deadline,
                replanning: None,
            };
            return vec![Action::Wake(deadline)];
        }
        let mut members = self.rules.candidates(peers, wall_ms);
        members.retain(|(p, _)| *p != self.me);
        members.push((self.me, self.own));
        let found = members.len();
        if found >= self.rules.members {
            members.sort_by_key(|(peer, _)| peer.to_string());
            members.truncate(self.rules.members);
            if let Some((leader, _)) = members
                .first()
                .filter(|_| members.iter().any(|(p, _)| *p == self.me))
            {
                let leader = *leader;
                if leader == self.me {
                    let others = members
                        .iter()
                        .map(|(p, _)| *p)
                        .filter(|p| *p != self.me)
                        .collect();
                    let deadline = now + PROBE_BUDGET;
                    let pool = peers
                        .iter()
                        .filter_map(|p| p.announcement_envelope.clone())
                        .collect();
                    self.phase = Phase::Probing {
                        members,
                        pool,
                        deadline,
                    };
                    return vec![Action::Probe(others), Action::Wake(deadline)];
                }
                self.phase = Phase::Awaiting {
                    leader,
                    epoch: 1,
                    deadline,
                    replanning: None,
                };
                return vec![Action::Wake(deadline)];
            }
            // Not among the members of the pipeline being formed: once it runs, it plans
            // newcomers in.
            if now >= deadline {
                return self.fail(PipelineError::Formation(
                    "more members than needed; this node is not among them".into(),
                ));
            }
        } else if now >= deadline {
            return self.fail(PipelineError::Formation(format!(
                "{found} of {} members found within {:?}",
                self.rules.members, self.rules.form_timeout
            )));
        }
        vec![Action::Wake(now + LOOK_EVERY)]
    }

    pub(super) fn on_probed(&mut self, _now: Instant, links: Vec<Link>) -> Vec<Action> {
        let Phase::Probing { members, pool, .. } = &self.phase else {
            return Vec::new();
        };
        let ids: Vec<PeerId> = members.iter().map(|(p, _)| *p).collect();
        let mut input = self.rules.plan_input(members, links);
        if let Ok(json) = serde_json::to_string(&input) {
            tracing::debug!(input = %json, "planner input");
        }
        let pool: Vec<&[u8]> = pool.iter().map(|b| &b[..]).collect();
        let origin = (&self.rules.run, &self.rules.model);
        let (placement, replicas) = (self.rules.placement, self.rules.replicas);
        let notice = citations::cite(&mut input, self.me, (&pool, &[]), origin).and_then(|cited| {
            let mut notice = PlanNotice::compute(1, placement, &ids, input, replicas)?;
            notice.citations = cited;
            Ok(notice)
        });
        match notice {
            Ok(notice) => self.send(notice, None, OnSendFailure::Fail),
            Err(err) => self.fail(err),
        }
    }
}

//! Re-balancing a running pipeline: the member issuing plans (the lowest peer id the plan uses)
//! watches, while its shard trains, for joins and capacity drift, and returns the notice of the
//! next epoch once a new placement is worth the move.
//!
//! With one chain the [`Replanner`] decides (a join, a leave, or a drift beyond 20 % that makes
//! the pipeline at least 10 % faster). With several chains only joins count: the candidate with
//! the newcomers must beat the best plan of the current members alone, both computed from the
//! same announced capacities, by the same 10 % — regrouping on every capacity wobble would
//! thrash, and a newcomer that would only be left out changes nothing.
//!
//! Both watches act only on a member set that held for two looks in a row: peers that join
//! together are seldom seen in the same look, and one re-plan for them all moves each shard
//! once instead of once per joiner. Members the current plan left out are never in that set:
//! they stopped when the plan was agreed.

use std::time::Duration;

use libp2p::PeerId;
use tokio::sync::watch;

use super::PipelineError;
use super::members::rebalance_input;
use super::membership::{Rules, restricted};
use super::notice::PlanNotice;
use crate::errors::chain;
use crate::net::Network;
use crate::shard::capacity::Capacity;
use crate::shard::planner::{Decision, ReplanConfig, Replanner};

/// How often the member issuing plans looks for joins and drift.
const REBALANCE_EVERY: Duration = Duration::from_secs(2);

/// Runs beside the issuer's shard; returns the next epoch's notice once one is adopted. Never
/// returns otherwise (errors: the network is gone, or the current inputs no longer plan).
pub(crate) async fn watch_for_rebalance(
    net: Network,
    rules: Rules,
    current: PlanNotice,
    own: watch::Receiver<Capacity>,
) -> Result<PlanNotice, PipelineError> {
    if current.replicas > 1 {
        watch_for_joins(&net, &rules, &current, own).await
    } else {
        watch_one_chain(&net, &rules, &current, own).await
    }
}

async fn watch_one_chain(
    net: &Network,
    rules: &Rules,
    current: &PlanNotice,
    own: watch::Receiver<Capacity>,
) -> Result<PlanNotice, PipelineError> {
    let mut replanner = Replanner::new(ReplanConfig::default());
    replanner.update(&restricted(&current.input, &current.planned_members()))?;
    let me = net.local_peer_id();
    let mut settle = Settle::new(current);
    loop {
        tokio::time::sleep(REBALANCE_EVERY).await;
        let peers = net.peers().await?;
        let own = *own.borrow();
        let (members, input) = rebalance_input(rules, current, &peers, me, own);
        if !settle.held(&members) {
            continue;
        }
        match replanner.update(&input) {
            Ok(Decision::Adopted { trigger, gain }) => {
                tracing::info!(?trigger, ?gain, "re-balancing the pipeline");
                return PlanNotice::compute(
                    current.epoch + 1,
                    current.placement,
                    &members,
                    input,
                    current.replicas,
                );
            }
            Ok(Decision::Kept { trigger, gain }) => {
                tracing::debug!(?trigger, gain, "re-plan considered, placement kept");
            }
            Ok(Decision::Unchanged) => {}
            Err(err) => tracing::debug!(err = %chain(&err), "re-plan not possible"),
        }
    }
}

async fn watch_for_joins(
    net: &Network,
    rules: &Rules,
    current: &PlanNotice,
    own: watch::Receiver<Capacity>,
) -> Result<PlanNotice, PipelineError> {
    let min_gain = ReplanConfig::default().min_gain;
    let me = net.local_peer_id();
    let mut considered = current.planned_members();
    let mut settle = Settle::new(current);
    loop {
        tokio::time::sleep(REBALANCE_EVERY).await;
        let peers = net.peers().await?;
        let own = *own.borrow();
        let (members, input) = rebalance_input(rules, current, &peers, me, own);
        if !settle.held(&members) {
            continue;
        }
        let joined = members.iter().any(|m| !current.is_member(m));
        if !joined || members == considered {
            continue;
        }
        considered.clone_from(&members);
        let epoch = current.epoch + 1;
        let (placement, replicas) = (current.placement, current.replicas);
        let stayers: Vec<PeerId> = members
            .iter()
            .filter(|m| current.is_member(m))
            .copied()
            .collect();
        let without = PlanNotice::compute(
            epoch,
            placement,
            &stayers,
            restricted(&input, &stayers),
            replicas,
        );
        let with = PlanNotice::compute(epoch, placement, &members, input, replicas);
        match (without, with) {
            (Ok(without), Ok(with)) => {
                let rate = |n: &PlanNotice| n.plan.samples_per_sec * n.lanes() as f64;
                let gain = rate(&with) / rate(&without) - 1.0;
                if gain >= min_gain {
                    tracing::info!(
                        gain,
                        lanes = with.lanes(),
                        "re-balancing the chains for a join"
                    );
                    return Ok(with);
                }
                tracing::debug!(gain, "join considered, placement kept");
            }
            (Err(err), _) | (_, Err(err)) => {
                tracing::debug!(err = %chain(&err), "re-plan not possible")
            }
        }
    }
}

/// The member set of the previous look, to tell a settled set from one still changing.
struct Settle {
    last: Vec<PeerId>,
}

impl Settle {
    fn new(current: &PlanNotice) -> Self {
        Self {
            last: current.planned_members(),
        }
    }

    /// Whether `members` is the set of the previous look too (remembering it for the next).
    fn held(&mut self, members: &[PeerId]) -> bool {
        if self.last == members {
            return true;
        }
        tracing::debug!(
            members = members.len(),
            "member set changed; waiting a look"
        );
        self.last = members.to_vec();
        false
    }
}

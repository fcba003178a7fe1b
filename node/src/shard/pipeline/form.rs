//! Forming a pipeline: announce this node's measured capacity, wait for the run's members, and
//! agree on a plan.
//!
//! Members are connected peers whose latest signed announcement names this run and model with a
//! measured capacity. Once `members` are known (this node included), the one with the lowest
//! peer id computes the plan from their announced capacities and links and sends a notice (the
//! plan *and* its inputs) to every other member over the pipeline control protocol. A member
//! accepts a notice only from the lowest id of the members it lists, only if it is listed, and
//! only if re-computing the plan from the notice's inputs gives the same placement, so a
//! deterministic planner and an honest leader are checked rather than trusted. Later epochs come
//! from the member that saw the change: after a departure ([`replan`], the lowest survivor, told
//! by the broken chain's survivors when it sits in another chain) or a
//! join or capacity drift (the issuer's re-balancing in `session`); a newcomer that sees a
//! running pipeline waits for such a notice instead of forming its own.

use std::time::Duration;

use ed25519_dalek::SigningKey;
use libp2p::PeerId;
use murmur_protocol::message::MAX_LISTEN_ADDRS;
use murmur_protocol::pipeline::PipeBody;
use murmur_protocol::{Announcement, Message, SignedEnvelope};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::mailbox::{Inbound, Mailbox};
use super::replicas::Replicas;
use super::{PipelineConfig, PipelineError};
use crate::net::{Network, link_stats};
use crate::shard::capacity::Capacity;

use super::members::{
    FINISHED_EPOCH, candidates, has_finished, plan_input, probe_links, restarted_members,
    running_leader,
};
use super::notice::{
    PlanNotice, check_notice, report_broken, send_notice, send_parts_beyond_own_chain,
};

/// Wait before counting the members left after a failure.
const REPLAN_GRACE: Duration = Duration::from_millis(1000);
/// Messages for the pipeline kept while waiting for its plan.
const EARLY_MESSAGES: usize = 256;

/// Announces the latest `capacity` and this node's measured links for the run twice a
/// second until `cancel` fires, then once more with [`FINISHED_EPOCH`]: this node's part of the
/// run is over.
pub fn spawn_announcer(
    net: Network,
    signing: SigningKey,
    config: &PipelineConfig,
    capacity: watch::Receiver<Capacity>,
    epoch: watch::Receiver<u64>,
    cancel: CancellationToken,
) {
    let (run, model, device) = (config.run, config.model, config.device_name.clone());
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        let mut finished = false;
        while !finished {
            tokio::select! {
                _ = cancel.cancelled() => finished = true,
                _ = tick.tick() => {}
            }
            let listen_addrs = match net.listen_addrs().await {
                Ok(addrs) => addrs
                    .into_iter()
                    .take(MAX_LISTEN_ADDRS)
                    .map(|a| a.to_string())
                    .collect(),
                Err(_) => return,
            };
            // Measured links (ping RTT, transfer throughput) to the peers this node knows.
            let links = match net.peers().await {
                Ok(peers) => link_stats(&peers),
                Err(_) => return,
            };
            let capacity = *capacity.borrow();
            let message = Message::Announcement(Announcement {
                peer: murmur_protocol::PeerKey(signing.verifying_key().to_bytes()),
                run,
                model,
                capacity: murmur_protocol::Capacity {
                    samples_per_sec: capacity.samples_per_sec as f32,
                    flops_per_sec: capacity.flops_per_sec,
                    memory_bytes: capacity.memory_bytes,
                    device: device.chars().take(100).collect(),
                    links,
                },
                // The plan epoch this node runs (0 while forming): newcomers that see a running
                // pipeline wait for the next plan instead of forming one. Once cancelled, one
                // last announcement says this node's part is over.
                round: if finished {
                    FINISHED_EPOCH
                } else {
                    *epoch.borrow()
                },
                listen_addrs,
                timestamp_ms: crate::net::now_ms(),
            });
            match SignedEnvelope::sign(&signing, &message) {
                Ok(envelope) => {
                    if let Err(err) = net.publish_announcement(&envelope).await {
                        tracing::trace!(%err, "capacity announcement not published");
                    }
                }
                Err(err) => tracing::warn!(%err, "cannot sign the capacity announcement"),
            }
        }
    });
}

/// Waits for the members and returns the agreed notice; messages that arrive early for the
/// pipeline itself are put back into `mailbox`.
pub(crate) async fn agree(
    net: &Network,
    mailbox: &mut Mailbox,
    config: &PipelineConfig,
    own: Capacity,
) -> Result<PlanNotice, PipelineError> {
    let me = net.local_peer_id();
    let deadline = tokio::time::Instant::now() + config.form_timeout;
    let members = loop {
        // The first plan may come before this node has seen every member's announcement (the
        // issuer saw them first, and a member it left out stops announcing): the notice lists
        // the members and carries their capacities, and is checked on its own.
        if let Some(notice) = queued_notice(mailbox, config, me).await {
            return Ok(notice);
        }
        let peers = net.peers().await?;
        let mut members = candidates(&peers, config);
        if let Some(running) = running_leader(&peers, config) {
            tracing::info!(%running, "a pipeline of this run is running; waiting to be planned in");
            return wait_for_notice(mailbox, config, me, running, 1, deadline).await;
        }
        members.push((me, own));
        let now = tokio::time::Instant::now();
        if members.len() >= config.members {
            members.sort_by_key(|(peer, _)| peer.to_string());
            members.truncate(config.members);
            if members.iter().any(|(peer, _)| *peer == me) {
                break members;
            }
            // Not among the members of the pipeline being formed (or whose announcements of
            // running have not arrived yet): once it runs, it plans newcomers in.
            if now >= deadline {
                return Err(PipelineError::Formation(
                    "more members than needed; this node is not among them".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        if now >= deadline {
            return Err(PipelineError::Formation(format!(
                "{} of {} members found within {:?}",
                members.len(),
                config.members,
                config.form_timeout
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let ids: Vec<String> = members.iter().map(|(p, _)| p.to_string()).collect();
    let leader = members[0].0;
    if leader == me {
        let links = probe_links(net, config, &members).await;
        let input = plan_input(config, &members, links);
        if let Ok(json) = serde_json::to_string(&input) {
            tracing::debug!(input = %json, "planner input");
        }
        let notice = PlanNotice::compute(1, config.placement, ids, input, config.replicas)?;
        send_notice(net, config, &notice).await?;
        return Ok(notice);
    }
    wait_for_notice(mailbox, config, me, leader, 1, deadline).await
}

/// Agrees on the plan of the next epoch after `previous` stopped working (a member left or
/// stalled): the members still connected are re-planned from the previous inputs, resuming
/// from the latest step at which every old range has a snapshot in `replicas`.
pub(crate) async fn replan(
    net: &Network,
    mailbox: &mut Mailbox,
    config: &PipelineConfig,
    previous: &PlanNotice,
    replicas: &Replicas,
) -> Result<PlanNotice, PipelineError> {
    let me = net.local_peer_id();
    let epoch = previous.epoch + 1;
    // Let the transport notice departed peers before counting who is left.
    tokio::time::sleep(REPLAN_GRACE).await;
    // Connected members still in the run: one whose part is over (it finished its steps in a
    // healthy chain before this break was reported) would never act on a new plan.
    let peers = net.peers().await?;
    let connected: Vec<String> = peers
        .iter()
        .filter(|p| p.connected && !has_finished(p))
        .map(|p| p.peer_id.to_string())
        .collect();
    let restarted = restarted_members(&peers, config);
    // Members the previous plan left out have stopped: they are no longer candidates.
    let mut survivors: Vec<String> = previous
        .members
        .iter()
        .filter(|m| previous.is_planned(m))
        .filter(|m| **m == me.to_string() || connected.contains(m))
        .cloned()
        .collect();
    survivors.sort();
    let deadline = tokio::time::Instant::now() + config.form_timeout;
    // The lowest survivor still running the old plan re-plans: a restarted one waits to be
    // planned in (it holds neither the old notice nor snapshots).
    let leader: PeerId = survivors
        .iter()
        .find(|s| !restarted.contains(s))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| PipelineError::Formation("no members left".into()))?;
    tracing::warn!(epoch, survivors = survivors.len(), %leader, "re-planning the pipeline");
    if leader == me {
        let mut input = previous.input.clone();
        input.peers.retain(|p| survivors.contains(&p.id));
        input
            .links
            .retain(|l| survivors.contains(&l.from) && survivors.contains(&l.to));
        let mut notice = PlanNotice::compute(
            epoch,
            previous.placement,
            survivors,
            input,
            previous.replicas,
        )?;
        (notice.previous_ranges, notice.resume_step) = resume_point(previous, replicas);
        send_notice(net, config, &notice).await?;
        // Members of other chains got this chain's snapshots only best effort; restarted
        // members lost theirs.
        send_parts_beyond_own_chain(net, config, &notice, previous, replicas, &restarted).await?;
        return Ok(notice);
    }
    if let Err(err) = report_broken(net, config, previous.epoch, leader).await {
        // The leader may be re-planning already (it saw the break itself); its notice decides.
        tracing::info!(%leader, %err, "broken chain not reported to the re-planning member");
    }
    wait_for_notice(mailbox, config, me, leader, epoch, deadline).await
}

/// Where the plan after `previous` resumes: the ranges whose snapshots it is built from and
/// the step, the latest at which every range of `previous` has a snapshot. When there is none
/// (the plan broke before its first snapshot), the point `previous` itself resumed from, if
/// its snapshots are still held, rather than the initial model: no committed work is lost.
pub(crate) fn resume_point(
    previous: &PlanNotice,
    replicas: &Replicas,
) -> (Vec<std::ops::Range<usize>>, u64) {
    let ranges = previous.ranges();
    let step = replicas.common_step(&ranges);
    let before = (&previous.previous_ranges, previous.resume_step);
    if step == 0 && before.1 > 0 && replicas.holds(before.0, before.1) {
        return (before.0.clone(), before.1);
    }
    (ranges, step)
}

/// A valid plan notice already in `mailbox`, without waiting; every other message queued is put
/// back in order.
async fn queued_notice(
    mailbox: &mut Mailbox,
    config: &PipelineConfig,
    me: PeerId,
) -> Option<PlanNotice> {
    let mut others = Vec::new();
    let mut found = None;
    while others.len() < EARLY_MESSAGES {
        let Some(message) = mailbox.recv(Duration::ZERO).await else {
            break;
        };
        if message.header.body != PipeBody::Plan {
            others.push(message);
            continue;
        }
        match check_notice(&message, me, config) {
            Ok(notice) => {
                found = Some(notice);
                break;
            }
            Err(err) => tracing::warn!(peer = %message.peer, %err, "plan notice refused"),
        }
    }
    mailbox.requeue(others);
    found
}

async fn wait_for_notice(
    mailbox: &mut Mailbox,
    config: &PipelineConfig,
    me: PeerId,
    leader: PeerId,
    epoch: u64,
    deadline: tokio::time::Instant,
) -> Result<PlanNotice, PipelineError> {
    let mut early: Vec<Inbound> = Vec::new();
    let result = loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Some(message) = mailbox.recv(left).await else {
            break Err(PipelineError::PeerSilent {
                peer: leader,
                waited: config.form_timeout,
            });
        };
        let snapshot = matches!(message.header.body, PipeBody::Replica { .. });
        if (message.header.epoch < epoch && !snapshot) || message.header.body == PipeBody::Probe {
            // Left over from an epoch that is over, or a link probe. Snapshots of the epoch
            // that broke are kept: the new ranges may be built from them.
            continue;
        }
        if message.header.body != PipeBody::Plan {
            if early.len() >= EARLY_MESSAGES {
                break Err(PipelineError::Protocol(
                    "too many messages before the plan".into(),
                ));
            }
            early.push(message);
            continue;
        }
        match check_notice(&message, me, config) {
            Ok(notice) => break Ok(notice),
            Err(err) => tracing::warn!(peer = %message.peer, %err, "plan notice refused"),
        }
    };
    mailbox.requeue(early);
    result
}

/// Waits for the notice of epoch `epoch` or later (after a stage saw it arrive).
pub(crate) async fn await_notice(
    mailbox: &mut Mailbox,
    config: &PipelineConfig,
    me: PeerId,
    from: PeerId,
    epoch: u64,
) -> Result<PlanNotice, PipelineError> {
    let deadline = tokio::time::Instant::now() + config.form_timeout;
    wait_for_notice(mailbox, config, me, from, epoch, deadline).await
}

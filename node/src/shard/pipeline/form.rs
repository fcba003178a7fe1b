//! Forming a pipeline: announce this node's measured capacity, wait for the run's members, and
//! agree on a plan.
//!
//! Members are connected peers whose latest signed announcement names this run and model with a
//! measured capacity. Once `members` are known (this node included), the one with the lowest
//! peer id computes the plan from their announced capacities and links and sends a notice (the
//! plan *and* its inputs) to every other member over the pipeline control protocol. A member
//! accepts a notice only from the lowest id of the members it lists, only if it is listed, and
//! only if re-computing the plan from the notice's inputs gives the same placement, so a
//! deterministic planner and an honest leader are checked rather than trusted.

use std::time::Duration;

use ed25519_dalek::SigningKey;
use libp2p::PeerId;
use murmur_protocol::message::MAX_LISTEN_ADDRS;
use murmur_protocol::pipeline::{PIPE_VERSION, PipeBody, PipeHeader};
use murmur_protocol::{Announcement, Message, SignedEnvelope};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::mailbox::{Inbound, Mailbox};
use super::replicas::Replicas;
use super::{PipelineConfig, PipelineError, Placement};
use crate::net::{Network, PayloadKind, PeerInfo};
use crate::shard::capacity::Capacity;
use crate::shard::planner::{
    Link, LinkSpec, MemoryModel, PeerCapacity, Plan, PlanInput, PlanStage, even_split, plan,
};

/// Link assumed between members with no measured throughput: a 1 Gbit/s LAN, 1 ms round trip.
pub const DEFAULT_LINK: LinkSpec = LinkSpec {
    bytes_per_sec: 125e6,
    rtt_secs: 0.001,
};
/// Largest plan notice accepted, bytes.
pub const MAX_NOTICE_BYTES: usize = 4 << 20;
/// Wait before counting the members left after a failure.
const REPLAN_GRACE: Duration = Duration::from_millis(1000);

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
}

impl PlanNotice {
    /// Computes the notice for `input` under `placement`.
    pub fn compute(
        epoch: u64,
        placement: Placement,
        members: Vec<String>,
        input: PlanInput,
    ) -> Result<Self, PipelineError> {
        let plan = match placement {
            Placement::CapacityAware => plan(&input)?,
            Placement::Even => even_split(&input)?,
        };
        Ok(Self {
            epoch,
            placement,
            members,
            input,
            plan,
            resume_step: 0,
            previous_ranges: Vec::new(),
        })
    }

    /// The stage ranges of the plan, in order.
    pub fn ranges(&self) -> Vec<std::ops::Range<usize>> {
        self.plan.assignments.iter().map(|a| a.stages()).collect()
    }

    /// The chain's peers in pipeline order.
    pub fn chain(&self) -> Result<Vec<PeerId>, PipelineError> {
        self.plan
            .assignments
            .iter()
            .map(|a| {
                a.peer
                    .parse()
                    .map_err(|_| PipelineError::Protocol(format!("bad peer id {:?}", a.peer)))
            })
            .collect()
    }
}

/// Announces the latest `capacity` for the run twice a second until `cancel` fires.
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
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
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
                    links: Vec::new(),
                },
                // The plan epoch this node runs (0 while forming): newcomers that see a running
                // pipeline wait for the next plan instead of forming one.
                round: *epoch.borrow(),
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
        let peers = net.peers().await?;
        let mut members = candidates(&peers, config);
        if let Some(running) = running_leader(&peers, config) {
            tracing::info!(%running, "a pipeline of this run is running; waiting to be planned in");
            return wait_for_notice(mailbox, config, me, running, 1, deadline).await;
        }
        members.push((me, own));
        if members.len() >= config.members {
            members.sort_by_key(|(peer, _)| peer.to_string());
            members.truncate(config.members);
            break members;
        }
        if tokio::time::Instant::now() >= deadline {
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
    if !ids.contains(&me.to_string()) {
        return Err(PipelineError::Formation(
            "more members than needed; this node is not among them".into(),
        ));
    }
    let leader = members[0].0;
    if leader == me {
        let links = probe_links(net, config, &members).await;
        let input = plan_input(config, &members, links);
        if let Ok(json) = serde_json::to_string(&input) {
            tracing::debug!(input = %json, "planner input");
        }
        let notice = PlanNotice::compute(1, config.placement, ids, input)?;
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
    let connected: Vec<String> = net
        .peers()
        .await?
        .into_iter()
        .filter(|p| p.connected)
        .map(|p| p.peer_id.to_string())
        .collect();
    let mut survivors: Vec<String> = previous
        .members
        .iter()
        .filter(|m| **m == me.to_string() || connected.contains(m))
        .cloned()
        .collect();
    survivors.sort();
    let deadline = tokio::time::Instant::now() + config.form_timeout;
    let leader: PeerId = survivors
        .first()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| PipelineError::Formation("no members left".into()))?;
    tracing::warn!(epoch, survivors = survivors.len(), %leader, "re-planning the pipeline");
    if leader == me {
        let mut input = previous.input.clone();
        input.peers.retain(|p| survivors.contains(&p.id));
        input
            .links
            .retain(|l| survivors.contains(&l.from) && survivors.contains(&l.to));
        let mut notice = PlanNotice::compute(epoch, previous.placement, survivors, input)?;
        notice.resume_step = replicas.common_step(&previous.ranges());
        notice.previous_ranges = previous.ranges();
        send_notice(net, config, &notice).await?;
        return Ok(notice);
    }
    wait_for_notice(mailbox, config, me, leader, epoch, deadline).await
}

/// Sends `notice` to every member but this node.
async fn send_notice(
    net: &Network,
    config: &PipelineConfig,
    notice: &PlanNotice,
) -> Result<(), PipelineError> {
    let me = net.local_peer_id().to_string();
    let bytes = encode_notice(notice)?;
    for member in notice.members.iter().filter(|m| **m != me) {
        let peer: PeerId = member
            .parse()
            .map_err(|_| PipelineError::Protocol(format!("bad peer id {member:?}")))?;
        {
            let header = PipeHeader {
                version: PIPE_VERSION,
                run: config.run,
                epoch: notice.epoch,
                step: 0,
                micro: 0,
                micros: 1,
                tensor: None,
                body: PipeBody::Plan,
            };
            let header = header
                .to_bytes()
                .map_err(|e| PipelineError::Protocol(e.to_string()))?;
            net.send_payload(peer, PayloadKind::Control, &header, &bytes)
                .await
                .map_err(|error| PipelineError::Send {
                    peer,
                    error: Box::new(error),
                })?;
        }
    }
    Ok(())
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
        if message.header.epoch < epoch || message.header.body == PipeBody::Probe {
            continue; // left over from an epoch that is over, or a link probe
        }
        if message.header.body != PipeBody::Plan {
            if early.len() >= 256 {
                break Err(PipelineError::Protocol(
                    "too many messages before the plan".into(),
                ));
            }
            early.push(message);
            continue;
        }
        match check_notice(&message, me) {
            Ok(notice) => break Ok(notice),
            Err(err) => tracing::warn!(peer = %message.peer, %err, "plan notice refused"),
        }
    };
    mailbox.requeue(early);
    result
}

fn check_notice(message: &Inbound, me: PeerId) -> Result<PlanNotice, PipelineError> {
    let notice = decode_notice(&message.payload)?;
    let mut sorted = notice.members.clone();
    sorted.sort();
    let sender = message.peer.to_string();
    // The first plan comes from the lowest member; later ones (re-plans after a departure, a
    // join or a capacity drift) from the member that saw the change, which must be listed.
    let allowed = if notice.epoch <= 1 {
        sorted.first() == Some(&sender)
    } else {
        sorted.contains(&sender)
    };
    if !allowed {
        return Err(PipelineError::Protocol(
            "the sender may not issue this plan".into(),
        ));
    }
    if !notice.members.contains(&me.to_string()) {
        return Err(PipelineError::Protocol(
            "this node is not a listed member".into(),
        ));
    }
    let again = PlanNotice::compute(
        notice.epoch,
        notice.placement,
        notice.members.clone(),
        notice.input.clone(),
    )?;
    if again.plan.assignments != notice.plan.assignments {
        return Err(PipelineError::Protocol(
            "the plan is not what its inputs give".into(),
        ));
    }
    notice.chain()?;
    Ok(notice)
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
    bincode::serde::encode_to_vec(notice, notice_config())
        .map_err(|e| PipelineError::Protocol(format!("cannot encode the plan: {e}")))
}

/// Decodes a plan notice; at most [`MAX_NOTICE_BYTES`], no trailing bytes.
pub fn decode_notice(bytes: &[u8]) -> Result<PlanNotice, PipelineError> {
    if bytes.len() > MAX_NOTICE_BYTES {
        return Err(PipelineError::Protocol("plan notice too large".into()));
    }
    let (notice, used) = bincode::serde::decode_from_slice(bytes, notice_config())
        .map_err(|e| PipelineError::Protocol(format!("malformed plan notice: {e}")))?;
    if used != bytes.len() {
        return Err(PipelineError::Protocol(
            "trailing bytes after the plan notice".into(),
        ));
    }
    Ok(notice)
}

/// The lowest-id member of a pipeline of this run that is already running (announcing a plan
/// epoch), if any.
fn running_leader(peers: &[PeerInfo], config: &PipelineConfig) -> Option<PeerId> {
    peers
        .iter()
        .filter(|p| p.connected)
        .filter(|p| {
            p.announcement
                .as_ref()
                .is_some_and(|a| a.run == config.run && a.model == config.model && a.round > 0)
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

/// Sends the notice of a re-balanced plan to its members, and to members new to the pipeline
/// the snapshots (at the notice's resume step) of every range of `old_ranges`, which they
/// build their ranges from.
pub(crate) async fn announce_rebalance(
    net: &Network,
    config: &PipelineConfig,
    notice: &PlanNotice,
    previous: &PlanNotice,
    replicas: &Replicas,
) -> Result<(), PipelineError> {
    send_notice(net, config, notice).await?;
    if notice.resume_step == 0 {
        return Ok(());
    }
    let old = previous.ranges();
    for joiner in notice
        .members
        .iter()
        .filter(|m| !previous.members.contains(m))
    {
        let peer: PeerId = joiner
            .parse()
            .map_err(|_| PipelineError::Protocol(format!("bad peer id {joiner:?}")))?;
        for range in &old {
            let part = replicas.parts(std::slice::from_ref(range), range, notice.resume_step)?;
            for state in part {
                let bytes = super::replicas::encode(&state)?;
                let header = PipeHeader {
                    version: PIPE_VERSION,
                    run: config.run,
                    epoch: notice.epoch,
                    step: notice.resume_step,
                    micro: 0,
                    micros: 1,
                    tensor: None,
                    body: PipeBody::Replica {
                        start: range.start as u32,
                        end: range.end as u32,
                    },
                };
                let header = header
                    .to_bytes()
                    .map_err(|e| PipelineError::Protocol(e.to_string()))?;
                net.send_payload(peer, PayloadKind::Control, &header, &bytes)
                    .await
                    .map_err(|error| PipelineError::Send {
                        peer,
                        error: Box::new(error),
                    })?;
            }
        }
    }
    Ok(())
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

/// How recent an announcement of a member that is not connected must be, milliseconds.
const RECENT_MS: u64 = 10_000;

/// Connected or recently announced peers announcing this run and model with a measured capacity.
fn candidates(peers: &[PeerInfo], config: &PipelineConfig) -> Vec<(PeerId, Capacity)> {
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
async fn probe_links(
    net: &Network,
    config: &PipelineConfig,
    members: &[(PeerId, Capacity)],
) -> Vec<Link> {
    const SMALL: usize = 1024;
    const LARGE: usize = 1 << 20;
    let me = net.local_peer_id();
    let header = PipeHeader {
        version: PIPE_VERSION,
        run: config.run,
        epoch: 0,
        step: 0,
        micro: 0,
        micros: 1,
        tensor: None,
        body: PipeBody::Probe,
    };
    let Ok(header) = header.to_bytes() else {
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
pub fn plan_input(
    config: &PipelineConfig,
    members: &[(PeerId, Capacity)],
    links: Vec<Link>,
) -> PlanInput {
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

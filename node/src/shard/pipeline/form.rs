//! What a node tells the others about itself while it is in a pipeline run, and where a
//! next plan resumes.
//!
//! [`announce`] publishes this node's measured capacity and links with the plan epoch it runs
//! (0 while forming), twice a second, and once more with [`FINISHED_EPOCH`] when its part is
//! over; the members' announcements are what `membership` forms plans from. [`resume_point`]
//! says from which snapshots a plan after a broken one is built.

use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use murmur_protocol::message::MAX_LISTEN_ADDRS;
use murmur_protocol::{Announcement, Message, SignedEnvelope};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::PipelineConfig;
use super::membership::{FINISHED_EPOCH, ResumePoint};
use super::notice::PlanNotice;
use super::snapshots::Snapshots;
use crate::errors::chain;
use crate::net::{Network, link_stats};
use crate::shard::capacity::Capacity;

/// What [`announce`] publishes.
pub(crate) struct Announcer {
    pub net: Network,
    pub signing: SigningKey,
    pub config: Arc<PipelineConfig>,
    /// The latest capacity (refined while training).
    pub capacity: watch::Receiver<Capacity>,
    /// The plan epoch this node runs.
    pub epoch: watch::Receiver<u64>,
}

/// How often a pipeline node announces itself.
const ANNOUNCE_EVERY: Duration = Duration::from_millis(500);
/// Least time between the last announcement and the one before: five times the receivers'
/// per-peer intake gap (`net::peers::MIN_ANNOUNCEMENT_GAP_MS`), so that delivery jitter does
/// not bring them closer.
const ANNOUNCE_GAP: Duration = Duration::from_millis(250);

/// Announces the latest capacity and this node's measured links for the run twice a
/// second until `cancel` fires, then once more with [`FINISHED_EPOCH`]: this node's part of the
/// run is over.
pub(crate) async fn announce(announcer: Announcer, cancel: CancellationToken) {
    let Announcer {
        net,
        signing,
        config,
        capacity,
        epoch,
    } = announcer;
    let (run, model, device) = (config.run, config.model, config.device_name.clone());
    {
        let mut tick = tokio::time::interval(ANNOUNCE_EVERY);
        let mut finished = false;
        let mut last: Option<tokio::time::Instant> = None;
        while !finished {
            tokio::select! {
                _ = cancel.cancelled() => finished = true,
                _ = tick.tick() => {}
            }
            // Receivers take in one announcement per peer per 50 ms: the last one, which says
            // this node's part is over, must not follow the one before too closely, or it is
            // dropped and the others wait for a member that has finished.
            if let Some(last) = last.filter(|_| finished) {
                tokio::time::sleep_until(last + ANNOUNCE_GAP).await;
            }
            last = Some(tokio::time::Instant::now());
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
                        tracing::trace!(err = %chain(&err), "capacity announcement not published");
                    }
                }
                Err(err) => {
                    tracing::warn!(err = %chain(&err), "cannot sign the capacity announcement")
                }
            }
        }
    }
}

/// Where the plan after `previous` resumes: the ranges whose snapshots it is built from and
/// the step, the latest at which every range of `previous` has a snapshot. When there is none
/// (the plan broke before its first snapshot), the point `previous` itself resumed from, if
/// its snapshots are still held, rather than the initial model: no committed work is lost.
pub(crate) fn resume_point(previous: &PlanNotice, snapshots: &Snapshots) -> ResumePoint {
    let ranges = previous.ranges();
    let step = snapshots.common_step(&ranges);
    let before = (&previous.previous_ranges, previous.resume_step);
    if step == 0 && before.1 > 0 && snapshots.holds(before.0, before.1) {
        return ResumePoint {
            ranges: before.0.clone(),
            step: before.1,
        };
    }
    ResumePoint { ranges, step }
}

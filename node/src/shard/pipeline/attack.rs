//! The red team of pipelines: what a hostile member does beside its stage when
//! [`PipelineConfig::tamper`] says so (`murmur testnet --sharded --malicious KIND` and the
//! tests in `tests/tests/pipeline_attacks.rs`). Its stage computes honestly; the attack is
//! what a member, or anyone who learned the run, can send the others: plans of made-up
//! capacities, epochs far ahead, poisoned snapshots, junk. Nothing here runs on a real node.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use libp2p::PeerId;
use murmur_models::pipeline::{FlatAdamW, ShardState};
use murmur_protocol::pipeline::{PIPE_VERSION, PipeBody, PipeHeader};

use super::membership::citations;
use super::notice::{PlanNotice, control_header, report_broken, send_notice};
use super::snapshots::{self, Snapshots};
use super::{PipelineConfig, PipelineError};
use crate::adversary::PipeTamper;
use crate::errors::chain;
use crate::net::{Network, PayloadKind};

/// How far ahead an epoch-jump notice claims to be.
const EPOCH_JUMP: u64 = 1 << 40;
/// Longest a snapshot-poison member keeps poisoning before it leaves.
const POISON_FOR: Duration = Duration::from_secs(5);
/// Time between two rounds of poisoned snapshots.
const POISON_EVERY: Duration = Duration::from_millis(100);
/// The step far ahead that poisoned snapshots claim.
const FAR_STEP: u64 = 1 << 30;
/// Junk messages of each kind sent to each member while the pipeline forms.
const JUNK_EACH: usize = 300;
/// Longest a junk send may take.
const JUNK_DEADLINE: Duration = Duration::from_secs(2);
/// Next plans a re-plan flood sends per epoch, each an epoch further, and the time between
/// two.
const FLOOD_PLANS: u64 = 8;
const FLOOD_EVERY: Duration = Duration::from_millis(300);

/// How an attack ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AttackEnd {
    /// Sent; the member goes on.
    Done,
    /// The member leaves the run (the survivors re-plan).
    Leave,
}

/// What an attack needs of the member that makes it.
#[derive(Clone)]
pub(crate) struct Attacker {
    pub net: Network,
    pub config: Arc<PipelineConfig>,
    pub snapshots: Arc<Mutex<Snapshots>>,
}

impl Attacker {
    /// The attack made while `running` runs (started with each stage).
    pub(crate) async fn during_epoch(self, tamper: PipeTamper, running: PlanNotice) -> AttackEnd {
        let result = match tamper {
            PipeTamper::PlanHijack => self.hijack(&running).await,
            PipeTamper::EpochJump => self.jump(&running).await,
            PipeTamper::SnapshotPoison => return self.poison(&running).await,
            PipeTamper::ReplanFlood => self.flood(&running).await,
            PipeTamper::StageGarbage => self.garbage(&running).await,
            // A stranger's attack (`junk_only`): never a member.
            PipeTamper::FormationJunk => Ok(()),
        };
        if let Err(err) = result {
            tracing::warn!(%tamper, err = %chain(&err), "attack not sent");
        }
        AttackEnd::Done
    }

    /// The next epoch's plan of made-up capacities, citing the true ones.
    async fn hijack(&self, running: &PlanNotice) -> Result<(), PipelineError> {
        let me = self.net.local_peer_id();
        let peers = self.net.peers().await?;
        let origin = (&self.config.run, &self.config.model);
        let known = (&running.citations[..], &peers[..]);
        let mut honest = running.input.clone();
        let cited = citations::cite_known(&mut honest, me, known, origin)?;
        let mut made_up = running.input.clone();
        for p in &mut made_up.peers {
            p.flops_per_sec = if p.id == me.to_string() { 1e15 } else { 1e3 };
        }
        let mut notice = PlanNotice::compute(
            running.epoch + 1,
            running.placement,
            &running.member_ids(),
            made_up,
            running.replicas,
        )?;
        notice.citations = cited;
        tracing::warn!(
            epoch = notice.epoch,
            "attack: sending a plan of made-up capacities"
        );
        send_notice(&self.net, &self.config, &notice).await
    }

    /// The running plan again, far ahead and just past the step bound.
    async fn jump(&self, running: &PlanNotice) -> Result<(), PipelineError> {
        let me = self.net.local_peer_id();
        let peers = self.net.peers().await?;
        let origin = (&self.config.run, &self.config.model);
        let known = (&running.citations[..], &peers[..]);
        let mut notice = running.clone();
        notice.citations = citations::cite_known(&mut notice.input, me, known, origin)?;
        for ahead in [EPOCH_JUMP, super::membership::MAX_EPOCH_STEP + 1] {
            notice.epoch = running.epoch + ahead;
            tracing::warn!(epoch = notice.epoch, "attack: sending an epoch far ahead");
            send_notice(&self.net, &self.config, &notice).await?;
        }
        Ok(())
    }

    /// To each neighbour in this member's chain of `running`, a stage message of the running
    /// step that claims one micro-batch more per step than the run uses.
    async fn garbage(&self, running: &PlanNotice) -> Result<(), PipelineError> {
        let me = self.net.local_peer_id();
        let Some(seat) = running.seat(&me) else {
            return Ok(());
        };
        let chain = running.chain(seat.lane)?;
        let prev = seat.index.checked_sub(1).and_then(|i| chain.get(i));
        let next = chain.get(seat.index + 1);
        let backward = PipeBody::Backward {
            loss: 0.0,
            tail_norm_sq: None,
        };
        let forward = PipeBody::Forward { targets: vec![] };
        for (peer, body) in [(prev, backward), (next, forward)] {
            let Some(peer) = peer else { continue };
            let header = PipeHeader {
                version: PIPE_VERSION,
                run: self.config.run,
                epoch: running.epoch,
                step: running.resume_step,
                micro: 0,
                micros: self.config.micro_batches + 1,
                tensor: None,
                body,
            };
            tracing::warn!(%peer, epoch = running.epoch, "attack: sending a stage message out of protocol");
            let header = header.to_bytes()?;
            let sent = self
                .net
                .send_payload(*peer, PayloadKind::Control, &header, &[]);
            let _ = tokio::time::timeout(JUNK_DEADLINE, sent).await;
        }
        Ok(())
    }

    /// A false break report to the plan's watcher (it re-plans), then valid next plans of
    /// honest inputs (the running plan, its capacities cited), each an epoch further than the
    /// last.
    async fn flood(&self, running: &PlanNotice) -> Result<(), PipelineError> {
        let me = self.net.local_peer_id();
        tokio::time::sleep(FLOOD_EVERY).await;
        if let Some(watcher) = running.watcher().filter(|w| *w != me) {
            tracing::warn!(
                epoch = running.epoch,
                "attack: reporting a break that did not happen"
            );
            report_broken(&self.net, &self.config, (running.epoch, None), watcher).await?;
        }
        let peers = self.net.peers().await?;
        let origin = (&self.config.run, &self.config.model);
        let known = (&running.citations[..], &peers[..]);
        let mut input = running.input.clone();
        let cited = citations::cite_known(&mut input, me, known, origin)?;
        for ahead in 1..=FLOOD_PLANS {
            tokio::time::sleep(FLOOD_EVERY).await;
            let mut notice = PlanNotice::compute(
                running.epoch + ahead,
                running.placement,
                &running.member_ids(),
                input.clone(),
                running.replicas,
            )?;
            notice.citations = cited.clone();
            // Resumable: from the running plan's ranges at this member's latest snapshot.
            notice.previous_ranges = running.ranges();
            notice.resume_step = snapshots::lock(&self.snapshots).latest_step();
            tracing::warn!(
                epoch = notice.epoch,
                "attack: sending a next plan of honest inputs"
            );
            send_notice(&self.net, &self.config, &notice).await?;
        }
        Ok(())
    }

    /// Poisoned snapshots until the pipeline has taken two more snapshots (at most
    /// [`POISON_FOR`]), then leave.
    async fn poison(&self, running: &PlanNotice) -> AttackEnd {
        let me = self.net.local_peer_id();
        let own = running
            .seat(&me)
            .map(|s| running.plan.assignments[s.index].stages());
        let others: Vec<PeerId> = running
            .planned_members()
            .into_iter()
            .filter(|p| *p != me)
            .collect();
        let costs = self.config.spec.stage_costs();
        let every = self.config.snapshot_every.max(1);
        let until = tokio::time::Instant::now() + POISON_FOR;
        let start = snapshots::lock(&self.snapshots).latest_step();
        loop {
            let latest = snapshots::lock(&self.snapshots).latest_step();
            if latest >= start + 2 * every || tokio::time::Instant::now() >= until {
                break;
            }
            for range in running.ranges() {
                let params: usize = costs[range.clone()]
                    .iter()
                    .map(|c| (c.param_bytes / 4) as usize)
                    .sum();
                // Ranges it does not hold at the pipeline's next snapshot step; every range
                // far ahead.
                let next = latest + every;
                let steps: &[u64] = if Some(&range) == own.as_ref() {
                    &[FAR_STEP]
                } else {
                    &[next, FAR_STEP]
                };
                for &step in steps {
                    let state = ShardState {
                        range: range.clone(),
                        steps: step,
                        params: vec![1e3; params],
                        optim: FlatAdamW {
                            steps: step,
                            m: vec![0.0; params],
                            v: vec![0.0; params],
                        },
                    };
                    let body = PipeBody::Snapshot {
                        start: range.start as u32,
                        end: range.end as u32,
                    };
                    // A range's state can be large: encoded off the async runtime.
                    let encoded = tokio::task::spawn_blocking(move || snapshots::encode(&state));
                    let (Ok(header), Ok(Ok(bytes))) = (
                        control_header(self.config.run, running.epoch, step, body),
                        encoded.await,
                    ) else {
                        continue;
                    };
                    for peer in &others {
                        let sent =
                            self.net
                                .send_payload(*peer, PayloadKind::Control, &header, &bytes);
                        let _ = tokio::time::timeout(JUNK_DEADLINE, sent).await;
                    }
                }
            }
            tokio::time::sleep(POISON_EVERY).await;
        }
        tracing::warn!("attack: poisoned snapshots sent; leaving the run");
        AttackEnd::Leave
    }
}

/// A stranger's attack on a forming pipeline: junk to every peer announcing the run, once
/// some are found (within the forming timeout); it never joins.
pub(crate) async fn junk_only(
    net: Network,
    config: PipelineConfig,
) -> Result<super::PipelineReport, PipelineError> {
    let attacker = Attacker {
        net,
        config: Arc::new(config),
        snapshots: Arc::new(Mutex::new(Snapshots::new(1))),
    };
    attacker.junk().await;
    Err(PipelineError::Protocol(
        "formation junk sent; this stranger never joins".into(),
    ))
}

impl Attacker {
    /// Junk to every peer of the run, once some are found (within the forming timeout).
    async fn junk(&self) {
        let mut deadline = tokio::time::Instant::now() + self.config.form_timeout;
        let mut changes = self.net.peer_changes();
        let mut settling = false;
        let targets = loop {
            let peers = self.net.peers().await.unwrap_or_default();
            let found: Vec<PeerId> = peers
                .iter()
                .filter(|p| p.connected)
                .filter(|p| {
                    p.announcement
                        .as_ref()
                        .is_some_and(|a| a.run == self.config.run)
                })
                .map(|p| p.peer_id)
                .collect();
            // Once one is found, the others a moment later (they connect one by one).
            if !found.is_empty() && !settling {
                settling = true;
                deadline = deadline.min(tokio::time::Instant::now() + Duration::from_millis(500));
            }
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { break found },
                () = tokio::time::sleep_until(deadline) => break found,
            }
        };
        let run = self.config.run;
        let junk: Vec<(Vec<u8>, Vec<u8>)> = [
            control_header(
                run,
                1,
                0,
                PipeBody::Forward {
                    targets: vec![0; 8],
                },
            ),
            control_header(run, 1, 0, PipeBody::Plan),
            control_header(run, 1, 0, PipeBody::Snapshot { start: 0, end: 1 }),
            control_header(run, 1, 0, PipeBody::Commit { grad_norm: 1.0 }),
        ]
        .into_iter()
        .filter_map(Result::ok)
        .map(|h| (h, vec![0xA5; 1024]))
        .collect();
        tracing::warn!(
            peers = targets.len(),
            "attack: sending junk while the pipeline forms"
        );
        for peer in targets {
            for (header, payload) in &junk {
                for _ in 0..JUNK_EACH {
                    let sent = self
                        .net
                        .send_payload(peer, PayloadKind::Control, header, payload);
                    if tokio::time::timeout(JUNK_DEADLINE, sent).await.is_err() {
                        break;
                    }
                }
            }
        }
    }
}

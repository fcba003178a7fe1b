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
//! Both watches look at the peer book when it changes (a join, a leave, an announcement with
//! new capacities) or this node's own capacity estimate does, at most once per [`LOOK_GAP`]:
//! with nothing changing they do nothing. They act only on a member set that held for two
//! looks at least [`LOOK_GAP`] apart (a look that finds the set changed asks for the second
//! itself): peers that join together are seldom seen in the same look, and one re-plan for
//! them all moves each shard once instead of once per joiner. Members the current plan left
//! out are never in that set: they stopped when it was agreed.

use std::time::{Duration, Instant};

use libp2p::PeerId;
use tokio::sync::watch;

use super::PipelineError;
use super::members::rebalance_input;
use super::membership::{Rules, citations, restricted};
use super::notice::PlanNotice;
use crate::errors::chain;
use crate::net::{Network, PeerInfo};
use crate::shard::capacity::Capacity;
use crate::shard::planner::{Decision, PlanInput, ReplanConfig, Replanner};

/// `input` with each other peer's capacity cited from its signed announcement in `peers`
/// (where the capacities were read), and the citations.
fn cited(
    rules: &Rules,
    mut input: PlanInput,
    me: PeerId,
    peers: &[PeerInfo],
) -> Result<(PlanInput, Vec<Vec<u8>>), PipelineError> {
    let origin = (&rules.run, &rules.model);
    let cited = citations::cite_known(&mut input, me, (&[], peers), origin)?;
    Ok((input, cited))
}

/// Shortest time between two looks, and how long a member set must hold to count.
const LOOK_GAP: Duration = Duration::from_secs(2);

/// Runs beside the issuer's shard; returns the next epoch's notice once one is adopted. Never
/// returns otherwise (errors: the network is gone, or the current inputs no longer plan).
pub(crate) async fn watch_for_rebalance(
    net: Network,
    rules: Rules,
    (current, excluded): (PlanNotice, Vec<PeerId>),
    own: watch::Receiver<Capacity>,
) -> Result<PlanNotice, PipelineError> {
    let current = (&current, &excluded[..]);
    if current.0.replicas > 1 {
        watch_for_joins(&net, &rules, current, own).await
    } else {
        watch_one_chain(&net, &rules, current, own).await
    }
}

async fn watch_one_chain(
    net: &Network,
    rules: &Rules,
    (current, excluded): (&PlanNotice, &[PeerId]),
    own: watch::Receiver<Capacity>,
) -> Result<PlanNotice, PipelineError> {
    let mut replanner = Replanner::new(ReplanConfig::default());
    replanner.update(&restricted(&current.input, &current.planned_members()))?;
    let mut watch = Watch::new(net, rules, (current, excluded), own);
    loop {
        let (members, input, cited) = watch.next_held().await?;
        match replanner.update(&input) {
            Ok(Decision::Adopted { trigger, gain }) => {
                tracing::info!(?trigger, ?gain, "re-balancing the pipeline");
                let mut notice = PlanNotice::compute(
                    current.epoch + 1,
                    current.placement,
                    &members,
                    input,
                    current.replicas,
                )?;
                notice.citations = cited;
                return Ok(notice);
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
    (current, excluded): (&PlanNotice, &[PeerId]),
    own: watch::Receiver<Capacity>,
) -> Result<PlanNotice, PipelineError> {
    let min_gain = ReplanConfig::default().min_gain;
    let mut considered = current.planned_members();
    let mut watch = Watch::new(net, rules, (current, excluded), own);
    loop {
        let (members, input, cited) = watch.next_held().await?;
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
                    return Ok(PlanNotice {
                        citations: cited,
                        ..with
                    });
                }
                tracing::debug!(gain, "join considered, placement kept");
            }
            (Err(err), _) | (_, Err(err)) => {
                tracing::debug!(err = %chain(&err), "re-plan not possible")
            }
        }
    }
}

/// What both watches look at: the peer book, at the times [`Looks`] says, until the member set
/// held for two looks and its capacities can be cited.
struct Watch<'a> {
    net: &'a Network,
    rules: &'a Rules,
    current: &'a PlanNotice,
    /// Members blamed for breaking the protocol: never candidates.
    excluded: &'a [PeerId],
    me: PeerId,
    settle: Settle,
    looks: Looks,
}

impl<'a> Watch<'a> {
    fn new(
        net: &'a Network,
        rules: &'a Rules,
        (current, excluded): (&'a PlanNotice, &'a [PeerId]),
        own: watch::Receiver<Capacity>,
    ) -> Self {
        Self {
            net,
            rules,
            current,
            excluded,
            me: net.local_peer_id(),
            settle: Settle::new(current),
            looks: Looks::new(net, own),
        }
    }

    /// The next member set that held, the planner's input for it with each other peer's
    /// capacity cited, and the citations.
    async fn next_held(&mut self) -> Result<(Vec<PeerId>, PlanInput, Vec<Vec<u8>>), PipelineError> {
        loop {
            let own = self.looks.next().await?;
            let peers = self.net.peers().await?;
            let (members, input) = rebalance_input(
                self.rules,
                (self.current, self.excluded),
                (&peers, crate::net::now_ms()),
                self.me,
                own,
            );
            if !self.looks.looked(self.settle.held(&members)) {
                continue;
            }
            match cited(self.rules, input, self.me, &peers) {
                Ok((input, cited)) => return Ok((members, input, cited)),
                Err(err) => tracing::debug!(err = %chain(&err), "re-plan not possible"),
            }
        }
    }
}

/// When the watch looks next (no clock inside: time is an argument): after a change, but not
/// sooner than [`LOOK_GAP`] after the last look; and [`LOOK_GAP`] after a look that found the
/// member set still changing, to see whether it held.
#[derive(Debug)]
struct Schedule {
    last: Instant,
    next: Option<Instant>,
}

impl Schedule {
    /// A watch started at `now`: its first look (the set it starts from) after one gap.
    fn new(now: Instant) -> Self {
        Self {
            last: now,
            next: Some(now + LOOK_GAP),
        }
    }

    /// Something the watch reads changed at `now`.
    fn changed(&mut self, now: Instant) {
        let at = now.max(self.last + LOOK_GAP);
        self.next = Some(self.next.map_or(at, |next| next.min(at)));
    }

    /// The watch looked at `now`; `settled` says whether the member set held.
    fn looked(&mut self, now: Instant, settled: bool) {
        self.last = now;
        self.next = (!settled).then(|| now + LOOK_GAP);
    }
}

/// The watch's inputs (the peer book's changes and this node's capacity) and its [`Schedule`].
struct Looks {
    changes: watch::Receiver<u64>,
    own: watch::Receiver<Capacity>,
    /// Whether `own` still has a sender (its changes are no longer awaited once it is gone).
    own_open: bool,
    schedule: Schedule,
}

impl Looks {
    fn new(net: &Network, own: watch::Receiver<Capacity>) -> Self {
        let mut changes = net.peer_changes();
        changes.mark_unchanged();
        Self {
            changes,
            own,
            own_open: true,
            schedule: Schedule::new(now()),
        }
    }

    /// Waits for the next look and returns this node's capacity for it.
    async fn next(&mut self) -> Result<Capacity, PipelineError> {
        loop {
            let next = self.schedule.next;
            tokio::select! {
                biased;
                changed = self.changes.changed() => {
                    changed.map_err(|_| crate::net::NetError::Shutdown)?;
                    self.schedule.changed(now());
                }
                changed = self.own.changed(), if self.own_open => match changed {
                    Ok(()) => self.schedule.changed(now()),
                    Err(_) => self.own_open = false,
                },
                () = sleep_until(next), if next.is_some() => {
                    return Ok(*self.own.borrow_and_update());
                }
            }
        }
    }

    /// Records a look; returns `settled` (whether the member set held).
    fn looked(&mut self, settled: bool) -> bool {
        self.schedule.looked(now(), settled);
        settled
    }
}

fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

async fn sleep_until(at: Option<Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_look_comes_one_gap_after_the_start() {
        let t0 = Instant::now();
        assert_eq!(Schedule::new(t0).next, Some(t0 + LOOK_GAP));
    }

    #[test]
    fn with_nothing_changing_a_settled_watch_does_not_look_again() {
        let t0 = Instant::now();
        let mut schedule = Schedule::new(t0);
        schedule.looked(t0 + LOOK_GAP, true);
        assert_eq!(schedule.next, None);
    }

    #[test]
    fn a_change_is_looked_at_no_sooner_than_a_gap_after_the_last_look() {
        let t0 = Instant::now();
        let mut schedule = Schedule::new(t0);
        schedule.looked(t0 + LOOK_GAP, true);
        let soon = t0 + LOOK_GAP + Duration::from_millis(300);
        schedule.changed(soon);
        assert_eq!(schedule.next, Some(t0 + 2 * LOOK_GAP));
        // More changes meanwhile (announcements) do not push the look back.
        schedule.changed(soon + Duration::from_millis(500));
        assert_eq!(schedule.next, Some(t0 + 2 * LOOK_GAP));
        let late = t0 + 5 * LOOK_GAP;
        schedule.looked(t0 + 2 * LOOK_GAP, true);
        schedule.changed(late);
        assert_eq!(
            schedule.next,
            Some(late),
            "long after the last look: at once"
        );
    }

    #[test]
    fn a_look_that_finds_the_set_changing_asks_for_a_second() {
        let t0 = Instant::now();
        let mut schedule = Schedule::new(t0);
        let at = t0 + LOOK_GAP;
        schedule.looked(at, false);
        assert_eq!(schedule.next, Some(at + LOOK_GAP));
    }
}

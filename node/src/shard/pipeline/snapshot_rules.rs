//! Which snapshots a member keeps (pure functions of its plan): a snapshot of a range is
//! taken only from the peer the plan seats on that range, or, as the parts a next plan is
//! built from, from a member of the plan the parts belong to; never of a step beyond what the
//! pipeline can have reached. A kept snapshot may become the model a re-plan resumes from,
//! and kept ones push older ones out: without these rules one member could fill every range
//! with poison at a step far ahead, and the next re-plan would resume from it.

use std::ops::Range;

use libp2p::PeerId;

use super::notice::PlanNotice;

/// What a member knows when a snapshot arrives.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SnapshotView<'a> {
    /// The plan of the stage running now.
    pub running: Option<&'a PlanNotice>,
    /// The plan of a stage waiting for the parts it is built from.
    pub pending: Option<&'a PlanNotice>,
    /// The newest step of any snapshot held (this node's own included).
    pub latest_step: u64,
    /// Steps between two snapshots.
    pub every: u64,
}

/// Why a snapshot is not kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SnapshotRefusal {
    /// Of an epoch that is over, or with no plan to check it against.
    #[error("not of a plan this node runs or awaits")]
    NoPlan,
    /// From a peer the plan does not seat on that range.
    #[error("not from the holder of that range")]
    NotTheHolder,
    /// Of a step the pipeline cannot have reached.
    #[error("of a step beyond the pipeline's")]
    Ahead,
}

/// Whether `plan` seats `peer` on exactly the stages `range` (in any chain).
fn holds(plan: &PlanNotice, peer: &PeerId, range: &Range<usize>) -> bool {
    plan.seat(peer)
        .is_some_and(|seat| plan.plan.assignments[seat.index].stages() == *range)
}

/// Checks a snapshot's header: of stages `range`, for plan `epoch`, from `from`.
pub(crate) fn check_header(
    view: SnapshotView<'_>,
    from: &PeerId,
    epoch: u64,
    range: &Range<usize>,
) -> Result<(), SnapshotRefusal> {
    if let Some(running) = view.running {
        return if epoch < running.epoch {
            Err(SnapshotRefusal::NoPlan)
        } else if epoch == running.epoch {
            holds(running, from, range)
                .then_some(())
                .ok_or(SnapshotRefusal::NotTheHolder)
        } else {
            // The parts of a next plan: the running plan's ranges, from one of its members.
            (running.is_member(from) && running.ranges().contains(range))
                .then_some(())
                .ok_or(SnapshotRefusal::NotTheHolder)
        };
    }
    let Some(pending) = view.pending else {
        return Err(SnapshotRefusal::NoPlan);
    };
    if epoch != pending.epoch {
        return Err(SnapshotRefusal::NoPlan);
    }
    let part = pending.is_member(from) && pending.previous_ranges.contains(range);
    (part || holds(pending, from, range))
        .then_some(())
        .ok_or(SnapshotRefusal::NotTheHolder)
}

/// Checks a decoded snapshot's step: at most one snapshot period past the newest held; the
/// parts of a pending plan exactly at its resume step.
pub(crate) fn check_step(
    view: SnapshotView<'_>,
    epoch: u64,
    step: u64,
) -> Result<(), SnapshotRefusal> {
    if let Some(pending) = view.pending.filter(|p| p.epoch == epoch)
        && view.running.is_none()
        && step == pending.resume_step
    {
        return Ok(());
    }
    if step > view.latest_step.saturating_add(view.every.max(1)) {
        return Err(SnapshotRefusal::Ahead);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::pipeline::Placement;
    use crate::shard::planner::{PeerCapacity, PlanInput, PlanStage};

    fn peers(n: u8) -> Vec<PeerId> {
        (1..=n)
            .map(|seed| {
                libp2p::identity::Keypair::ed25519_from_bytes([seed; 32])
                    .expect("a valid secret")
                    .public()
                    .to_peer_id()
            })
            .collect()
    }

    /// Three members on six equal stages: each holds two.
    fn plan(epoch: u64, members: &[PeerId]) -> PlanNotice {
        let stages = vec![
            PlanStage {
                flops_per_sample: 1e6,
                activation_bytes_per_sample: 64,
                param_bytes: 1024,
            };
            6
        ];
        let capacities = members
            .iter()
            .map(|p| PeerCapacity {
                id: p.to_string(),
                flops_per_sec: 1e9,
                memory_bytes: 1 << 30,
            })
            .collect();
        let input = PlanInput::new(stages, capacities);
        PlanNotice::compute(epoch, Placement::Even, members, input, 1).expect("a plan")
    }

    fn range_of(plan: &PlanNotice, peer: &PeerId) -> Range<usize> {
        let seat = plan.seat(peer).expect("seated");
        plan.plan.assignments[seat.index].stages()
    }

    fn view<'a>(
        running: Option<&'a PlanNotice>,
        pending: Option<&'a PlanNotice>,
    ) -> SnapshotView<'a> {
        SnapshotView {
            running,
            pending,
            latest_step: 10,
            every: 2,
        }
    }

    /// Snapshot poisoning by a member: a peer of the running plan sends snapshots of another
    /// member's range (before: kept from any peer of the plan), or of a step far ahead (kept,
    /// they pushed the honest snapshots out and a re-plan resumed from the poison).
    #[test]
    fn only_a_ranges_holder_sends_its_snapshots_and_none_from_the_future() {
        let ids = peers(4);
        let running = plan(3, &ids[..3]);
        let (attacker, victim, stranger) = (ids[0], ids[1], ids[3]);
        let theirs = range_of(&running, &victim);
        let own = range_of(&running, &attacker);
        let v = view(Some(&running), None);
        assert_eq!(check_header(v, &victim, 3, &theirs), Ok(()));
        assert_eq!(
            check_header(v, &attacker, 3, &theirs),
            Err(SnapshotRefusal::NotTheHolder)
        );
        assert_eq!(
            check_header(v, &stranger, 3, &theirs),
            Err(SnapshotRefusal::NotTheHolder)
        );
        assert_eq!(
            check_header(v, &attacker, 2, &own),
            Err(SnapshotRefusal::NoPlan)
        );
        // A next plan's parts: the running plan's ranges, from its members.
        assert_eq!(check_header(v, &attacker, 4, &theirs), Ok(()));
        assert_eq!(
            check_header(v, &stranger, 4, &theirs),
            Err(SnapshotRefusal::NotTheHolder)
        );
        assert_eq!(
            check_header(v, &attacker, 4, &(0..6)),
            Err(SnapshotRefusal::NotTheHolder)
        );
        // Steps: one period past the newest held at most.
        assert_eq!(check_step(v, 3, 12), Ok(()));
        assert_eq!(check_step(v, 3, 13), Err(SnapshotRefusal::Ahead));
        assert_eq!(check_step(v, 3, u64::MAX), Err(SnapshotRefusal::Ahead));
    }

    /// A member waiting for the parts of its next plan keeps only those: the previous ranges
    /// at the resume step, from a member of that plan; with no plan at all, nothing.
    #[test]
    fn a_pending_plan_takes_its_parts_and_nothing_else() {
        let ids = peers(4);
        let mut pending = plan(5, &ids[..3]);
        pending.previous_ranges = vec![0..3, 3..6];
        pending.resume_step = 40;
        let v = view(None, Some(&pending));
        assert_eq!(check_header(v, &ids[2], 5, &(0..3)), Ok(()));
        assert_eq!(check_step(v, 5, 40), Ok(()));
        assert_eq!(check_step(v, 5, 42), Err(SnapshotRefusal::Ahead));
        assert_eq!(
            check_header(v, &ids[3], 5, &(0..3)),
            Err(SnapshotRefusal::NotTheHolder)
        );
        assert_eq!(
            check_header(v, &ids[2], 6, &(0..3)),
            Err(SnapshotRefusal::NoPlan)
        );
        assert_eq!(
            check_header(view(None, None), &ids[2], 5, &(0..3)),
            Err(SnapshotRefusal::NoPlan)
        );
    }
}

//! The driver's inbound side: plan notices and break reports go to the membership, snapshots
//! are decoded off the runtime and kept, and each forward, backward or commit goes to the
//! stage of its epoch (or waits for it).

use super::*;
use crate::errors::chain;
use crate::shard::pipeline::notice::decode_blame;
use crate::shard::pipeline::snapshot_rules::{self, SnapshotRefusal, SnapshotView};

impl Driver {
    pub(super) fn on_decoded(&mut self, done: Result<Decoded, tokio::task::JoinError>) {
        match done {
            Ok((peer, epoch, Ok(state))) => {
                let view = self.snapshot_view();
                if let Err(refusal) = snapshot_rules::check_step(view, epoch, state.steps) {
                    self.refuse(&peer, "snapshot-ahead", &refusal);
                    return;
                }
                snapshots::lock(&self.snapshots).insert(state);
                self.try_start();
            }
            Ok((peer, _, Err(err))) => {
                self.refuse(&peer, "snapshot-invalid", &err);
            }
            Err(err) => tracing::warn!(err = %chain(&err), "snapshot decoding failed"),
        }
    }

    /// What the snapshot rules need to know now.
    fn snapshot_view(&self) -> SnapshotView<'_> {
        SnapshotView {
            running: self.running.as_ref().map(|r| &r.notice),
            pending: self.pending.as_ref().map(|p| &p.notice),
            latest_step: snapshots::lock(&self.snapshots).latest_step(),
            every: self.config.snapshot_every,
        }
    }

    /// Counts and logs a refused pipeline message (debug: a peer chooses how many it sends).
    fn refuse(
        &mut self,
        peer: &PeerId,
        reason: &'static str,
        err: &(dyn std::error::Error + 'static),
    ) {
        *self.refused.entry(reason).or_default() += 1;
        tracing::debug!(%peer, reason, err = %chain(err), "pipeline message refused");
    }

    pub(super) fn on_message(&mut self, message: Option<Inbound>) {
        let Some(message) = message else {
            self.result = Some(Err(crate::net::NetError::Shutdown.into()));
            return;
        };
        let (from, epoch) = (message.peer, message.header.epoch);
        match message.header.body {
            PipeBody::Plan => self.handle(Event::Notice {
                now: now(),
                from,
                payload: message.payload,
            }),
            PipeBody::Broken => match decode_blame(&message.payload) {
                Ok(blame) => self.handle(Event::Broken {
                    now: now(),
                    from,
                    epoch,
                    blame,
                }),
                Err(err) => self.refuse(&from, "break-report", &err),
            },
            PipeBody::Probe => {}
            PipeBody::Snapshot { start, end } => self.decode_snapshot(message, start, end),
            PipeBody::Forward { .. } | PipeBody::Backward { .. } | PipeBody::Commit { .. } => {
                self.route(message);
            }
        }
    }

    /// Decodes a snapshot another member sent, off the async runtime (at most [`DECODING`] at
    /// once), if the snapshot rules keep one of its range and epoch from its sender.
    pub(super) fn decode_snapshot(&mut self, message: Inbound, start: u32, end: u32) {
        let (peer, epoch) = (message.peer, message.header.epoch);
        let range = start as usize..end as usize;
        if let Err(refusal) =
            snapshot_rules::check_header(self.snapshot_view(), &peer, epoch, &range)
        {
            let reason = match refusal {
                SnapshotRefusal::NoPlan => "snapshot-no-plan",
                _ => "snapshot-not-holder",
            };
            self.refuse(&peer, reason, &refusal);
            return;
        }
        let payload = message.payload;
        self.decoding.spawn(async move {
            let decoded =
                tokio::task::spawn_blocking(move || snapshots::decode(&payload, start, end)).await;
            (
                peer,
                epoch,
                decoded.map_err(PipelineError::from).and_then(|r| r),
            )
        });
    }

    /// A forward, backward or commit: to the running stage if it is of its epoch, kept if it
    /// is of a later one, dropped if it is of an epoch that is over.
    pub(super) fn route(&mut self, message: Inbound) {
        let epoch = message.header.epoch;
        let current = self.running.as_ref().map(|r| r.notice.epoch);
        match current {
            Some(current) if epoch == current => {
                if let Some(running) = &mut self.running {
                    running.handoff.deliver(message);
                }
            }
            Some(current) if epoch < current => {
                tracing::debug!(epoch, "pipeline message of an epoch that is over, dropped");
            }
            None if epoch <= self.ended_epoch => {
                tracing::debug!(epoch, "pipeline message of an epoch that is over, dropped");
            }
            _ => {
                if self.early.len() >= EARLY_MESSAGES {
                    self.early.pop_front();
                    tracing::warn!(
                        "too many pipeline messages before their plan; the oldest dropped"
                    );
                }
                self.early.push_back(message);
            }
        }
    }
}

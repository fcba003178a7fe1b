//! The driver's inbound side: plan notices and break reports go to the membership, snapshots
//! are decoded off the runtime and kept, and each forward, backward or commit goes to the
//! stage of its epoch (or waits for it).

use super::*;
use crate::errors::chain;

impl Driver {
    pub(super) fn on_decoded(
        &mut self,
        done: Result<(PeerId, Result<ShardState, PipelineError>), tokio::task::JoinError>,
    ) {
        match done {
            Ok((_, Ok(state))) => {
                snapshots::lock(&self.snapshots).insert(state);
                self.try_start();
            }
            Ok((peer, Err(err))) => tracing::warn!(%peer, err = %chain(&err), "snapshot refused"),
            Err(err) => tracing::warn!(err = %chain(&err), "snapshot decoding failed"),
        }
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
            PipeBody::Broken => self.handle(Event::Broken { from, epoch }),
            PipeBody::Probe => {}
            PipeBody::Snapshot { start, end } => self.decode_snapshot(message, start, end),
            PipeBody::Forward { .. } | PipeBody::Backward { .. } | PipeBody::Commit { .. } => {
                self.route(message);
            }
        }
    }

    /// Decodes a snapshot another member sent, off the async runtime (at most [`DECODING`] at
    /// once). While a stage runs, only snapshots of its epoch from a peer of its plan, or of a
    /// later epoch, are kept.
    pub(super) fn decode_snapshot(&mut self, message: Inbound, start: u32, end: u32) {
        if let Some(running) = &self.running {
            let epoch = message.header.epoch;
            // Of this epoch from a peer of its plan, or of a later one from one of its members
            // (the member re-planning).
            let from_plan = running.notice.is_planned(&message.peer);
            let from_member = running.notice.is_member(&message.peer);
            let current = running.notice.epoch;
            if epoch < current
                || (epoch == current && !from_plan)
                || (epoch > current && !from_member)
            {
                tracing::debug!(peer = %message.peer, epoch, "snapshot not for this plan, dropped");
                return;
            }
        }
        let (peer, payload) = (message.peer, message.payload);
        self.decoding.spawn(async move {
            let decoded =
                tokio::task::spawn_blocking(move || snapshots::decode(&payload, start, end)).await;
            (peer, decoded.map_err(PipelineError::from).and_then(|r| r))
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

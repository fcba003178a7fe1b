//! What a stage does after each update: a gossip-averaging sync of its range with the range's
//! holders in the other chains when due, then a snapshot of the range when due.

use murmur_protocol::pipeline::{PipeBody, PipeHeader};

use super::super::outbox::Delivery;
use super::super::snapshots;
use super::Stage;
use crate::net::PayloadKind;
use crate::shard::pipeline::PipelineError;

impl Stage {
    /// After the update of step `done` (1-based): average the range with its other holders
    /// when due, then snapshot it when due.
    pub(super) async fn after_update(&mut self, done: u64) -> Result<(), PipelineError> {
        self.average(done).await?;
        self.snapshot(done).await
    }

    /// Every `average_every` steps, one gossip-averaging sync of the range with its holders in
    /// the other chains (see [`RangeAveraging`]).
    async fn average(&mut self, done: u64) -> Result<(), PipelineError> {
        let every = self.config.average_every;
        let Some(averaging) = self.averaging.as_mut().filter(|_| self.averages) else {
            return Ok(());
        };
        if every == 0 || !done.is_multiple_of(every) {
            return Ok(());
        }
        let params = self.compute.call(|s| s.params()).await??;
        let samples = every * self.config.train.batch_size as u64;
        let steps = u32::try_from(every).unwrap_or(u32::MAX);
        let merged = averaging.sync(params, samples, steps).await?;
        self.compute.call(move |s| s.set_params(&merged)).await??;
        Ok(())
    }

    /// Every `snapshot_every` steps, snapshot the shard, keep the snapshot and send it to every
    /// other peer of the plan (all chains).
    async fn snapshot(&mut self, done: u64) -> Result<(), PipelineError> {
        let every = self.config.snapshot_every;
        // No snapshot after the last step: the run is over, and members may already be gone.
        let last_step = done >= self.config.steps;
        if every == 0 || !done.is_multiple_of(every) || last_step || self.position.planned.len() < 2
        {
            return Ok(());
        }
        let state = self.compute.call(|s| s.state()).await??;
        let (state, bytes) = tokio::task::spawn_blocking(move || {
            let bytes = snapshots::encode(&state);
            (state, bytes)
        })
        .await?;
        let bytes = bytes?;
        let range = &self.position.range;
        let body = PipeBody::Snapshot {
            start: range.start as u32,
            end: range.end as u32,
        };
        let me = self.position.chain[self.position.index];
        for peer in self
            .position
            .planned
            .clone()
            .into_iter()
            .filter(|p| *p != me)
        {
            let header = self.header(done, 0, body.clone());
            let header = PipeHeader {
                tensor: None,
                ..header
            };
            // Peers of other chains may already have finished their steps.
            let delivery = if self.position.chain.contains(&peer) {
                Delivery::Required
            } else {
                Delivery::BestEffort
            };
            self.outbox
                .send_as(peer, PayloadKind::Control, &header, bytes.clone(), delivery)
                .await?;
        }
        super::snapshots::lock(&self.snapshots).insert(state);
        Ok(())
    }
}

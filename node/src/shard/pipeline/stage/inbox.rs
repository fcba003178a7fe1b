//! How a stage waits: for the next message of its epoch from the neighbour it expects, within
//! the peer deadline, ending the wait at once when a send fails or the driver stops it.

use std::time::Duration;

use libp2p::PeerId;
use murmur_protocol::pipeline::PipeBody;

use super::super::mailbox::Inbound;
use super::super::membership::{EpochEnd, Loss};
use super::{Halt, Stage, misbehaved};
use crate::shard::pipeline::PipelineError;

impl Stage {
    /// For a shard with no neighbours, which never waits on a message: ends the epoch when the
    /// driver stopped it, or when an earlier send failed.
    pub(super) fn check_stop(&mut self) -> Result<(), Halt> {
        if self.stop.is_cancelled() {
            return Err(Halt::End(EpochEnd::Stopped));
        }
        self.outbox.reap()?;
        Ok(())
    }

    /// The next message of this epoch from an expected neighbour, within the deadline.
    pub(super) async fn next_message(
        &mut self,
        waiting_on: Option<PeerId>,
    ) -> Result<Inbound, Halt> {
        let wait = self.config.peer_deadline;
        self.message_within(wait).await?.ok_or_else(|| {
            Halt::End(EpochEnd::NeighbourLost {
                peer: waiting_on.unwrap_or(self.position.chain[0]),
                cause: Loss::Silent(wait),
            })
        })
    }

    /// The next message of this epoch from an expected neighbour, if one comes within `wait`
    /// (`Duration::ZERO`: only if one is queued already). A failed send or a stop ends the
    /// wait at once.
    pub(super) async fn message_within(&mut self, wait: Duration) -> Result<Option<Inbound>, Halt> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // A stop decides before a send that failed meanwhile: the driver stopped the stage
            // for a reason of its own (a later plan, a break report).
            if self.stop.is_cancelled() {
                return Err(Halt::End(EpochEnd::Stopped));
            }
            self.outbox.reap()?;
            let message = tokio::select! {
                biased;
                () = self.stop.cancelled() => return Err(Halt::End(EpochEnd::Stopped)),
                failed = self.outbox.failure() => return Err(failed.into()),
                message = self.mailbox.next() => message,
                () = tokio::time::sleep_until(deadline) => return Ok(None),
            };
            // The driver dropped this epoch's inbox: it is over.
            let Some(message) = message else {
                return Err(Halt::End(EpochEnd::Stopped));
            };
            let h = &message.header;
            let expected = match h.body {
                PipeBody::Forward { .. } | PipeBody::Commit { .. } => self.position.prev(),
                PipeBody::Backward { .. } => self.position.next(),
                PipeBody::Plan | PipeBody::Snapshot { .. } | PipeBody::Probe | PipeBody::Broken => {
                    None
                }
            };
            if h.epoch != self.position.epoch || Some(message.peer) != expected {
                tracing::debug!(peer = %message.peer, epoch = h.epoch, "pipeline message not for this position, dropped");
                continue;
            }
            if h.micros != self.config.micro_batches {
                let err = PipelineError::Protocol(format!(
                    "{} micro-batches per step, this run uses {}",
                    h.micros, self.config.micro_batches
                ));
                return Err(misbehaved(message.peer, err));
            }
            return Ok(Some(message));
        }
    }
}

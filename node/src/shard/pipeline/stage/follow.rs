//! Every other shard's loop: answers forwards (run and send on, or compute the loss on the
//! last shard), backwards (send the input gradient up, with the squared norms from here down on
//! the step's last one) and commits (update and pass on); later steps' messages wait their turn.

use std::collections::HashSet;

use murmur_protocol::pipeline::{PipeBody, PipeHeader};

use super::{Halt, Stage, blame, decode_off_thread, misbehaved};
use crate::net::PayloadKind;
use crate::shard::pipeline::PipelineError;
use crate::shard::pipeline::mailbox::Inbound;

/// A following shard's progress through one step.
#[derive(Debug, Default)]
struct Step {
    /// The step (0-based).
    at: u64,
    /// Backwards done (on the last shard: forwards, each with its backward).
    done: u32,
    /// The downstream shards' squared gradient norm (with the step's last backward).
    tail: Option<f64>,
    /// (message kind, micro-batch) pairs handled: retried sends may repeat.
    seen: HashSet<(u8, u32)>,
    /// Messages of later steps, handled after this step's commit.
    later: Vec<Inbound>,
}

impl Stage {
    /// Every other shard: answers forwards, backwards and commits.
    pub(super) async fn follow(&mut self) -> Result<(), Halt> {
        let micros = self.config.micro_batches;
        let mut step = Step {
            at: self.resume,
            ..Step::default()
        };
        while step.at < self.config.steps {
            let waiting_on = if step.done == micros && !self.last {
                self.position.next()
            } else {
                self.position.prev()
            };
            let message = self.next_message(waiting_on).await?;
            let (h, from) = (&message.header, message.peer);
            if h.step > step.at {
                if step.later.len() >= 4 * micros as usize {
                    let err = PipelineError::Protocol("too many messages ahead".into());
                    return Err(misbehaved(from, err));
                }
                step.later.push(message);
                continue;
            }
            if h.step < step.at || !step.seen.insert((kind_tag(&h.body), h.micro)) {
                continue;
            }
            // Each forward is kept (its graph) until its backward: only this step's
            // micro-batches may be kept.
            if h.micro >= micros {
                let err = PipelineError::Protocol(format!(
                    "micro-batch {} of a step of {micros}",
                    h.micro
                ));
                return Err(misbehaved(from, err));
            }
            let Inbound {
                header, payload, ..
            } = message;
            match header.body.clone() {
                PipeBody::Forward { targets } => {
                    (self.on_forward(&mut step, header, payload, targets).await)
                        .map_err(blame(from))?;
                }
                PipeBody::Backward { loss, tail_norm_sq } => {
                    (self
                        .on_backward(&mut step, header, payload, (loss, tail_norm_sq))
                        .await)
                        .map_err(blame(from))?;
                }
                PipeBody::Commit { grad_norm } => {
                    self.on_commit(&mut step, from, grad_norm).await?;
                }
                PipeBody::Plan | PipeBody::Snapshot { .. } | PipeBody::Probe | PipeBody::Broken => {
                }
            }
        }
        Ok(())
    }

    /// A forward: run it and send it on, or, on the last shard, compute the loss and send the
    /// input gradient back (with the step's last one, the squared norm from here down).
    async fn on_forward(
        &mut self,
        step: &mut Step,
        h: PipeHeader,
        payload: Vec<u8>,
        targets: Vec<u32>,
    ) -> Result<(), PipelineError> {
        let input = decode_off_thread(h.tensor.clone(), payload).await?;
        if !self.last {
            return self.forward_on(step.at, h.micro, input, targets).await;
        }
        let scale = 1.0 / self.config.micro_batches as f32;
        let (loss, grad) = self
            .compute
            .call(move |s| s.loss_backward(input, &targets, scale))
            .await??;
        step.done += 1;
        let tail_norm_sq = if step.done == self.config.micro_batches {
            Some(self.compute.call(|s| s.grad_norm_sq()).await?)
        } else {
            None
        };
        let body = PipeBody::Backward { loss, tail_norm_sq };
        let header = self.header(step.at, h.micro, body);
        let prev = self.position.prev();
        self.send(prev, PayloadKind::Gradients, header, grad).await
    }

    /// A backward from downstream: send the input gradient up (with the step's last one, the
    /// squared gradient norm from here down).
    async fn on_backward(
        &mut self,
        step: &mut Step,
        h: PipeHeader,
        payload: Vec<u8>,
        (loss, tail_norm_sq): (f32, Option<f64>),
    ) -> Result<(), PipelineError> {
        let grad = decode_off_thread(h.tensor.clone(), payload).await?;
        let up = self
            .compute
            .call(move |s| s.backward(h.micro, &grad))
            .await??;
        step.done += 1;
        step.tail = step.tail.or(tail_norm_sq);
        let tail_norm_sq = if step.done == self.config.micro_batches {
            let own = self.compute.call(|s| s.grad_norm_sq()).await?;
            let tail = step.tail.ok_or_else(|| {
                PipelineError::Protocol("downstream gradient norm missing".into())
            })?;
            Some(own + tail)
        } else {
            None
        };
        let header = self.header(step.at, h.micro, PipeBody::Backward { loss, tail_norm_sq });
        let prev = self.position.prev();
        self.send(prev, PayloadKind::Gradients, header, up).await
    }

    /// The step's commit: update, pass it on, report, and go on to the next step (with the
    /// messages of it that came early).
    async fn on_commit(
        &mut self,
        step: &mut Step,
        from: libp2p::PeerId,
        grad_norm: f32,
    ) -> Result<(), Halt> {
        let micros = self.config.micro_batches;
        if step.done != micros {
            let err = PipelineError::Protocol(format!(
                "commit of step {} after {} of {micros} backwards",
                step.at, step.done
            ));
            return Err(misbehaved(from, err));
        }
        self.compute.call(move |s| s.apply(grad_norm)).await??;
        if !self.last {
            let header = self.header(step.at, 0, PipeBody::Commit { grad_norm });
            let next = self.position.next();
            self.send(next, PayloadKind::Control, header, None).await?;
        }
        let later = std::mem::take(&mut step.later);
        *step = Step {
            at: step.at + 1,
            ..Step::default()
        };
        self.report(step.at, None);
        self.after_update(step.at).await?;
        self.mailbox.requeue(later);
        Ok(())
    }
}

fn kind_tag(body: &PipeBody) -> u8 {
    match body {
        PipeBody::Forward { .. } => 0,
        PipeBody::Backward { .. } => 1,
        PipeBody::Commit { .. } => 2,
        PipeBody::Plan => 3,
        PipeBody::Snapshot { .. } => 4,
        PipeBody::Probe => 5,
        PipeBody::Broken => 6,
    }
}

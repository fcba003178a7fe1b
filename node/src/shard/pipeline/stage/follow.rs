//! Every other shard's loop: answers forwards (run and send on, or compute the loss on the
//! last shard), backwards (send the input gradient up, with the squared norms from here down on
//! the step's last one) and commits (update and pass on); later steps' messages wait their turn.

use std::collections::HashSet;

use murmur_protocol::pipeline::PipeBody;

use super::{Halt, Stage, decode_off_thread};
use crate::net::PayloadKind;
use crate::shard::pipeline::PipelineError;
use crate::shard::pipeline::mailbox::Inbound;

impl Stage {
    /// Every other shard: answers forwards, backwards and commits.
    pub(super) async fn follow(&mut self) -> Result<(), Halt> {
        let micros = self.config.micro_batches;
        let scale = 1.0 / micros as f32;
        let (mut step, mut done, mut tail) = (self.resume, 0u32, None::<f64>);
        let mut later: Vec<Inbound> = Vec::new();
        // (message kind, micro-batch) pairs handled this step: retried sends may repeat.
        let mut seen: HashSet<(u8, u32)> = HashSet::new();
        while step < self.config.steps {
            let waiting_on = if done == micros && !self.last {
                self.position.next()
            } else {
                self.position.prev()
            };
            let message = self.next_message(waiting_on).await?;
            let h = message.header;
            if h.step > step {
                if later.len() >= 4 * micros as usize {
                    return Err(PipelineError::Protocol("too many messages ahead".into()).into());
                }
                later.push(Inbound {
                    header: h,
                    ..message
                });
                continue;
            }
            if h.step < step || !seen.insert((kind_tag(&h.body), h.micro)) {
                continue;
            }
            // Each forward is kept (its graph) until its backward: only this step's
            // micro-batches may be kept.
            if h.micro >= micros {
                return Err(PipelineError::Protocol(format!(
                    "micro-batch {} of a step of {micros}",
                    h.micro
                ))
                .into());
            }
            match h.body {
                PipeBody::Forward { targets } => {
                    let input = decode_off_thread(h.tensor.clone(), message.payload).await?;
                    if self.last {
                        let (loss, grad) = self
                            .compute
                            .call(move |s| s.loss_backward(input, &targets, scale))
                            .await??;
                        done += 1;
                        let tail_norm_sq = if done == micros {
                            Some(self.compute.call(|s| s.grad_norm_sq()).await?)
                        } else {
                            None
                        };
                        let body = PipeBody::Backward { loss, tail_norm_sq };
                        let header = self.header(step, h.micro, body);
                        self.send(self.position.prev(), PayloadKind::Gradients, header, grad)
                            .await?;
                    } else {
                        self.forward_on(step, h.micro, input, targets).await?;
                    }
                }
                PipeBody::Backward { loss, tail_norm_sq } => {
                    let grad = decode_off_thread(h.tensor.clone(), message.payload).await?;
                    let up = self
                        .compute
                        .call(move |s| s.backward(h.micro, &grad))
                        .await??;
                    done += 1;
                    tail = tail.or(tail_norm_sq);
                    let tail_norm_sq = if done == micros {
                        let own = self.compute.call(|s| s.grad_norm_sq()).await?;
                        Some(
                            own + tail.ok_or_else(|| {
                                PipelineError::Protocol("downstream gradient norm missing".into())
                            })?,
                        )
                    } else {
                        None
                    };
                    let header =
                        self.header(step, h.micro, PipeBody::Backward { loss, tail_norm_sq });
                    self.send(self.position.prev(), PayloadKind::Gradients, header, up)
                        .await?;
                }
                PipeBody::Commit { grad_norm } => {
                    if done != micros {
                        return Err(PipelineError::Protocol(format!(
                            "commit of step {step} after {done} of {micros} backwards"
                        ))
                        .into());
                    }
                    self.compute.call(move |s| s.apply(grad_norm)).await??;
                    if !self.last {
                        let header = self.header(step, 0, PipeBody::Commit { grad_norm });
                        self.send(self.position.next(), PayloadKind::Control, header, None)
                            .await?;
                    }
                    step += 1;
                    (done, tail) = (0, None);
                    seen.clear();
                    self.report(step, None);
                    self.after_update(step).await?;
                    self.mailbox.requeue(std::mem::take(&mut later));
                }
                PipeBody::Plan | PipeBody::Snapshot { .. } | PipeBody::Probe | PipeBody::Broken => {
                }
            }
        }
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

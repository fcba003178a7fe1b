//! The first shard's loop: reads the data, splits each batch into micro-batches, drives the
//! forwards, collects the backwards (with the downstream squared gradient norms), updates with
//! the global norm and sends the commit down the chain. The schedule is one-forward-one-backward
//! (1F1B): a backward that has come back is taken before the next forward, and once as many
//! micro-batches as the chain has shards are in flight the next forward waits for one. So
//! few micro-batches' graphs are kept at once: each kept graph costs memory and cache, and
//! with eight in flight a micro-batch took ≈ 10 % longer than with one.

use std::collections::HashSet;
use std::time::Duration;

use murmur_models::data::BatchStream;
use murmur_models::{Batch, WireActivation};
use murmur_protocol::pipeline::PipeBody;

use super::{Halt, Stage, blame, decode_off_thread, misbehaved};
use crate::net::PayloadKind;
use crate::shard::pipeline::PipelineError;
use crate::shard::pipeline::mailbox::Inbound;

/// The backward half of a step as the first shard takes it in.
#[derive(Debug, Default)]
struct Backwards {
    done: u32,
    losses: f32,
    /// The downstream shards' squared gradient norm (on the step's last backward).
    tail: Option<f64>,
    /// Micro-batches taken (a retried send may deliver one twice).
    seen: HashSet<u32>,
}

impl Stage {
    /// The first shard: reads data, drives the steps.
    pub(super) async fn lead(&mut self) -> Result<(), Halt> {
        let config = self.config.clone();
        let data = &config.data;
        // Each chain reads the data in its own order (chain 0 in the run's).
        let lane = self.position.lane as u64;
        let seed = self.config.train.seed ^ lane.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let mut stream = BatchStream::new(data.len(), seed);
        for _ in 0..self.resume {
            stream.next_batch(self.config.train.batch_size);
        }
        let micros = self.config.micro_batches;
        let scale = 1.0 / micros as f32;
        for step in self.resume..self.config.steps {
            if self.last {
                // A chain of one never waits on a neighbour: look for a stop here.
                self.check_stop()?;
            }
            let batch = data.batch(&stream.next_batch(self.config.train.batch_size));
            let mut loss_sum = 0.0f32;
            let mut backwards = Backwards::default();
            for (m, (input, targets)) in split(&batch, micros as usize)?.into_iter().enumerate() {
                let m = m as u32;
                if self.last {
                    let (loss, _) = self
                        .compute
                        .call(move |s| s.loss_backward(input, &targets, scale))
                        .await??;
                    loss_sum += loss;
                } else {
                    // 1F1B: beyond as many in flight as the chain has shards, a forward would
                    // only wait downstream.
                    let in_flight = u32::try_from(self.position.chain.len()).unwrap_or(u32::MAX);
                    self.take_backwards(step, m, in_flight, &mut backwards)
                        .await?;
                    self.forward_on(step, m, input, targets).await?;
                }
            }
            let mut tail = 0.0;
            if !self.last {
                // Every forward is out: wait for all that are left.
                self.take_backwards(step, micros, 0, &mut backwards).await?;
                loss_sum += backwards.losses;
                let next = self.position.next();
                tail = match (backwards.tail, next) {
                    (Some(tail), _) => tail,
                    (None, Some(next)) => {
                        let err = PipelineError::Protocol(
                            "the downstream gradient norm never arrived".into(),
                        );
                        return Err(misbehaved(next, err));
                    }
                    (None, None) => {
                        return Err(PipelineError::Protocol("no next shard".into()).into());
                    }
                };
            }
            let own = self.compute.call(|s| s.grad_norm_sq()).await?;
            let grad_norm = (own + tail).sqrt() as f32;
            self.compute.call(move |s| s.apply(grad_norm)).await??;
            if !self.last {
                let header = self.header(step, 0, PipeBody::Commit { grad_norm });
                self.send(self.position.next(), PayloadKind::Control, header, None)
                    .await?;
            }
            let loss = loss_sum / micros as f32;
            tracing::debug!(step, loss, grad_norm, "pipeline step");
            self.report(step + 1, Some(loss));
            self.after_update(step + 1).await?;
        }
        Ok(())
    }

    /// With `forwarded` micro-batches of `step` sent on: takes the backwards that have come
    /// back, waiting for more while at least `in_flight` micro-batches are still out (0: until
    /// every backward of the step is in).
    async fn take_backwards(
        &mut self,
        step: u64,
        forwarded: u32,
        in_flight: u32,
        backwards: &mut Backwards,
    ) -> Result<(), Halt> {
        while backwards.done < self.config.micro_batches {
            let message = if forwarded.saturating_sub(backwards.done) >= in_flight {
                self.next_message(self.position.next()).await?
            } else {
                match self.message_within(Duration::ZERO).await? {
                    Some(message) => message,
                    None => break,
                }
            };
            let from = message.peer;
            (self.take_backward(step, message, backwards).await).map_err(blame(from))?;
        }
        Ok(())
    }

    /// Runs the backward of one micro-batch of `step` from a message of the next shard.
    async fn take_backward(
        &mut self,
        step: u64,
        message: Inbound,
        backwards: &mut Backwards,
    ) -> Result<(), PipelineError> {
        let h = message.header;
        if h.step < step || !backwards.seen.insert(h.micro) {
            return Ok(()); // a retried send delivered twice
        }
        let PipeBody::Backward { loss, tail_norm_sq } = h.body else {
            return Err(PipelineError::Protocol(
                "the first shard got a forward".into(),
            ));
        };
        if h.step != step {
            return Err(PipelineError::Protocol(format!(
                "gradient of step {} during step {step}",
                h.step
            )));
        }
        let grad = decode_off_thread(h.tensor.clone(), message.payload).await?;
        self.compute
            .call(move |s| s.backward(h.micro, &grad))
            .await??;
        backwards.losses += loss;
        backwards.tail = backwards.tail.or(tail_norm_sq);
        backwards.done += 1;
        Ok(())
    }
}

/// Splits a batch into `micros` equal micro-batches of (input, targets).
fn split(batch: &Batch, micros: usize) -> Result<Vec<(WireActivation, Vec<u32>)>, PipelineError> {
    let b = batch.samples;
    if micros == 0 || !b.is_multiple_of(micros) {
        return Err(PipelineError::Config(format!(
            "{b} samples do not split into {micros} micro-batches"
        )));
    }
    let per = b / micros;
    let targets_per = batch.targets.len() / b.max(1);
    let mut out = Vec::with_capacity(micros);
    for m in 0..micros {
        let rows = m * per..(m + 1) * per;
        let targets = batch.targets[rows.start * targets_per..rows.end * targets_per].to_vec();
        let input = match &batch.input {
            WireActivation::Tokens { shape, ids } => WireActivation::Tokens {
                shape: [per, shape[1]],
                ids: ids[rows.start * shape[1]..rows.end * shape[1]].to_vec(),
            },
            WireActivation::Hidden { shape, values } => {
                let w = shape[1] * shape[2];
                WireActivation::Hidden {
                    shape: [per, shape[1], shape[2]],
                    values: values[rows.start * w..rows.end * w].to_vec(),
                }
            }
        };
        out.push((input, targets));
    }
    Ok(out)
}

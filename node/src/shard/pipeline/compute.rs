//! The compute thread of a pipeline shard: owns the [`StageShard`] (burn work never runs on
//! the async runtime), runs jobs in arrival order, emulates a slower device when asked
//! (`--slowdown F` sleeps `F − 1` times each job's duration after it), and accounts busy time
//! for the utilisation figures.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use murmur_models::pipeline::StageShard;
use tokio::sync::{mpsc, oneshot};

use super::PipelineError;

type Job = Box<dyn FnOnce(&mut StageShard) + Send>;

/// Handle to a shard's compute thread; dropping it ends the thread after its queued jobs.
#[derive(Debug)]
pub(crate) struct Compute {
    jobs: mpsc::Sender<Job>,
    busy_us: Arc<AtomicU64>,
}

impl Compute {
    /// Starts the thread with `shard`; jobs are slowed by `slowdown` (≥ 1).
    pub(crate) fn start(shard: StageShard, slowdown: f64) -> Result<Self, PipelineError> {
        let (jobs, mut queue) = mpsc::channel::<Job>(4);
        let busy_us = Arc::new(AtomicU64::new(0));
        let busy = busy_us.clone();
        let slowdown = if slowdown.is_finite() {
            slowdown.max(1.0)
        } else {
            1.0
        };
        std::thread::Builder::new()
            .name("murmur-shard".into())
            .spawn(move || {
                let mut shard = shard;
                while let Some(job) = queue.blocking_recv() {
                    let started = Instant::now();
                    job(&mut shard);
                    let took = started.elapsed();
                    if slowdown > 1.0 {
                        std::thread::sleep(took.mul_f64(slowdown - 1.0));
                    }
                    let total = started.elapsed();
                    busy.fetch_add(total.as_micros() as u64, Ordering::Relaxed);
                }
            })
            .map_err(PipelineError::ComputeSpawn)?;
        Ok(Self { jobs, busy_us })
    }

    /// Runs `f` on the shard and returns its result.
    pub(crate) async fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut StageShard) -> R + Send + 'static,
    ) -> Result<R, PipelineError> {
        let (reply, answer) = oneshot::channel();
        let job: Job = Box::new(move |shard| {
            let _ = reply.send(f(shard));
        });
        self.jobs
            .send(job)
            .await
            .map_err(|_| PipelineError::ComputeStopped)?;
        answer.await.map_err(|_| PipelineError::ComputeStopped)
    }

    /// Time spent on jobs so far (slowdown included).
    pub(crate) fn busy(&self) -> Duration {
        Duration::from_micros(self.busy_us.load(Ordering::Relaxed))
    }
}

//! Pipeline placement planner benchmark: planning time for 1000 stages × 100 heterogeneous
//! peers, and the expected throughput of the optimal plan against an even split by stage count
//! on a 12-stage uniform model over three peers slowed 1×/2×/4× and 1×/1×/8×.
//!
//! Run with `cargo bench -p murmur-node --bench planner`. Plain `main`, prints figures.

use std::time::{Duration, Instant};

use murmur_node::shard::planner::{
    Link, LinkSpec, PeerCapacity, PlanInput, PlanStage, even_split, ideal_samples_per_sec, plan,
};

type BenchResult<T> = Result<T, Box<dyn std::error::Error>>;

const GB: u64 = 1_000_000_000;

/// Deterministic pseudo-random numbers (SplitMix64).
#[derive(Debug)]
struct Mix(u64);

impl Mix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[lo, hi)`.
    fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// 1000 stages of varied cost, 100 peers of 1–50 TFLOP/s and 4–24 GB, each with 10 measured
/// links of 5–125 MB/s and 5–100 ms.
fn large_input() -> PlanInput {
    let mut rng = Mix(7);
    let stages = (0..1000)
        .map(|_| PlanStage {
            flops_per_sample: rng.range(1e9, 2e10),
            activation_bytes_per_sample: rng.range(1e5, 2e6) as u64,
            param_bytes: rng.range(1e6, 8e7) as u64,
        })
        .collect();
    let peers: Vec<PeerCapacity> = (0..100)
        .map(|i| PeerCapacity {
            id: format!("peer-{i:03}"),
            flops_per_sec: rng.range(1e12, 5e13),
            memory_bytes: rng.range(4.0, 24.0) as u64 * GB,
        })
        .collect();
    let mut links = Vec::new();
    for from in &peers {
        for _ in 0..10 {
            let to = &peers[(rng.next() % peers.len() as u64) as usize];
            links.push(Link {
                from: from.id.clone(),
                to: to.id.clone(),
                spec: LinkSpec {
                    bytes_per_sec: rng.range(5e6, 1.25e8),
                    rtt_secs: rng.range(0.005, 0.1),
                },
            });
        }
    }
    PlanInput {
        links,
        ..PlanInput::new(stages, peers)
    }
}

/// 12 identical stages on three peers of 10 TFLOP/s divided by `slowdown`, on 10 Gbit/s links.
fn uniform_input(slowdown: [f64; 3]) -> PlanInput {
    let stage = PlanStage {
        flops_per_sample: 1e10,
        activation_bytes_per_sample: 64 << 10,
        param_bytes: 1 << 20,
    };
    let peers = slowdown
        .iter()
        .enumerate()
        .map(|(i, s)| PeerCapacity {
            id: format!("peer-{i}"),
            flops_per_sec: 1e13 / s,
            memory_bytes: 16 * GB,
        })
        .collect();
    PlanInput {
        default_link: LinkSpec {
            bytes_per_sec: 1.25e9,
            rtt_secs: 0.001,
        },
        ..PlanInput::new(vec![stage; 12], peers)
    }
}

fn main() -> BenchResult<()> {
    let input = large_input();
    let mut times: Vec<Duration> = Vec::new();
    let mut result = plan(&input)?;
    for _ in 0..5 {
        let start = Instant::now();
        result = plan(&input)?;
        times.push(start.elapsed());
    }
    times.sort();
    let even = even_split(&input)?;
    println!(
        "1000 stages × 100 peers: plan in {:.1} ms (min {:.1} ms of 5); {} peers used, \
         {:.2} samples/s vs even split {:.2} ({}), ideal {:.2}",
        times[2].as_secs_f64() * 1e3,
        times[0].as_secs_f64() * 1e3,
        result.assignments.len(),
        result.samples_per_sec,
        even.samples_per_sec,
        if even.fits_memory {
            "fits memory"
        } else {
            "exceeds memory"
        },
        ideal_samples_per_sec(&input)?,
    );
    for slowdown in [[1.0, 2.0, 4.0], [1.0, 1.0, 8.0]] {
        let input = uniform_input(slowdown);
        let (best, even) = (plan(&input)?, even_split(&input)?);
        let split: Vec<String> = best
            .assignments
            .iter()
            .map(|a| format!("{}..{}", a.start, a.end))
            .collect();
        println!(
            "12 uniform stages, peers slowed {slowdown:?}: plan {:.1} samples/s [{}], even split \
             {:.1}, ratio {:.2}×, ideal {:.1}",
            best.samples_per_sec,
            split.join(" "),
            even.samples_per_sec,
            best.samples_per_sec / even.samples_per_sec,
            ideal_samples_per_sec(&input)?,
        );
    }
    Ok(())
}

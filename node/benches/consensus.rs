//! Consensus speed: N nodes on loopback each start with a distinct vector of P f32 (and a
//! distinct sample weight); time until every node holds the weighted mean within 1e-3
//! relative L2 error, signing and verification on, from the moment every node sees every
//! other or the first node begins averaging, whichever comes first. Two averaging modes:
//! butterfly rounds (scatter-reduce: each node owns 1/N of the vector) and full fan-out
//! push-sum gossip.
//!
//! `cargo bench -p murmur-node --bench consensus --profile dev` (dependencies are built
//! with opt-level 2 in that profile; a release build of burn takes too long here) — sizes via `MURMUR_BENCH_CASES`
//! (default `4x10000000,8x10000000,4x50000000`), codec via `MURMUR_BENCH_CODEC`
//! (`f16` default, `raw`), modes via `MURMUR_BENCH_MODES` (default `butterfly,gossip`), idle sync period via `MURMUR_BENCH_IDLE_MS` (default 40),
//! per-node progress every 100 ms with `MURMUR_BENCH_DEBUG=1`.

use std::time::{Duration, Instant};

use murmur_node::averaging::{AveragerConfig, ButterflyConfig, SyncPolicy};
use murmur_node::cmd::node::parse_codec;
use murmur_node::identity::NodeIdentity;
use murmur_node::net::NetConfig;
use murmur_node::session::replica::VectorReplica;
use murmur_node::session::worker::WorkerConfig;
use murmur_node::session::{Session, SessionConfig};
use murmur_protocol::{ModelFingerprint, RunId};

fn main() {
    if let Ok(filter) = std::env::var("MURMUR_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .init();
    }
    let cases = std::env::var("MURMUR_BENCH_CASES")
        .unwrap_or_else(|_| "4x10000000,8x10000000,4x50000000".into());
    let codec = parse_codec(&std::env::var("MURMUR_BENCH_CODEC").unwrap_or_else(|_| "f16".into()))
        .expect("codec");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let modes = std::env::var("MURMUR_BENCH_MODES").unwrap_or_else(|_| "butterfly,gossip".into());
    for case in cases.split(',') {
        let Some((n, p)) = case.split_once('x') else {
            continue;
        };
        let (n, p): (usize, usize) = (n.parse().expect("N"), p.parse().expect("P"));
        for mode in modes.split(',') {
            let butterfly = mode == "butterfly";
            match runtime.block_on(measure(n, p, codec, butterfly)) {
                Some(t) => println!(
                    "consensus {mode} N={n} P={p} codec={codec:?}: {t:.3} s to 1e-3 relative L2"
                ),
                None => println!(
                    "consensus {mode} N={n} P={p} codec={codec:?}: not reached within 60 s"
                ),
            }
        }
    }
}

async fn measure(
    n: usize,
    p: usize,
    codec: murmur_protocol::Codec,
    butterfly: bool,
) -> Option<f64> {
    let run = RunId::from_name("consensus-bench");
    let model = ModelFingerprint([9; 32]);
    let weights: Vec<f64> = (0..n).map(|i| 100.0 * (i as f64 + 1.0)).collect();
    let total: f64 = weights.iter().sum();
    let mean = weights
        .iter()
        .enumerate()
        .map(|(i, w)| w * (i as f64 + 1.0))
        .sum::<f64>()
        / total;
    // Vectors are built before the clock starts.
    let vectors: Vec<Vec<f32>> = (0..n).map(|i| vec![i as f32 + 1.0; p]).collect();
    let idle_sync = Duration::from_millis(
        std::env::var("MURMUR_BENCH_IDLE_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(40),
    );
    let mut sessions = Vec::new();
    let mut bootstrap = Vec::new();
    for (i, values) in vectors.into_iter().enumerate() {
        let mut net = NetConfig::loopback(run);
        net.bootstrap = bootstrap.clone();
        // Full fan-out: every peer may push to this node at once.
        net.limits.max_inbound_transfers = n;
        let mut averager = AveragerConfig::new(run, model);
        averager.codec = codec;
        averager.fanout = n - 1;
        averager.initial_mass = weights[i];
        averager.butterfly = butterfly.then(|| ButterflyConfig {
            codec,
            window: Duration::from_secs(4),
        });
        let config = SessionConfig {
            net,
            averager,
            worker: WorkerConfig {
                policy: SyncPolicy::Seconds(1.0),
                step_budget: 0,
                target_accuracy: None,
                eval_every: 1,
                checkpoint_every: 0,
                idle_sync,
                seed: i as u64,
            },
            announce_every: Duration::from_millis(200),
            join_lag_rounds: u64::MAX / 2,
            checkpoint_keep: 1,
            device: "bench".into(),
            tamper: None,
        };
        let identity = NodeIdentity::from_secret([i as u8 + 1; 32]).expect("identity");
        let session = Session::start(
            identity,
            None,
            Box::new(VectorReplica(values)),
            vec![0.0; p],
            config,
        )
        .await
        .expect("session");
        if i == 0 {
            let id = session.network().local_peer_id();
            let addr = session.network().listen_addrs().await.expect("addrs")[0].clone();
            bootstrap.push(addr.with(libp2p::multiaddr::Protocol::P2p(id)));
        }
        sessions.push(session);
    }
    // The clock starts when everyone sees everyone (finding peers is not averaging) or when
    // the first node starts averaging, whichever comes first: rounds begun before discovery
    // is complete count.
    let discover = Instant::now();
    while !sessions.iter().all(|s| s.status().borrow().peers >= n - 1)
        && !sessions
            .iter()
            .any(|s| averaging_began(&s.status().borrow()))
    {
        if discover.elapsed() > Duration::from_secs(30) {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let started = Instant::now();
    let mut reached = None;
    // A node's parameters change only when it syncs, merges or takes back a failed send, all
    // visible in its status: a snapshot (a copy of the whole vector, and the error computed
    // over it) is taken only of nodes whose status moved, so polling does not load the machine.
    let mut seen: Vec<Option<(u64, u64, u64)>> = vec![None; n];
    let mut errors_of: Vec<f64> = vec![f64::INFINITY; n];
    while started.elapsed() < Duration::from_secs(60) {
        for (i, s) in sessions.iter().enumerate() {
            let status = s.status().borrow().clone();
            let key = (
                status.worker.round,
                status.worker.counts.merged,
                status.worker.mass.to_bits(),
            );
            if seen[i] == Some(key) {
                continue;
            }
            // A busy node may not answer in time; that counts as not converged yet.
            let Some(snap) = s.snapshot().await else {
                errors_of[i] = f64::INFINITY;
                continue;
            };
            seen[i] = Some(key);
            errors_of[i] = snap
                .params
                .iter()
                .map(|v| (f64::from(*v) - mean).powi(2))
                .sum::<f64>()
                .sqrt()
                / (mean * (p as f64).sqrt());
        }
        let worst = errors_of.iter().copied().fold(0.0, f64::max);
        let errors: String = errors_of.iter().map(|e| format!("{e:.1e} ")).collect();
        if std::env::var_os("MURMUR_BENCH_DEBUG").is_some() {
            let rounds: Vec<_> = sessions
                .iter()
                .map(|s| s.status().borrow().clone())
                .map(|s| {
                    (
                        s.worker.round,
                        s.worker.counts.merged,
                        s.worker.counts.rejected.clone(),
                        s.deltas_sent,
                        s.send_failures,
                    )
                })
                .collect();
            println!(
                "{:.3}s worst {worst:.2e} [{errors}] {rounds:?}",
                started.elapsed().as_secs_f64()
            );
        }
        if worst < 1e-3 {
            reached = Some(started.elapsed().as_secs_f64());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for s in sessions {
        let _ = tokio::time::timeout(Duration::from_secs(20), s.stop()).await;
    }
    reached
}

/// Whether a node has begun averaging: started a butterfly round or synced.
fn averaging_began(status: &murmur_node::session::NodeStatus) -> bool {
    status.worker.butterfly_rounds_started > 0 || status.worker.round > 0 || status.deltas_sent > 0
}

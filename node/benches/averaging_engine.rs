//! Cost of the averaging engine on the training thread, without the network: for a model of
//! P f32, the time to check and queue one received delta (envelope, digest, decode, anchor,
//! finiteness and norm), to merge a round of N−1 deltas, and to produce the node's own signed
//! delta (error feedback, encode, hash, sign). These are what each node's training thread does
//! per round in the consensus benchmark, so they bound how fast a round can be on one core.
//!
//! `cargo bench -p murmur-node --bench averaging_engine --profile dev`; sizes via
//! `MURMUR_BENCH_SIZES` (default `1000000,10000000`), codec via `MURMUR_BENCH_CODEC`
//! (`f16` default), deltas per round via `MURMUR_BENCH_PEERS` (default 3).

use std::time::Instant;

use murmur_node::averaging::{Averager, AveragerConfig, ReplayGuard};
use murmur_node::cmd::node::parse_codec;
use murmur_node::identity::NodeIdentity;
use murmur_protocol::{ModelFingerprint, RunId};

fn engine(secret: u8, p: usize, codec: murmur_protocol::Codec, peers: usize) -> Averager {
    let identity = NodeIdentity::from_secret([secret; 32]).expect("identity");
    let mut config =
        AveragerConfig::new(RunId::from_name("engine-bench"), ModelFingerprint([3; 32]));
    config.codec = codec;
    config.fanout = peers;
    Averager::new(
        config,
        identity.signing_key().clone(),
        vec![0.0; p],
        ReplayGuard::in_memory(),
    )
}

fn main() {
    let sizes = std::env::var("MURMUR_BENCH_SIZES").unwrap_or_else(|_| "1000000,10000000".into());
    let codec = parse_codec(&std::env::var("MURMUR_BENCH_CODEC").unwrap_or_else(|_| "f16".into()))
        .expect("codec");
    let peers: usize = std::env::var("MURMUR_BENCH_PEERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    const ROUNDS: usize = 5;
    for p in sizes.split(',').filter_map(|s| s.parse::<usize>().ok()) {
        let mut me = engine(1, p, codec, peers);
        let mut mine = vec![1.0f32; p];
        let mut senders: Vec<(Averager, libp2p::PeerId, Vec<f32>)> = (0..peers)
            .map(|i| {
                let secret = i as u8 + 2;
                let id = NodeIdentity::from_secret([secret; 32])
                    .expect("identity")
                    .peer_id();
                (engine(secret, p, codec, peers), id, vec![i as f32 + 2.0; p])
            })
            .collect();
        let (mut receive, mut merge, mut produce) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            let messages: Vec<_> = senders
                .iter_mut()
                .map(|(a, id, x)| (*id, a.sync(x, 0, 0, 1).expect("sync").expect("message")))
                .collect();
            let started = Instant::now();
            for (id, m) in &messages {
                me.receive_transferred(id, &m.header, &m.payload, Some(&m.digest))
                    .expect("accepted");
            }
            receive.push(started.elapsed().as_secs_f64() / peers as f64);
            let started = Instant::now();
            me.merge(&mut mine).expect("merge");
            merge.push(started.elapsed().as_secs_f64());
            let started = Instant::now();
            let _ = me.sync(&mut mine, 0, 0, peers).expect("sync");
            produce.push(started.elapsed().as_secs_f64());
        }
        let best = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min) * 1e3;
        println!(
            "engine P={p} codec={codec:?} peers={peers}: receive {:.1} ms/delta, merge {:.1} ms/round, own delta {:.1} ms (best of {ROUNDS}; {:.2} GB/s of f32 received)",
            best(&receive),
            best(&merge),
            best(&produce),
            p as f64 * 4.0 / (best(&receive) / 1e3) / 1e9,
        );
    }
}

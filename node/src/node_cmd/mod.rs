//! `murmur node`: run this machine as a training peer of a Murmur run.
//!
//! Loads the identity and store, builds the model and its data shard, resumes from the last
//! checkpoint if there is one, starts a [`Session`] (network + training thread) and prints
//! progress until Ctrl-C, `--duration`, or (for `murmur testnet`) standard input closing.
//! The last line printed is a JSON summary.

mod args;
pub mod bootstrap_child;
pub mod config_file;
pub mod report;
mod sharded;

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use murmur_models::{ModelKind, TrainConfig, Trainer, select_device, spec_for};
use murmur_protocol::{ModelFingerprint, RunId, SignedManifest};

pub use args::{NodeArgs, parse_codec, parse_placement};

use crate::averaging::{Admission, AveragerConfig, ButterflyConfig, OuterConfig, RobustConfig};
use crate::identity::NodeIdentity;
use crate::net::NetConfig;
use crate::session::replica::ModelReplica;
use crate::session::worker::WorkerConfig;
use crate::session::{Session, SessionConfig};
use crate::store::Store;
use crate::train_local::load_split;

/// Runs a training node until it is told to stop.
pub fn run(args: &NodeArgs, data_dir: &Path) -> anyhow::Result<()> {
    let identity = NodeIdentity::load_or_create(data_dir)?;
    let store = Store::open(&data_dir.join("store")).context("opening the node's store")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    if args.sharded {
        return runtime.block_on(sharded::serve(args, identity, store));
    }
    runtime.block_on(serve(args, identity, store))
}

/// The initialisation seed every peer of `run` shares unless one is given.
pub fn run_seed(run: &RunId) -> u64 {
    u64_prefix(run.as_bytes())
}

/// The first 8 bytes of a 32-byte id as a little-endian integer.
fn u64_prefix(bytes: &[u8; 32]) -> u64 {
    let mut first = [0u8; 8];
    first.copy_from_slice(&bytes[..8]);
    u64::from_le_bytes(first)
}

/// Fingerprint of architecture and initial model together: peers merge only deltas relative
/// to the same anchor.
pub fn run_model_fingerprint(architecture: [u8; 32], seed: u64) -> ModelFingerprint {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"murmur/model/v1");
    hasher.update(&architecture);
    hasher.update(&seed.to_le_bytes());
    ModelFingerprint(*hasher.finalize().as_bytes())
}

fn admission(args: &NodeArgs, run: &RunId) -> anyhow::Result<Admission> {
    let Some(path) = &args.pool else {
        return Ok(Admission::Open);
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the pool manifest {}", path.display()))?;
    let signed = SignedManifest::from_text(&text)
        .with_context(|| format!("parsing the pool manifest {}", path.display()))?;
    let manifest = signed
        .verify_for_run(run)
        .with_context(|| format!("verifying the pool manifest {}", path.display()))?;
    Ok(Admission::Closed(
        manifest.members.iter().copied().collect(),
    ))
}

/// The network configuration the flags describe.
fn net_config(args: &NodeArgs, run: RunId) -> NetConfig {
    let mut net = NetConfig::new(run, args.port);
    if !args.listen.is_empty() {
        net.listen_addrs = args.listen.clone();
    }
    net.bootstrap = args.bootstrap.clone();
    net.relays = args.relay.clone();
    net.external_addrs = args.external_addr.clone();
    net.mdns = !args.no_mdns;
    net.kad_server = args.kad_server || !args.external_addr.is_empty();
    net
}

async fn serve(args: &NodeArgs, identity: NodeIdentity, store: Store) -> anyhow::Result<()> {
    let run = RunId::from_name(&args.run);
    let selected = select_device(args.device).context("selecting a compute device")?;
    let data = load_split(args.model, args.data.as_deref(), args.csv_header)?;
    let train = match args.shard {
        Some((i, n)) => data.train.shard(i, n)?,
        None => data.train,
    };
    let spec = spec_for(args.model, train.shape())?;
    let is_mlp = matches!(args.model, ModelKind::MlpDigits);
    let seed = args.seed.unwrap_or_else(|| run_seed(&run));
    let steps = args.steps.unwrap_or(if is_mlp { 1500 } else { 300 });
    let train_config = TrainConfig {
        lr: args.lr.unwrap_or(if is_mlp { 3e-3 } else { 1e-3 }),
        total_steps: steps,
        batch_size: args.batch_size,
        seed,
        ..TrainConfig::default()
    };
    let trainer = Trainer::new(&spec, train, data.test, train_config, &selected.device)?;
    let anchor = trainer.flat_params()?;
    let model = run_model_fingerprint(trainer.fingerprint(), seed);
    let net = net_config(args, run);
    let mut averager = AveragerConfig::new(run, model);
    averager.codec = args.codec;
    averager.fanout = args.fanout;
    averager.robust = args.robust.then(RobustConfig::default);
    averager.outer = args.outer.then_some(OuterConfig {
        lr: args.outer_lr,
        momentum: args.outer_momentum,
    });
    averager.admission = admission(args, &run)?;
    averager.tamper = args.tamper;
    averager.butterfly = args.butterfly.then(|| {
        ButterflyConfig {
            window: Duration::from_secs_f64(args.butterfly_window.clamp(0.1, 600.0)),
            ..ButterflyConfig::default()
        }
        .with_codec_if_dense(args.codec)
    });
    let config = SessionConfig {
        net,
        averager,
        worker: WorkerConfig {
            policy: args.sync,
            step_budget: steps,
            target_accuracy: args.target_accuracy,
            eval_every: args.eval_every,
            checkpoint_every: args.checkpoint_every,
            idle_sync: Duration::from_millis(300),
            seed: seed ^ u64_prefix(identity.peer_key().as_bytes()),
        },
        announce_every: Duration::from_secs_f64(args.announce_every.max(0.1)),
        join_lag_rounds: 8,
        checkpoint_keep: args.keep_checkpoints,
        device: selected.info.name.clone(),
    };
    let peer_id = identity.peer_id();
    let session = Session::start(
        identity,
        Some(store),
        Box::new(ModelReplica(trainer)),
        anchor,
        config,
    )
    .await?;
    let mut out = report::Reporter::new(args.json, peer_id, args.model, spec.param_count());
    for addr in session.network().listen_addrs().await? {
        out.listening(&addr);
    }
    let started = Instant::now();
    let stop = stop_signal(args);
    tokio::pin!(stop);
    let mut status = session.status();
    loop {
        tokio::select! {
            _ = &mut stop => break,
            changed = status.changed() => {
                if changed.is_err() { break; }
                let now = status.borrow_and_update().clone();
                out.progress(&now, started.elapsed());
            }
        }
    }
    let last = session.stop().await?;
    out.final_summary(&last, started.elapsed());
    Ok(())
}

/// Resolves when the node should stop: Ctrl-C, `--duration`, or stdin closing.
async fn stop_signal(args: &NodeArgs) {
    let duration = args.duration.map(Duration::from_secs);
    let stdin = args.stdin_control;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async {
            match duration {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        } => {}
        _ = async {
            if stdin { stdin_closed().await } else { std::future::pending().await }
        } => {}
    }
}

/// Resolves when standard input reaches end-of-file (read on a plain thread: blocking
/// reads never touch the async runtime).
async fn stdin_closed() {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let spawned = std::thread::Builder::new()
        .name("murmur-stdin".into())
        .spawn(move || {
            use std::io::Read;
            let mut buf = [0u8; 256];
            let mut stdin = std::io::stdin();
            while matches!(stdin.read(&mut buf), Ok(n) if n > 0) {}
            let _ = tx.send(());
        });
    if spawned.is_ok() {
        let _ = rx.await;
    }
}

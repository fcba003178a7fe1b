//! Network benchmark: stream throughput between two in-process nodes (100 MB and 1 GB, TCP
//! and QUIC, several tuning variants) and announcement propagation latency across 8 nodes.
//!
//! Run with `cargo bench -p murmur-node --bench net_throughput`. Plain `main`, prints figures.
//! `MURMUR_BENCH_QUICK=1` runs only the 100 MB transfers.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use murmur_node::net::bootstrap::{Bootstrap, BootstrapConfig};
use murmur_node::net::{NetConfig, Network, PayloadKind, quic_addr, tcp_addr};
use murmur_protocol::ed25519_dalek::SigningKey;
use murmur_protocol::{
    Announcement, Capacity, Message, ModelFingerprint, PeerKey, RunId, SignedEnvelope,
};

type BenchResult<T> = Result<T, Box<dyn std::error::Error>>;

const MB: usize = 1_000_000;

#[derive(Debug)]
struct Variant {
    name: &'static str,
    quic_stream_window: u32,
    quic_connection_window: u32,
    chunk_bytes: usize,
}

const VARIANTS: &[Variant] = &[
    Variant {
        name: "libp2p-quic default windows 10/15 MB, 1 MiB chunks",
        quic_stream_window: 10_000_000,
        quic_connection_window: 15_000_000,
        chunk_bytes: 1 << 20,
    },
    Variant {
        name: "4 MiB chunks",
        quic_stream_window: 10_000_000,
        quic_connection_window: 15_000_000,
        chunk_bytes: 4 << 20,
    },
    Variant {
        name: "QUIC 32/64 MB windows, 4 MiB chunks (Murmur defaults)",
        quic_stream_window: 32_000_000,
        quic_connection_window: 64_000_000,
        chunk_bytes: 4 << 20,
    },
];

fn config(transport: &str, variant: &Variant) -> NetConfig {
    let mut config = NetConfig::loopback(RunId::from_name("bench"));
    config.listen_addrs = match transport {
        "tcp" => vec![tcp_addr(Ipv4Addr::LOCALHOST, 0)],
        _ => vec![quic_addr(Ipv4Addr::LOCALHOST, 0)],
    };
    config.kad_walk_interval = None;
    config.tuning.quic_stream_window = variant.quic_stream_window;
    config.tuning.quic_connection_window = variant.quic_connection_window;
    config.limits.chunk_bytes = variant.chunk_bytes;
    config.limits.max_payload_bytes = 1100 * MB;
    config
}

async fn throughput(transport: &str, variant: &Variant, sizes: &[usize]) -> BenchResult<()> {
    let start = |c| Network::start(Keypair::generate_ed25519(), c, None);
    let (receiver, _re) = start(config(transport, variant)).await?;
    let (sender, _se) = start(config(transport, variant)).await?;
    let mut incoming = receiver.subscribe_payloads(PayloadKind::Blob)?;
    let addr = receiver
        .listen_addrs()
        .await?
        .into_iter()
        .next()
        .ok_or("no listener")?;
    sender
        .dial(addr.with(Protocol::P2p(receiver.local_peer_id())))
        .await?;
    tokio::spawn(async move { while incoming.recv().await.is_some() {} });
    let peer = receiver.local_peer_id();
    for &size in sizes {
        let payload = vec![0x5Au8; size];
        // Warm-up: connection set-up is not part of the figure.
        sender
            .send_payload(peer, PayloadKind::Blob, b"", &payload[..MB])
            .await?;
        let started = Instant::now();
        let stats = sender
            .send_payload(peer, PayloadKind::Blob, b"", &payload)
            .await?;
        print_row(transport, stats.bytes, started, variant.name, "");
        // The same payload with its digest known beforehand (as for a delta, whose signed
        // header carries it): the sender does not hash it again.
        let digest = murmur_protocol::Digest::of(&payload);
        let started = Instant::now();
        let stats = sender
            .send_hashed_payload(peer, PayloadKind::Blob, b"", &payload, digest)
            .await?;
        print_row(
            transport,
            stats.bytes,
            started,
            variant.name,
            ", digest known to the sender",
        );
    }
    sender.shutdown().await;
    receiver.shutdown().await;
    Ok(())
}

/// One result line: `bytes` moved since `started`.
fn print_row(transport: &str, bytes: u64, started: Instant, variant: &str, note: &str) {
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{transport:>4} | {:>5} MB | {:.3} GB/s | {:>6.2} s | {variant}{note}",
        bytes as usize / MB,
        bytes as f64 / secs / 1e9,
        secs,
    );
}

/// Baseline: one raw `libp2p-stream` stream, 1 MiB writes, no framing, no hashing.
async fn raw_baseline(transport: &str, size: usize) -> BenchResult<()> {
    use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
    let proto = libp2p::StreamProtocol::new("/murmur-bench/raw/1.0.0");
    let variant = &VARIANTS[0];
    let start = |c| Network::start(Keypair::generate_ed25519(), c, None);
    let (receiver, _re) = start(config(transport, variant)).await?;
    let (sender, _se) = start(config(transport, variant)).await?;
    let mut incoming = receiver.stream_control().accept(proto.clone())?;
    let addr = receiver
        .listen_addrs()
        .await?
        .into_iter()
        .next()
        .ok_or("no listener")?;
    sender
        .dial(addr.with(Protocol::P2p(receiver.local_peer_id())))
        .await?;
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0usize;
        if let Some((_, mut stream)) = incoming.next().await {
            while let Ok(n) = stream.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                total += n;
            }
        }
        total
    });
    let payload = vec![0x5Au8; size];
    let mut control = sender.stream_control();
    let started = Instant::now();
    let mut stream = control.open_stream(receiver.local_peer_id(), proto).await?;
    for chunk in payload.chunks(1 << 20) {
        stream.write_all(chunk).await?;
    }
    stream.close().await?;
    let total = reader.await?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{transport:>4} | {:>5} MB | {:.3} GB/s | {:>6.2} s | raw stream baseline (no framing, no hash)",
        total / MB,
        total as f64 / secs / 1e9,
        secs
    );
    sender.shutdown().await;
    receiver.shutdown().await;
    Ok(())
}

/// Cost of BLAKE3 on this machine (each side hashes the payload once).
fn hash_cost(size: usize) {
    let payload = vec![0x5Au8; size];
    let started = Instant::now();
    let digest = blake3::hash(&payload);
    let secs = started.elapsed().as_secs_f64();
    println!(
        "blake3 | {:>5} MB | {:.3} GB/s | {:>6.2} s | one-core hash ({})",
        size / MB,
        size as f64 / secs / 1e9,
        secs,
        &digest.to_hex()[..8]
    );
}

fn signed_announcement(key: &SigningKey, run: RunId, round: u64) -> BenchResult<SignedEnvelope> {
    let message = Message::Announcement(Announcement {
        peer: PeerKey(key.verifying_key().to_bytes()),
        run,
        model: ModelFingerprint([1; 32]),
        capacity: Capacity {
            samples_per_sec: 1.0,
            flops_per_sec: 1.0,
            memory_bytes: 1,
            device: "bench".into(),
            links: Vec::new(),
        },
        round,
        listen_addrs: Vec::new(),
        timestamp_ms: round,
    });
    Ok(SignedEnvelope::sign(key, &message)?)
}

async fn propagation() -> BenchResult<()> {
    let run = RunId::from_name("bench");
    let boot = Bootstrap::new(Keypair::generate_ed25519(), &BootstrapConfig::loopback())
        .await?
        .spawn();
    let mut nodes = Vec::new();
    for seed in 1..=8u8 {
        let signing = SigningKey::from_bytes(&[seed; 32]);
        let keypair = Keypair::ed25519_from_bytes(signing.to_bytes())?;
        let mut config = NetConfig::loopback(run);
        config.bootstrap = boot.addrs.iter().take(1).cloned().collect();
        config.kad_walk_interval = Some(Duration::from_millis(500));
        let (net, events) = Network::start(keypair, config, None).await?;
        nodes.push((signing, net, events));
    }
    tokio::time::sleep(Duration::from_secs(5)).await; // let the gossip mesh form
    let mut samples = Vec::new();
    for round in 0..10u64 {
        let origin = (round % 8) as usize;
        let envelope = signed_announcement(&nodes[origin].0, run, round)?;
        let started = Instant::now();
        nodes[origin].1.publish_announcement(&envelope).await?;
        let mut slowest = Duration::ZERO;
        for (i, (_, _, events)) in nodes.iter_mut().enumerate().filter(|(i, _)| *i != origin) {
            let got = tokio::time::timeout(Duration::from_secs(10), async {
                while let Some(a) = events.announcements.recv().await {
                    if a.announcement.round == round {
                        return true;
                    }
                }
                false
            })
            .await;
            if got != Ok(true) {
                println!("round {round}: node {i} missed the announcement");
            }
            slowest = slowest.max(started.elapsed());
        }
        samples.push(slowest);
    }
    samples.sort();
    println!(
        "announcement reaches all 7 peers (8 nodes, 10 rounds): median {:?}, max {:?}",
        samples[samples.len() / 2],
        samples[samples.len() - 1]
    );
    for (_, net, _) in &nodes {
        net.shutdown().await;
    }
    boot.shutdown().await;
    Ok(())
}

fn main() -> BenchResult<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let quick = std::env::var_os("MURMUR_BENCH_QUICK").is_some();
    let sizes: &[usize] = if quick {
        &[100 * MB]
    } else {
        &[100 * MB, 1000 * MB]
    };
    let only = std::env::var("MURMUR_BENCH_VARIANT")
        .ok()
        .and_then(|v| v.parse::<usize>().ok());
    runtime.block_on(async {
        println!("transport | payload | throughput | time | variant");
        hash_cost(sizes[0]);
        for transport in ["tcp", "quic"] {
            raw_baseline(transport, sizes[0]).await?;
        }
        for (i, variant) in VARIANTS.iter().enumerate() {
            if only.is_some_and(|o| o != i) {
                continue;
            }
            for transport in ["tcp", "quic"] {
                throughput(transport, variant, sizes).await?;
            }
        }
        if std::env::var_os("MURMUR_BENCH_SKIP_GOSSIP").is_none() {
            propagation().await?;
        }
        Ok(())
    })
}

//! Shared helpers for the multi-node network tests: seeded identities, node start-up,
//! signed announcements and bounded waiting.
#![allow(dead_code, unreachable_pub)]

use std::future::Future;
use std::time::Duration;

use libp2p::identity::Keypair;
use murmur_node::identity::NodeIdentity;
use murmur_node::net::{NetConfig, NetEvents, Network};
use murmur_protocol::ed25519_dalek::SigningKey;
use murmur_protocol::{Announcement, Capacity, Message, ModelFingerprint, RunId, SignedEnvelope};

/// The run all test nodes join.
pub fn run() -> RunId {
    RunId::from_name("net-test-run")
}

/// A deterministic identity (seed → ed25519 signing key → libp2p keypair).
pub struct Identity {
    pub signing: SigningKey,
    pub keypair: Keypair,
}

pub fn identity(seed: u8) -> Identity {
    let node = NodeIdentity::from_secret([seed; 32]).expect("valid secret");
    Identity {
        signing: node.signing_key().clone(),
        keypair: node.keypair(),
    }
}

/// Starts a loopback node with `config` (defaults: `NetConfig::loopback`).
pub async fn start(seed: u8, config: NetConfig) -> (Identity, Network, NetEvents) {
    let id = identity(seed);
    let (net, events) = Network::start(id.keypair.clone(), config, None)
        .await
        .expect("network starts");
    (id, net, events)
}

/// A fast-discovery loopback config.
pub fn loopback() -> NetConfig {
    let mut config = NetConfig::loopback(run());
    config.kad_walk_interval = Some(Duration::from_millis(500));
    config
}

/// A signed announcement of `id` for `round`.
pub fn announcement(id: &Identity, round: u64) -> SignedEnvelope {
    let message = Message::Announcement(Announcement {
        peer: murmur_protocol::PeerKey(id.signing.verifying_key().to_bytes()),
        run: run(),
        model: ModelFingerprint([7; 32]),
        capacity: Capacity {
            samples_per_sec: 100.0,
            flops_per_sec: 1e9,
            memory_bytes: 1 << 30,
            device: "test".into(),
            links: Vec::new(),
        },
        round,
        listen_addrs: Vec::new(),
        timestamp_ms: 1_700_000_000_000 + round,
    });
    SignedEnvelope::sign(&id.signing, &message).expect("announcement signs")
}

/// Polls `check` every 100 ms until it returns true or `limit` passes.
pub async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Publishes `envelope` until gossipsub accepts it (peers must subscribe first).
pub async fn publish_when_ready(net: &Network, bytes: Vec<u8>, limit: Duration) -> bool {
    eventually(limit, || {
        let (net, bytes) = (net.clone(), bytes.clone());
        async move { net.publish_bytes(bytes).await.is_ok() }
    })
    .await
}

/// The first listen address of `net` using `transport` ("tcp" or "quic-v1"), with `/p2p/<id>`.
pub async fn addr_of(net: &Network, transport: &str) -> libp2p::Multiaddr {
    let addrs = net.listen_addrs().await.expect("listen addrs");
    let addr = addrs
        .into_iter()
        .find(|a| a.iter().any(|p| p.tag() == transport))
        .expect("a listener of that transport");
    addr.with(libp2p::multiaddr::Protocol::P2p(net.local_peer_id()))
}

//! `murmur node`: run this machine as a peer of a Murmur network.
//!
//! Starts the libp2p stack (see [`crate::net`]) with the node's persistent identity and
//! peer book, joins a run's announcement topic, publishes a signed presence announcement
//! periodically and prints the peers it knows. Training over the network (gossip averaging
//! of deltas) builds on this command; until it lands the node only takes part in discovery
//! and announcements.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use libp2p::Multiaddr;
use murmur_protocol::{Announcement, Capacity, Message, ModelFingerprint, RunId, SignedEnvelope};

use crate::identity::NodeIdentity;
use crate::net::{NetConfig, NetEvents, Network};
use crate::store::Store;

/// Flags of `murmur node`.
#[derive(Debug, Clone, clap::Args)]
pub struct NodeArgs {
    /// Name of the training run to join.
    #[arg(long, default_value = "murmur-default", env = "MURMUR_RUN")]
    pub run: String,
    /// Port for TCP and QUIC on all interfaces (0 = any free port).
    #[arg(long, default_value_t = 0, env = "MURMUR_PORT")]
    pub port: u16,
    /// Explicit listen multiaddrs (repeatable); replaces --port.
    #[arg(long)]
    pub listen: Vec<Multiaddr>,
    /// Bootstrap node multiaddrs with `/p2p/<id>` (repeatable).
    #[arg(long, env = "MURMUR_BOOTSTRAP", value_delimiter = ',')]
    pub bootstrap: Vec<Multiaddr>,
    /// Relays to reserve a circuit on when behind NAT (repeatable).
    #[arg(long)]
    pub relay: Vec<Multiaddr>,
    /// Publicly reachable addresses to advertise (repeatable).
    #[arg(long)]
    pub external_addr: Vec<Multiaddr>,
    /// Switch off mDNS discovery on the local network.
    #[arg(long)]
    pub no_mdns: bool,
    /// Serve the DHT (Kademlia server mode) from the start, for nodes that others can dial
    /// directly (a LAN, loopback, a public address). Otherwise the node serves it once
    /// AutoNAT confirms an external address; `--external-addr` implies it.
    #[arg(long)]
    pub kad_server: bool,
    /// Seconds between presence announcements.
    #[arg(long, default_value_t = 10)]
    pub announce_every: u64,
    /// Stop after this many seconds (default: run until Ctrl-C).
    #[arg(long)]
    pub duration: Option<u64>,
}

/// Runs a network node until Ctrl-C or `--duration`.
pub fn run(args: &NodeArgs, data_dir: &Path) -> anyhow::Result<()> {
    let identity = NodeIdentity::load_or_create(data_dir)?;
    let store = Store::open(&data_dir.join("store")).context("opening the node's store")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(args, identity, store))
}

async fn serve(args: &NodeArgs, identity: NodeIdentity, store: Store) -> anyhow::Result<()> {
    let run = RunId::from_name(&args.run);
    let mut config = NetConfig::new(run, args.port);
    if !args.listen.is_empty() {
        config.listen_addrs = args.listen.clone();
    }
    config.bootstrap = args.bootstrap.clone();
    config.relays = args.relay.clone();
    config.external_addrs = args.external_addr.clone();
    config.mdns = !args.no_mdns;
    config.kad_server = args.kad_server || !args.external_addr.is_empty();
    let (net, events) = Network::start(identity.keypair(), config, Some(&store)).await?;
    println!("peer id: {}", identity.peer_id());
    for addr in net.listen_addrs().await? {
        println!("listening: {addr}/p2p/{}", identity.peer_id());
    }
    let deadline = args.duration.map(Duration::from_secs);
    let result = tokio::select! {
        r = announce_loop(args, run, &identity, &net, events) => r,
        _ = tokio::signal::ctrl_c() => Ok(()),
        _ = sleep_or_forever(deadline) => Ok(()),
    };
    net.shutdown().await;
    result
}

async fn sleep_or_forever(limit: Option<Duration>) {
    match limit {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

async fn announce_loop(
    args: &NodeArgs,
    run: RunId,
    identity: &NodeIdentity,
    net: &Network,
    mut events: NetEvents,
) -> anyhow::Result<()> {
    let mut tick = tokio::time::interval(Duration::from_secs(args.announce_every.max(1)));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let envelope = announcement(run, identity, net).await?;
                if let Err(err) = net.publish_announcement(&envelope).await {
                    tracing::debug!(%err, "announcement not published (no subscribed peer yet?)");
                }
                print_peers(net).await?;
            }
            Some(event) = events.events.recv() => tracing::info!(?event, "network"),
            Some(a) = events.announcements.recv() => {
                tracing::info!(from = %a.from, round = a.announcement.round, "announcement");
            }
        }
    }
}

async fn announcement(
    run: RunId,
    identity: &NodeIdentity,
    net: &Network,
) -> anyhow::Result<SignedEnvelope> {
    let listen_addrs = net
        .listen_addrs()
        .await?
        .into_iter()
        .chain(net.external_addrs().await?)
        .take(murmur_protocol::message::MAX_LISTEN_ADDRS)
        .map(|a| a.to_string())
        .collect();
    let timestamp_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let message = Message::Announcement(Announcement {
        peer: identity.peer_key(),
        run,
        // No model is trained by a discovery-only node yet.
        model: ModelFingerprint::default(),
        capacity: Capacity {
            samples_per_sec: 0.0,
            flops_per_sec: 0.0,
            memory_bytes: 0,
            device: String::new(),
            links: Vec::new(),
        },
        round: 0,
        listen_addrs,
        timestamp_ms,
    });
    Ok(SignedEnvelope::sign(identity.signing_key(), &message)?)
}

async fn print_peers(net: &Network) -> anyhow::Result<()> {
    let peers = net.peers().await?;
    let connected = peers.iter().filter(|p| p.connected).count();
    println!("peers: {} known, {connected} connected", peers.len());
    for p in peers.iter().filter(|p| p.connected) {
        let rtt = p
            .rtt
            .map_or("-".into(), |d| format!("{:.1} ms", d.as_secs_f64() * 1e3));
        let announced = if p.announcement.is_some() {
            "announced"
        } else {
            ""
        };
        println!("  {}  rtt {rtt}  {announced}", p.peer_id);
    }
    Ok(())
}

//! `murmur-bootstrap`: a long-running, training-free bootstrap and relay node.
//!
//! Parses flags into a [`BootstrapConfig`], loads (or creates) the persistent identity,
//! prints the node's full multiaddrs and runs until Ctrl-C. All logic lives in
//! `murmur_node::net::bootstrap`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use libp2p::Multiaddr;
use murmur_node::identity::NodeIdentity;
use murmur_node::net::bootstrap::{Bootstrap, BootstrapConfig, RelayLimits};

/// Murmur bootstrap node: Kademlia server, relay, AutoNAT, identify, ping.
#[derive(Debug, Parser)]
#[command(name = "murmur-bootstrap", version)]
struct Args {
    /// Address to listen on (repeatable). Default: TCP and QUIC on 0.0.0.0:4001.
    #[arg(long = "listen")]
    listen: Vec<Multiaddr>,
    /// Publicly reachable address to advertise (repeatable).
    #[arg(long = "external-addr")]
    external_addr: Vec<Multiaddr>,
    /// File holding the node's identity (created with mode 0600 if missing).
    #[arg(long, default_value = "murmur-bootstrap.key")]
    key_file: PathBuf,
    /// Most relay reservations in total.
    #[arg(long, default_value_t = RelayLimits::default().max_reservations)]
    relay_max_reservations: usize,
    /// Most relayed circuits in total.
    #[arg(long, default_value_t = RelayLimits::default().max_circuits)]
    relay_max_circuits: usize,
    /// Most relayed circuits per peer.
    #[arg(long, default_value_t = RelayLimits::default().max_circuits_per_peer)]
    relay_max_circuits_per_peer: usize,
    /// Longest a relayed circuit may live, seconds.
    #[arg(long, default_value_t = RelayLimits::default().max_circuit_duration.as_secs())]
    relay_max_circuit_secs: u64,
    /// Most bytes a relayed circuit may carry.
    #[arg(long, default_value_t = RelayLimits::default().max_circuit_bytes)]
    relay_max_circuit_bytes: u64,
}

impl Args {
    fn config(&self) -> BootstrapConfig {
        let mut config = BootstrapConfig::default();
        if !self.listen.is_empty() {
            config.listen_addrs = self.listen.clone();
        }
        config.external_addrs = self.external_addr.clone();
        config.relay = RelayLimits {
            max_reservations: self.relay_max_reservations,
            max_circuits: self.relay_max_circuits,
            max_circuits_per_peer: self.relay_max_circuits_per_peer,
            max_circuit_duration: Duration::from_secs(self.relay_max_circuit_secs),
            max_circuit_bytes: self.relay_max_circuit_bytes,
            ..RelayLimits::default()
        };
        config
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let identity =
        NodeIdentity::load_or_create_file(&args.key_file).context("loading the node key")?;
    let keypair = identity.keypair();
    let node = Bootstrap::new(keypair, &args.config())
        .await
        .context("starting the node")?;
    println!("murmur-bootstrap peer id: {}", node.peer_id());
    for addr in node.addrs() {
        println!("{addr}");
    }
    node.run(async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await;
    Ok(())
}

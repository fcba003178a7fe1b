//! `murmur bootstrap-node` (hidden): the loopback bootstrap node `murmur testnet` starts as
//! a child process. Prints its addresses as JSON lines and stops when stdin closes.
//! Operators run the full `murmur-bootstrap` binary instead.

use std::path::Path;

use anyhow::Context;
use serde_json::json;

use crate::identity::NodeIdentity;
use crate::net::bootstrap::{Bootstrap, BootstrapConfig};

/// Runs the loopback bootstrap node.
pub fn run(data_dir: &Path) -> anyhow::Result<()> {
    let identity = NodeIdentity::load_or_create(data_dir)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let node = Bootstrap::new(identity.keypair(), &BootstrapConfig::loopback())
            .await
            .context("starting the bootstrap node")?;
        for addr in node.addrs() {
            println!(
                "{}",
                json!({"event": "listening", "addr": addr.to_string()})
            );
        }
        node.run(async {
            tokio::select! {
                _ = super::stdin_closed() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        })
        .await;
        anyhow::Ok(())
    })
}

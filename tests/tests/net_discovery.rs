//! Discovery: eight nodes find each other through one bootstrap address (Kademlia), and
//! without any bootstrap node through mDNS.

mod net_common;

use std::collections::HashSet;
use std::time::Duration;

use std::net::Ipv4Addr;

use murmur_node::net::bootstrap::{Bootstrap, BootstrapConfig};
use murmur_node::net::{Network, tcp_addr};
use net_common::{eventually, identity, loopback, start};

const NODES: u8 = 8;

async fn all_know_each_other(nets: &[Network]) -> bool {
    let ids: HashSet<_> = nets.iter().map(Network::local_peer_id).collect();
    for net in nets {
        let Ok(peers) = net.peers().await else {
            return false;
        };
        let known: HashSet<_> = peers.iter().map(|p| p.peer_id).collect();
        let others = ids.iter().filter(|id| **id != net.local_peer_id());
        if others.into_iter().any(|id| !known.contains(id)) {
            return false;
        }
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_nodes_discover_each_other_through_one_bootstrap() {
    let boot = Bootstrap::new(identity(200).keypair, &BootstrapConfig::loopback())
        .await
        .expect("bootstrap starts")
        .spawn();
    let boot_addr = boot.addrs.first().cloned().expect("bootstrap address");
    let mut nets = Vec::new();
    for seed in 1..=NODES {
        let mut config = loopback();
        config.bootstrap = vec![boot_addr.clone()];
        let (_, net, _events) = start(seed, config).await;
        nets.push(net);
    }
    let found = eventually(Duration::from_secs(30), || all_know_each_other(&nets)).await;
    assert!(
        found,
        "all {NODES} nodes should discover each other within 30 s"
    );
    for net in &nets {
        net.shutdown().await;
    }
    boot.shutdown().await;
}

/// Set inside the network namespace the mDNS test creates for itself.
const IN_NETNS: &str = "MURMUR_TEST_IN_NETNS";

/// Sets up the namespace: loopback, and a veth pair (multicast on) with a private address,
/// then runs this test binary again, only the mDNS test, inside it.
const NETNS_SETUP: &str = "ip link set lo up \
    && ip link add mm0 type veth peer name mm1 \
    && ip link set mm0 multicast on up && ip link set mm1 up \
    && ip addr add 10.77.0.1/24 dev mm0 \
    && exec \"$0\" --exact eight_nodes_discover_each_other_with_mdns_only --nocapture";

/// libp2p-mdns skips loopback interfaces and only advertises listen addresses that match the
/// multicast interface, so mDNS needs a real multicast-capable interface and listeners on
/// all interfaces. To stay off the host's network the test runs itself again inside a network
/// namespace of its own (`unshare --net`, needs root as CI has) with a veth pair, where
/// "all interfaces" are that pair and loopback.
#[test]
fn eight_nodes_discover_each_other_with_mdns_only() {
    if std::env::var_os(IN_NETNS).is_some() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(mdns_only_discovery());
        return;
    }
    let exe = std::env::current_exe().expect("test binary path");
    let out = std::process::Command::new("timeout")
        .args(["60", "unshare", "--net", "sh", "-c", NETNS_SETUP])
        .arg(exe)
        .env(IN_NETNS, "1")
        .output()
        .expect("run `timeout`/`unshare` (coreutils, util-linux)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "mDNS test in its own network namespace failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
}

async fn mdns_only_discovery() {
    let mut nets = Vec::new();
    for seed in 11..11 + NODES {
        let mut config = loopback();
        config.mdns = true;
        config.kad_walk_interval = None;
        config.listen_addrs = vec![tcp_addr(Ipv4Addr::UNSPECIFIED, 0)];
        let (_, net, _events) = start(seed, config).await;
        nets.push(net);
    }
    let found = eventually(Duration::from_secs(30), || all_know_each_other(&nets)).await;
    for net in &nets {
        net.shutdown().await;
    }
    assert!(
        found,
        "all {NODES} nodes should discover each other over mDNS within 30 s"
    );
}

//! The Murmur node: identity, networking, storage and the command line of the `murmur` binary.
//!
//! - [`identity`]: the node's ed25519 key, shared by libp2p and delta signing.
//! - [`cli`]: command-line parsing and the subcommands of `murmur`.
//! - [`paths`]: where a node keeps its data by default.
//! - [`train_local`]: `murmur train`, a single-node training run.
//! - [`node_cmd`]: `murmur node`, a training peer of a run.
//! - [`net`]: the libp2p swarm owner task and the `Network` handle.
//! - [`averaging`]: gossip averaging of signed deltas (push-sum, robust merging, policies).
//! - [`session`]: one training node: training thread + network tasks, checkpoints, state sync.
//! - [`testnet`]: `murmur testnet`, a local network of nodes as processes.
//! - [`pool_cmd`]: `murmur pool`, closed-pool manifests.
//! - [`shard`]: capacity-aware placement of layer shards on peers.
//! - [`store`]: the sled store (peer book, checkpoints, merged pairs).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod averaging;
pub mod cli;
pub mod identity;
pub mod net;
pub mod node_cmd;
pub mod paths;
pub mod pool_cmd;
pub mod session;
pub mod shard;
pub mod store;
pub mod testnet;
pub mod train_local;

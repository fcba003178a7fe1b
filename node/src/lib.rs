//! The Murmur node: identity, networking, storage and the command line of the `murmur` binary.
//!
//! - [`identity`]: the node's ed25519 key, shared by libp2p and delta signing.
//! - [`cmd`]: the command line of `murmur` and its commands (`node`, `train`, `testnet`,
//!   `pool`, `keygen`/`id`): raw flags, validated configurations, entry points.
//! - [`paths`]: where a node keeps its data by default.
//! - [`net`]: the libp2p swarm owner task and the `Network` handle.
//! - [`averaging`]: gossip averaging of signed deltas (push-sum, robust merging, policies).
//! - [`session`]: one training node: training thread + network tasks, checkpoints, state sync.
//! - [`shard`]: capacity-aware placement of layer shards on peers.
//! - [`store`]: the sled store (peer book, checkpoints, merged pairs).
//! - [`errors`]: printing an error with its chain of causes.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

// Test fixtures shared with the integration tests (`tests/support/`) name this crate as they do.
#[cfg(test)]
extern crate self as murmur_node;

pub mod adversary;
pub mod averaging;
pub mod cmd;
pub mod errors;
#[doc(hidden)]
pub mod fuzzing;
pub mod identity;
pub mod net;
pub mod paths;
pub mod session;
pub mod shard;
pub mod store;

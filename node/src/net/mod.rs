//! Peer-to-peer networking over libp2p 0.57.
//!
//! - [`Network`]: the handle the node uses (send payloads, fetch state, publish and receive
//!   announcements, list peers); the swarm itself is owned by one task (`event_loop`).
//! - Behaviour: TCP + QUIC, Noise, Yamux, identify, ping, Kademlia (`/murmur/kad/1.0.0`),
//!   mDNS, gossipsub (signed, strictly validated announcements), relay client, DCUtR,
//!   AutoNAT v2, connection limits, and `libp2p-stream` for bulk transfers.
//! - [`bootstrap`]: the training-free bootstrap / relay node.
//!
//! Wire formats and protocol ids are documented in `docs/network.md`.

mod behaviour;
pub mod bootstrap;
pub mod config;
mod error;
mod event_loop;
mod events;
pub mod gossip;
mod handle;
mod inbound;
mod ip_limits;
pub mod keys;
mod open;
mod peers;
mod quota;
mod shared;
mod stall;
mod start;
mod state;
mod swarm_events;
mod transfer;

pub use behaviour::{IDENTIFY_VERSION, KAD_PROTOCOL};
pub use config::{NetConfig, NetLimits, TransportTuning, quic_addr, tcp_addr};
pub use error::{NetError, TransferError};
pub use events::{IncomingPayload, NetEvent, TransferStats};
pub use gossip::{ReceivedAnnouncement, announcement_topic};
pub use handle::Network;
pub use keys::{key_matches_peer, peer_id_of, peer_key_of};
pub(crate) use peers::now_ms;
pub use peers::{PeerInfo, link_stats};
pub use start::{NetEvents, peer_id_of_addr};
pub use state::{STATE_PROTOCOL, StateReply, StateRequestEvent, StateResponse};
pub use transfer::{Admission, PayloadKind};

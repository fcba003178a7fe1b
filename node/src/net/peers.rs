//! The live peer table owned by the swarm task, and the [`PeerInfo`] view handed out.
//!
//! Entries start from the persisted peer book and are updated from connections, discovery,
//! ping, transfers and announcements. Changed entries are marked dirty and written back to
//! the peer book in batches, off the swarm task.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use libp2p::{Multiaddr, PeerId};
use murmur_protocol::Announcement;

use crate::store::{PeerRecord, StoredCapacity};

/// What the node knows about a peer right now.
#[derive(Clone, Debug)]
pub struct PeerInfo {
    /// The peer.
    pub peer_id: PeerId,
    /// Known addresses, newest first.
    pub addrs: Vec<Multiaddr>,
    /// Whether at least one connection is open.
    pub connected: bool,
    /// The peer's latest valid announcement (capacity, round, model, listen addresses).
    pub announcement: Option<Announcement>,
    /// Latest measured round-trip time.
    pub rtt: Option<Duration>,
    /// Smoothed measured transfer throughput, bytes per second.
    pub throughput_bps: Option<f64>,
    /// Accumulated misbehaviour score.
    pub misbehaviour: u32,
    /// Unix time (ms) the peer was last seen.
    pub last_seen_ms: u64,
}

#[derive(Debug, Default)]
struct Entry {
    record: PeerRecord,
    connections: usize,
    announcement: Option<Announcement>,
    dirty: bool,
}

/// Live peer table.
#[derive(Debug, Default)]
pub(crate) struct PeerTable {
    entries: HashMap<PeerId, Entry>,
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl PeerTable {
    /// Seeds the table from persisted records.
    pub(crate) fn from_records(records: Vec<(PeerId, PeerRecord)>) -> Self {
        let entries = records
            .into_iter()
            .map(|(peer, record)| {
                (
                    peer,
                    Entry {
                        record,
                        ..Entry::default()
                    },
                )
            })
            .collect();
        Self { entries }
    }

    /// Whether `peer` is known.
    pub(crate) fn contains(&self, peer: &PeerId) -> bool {
        self.entries.contains_key(peer)
    }

    fn touch(&mut self, peer: PeerId) -> &mut Entry {
        let entry = self.entries.entry(peer).or_default();
        entry.record.last_seen_ms = now_ms();
        entry.dirty = true;
        entry
    }

    /// Records an address; returns whether the peer was new.
    pub(crate) fn add_addr(&mut self, peer: PeerId, addr: &Multiaddr) -> bool {
        let new = !self.contains(&peer);
        self.touch(peer).record.add_addr(addr);
        new
    }

    /// Connection opened; returns whether it is the first one to this peer.
    pub(crate) fn connected(&mut self, peer: PeerId, addr: &Multiaddr) -> bool {
        let entry = self.touch(peer);
        entry.connections += 1;
        if !addr
            .iter()
            .any(|p| matches!(p, libp2p::multiaddr::Protocol::P2pCircuit))
        {
            entry.record.add_addr(addr);
        }
        entry.connections == 1
    }

    /// Connection closed; returns whether it was the last one.
    pub(crate) fn disconnected(&mut self, peer: PeerId) -> bool {
        let entry = self.touch(peer);
        entry.connections = entry.connections.saturating_sub(1);
        entry.connections == 0
    }

    pub(crate) fn record_rtt(&mut self, peer: PeerId, rtt: Duration) {
        self.touch(peer).record.rtt_us = Some(rtt.as_micros().min(u128::from(u64::MAX)) as u64);
    }

    pub(crate) fn record_throughput(&mut self, peer: PeerId, bytes_per_sec: f64) {
        self.touch(peer).record.record_throughput(bytes_per_sec);
    }

    /// Stores a validated announcement (and the addresses it lists).
    pub(crate) fn record_announcement(&mut self, peer: PeerId, announcement: &Announcement) {
        let entry = self.touch(peer);
        entry.record.capacity = Some(StoredCapacity {
            samples_per_sec: f64::from(announcement.capacity.samples_per_sec),
            memory_bytes: announcement.capacity.memory_bytes,
        });
        for addr in announcement
            .listen_addrs
            .iter()
            .filter_map(|a| a.parse().ok())
        {
            entry.record.add_addr(&addr);
        }
        entry.announcement = Some(announcement.clone());
    }

    /// Adds misbehaviour points; returns the new score.
    pub(crate) fn penalize(&mut self, peer: PeerId, points: u32) -> u32 {
        let entry = self.touch(peer);
        entry.record.misbehaviour = entry.record.misbehaviour.saturating_add(points);
        entry.record.misbehaviour
    }

    pub(crate) fn misbehaviour(&self, peer: &PeerId) -> u32 {
        self.entries.get(peer).map_or(0, |e| e.record.misbehaviour)
    }

    pub(crate) fn is_connected(&self, peer: &PeerId) -> bool {
        self.entries.get(peer).is_some_and(|e| e.connections > 0)
    }

    pub(crate) fn connected_count(&self) -> usize {
        self.entries.values().filter(|e| e.connections > 0).count()
    }

    /// Records changed since the last call (for the peer book).
    pub(crate) fn take_dirty(&mut self) -> Vec<(PeerId, PeerRecord)> {
        self.entries
            .iter_mut()
            .filter(|(_, e)| e.dirty)
            .map(|(peer, e)| {
                e.dirty = false;
                (*peer, e.record.clone())
            })
            .collect()
    }

    /// Snapshot of all known peers.
    pub(crate) fn infos(&self) -> Vec<PeerInfo> {
        self.entries
            .iter()
            .map(|(peer, e)| PeerInfo {
                peer_id: *peer,
                addrs: e.record.multiaddrs(),
                connected: e.connections > 0,
                announcement: e.announcement.clone(),
                rtt: e.record.rtt_us.map(Duration::from_micros),
                throughput_bps: e.record.throughput_bps,
                misbehaviour: e.record.misbehaviour,
                last_seen_ms: e.record.last_seen_ms,
            })
            .collect()
    }
}

//! The live peer table owned by the swarm task, and the [`PeerInfo`] view handed out.
//!
//! Entries start from the persisted peer book and are updated from connections, discovery,
//! ping, transfers and announcements. Changed entries are marked dirty and written back to
//! the peer book in batches, off the swarm task.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use libp2p::{Multiaddr, PeerId};
use murmur_protocol::message::MAX_LINKS;
use murmur_protocol::{Announcement, LinkStat};

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

/// This node's measured links (RTT, throughput) to the connected peers that announced
/// themselves, as announcements carry them (at most [`MAX_LINKS`]).
pub fn link_stats(peers: &[PeerInfo]) -> Vec<LinkStat> {
    peers
        .iter()
        .filter(|p| p.connected)
        .filter_map(|p| {
            Some(LinkStat {
                peer: p.announcement.as_ref()?.peer,
                rtt_us: p
                    .rtt
                    .map_or(0, |d| u32::try_from(d.as_micros()).unwrap_or(u32::MAX)),
                bytes_per_sec: p.throughput_bps.map_or(0, |b| b as u64),
            })
        })
        .take(MAX_LINKS)
        .collect()
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

#[cfg(test)]
mod tests {
    use murmur_protocol::{Capacity, ModelFingerprint, PeerKey, RunId};

    use super::*;

    fn info(connected: bool, announced: Option<u8>, rtt_ms: u64, bps: f64) -> PeerInfo {
        PeerInfo {
            peer_id: PeerId::random(),
            addrs: Vec::new(),
            connected,
            announcement: announced.map(|k| Announcement {
                peer: PeerKey([k; 32]),
                run: RunId::from_name("links"),
                model: ModelFingerprint([0; 32]),
                capacity: Capacity {
                    samples_per_sec: 1.0,
                    flops_per_sec: 1.0,
                    memory_bytes: 1,
                    device: "cpu".into(),
                    links: Vec::new(),
                },
                round: 0,
                listen_addrs: Vec::new(),
                timestamp_ms: 0,
            }),
            rtt: Some(Duration::from_millis(rtt_ms)),
            throughput_bps: Some(bps),
            misbehaviour: 0,
            last_seen_ms: 0,
        }
    }

    #[test]
    fn link_stats_cover_connected_announced_peers() {
        let peers = [
            info(true, Some(1), 3, 2.5e8),
            info(false, Some(2), 1, 1.0),
            info(true, None, 1, 1.0),
        ];
        let links = link_stats(&peers);
        assert_eq!(links.len(), 1);
        assert_eq!(links[0].peer, PeerKey([1; 32]));
        assert_eq!(links[0].rtt_us, 3000);
        assert_eq!(links[0].bytes_per_sec, 250_000_000);
    }
}

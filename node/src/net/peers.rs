//! The live peer table owned by the swarm task, and the [`PeerInfo`] view handed out.
//!
//! Entries start from the persisted peer book and are updated from connections, discovery,
//! ping, transfers and announcements. Changed entries are marked dirty and written back to
//! the peer book in batches, off the swarm task.
//!
//! Both stay bounded, whatever peers do: a peer id is free, so the table holds at most
//! [`MAX_PEERS`] entries (a new peer beyond that evicts the least recently seen one that is not
//! connected, from the peer book too). Misbehaviour scores are not forever: a score holds for
//! [`SCORE_HOLD_MS`] after the peer's last offence (a ban lasts that long), then halves every
//! [`SCORE_HALF_LIFE_MS`], so an honest peer that once sent something odd over a long run is
//! not banned for good.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
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
    /// That announcement's signed envelope as received: what a plan notice cites for the
    /// peer's capacity (see `shard::pipeline::membership::citations`).
    pub announcement_envelope: Option<Bytes>,
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

/// Most peers the table (and the peer book) keeps.
pub(crate) const MAX_PEERS: usize = 4096;
/// How long a misbehaviour score holds after the peer's last offence (ms).
pub(crate) const SCORE_HOLD_MS: u64 = 3_600_000;
/// After the hold, the score halves this often (ms).
pub(crate) const SCORE_HALF_LIFE_MS: u64 = 3_600_000;

/// `score`, last raised at `since_ms`, as it stands at `now_ms`.
fn decayed(score: u32, since_ms: u64, now_ms: u64) -> u32 {
    let past_hold = now_ms
        .saturating_sub(since_ms)
        .saturating_sub(SCORE_HOLD_MS);
    if past_hold == 0 {
        return score;
    }
    let halvings = past_hold as f64 / SCORE_HALF_LIFE_MS as f64;
    (f64::from(score) * 0.5f64.powf(halvings)).floor() as u32
}

#[derive(Debug, Default)]
struct Entry {
    record: PeerRecord,
    connections: usize,
    announcement: Option<Announcement>,
    envelope: Option<Bytes>,
    dirty: bool,
    /// When the misbehaviour score was last raised (ms).
    scored_ms: u64,
    /// When its last announcement was taken in (ms).
    announced_ms: u64,
}

/// Live peer table.
#[derive(Debug, Default)]
pub(crate) struct PeerTable {
    entries: HashMap<PeerId, Entry>,
    /// Peers evicted since the last [`take_evicted`](Self::take_evicted) (for the peer book).
    evicted: Vec<PeerId>,
}

/// Shortest time between two announcements of one peer that are taken in (ms).
pub(crate) const MIN_ANNOUNCEMENT_GAP_MS: u64 = 50;

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl PeerTable {
    /// Seeds the table from persisted records (the [`MAX_PEERS`] seen most recently; the
    /// others are evicted).
    pub(crate) fn from_records(mut records: Vec<(PeerId, PeerRecord)>) -> Self {
        records.sort_by_key(|(_, r)| std::cmp::Reverse(r.last_seen_ms));
        let evicted = records
            .iter()
            .skip(MAX_PEERS)
            .map(|(peer, _)| *peer)
            .collect();
        records.truncate(MAX_PEERS);
        let entries = records
            .into_iter()
            .map(|(peer, record)| {
                let scored_ms = record.last_seen_ms;
                let entry = Entry {
                    record,
                    scored_ms,
                    ..Entry::default()
                };
                (peer, entry)
            })
            .collect();
        Self { entries, evicted }
    }

    /// Peers evicted since the last call (to remove from the peer book).
    pub(crate) fn take_evicted(&mut self) -> Vec<PeerId> {
        std::mem::take(&mut self.evicted)
    }

    /// Makes room for one more entry: the least recently seen peer that is not connected
    /// goes (none goes while every entry is connected: connections are bounded elsewhere).
    fn make_room(&mut self) {
        if self.entries.len() < MAX_PEERS {
            return;
        }
        let stalest = self
            .entries
            .iter()
            .filter(|(_, e)| e.connections == 0)
            .min_by_key(|(_, e)| e.record.last_seen_ms)
            .map(|(peer, _)| *peer);
        if let Some(peer) = stalest {
            self.entries.remove(&peer);
            self.evicted.push(peer);
        }
    }

    /// Whether `peer` is known.
    pub(crate) fn contains(&self, peer: &PeerId) -> bool {
        self.entries.contains_key(peer)
    }

    fn touch(&mut self, peer: PeerId) -> &mut Entry {
        if !self.entries.contains_key(&peer) {
            self.make_room();
        }
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

    /// Stores a validated announcement (and the addresses it lists) with its signed
    /// `envelope`.
    pub(crate) fn record_announcement(
        &mut self,
        peer: PeerId,
        announcement: &Announcement,
        envelope: Bytes,
    ) {
        self.record_announcement_at(peer, announcement, now_ms());
        self.touch(peer).envelope = Some(envelope);
    }

    /// Whether an announcement of `peer` is taken in now: at most one per
    /// [`MIN_ANNOUNCEMENT_GAP_MS`] (each wakes the membership, state-sync and re-balance
    /// watches and dirties the peer book; honest peers announce at most every 100 ms).
    pub(crate) fn announcement_due(&self, peer: &PeerId) -> bool {
        self.announcement_due_at(peer, now_ms())
    }

    fn announcement_due_at(&self, peer: &PeerId, now_ms: u64) -> bool {
        self.entries.get(peer).is_none_or(|e| {
            e.announcement.is_none()
                || now_ms.saturating_sub(e.announced_ms) >= MIN_ANNOUNCEMENT_GAP_MS
        })
    }

    fn record_announcement_at(&mut self, peer: PeerId, announcement: &Announcement, now_ms: u64) {
        let entry = self.touch(peer);
        entry.announced_ms = now_ms;
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
        self.penalize_at(peer, points, now_ms())
    }

    fn penalize_at(&mut self, peer: PeerId, points: u32, now_ms: u64) -> u32 {
        let entry = self.touch(peer);
        let score = decayed(entry.record.misbehaviour, entry.scored_ms, now_ms);
        entry.record.misbehaviour = score.saturating_add(points);
        entry.scored_ms = now_ms;
        entry.record.misbehaviour
    }

    /// The peer's misbehaviour score now (decayed).
    pub(crate) fn misbehaviour(&self, peer: &PeerId) -> u32 {
        self.misbehaviour_at(peer, now_ms())
    }

    fn misbehaviour_at(&self, peer: &PeerId, now_ms: u64) -> u32 {
        self.entries
            .get(peer)
            .map_or(0, |e| decayed(e.record.misbehaviour, e.scored_ms, now_ms))
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
        let now = now_ms();
        self.entries
            .iter()
            .map(|(peer, e)| PeerInfo {
                peer_id: *peer,
                addrs: e.record.multiaddrs(),
                connected: e.connections > 0,
                announcement: e.announcement.clone(),
                announcement_envelope: e.envelope.clone(),
                rtt: e.record.rtt_us.map(Duration::from_micros),
                throughput_bps: e.record.throughput_bps,
                misbehaviour: decayed(e.record.misbehaviour, e.scored_ms, now),
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
            announcement_envelope: None,
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

    /// Announcement flood: one peer's announcements closer than the gap are not taken in
    /// (each would wake every watch of the peer book), one per gap is.
    #[test]
    fn announcements_closer_than_the_gap_are_not_taken_in() {
        let mut table = PeerTable::default();
        let peer = PeerId::random();
        let announcement = info(true, Some(1), 1, 1.0).announcement.expect("announced");
        assert!(table.announcement_due_at(&peer, 1_000));
        table.record_announcement_at(peer, &announcement, 1_000);
        for t in [1_000, 1_010, 1_000 + MIN_ANNOUNCEMENT_GAP_MS - 1] {
            assert!(!table.announcement_due_at(&peer, t), "{t}");
        }
        assert!(table.announcement_due_at(&peer, 1_000 + MIN_ANNOUNCEMENT_GAP_MS));
        assert!(
            table.announcement_due_at(&PeerId::random(), 1_010),
            "other peers are not held"
        );
    }

    /// A score holds for an hour after the last offence (a ban lasts that long), then
    /// halves every hour (before: scores never decayed, so an honest peer that sent a few
    /// odd messages over a long run was banned for good).
    #[test]
    fn misbehaviour_holds_then_decays() {
        let mut table = PeerTable::default();
        let peer = PeerId::random();
        let t0 = 1_000_000_000;
        assert_eq!(table.penalize_at(peer, 100, t0), 100);
        assert_eq!(table.misbehaviour_at(&peer, t0 + SCORE_HOLD_MS), 100);
        let later = t0 + SCORE_HOLD_MS + SCORE_HALF_LIFE_MS;
        assert_eq!(table.misbehaviour_at(&peer, later), 50);
        assert_eq!(
            table.misbehaviour_at(&peer, later + 10 * SCORE_HALF_LIFE_MS),
            0
        );
        // A new offence adds to what is left, and holds again.
        assert_eq!(table.penalize_at(peer, 10, later), 60);
        assert_eq!(table.misbehaviour_at(&peer, later + SCORE_HOLD_MS), 60);
    }

    /// Fresh identities cost nothing: the table stays bounded, evicting the stalest peer
    /// that is not connected (and reporting it for the peer book), never a connected one.
    #[test]
    fn the_table_stays_bounded_and_keeps_connected_peers() {
        let mut table = PeerTable::default();
        let addr: Multiaddr = "/ip4/127.0.0.1/tcp/1".parse().expect("valid addr");
        let connected = PeerId::random();
        table.connected(connected, &addr);
        for _ in 0..MAX_PEERS + 100 {
            table.add_addr(PeerId::random(), &addr);
        }
        assert_eq!(table.entries.len(), MAX_PEERS);
        assert!(table.is_connected(&connected));
        assert_eq!(table.take_evicted().len(), 101);
        assert!(table.take_evicted().is_empty());
    }
}

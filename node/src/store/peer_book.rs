//! The persisted peer book: what this node knows about other peers across restarts.
//!
//! Keyed by the peer id's multihash bytes. Holds recent addresses, last-seen time, the
//! capacity from the peer's latest announcement, measured RTT and throughput, and a
//! misbehaviour score. The network layer keeps a live copy in memory and writes snapshots
//! here off the swarm task; on start it reads the book to redial known peers without a
//! bootstrap node.

use libp2p::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};

use super::{StoreError, TypedTree};

/// Most addresses remembered per peer (newest first).
pub const MAX_ADDRS_PER_PEER: usize = 8;

/// Capacity as announced by the peer (a storage copy of the wire type).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StoredCapacity {
    /// Training samples per second the peer reported.
    pub samples_per_sec: f64,
    /// Memory the peer reported, in bytes.
    pub memory_bytes: u64,
}

/// Everything remembered about one peer.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PeerRecord {
    /// Known addresses, newest first, at most [`MAX_ADDRS_PER_PEER`].
    pub addrs: Vec<String>,
    /// Unix time in milliseconds when the peer was last connected or heard from.
    pub last_seen_ms: u64,
    /// Capacity from the peer's latest valid announcement.
    pub capacity: Option<StoredCapacity>,
    /// Latest measured round-trip time in microseconds.
    pub rtt_us: Option<u64>,
    /// Smoothed measured transfer throughput in bytes per second.
    pub throughput_bps: Option<f64>,
    /// Accumulated misbehaviour points (malformed messages, bad frames, …).
    pub misbehaviour: u32,
}

impl PeerRecord {
    /// Remembers `addr` as the newest address, keeping the list bounded and unique.
    pub fn add_addr(&mut self, addr: &Multiaddr) {
        let text = addr.to_string();
        self.addrs.retain(|known| *known != text);
        self.addrs.insert(0, text);
        self.addrs.truncate(MAX_ADDRS_PER_PEER);
    }

    /// Parsed addresses; unparsable entries (from a corrupt file) are skipped.
    pub fn multiaddrs(&self) -> Vec<Multiaddr> {
        self.addrs.iter().filter_map(|a| a.parse().ok()).collect()
    }

    /// Folds a new throughput sample into the smoothed value (EWMA, weight 1/4).
    pub fn record_throughput(&mut self, bytes_per_sec: f64) {
        if !bytes_per_sec.is_finite() || bytes_per_sec <= 0.0 {
            return;
        }
        self.throughput_bps = Some(match self.throughput_bps {
            Some(old) => old * 0.75 + bytes_per_sec * 0.25,
            None => bytes_per_sec,
        });
    }
}

/// What [`PeerBook::all`] read.
#[derive(Debug, Default)]
pub struct Scan {
    /// The readable records.
    pub records: Vec<(PeerId, PeerRecord)>,
    /// Records skipped as damaged.
    pub damaged: usize,
}

/// The peer book tree.
#[derive(Clone, Debug)]
pub struct PeerBook {
    tree: TypedTree<PeerRecord>,
}

impl PeerBook {
    pub(crate) fn new(tree: TypedTree<PeerRecord>) -> Self {
        Self { tree }
    }

    /// The record of `peer`, if any.
    pub fn get(&self, peer: &PeerId) -> Result<Option<PeerRecord>, StoreError> {
        self.tree.get(&peer.to_bytes())
    }

    /// Stores `record` for `peer`.
    pub fn put(&self, peer: &PeerId, record: &PeerRecord) -> Result<(), StoreError> {
        self.tree.insert(&peer.to_bytes(), record)
    }

    /// Removes the record of `peer`.
    pub fn remove(&self, peer: &PeerId) -> Result<bool, StoreError> {
        self.tree.remove(&peer.to_bytes())
    }

    /// Reads, changes and writes back the record of `peer` (created if missing, or replacing
    /// a damaged one).
    pub fn update(
        &self,
        peer: &PeerId,
        change: impl FnOnce(&mut PeerRecord),
    ) -> Result<PeerRecord, StoreError> {
        let mut record = match self.get(peer) {
            Ok(record) => record.unwrap_or_default(),
            Err(err @ StoreError::Decode { .. }) => {
                tracing::warn!(%peer, %err, "damaged peer-book record replaced");
                PeerRecord::default()
            }
            Err(err) => return Err(err),
        };
        change(&mut record);
        self.put(peer, &record)?;
        Ok(record)
    }

    /// All readable records, and how many were damaged (an undecodable key or value: a
    /// torn write, another version, a corrupt file). Damaged ones are skipped and logged, not
    /// fatal: a peer book is a cache of whom to redial. Only a failing store is an error.
    pub fn all(&self) -> Result<Scan, StoreError> {
        let mut scan = Scan::default();
        for item in self.tree.iter() {
            let entry = item.and_then(|(key, record)| {
                let peer = PeerId::from_bytes(&key).map_err(|_| StoreError::BadKey {
                    tree: self.tree.name().to_owned(),
                })?;
                Ok((peer, record))
            });
            match entry {
                Ok(entry) => scan.records.push(entry),
                Err(err @ (StoreError::Decode { .. } | StoreError::BadKey { .. })) => {
                    scan.damaged += 1;
                    tracing::debug!(%err, "damaged peer-book record skipped");
                }
                Err(err) => return Err(err),
            }
        }
        if scan.damaged > 0 {
            tracing::warn!(
                damaged = scan.damaged,
                kept = scan.records.len(),
                "skipped damaged peer-book records"
            );
        }
        Ok(scan)
    }

    /// Peers worth redialing after a restart: most recently seen first, with at least one
    /// address and a misbehaviour score below `max_misbehaviour`, at most `limit` of them.
    pub fn dial_candidates(
        &self,
        limit: usize,
        max_misbehaviour: u32,
    ) -> Result<Vec<(PeerId, Vec<Multiaddr>)>, StoreError> {
        let mut records: Vec<_> = self
            .all()?
            .records
            .into_iter()
            .filter(|(_, r)| r.misbehaviour < max_misbehaviour && !r.addrs.is_empty())
            .collect();
        records.sort_by_key(|(_, r)| std::cmp::Reverse(r.last_seen_ms));
        Ok(records
            .into_iter()
            .take(limit)
            .map(|(peer, r)| (peer, r.multiaddrs()))
            .filter(|(_, addrs)| !addrs.is_empty())
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    #[test]
    fn records_survive_reopen_and_rank_by_last_seen() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let (a, b) = (PeerId::random(), PeerId::random());
        {
            let book = Store::open(dir.path())?.peer_book()?;
            book.update(&a, |r| {
                r.add_addr(&"/ip4/127.0.0.1/tcp/1".parse().expect("valid addr"));
                r.last_seen_ms = 10;
            })?;
            book.update(&b, |r| {
                r.add_addr(&"/ip4/127.0.0.1/tcp/2".parse().expect("valid addr"));
                r.last_seen_ms = 20;
                r.misbehaviour = 3;
            })?;
        }
        let book = Store::open(dir.path())?.peer_book()?;
        let all = book.dial_candidates(10, 100)?;
        assert_eq!(all.iter().map(|(p, _)| *p).collect::<Vec<_>>(), vec![b, a]);
        assert_eq!(book.dial_candidates(10, 3)?.len(), 1);
        Ok(())
    }

    /// A damaged record (torn write, corrupt file, bad key) is skipped and counted; the
    /// others are read and the damaged one can be written over (before, one such record made
    /// every start-up fail).
    #[test]
    fn damaged_records_are_skipped_and_counted() -> Result<(), Box<dyn std::error::Error>> {
        let store = Store::temporary()?;
        let book = store.peer_book()?;
        let (good, bad) = (PeerId::random(), PeerId::random());
        book.update(&good, |r| {
            r.add_addr(&"/ip4/127.0.0.1/tcp/1".parse().expect("valid addr"));
        })?;
        let raw = store.raw_tree(crate::store::PEER_BOOK_TREE)?;
        raw.insert(bad.to_bytes(), &[0xff; 3][..])?;
        raw.insert(b"not a peer id", &[0u8; 4][..])?;
        let scan = book.all()?;
        assert_eq!(scan.damaged, 2);
        assert_eq!(scan.records.len(), 1);
        assert_eq!(scan.records[0].0, good);
        assert_eq!(book.dial_candidates(10, 100)?.len(), 1);
        book.update(&bad, |r| r.last_seen_ms = 5)?;
        assert_eq!(book.get(&bad)?.map(|r| r.last_seen_ms), Some(5));
        Ok(())
    }

    #[test]
    fn addresses_stay_bounded_and_unique() {
        let mut record = PeerRecord::default();
        for port in 0..20 {
            let addr: Multiaddr = format!("/ip4/127.0.0.1/tcp/{port}").parse().expect("valid");
            record.add_addr(&addr);
            record.add_addr(&addr);
        }
        assert_eq!(record.addrs.len(), MAX_ADDRS_PER_PEER);
        assert_eq!(record.addrs[0], "/ip4/127.0.0.1/tcp/19");
    }
}

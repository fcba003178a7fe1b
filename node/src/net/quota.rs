//! Per-peer quotas of one protocol's inbound streams.
//!
//! A protocol reads a few streams at once and lets a few more wait (see `inbound`). Without a
//! per-peer bound, one peer that opens that many streams and then trickles bytes into them
//! (slow loris) held every place until the stall timeout, and honest deltas, parts and state
//! were refused meanwhile. [`PeerQuotas`] gives each peer at most a share of the places that
//! are admitted (read or waiting) and of those read at once; a stream beyond the first share
//! is dropped on arrival, one beyond the second waits for the peer's own earlier streams.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use libp2p::PeerId;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The inbound places each peer holds on one protocol.
#[derive(Debug)]
pub(crate) struct PeerQuotas {
    /// Most streams of one peer admitted at once (read or waiting).
    admitted: usize,
    /// Most streams of one peer read at once.
    reading: usize,
    peers: Mutex<HashMap<PeerId, Held>>,
}

/// What one peer holds.
#[derive(Debug)]
struct Held {
    admitted: usize,
    reading: Arc<Semaphore>,
}

/// One admitted stream's place in its peer's quota; given back when dropped.
#[derive(Debug)]
pub(crate) struct Admitted {
    quotas: Arc<PeerQuotas>,
    peer: PeerId,
    reading: Arc<Semaphore>,
}

impl PeerQuotas {
    /// Quotas of `admitted` streams per peer, `reading` of them read at once (each at least 1).
    pub(crate) fn new(admitted: usize, reading: usize) -> Arc<Self> {
        Arc::new(Self {
            admitted: admitted.max(1),
            reading: reading.max(1),
            peers: Mutex::new(HashMap::new()),
        })
    }

    /// Takes one of `peer`'s admitted places; `None` when it holds its whole quota.
    pub(crate) fn admit(self: &Arc<Self>, peer: PeerId) -> Option<Admitted> {
        let mut peers = self.peers.lock().unwrap_or_else(PoisonError::into_inner);
        let held = peers.entry(peer).or_insert_with(|| Held {
            admitted: 0,
            reading: Arc::new(Semaphore::new(self.reading)),
        });
        if held.admitted >= self.admitted {
            return None;
        }
        held.admitted += 1;
        Some(Admitted {
            quotas: self.clone(),
            peer,
            reading: held.reading.clone(),
        })
    }

    /// Peers holding at least one place.
    #[cfg(test)]
    fn peers(&self) -> usize {
        self.peers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

impl Admitted {
    /// Waits for one of the peer's reading places (never closed, so always granted in the end).
    pub(crate) async fn reading(&self) -> Option<OwnedSemaphorePermit> {
        self.reading.clone().acquire_owned().await.ok()
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut peers = self
            .quotas
            .peers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(held) = peers.get_mut(&self.peer) {
            held.admitted = held.admitted.saturating_sub(1);
            if held.admitted == 0 {
                peers.remove(&self.peer);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use libp2p::PeerId;

    use super::PeerQuotas;

    #[test]
    fn a_peer_holds_at_most_its_quota_and_others_are_not_affected() {
        let quotas = PeerQuotas::new(2, 1);
        let (greedy, other) = (PeerId::random(), PeerId::random());
        let first = quotas.admit(greedy).expect("first");
        let second = quotas.admit(greedy).expect("second");
        assert!(quotas.admit(greedy).is_none(), "a third is refused");
        let third_peer = quotas
            .admit(other)
            .expect("another peer still gets a place");
        drop(first);
        let again = quotas
            .admit(greedy)
            .expect("a place given back is free again");
        drop((second, again, third_peer));
        assert_eq!(quotas.peers(), 0, "peers holding nothing are forgotten");
    }

    #[tokio::test]
    async fn reading_places_wait_for_the_peers_own_earlier_streams() {
        let quotas = PeerQuotas::new(3, 1);
        let peer = PeerId::random();
        let (a, b) = (
            quotas.admit(peer).expect("a"),
            quotas.admit(peer).expect("b"),
        );
        let reading = a.reading().await.expect("a reads");
        let waiting = tokio::time::timeout(Duration::from_millis(50), b.reading()).await;
        assert!(waiting.is_err(), "b waits while a reads");
        let other = quotas.admit(PeerId::random()).expect("other");
        let free = tokio::time::timeout(Duration::from_millis(50), other.reading()).await;
        assert!(
            free.is_ok_and(|p| p.is_some()),
            "another peer reads at once"
        );
        drop(reading);
        let next = tokio::time::timeout(Duration::from_millis(50), b.reading()).await;
        assert!(next.is_ok_and(|p| p.is_some()), "b reads once a is done");
    }
}

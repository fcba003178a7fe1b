//! Delta sends handed to the network and not finished yet, per recipient: the training
//! thread's back-pressure. It starts no new fan-out while a whole one is in flight, and
//! never sends to a peer that is still receiving its previous delta (a second concurrent
//! transfer to the same peer would only compete for the same link, or be refused by the
//! receiver's inbound limit after the work of encoding it was done).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use libp2p::PeerId;

/// Sends in flight, shared by the training thread (which starts them) and the send tasks
/// (which finish them through a [`SendSlot`]).
#[derive(Debug, Default)]
pub(crate) struct SendsInFlight {
    peers: Mutex<HashMap<PeerId, usize>>,
}

impl SendsInFlight {
    fn lock(&self) -> MutexGuard<'_, HashMap<PeerId, usize>> {
        self.peers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Sends in flight to all peers.
    pub(crate) fn total(&self) -> usize {
        self.lock().values().sum()
    }

    /// Whether a send to `peer` is in flight.
    pub(crate) fn busy(&self, peer: &PeerId) -> bool {
        self.lock().contains_key(peer)
    }

    /// Records sends to `peers`, each to be finished by a [`SendSlot`].
    pub(crate) fn begin(&self, peers: &[PeerId]) {
        let mut map = self.lock();
        for peer in peers {
            *map.entry(*peer).or_default() += 1;
        }
    }

    /// The slot of one send begun with [`begin`](Self::begin); dropping it finishes it,
    /// however the send ended (delivered, failed, cancelled).
    pub(crate) fn slot(self: &Arc<Self>, peer: PeerId) -> SendSlot {
        SendSlot {
            sends: self.clone(),
            peer,
        }
    }

    fn finish(&self, peer: &PeerId) {
        let mut map = self.lock();
        if let Some(count) = map.get_mut(peer) {
            *count -= 1;
            if *count == 0 {
                map.remove(peer);
            }
        }
    }
}

/// One send in flight; finished when dropped.
#[derive(Debug)]
pub(crate) struct SendSlot {
    sends: Arc<SendsInFlight>,
    peer: PeerId,
}

impl Drop for SendSlot {
    fn drop(&mut self) {
        self.sends.finish(&self.peer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_finish_their_sends() {
        let sends = Arc::new(SendsInFlight::default());
        let (a, b) = (PeerId::random(), PeerId::random());
        sends.begin(&[a, b]);
        sends.begin(&[a]);
        assert_eq!(sends.total(), 3);
        assert!(sends.busy(&a) && sends.busy(&b));
        drop(sends.slot(b));
        assert!(!sends.busy(&b));
        drop(sends.slot(a));
        assert!(sends.busy(&a));
        drop(sends.slot(a));
        assert!(!sends.busy(&a));
        assert_eq!(sends.total(), 0);
    }
}

//! The set of (peer, round) pairs already merged, persisted in sled so a restarted node
//! still refuses replays of deltas it merged before the crash.

use std::collections::HashSet;

use murmur_protocol::PeerKey;

use crate::store::StoreError;

/// Name of the sled tree holding merged pairs.
pub const MERGED_TREE: &str = "merged/v1";

/// How many rounds of history are kept; older pairs are refused as stale anyway.
const KEEP_ROUNDS: u64 = 4096;

/// Remembers which (peer, round) pairs were accepted.
#[derive(Debug)]
pub struct ReplayGuard {
    seen: HashSet<(PeerKey, u64)>,
    tree: Option<sled::Tree>,
}

fn key(peer: &PeerKey, round: u64) -> [u8; 40] {
    let mut k = [0u8; 40];
    k[..32].copy_from_slice(peer.as_bytes());
    k[32..].copy_from_slice(&round.to_be_bytes());
    k
}

impl ReplayGuard {
    /// An in-memory guard (tests, benches).
    pub fn in_memory() -> Self {
        Self {
            seen: HashSet::new(),
            tree: None,
        }
    }

    /// A guard backed by `tree`, loaded with what it holds.
    pub fn persistent(tree: sled::Tree) -> Result<Self, StoreError> {
        let mut seen = HashSet::new();
        for item in tree.iter() {
            let (k, _) = item?;
            if k.len() != 40 {
                return Err(StoreError::BadKey {
                    tree: MERGED_TREE.into(),
                });
            }
            let mut peer = [0u8; 32];
            peer.copy_from_slice(&k[..32]);
            let mut round = [0u8; 8];
            round.copy_from_slice(&k[32..]);
            seen.insert((PeerKey(peer), u64::from_be_bytes(round)));
        }
        Ok(Self {
            seen,
            tree: Some(tree),
        })
    }

    /// Whether `(peer, round)` was accepted before.
    pub fn contains(&self, peer: &PeerKey, round: u64) -> bool {
        self.seen.contains(&(*peer, round))
    }

    /// Records `(peer, round)`; returns false if it was already there.
    pub fn insert(&mut self, peer: PeerKey, round: u64) -> Result<bool, StoreError> {
        if !self.seen.insert((peer, round)) {
            return Ok(false);
        }
        if let Some(tree) = &self.tree {
            tree.insert(key(&peer, round), &[])?;
        }
        Ok(true)
    }

    /// Forgets pairs more than a few thousand rounds older than `current`.
    pub fn prune(&mut self, current: u64) -> Result<(), StoreError> {
        let Some(floor) = current.checked_sub(KEEP_ROUNDS) else {
            return Ok(());
        };
        let old: Vec<(PeerKey, u64)> = self
            .seen
            .iter()
            .filter(|(_, r)| *r < floor)
            .copied()
            .collect();
        for (peer, round) in old {
            self.seen.remove(&(peer, round));
            if let Some(tree) = &self.tree {
                tree.remove(key(&peer, round))?;
            }
        }
        Ok(())
    }

    /// Number of remembered pairs.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    #[test]
    fn pairs_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            let mut guard = ReplayGuard::persistent(store.raw_tree(MERGED_TREE).unwrap()).unwrap();
            assert!(guard.insert(PeerKey([1; 32]), 7).unwrap());
            assert!(!guard.insert(PeerKey([1; 32]), 7).unwrap());
        }
        let store = Store::open(dir.path()).unwrap();
        let guard = ReplayGuard::persistent(store.raw_tree(MERGED_TREE).unwrap()).unwrap();
        assert!(guard.contains(&PeerKey([1; 32]), 7));
        assert!(!guard.contains(&PeerKey([1; 32]), 8));
    }
}

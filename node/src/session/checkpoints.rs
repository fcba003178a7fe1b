//! Crash-safe checkpoints in the node's sled store.
//!
//! Each checkpoint is one value under its round number (big-endian, so keys sort by round)
//! in the `checkpoints/v1` tree: `magic ‖ BLAKE3(body) ‖ body`, where the body is the
//! bincode of [`SessionCheckpoint`]. A sled insert is atomic and the tree is flushed before
//! older checkpoints are dropped, so a `kill -9` at any moment leaves either the new
//! checkpoint or the previous ones; a checkpoint whose checksum fails is skipped in favour
//! of an older one.

use serde::{Deserialize, Serialize};

use crate::averaging::AveragerState;
use crate::store::{Store, StoreError};

/// Name of the checkpoint tree.
pub const CHECKPOINT_TREE: &str = "checkpoints/v1";
/// Name of the small tree of session facts written at every sync.
pub const SESSION_TREE: &str = "session/v1";
const NEXT_ROUND_KEY: &[u8] = b"next_round";
const MAGIC: &[u8; 8] = b"MRMCKPT1";
/// Largest checkpoint written and read back (the same bound both ways: a checkpoint that
/// could not be read back is refused when written, with an error that says so).
pub const MAX_CHECKPOINT_BYTES: usize = 2 << 30;

/// Everything a node needs to resume.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionCheckpoint {
    /// Round the checkpoint was taken at.
    pub round: u64,
    /// Samples trained on locally.
    pub samples: u64,
    /// Model, optimizer and data cursor (the replica's own format).
    pub replica: Vec<u8>,
    /// Averaging engine state.
    pub averager: AveragerState,
}

/// A checkpoint could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointStoreError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// sled failed.
    #[error("database error: {0}")]
    Db(#[from] sled::Error),
    /// Encoding failed.
    #[error("encoding a checkpoint: {0}")]
    Encode(#[from] bincode::error::EncodeError),
    /// The checkpoint is larger than one that can be read back.
    #[error("a checkpoint of {bytes} bytes exceeds the {max}-byte limit; not written")]
    TooLarge {
        /// Its size.
        bytes: usize,
        /// [`MAX_CHECKPOINT_BYTES`].
        max: usize,
    },
}

/// The checkpoints of one node.
#[derive(Debug, Clone)]
pub struct Checkpoints {
    tree: sled::Tree,
    session: sled::Tree,
    keep: usize,
    /// Largest checkpoint written or read ([`MAX_CHECKPOINT_BYTES`]; smaller in tests).
    max_bytes: usize,
}

impl Checkpoints {
    /// Opens the checkpoint trees of `store`, keeping the last `keep` checkpoints.
    pub fn open(store: &Store, keep: usize) -> Result<Self, CheckpointStoreError> {
        Ok(Self {
            tree: store.raw_tree(CHECKPOINT_TREE)?,
            session: store.raw_tree(SESSION_TREE)?,
            keep: keep.max(1),
            max_bytes: MAX_CHECKPOINT_BYTES,
        })
    }

    /// Writes `checkpoint` durably, then drops all but the newest `keep`. A checkpoint over
    /// [`MAX_CHECKPOINT_BYTES`] is refused ([`CheckpointStoreError::TooLarge`]) and the held
    /// ones are kept.
    pub fn save(&self, checkpoint: &SessionCheckpoint) -> Result<(), CheckpointStoreError> {
        let body = bincode::serde::encode_to_vec(checkpoint, bincode::config::standard())?;
        let bytes = body.len() + 40;
        if bytes > self.max_bytes {
            return Err(CheckpointStoreError::TooLarge {
                bytes,
                max: self.max_bytes,
            });
        }
        let mut value = Vec::with_capacity(body.len() + 40);
        value.extend_from_slice(MAGIC);
        value.extend_from_slice(blake3::hash(&body).as_bytes());
        value.extend_from_slice(&body);
        self.tree.insert(checkpoint.round.to_be_bytes(), value)?;
        self.tree.flush()?;
        let keys: Vec<sled::IVec> = self.tree.iter().keys().collect::<Result<_, _>>()?;
        if keys.len() > self.keep {
            for key in &keys[..keys.len() - self.keep] {
                self.tree.remove(key)?;
            }
            self.tree.flush()?;
        }
        Ok(())
    }

    /// The newest checkpoint that reads back intact; damaged ones are reported and skipped.
    pub fn latest(&self) -> Result<Option<SessionCheckpoint>, CheckpointStoreError> {
        for item in self.tree.iter().rev() {
            let (key, value) = item?;
            match decode(&value, self.max_bytes) {
                Some(ckpt) => return Ok(Some(ckpt)),
                None => tracing::warn!(key = ?key, "skipping a damaged checkpoint"),
            }
        }
        Ok(None)
    }

    /// Number of checkpoints held.
    pub fn len(&self) -> usize {
        self.tree.len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.tree.is_empty()
    }

    /// Records the next round number this node may use (so a restart never reuses a round
    /// it already sent, which receivers would refuse as a replay), durably: the flush also
    /// makes the (peer, round) pairs merged so far durable, so a restart does not accept
    /// them again.
    pub fn record_next_round(&self, round: u64) -> Result<(), CheckpointStoreError> {
        self.session.insert(NEXT_ROUND_KEY, &round.to_be_bytes())?;
        self.session.flush()?;
        Ok(())
    }

    /// The recorded next round (0 if none).
    pub fn next_round(&self) -> Result<u64, CheckpointStoreError> {
        Ok(self
            .session
            .get(NEXT_ROUND_KEY)?
            .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .map_or(0, u64::from_be_bytes))
    }
}

fn decode(value: &[u8], max_bytes: usize) -> Option<SessionCheckpoint> {
    if value.len() < 40 || value.len() > max_bytes || &value[..8] != MAGIC {
        return None;
    }
    let body = &value[40..];
    if blake3::hash(body).as_bytes() != &value[8..40] {
        return None;
    }
    bincode::serde::decode_from_slice(
        body,
        bincode::config::standard().with_limit::<MAX_CHECKPOINT_BYTES>(),
    )
    .ok()
    .map(|(c, _)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ckpt(round: u64) -> SessionCheckpoint {
        SessionCheckpoint {
            round,
            samples: round * 10,
            replica: vec![round as u8; 100],
            averager: AveragerState::default(),
        }
    }

    #[test]
    fn keeps_the_last_k_and_skips_a_damaged_one() {
        let store = Store::temporary().unwrap();
        let c = Checkpoints::open(&store, 2).unwrap();
        for r in 1..=4 {
            c.save(&ckpt(r)).unwrap();
        }
        assert_eq!(c.len(), 2);
        assert_eq!(c.latest().unwrap().unwrap().round, 4);
        // Damage the newest: the previous one is used.
        let tree = store.raw_tree(CHECKPOINT_TREE).unwrap();
        let mut bad = tree.get(4u64.to_be_bytes()).unwrap().unwrap().to_vec();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        tree.insert(4u64.to_be_bytes(), bad).unwrap();
        assert_eq!(c.latest().unwrap().unwrap().round, 3);
    }

    /// A checkpoint too large to read back is refused when written, and the held ones stay
    /// (before: it was written, the older ones dropped, and a restart found none it could
    /// read, so it began from scratch).
    #[test]
    fn a_checkpoint_too_large_to_read_back_is_refused_and_the_held_ones_kept() {
        let store = Store::temporary().unwrap();
        let mut c = Checkpoints::open(&store, 1).unwrap();
        c.max_bytes = 1000;
        c.save(&ckpt(1)).unwrap();
        let mut big = ckpt(2);
        big.replica = vec![7; 2000];
        assert!(matches!(
            c.save(&big),
            Err(CheckpointStoreError::TooLarge { max: 1000, .. })
        ));
        assert_eq!(c.latest().unwrap().unwrap().round, 1);
    }

    #[test]
    fn next_round_survives() {
        let store = Store::temporary().unwrap();
        let c = Checkpoints::open(&store, 2).unwrap();
        assert_eq!(c.next_round().unwrap(), 0);
        c.record_next_round(17).unwrap();
        assert_eq!(c.next_round().unwrap(), 17);
    }
}

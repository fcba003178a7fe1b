//! Seeded shuffling and batching with a cursor that survives a crash.
//!
//! Each epoch visits the samples in an order drawn from `(seed, epoch)` alone, so a saved
//! [`DataCursor`] (epoch, position) restores exactly the batches that would have come next.

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// Where a [`BatchStream`] stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataCursor {
    /// Completed passes over the data.
    pub epoch: u64,
    /// Next position within this epoch's order.
    pub position: usize,
}

/// An endless stream of shuffled sample positions, batch by batch.
#[derive(Debug, Clone)]
pub struct BatchStream {
    len: usize,
    seed: u64,
    cursor: DataCursor,
    order: Vec<usize>,
}

impl BatchStream {
    /// A stream over `len` samples from the start.
    pub fn new(len: usize, seed: u64) -> Self {
        Self::resume(len, seed, DataCursor::default())
    }

    /// A stream over `len` samples resumed at `cursor`.
    pub fn resume(len: usize, seed: u64, cursor: DataCursor) -> Self {
        let mut stream = Self {
            len,
            seed,
            cursor,
            order: Vec::new(),
        };
        stream.shuffle();
        stream
    }

    /// The shuffle seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The current cursor.
    pub fn cursor(&self) -> DataCursor {
        self.cursor
    }

    /// The next `batch_size` positions (fewer only when the data set is smaller). A batch never
    /// spans two epochs: an incomplete tail is skipped.
    pub fn next_batch(&mut self, batch_size: usize) -> Vec<usize> {
        let size = batch_size.clamp(1, self.len.max(1));
        if self.len == 0 {
            return Vec::new();
        }
        if self.cursor.position + size > self.len {
            self.cursor = DataCursor {
                epoch: self.cursor.epoch + 1,
                position: 0,
            };
            self.shuffle();
        }
        let start = self.cursor.position;
        self.cursor.position += size;
        self.order[start..start + size].to_vec()
    }

    fn shuffle(&mut self) {
        self.order = (0..self.len).collect();
        let seed = self.seed ^ self.cursor.epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        self.order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    }
}

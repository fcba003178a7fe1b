//! Data sets: the built-in `digits` and Shakespeare corpora, a user's CSV or text file,
//! deterministic splitting into parts across peers, seeded shuffling and batching with a resumable cursor.
//!
//! A [`Dataset`] is a shared, immutable [`Source`] plus the list of sample indices it holds, so
//! parts are cheap views. A sample is one row (classification) or one `context`-long window of
//! characters whose targets are the next characters (text).

mod batch;
mod builtin;
mod csv;
mod text;

use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use batch::{BatchStream, DataCursor};
pub use builtin::{digits, shakespeare};
pub use csv::{CsvOptions, parse_csv, read_csv_file};
pub use text::{Vocab, read_text_file, text_corpus};

use crate::wire::WireActivation;

/// Loading or slicing data failed.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file could not be read.
    #[error("cannot read {path}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// Embedded or given gzip data is corrupt.
    #[error("corrupt gzip data in {name}")]
    Gzip {
        /// The data set's file name.
        name: String,
        /// What the decoder reported.
        source: std::io::Error,
    },
    /// Text is not UTF-8.
    #[error("{path} is not valid UTF-8")]
    Utf8 {
        /// The file.
        path: String,
        /// Where the first invalid byte is.
        source: std::str::Utf8Error,
    },
    /// A malformed CSV row.
    #[error("line {line}: {message}")]
    Csv {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// Not enough data for the requested use.
    #[error("{0}")]
    TooSmall(String),
    /// `index >= count` or `count == 0`.
    #[error("data part {index} of {count} is invalid")]
    BadPart {
        /// Part index.
        index: usize,
        /// Part count.
        count: usize,
    },
}

/// The samples behind a data set.
#[derive(Debug)]
pub enum Source {
    /// Feature vectors with class labels.
    Classes {
        /// Row-major `[rows, n_features]`.
        features: Vec<f32>,
        /// One label per row, `< n_classes`.
        labels: Vec<u32>,
        /// Features per row.
        n_features: usize,
        /// Number of classes.
        n_classes: usize,
    },
    /// A token stream cut into windows.
    Text {
        /// Token ids.
        tokens: Vec<u32>,
        /// The character vocabulary.
        vocab: Vocab,
        /// Window length.
        context: usize,
    },
}

/// What a data set feeds, so the right model can be built for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DataShape {
    /// `n_features` inputs, `n_classes` outputs.
    Classes {
        /// Inputs per sample.
        n_features: usize,
        /// Classes.
        n_classes: usize,
    },
    /// Token windows.
    Text {
        /// Vocabulary size.
        vocab: usize,
        /// Window length.
        context: usize,
    },
}

/// A set of samples over a shared source.
#[derive(Debug, Clone)]
pub struct Dataset {
    source: Arc<Source>,
    /// Row index (classification) or window start (text) of each sample.
    samples: Vec<usize>,
}

/// A batch as host data: the model input and one target per output position.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// `Hidden [b, 1, n_features]` or `Tokens [b, context]`.
    pub input: WireActivation,
    /// `b` labels, or `b * context` next-token ids.
    pub targets: Vec<u32>,
    /// Samples in the batch.
    pub samples: usize,
}

/// A train/test pair.
#[derive(Debug, Clone)]
pub struct DataSplit {
    /// Training samples.
    pub train: Dataset,
    /// Held-out samples.
    pub test: Dataset,
}

impl Dataset {
    /// All samples of `source`.
    pub fn new(source: Source) -> Self {
        let samples = match &source {
            Source::Classes { labels, .. } => (0..labels.len()).collect(),
            Source::Text {
                tokens, context, ..
            } => {
                let windows = tokens.len().saturating_sub(1) / (*context).max(1);
                (0..windows).map(|w| w * context).collect()
            }
        };
        Self {
            source: Arc::new(source),
            samples,
        }
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.samples.len()
    }
    /// Whether there are no samples.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }
    /// The shared source.
    pub fn source(&self) -> &Source {
        &self.source
    }

    /// What the data feeds.
    pub fn shape(&self) -> DataShape {
        match &*self.source {
            Source::Classes {
                n_features,
                n_classes,
                ..
            } => DataShape::Classes {
                n_features: *n_features,
                n_classes: *n_classes,
            },
            Source::Text { vocab, context, .. } => DataShape::Text {
                vocab: vocab.len(),
                context: *context,
            },
        }
    }

    /// Part `index` of `count`: every `count`-th sample starting at `index`.
    pub fn part(&self, index: usize, count: usize) -> Result<Self, DataError> {
        if count == 0 || index >= count {
            return Err(DataError::BadPart { index, count });
        }
        let samples = self
            .samples
            .iter()
            .skip(index)
            .step_by(count)
            .copied()
            .collect();
        Ok(Self {
            source: self.source.clone(),
            samples,
        })
    }

    /// The part a peer id hashes to (see [`peer_part_index`]).
    pub fn part_for_peer(&self, peer_id: &str, count: usize) -> Result<Self, DataError> {
        self.part(peer_part_index(peer_id, count), count)
    }

    /// The first `n` samples (for bounded evaluation).
    pub fn take(&self, n: usize) -> Self {
        Self {
            source: self.source.clone(),
            samples: self.samples.iter().take(n).copied().collect(),
        }
    }

    /// The batch made of the samples at `positions` (indices into this data set; out-of-range
    /// positions are skipped).
    pub fn batch(&self, positions: &[usize]) -> Batch {
        let picked: Vec<usize> = positions
            .iter()
            .filter_map(|&p| self.samples.get(p).copied())
            .collect();
        let b = picked.len();
        match &*self.source {
            Source::Classes {
                features,
                labels,
                n_features,
                ..
            } => {
                let mut values = Vec::with_capacity(b * n_features);
                for &row in &picked {
                    values.extend_from_slice(&features[row * n_features..(row + 1) * n_features]);
                }
                Batch {
                    input: WireActivation::Hidden {
                        shape: [b, 1, *n_features],
                        values,
                    },
                    targets: picked.iter().map(|&row| labels[row]).collect(),
                    samples: b,
                }
            }
            Source::Text {
                tokens, context, ..
            } => {
                let mut ids = Vec::with_capacity(b * context);
                let mut targets = Vec::with_capacity(b * context);
                for &start in &picked {
                    ids.extend_from_slice(&tokens[start..start + context]);
                    targets.extend_from_slice(&tokens[start + 1..start + context + 1]);
                }
                Batch {
                    input: WireActivation::Tokens {
                        shape: [b, *context],
                        ids,
                    },
                    targets,
                    samples: b,
                }
            }
        }
    }
}

/// Which of `count` parts a peer id maps to: BLAKE3 of the id, first 8 bytes, modulo `count`.
/// Equal in every process; `0` when `count` is 0.
pub fn peer_part_index(peer_id: &str, count: usize) -> usize {
    if count == 0 {
        return 0;
    }
    let hash = blake3::hash(peer_id.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&hash.as_bytes()[..8]);
    (u64::from_le_bytes(first) % count as u64) as usize
}

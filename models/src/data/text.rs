//! Character-level text corpora: any UTF-8 text, a sorted character vocabulary, the last 10 %
//! of characters held out.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{DataError, DataSplit, Dataset, Source};

/// Most distinct characters a corpus may have (bounds the embedding a file could ask for).
pub(crate) const MAX_VOCAB: usize = 65_536;

/// The characters of a corpus, sorted; a token id is an index into it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vocab {
    chars: Vec<char>,
}

impl Vocab {
    /// The sorted distinct characters of `text`.
    pub fn of(text: &str) -> Self {
        let mut chars: Vec<char> = text.chars().collect();
        chars.sort_unstable();
        chars.dedup();
        Self { chars }
    }
    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.chars.len()
    }
    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.chars.is_empty()
    }
    /// Token id of `c`.
    pub fn encode_char(&self, c: char) -> Option<u32> {
        self.chars.binary_search(&c).ok().map(|i| i as u32)
    }
    /// Text of token ids (unknown ids become `?`).
    pub fn decode(&self, ids: &[u32]) -> String {
        ids.iter()
            .map(|&i| self.chars.get(i as usize).copied().unwrap_or('?'))
            .collect()
    }
}

/// Reads a UTF-8 text file as a corpus.
pub fn read_text_file(path: &Path, context: usize) -> Result<DataSplit, DataError> {
    let bytes = std::fs::read(path).map_err(|source| DataError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let text = String::from_utf8(bytes).map_err(|e| DataError::Utf8 {
        path: path.display().to_string(),
        source: e.utf8_error(),
    })?;
    text_corpus(&text, context)
}

/// Splits `text` into training (first 90 %) and held-out (last 10 %) windows of `context`.
pub fn text_corpus(text: &str, context: usize) -> Result<DataSplit, DataError> {
    if context == 0 {
        return Err(DataError::TooSmall("context must be at least 1".into()));
    }
    let vocab = Vocab::of(text);
    if vocab.len() > MAX_VOCAB {
        return Err(DataError::TooSmall(format!(
            "{} distinct characters exceed the limit of {MAX_VOCAB}",
            vocab.len()
        )));
    }
    let tokens: Vec<u32> = text.chars().filter_map(|c| vocab.encode_char(c)).collect();
    let cut = tokens.len() - tokens.len() / 10;
    let (train, test) = tokens.split_at(cut);
    if test.len() <= context || train.len() <= context {
        return Err(DataError::TooSmall(format!(
            "{} characters are too few for windows of {context} (the held-out 10 % must exceed one window)",
            tokens.len()
        )));
    }
    let make = |part: &[u32]| {
        Dataset::new(Source::Text {
            tokens: part.to_vec(),
            vocab: vocab.clone(),
            context,
        })
    };
    Ok(DataSplit {
        train: make(train),
        test: make(test),
    })
}

#[cfg(test)]
mod tests {
    use std::error::Error;

    use super::read_text_file;
    use crate::data::DataError;

    #[test]
    fn a_file_that_is_not_utf8_names_the_first_bad_byte() {
        let path = std::env::temp_dir().join(format!("murmur-not-utf8-{}.txt", std::process::id()));
        std::fs::write(&path, b"abc\xffdef").unwrap();
        let err = read_text_file(&path, 2).unwrap_err();
        let _ = std::fs::remove_file(&path);
        let DataError::Utf8 { source, .. } = &err else {
            panic!("unexpected {err}");
        };
        assert_eq!(source.valid_up_to(), 3);
        assert!(err.to_string().ends_with("is not valid UTF-8"), "{err}");
        assert!(err.source().is_some());
    }
}

//! The built-in data sets, embedded in the binary so a fresh clone needs no files.
//!
//! * `digits` — 1797 8×8 digit images (UCI, CC BY 4.0); row `i` is a test row when `i % 5 == 0`;
//!   pixel counts 0..16 scaled to [0, 1].
//! * `shakespeare` — 1.07 M characters of eight plays (public domain); the last 10 % held out.

use std::io::Read;

use flate2::read::GzDecoder;

use super::csv::{CsvOptions, parse_csv};
use super::text::text_corpus;
use super::{DataError, DataSplit};

static DIGITS_GZ: &[u8] = include_bytes!("../../data/digits.csv.gz");
static SHAKESPEARE_GZ: &[u8] = include_bytes!("../../data/shakespeare.txt.gz");

fn gunzip(bytes: &[u8], name: &str) -> Result<String, DataError> {
    let mut out = String::new();
    GzDecoder::new(bytes)
        .read_to_string(&mut out)
        .map_err(|source| DataError::Gzip {
            name: name.into(),
            source,
        })?;
    Ok(out)
}

/// The digits data: 1437 training and 360 test rows of 64 features in [0, 1], 10 classes.
pub fn digits() -> Result<DataSplit, DataError> {
    let text = gunzip(DIGITS_GZ, "digits.csv.gz")?;
    let options = CsvOptions {
        feature_scale: 1.0 / 16.0,
        ..CsvOptions::default()
    };
    parse_csv(&text, &options)
}

/// The Shakespeare corpus as character windows of `context` tokens.
pub fn shakespeare(context: usize) -> Result<DataSplit, DataError> {
    let text = gunzip(SHAKESPEARE_GZ, "shakespeare.txt.gz")?;
    text_corpus(&text, context)
}

#[cfg(test)]
mod tests {
    use std::error::Error;

    use super::gunzip;
    use crate::data::DataError;

    #[test]
    fn corrupt_gzip_keeps_the_decoders_error() {
        let err = gunzip(b"not gzip at all", "broken.gz").unwrap_err();
        assert!(matches!(&err, DataError::Gzip { name, .. } if name == "broken.gz"));
        assert_eq!(err.to_string(), "corrupt gzip data in broken.gz");
        assert!(err.source().is_some(), "the decoder's error is kept");
    }
}

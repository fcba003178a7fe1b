//! A user's CSV: numeric feature columns and an integer class label column.
//!
//! Rows are comma-separated; blank lines are skipped; an optional header line is ignored. The
//! split matches the digits data: row `i` (0-based, header excluded) is a test row when
//! `i % 5 == 0`. Every malformed row is reported with its 1-based line number.

use std::path::Path;

use super::{DataError, DataSplit, Dataset, Source};

/// Most classes a label column may name (bounds the output layer a bad file could ask for).
pub(crate) const MAX_CLASSES: usize = 4096;

/// How to read a CSV.
#[derive(Debug, Clone, PartialEq)]
pub struct CsvOptions {
    /// Skip the first non-blank line.
    pub has_header: bool,
    /// Label column index; `None` = the last column.
    pub label_column: Option<usize>,
    /// Every feature is multiplied by this (1.0 = unscaled).
    pub feature_scale: f32,
}

impl Default for CsvOptions {
    fn default() -> Self {
        Self {
            has_header: false,
            label_column: None,
            feature_scale: 1.0,
        }
    }
}

/// Reads and parses a CSV file.
pub fn read_csv_file(path: &Path, options: &CsvOptions) -> Result<DataSplit, DataError> {
    let text = std::fs::read(path).map_err(|source| DataError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let text = String::from_utf8(text).map_err(|e| DataError::Utf8 {
        path: path.display().to_string(),
        source: e.utf8_error(),
    })?;
    parse_csv(&text, options)
}

/// Parses CSV text into a train/test split.
pub fn parse_csv(text: &str, options: &CsvOptions) -> Result<DataSplit, DataError> {
    let mut width = None;
    let mut rows: Vec<(Vec<f32>, u32)> = Vec::new();
    let mut header_pending = options.has_header;
    for (i, raw) in text.lines().enumerate() {
        let raw = raw.trim();
        if raw.is_empty() {
            continue;
        }
        if header_pending {
            header_pending = false;
            continue;
        }
        rows.push(parse_row(raw, i + 1, &mut width, options)?);
    }
    if rows.len() < 2 {
        return Err(DataError::TooSmall(format!(
            "CSV has {} data rows; need at least 2",
            rows.len()
        )));
    }
    Ok(split_rows(&rows))
}

/// Parses one data row (1-based `line`) into its features and label. `width` is the column
/// count of the earlier rows (set by the first).
fn parse_row(
    raw: &str,
    line: usize,
    width: &mut Option<usize>,
    options: &CsvOptions,
) -> Result<(Vec<f32>, u32), DataError> {
    let err = |message: String| DataError::Csv { line, message };
    let fields: Vec<&str> = raw.split(',').map(str::trim).collect();
    let columns = *width.get_or_insert(fields.len());
    if fields.len() != columns {
        return Err(err(format!(
            "{} columns, earlier rows have {columns}",
            fields.len()
        )));
    }
    if columns < 2 {
        return Err(err("need at least one feature and a label column".into()));
    }
    let label_at = options.label_column.unwrap_or(columns - 1);
    if label_at >= columns {
        return Err(err(format!(
            "label column {label_at} does not exist ({columns} columns)"
        )));
    }
    let label: u32 = fields[label_at].parse().map_err(|_| {
        err(format!(
            "label {:?} is not a non-negative integer",
            fields[label_at]
        ))
    })?;
    if label as usize >= MAX_CLASSES {
        return Err(err(format!(
            "label {label} exceeds the limit of {MAX_CLASSES} classes"
        )));
    }
    let mut features = Vec::with_capacity(columns - 1);
    for (c, field) in fields.iter().enumerate().filter(|(c, _)| *c != label_at) {
        let value: f32 = field
            .parse()
            .map_err(|_| err(format!("column {} value {field:?} is not a number", c + 1)))?;
        if !value.is_finite() {
            return Err(err(format!(
                "column {} value {field:?} is not finite",
                c + 1
            )));
        }
        features.push(value * options.feature_scale);
    }
    Ok((features, label))
}

/// Splits parsed rows (at least one) into train and test sets: row `i` is a test row when
/// `i % 5 == 0`.
fn split_rows(rows: &[(Vec<f32>, u32)]) -> DataSplit {
    let n_features = rows[0].0.len();
    let n_classes = rows
        .iter()
        .map(|r| r.1 as usize + 1)
        .max()
        .unwrap_or(1)
        .max(2);
    let make = |keep: &dyn Fn(usize) -> bool| {
        let picked: Vec<&(Vec<f32>, u32)> = rows
            .iter()
            .enumerate()
            .filter(|(i, _)| keep(*i))
            .map(|(_, r)| r)
            .collect();
        Dataset::new(Source::Classes {
            features: picked.iter().flat_map(|r| r.0.iter().copied()).collect(),
            labels: picked.iter().map(|r| r.1).collect(),
            n_features,
            n_classes,
        })
    };
    DataSplit {
        train: make(&|i| i % 5 != 0),
        test: make(&|i| i % 5 == 0),
    }
}

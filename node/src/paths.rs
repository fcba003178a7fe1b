//! Default locations of a node's data directory.
//!
//! `$MURMUR_DATA_DIR` wins; otherwise `$XDG_DATA_HOME/murmur`, `$HOME/.local/share/murmur`,
//! and as a last resort `./murmur-data`.

use std::path::PathBuf;

/// The data directory used when the user names none.
pub fn default_data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("MURMUR_DATA_DIR") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME") {
        return PathBuf::from(dir).join("murmur");
    }
    if let Some(home) = std::env::var_os("HOME") {
        return PathBuf::from(home).join(".local/share/murmur");
    }
    PathBuf::from("murmur-data")
}

//! Node-local persistent storage: one owner of the sled database that hands out typed trees.
//!
//! `Store` owns the [`sled::Db`]; each subsystem asks for its own named tree with a value type
//! (`Store::tree::<V>(name)`), so new trees (checkpoints, merged rounds, …) are one line each.
//! Values are encoded with bincode (serde) and decoded with a size limit, so a corrupt file
//! yields a typed [`StoreError`], never a panic or an unbounded allocation.

mod peer_book;
mod typed;

use std::path::Path;

pub use peer_book::{MAX_ADDRS_PER_PEER, PeerBook, PeerRecord, Scan, StoredCapacity};
pub use typed::TypedTree;

/// Name of the tree that holds the peer book.
pub const PEER_BOOK_TREE: &str = "peer_book/v1";

/// Errors from the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The underlying sled database failed.
    #[error("database error: {0}")]
    Db(#[from] sled::Error),
    /// A value could not be encoded.
    #[error("encoding a value for tree {tree}: {source}")]
    Encode {
        /// Tree name.
        tree: String,
        /// Cause.
        source: bincode::error::EncodeError,
    },
    /// A stored value could not be decoded (corrupt or from an incompatible version).
    #[error("decoding a value from tree {tree}: {source}")]
    Decode {
        /// Tree name.
        tree: String,
        /// Cause.
        source: bincode::error::DecodeError,
    },
    /// A stored key was malformed.
    #[error("malformed key in tree {tree}")]
    BadKey {
        /// Tree name.
        tree: String,
    },
}

/// The node's sled database. Cheap to clone (sled handles are reference counted).
#[derive(Clone, Debug)]
pub struct Store {
    db: sled::Db,
}

impl Store {
    /// Opens (or creates) the database in `dir`.
    ///
    /// sled's background flusher may hold the directory's lock for a moment after the previous
    /// handle in this process was dropped (a restart in the same process, tests), so a lock
    /// conflict is retried for up to a second before it is reported.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let mut attempts = 0;
        loop {
            match sled::Config::new().path(dir).open() {
                Ok(db) => return Ok(Self { db }),
                Err(sled::Error::Io(io))
                    if io.to_string().contains("could not acquire lock") && attempts < 20 =>
                {
                    attempts += 1;
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(err) => return Err(err.into()),
            }
        }
    }

    /// A throw-away database deleted on drop (tests, benches, ephemeral nodes).
    pub fn temporary() -> Result<Self, StoreError> {
        let db = sled::Config::new().temporary(true).open()?;
        Ok(Self { db })
    }

    /// A typed view of the tree `name`, created if missing.
    pub fn tree<V>(&self, name: &str) -> Result<TypedTree<V>, StoreError>
    where
        V: serde::Serialize + serde::de::DeserializeOwned,
    {
        Ok(TypedTree::new(name, self.db.open_tree(name)?))
    }

    /// An untyped tree for values that manage their own encoding (checkpoints, sets).
    pub fn raw_tree(&self, name: &str) -> Result<sled::Tree, StoreError> {
        Ok(self.db.open_tree(name)?)
    }

    /// The persisted peer book.
    pub fn peer_book(&self) -> Result<PeerBook, StoreError> {
        Ok(PeerBook::new(self.tree(PEER_BOOK_TREE)?))
    }

    /// Flushes all dirty data to disk.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.db.flush_async().await?;
        Ok(())
    }
}

//! A sled tree with a fixed, serde-encoded value type and bounded decoding.

use std::marker::PhantomData;

use super::StoreError;

/// Largest value a typed tree accepts when decoding (guards against corrupt lengths).
const MAX_VALUE_BYTES: usize = 16 * 1024 * 1024;

fn codec() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_VALUE_BYTES>()
}

/// A named sled tree whose values are all of type `V`.
pub struct TypedTree<V> {
    name: String,
    tree: sled::Tree,
    _value: PhantomData<fn() -> V>,
}

impl<V> std::fmt::Debug for TypedTree<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TypedTree")
            .field("name", &self.name)
            .finish()
    }
}

impl<V> Clone for TypedTree<V> {
    fn clone(&self) -> Self {
        Self {
            name: self.name.clone(),
            tree: self.tree.clone(),
            _value: PhantomData,
        }
    }
}

impl<V> TypedTree<V>
where
    V: serde::Serialize + serde::de::DeserializeOwned,
{
    pub(crate) fn new(name: &str, tree: sled::Tree) -> Self {
        Self {
            name: name.to_owned(),
            tree,
            _value: PhantomData,
        }
    }

    /// The tree's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn decode(&self, bytes: &[u8]) -> Result<V, StoreError> {
        bincode::serde::decode_from_slice(bytes, codec())
            .map(|(value, _)| value)
            .map_err(|source| StoreError::Decode {
                tree: self.name.clone(),
                source,
            })
    }

    /// Reads the value under `key`.
    pub fn get(&self, key: &[u8]) -> Result<Option<V>, StoreError> {
        self.tree
            .get(key)?
            .map(|bytes| self.decode(&bytes))
            .transpose()
    }

    /// Writes `value` under `key`.
    pub fn insert(&self, key: &[u8], value: &V) -> Result<(), StoreError> {
        let bytes =
            bincode::serde::encode_to_vec(value, codec()).map_err(|source| StoreError::Encode {
                tree: self.name.clone(),
                source,
            })?;
        self.tree.insert(key, bytes)?;
        Ok(())
    }

    /// Removes the value under `key`, returning whether it existed.
    pub fn remove(&self, key: &[u8]) -> Result<bool, StoreError> {
        Ok(self.tree.remove(key)?.is_some())
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.tree.len()
    }

    /// Whether the tree is empty.
    pub fn is_empty(&self) -> bool {
        self.tree.is_empty()
    }

    /// All entries in key order; a corrupt entry is returned as an error, not skipped.
    pub fn iter(&self) -> impl Iterator<Item = Result<(Vec<u8>, V), StoreError>> + '_ {
        self.tree.iter().map(move |item| {
            let (key, value) = item?;
            Ok((key.to_vec(), self.decode(&value)?))
        })
    }
}

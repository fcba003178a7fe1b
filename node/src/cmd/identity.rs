//! `murmur keygen` and `murmur id`: create or show this node's identity (its peer id).

use std::path::Path;

use crate::identity::NodeIdentity;

/// `murmur keygen`: creates the node identity in `data_dir` unless it exists, and prints its
/// peer id.
pub fn keygen(data_dir: &Path) -> anyhow::Result<()> {
    let identity = NodeIdentity::load_or_create(data_dir)?;
    println!("{}", identity.peer_id());
    Ok(())
}

/// `murmur id`: prints the peer id of the existing node identity in `data_dir`.
pub fn id(data_dir: &Path) -> anyhow::Result<()> {
    let identity = NodeIdentity::load(data_dir)?;
    println!("{}", identity.peer_id());
    Ok(())
}

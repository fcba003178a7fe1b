//! Signed pool manifests: who may contribute to a closed run.
//!
//! A run is *open* (anyone may join; robust merging and peer scores protect it) or
//! *closed*: only the peers listed in the run's [`PoolManifest`], signed by the pool
//! owner's key, may contribute. The manifest names the run, the owner, a `serial`
//! bumped at every change (so a node can prefer the newest manifest of an owner) and
//! the sorted, deduplicated member list, which always contains the owner.
//!
//! The signature covers a domain tag and the bincode body of the manifest (same
//! wire configuration as every message), so it can never be replayed as a Murmur
//! envelope signature or anything else, and any edit to the run, owner, serial,
//! creation time or member list breaks it. [`SignedManifest::verify`] checks the
//! format version, the member list and the signature (strictly: canonical `S`, no
//! small-order keys).
//!
//! On disk a manifest is a line-oriented text file operators can read and diff
//! ([`SignedManifest::to_text`], [`SignedManifest::from_text`]):
//!
//! ```text
//! # murmur pool manifest v1
//! version = 1
//! run = <64 hex digits>
//! owner = <64 hex digits>
//! serial = 3
//! created_ms = 1700000000000
//! member = <64 hex digits>
//! member = <64 hex digits>
//! signature = <128 hex digits>
//! ```
//!
//! The text is only a rendering: the signature is over the binary body, so
//! whitespace, comments, hex case and the order of the non-`member` lines do not
//! matter, but every value and the order of the `member` lines do.
//! The byte-level format is specified in `docs/protocol.md`.
//!
//! This module holds the types and the member-list rules; `signing` signs and verifies,
//! `text` renders and parses the file, `error` has [`ManifestError`].

mod error;
mod signing;
mod text;

use bincode::{Decode, Encode};

use crate::ids::{PeerKey, RunId};
use crate::wire::MAX_MESSAGE_BYTES;
pub use error::ManifestError;

/// The manifest format version this build reads and writes.
pub const MANIFEST_VERSION: u16 = 1;

/// Most members a pool may list (the owner included).
///
/// Chosen so that a signed manifest at this bound still fits in one wire message
/// (`MAX_MESSAGE_BYTES`, 64 KiB).
pub const MAX_POOL_MEMBERS: usize = 1024;

/// Largest manifest text [`SignedManifest::from_text`] accepts, in bytes.
pub const MAX_MANIFEST_TEXT_BYTES: usize = 1 << 20;

/// Encoded body size at [`MAX_POOL_MEMBERS`]: version, run, owner, serial,
/// created_ms, member count, members.
const MAX_BODY_BYTES: usize = 2 + 32 + 32 + 8 + 8 + 8 + 32 * MAX_POOL_MEMBERS;
const _: () = assert!(MAX_BODY_BYTES + 64 <= MAX_MESSAGE_BYTES);

/// The membership list of a closed pool.
///
/// Fields are public so a node can read them; mutate through
/// [`add_member`](Self::add_member) and [`remove_member`](Self::remove_member), which
/// keep the members sorted and bump `serial`.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct PoolManifest {
    /// Format version, [`MANIFEST_VERSION`].
    pub version: u16,
    /// The run this pool admits peers to.
    pub run: RunId,
    /// The pool owner: the key that signs the manifest. Always a member.
    pub owner: PeerKey,
    /// Bumped at every change; of two valid manifests of the same run and owner, the
    /// one with the larger serial is the newer.
    pub serial: u64,
    /// Creation time of the pool, milliseconds since the Unix epoch.
    pub created_ms: u64,
    /// Peers allowed to contribute: strictly increasing (sorted, no duplicates), at most
    /// [`MAX_POOL_MEMBERS`], containing `owner`.
    pub members: Vec<PeerKey>,
}

/// A [`PoolManifest`] with the owner's ed25519 signature.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct SignedManifest {
    /// The signed manifest. Untrusted until [`verify`](Self::verify) succeeds.
    pub manifest: PoolManifest,
    /// ed25519 signature by `manifest.owner` over
    /// `"murmur/pool-manifest/v1\0" || bincode(manifest)`.
    pub signature: [u8; 64],
}

impl PoolManifest {
    /// A new pool for `run` whose only member is `owner`, with serial 1.
    ///
    /// `created_ms` is the creation time (ms since the Unix epoch); this crate reads no
    /// clock, so the caller supplies it.
    pub fn new(run: RunId, owner: PeerKey, created_ms: u64) -> Self {
        Self {
            version: MANIFEST_VERSION,
            run,
            owner,
            serial: 1,
            created_ms,
            members: vec![owner],
        }
    }

    /// Whether `peer` is listed. Binary search: meaningful on a manifest whose members
    /// are sorted (every manifest built here or accepted by [`validate`](Self::validate)).
    pub fn is_member(&self, peer: &PeerKey) -> bool {
        self.members.binary_search(peer).is_ok()
    }

    /// Adds `peer`, keeping the list sorted, and bumps `serial` if it was not already a
    /// member. Returns whether the list changed.
    pub fn add_member(&mut self, peer: PeerKey) -> Result<bool, ManifestError> {
        let Err(pos) = self.members.binary_search(&peer) else {
            return Ok(false);
        };
        if self.members.len() >= MAX_POOL_MEMBERS {
            return Err(ManifestError::TooManyMembers {
                max: MAX_POOL_MEMBERS,
            });
        }
        let serial = self.next_serial()?;
        self.members.insert(pos, peer);
        self.serial = serial;
        Ok(true)
    }

    /// Removes `peer` and bumps `serial` if it was a member. Returns whether the list
    /// changed. The owner cannot be removed.
    pub fn remove_member(&mut self, peer: &PeerKey) -> Result<bool, ManifestError> {
        if *peer == self.owner {
            return Err(ManifestError::CannotRemoveOwner);
        }
        let Ok(pos) = self.members.binary_search(peer) else {
            return Ok(false);
        };
        let serial = self.next_serial()?;
        self.members.remove(pos);
        self.serial = serial;
        Ok(true)
    }

    /// Whether `self` may replace `current`: same run, same owner, larger serial.
    /// Both are assumed verified.
    pub fn supersedes(&self, current: &PoolManifest) -> bool {
        self.run == current.run && self.owner == current.owner && self.serial > current.serial
    }

    /// Checks everything but the signature: known version; members strictly increasing,
    /// at most [`MAX_POOL_MEMBERS`], containing the owner.
    pub fn validate(&self) -> Result<(), ManifestError> {
        if self.version != MANIFEST_VERSION {
            return Err(ManifestError::UnsupportedVersion(self.version));
        }
        if self.members.len() > MAX_POOL_MEMBERS {
            return Err(ManifestError::TooManyMembers {
                max: MAX_POOL_MEMBERS,
            });
        }
        for pair in self.members.windows(2) {
            if let [a, b] = pair {
                if a == b {
                    return Err(ManifestError::DuplicateMember(*a));
                }
                if a > b {
                    return Err(ManifestError::UnsortedMembers);
                }
            }
        }
        if !self.is_member(&self.owner) {
            return Err(ManifestError::OwnerNotMember);
        }
        Ok(())
    }

    fn next_serial(&self) -> Result<u64, ManifestError> {
        self.serial
            .checked_add(1)
            .ok_or(ManifestError::SerialOverflow)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire;

    #[test]
    fn body_layout_matches_the_documented_offsets() {
        let mut m = PoolManifest::new(RunId([1; 32]), PeerKey([2; 32]), 7);
        m.serial = 5;
        let body = wire::encode(&m).unwrap();
        assert_eq!(body.len(), 2 + 32 + 32 + 8 + 8 + 8 + 32);
        assert_eq!(&body[0..2], &1u16.to_le_bytes());
        assert_eq!(&body[2..34], &[1; 32]);
        assert_eq!(&body[34..66], &[2; 32]);
        assert_eq!(&body[66..74], &5u64.to_le_bytes());
        assert_eq!(&body[74..82], &7u64.to_le_bytes());
        assert_eq!(&body[82..90], &1u64.to_le_bytes());
        assert_eq!(&body[90..122], &[2; 32]);
    }
}

//! [`ManifestError`]: why a manifest could not be built, signed, parsed or verified.

use crate::ids::{PeerKey, RunId};

/// Why a manifest could not be built, signed, parsed or verified.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// A manifest format version this build does not speak.
    #[error("unsupported pool manifest version {0}")]
    UnsupportedVersion(u16),
    /// More members than [`MAX_POOL_MEMBERS`](super::MAX_POOL_MEMBERS).
    #[error("pool has more than {max} members")]
    TooManyMembers {
        /// The bound.
        max: usize,
    },
    /// The member list is not in ascending order.
    #[error("pool members are not sorted")]
    UnsortedMembers,
    /// The member list lists a peer twice.
    #[error("pool member {0:?} is listed twice")]
    DuplicateMember(PeerKey),
    /// The owner is not in the member list.
    #[error("pool owner is not a member")]
    OwnerNotMember,
    /// An attempt to remove the owner from its own pool.
    #[error("the pool owner cannot be removed")]
    CannotRemoveOwner,
    /// `serial` is already `u64::MAX` and cannot be bumped.
    #[error("manifest serial cannot be bumped past u64::MAX")]
    SerialOverflow,
    /// The signing key is not the manifest's owner.
    #[error("signing key {key:?} is not the pool owner {owner:?}")]
    KeyMismatch {
        /// The key offered for signing.
        key: PeerKey,
        /// The owner the manifest names.
        owner: PeerKey,
    },
    /// The owner key is not a valid (or is a small-order) ed25519 public key.
    #[error("pool owner is not a valid ed25519 public key")]
    BadOwnerKey,
    /// The signature does not verify.
    #[error("bad pool manifest signature")]
    BadSignature,
    /// The manifest belongs to another run.
    #[error("manifest is for run {found:?}, expected {expected:?}")]
    WrongRun {
        /// The run the caller expects.
        expected: RunId,
        /// The run the manifest names.
        found: RunId,
    },
    /// The manifest body could not be encoded.
    #[error("cannot encode pool manifest: {0}")]
    Encode(#[source] bincode::error::EncodeError),
    /// Manifest text longer than [`MAX_MANIFEST_TEXT_BYTES`](super::MAX_MANIFEST_TEXT_BYTES).
    #[error("manifest text of {len} bytes exceeds the limit of {max}")]
    TextTooLarge {
        /// Input length.
        len: usize,
        /// The limit applied.
        max: usize,
    },
    /// A line that is neither blank, a `#` comment nor `key = value`.
    #[error("line {line}: expected `key = value`")]
    Syntax {
        /// 1-based line number.
        line: usize,
    },
    /// A key the format does not define.
    #[error("line {line}: unknown key `{key}`")]
    UnknownKey {
        /// 1-based line number.
        line: usize,
        /// The key (at most its first 32 characters).
        key: String,
    },
    /// A key other than `member` given twice.
    #[error("line {line}: duplicate key `{key}`")]
    DuplicateKey {
        /// 1-based line number of the second occurrence.
        line: usize,
        /// The key.
        key: &'static str,
    },
    /// A required key is absent.
    #[error("missing key `{0}`")]
    MissingKey(&'static str),
    /// A value has the wrong number of hex digits.
    #[error("line {line}: `{key}` must be {expected} hex digits, got {found}")]
    WrongLength {
        /// 1-based line number.
        line: usize,
        /// The key.
        key: &'static str,
        /// Hex digits required.
        expected: usize,
        /// Characters found.
        found: usize,
    },
    /// A value of the right length with a character that is not a hex digit.
    #[error("line {line}: `{key}` is not valid hex")]
    BadHex {
        /// 1-based line number.
        line: usize,
        /// The key.
        key: &'static str,
    },
    /// A value that is not a decimal integer in range.
    #[error("line {line}: `{key}` is not a decimal integer in range")]
    BadInteger {
        /// 1-based line number.
        line: usize,
        /// The key.
        key: &'static str,
    },
}

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

use bincode::{Decode, Encode};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

use crate::envelope::peer_key;
use crate::ids::{PeerKey, RunId};
use crate::wire::{self, MAX_MESSAGE_BYTES};

/// The manifest format version this build reads and writes.
pub const MANIFEST_VERSION: u16 = 1;

/// Most members a pool may list (the owner included).
///
/// Chosen so that a signed manifest at this bound still fits in one wire message
/// (`MAX_MESSAGE_BYTES`, 64 KiB).
pub const MAX_POOL_MEMBERS: usize = 1024;

/// Largest manifest text [`SignedManifest::from_text`] accepts, in bytes.
pub const MAX_MANIFEST_TEXT_BYTES: usize = 1 << 20;

/// Domain tag prefixed to the body before signing.
const DOMAIN: &[u8] = b"murmur/pool-manifest/v1\0";

/// First line [`SignedManifest::to_text`] writes (a comment to readers and parsers).
const TEXT_HEADER: &str = "# murmur pool manifest v1";

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

/// Why a manifest could not be built, signed, parsed or verified.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// A manifest format version this build does not speak.
    #[error("unsupported pool manifest version {0}")]
    UnsupportedVersion(u16),
    /// More members than [`MAX_POOL_MEMBERS`].
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
    Encode(String),
    /// Manifest text longer than [`MAX_MANIFEST_TEXT_BYTES`].
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

    /// The bytes the owner signs: domain tag, then the bincode body.
    fn signed_bytes(&self) -> Result<Vec<u8>, ManifestError> {
        let body = wire::encode(self).map_err(|e| ManifestError::Encode(e.to_string()))?;
        let mut out = Vec::with_capacity(DOMAIN.len() + body.len());
        out.extend_from_slice(DOMAIN);
        out.extend_from_slice(&body);
        Ok(out)
    }
}

impl SignedManifest {
    /// Validates `manifest` and signs it with `owner_key`, which must be the key of
    /// `manifest.owner`.
    pub fn sign(owner_key: &SigningKey, manifest: PoolManifest) -> Result<Self, ManifestError> {
        let key = peer_key(owner_key);
        if key != manifest.owner {
            return Err(ManifestError::KeyMismatch {
                key,
                owner: manifest.owner,
            });
        }
        manifest.validate()?;
        let signature = owner_key.sign(&manifest.signed_bytes()?).to_bytes();
        Ok(Self {
            manifest,
            signature,
        })
    }

    /// Checks the manifest ([`PoolManifest::validate`]) and the owner's signature
    /// (strict verification), and returns the manifest.
    ///
    /// This proves only that the manifest's own `owner` signed it: the caller decides
    /// which owner and run it trusts (see [`verify_for_run`](Self::verify_for_run) and
    /// [`PoolManifest::supersedes`]).
    pub fn verify(&self) -> Result<&PoolManifest, ManifestError> {
        self.manifest.validate()?;
        let key = VerifyingKey::from_bytes(self.manifest.owner.as_bytes())
            .map_err(|_| ManifestError::BadOwnerKey)?;
        if key.is_weak() {
            return Err(ManifestError::BadOwnerKey);
        }
        let signature = Signature::from_bytes(&self.signature);
        key.verify_strict(&self.manifest.signed_bytes()?, &signature)
            .map_err(|_| ManifestError::BadSignature)?;
        Ok(&self.manifest)
    }

    /// [`verify`](Self::verify), then checks that the manifest is for `run`.
    pub fn verify_for_run(&self, run: &RunId) -> Result<&PoolManifest, ManifestError> {
        let manifest = self.verify()?;
        if manifest.run != *run {
            return Err(ManifestError::WrongRun {
                expected: *run,
                found: manifest.run,
            });
        }
        Ok(manifest)
    }

    /// Renders the manifest file: a header comment, then `version`, `run`, `owner`,
    /// `serial`, `created_ms`, one `member` line per member in list order and
    /// `signature`, each as `key = value` on its own line (ids and signature in
    /// lower-case hex, integers in decimal).
    pub fn to_text(&self) -> String {
        let m = &self.manifest;
        let mut out = String::with_capacity(256 + m.members.len() * 76);
        let mut line = |key: &str, value: &str| {
            out.push_str(key);
            out.push_str(" = ");
            out.push_str(value);
            out.push('\n');
        };
        line("version", &m.version.to_string());
        line("run", &m.run.to_hex());
        line("owner", &m.owner.to_hex());
        line("serial", &m.serial.to_string());
        line("created_ms", &m.created_ms.to_string());
        for member in &m.members {
            line("member", &member.to_hex());
        }
        line("signature", &crate::ids::hex(&self.signature));
        format!("{TEXT_HEADER}\n{out}")
    }

    /// Parses a manifest file. Does not verify it: call [`verify`](Self::verify).
    ///
    /// Blank lines and lines starting with `#` are ignored; every other line is
    /// `key = value` (surrounding whitespace ignored). `version`, `run`, `owner`,
    /// `serial`, `created_ms` and `signature` must each appear exactly once, `member`
    /// any number of times up to [`MAX_POOL_MEMBERS`], in any order. Input over
    /// [`MAX_MANIFEST_TEXT_BYTES`] is refused before it is read. A `version` other than
    /// [`MANIFEST_VERSION`] is refused as soon as its line is read, so a newer format
    /// reports [`ManifestError::UnsupportedVersion`] rather than its new keys.
    pub fn from_text(text: &str) -> Result<Self, ManifestError> {
        if text.len() > MAX_MANIFEST_TEXT_BYTES {
            return Err(ManifestError::TextTooLarge {
                len: text.len(),
                max: MAX_MANIFEST_TEXT_BYTES,
            });
        }
        let mut version = None;
        let mut run = None;
        let mut owner = None;
        let mut serial = None;
        let mut created_ms = None;
        let mut signature = None;
        let mut members = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let trimmed = raw.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let (key, value) = trimmed
                .split_once('=')
                .ok_or(ManifestError::Syntax { line })?;
            let (key, value) = (key.trim(), value.trim());
            match key {
                "version" => {
                    let v = parse_int::<u16>(line, "version", value)?;
                    if v != MANIFEST_VERSION {
                        return Err(ManifestError::UnsupportedVersion(v));
                    }
                    set_once(&mut version, line, "version", v)?;
                }
                "run" => {
                    let v = RunId(parse_hex::<32>(line, "run", value)?);
                    set_once(&mut run, line, "run", v)?;
                }
                "owner" => {
                    let v = PeerKey(parse_hex::<32>(line, "owner", value)?);
                    set_once(&mut owner, line, "owner", v)?;
                }
                "serial" => {
                    let v = parse_int::<u64>(line, "serial", value)?;
                    set_once(&mut serial, line, "serial", v)?;
                }
                "created_ms" => {
                    let v = parse_int::<u64>(line, "created_ms", value)?;
                    set_once(&mut created_ms, line, "created_ms", v)?;
                }
                "signature" => {
                    let v = parse_hex::<64>(line, "signature", value)?;
                    set_once(&mut signature, line, "signature", v)?;
                }
                "member" => {
                    if members.len() >= MAX_POOL_MEMBERS {
                        return Err(ManifestError::TooManyMembers {
                            max: MAX_POOL_MEMBERS,
                        });
                    }
                    members.push(PeerKey(parse_hex::<32>(line, "member", value)?));
                }
                other => {
                    return Err(ManifestError::UnknownKey {
                        line,
                        key: other.chars().take(32).collect(),
                    });
                }
            }
        }
        Ok(Self {
            manifest: PoolManifest {
                version: version.ok_or(ManifestError::MissingKey("version"))?,
                run: run.ok_or(ManifestError::MissingKey("run"))?,
                owner: owner.ok_or(ManifestError::MissingKey("owner"))?,
                serial: serial.ok_or(ManifestError::MissingKey("serial"))?,
                created_ms: created_ms.ok_or(ManifestError::MissingKey("created_ms"))?,
                members,
            },
            signature: signature.ok_or(ManifestError::MissingKey("signature"))?,
        })
    }
}

fn set_once<T>(
    slot: &mut Option<T>,
    line: usize,
    key: &'static str,
    value: T,
) -> Result<(), ManifestError> {
    if slot.is_some() {
        return Err(ManifestError::DuplicateKey { line, key });
    }
    *slot = Some(value);
    Ok(())
}

/// Parses a decimal integer: ASCII digits only (no sign), in range for `T`.
fn parse_int<T: std::str::FromStr>(
    line: usize,
    key: &'static str,
    value: &str,
) -> Result<T, ManifestError> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ManifestError::BadInteger { line, key });
    }
    value
        .parse()
        .map_err(|_| ManifestError::BadInteger { line, key })
}

/// Parses exactly `2 * N` hex digits (either case).
fn parse_hex<const N: usize>(
    line: usize,
    key: &'static str,
    value: &str,
) -> Result<[u8; N], ManifestError> {
    let digits = value.as_bytes();
    if digits.len() != 2 * N {
        return Err(ManifestError::WrongLength {
            line,
            key,
            expected: 2 * N,
            found: value.chars().count(),
        });
    }
    let mut out = [0u8; N];
    for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        let mut acc = 0u8;
        for &digit in pair {
            let nibble = char::from(digit)
                .to_digit(16)
                .and_then(|d| u8::try_from(d).ok())
                .ok_or(ManifestError::BadHex { line, key })?;
            acc = (acc << 4) | nibble;
        }
        *byte = acc;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn hex_helpers_round_trip_and_reject() {
        let bytes: [u8; 64] = std::array::from_fn(|i| u8::try_from(i * 4 % 256).unwrap());
        let text = crate::ids::hex(&bytes);
        assert_eq!(parse_hex::<64>(1, "signature", &text).unwrap(), bytes);
        assert_eq!(
            parse_hex::<64>(1, "signature", &text.to_uppercase()).unwrap(),
            bytes
        );
        assert!(matches!(
            parse_hex::<32>(3, "run", &"g".repeat(64)),
            Err(ManifestError::BadHex {
                line: 3,
                key: "run"
            })
        ));
        // A multi-byte character of the right byte length is not hex, not a panic.
        assert!(matches!(
            parse_hex::<1>(1, "run", "é"),
            Err(ManifestError::BadHex { .. })
        ));
    }
}

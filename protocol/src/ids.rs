//! Newtype identifiers used on the wire.
//!
//! All are fixed 32-byte values so they encode without a length prefix.
//! [`RunId`] names a training run, [`ModelFingerprint`] an architecture (hash of
//! parameter paths, shapes and dtypes), [`PeerKey`] an ed25519 public key and
//! [`Digest`] a BLAKE3 hash of a payload.

use std::fmt;

use bincode::{Decode, Encode};

macro_rules! id32 {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Encode, Decode)]
        pub struct $name(pub [u8; 32]);

        impl $name {
            /// The raw 32 bytes.
            pub fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }

            /// Lower-case hex of all 32 bytes.
            pub fn to_hex(&self) -> String {
                hex(&self.0)
            }

            /// Parses 64 hex digits.
            pub fn from_hex(s: &str) -> Option<Self> {
                parse_hex32(s).map(Self)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), &self.to_hex()[..12])
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl From<[u8; 32]> for $name {
            fn from(bytes: [u8; 32]) -> Self {
                Self(bytes)
            }
        }
    };
}

id32!(
    /// Identifies a training run; peers ignore messages of other runs.
    RunId
);
id32!(
    /// Hash of a model's parameter paths, shapes and dtypes: peers refuse deltas
    /// for another architecture.
    ModelFingerprint
);
id32!(
    /// An ed25519 public key: the identity of a peer (its libp2p `PeerId` derives from it).
    PeerKey
);
id32!(
    /// A BLAKE3 digest.
    Digest
);

impl RunId {
    /// Derives a run id from a human-readable run name (BLAKE3 in derive-key mode).
    pub fn from_name(name: &str) -> Self {
        Self(blake3::derive_key("murmur run id v1", name.as_bytes()))
    }
}

impl Digest {
    /// BLAKE3 digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self(*blake3::hash(bytes).as_bytes())
    }
}

impl From<blake3::Hash> for Digest {
    fn from(hash: blake3::Hash) -> Self {
        Self(*hash.as_bytes())
    }
}

/// Lower-case hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

fn parse_hex32(s: &str) -> Option<[u8; 32]> {
    let s = s.as_bytes();
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        let hi = char::from(pair[0]).to_digit(16)?;
        let lo = char::from(pair[1]).to_digit(16)?;
        out[i] = u8::try_from(hi * 16 + lo).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips() {
        let id = RunId::from_name("digits-demo");
        assert_eq!(RunId::from_hex(&id.to_hex()), Some(id));
        assert_eq!(RunId::from_hex("zz"), None);
        assert_ne!(RunId::from_name("a"), RunId::from_name("b"));
    }
}

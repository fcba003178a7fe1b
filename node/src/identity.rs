//! Node identity: one ed25519 secret per node, kept in its data directory.
//!
//! The same secret yields the libp2p `PeerId` and signs model deltas, so the signer of
//! a delta is exactly the peer that sent it ([`peer_id_of`] maps a signer key to its
//! `PeerId` for that check). The key file is created on first start with mode 0600 and
//! written atomically (temporary file, fsync, rename); it is reused on every restart.
//!
//! File format (`identity.key`, 41 bytes): `"MRMK"`, version `1`, the 32-byte secret,
//! and the first 4 bytes of BLAKE3(secret) to detect corruption.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;
use libp2p::PeerId;
use libp2p::identity::{Keypair, PublicKey, ed25519};
use murmur_protocol::PeerKey;
use rand::TryRngCore;

/// File name of the identity inside a node's data directory.
pub const KEY_FILE: &str = "identity.key";
const MAGIC: &[u8; 4] = b"MRMK";
const VERSION: u8 = 1;
const FILE_LEN: usize = 4 + 1 + 32 + 4;

/// Why an identity could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Reading or writing the key file failed.
    #[error("identity file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The key file exists but is not a valid Murmur identity.
    #[error("identity file {path} is corrupt: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: &'static str,
    },
    /// No identity exists yet (for commands that must not create one).
    #[error("no identity at {0}: run `murmur keygen` first")]
    Missing(PathBuf),
    /// The operating system's random source failed.
    #[error("cannot draw a random key")]
    Random(#[source] rand::rand_core::OsError),
    /// A secret that libp2p does not accept as an ed25519 key.
    #[error("not a valid ed25519 secret key")]
    BadSecret,
    /// A 32-byte key is not a valid ed25519 public key.
    #[error("not a valid ed25519 public key")]
    BadPublicKey,
}

/// A node's long-lived key pair.
#[derive(Clone)]
pub struct NodeIdentity {
    signing: SigningKey,
    keypair: Keypair,
}

impl std::fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeIdentity")
            .field("peer_id", &self.peer_id())
            .finish_non_exhaustive()
    }
}

impl NodeIdentity {
    /// Loads `data_dir/identity.key`, creating the directory and a fresh key on first start.
    pub fn load_or_create(data_dir: &Path) -> Result<Self, IdentityError> {
        Self::load_or_create_file(&data_dir.join(KEY_FILE))
    }

    /// Loads `data_dir/identity.key` without ever creating one.
    pub fn load(data_dir: &Path) -> Result<Self, IdentityError> {
        let path = data_dir.join(KEY_FILE);
        if !path.exists() {
            return Err(IdentityError::Missing(path));
        }
        Self::load_file(&path)
    }

    /// Loads the key file at `path`, creating it (mode 0600) if it does not exist.
    pub fn load_or_create_file(path: &Path) -> Result<Self, IdentityError> {
        if path.exists() {
            return Self::load_file(path);
        }
        let mut secret = [0u8; 32];
        rand::rngs::OsRng
            .try_fill_bytes(&mut secret)
            .map_err(IdentityError::Random)?;
        write_key_file(path, &secret)?;
        tracing::info!(path = %path.display(), "created a new node identity");
        Self::load_file(path)
    }

    /// An identity from a known secret (tests, deterministic testnets).
    pub fn from_secret(secret: [u8; 32]) -> Result<Self, IdentityError> {
        let signing = SigningKey::from_bytes(&secret);
        let mut bytes = secret;
        let keypair =
            Keypair::ed25519_from_bytes(&mut bytes).map_err(|_| IdentityError::BadSecret)?;
        Ok(Self { signing, keypair })
    }

    fn load_file(path: &Path) -> Result<Self, IdentityError> {
        let io = |source| IdentityError::Io {
            path: path.to_owned(),
            source,
        };
        let corrupt = |reason| IdentityError::Corrupt {
            path: path.to_owned(),
            reason,
        };
        let meta = fs::metadata(path).map_err(io)?;
        if meta.len() != FILE_LEN as u64 {
            return Err(corrupt("wrong length"));
        }
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(path = %path.display(), "identity file was readable by others; restricting it to 0600");
            fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(io)?;
        }
        let bytes = fs::read(path).map_err(io)?;
        if bytes.len() != FILE_LEN || &bytes[..4] != MAGIC {
            return Err(corrupt("not a Murmur identity file"));
        }
        if bytes[4] != VERSION {
            return Err(corrupt("unsupported identity file version"));
        }
        let mut secret = [0u8; 32];
        secret.copy_from_slice(&bytes[5..37]);
        if blake3::hash(&secret).as_bytes()[..4] != bytes[37..] {
            return Err(corrupt("checksum mismatch"));
        }
        Self::from_secret(secret)
    }

    /// The ed25519 key that signs envelopes.
    pub fn signing_key(&self) -> &SigningKey {
        &self.signing
    }

    /// The libp2p key pair (same secret).
    pub fn keypair(&self) -> Keypair {
        self.keypair.clone()
    }

    /// The libp2p peer id.
    pub fn peer_id(&self) -> PeerId {
        self.keypair.public().to_peer_id()
    }

    /// The public key as it appears on the wire.
    pub fn peer_key(&self) -> PeerKey {
        PeerKey(self.signing.verifying_key().to_bytes())
    }
}

/// The libp2p `PeerId` of a wire public key: lets the node check that an envelope's
/// signer is the peer it came from.
pub fn peer_id_of(key: &PeerKey) -> Result<PeerId, IdentityError> {
    let public =
        ed25519::PublicKey::try_from_bytes(&key.0).map_err(|_| IdentityError::BadPublicKey)?;
    Ok(PublicKey::from(public).to_peer_id())
}

fn write_key_file(path: &Path, secret: &[u8; 32]) -> Result<(), IdentityError> {
    let io = |source| IdentityError::Io {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(io)?;
    }
    let tmp = path.with_extension("key.tmp");
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    let mut bytes = Vec::with_capacity(FILE_LEN);
    bytes.extend_from_slice(MAGIC);
    bytes.push(VERSION);
    bytes.extend_from_slice(secret);
    bytes.extend_from_slice(&blake3::hash(secret).as_bytes()[..4]);
    file.write_all(&bytes).map_err(io)?;
    file.sync_all().map_err(io)?;
    fs::rename(&tmp, path).map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_persists_and_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let a = NodeIdentity::load_or_create(dir.path()).unwrap();
        let b = NodeIdentity::load_or_create(dir.path()).unwrap();
        assert_eq!(a.peer_id(), b.peer_id());
        assert_eq!(a.peer_key(), b.peer_key());
        let mode = fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // The signing key and the libp2p identity are the same key.
        assert_eq!(peer_id_of(&a.peer_key()).unwrap(), a.peer_id());
    }

    #[test]
    fn corrupt_or_missing_files_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            NodeIdentity::load(dir.path()),
            Err(IdentityError::Missing(_))
        ));
        NodeIdentity::load_or_create(dir.path()).unwrap();
        let path = dir.path().join(KEY_FILE);
        let mut bytes = fs::read(&path).unwrap();
        bytes[10] ^= 1;
        fs::write(&path, &bytes).unwrap();
        assert!(matches!(
            NodeIdentity::load(dir.path()),
            Err(IdentityError::Corrupt {
                reason: "checksum mismatch",
                ..
            })
        ));
        fs::write(&path, b"short").unwrap();
        assert!(matches!(
            NodeIdentity::load(dir.path()),
            Err(IdentityError::Corrupt { .. })
        ));
    }
}

//! Signing and verifying a manifest: the owner's ed25519 signature over a domain tag and
//! the bincode body, checked strictly (canonical `S`, no small-order keys).

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

use super::{ManifestError, PoolManifest, SignedManifest};
use crate::envelope::peer_key;
use crate::ids::RunId;
use crate::wire;

/// Domain tag prefixed to the body before signing.
const DOMAIN: &[u8] = b"murmur/pool-manifest/v1\0";

impl PoolManifest {
    /// The bytes the owner signs: domain tag, then the bincode body.
    fn signed_bytes(&self) -> Result<Vec<u8>, ManifestError> {
        let body = wire::encode(self).map_err(ManifestError::Encode)?;
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
}

//! Checks that bind protocol signer keys (raw ed25519) to libp2p peer ids.
//!
//! A node's libp2p identity and its message-signing key are the same ed25519 key
//! (`crate::identity`), so the `PeerId` of a message's signer can be computed and compared
//! with the libp2p peer that sent or published it.

use libp2p::PeerId;
use libp2p::identity::PublicKey;
use murmur_protocol::PeerKey;

pub use crate::identity::peer_id_of;

/// Whether `key` is the signing key behind `peer`.
pub fn key_matches_peer(key: &PeerKey, peer: &PeerId) -> bool {
    peer_id_of(key).is_ok_and(|id| id == *peer)
}

/// The protocol `PeerKey` of a libp2p public key, if it is ed25519.
pub fn peer_key_of(public: &PublicKey) -> Option<PeerKey> {
    public
        .clone()
        .try_into_ed25519()
        .ok()
        .map(|k| PeerKey(k.to_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signer_key_maps_to_its_peer_id() {
        let keypair = libp2p::identity::Keypair::generate_ed25519();
        let key = peer_key_of(&keypair.public()).expect("ed25519 keypair");
        assert_eq!(
            peer_id_of(&key).expect("valid key"),
            keypair.public().to_peer_id()
        );
        assert!(key_matches_peer(&key, &keypair.public().to_peer_id()));
        assert!(!key_matches_peer(&key, &PeerId::random()));
    }
}

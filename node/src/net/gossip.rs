//! Gossipsub for small signed messages: the run's announcement topic, message ids and
//! application-level validation.
//!
//! Messages are `SignedEnvelope` bytes. Gossipsub runs with `Signed` authenticity and
//! `Strict` validation, and holds every message until [`validate`] has decoded the envelope
//! (bounded), verified its signature, and checked that the signer is the gossip `source`;
//! only then is it forwarded. Rejected messages are reported to gossipsub (P4 score penalty
//! for the propagating peer) and added to the peer book's misbehaviour score.

use std::time::Duration;

use libp2p::PeerId;
use libp2p::gossipsub::{
    self, IdentTopic, MessageAuthenticity, MessageId, PeerScoreParams, PeerScoreThresholds,
    TopicScoreParams, ValidationMode,
};
use libp2p::identity::Keypair;
use murmur_protocol::{Announcement, Message, RunId, SignedEnvelope};

use super::config::NetLimits;
use super::keys::key_matches_peer;

/// The announcement topic of `run`: `/murmur/run/<run id hex>/announce/1`.
pub fn announcement_topic(run: &RunId) -> IdentTopic {
    IdentTopic::new(format!("/murmur/run/{}/announce/1", run.to_hex()))
}

/// Gossipsub message id: the BLAKE3 digest (32 bytes) of the message data.
pub fn message_id(message: &gossipsub::Message) -> MessageId {
    MessageId::from(blake3::hash(&message.data).as_bytes().to_vec())
}

/// Why the gossipsub behaviour could not be built. libp2p reports all but the configuration
/// as text, which is kept as given.
#[derive(Debug, thiserror::Error)]
pub(crate) enum GossipSetupError {
    /// The configuration builder refused the settings.
    #[error("invalid gossipsub configuration")]
    Config(#[source] gossipsub::ConfigBuilderError),
    /// The behaviour refused its configuration.
    #[error("cannot create the gossipsub behaviour: {0}")]
    Behaviour(&'static str),
    /// The peer score parameters were refused.
    #[error("invalid gossipsub peer score parameters: {0}")]
    PeerScore(String),
    /// The announcement topic's score parameters were refused.
    #[error("invalid gossipsub topic score parameters: {0}")]
    TopicParams(&'static str),
}

/// Builds the gossipsub behaviour with Murmur's settings and peer scoring.
pub(crate) fn behaviour(
    keypair: &Keypair,
    limits: &NetLimits,
    topic: &IdentTopic,
) -> Result<gossipsub::Behaviour, GossipSetupError> {
    let config = gossipsub::ConfigBuilder::default()
        .validation_mode(ValidationMode::Strict)
        .validate_messages()
        .message_id_fn(message_id)
        .max_transmit_size(limits.max_gossip_bytes)
        .heartbeat_interval(Duration::from_millis(700))
        .build()
        .map_err(GossipSetupError::Config)?;
    let mut gossipsub =
        gossipsub::Behaviour::new(MessageAuthenticity::Signed(keypair.clone()), config)
            .map_err(GossipSetupError::Behaviour)?;
    let params = PeerScoreParams {
        // Volunteers behind one NAT share an IP; co-location is not misbehaviour here.
        ip_colocation_factor_weight: 0.0,
        ..PeerScoreParams::default()
    };
    gossipsub
        .with_peer_score(params, PeerScoreThresholds::default())
        .map_err(GossipSetupError::PeerScore)?;
    let topic_params = TopicScoreParams {
        topic_weight: 1.0,
        // Announcements are sparse: do not punish mesh peers for a low delivery rate.
        mesh_message_deliveries_weight: 0.0,
        mesh_failure_penalty_weight: 0.0,
        // One invalid message costs 30 points; three push a peer below the graylist.
        invalid_message_deliveries_weight: -30.0,
        invalid_message_deliveries_decay: 0.9,
        ..TopicScoreParams::default()
    };
    gossipsub
        .set_topic_params(topic.clone(), topic_params)
        .map_err(GossipSetupError::TopicParams)?;
    Ok(gossipsub)
}

/// A validated announcement.
#[derive(Clone, Debug)]
pub struct ReceivedAnnouncement {
    /// The peer that signed and published it.
    pub from: PeerId,
    /// The peer that forwarded it to us.
    pub via: PeerId,
    /// The announcement.
    pub announcement: Announcement,
    /// The envelope as received (to re-share or store).
    pub envelope: SignedEnvelope,
}

/// Why a gossip message was rejected.
#[derive(Debug, thiserror::Error)]
pub enum GossipRejection {
    /// Larger than the configured limit.
    #[error("message of {0} bytes is over the limit")]
    TooLarge(usize),
    /// Not a valid, correctly signed envelope.
    #[error("invalid envelope: {0}")]
    Envelope(#[from] murmur_protocol::EnvelopeError),
    /// No gossip source (anonymous messages are not accepted).
    #[error("message has no source")]
    NoSource,
    /// The envelope signer is not the gossip source.
    #[error("envelope signer is not the gossip source")]
    SignerNotSource,
    /// A message kind that does not belong on the announcement topic.
    #[error("unexpected message kind on the announcement topic")]
    WrongKind,
    /// An announcement for a different run.
    #[error("announcement for another run")]
    WrongRun,
}

/// Application-level validation of a gossip message (see the module docs).
pub fn validate(
    message: &gossipsub::Message,
    via: PeerId,
    run: &RunId,
    max_len: usize,
) -> Result<ReceivedAnnouncement, GossipRejection> {
    if message.data.len() > max_len {
        return Err(GossipRejection::TooLarge(message.data.len()));
    }
    let envelope = SignedEnvelope::from_bytes(&message.data, max_len)?;
    let (signer, body) = envelope.open()?;
    let from = message.source.ok_or(GossipRejection::NoSource)?;
    if !key_matches_peer(&signer, &from) {
        return Err(GossipRejection::SignerNotSource);
    }
    let Message::Announcement(announcement) = body else {
        return Err(GossipRejection::WrongKind);
    };
    if announcement.run != *run {
        return Err(GossipRejection::WrongRun);
    }
    Ok(ReceivedAnnouncement {
        from,
        via,
        announcement,
        envelope,
    })
}

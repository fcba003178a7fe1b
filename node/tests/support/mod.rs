//! The averager fixture of the averaging tests, in one copy: the integration tests take it
//! with `mod support;`, the training thread's unit tests (`src/session/worker/tests.rs`) with
//! `#[path]`. It names the crate `murmur_node` in both (inside the crate, under `cfg(test)`,
//! `lib.rs` gives the crate that name too).
#![allow(dead_code, unreachable_pub)]

use libp2p::PeerId;
use murmur_node::averaging::{Averager, AveragerConfig, ReplayGuard};
use murmur_node::identity::NodeIdentity;
use murmur_protocol::{Codec, ModelFingerprint, RunId};

/// Model size of the fixtures.
pub const LEN: usize = 64;
/// The model every fixture averager trains.
pub const MODEL: ModelFingerprint = ModelFingerprint([4; 32]);

/// The run every fixture averager is in.
pub fn run() -> RunId {
    RunId::from_name("averager-fixture")
}

/// The identity of node `secret`.
pub fn identity(secret: u8) -> NodeIdentity {
    NodeIdentity::from_secret([secret; 32]).expect("identity")
}

/// The averager of node `secret` over a zero anchor of [`LEN`] values (raw f32 deltas,
/// fan-out 1, mass 10), with `configure` applied; and its peer id.
pub fn averager(secret: u8, configure: impl FnOnce(&mut AveragerConfig)) -> (Averager, PeerId) {
    let identity = identity(secret);
    let mut config = AveragerConfig::new(run(), MODEL);
    config.codec = Codec::RawF32;
    config.fanout = 1;
    config.initial_mass = 10.0;
    configure(&mut config);
    let averager = Averager::new(
        config,
        identity.signing_key().clone(),
        vec![0.0; LEN],
        ReplayGuard::in_memory(),
    );
    (averager, identity.peer_id())
}

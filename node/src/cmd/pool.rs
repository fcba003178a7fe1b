//! `murmur pool init|add|remove|show`: manage a closed pool's signed manifest.
//!
//! The manifest is signed by this node's identity (the pool owner). Nodes started with
//! `--pool FILE` only merge deltas from, and serve state to, the peers it lists.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use libp2p::PeerId;
use murmur_protocol::{PeerKey, PoolManifest, RunId, SignedManifest};

use crate::averaging::Admission;
use crate::identity::NodeIdentity;
use crate::net::{now_ms, peer_key_of};

/// `murmur pool` subcommands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum PoolCommand {
    /// Create a manifest for a run, owned (and signed) by this node.
    Init {
        /// The run the pool trains.
        #[arg(long, default_value = "murmur-default")]
        run: String,
        /// Manifest file to write.
        #[arg(long, default_value = "pool.manifest")]
        file: PathBuf,
    },
    /// Add members (peer ids) and re-sign.
    Add {
        /// Peer ids (`12D3Koo…`) or 64-hex public keys.
        peers: Vec<String>,
        /// Manifest file.
        #[arg(long, default_value = "pool.manifest")]
        file: PathBuf,
    },
    /// Remove members and re-sign.
    Remove {
        /// Peer ids or 64-hex public keys.
        peers: Vec<String>,
        /// Manifest file.
        #[arg(long, default_value = "pool.manifest")]
        file: PathBuf,
    },
    /// Verify a manifest and list its members.
    Show {
        /// Manifest file.
        #[arg(long, default_value = "pool.manifest")]
        file: PathBuf,
    },
}

/// Runs a pool subcommand with the identity in `data_dir`.
pub fn run(command: &PoolCommand, data_dir: &Path) -> anyhow::Result<()> {
    match command {
        PoolCommand::Init { run, file } => {
            if file.exists() {
                bail!(
                    "{} exists; refusing to overwrite a manifest",
                    file.display()
                );
            }
            let identity = NodeIdentity::load_or_create(data_dir)?;
            let manifest = PoolManifest::new(RunId::from_name(run), identity.peer_key(), now_ms());
            write(&identity, manifest, file)
        }
        PoolCommand::Add { peers, file } | PoolCommand::Remove { peers, file } => {
            let identity = NodeIdentity::load(data_dir)?;
            let mut manifest = read(file)?.manifest;
            if manifest.owner != identity.peer_key() {
                bail!("this node does not own the pool in {}", file.display());
            }
            for peer in peers {
                let key = parse_peer(peer)?;
                if matches!(command, PoolCommand::Add { .. }) {
                    manifest.add_member(key)?;
                } else {
                    manifest.remove_member(&key)?;
                }
            }
            write(&identity, manifest, file)
        }
        PoolCommand::Show { file } => {
            let signed = read(file)?;
            let m = &signed.manifest;
            println!(
                "run {}\nowner {}\nserial {}",
                m.run.to_hex(),
                m.owner.to_hex(),
                m.serial
            );
            for member in &m.members {
                let id = crate::identity::peer_id_of(member).map_or("?".into(), |p| p.to_string());
                println!("member {id}");
            }
            Ok(())
        }
    }
}

fn read(file: &Path) -> anyhow::Result<SignedManifest> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let signed =
        SignedManifest::from_text(&text).with_context(|| format!("parsing {}", file.display()))?;
    signed
        .verify()
        .with_context(|| format!("verifying {}", file.display()))?;
    Ok(signed)
}

fn write(identity: &NodeIdentity, manifest: PoolManifest, file: &Path) -> anyhow::Result<()> {
    let signed = SignedManifest::sign(identity.signing_key(), manifest)?;
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, signed.to_text()).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, file).with_context(|| format!("writing {}", file.display()))?;
    println!(
        "{}: {} members, serial {}",
        file.display(),
        signed.manifest.members.len(),
        signed.manifest.serial
    );
    Ok(())
}

/// A peer id (`12D3Koo…`, ed25519) or a 64-hex public key.
pub fn parse_peer(text: &str) -> anyhow::Result<PeerKey> {
    if let Some(key) = PeerKey::from_hex(text) {
        return Ok(key);
    }
    let id: PeerId = text
        .parse()
        .with_context(|| format!("{text:?} is not a peer id"))?;
    let multihash = id.as_ref();
    if multihash.code() != 0 {
        bail!("peer id {text} does not embed its public key (not ed25519)");
    }
    let public = libp2p::identity::PublicKey::try_decode_protobuf(multihash.digest())
        .with_context(|| format!("peer id {text} holds no valid public key"))?;
    peer_key_of(&public).with_context(|| format!("peer id {text} is not an ed25519 key"))
}

/// Who may take part: everyone, or the members of the `--pool` manifest at `pool`.
pub(crate) fn admission(pool: Option<&Path>, run: &RunId) -> anyhow::Result<Admission> {
    let Some(path) = pool else {
        return Ok(Admission::Open);
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the pool manifest {}", path.display()))?;
    let signed = SignedManifest::from_text(&text)
        .with_context(|| format!("parsing the pool manifest {}", path.display()))?;
    let manifest = signed
        .verify_for_run(run)
        .with_context(|| format!("verifying the pool manifest {}", path.display()))?;
    Ok(Admission::Closed(
        manifest.members.iter().copied().collect(),
    ))
}

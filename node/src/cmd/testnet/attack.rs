//! What `murmur testnet --malicious KIND` adds to a gossip testnet: how many malicious nodes
//! and how each tampers. Every [`Tamper`] kind is one node; `sybil:N` is N nodes, each a fresh
//! identity sending sign-flipped deltas (a coordinated push against the honest descent).
//! `late-join-capture` also holds the last honest node back until the others have trained a
//! while, so that there is a late joiner to capture.

use std::fmt;
use std::str::FromStr;

use crate::adversary::Tamper;

/// Most sybil identities one testnet starts (each is a node process).
pub const MAX_SYBILS: usize = 16;

/// Honest rounds the first nodes train before a `late-join-capture` testnet starts its late
/// joiner.
pub const LATE_JOIN_AFTER_ROUNDS: u64 = 30;

/// The malicious nodes of a testnet.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Attack {
    /// How each of them tampers.
    pub tamper: Tamper,
    /// How many there are (fresh identities).
    pub nodes: usize,
}

impl Attack {
    /// Whether the last honest node joins late (to be the capture's target).
    pub fn late_joiner(&self) -> bool {
        self.tamper == Tamper::LateJoinCapture
    }
}

impl fmt::Display for Attack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.nodes == 1 {
            write!(f, "{}", self.tamper)
        } else {
            write!(f, "sybil:{}", self.nodes)
        }
    }
}

impl FromStr for Attack {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let Some(count) = s.strip_prefix("sybil:") else {
            let tamper = s
                .parse::<Tamper>()
                .map_err(|e| format!("{e}, or sybil:N"))?;
            return Ok(Attack { tamper, nodes: 1 });
        };
        match count.parse::<usize>() {
            Ok(nodes) if (1..=MAX_SYBILS).contains(&nodes) => Ok(Attack {
                tamper: Tamper::Flip,
                nodes,
            }),
            _ => Err(format!(
                "bad sybil count {count:?}: expected 1 to {MAX_SYBILS} identities"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_parse_and_print_back() {
        for kind in [
            "flip",
            "scale:100",
            "weight",
            "round-jump",
            "replay-flood",
            "late-join-capture",
            "butterfly-takeover",
            "slow-loris",
            "sybil:3",
        ] {
            let attack: Attack = kind.parse().unwrap();
            assert_eq!(attack.to_string(), kind);
        }
        let sybils: Attack = "sybil:3".parse().unwrap();
        assert_eq!(sybils.nodes, 3);
        assert_eq!(sybils.tamper, Tamper::Flip);
        assert!("late-join-capture".parse::<Attack>().unwrap().late_joiner());
    }

    #[test]
    fn nonsense_kinds_are_clear_errors() {
        for bad in [
            "sybil:0",
            "sybil:17",
            "sybil:x",
            "sybil:",
            "nope",
            "scale:inf",
        ] {
            let err = bad.parse::<Attack>().unwrap_err();
            assert!(err.contains("expected"), "{bad}: {err}");
        }
    }
}

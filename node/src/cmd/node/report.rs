//! How `murmur node` prints progress: a readable line per update, or JSON lines
//! (`--json`) that `murmur testnet` and scripts parse. The last line is always a JSON
//! summary with `"event": "final"`.

use std::time::Duration;

use libp2p::{Multiaddr, PeerId};
use murmur_models::ModelKind;
use serde_json::json;

use crate::session::NodeStatus;

/// Progress printer of one node.
#[derive(Debug)]
pub(crate) struct Reporter {
    json: bool,
    peer: PeerId,
}

/// The JSON object describing a node's status.
pub fn status_json(peer: &PeerId, s: &NodeStatus, elapsed: Duration) -> serde_json::Value {
    let w = &s.worker;
    json!({
        "peer": peer.to_string(),
        "elapsed_s": elapsed.as_secs_f64(),
        "round": w.round,
        "steps": w.steps,
        "samples": w.samples,
        "loss": w.loss,
        "test_loss": w.eval.map(|e| e.loss),
        "test_accuracy": w.eval.and_then(|e| e.accuracy),
        "test_perplexity": w.eval.and_then(|e| e.perplexity),
        "training": w.training,
        "reached_target": w.reached_target,
        "mass": w.mass,
        "merged": w.counts.merged,
        "folded": w.counts.folded,
        "capped": w.counts.capped,
        "rejected": w.counts.rejected_total(),
        "rejected_by_reason": w.counts.rejected_json(),
        "bytes_sent": s.bytes_sent,
        "bytes_received": s.bytes_received,
        "deltas_sent": s.deltas_sent,
        "send_failures": s.send_failures,
        "states_served": s.states_served,
        "states_refused": s.states_refused,
        "peers": s.peers,
        "samples_per_sec": w.samples_per_sec,
        "adopted_round": w.adopted_round,
        "adopted_from": w.adopted_from.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "trained_rounds": w.trained_rounds,
        "butterfly_rounds_started": w.butterfly_rounds_started,
    })
}

impl Reporter {
    pub(crate) fn new(json: bool, peer: PeerId, model: ModelKind, params: u64) -> Self {
        if json {
            println!(
                "{}",
                json!({"event": "start", "peer": peer.to_string(), "model": model.to_string(), "params": params})
            );
        } else {
            println!("peer id: {peer}\nmodel: {model} ({params} parameters)");
        }
        Self { json, peer }
    }

    pub(crate) fn listening(&self, addr: &Multiaddr) {
        let full = format!("{addr}/p2p/{}", self.peer);
        if self.json {
            println!("{}", json!({"event": "listening", "addr": full}));
        } else {
            println!("listening: {full}");
        }
    }

    pub(crate) fn progress(&mut self, s: &NodeStatus, elapsed: Duration) {
        if self.json {
            let mut v = status_json(&self.peer, s, elapsed);
            v["event"] = "progress".into();
            println!("{v}");
            return;
        }
        let w = &s.worker;
        let quality = match w.eval {
            Some(e) => match (e.accuracy, e.perplexity) {
                (Some(a), _) => format!("test acc {:5.1}%", a * 100.0),
                (None, Some(p)) => format!("test ppl {p:6.2}"),
                _ => String::new(),
            },
            None => String::new(),
        };
        println!(
            "[{:6.1}s] round {:4} step {:5} loss {:7.4} {quality}  merged {} rejected {}  sent {} recv {}  peers {}",
            elapsed.as_secs_f64(),
            w.round,
            w.steps,
            w.loss.unwrap_or(f32::NAN),
            w.counts.merged,
            w.counts.rejected_total(),
            human_bytes(s.bytes_sent),
            human_bytes(s.bytes_received),
            s.peers,
        );
    }

    pub(crate) fn final_summary(&self, s: &NodeStatus, elapsed: Duration) {
        let mut v = status_json(&self.peer, s, elapsed);
        v["event"] = "final".into();
        println!("{v}");
    }
}

/// `1.2 MB`-style byte counts.
pub fn human_bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.2} GB", n as f64 / 1e9),
        n if n >= 1 << 20 => format!("{:.1} MB", n as f64 / 1e6),
        n if n >= 1 << 10 => format!("{:.1} kB", n as f64 / 1e3),
        n => format!("{n} B"),
    }
}

//! The testnet's live table, summary table and final JSON line, and the live line of a
//! sharded run.

use std::time::Duration;

use serde_json::{Value, json};

use crate::cmd::node::report::human_bytes;

/// What the testnet knows about one node, from its JSON lines.
#[derive(Debug, Clone, Default)]
pub(crate) struct NodeView {
    pub(crate) index: usize,
    pub(crate) malicious: bool,
    pub(crate) started: bool,
    pub(crate) peer: String,
    pub(crate) params: u64,
    pub(crate) round: u64,
    pub(crate) steps: u64,
    pub(crate) loss: Option<f64>,
    pub(crate) accuracy: Option<f64>,
    pub(crate) perplexity: Option<f64>,
    pub(crate) training: bool,
    pub(crate) reached_target: bool,
    pub(crate) reached_at: Option<f64>,
    pub(crate) bytes_sent: u64,
    pub(crate) bytes_received: u64,
    pub(crate) merged: u64,
    /// Merged deltas whose weight was clipped (a sender claimed more than its share).
    pub(crate) capped: u64,
    /// Averaging mass held at the last report.
    pub(crate) mass: Option<f64>,
    pub(crate) rejected: u64,
    pub(crate) rejected_by_reason: Value,
    pub(crate) peers: u64,
    pub(crate) restarts: u32,
    /// Deltas folded into a queued one of the same sender.
    pub(crate) folded: u64,
    /// Round of the peer state it adopted, and whose states agreed on it.
    pub(crate) adopted_round: Option<u64>,
    pub(crate) adopted_from: Value,
    /// Whether its process did not exit cleanly when asked to stop (or crashed).
    pub(crate) stopped_with_error: bool,
}

impl NodeView {
    pub(crate) fn new(index: usize, malicious: bool) -> Self {
        Self {
            index,
            malicious,
            training: true,
            rejected_by_reason: json!({}),
            adopted_from: json!([]),
            ..Self::default()
        }
    }

    pub(crate) fn restarted(&mut self) {
        self.restarts += 1;
        self.started = false;
    }

    pub(crate) fn update(&mut self, v: &Value, elapsed: Duration) {
        let u = |k: &str| v.get(k).and_then(Value::as_u64);
        let f = |k: &str| v.get(k).and_then(Value::as_f64);
        match v.get("event").and_then(Value::as_str) {
            Some("start") => {
                self.peer = v
                    .get("peer")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned();
                self.params = u("params").unwrap_or(0);
            }
            Some("progress") | Some("final") => {
                self.started = true;
                self.round = u("round").unwrap_or(self.round);
                self.steps = u("steps").unwrap_or(self.steps);
                self.loss = f("loss").or(self.loss);
                self.accuracy = f("test_accuracy").or(self.accuracy);
                self.perplexity = f("test_perplexity").or(self.perplexity);
                self.training = v
                    .get("training")
                    .and_then(Value::as_bool)
                    .unwrap_or(self.training);
                let reached = v
                    .get("reached_target")
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
                if reached && !self.reached_target {
                    self.reached_at = Some(elapsed.as_secs_f64());
                }
                self.reached_target |= reached;
                // Counters restart with a restarted process; keep the running maximum.
                self.bytes_sent = self.bytes_sent.max(u("bytes_sent").unwrap_or(0));
                self.bytes_received = self.bytes_received.max(u("bytes_received").unwrap_or(0));
                self.merged = self.merged.max(u("merged").unwrap_or(0));
                self.capped = self.capped.max(u("capped").unwrap_or(0));
                self.folded = self.folded.max(u("folded").unwrap_or(0));
                self.adopted_round = u("adopted_round").or(self.adopted_round);
                if let Some(from) = v.get("adopted_from").filter(|f| f.is_array()) {
                    self.adopted_from = from.clone();
                }
                self.mass = f("mass").or(self.mass);
                self.rejected = self.rejected.max(u("rejected").unwrap_or(0));
                if let Some(r) = v.get("rejected_by_reason") {
                    self.rejected_by_reason = r.clone();
                }
                self.peers = u("peers").unwrap_or(self.peers);
            }
            _ => {}
        }
    }

    fn quality(&self) -> String {
        match (self.accuracy, self.perplexity) {
            (Some(a), _) => format!("{:5.1}%", a * 100.0),
            (None, Some(p)) => format!("ppl {p:.2}"),
            _ => "    -".into(),
        }
    }
}

/// Prints the per-node table.
pub(crate) fn table(views: &[NodeView], elapsed: Duration, compact: bool) {
    if compact {
        let line: Vec<String> = views
            .iter()
            .map(|v| {
                format!(
                    "n{} r{} s{} {}",
                    v.index,
                    v.round,
                    v.steps,
                    v.quality().trim()
                )
            })
            .collect();
        println!("[{:6.1}s] {}", elapsed.as_secs_f64(), line.join(" | "));
        return;
    }
    println!(
        "[{:6.1}s] node  round  steps    loss   test   merged  rejected      sent      recv  peers",
        elapsed.as_secs_f64()
    );
    for v in views {
        println!(
            "          {:>3}{} {:6} {:6} {:7.4} {:>6} {:8} {:9} {:>9} {:>9} {:6}",
            v.index,
            if v.malicious { "!" } else { " " },
            v.round,
            v.steps,
            v.loss.unwrap_or(f64::NAN),
            v.quality(),
            v.merged,
            v.rejected,
            human_bytes(v.bytes_sent),
            human_bytes(v.bytes_received),
            v.peers,
        );
    }
}

/// How the testnet ended.
#[derive(Debug)]
pub(crate) struct Summary {
    pub(crate) outcome: &'static str,
    pub(crate) seconds: f64,
    pub(crate) seconds_to_target: Option<f64>,
    pub(crate) target: Option<f32>,
    pub(crate) restarts: u32,
    pub(crate) finals_received: usize,
    pub(crate) model: String,
}

impl Summary {
    /// Prints the summary and the final JSON line.
    pub(crate) fn print(&self, views: &[NodeView]) {
        let honest: Vec<&NodeView> = views.iter().filter(|v| !v.malicious).collect();
        let n = honest.len().max(1) as f64;
        println!(
            "summary: {} in {:.1} s{}",
            self.outcome,
            self.seconds,
            self.seconds_to_target.map_or(String::new(), |t| format!(
                "; all nodes at target after {t:.1} s"
            ))
        );
        let nodes: Vec<Value> = views
            .iter()
            .map(|v| {
                // Bytes a ring all-reduce of f32 gradients would send per node for the
                // same steps: 2 (N-1)/N × params × 4 bytes per step.
                let allreduce = (v.steps as f64 * 2.0 * (n - 1.0) / n * v.params as f64 * 4.0) as u64;
                json!({
                    "node": v.index,
                    "peer": v.peer,
                    "malicious": v.malicious,
                    "test_accuracy": v.accuracy,
                    "test_perplexity": v.perplexity,
                    "loss": v.loss,
                    "steps": v.steps,
                    "rounds": v.round,
                    "reached_target": v.reached_target,
                    "reached_target_after_s": v.reached_at,
                    "bytes_sent": v.bytes_sent,
                    "bytes_received": v.bytes_received,
                    "allreduce_equivalent_bytes": allreduce,
                    "communication_reduction": if v.bytes_sent > 0 { allreduce as f64 / v.bytes_sent as f64 } else { 0.0 },
                    "deltas_merged": v.merged,
                    "deltas_capped": v.capped,
                    "deltas_folded": v.folded,
                    "mass": v.mass,
                    "deltas_rejected": v.rejected,
                    "rejected_by_reason": v.rejected_by_reason,
                    "restarts": v.restarts,
                    "adopted_round": v.adopted_round,
                    "adopted_from": v.adopted_from,
                    "stopped_with_error": v.stopped_with_error,
                })
            })
            .collect();
        let line = json!({
            "event": "testnet",
            "model": self.model,
            "outcome": self.outcome,
            "seconds": self.seconds,
            "seconds_to_target": self.seconds_to_target,
            "target_accuracy": self.target,
            "restarts": self.restarts,
            "final_reports": self.finals_received,
            "nodes": nodes,
        });
        println!("{line}");
    }
}

/// One line of a sharded run's live view: each node's stages, step, utilisation and loss.
pub(super) fn stages(slowdown: &[f64], stages: &[Value], elapsed: Duration) {
    let mut line = format!("[{:>5.1} s]", elapsed.as_secs_f64());
    for (i, s) in stages.iter().enumerate() {
        let range = s
            .get("range")
            .and_then(Value::as_array)
            .map(|r| {
                let at = |k: usize| r.get(k).and_then(Value::as_u64).unwrap_or(0);
                format!("{}..{}", at(0), at(1))
            })
            .unwrap_or_else(|| "-".into());
        let step = s.get("step").and_then(Value::as_u64).unwrap_or(0);
        let util = s.get("utilisation").and_then(Value::as_f64).unwrap_or(0.0);
        let loss = s
            .get("loss")
            .and_then(Value::as_f64)
            .map_or(String::new(), |l| format!(" loss {l:.3}"));
        line.push_str(&format!(
            " | node {i} ×{} stages {range} step {step} util {:>3.0}%{loss}",
            slowdown[i],
            100.0 * util
        ));
    }
    println!("{line}");
}

/// A pipeline plan as `start..end on <peer suffix>` per assignment.
pub(super) fn plan_text(report: &crate::shard::pipeline::PipelineReport) -> String {
    report
        .plan
        .assignments
        .iter()
        .map(|a| {
            format!(
                "{}..{} on {}",
                a.start,
                a.end,
                &a.peer[a.peer.len().saturating_sub(6)..]
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

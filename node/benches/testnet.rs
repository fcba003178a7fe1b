//! Time to accuracy and communication of `murmur testnet` (4 nodes, mlp-digits, quarter
//! shards, default settings): wall-clock seconds from start (process start-up included)
//! until every node is at 96 % held-out accuracy, and bytes sent per node against a
//! per-step ring all-reduce of f32 gradients for the same steps.
//!
//! `cargo bench -p murmur-node --bench testnet --profile dev` (runs the `murmur` binary 5 times).

use std::process::Command;

use serde_json::Value;

fn main() {
    let runs: usize = std::env::var("MURMUR_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let mut times = Vec::new();
    let mut reductions = Vec::new();
    let mut bytes = Vec::new();
    for run in 0..runs {
        let out = Command::new(env!("CARGO_BIN_EXE_murmur"))
            .args(["testnet", "--plain"])
            .env("MURMUR_LOG", "warn")
            .output()
            .expect("murmur testnet runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let Some(summary) = stdout
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["event"] == "testnet")
        else {
            println!("run {run}: no summary (exit {:?})", out.status.code());
            continue;
        };
        let t = summary["seconds_to_target"].as_f64();
        let nodes = summary["nodes"].as_array().cloned().unwrap_or_default();
        let min_reduction = nodes
            .iter()
            .filter_map(|n| n["communication_reduction"].as_f64())
            .fold(f64::INFINITY, f64::min);
        let max_bytes = nodes
            .iter()
            .filter_map(|n| n["bytes_sent"].as_u64())
            .max()
            .unwrap_or(0);
        println!(
            "run {run}: all 4 nodes at 96 % after {} s; bytes sent per node ≤ {max_bytes}; all-reduce / gossip bytes ≥ {min_reduction:.0}×",
            t.map_or("never".into(), |t| format!("{t:.2}"))
        );
        if let Some(t) = t {
            times.push(t);
        }
        reductions.push(min_reduction);
        bytes.push(max_bytes);
    }
    times.sort_by(f64::total_cmp);
    reductions.sort_by(f64::total_cmp);
    if let (Some(median), Some(worst)) = (times.get(times.len() / 2), reductions.first()) {
        println!(
            "time to 96 % (4 nodes, start-up included): median {median:.2} s over {} runs that reached it (of {runs}); communication reduction ≥ {worst:.0}× in every run",
            times.len()
        );
    }
}

//! Pipeline training throughput across heterogeneous peers: `murmur testnet --sharded
//! --compare-even` (3 node processes, char-gpt-deep, 14 stages) with the peers slowed 1×/2×/4×
//! and 1×/1×/8×. Prints, per setting, the measured samples/s of the capacity-aware plan and of
//! an even split (end to end, fill and drain included; and steady state, from the busiest
//! shard's compute time), the ideal bound (sum of the measured capacities), and the ratios —
//! also against the bound recomputed from the capacities the shards showed while training.
//!
//! `cargo bench -p murmur-node --bench pipeline --profile dev`; `MURMUR_BENCH_STEPS` sets the
//! steps per run (default 24), `MURMUR_BENCH_SLOWDOWNS` the settings (space-separated,
//! default `1,2,4 1,1,8`).

use std::process::Command;

use serde_json::Value;

fn main() {
    let steps = std::env::var("MURMUR_BENCH_STEPS").unwrap_or_else(|_| "24".into());
    println!(
        "slowdowns | capacity-aware e2e / steady | even e2e / steady | ideal | speedup e2e / steady | steady / ideal | steady / ideal from observed capacities | even: steady / its observed ideal"
    );
    let settings = std::env::var("MURMUR_BENCH_SLOWDOWNS").unwrap_or_else(|_| "1,2,4 1,1,8".into());
    for slowdowns in settings.split_whitespace() {
        let out = Command::new(env!("CARGO_BIN_EXE_murmur"))
            .args([
                "testnet",
                "--sharded",
                "--compare-even",
                "--slowdown",
                slowdowns,
                "--steps",
                &steps,
            ])
            .env("MURMUR_LOG", "warn")
            .output()
            .expect("murmur testnet runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let Some(s) = stdout
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["event"] == "testnet-sharded")
        else {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let tail = |text: &str| -> String {
                let lines: Vec<&str> = text.lines().collect();
                lines[lines.len().saturating_sub(5)..].join("\n")
            };
            println!(
                "{slowdowns}: no summary (exit {:?})\n{}\n{}",
                out.status.code(),
                tail(&stdout),
                tail(&stderr)
            );
            continue;
        };
        let f = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
        println!(
            "{slowdowns} | {:.2} / {:.2} | {:.2} / {:.2} | {:.2} | {:.2}× / {:.2}× | {:.0} % | {:.0} % | {:.0} %",
            f(&s["capacity"]["samples_per_sec"]),
            f(&s["capacity"]["steady_samples_per_sec"]),
            f(&s["even"]["samples_per_sec"]),
            f(&s["even"]["steady_samples_per_sec"]),
            f(&s["ideal_samples_per_sec"]),
            f(&s["speedup_vs_even"]),
            f(&s["steady_speedup_vs_even"]),
            100.0 * f(&s["steady_fraction_of_ideal"]),
            100.0 * f(&s["steady_fraction_of_observed_ideal"]),
            100.0 * f(&s["even_steady_fraction_of_observed_ideal"]),
        );
        println!(
            "  plans: capacity-aware {}, even {}",
            s["capacity"]["plan"], s["even"]["plan"]
        );
    }
}

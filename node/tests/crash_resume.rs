//! Crash safety: `kill -9` a training node several times mid-run — with a checkpoint written
//! every round, so kills land during and between checkpoint writes — restart it on the same
//! data directory, and check that it resumes from a checkpoint every time and the run
//! finishes with both nodes at the target accuracy.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

struct Node {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<Value>,
}

fn spawn(dir: &Path, extra: &[&str]) -> Node {
    let mut child = Command::new(env!("CARGO_BIN_EXE_murmur"))
        .args([
            "--data-dir",
            dir.to_str().expect("utf-8 path"),
            "node",
            "--json",
            "--stdin-control",
        ])
        .args([
            "--run",
            "crash-test",
            "--no-mdns",
            "--kad-server",
            "--device",
            "flex",
        ])
        .args([
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--announce-every",
            "0.5",
        ])
        .args([
            "--steps",
            "500",
            "--sync",
            "steps:10",
            "--checkpoint-every",
            "1",
        ])
        .args(["--target-accuracy", "0.95", "--eval-every", "10"])
        .args(extra)
        .env("MURMUR_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("murmur starts");
    let stdin = child.stdin.take();
    let stdout = child.stdout.take().expect("stdout");
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<Value>(&line)
                && tx.send(v).is_err()
            {
                return;
            }
        }
    });
    Node {
        child,
        stdin,
        lines,
    }
}

impl Node {
    /// Waits (bounded) for a JSON line satisfying `check`.
    fn wait_for(&self, limit: Duration, check: impl Fn(&Value) -> bool) -> Option<Value> {
        let deadline = Instant::now() + limit;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(v) if check(&v) => return Some(v),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
        None
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn stop(mut self) -> Option<Value> {
        drop(self.stdin.take());
        let last = self.wait_for(Duration::from_secs(20), |v| v["event"] == "final");
        let _ = self.child.kill();
        let _ = self.child.wait();
        last
    }
}

fn u(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or(0)
}

#[test]
fn a_node_killed_again_and_again_resumes_from_its_checkpoints_and_the_run_finishes() {
    let root = tempfile::tempdir().expect("temp dir");
    let (dir_a, dir_b) = (root.path().join("a"), root.path().join("b"));
    let a = spawn(&dir_a, &["--data-part", "0/2"]);
    let listening = a
        .wait_for(Duration::from_secs(20), |v| v["event"] == "listening")
        .expect("node a listens");
    let addr = listening["addr"].as_str().expect("address").to_owned();
    let b_args = ["--bootstrap", addr.as_str(), "--data-part", "1/2"];

    let mut b = spawn(&dir_b, &b_args);
    let mut last_round = 0;
    for (kill, after_ms) in [(1, 20u64), (2, 35), (3, 50)] {
        let progressed = b
            .wait_for(Duration::from_secs(20), |v| {
                v["event"] == "progress" && u(v, "round") > last_round + 2
            })
            .expect("node b makes progress before the kill");
        std::thread::sleep(Duration::from_millis(after_ms));
        b.kill9();
        b = spawn(&dir_b, &b_args);
        let resumed = b
            .wait_for(Duration::from_secs(20), |v| v["event"] == "progress")
            .unwrap_or_else(|| panic!("node b reports after kill {kill}"));
        assert!(
            u(&resumed, "steps") > 0 && u(&resumed, "round") > 0,
            "kill {kill}: node b restarted from scratch: {resumed} (before: {progressed})"
        );
        last_round = u(&resumed, "round");
    }
    let reached = |n: &Node| {
        n.wait_for(Duration::from_secs(40), |v| {
            v["event"] == "progress" && v["reached_target"] == true
        })
        .is_some()
    };
    assert!(reached(&b), "node b reaches the target after its restarts");
    let final_b = b.stop().expect("node b prints a final summary");
    let _ = a.stop();
    assert!(
        final_b["test_accuracy"].as_f64().unwrap_or(0.0) >= 0.9,
        "{final_b}"
    );
}

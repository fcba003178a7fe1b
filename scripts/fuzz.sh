#!/usr/bin/env bash
# Fuzzes every decoder that takes peer bytes with cargo-fuzz (libFuzzer) for a while each:
# the protocol crate's (envelopes, codecs, framing, pipeline headers) and the node's (plan
# notices, pipeline snapshots, butterfly parts, state ranges, break reports).
#   scripts/fuzz.sh [SECONDS_PER_TARGET]      (default 60)
# Needs a nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`). The node targets
# build the whole node (burn, wgpu, libp2p) instrumented: the first build takes a while.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
secs=${1:-60}
run() {
  echo "== fuzzing $1 for ${secs}s"
  cargo +nightly fuzz run "$@" -- -max_total_time="$secs" -rss_limit_mb=2048 -max_len=70000
}
cd "$root/protocol"
for target in envelope codec framing pipeline; do
  run "$target"
done
# The node's fuzz crate is its own workspace: build it with the versions the node is tested with.
cp "$root/Cargo.lock" "$root/node/fuzz/Cargo.lock"
cd "$root/node"
for target in plan_notice shard_snapshot butterfly_part state_ranges break_report; do
  # No AddressSanitizer: the node is safe Rust, and an instrumented burn/wgpu build is slow.
  run "$target" --sanitizer none
done

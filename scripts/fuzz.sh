#!/usr/bin/env bash
# Fuzzes every protocol decoder with cargo-fuzz (libFuzzer) for a while each.
#   scripts/fuzz.sh [SECONDS_PER_TARGET]      (default 60)
# Needs a nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`).
set -euo pipefail
cd "$(dirname "$0")/../protocol"
secs=${1:-60}
for target in envelope codec framing pipeline; do
  echo "== fuzzing $target for ${secs}s"
  cargo +nightly fuzz run "$target" -- -max_total_time="$secs" -rss_limit_mb=2048 -max_len=70000
done

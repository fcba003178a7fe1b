#!/usr/bin/env bash
# A local Murmur network with one log file per node, for operators.
#
#   scripts/testnet.sh [NODES]          (default 4)
#
# Starts a bootstrap node and NODES training nodes on loopback, each training on its part of
# the embedded digits data, with data directories and logs under ./testnet-run/. Extra node
# flags: MURMUR_NODE_ARGS="--robust --sync secs:1". Stops everything on Ctrl-C.
set -euo pipefail

nodes="${1:-4}"
root="${MURMUR_TESTNET_DIR:-testnet-run}"
cargo build --quiet --bin murmur
bin="$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')/debug/murmur"
mkdir -p "$root"

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  echo "stopped; data and logs in $root/"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The bootstrap node prints its addresses as JSON lines and stops when its stdin closes,
# so keep a pipe open to it for the lifetime of this script.
mkfifo "$root/.bootstrap-stdin" 2>/dev/null || true
"$bin" --data-dir "$root/bootstrap" bootstrap-node < "$root/.bootstrap-stdin" > "$root/bootstrap.out" 2> "$root/bootstrap.log" &
pids+=($!)
exec 3> "$root/.bootstrap-stdin"
for _ in $(seq 1 100); do
  addr="$(grep -o '"/ip4/127.0.0.1/tcp/[^"]*"' "$root/bootstrap.out" | head -n1 | tr -d '"' || true)"
  [ -n "$addr" ] && break
  sleep 0.1
done
[ -n "${addr:-}" ] || { echo "bootstrap node did not start; see $root/bootstrap.log" >&2; exit 1; }
echo "bootstrap: $addr"

for i in $(seq 0 $((nodes - 1))); do
  # shellcheck disable=SC2086
  "$bin" --data-dir "$root/node-$i" node --json --run murmur-testnet --no-mdns --kad-server \
    --listen /ip4/127.0.0.1/tcp/0 --bootstrap "$addr" --data-part "$i/$nodes" \
    --target-accuracy 0.96 ${MURMUR_NODE_ARGS:-} \
    > "$root/node-$i.log" 2> "$root/node-$i.stderr" &
  pids+=($!)
  echo "node $i: data $root/node-$i, progress $root/node-$i.log, log $root/node-$i.stderr"
done
echo "running; Ctrl-C stops all nodes"
wait

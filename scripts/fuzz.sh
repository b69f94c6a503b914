#!/usr/bin/env bash
# Runs the protocol fuzzer (crates/server/tests/fuzz.rs) for longer than CI
# does, in a release build: random frames, mutations and byte soup over real
# TCP and WebSocket connections to an in-process server, checked after every
# case (see "Fuzzing" in docs/reliability.md).
#
# Usage: scripts/fuzz.sh [MINUTES]        (default 10)
#   CLUSTERCHAT_FUZZ_SEED=0x...  replay a seed (a failure prints the one to use);
#                                default: a new random seed each run
#   CLUSTERCHAT_FUZZ_CASES=N     stop after N cases as well (default: no limit)
#
# Prints progress every 5 s (cases done, cases per second) and a summary; on a
# failure, the shrunk case, its seed, and the file under target/tmp/fuzz-failures/
# that holds the case in full. Exits non-zero on a failure.
set -euo pipefail

cd "$(dirname "$0")/.."

minutes="${1:-10}"
if ! [[ "$minutes" =~ ^[0-9]+$ ]] || [ "$minutes" -eq 0 ]; then
    echo "usage: $0 [MINUTES]   (a whole number of minutes, at least 1)" >&2
    exit 2
fi

seed="${CLUSTERCHAT_FUZZ_SEED:-$(printf '0x%04x%04x%04x%04x' $RANDOM $RANDOM $RANDOM $RANDOM)}"
export CLUSTERCHAT_FUZZ_SEED="$seed"
export CLUSTERCHAT_FUZZ_SECS=$((minutes * 60))
export CLUSTERCHAT_FUZZ_CASES="${CLUSTERCHAT_FUZZ_CASES:-0}"

echo "fuzz.sh: ${minutes} min, seed ${seed}; building (release)..."
cargo test --release -p clusterchat-server --test fuzz --no-run
started=$(date +%s)
status=0
cargo test --release -p clusterchat-server --test fuzz -- --nocapture || status=$?
echo "fuzz.sh: $(( $(date +%s) - started )) s, seed ${seed}, $([ "$status" -eq 0 ] && echo passed || echo FAILED)"
exit "$status"

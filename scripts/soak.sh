#!/usr/bin/env bash
# The soak: a real cluster (2 nodes, MariaDB, Redis, nginx, all private and on
# loopback) under mixed load for MINUTES, while a node, Redis and MariaDB are
# killed and restarted in turn, one fault every 30 s.
#
#   scripts/soak.sh [MINUTES]      (default 30)
#
# Prints a line every 30 s (messages sent, acknowledged and received, each
# node's RSS, the database size) and at the end the lost, duplicated and
# reordered counts; it fails if any acknowledged message was lost, doubled
# or reordered. Needs mariadb-server, redis-server, nginx and
# libnginx-mod-stream (scripts/test.sh installs them). The full output is
# also kept in var/soak-<date>.log.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
minutes=${1:-30}
[[ $minutes =~ ^[0-9]+([.][0-9]+)?$ ]] || { echo "usage: scripts/soak.sh [MINUTES]" >&2; exit 2; }
mkdir -p var
log=var/soak-$(date -u +%Y%m%dT%H%M%SZ).log
echo "==> building (debug: the load is light, the faults are the point)"
cargo build -q -p clusterchat-server --bin chat-server --tests --locked
echo "==> soak for $minutes min; log: $log"
CI=true CLUSTERCHAT_SOAK_MINUTES=$minutes \
  cargo test -q -p clusterchat-server --locked --test soak -- --ignored --nocapture 2>&1 | tee "$log"

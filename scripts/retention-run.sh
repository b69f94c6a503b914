#!/usr/bin/env bash
# The long run of issue 13: about a million messages through one server with
# retention on, in consecutive chat-bench rounds, sampling the SQLite
# database's size (file + WAL) every 2 s. It shows whether pruning keeps up:
# the size should stop growing once messages start expiring, and the rounds'
# throughput should not fall from the first to the last.
#
#   scripts/retention-run.sh [ROUNDS] [SECONDS_PER_ROUND] [RETENTION_DAYS]
#   defaults: 8 rounds of 10 s, retention 0.0002 days (17 s)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
rounds=${1:-8} secs=${2:-10} keep=${3:-0.0002}
cargo build --release -q -p clusterchat-server -p chat-bench
tmp=$(mktemp -d "${TMPDIR:-/tmp}/retention.XXXXXX")
db=$tmp/chat.db
NO_COLOR=1 target/release/chat-server --listen 127.0.0.1:0 --http-listen off \
  --database-url "sqlite://$db" --retention-days "$keep" \
  --max-connections-per-ip 0 --reg-per-ip-per-min 0 --login-failures-per-ip 0 \
  --prelogin-per-ip-per-sec 0 --social-per-min 0 --fanout-per-sec 0 \
  --argon2-m-kib 1024 --argon2-t 1 --log warn,chat_server=info 2>"$tmp/server.log" &
pid=$!
sampler=""
trap 'kill $pid 2>/dev/null || true; kill $sampler 2>/dev/null || true; rm -rf "$tmp"' EXIT
addr=""
for _ in $(seq 100); do
  addr=$(grep -o ' listen=[0-9.:]*' "$tmp/server.log" | head -1 | cut -d= -f2 || true)
  [[ -n $addr ]] && break
  sleep 0.1
done
[[ -n $addr ]] || { cat "$tmp/server.log" >&2; exit 1; }
start=$(date +%s)
( while true; do
    size=$(( $(stat -c %s "$db" 2>/dev/null || echo 0) + $(stat -c %s "$db-wal" 2>/dev/null || echo 0) ))
    echo "size t=$(( $(date +%s) - start ))s db+wal=$(( size / 1024 / 1024 )) MiB"
    sleep 2
  done ) &
sampler=$!
total=0
for r in $(seq "$rounds"); do
  out=$(target/release/chat-bench --server "$addr" --json direct --register --pairs 200 \
        --window 32 --size 64 --duration "$secs" --warmup 0)
  rate=$(grep -o '"msgs_per_s":[0-9.]*' <<<"$out" | head -1 | cut -d: -f2)
  got=$(grep -o '"delivered":[0-9]*' <<<"$out" | head -1 | cut -d: -f2)
  lost=$(grep -o '"lost":[0-9]*' <<<"$out" | head -1 | cut -d: -f2)
  total=$(( total + ${got:-0} ))
  echo "round $r: ${rate:-?} msg/s, received ${got:-?}, lost ${lost:-?}, total so far $total"
done
sleep 25   # one more retention period, then the last samples
kill $sampler 2>/dev/null || true
size=$(( $(stat -c %s "$db") + $(stat -c %s "$db-wal" 2>/dev/null || echo 0) ))
echo "end: $total messages, db+wal $(( size / 1024 / 1024 )) MiB"

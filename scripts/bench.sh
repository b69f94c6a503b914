#!/usr/bin/env bash
# Runs the standard chat-bench set against chat-server and the forward-only
# ceiling, and writes the results to bench-results/.
#
#   scripts/bench.sh           the standard set (release build, ~4 minutes)
#   scripts/bench.sh --smoke   each scenario once at a tiny size (CI): checks
#                              that every run completes with 0 errors, no
#                              performance thresholds
#
# Each case gets a fresh chat-server (release, its default durable SQLite on
# a temporary file, a free loopback port) with flags suited to it, and every
# TCP run measures the ceiling right after the server (chat-bench --ceiling).
# The -ws cases also open the server's HTTP listener (on a free port, read
# from its log) and connect over WebSocket (chat-bench --transport ws); the
# ceiling is TCP only, so those runs measure the server alone.
#
# Environment:
#   BENCH_RUNS=3        repetitions of the throughput cases (medians are quoted)
#   BENCH_DURATION=4    measured seconds per throughput run
#   BENCH_FULL=1        idle at 19,500 connections and setup at 20,000 users
#   BENCH_IDLE=N        idle connections (default 5000; 19500 with BENCH_FULL)
#   BENCH_SETUP=N       users registered at full argon2 cost (default 400)
#   BENCH_ONLY="..."    run only these cases (direct-w32 direct-w32-cmid
#                       direct-w32-ws direct-w1 direct-w1-cmid direct-rate
#                       group group-rate
#                       idle idle-ws setup);
#                       default all of those. `cluster` runs only when named:
#                       two nodes on MariaDB + Redis (scripts/cluster.sh, in
#                       a temporary directory, on ports 16100+) against one
#                       SQLite node and against one node of that cluster,
#                       cross-node pairs at window 32, alternating
#   BENCH_OUT=DIR       where results go (default bench-results)
#   BENCH_PROFILE=...   cargo profile (default release; --smoke uses dev,
#                       which `cargo test` has already built)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
export NO_COLOR=1

smoke=0
case "${1:-}" in
  --smoke) smoke=1 ;;
  "") ;;
  -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
  *) echo "usage: $0 [--smoke]" >&2; exit 2 ;;
esac

if ((smoke)); then
  profile=${BENCH_PROFILE:-dev}
else
  profile=${BENCH_PROFILE:-release}
fi
runs=${BENCH_RUNS:-3}
duration=${BENCH_DURATION:-4}
full=${BENCH_FULL:-0}
if ((full)); then idle_n=${BENCH_IDLE:-19500}; setup_n=${BENCH_SETUP:-20000}
else idle_n=${BENCH_IDLE:-5000}; setup_n=${BENCH_SETUP:-400}; fi
out=${BENCH_OUT:-bench-results}

say() { printf '\n==> %s\n' "$*" >&2; }
want() { [[ -z ${BENCH_ONLY:-} || " $BENCH_ONLY " == *" $1 "* ]]; }

say "building chat-server and chat-bench ($profile)"
cargo build --profile "$profile" -q -p clusterchat-server -p chat-bench
dir=target/$([[ $profile == dev ]] && echo debug || echo "$profile")
server_bin=$dir/chat-server
bench_bin=$dir/chat-bench

tmp=$(mktemp -d "${TMPDIR:-/tmp}/chat-bench.XXXXXX")
server_pid=""
stop_server() {
  if [[ -n $server_pid ]]; then
    kill "$server_pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=""
  fi
}
cluster_up=0
cluster_env() {
  # The cluster's own directory and ports, so a cluster of the user's in
  # ./var/cluster is left alone; load limits off and a cheap hash, as for
  # the single node.
  env CLUSTER_DIR="$tmp/cluster" CLUSTER_BASE_PORT=16100 CLUSTER_NGINX_PORT=16190 \
    CLUSTER_HTTP_PORT=16191 CLUSTER_MYSQL_PORT=16192 CLUSTER_REDIS_PORT=16193 \
    CHAT_SERVER_BIN="$PWD/$server_bin" CHAT_LOG=warn \
    CHAT_MAX_CONNECTIONS_PER_IP=0 CHAT_REG_PER_IP_PER_MIN=0 CHAT_LOGIN_FAILURES_PER_IP=0 \
    CHAT_PRELOGIN_PER_IP_PER_SEC=0 CHAT_SOCIAL_PER_MIN=0 CHAT_FANOUT_PER_SEC=0 \
    CHAT_ARGON2_M_KIB=1024 CHAT_ARGON2_T=1 "$@"
}
cleanup() {
  stop_server
  ((cluster_up)) && cluster_env scripts/cluster.sh down >/dev/null 2>&1
  rm -rf "$tmp"
}
trap cleanup EXIT

# Low argon2 cost where the scenario is not about password hashing.
cheap_hash=(--argon2-m-kib 1024 --argon2-t 1)

# start_server FLAGS...: free port, a fresh database (or $server_db when
# set); sets server_pid and addr. With $server_http set (127.0.0.1:0) the
# HTTP listener is on too and $http is its address (WebSocket at /ws).
nstart=0
start_server() {
  nstart=$((nstart + 1))
  local db="${server_db:-$tmp/db-$nstart.sqlite}" log="$tmp/server-$nstart.log"
  # All load comes from one address: per-address limits off.
  "$server_bin" --listen 127.0.0.1:0 --http-listen "${server_http:-off}" --database-url "sqlite://$db" \
    --max-connections-per-ip 0 --reg-per-ip-per-min 0 --login-failures-per-ip 0 \
    --prelogin-per-ip-per-sec 0 \
    --social-per-min 0 --fanout-per-sec 0 \
    --log warn,chat_server=info "$@" 2>"$log" &
  server_pid=$!
  addr="" http=""
  for _ in $(seq 100); do
    # The ready line: "clusterchat server ready listen=ADDR http=ADDR ..."
    # (colour codes stripped, should NO_COLOR not be honoured).
    local ready
    ready=$(sed 's/\x1b\[[0-9;]*m//g' "$log" 2>/dev/null | grep -m1 'server ready' || true)
    addr=$(grep -o ' listen=[0-9.:]*' <<<"$ready" | cut -d= -f2 || true)
    http=$(grep -o ' http=[0-9.:]*' <<<"$ready" | cut -d= -f2 || true)
    [[ -n $addr ]] && break
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.1
  done
  if [[ -z $addr || ( -n ${server_http:-} && -z $http ) ]]; then
    echo "chat-server did not start:" >&2
    cat "$log" >&2
    exit 1
  fi
}

mkdir -p "$out"
stamp=$(date -u +%Y%m%dT%H%M%SZ)
if ((smoke)); then jsonl="$tmp/smoke.jsonl"; else jsonl="$out/$stamp.jsonl"; fi
: >"$jsonl"

# The durability floor of the disk the databases live on: every latency below
# reads best beside it.
say "fsync floor"
"$bench_bin" fsync-probe --dir "$tmp" --count "$( ((smoke)) && echo 200 || echo 2000 )" | tee "$tmp/fsync.txt"

# bench CASE ARGS...: one chat-bench run over TCP (server, then ceiling),
# JSON to the results file, the table on the terminal.
# bench_tcp CASE ARGS...: the same without the ceiling.
# bench_ws CASE ARGS...: over WebSocket to the HTTP listener; server only
# (the ceiling is TCP only).
bench() { run_bench "$1" --server "$addr" --ceiling "${@:2}"; }
bench_tcp() { run_bench "$1" --server "$addr" "${@:2}"; }
bench_ws() { run_bench "$1" --server "$http" --transport ws "${@:2}"; }
run_bench() {
  local case=$1; shift
  local strict=()
  ((smoke)) && strict=(--strict)
  "$bench_bin" --json "${strict[@]}" --note "case=$case" "$@" >>"$jsonl"
}

# Users for the idle cases, with level-2 tokens, in $tmp/idle-users.txt on the
# database $tmp/idle.sqlite; made once, by a server of their own, so that the
# measured server is a fresh process whose heap did not grow during
# registration.
idle_users() {
  [[ -s $tmp/idle-users.txt ]] && return
  server_db="$tmp/idle.sqlite"
  start_server "${cheap_hash[@]}" --max-connections 20000
  "$bench_bin" --server "$addr" --quiet setup "$idle_n" --out "$tmp/idle-users.txt" --concurrency 16 >/dev/null
  "$bench_bin" --server "$addr" --quiet --timeout 30 idle -n "$idle_n" --users "$tmp/idle-users.txt" \
    --tokens --workers 4 --concurrency 256 --hold 0 >/dev/null
  stop_server
  unset server_db
}

t_start=$(date +%s)
if ((smoke)); then
  say "smoke: every scenario once, tiny"
  server_http=127.0.0.1:0
  # The per-connection request limit off: a level-1 closed loop frees its
  # window when the push arrives, which comes at the commit, so one sender
  # can pass 5,000 frames/s here. The smoke run checks that every scenario
  # works; the limit has tests of its own (tests/limits.rs).
  start_server "${cheap_hash[@]}" --rate-limit 0
  bench direct-w32 direct --register --pairs 4 --window 8 --duration 0.5 --warmup 0.2 --drain 5
  bench_ws direct-w32-ws direct --register --pairs 4 --window 8 --duration 0.5 --warmup 0.2 --drain 5
  bench direct-w32-l1 --level 1 direct --register --pairs 4 --window 8 --duration 0.5 --warmup 0.2 --drain 5
  bench direct-rate direct --register --pairs 4 --rate 200 --duration 0.5 --warmup 0.2 --drain 5
  bench group group --register --members 10 --senders 2 --window 4 --duration 0.5 --warmup 0.2 --drain 5
  bench group-l1 --level 1 group --register --members 10 --senders 2 --window 4 --duration 0.5 --warmup 0.2 --drain 5
  bench idle idle --register -n 40 --tokens --workers 2 --hold 0.2 --server-pid "$server_pid"
  bench_ws idle-ws idle --register -n 40 --tokens --workers 2 --hold 0.2 --server-pid "$server_pid"
  stop_server
  unset server_http
  start_server
  bench setup --note argon2=m19456,t2,p1 setup 8 --out "$tmp/users.txt" --concurrency 4
  stop_server
  # --strict already failed any run with errors; check that all 16 reported
  # (14 over TCP, server and ceiling; 2 over WebSocket, server only).
  n=$(grep -c '"errors":0[,}]' "$jsonl" || true)
  nws=$(grep '"errors":0[,}]' "$jsonl" | grep -c '"transport":"ws"' || true)
  if [[ $n -ne 16 || $nws -ne 2 ]]; then
    echo "smoke run failed: $n of 16 runs ($nws of 2 over WebSocket) reported 0 errors" >&2
    cat "$jsonl" >&2
    exit 1
  fi
  say "smoke passed: 16 runs, 0 errors, $(($(date +%s) - t_start)) s"
  exit 0
fi

if want direct-w32; then
say "direct --max, window 32, 200 pairs, 64-byte messages ($runs runs)"
start_server "${cheap_hash[@]}"
for _ in $(seq "$runs"); do
  bench direct-w32 direct --register --pairs 200 --window 32 --size 64 --duration "$duration" --warmup 1
done
stop_server
fi

if want direct-w32-cmid; then
say "direct --max, window 32, 200 pairs, every message with a cmid as real clients send it ($runs runs)"
start_server "${cheap_hash[@]}"
for _ in $(seq "$runs"); do
  bench direct-w32-cmid direct --register --pairs 200 --window 32 --size 64 --cmid --duration "$duration" --warmup 1
done
stop_server
fi

if want direct-w32-ws; then
say "direct --max, window 32, 200 pairs: TCP and WebSocket on one server, alternating ($runs runs each)"
# TCP runs here (case direct-w32-tcp) are the reference for the WebSocket
# ones: same server process, same minutes of a shared machine.
server_http=127.0.0.1:0
start_server "${cheap_hash[@]}"
for _ in $(seq "$runs"); do
  bench_tcp direct-w32-tcp direct --register --pairs 200 --window 32 --size 64 --duration "$duration" --warmup 1
  bench_ws direct-w32-ws direct --register --pairs 200 --window 32 --size 64 --duration "$duration" --warmup 1
done
stop_server
unset server_http
fi

if want direct-w1; then
say "direct --max, window 1, 200 pairs ($runs runs)"
start_server "${cheap_hash[@]}"
for _ in $(seq "$runs"); do
  bench direct-w1 direct --register --pairs 200 --window 1 --size 64 --duration "$duration" --warmup 1
done
stop_server
fi

if want direct-w1-cmid; then
say "direct --max, window 1, 200 pairs, every message with a cmid ($runs runs)"
start_server "${cheap_hash[@]}"
for _ in $(seq "$runs"); do
  bench direct-w1-cmid direct --register --pairs 200 --window 1 --size 64 --cmid --duration "$duration" --warmup 1
done
stop_server
fi

if want direct-rate; then
say "direct --rate 2000 msg/s, 200 pairs ($runs runs)"
start_server "${cheap_hash[@]}"
for _ in $(seq "$runs"); do
  bench direct-rate2000 direct --register --pairs 200 --rate 2000 --size 64 --duration "$duration" --warmup 1
done
stop_server
fi

if want group; then
say "group: 500 members, 5 senders, closed loop ($runs runs)"
start_server "${cheap_hash[@]}"
for _ in $(seq "$runs"); do
  bench group-500x5 group --register --members 500 --senders 5 --window 32 --size 64 --duration "$duration" --warmup 1
done
stop_server
fi

if want group-rate; then
say "group: 500 members, 5 senders x 100 msg/s, open loop ($runs runs)"
start_server "${cheap_hash[@]}"
for _ in $(seq "$runs"); do
  bench group-500x5-rate100 group --register --members 500 --senders 5 --rate 100 --size 64 --duration "$duration" --warmup 1
done
stop_server
fi

if [[ " ${BENCH_ONLY:-} " == *" cluster "* ]]; then
say "cluster: 2 nodes (MariaDB + Redis) against 1 SQLite node and 1 node of the cluster, cross-node pairs, window 32 ($runs runs each, alternating)"
cluster_up=1
cluster_env scripts/cluster.sh up 2 >"$tmp/cluster-up.log" 2>&1 || { cat "$tmp/cluster-up.log" >&2; exit 1; }
start_server "${cheap_hash[@]}"
for _ in $(seq "$runs"); do
  bench_tcp cluster-single direct --register --pairs 200 --window 32 --size 64 --duration "$duration" --warmup 1
  run_bench cluster-2nodes --server 127.0.0.1:16100,127.0.0.1:16102 direct --register --pairs 200 --window 32 \
    --size 64 --duration "$duration" --warmup 1
  # The same storage and bus on one node: what the second node and the
  # cross-node hop cost, apart from MariaDB against SQLite.
  run_bench cluster-1node --server 127.0.0.1:16100 direct --register --pairs 200 --window 32 \
    --size 64 --duration "$duration" --warmup 1
done
stop_server
cluster_env scripts/cluster.sh down >/dev/null 2>&1
cluster_up=0
fi

if want idle; then
say "idle: $idle_n connections, level-2 token logins"
idle_users
server_db="$tmp/idle.sqlite"
start_server "${cheap_hash[@]}" --max-connections 20000
bench "idle-$idle_n" idle -n "$idle_n" --users "$tmp/idle-users.txt" --tokens --workers 4 \
  --concurrency 256 --hold 2 --server-pid "$server_pid" --timeout 30
stop_server
unset server_db
fi

if want idle-ws; then
say "idle over WebSocket: $idle_n connections, level-2 token logins"
idle_users
server_db="$tmp/idle.sqlite" server_http=127.0.0.1:0
start_server "${cheap_hash[@]}" --max-connections 20000
bench_ws "idle-ws-$idle_n" idle -n "$idle_n" --users "$tmp/idle-users.txt" --tokens --workers 4 \
  --concurrency 256 --hold 2 --server-pid "$server_pid" --timeout 30
stop_server
unset server_db server_http
fi

if want setup; then
say "setup: $setup_n users at the default argon2 cost (m=19456 KiB, t=2, p=1)"
start_server
bench "setup-$setup_n" --note argon2=m19456,t2,p1 setup "$setup_n" --out "$tmp/users.txt" --concurrency 64 \
  --timeout 120
stop_server
fi

# cluster_row: with the cluster case, its medians and their ratio.
cluster_row() {
  # Empty, not a failure, for a case that did not run (set -e and pipefail
  # would otherwise end the script before the report).
  median() { grep "\"case\":\"$1\"" "$jsonl" | grep -o '"msgs_per_s":[0-9.]*' | cut -d: -f2 | sort -n |
    awk '{v[NR] = $1} END {if (NR) print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2)}' || true; }
  local one two mdb
  one=$(median cluster-single) two=$(median cluster-2nodes) mdb=$(median cluster-1node)
  [[ -n $one && -n $two ]] || return 0
  awk -v a="$two" -v b="$one" 'BEGIN {printf "- cluster row: 2 nodes %.0f msg/s, 1 node %.0f msg/s (medians): %.2f of single\n", a, b, a / b}'
  [[ -n $mdb ]] || return 0
  awk -v a="$two" -v b="$mdb" 'BEGIN {printf "- cluster against one of its nodes: 2 nodes %.0f msg/s, 1 node on MariaDB + Redis %.0f msg/s (medians): %.2f\n", a, b, a / b}'
}

md="$out/$stamp.md"
{
  echo "# chat-bench results $stamp"
  echo
  echo "- commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "- machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo) RAM, $(uname -sr)"
  echo "- cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
  echo "- profile: $profile; throughput runs: $runs x ${duration} s measured (+1 s warmup)"
  echo "- $(cat "$tmp/fsync.txt")"
  cluster_row
  echo
  "$bench_bin" report "$jsonl"
} >"$md"
cp "$jsonl" "$out/latest.jsonl"
cp "$md" "$out/latest.md"
say "done in $(($(date +%s) - t_start)) s: $jsonl, $md"
cat "$md"

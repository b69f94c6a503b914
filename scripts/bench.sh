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
# run measures the ceiling right after the server (chat-bench --ceiling).
#
# Environment:
#   BENCH_RUNS=3        repetitions of the throughput cases (medians are quoted)
#   BENCH_DURATION=4    measured seconds per throughput run
#   BENCH_FULL=1        idle at 19,500 connections and setup at 20,000 users
#   BENCH_IDLE=N        idle connections (default 5000; 19500 with BENCH_FULL)
#   BENCH_SETUP=N       users registered at full argon2 cost (default 400)
#   BENCH_ONLY="..."    run only these cases (direct-w32 direct-w1 direct-rate
#                       group group-rate idle setup); default all
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
cleanup() { stop_server; rm -rf "$tmp"; }
trap cleanup EXIT

# Low argon2 cost where the scenario is not about password hashing.
cheap_hash=(--argon2-m-kib 1024 --argon2-t 1)

# start_server FLAGS...: free port, a fresh database (or $server_db when
# set); sets server_pid and addr.
nstart=0
start_server() {
  nstart=$((nstart + 1))
  local db="${server_db:-$tmp/db-$nstart.sqlite}" log="$tmp/server-$nstart.log"
  # All load comes from one address: per-address limits off.
  "$server_bin" --listen 127.0.0.1:0 --http-listen off --database-url "sqlite://$db" \
    --max-connections-per-ip 0 --reg-per-ip-per-min 0 --login-failures-per-ip 0 \
    --prelogin-per-ip-per-sec 0 \
    --social-per-min 0 --fanout-per-sec 0 \
    --log warn,chat_server=info "$@" 2>"$log" &
  server_pid=$!
  addr=""
  for _ in $(seq 100); do
    addr=$(grep -o 'listen=[0-9.:]*' "$log" 2>/dev/null | head -1 | cut -d= -f2 || true)
    [[ -n $addr ]] && break
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.1
  done
  if [[ -z $addr ]]; then
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

# bench CASE ARGS...: one chat-bench run (server, then ceiling), JSON to the
# results file, the table on the terminal.
bench() {
  local case=$1; shift
  local strict=()
  ((smoke)) && strict=(--strict)
  "$bench_bin" --server "$addr" --ceiling --json "${strict[@]}" --note "case=$case" "$@" >>"$jsonl"
}

t_start=$(date +%s)
if ((smoke)); then
  say "smoke: every scenario once, tiny"
  start_server "${cheap_hash[@]}"
  bench direct-w32 direct --register --pairs 4 --window 8 --duration 0.5 --warmup 0.2 --drain 5
  bench direct-w32-l1 --level 1 direct --register --pairs 4 --window 8 --duration 0.5 --warmup 0.2 --drain 5
  bench direct-rate direct --register --pairs 4 --rate 200 --duration 0.5 --warmup 0.2 --drain 5
  bench group group --register --members 10 --senders 2 --window 4 --duration 0.5 --warmup 0.2 --drain 5
  bench group-l1 --level 1 group --register --members 10 --senders 2 --window 4 --duration 0.5 --warmup 0.2 --drain 5
  bench idle idle --register -n 40 --tokens --workers 2 --hold 0.2 --server-pid "$server_pid"
  stop_server
  start_server
  bench setup --note argon2=m19456,t2,p1 setup 8 --out "$tmp/users.txt" --concurrency 4
  stop_server
  # --strict already failed any run with errors; check that all 14 reported.
  n=$(grep -c '"errors":0[,}]' "$jsonl" || true)
  if [[ $n -ne 14 ]]; then
    echo "smoke run failed: $n of 14 runs reported 0 errors" >&2
    cat "$jsonl" >&2
    exit 1
  fi
  say "smoke passed: 14 runs, 0 errors, $(($(date +%s) - t_start)) s"
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

if want direct-w1; then
say "direct --max, window 1, 200 pairs ($runs runs)"
start_server "${cheap_hash[@]}"
for _ in $(seq "$runs"); do
  bench direct-w1 direct --register --pairs 200 --window 1 --size 64 --duration "$duration" --warmup 1
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

if want idle; then
say "idle: $idle_n connections, level-2 token logins"
# Users and their tokens are made first, then the server restarts on the same
# database, so the RSS baseline is a fresh process and not one whose heap
# already grew during registration.
server_db="$tmp/idle.sqlite"
start_server "${cheap_hash[@]}" --max-connections 20000
"$bench_bin" --server "$addr" --quiet setup "$idle_n" --out "$tmp/idle-users.txt" --concurrency 16 >/dev/null
"$bench_bin" --server "$addr" --quiet --timeout 30 idle -n "$idle_n" --users "$tmp/idle-users.txt" \
  --tokens --workers 4 --concurrency 256 --hold 0 >/dev/null
stop_server
start_server "${cheap_hash[@]}" --max-connections 20000
bench "idle-$idle_n" idle -n "$idle_n" --users "$tmp/idle-users.txt" --tokens --workers 4 \
  --concurrency 256 --hold 2 --server-pid "$server_pid" --timeout 30
stop_server
unset server_db
fi

if want setup; then
say "setup: $setup_n users at the default argon2 cost (m=19456 KiB, t=2, p=1)"
start_server
bench "setup-$setup_n" --note argon2=m19456,t2,p1 setup "$setup_n" --out "$tmp/users.txt" --concurrency 64 \
  --timeout 120
stop_server
fi

md="$out/$stamp.md"
{
  echo "# chat-bench results $stamp"
  echo
  echo "- commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "- machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo) RAM, $(uname -sr)"
  echo "- cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
  echo "- profile: $profile; throughput runs: $runs x ${duration} s measured (+1 s warmup)"
  echo "- $(cat "$tmp/fsync.txt")"
  echo
  "$bench_bin" report "$jsonl"
} >"$md"
cp "$jsonl" "$out/latest.jsonl"
cp "$md" "$out/latest.md"
say "done in $(($(date +%s) - t_start)) s: $jsonl, $md"
cat "$md"

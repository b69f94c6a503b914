#!/usr/bin/env bash
# The server's CPU instructions per message, counted by valgrind's callgrind:
# unlike msg/s, the count does not move when the machine is busy or noisy, so
# two builds can be compared on a shared machine.
#
#   scripts/instructions.sh              direct chat, 50 pairs, window 8
#   INSTR_PAIRS=200 INSTR_WINDOW=32 scripts/instructions.sh
#
# How: chat-server runs under callgrind on a fresh SQLite file, twice; the
# load is the same `chat-bench direct` for a short and a long time. The
# difference in the server's instructions over the difference in messages is
# the cost of one more message: start-up, registration and logins (argon2)
# cancel out. Under valgrind the server handles a few thousand msg/s, so its
# group commits are smaller than at full speed; compare builds with the same
# settings, not with wall-clock figures.
#
# Environment:
#   INSTR_PAIRS=50      sender/receiver pairs
#   INSTR_WINDOW=8      messages in flight per sender
#   INSTR_SHORT=3       seconds of the short run
#   INSTR_LONG=7        seconds of the long run
#   INSTR_BIN=DIR       take chat-server and chat-bench from DIR instead of
#                       building them (target/release)
#   INSTR_ARGS=--cmid   more `chat-bench direct` arguments; --cmid gives every
#                       message a cmid, as the terminal and web clients do
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
export NO_COLOR=1

case "${1:-}" in
  "") ;;
  -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
  *) echo "usage: $0 (settings in the environment; see --help)" >&2; exit 2 ;;
esac

pairs=${INSTR_PAIRS:-50}
window=${INSTR_WINDOW:-8}
short=${INSTR_SHORT:-3}
long=${INSTR_LONG:-7}

command -v valgrind >/dev/null || { echo "valgrind not found: apt-get install valgrind" >&2; exit 1; }
if [[ -n ${INSTR_BIN:-} ]]; then
  bin=$INSTR_BIN
else
  echo "==> building chat-server and chat-bench (release)" >&2
  cargo build --release --locked -q -p clusterchat-server -p chat-bench
  bin=target/release
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/chat-instr.XXXXXX")
server_pid=""
cleanup() {
  [[ -n $server_pid ]] && kill -9 "$server_pid" 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT

# run SECONDS: prints "messages instructions" for one server lifetime.
run() {
  local secs=$1 dir=$tmp/run-$1 addr=""
  mkdir -p "$dir"
  valgrind --tool=callgrind --callgrind-out-file="$dir/callgrind.out" \
    "$bin/chat-server" --listen 127.0.0.1:0 --http-listen off --database-url "sqlite://$dir/chat.db" \
    --max-connections-per-ip 0 --reg-per-ip-per-min 0 --login-failures-per-ip 0 \
    --prelogin-per-ip-per-sec 0 --social-per-min 0 --fanout-per-sec 0 \
    --argon2-m-kib 1024 --argon2-t 1 --log warn,chat_server=info 2>"$dir/server.log" &
  server_pid=$!
  for _ in $(seq 600); do
    addr=$(sed 's/\x1b\[[0-9;]*m//g' "$dir/server.log" | grep -m1 'server ready' | grep -o ' listen=[0-9.:]*' | cut -d= -f2 || true)
    [[ -n $addr ]] && break
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.1
  done
  [[ -n $addr ]] || { echo "chat-server did not start under valgrind:" >&2; cat "$dir/server.log" >&2; exit 1; }
  "$bin/chat-bench" --server "$addr" --json direct --register --pairs "$pairs" --window "$window" \
    --size 64 --duration "$secs" --warmup 0.5 --drain 30 ${INSTR_ARGS:-} >"$dir/bench.json" 2>"$dir/bench.err" ||
    { echo "chat-bench failed:" >&2; cat "$dir/bench.err" >&2; exit 1; }
  # SIGINT: a graceful stop, so callgrind writes its totals.
  kill -INT "$server_pid"
  wait "$server_pid" 2>/dev/null || true
  server_pid=""
  python3 - "$dir/bench.json" "$dir/callgrind.out" <<'PY'
import json, sys
bench = json.load(open(sys.argv[1]))
if bench["lost"] or bench["errors"]:
    sys.exit(f"the run lost {bench['lost']} and had {bench['errors']} errors")
total = None
for line in open(sys.argv[2]):
    if line.startswith("summary:") or line.startswith("totals:"):
        total = int(line.split()[1])
if total is None:
    sys.exit("no totals in the callgrind output")
print(bench["sent"], total)
PY
}

echo "==> ${short} s and ${long} s of direct chat under callgrind ($pairs pairs, window $window${INSTR_ARGS:+, $INSTR_ARGS})" >&2
read -r n1 i1 < <(run "$short")
echo "    short run: $n1 messages, $i1 instructions" >&2
read -r n2 i2 < <(run "$long")
echo "    long run:  $n2 messages, $i2 instructions" >&2
((n2 > n1)) || { echo "the long run sent no more messages than the short one" >&2; exit 1; }
awk -v a="$i1" -v b="$i2" -v m="$n1" -v n="$n2" -v p="$pairs" -v w="$window" -v x="${INSTR_ARGS:+, $INSTR_ARGS}" -v c="$(git rev-parse --short HEAD 2>/dev/null || echo '?')" \
  'BEGIN {printf "instructions per message: %.0f (commit %s, %d pairs, window %d%s, %d more messages)\n", (b - a) / (n - m), c, p, w, x, n - m}'

#!/usr/bin/env bash
# Runs the whole test suite, installing what it needs.
#
#   scripts/test.sh
#
# - As root, installs missing Debian packages with apt-get: MariaDB (MySQL
#   store tests), Redis and nginx with its stream module (cluster tests),
#   Chromium and chromedriver (the web client's browser tests).
#   As another user it says which ones to install.
# - Starts a private MariaDB on 127.0.0.1:3307 (data in ./var/), so the store
#   conformance suite runs against both SQLite and MariaDB.
# - Runs `cargo test --workspace`, then the benchmark tool's smoke run.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

say() { printf '\n==> %s\n' "$*"; }

missing=()
command -v mariadbd >/dev/null 2>&1 || command -v mysqld >/dev/null 2>&1 || missing+=(mariadb-server)
command -v mariadb-install-db >/dev/null 2>&1 || [[ " ${missing[*]} " == *" mariadb-server "* ]] || missing+=(mariadb-server)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v nginx >/dev/null 2>&1 || [[ -x /usr/sbin/nginx ]] || missing+=(nginx)
[[ -e /usr/lib/nginx/modules/ngx_stream_module.so ]] || missing+=(libnginx-mod-stream)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
[[ -d /usr/share/fonts/truetype/liberation ]] || missing+=(fonts-liberation)
if ((${#missing[@]})); then
  if [[ $(id -u) == 0 ]]; then
    say "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "missing packages: ${missing[*]}; install them with: sudo apt-get install ${missing[*]}" >&2
    exit 1
  fi
fi

say "starting a private MariaDB for the store conformance suite"
# One this run starts is stopped when it ends (pass or fail), so a second run
# in another checkout finds port 3307 free; one already running is left be.
if ! scripts/mariadb-test.sh status >/dev/null 2>&1; then
  trap 'scripts/mariadb-test.sh stop >/dev/null 2>&1 || true' EXIT
fi
scripts/mariadb-test.sh start
export CLUSTERCHAT_MYSQL_URL="${CLUSTERCHAT_MYSQL_URL:-mysql://chat:chat@127.0.0.1:3307/clusterchat}"

say "cargo test --workspace"
cargo test --workspace --locked

if [[ -x scripts/bench.sh ]]; then
  say "chat-bench smoke run (no thresholds)"
  scripts/bench.sh --smoke
fi
say "all tests passed"

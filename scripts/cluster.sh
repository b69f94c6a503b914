#!/usr/bin/env bash
# A clusterchat cluster on loopback: MariaDB, Redis, N chat-server nodes and
# nginx in front of them: the TCP (stream) load balancer for chat clients, and
# an HTTP proxy for the web client and its WebSocket.
#
#   scripts/cluster.sh up [N]   start (or complete) a cluster of N nodes (default 2)
#   scripts/cluster.sh status   what runs, with pids and ports
#   scripts/cluster.sh down     stop what this script started (by pid file)
#
# Everything lives under ./var/cluster/ (or $CLUSTER_DIR): MariaDB's data
# directory, Redis, the nginx config, logs and pid files. Running `up` twice
# starts nothing new.
# Ports (override with the environment variables in brackets):
#   nodes 6000, 6002, ... [CLUSTER_BASE_PORT]   nginx 8000 [CLUSTER_NGINX_PORT]
#   node web listeners 6001, 6003, ... (node port + 1)
#   nginx web (browser: http://127.0.0.1:8080/) [CLUSTER_HTTP_PORT]
#   MariaDB 3308 [CLUSTER_MYSQL_PORT]           Redis 6380 [CLUSTER_REDIS_PORT]
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VAR=${CLUSTER_DIR:-$ROOT/var/cluster}
BASE_PORT=${CLUSTER_BASE_PORT:-6000}
NGINX_PORT=${CLUSTER_NGINX_PORT:-8000}
HTTP_PORT=${CLUSTER_HTTP_PORT:-8080}
MYSQL_PORT=${CLUSTER_MYSQL_PORT:-3308}
REDIS_PORT=${CLUSTER_REDIS_PORT:-6380}
BIN=${CHAT_SERVER_BIN:-$ROOT/target/release/chat-server}
DB_URL="mysql://chat:chat@127.0.0.1:$MYSQL_PORT/clusterchat"
REDIS_URL="redis://127.0.0.1:$REDIS_PORT/"
export PATH="$HOME/.cargo/bin:/usr/sbin:/sbin:$PATH"

say() { printf '%s\n' "$*"; }
die() { printf 'cluster.sh: %s\n' "$*" >&2; exit 1; }
alive() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

wait_port() { # port seconds what
  local i
  for ((i = 0; i < $2 * 10; i++)); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  die "$3 did not open port $1 (see logs under $VAR)"
}

ensure_packages() {
  local missing=()
  command -v mariadbd >/dev/null || missing+=(mariadb-server)
  command -v redis-server >/dev/null || missing+=(redis-server)
  command -v nginx >/dev/null || missing+=(nginx)
  [[ -e /usr/lib/nginx/modules/ngx_stream_module.so ]] || nginx -V 2>&1 | grep -q -- '--with-stream ' || missing+=(libnginx-mod-stream)
  ((${#missing[@]})) || return 0
  if [[ $(id -u) != 0 ]]; then
    die "missing packages: ${missing[*]} (run as root, or: sudo apt-get install ${missing[*]})"
  fi
  say "installing ${missing[*]} ..."
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

start_mariadb() {
  local d=$VAR/mariadb
  if alive "$d/mariadb.pid"; then return 0; fi
  mkdir -p "$d"
  local user_opt=()
  [[ $(id -u) == 0 ]] && user_opt=(--user=root)
  if [[ ! -d $d/data/mysql ]]; then
    say "initialising MariaDB data directory in $d/data"
    mariadb-install-db --no-defaults --datadir="$d/data" "${user_opt[@]}" \
      --auth-root-authentication-method=socket --skip-test-db >"$d/install.log" 2>&1 ||
      die "mariadb-install-db failed (see $d/install.log)"
  fi
  mariadbd --no-defaults --datadir="$d/data" --socket="$d/mysqld.sock" --port="$MYSQL_PORT" \
    --bind-address=127.0.0.1 --pid-file="$d/mariadb.pid" --log-error="$d/error.log" \
    --character-set-server=utf8mb4 --collation-server=utf8mb4_bin --skip-name-resolve \
    --max-connections=500 "${user_opt[@]}" >/dev/null 2>&1 &
  wait_port "$MYSQL_PORT" 30 MariaDB
  for _ in $(seq 50); do [[ -f $d/mariadb.pid ]] && break; sleep 0.1; done
  mariadb --no-defaults -uroot --socket="$d/mysqld.sock" <<SQL
CREATE DATABASE IF NOT EXISTS clusterchat CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;
CREATE USER IF NOT EXISTS 'chat'@'127.0.0.1' IDENTIFIED BY 'chat';
CREATE USER IF NOT EXISTS 'chat'@'localhost' IDENTIFIED BY 'chat';
GRANT ALL PRIVILEGES ON clusterchat.* TO 'chat'@'127.0.0.1';
GRANT ALL PRIVILEGES ON clusterchat.* TO 'chat'@'localhost';
SQL
  say "MariaDB     127.0.0.1:$MYSQL_PORT  ($DB_URL)"
}

start_redis() {
  local d=$VAR/redis
  if alive "$d/redis.pid"; then return 0; fi
  mkdir -p "$d"
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --daemonize yes --pidfile "$d/redis.pid" \
    --dir "$d" --logfile "$d/redis.log" --save "" --appendonly no >/dev/null
  wait_port "$REDIS_PORT" 10 Redis
  say "Redis       127.0.0.1:$REDIS_PORT"
}

start_node() { # port
  local port=$1 pid=$VAR/node-$1.pid
  if alive "$pid"; then return 0; fi
  DATABASE_URL=$DB_URL REDIS_URL=$REDIS_URL CHAT_NODE_ID=node-$port \
    CHAT_TRUSTED_PROXIES=${CHAT_TRUSTED_PROXIES:-127.0.0.2} \
    nohup "$BIN" --listen "127.0.0.1:$port" --http-listen "127.0.0.1:$((port + 1))" \
    >>"$VAR/node-$port.log" 2>&1 &
  echo $! >"$pid"
  wait_port "$port" 30 "chat-server on $port"
  wait_port "$((port + 1))" 10 "chat-server web listener on $((port + 1))"
  say "node        127.0.0.1:$port  web 127.0.0.1:$((port + 1))  (log $VAR/node-$port.log)"
}

write_nginx_conf() { # ports...
  local d=$VAR/nginx module=""
  mkdir -p "$d/logs" "$d/tmp"
  [[ -e /usr/lib/nginx/modules/ngx_stream_module.so ]] && module="load_module /usr/lib/nginx/modules/ngx_stream_module.so;"
  {
    echo "# Generated by scripts/cluster.sh; see deploy/nginx/clusterchat.conf."
    echo "$module"
    echo "worker_processes 1;"
    echo "pid $d/nginx.pid;"
    echo "error_log $d/logs/error.log warn;"
    echo "events { worker_connections 20000; }"
    echo "stream {"
    echo "  upstream clusterchat {"
    echo "    least_conn;"
    for p in "$@"; do echo "    server 127.0.0.1:$p max_fails=1 fail_timeout=10s;"; done
    echo "  }"
    echo "  server {"
    echo "    listen 127.0.0.1:$NGINX_PORT;"
    echo "    proxy_pass clusterchat;"
    echo "    proxy_connect_timeout 1s;"
    echo "    proxy_timeout 10m;"
    echo "    tcp_nodelay on;"
    echo "    proxy_protocol on;   # nodes learn each client's address"
    echo "    proxy_bind 127.0.0.2; # and trust only this one (CHAT_TRUSTED_PROXIES)"
    echo "    proxy_next_upstream on;"
    echo "    proxy_next_upstream_tries 3;"
    echo "  }"
    echo "}"
    echo "http {"
    echo "  access_log off;"
    echo "  client_body_temp_path $d/tmp/body;"
    echo "  proxy_temp_path $d/tmp/proxy;"
    echo "  fastcgi_temp_path $d/tmp/fastcgi;"
    echo "  uwsgi_temp_path $d/tmp/uwsgi;"
    echo "  scgi_temp_path $d/tmp/scgi;"
    echo "  map \$http_upgrade \$connection_upgrade { default upgrade; '' close; }"
    echo "  upstream clusterchat_web {"
    echo "    least_conn;"
    for p in "$@"; do echo "    server 127.0.0.1:$((p + 1)) max_fails=1 fail_timeout=10s;"; done
    echo "  }"
    echo "  server {"
    echo "    listen 127.0.0.1:$HTTP_PORT;"
    echo "    location / {"
    echo "      proxy_pass http://clusterchat_web;"
    echo "      proxy_http_version 1.1;"
    echo "      proxy_set_header Host \$http_host;"
    echo "      proxy_set_header X-Real-IP \$remote_addr;"
    echo "      proxy_set_header Upgrade \$http_upgrade;"
    echo "      proxy_set_header Connection \$connection_upgrade;"
    echo "      proxy_read_timeout 10m;"
    echo "      proxy_send_timeout 10m;"
    echo "      proxy_buffering off;"
    echo "      proxy_bind 127.0.0.2;"
    echo "      proxy_next_upstream error timeout;"
    echo "    }"
    echo "  }"
    echo "}"
  } >"$d/nginx.conf.new"
}

start_nginx() { # ports...
  local d=$VAR/nginx
  write_nginx_conf "$@"
  if alive "$d/nginx.pid" && cmp -s "$d/nginx.conf.new" "$d/nginx.conf"; then
    rm -f "$d/nginx.conf.new"
    return 0
  fi
  mv "$d/nginx.conf.new" "$d/nginx.conf"
  nginx -t -p "$d" -c "$d/nginx.conf" >/dev/null 2>&1 || die "bad nginx config: $(nginx -t -p "$d" -c "$d/nginx.conf" 2>&1 | tail -1)"
  if alive "$d/nginx.pid"; then
    nginx -p "$d" -c "$d/nginx.conf" -s reload
  else
    nginx -p "$d" -c "$d/nginx.conf"
  fi
  wait_port "$NGINX_PORT" 10 nginx
  wait_port "$HTTP_PORT" 10 "nginx (web)"
  say "nginx       127.0.0.1:$NGINX_PORT -> nodes $*"
  say "nginx web   http://127.0.0.1:$HTTP_PORT/ -> node web listeners"
}

up() {
  local n=${1:-2}
  [[ $n =~ ^[1-9][0-9]*$ ]] || die "N must be a positive number, got '$n'"
  ensure_packages
  if [[ ! -x $BIN ]]; then
    say "building chat-server (release) ..."
    cargo build --release --bin chat-server
  fi
  mkdir -p "$VAR"
  start_mariadb
  start_redis
  local ports=() i
  for ((i = 0; i < n; i++)); do ports+=($((BASE_PORT + 2 * i))); done
  for p in "${ports[@]}"; do start_node "$p"; done
  start_nginx "${ports[@]}"
  say ""
  say "cluster is up. Connect a client through nginx:"
  say "  cargo run --release --bin chat -- 127.0.0.1:$NGINX_PORT"
  say "or open the web client: http://127.0.0.1:$HTTP_PORT/"
}

stop_pid() { # pidfile name
  alive "$1" || { rm -f "$1"; return 0; }
  local pid
  pid=$(cat "$1")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$1"
  say "stopped $2 (pid $pid)"
}

down() {
  [[ -d $VAR ]] || { say "nothing to stop"; return 0; }
  stop_pid "$VAR/nginx/nginx.pid" nginx
  for f in "$VAR"/node-*.pid; do [[ -e $f ]] && stop_pid "$f" "$(basename "$f" .pid)"; done
  stop_pid "$VAR/redis/redis.pid" Redis
  stop_pid "$VAR/mariadb/mariadb.pid" MariaDB
}

status() {
  local f
  show() { if alive "$1"; then say "up    $2 (pid $(cat "$1"))"; else say "down  $2"; fi; }
  show "$VAR/mariadb/mariadb.pid" "MariaDB 127.0.0.1:$MYSQL_PORT"
  show "$VAR/redis/redis.pid" "Redis   127.0.0.1:$REDIS_PORT"
  for f in "$VAR"/node-*.pid; do
    [[ -e $f ]] || continue
    local p=${f##*/node-}
    show "$f" "node    127.0.0.1:${p%.pid}"
  done
  show "$VAR/nginx/nginx.pid" "nginx   127.0.0.1:$NGINX_PORT"
}

case ${1:-} in
  up) up "${2:-2}" ;;
  down) down ;;
  status) status ;;
  *) say "usage: scripts/cluster.sh up [N] | down | status"; exit 2 ;;
esac

#!/usr/bin/env bash
# Runs a private MariaDB for the store conformance suite and CI, apart from any
# system server: its own datadir under ./var/mariadb-test, its own socket, and
# TCP on 127.0.0.1 only (port 3307 unless MARIADB_TEST_PORT says otherwise).
#
#   scripts/mariadb-test.sh start    # install the datadir if needed, start, create
#                                    # user chat/chat and database clusterchat,
#                                    # print the URL (does nothing if already running)
#   scripts/mariadb-test.sh stop     # stop the instance named in the pid file
#   scripts/mariadb-test.sh status   # exit 0 if running
#   scripts/mariadb-test.sh url      # print the URL
#
# Use it as: CLUSTERCHAT_MYSQL_URL=$(scripts/mariadb-test.sh start | tail -n1)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BASE=${MARIADB_TEST_DIR:-$ROOT/var/mariadb-test}
PORT=${MARIADB_TEST_PORT:-3307}
DATA=$BASE/data
RUN=$BASE/run
SOCK=$RUN/mariadb.sock
PID=$RUN/mariadb.pid
LOG=$BASE/mariadb.log
URL="mysql://chat:chat@127.0.0.1:$PORT/clusterchat"
ME=$(id -un)

say() { echo "mariadb-test: $*" >&2; }

find_bin() {
    local b
    for b in "$@"; do
        if command -v "$b" >/dev/null 2>&1; then command -v "$b"; return 0; fi
        if [ -x "/usr/sbin/$b" ]; then echo "/usr/sbin/$b"; return 0; fi
    done
    say "none of $* found; install MariaDB (apt-get install -y mariadb-server)"
    exit 1
}

root_sql() {
    "$CLIENT" --no-defaults --protocol=socket --socket="$SOCK" -uroot --batch -e "$1"
}

running() {
    [ -f "$PID" ] || return 1
    local pid
    pid=$(cat "$PID" 2>/dev/null || true)
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null
}

ping() {
    "$ADMIN" --no-defaults --protocol=socket --socket="$SOCK" -uroot --connect-timeout=2 ping >/dev/null 2>&1
}

start() {
    SERVER=$(find_bin mariadbd mysqld)
    INSTALL=$(find_bin mariadb-install-db mysql_install_db)
    if running && ping; then
        say "already running (pid $(cat "$PID")) on 127.0.0.1:$PORT"
        echo "$URL"
        return 0
    fi
    if running; then
        say "pid $(cat "$PID") is alive but not answering; stop it first"
        exit 1
    fi
    rm -f "$PID" "$SOCK"
    mkdir -p "$DATA" "$RUN"
    [ -f "$BASE/.gitignore" ] || echo "*" >"$BASE/.gitignore"
    if [ ! -d "$DATA/mysql" ]; then
        say "installing a new datadir in $DATA"
        "$INSTALL" --no-defaults --datadir="$DATA" --user="$ME" \
            --auth-root-authentication-method=normal --skip-test-db >"$BASE/install.log" 2>&1 || {
            cat "$BASE/install.log" >&2
            exit 1
        }
    fi
    say "starting on 127.0.0.1:$PORT (log: $LOG)"
    setsid "$SERVER" --no-defaults --user="$ME" --datadir="$DATA" \
        --socket="$SOCK" --pid-file="$PID" --port="$PORT" --bind-address=127.0.0.1 \
        --skip-name-resolve --log-error="$LOG" \
        --character-set-server=utf8mb4 --collation-server=utf8mb4_bin \
        --innodb-buffer-pool-size=64M --max-connections=500 \
        </dev/null >>"$LOG" 2>&1 &
    local i
    for i in $(seq 1 120); do
        if ping; then break; fi
        if [ "$i" = 120 ]; then
            say "did not come up in 60 s; see $LOG"
            tail -n 20 "$LOG" >&2 || true
            exit 1
        fi
        sleep 0.5
    done
    root_sql "
        DROP USER IF EXISTS ''@'localhost';
        DROP USER IF EXISTS ''@'$(hostname)';
        CREATE USER IF NOT EXISTS 'chat'@'127.0.0.1' IDENTIFIED BY 'chat';
        CREATE USER IF NOT EXISTS 'chat'@'localhost' IDENTIFIED BY 'chat';
        GRANT ALL PRIVILEGES ON *.* TO 'chat'@'127.0.0.1';
        GRANT ALL PRIVILEGES ON *.* TO 'chat'@'localhost';
        CREATE DATABASE IF NOT EXISTS clusterchat CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;
        FLUSH PRIVILEGES;"
    say "running (pid $(cat "$PID"))"
    echo "$URL"
}

stop() {
    if ! running; then
        say "not running"
        rm -f "$PID"
        return 0
    fi
    local pid i
    pid=$(cat "$PID")
    say "stopping pid $pid"
    kill -TERM "$pid"
    for i in $(seq 1 120); do
        kill -0 "$pid" 2>/dev/null || { say "stopped"; rm -f "$PID"; return 0; }
        sleep 0.5
    done
    say "pid $pid did not stop in 60 s"
    exit 1
}

CLIENT=$(find_bin mariadb mysql)
ADMIN=$(find_bin mariadb-admin mysqladmin)

case "${1:-start}" in
    start) start ;;
    stop) stop ;;
    status) if running && ping; then say "running (pid $(cat "$PID"))"; else say "not running"; exit 1; fi ;;
    url) echo "$URL" ;;
    *) echo "usage: $0 [start|stop|status|url]" >&2; exit 2 ;;
esac

#!/usr/bin/env bash
# Run a command with a Redis available, its URL in REGISTRY_GATEWAY_TEST_REDIS_URL.
#
#   scripts/with_redis.sh CMD [ARGS...]
#
# 1. REGISTRY_GATEWAY_TEST_REDIS_URL already set: used as given.
# 2. Else, if the default Redis (WITH_REDIS_DEFAULT_URL, redis://127.0.0.1:6379/0) answers
#    PING, it is used.
# 3. Else a throw-away redis-server (installed with apt-get when missing and running as root)
#    is started on a free port with its own temp dir and no persistence, and stopped when
#    CMD ends, however it ends.
# Exits with CMD's status; exits non-zero with a message when no Redis can be had.
set -euo pipefail

readonly URL_ENV=REGISTRY_GATEWAY_TEST_REDIS_URL
readonly DEFAULT_URL="${WITH_REDIS_DEFAULT_URL:-redis://127.0.0.1:6379/0}"
readonly HOST=127.0.0.1

say() { printf 'with_redis: %s\n' "$*" >&2; }
die() {
    say "ERROR: $*"
    exit 1
}

if [[ $# -eq 0 ]]; then
    die "usage: $0 CMD [ARGS...]"
fi

# PING HOST PORT: true when a Redis answers +PONG. redis-cli when present, else bash's
# /dev/tcp, so a machine without redis-tools can still find a running Redis.
ping_redis() {
    local host=$1 port=$2 reply=""
    if command -v redis-cli >/dev/null 2>&1; then
        reply=$(timeout 3 redis-cli -h "$host" -p "$port" ping 2>/dev/null) || return 1
        [[ $reply == PONG ]]
        return
    fi
    # The subshell owns fd 3, so it is closed however this ends; timeout bounds a silent peer.
    # shellcheck disable=SC2016 # $1 and $2 are the inner bash's arguments, not ours.
    reply=$(timeout 3 bash -c '
        exec 3<>"/dev/tcp/$1/$2" || exit 1
        printf "PING\r\n" >&3
        IFS= read -r line <&3 || exit 1
        printf "%s" "$line"
    ' ping_redis "$host" "$port" 2>/dev/null) || return 1
    [[ $reply == $'+PONG\r' || $reply == "+PONG" ]]
}

# redis://[user:pass@]host[:port][/db] -> "host port" (enough for the default URL check).
url_host_port() {
    local rest=${1#redis://}
    rest=${rest#*@}
    rest=${rest%%/*}
    local host=${rest%%:*} port=6379
    if [[ $rest == *:* ]]; then
        port=${rest##*:}
    fi
    printf '%s %s\n' "${host:-$HOST}" "$port"
}

if [[ -n ${!URL_ENV:-} ]]; then
    say "using $URL_ENV=${!URL_ENV}"
    exec "$@"
fi

read -r default_host default_port < <(url_host_port "$DEFAULT_URL")
if ping_redis "$default_host" "$default_port"; then
    say "using the Redis at $DEFAULT_URL"
    export "$URL_ENV=$DEFAULT_URL"
    exec "$@"
fi

# No Redis running: start one.
redis_server=$(command -v redis-server || true)
if [[ -z $redis_server ]]; then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
        say "redis-server not found; installing it with apt-get"
        export DEBIAN_FRONTEND=noninteractive
        # A fresh machine may have no package lists yet: update once, only if needed.
        if ! apt-get install -y -qq redis-server >/dev/null 2>&1; then
            apt-get update -qq >/dev/null 2>&1 || true
            apt-get install -y -qq redis-server >/dev/null ||
                die "apt-get install redis-server failed"
        fi
        redis_server=$(command -v redis-server || true)
    fi
    [[ -n $redis_server ]] || die "no Redis answers at $DEFAULT_URL and redis-server is not \
installed. Install it (Debian/Ubuntu: apt-get install -y redis-server), start a Redis, or set \
$URL_ENV=redis://HOST:PORT/DB."
fi

workdir=$(mktemp -d "${TMPDIR:-/tmp}/with-redis.XXXXXX")
server_pid=""

stop_server() {
    if [[ -n $server_pid ]] && kill -0 "$server_pid" 2>/dev/null; then
        kill -TERM "$server_pid" 2>/dev/null || true
        # Bounded: SIGTERM makes redis-server exit at once (nothing to save); KILL if it hangs.
        local i
        for ((i = 0; i < 50; i++)); do
            kill -0 "$server_pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$server_pid" 2>/dev/null || true
    fi
    if [[ -n $server_pid ]]; then
        wait "$server_pid" 2>/dev/null || true
    fi
    server_pid=""
}
# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
    stop_server
    rm -rf "$workdir"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# A random high port; if it is taken, redis-server exits at once and another is tried.
started_port=""
for ((attempt = 0; attempt < 10; attempt++)); do
    port=$((20000 + RANDOM % 30000))
    # Someone else's Redis there would answer our PINGs: skip the port.
    if ping_redis "$HOST" "$port"; then
        continue
    fi
    : >"$workdir/redis.log"
    # Its own stdin/stdout/stderr: the server must not hold the caller's pipes open.
    "$redis_server" --bind "$HOST" --port "$port" --save "" --appendonly no \
        --daemonize no --dir "$workdir" --logfile "$workdir/redis.log" \
        </dev/null >"$workdir/redis.out" 2>&1 &
    server_pid=$!
    # Waiting for an external process to come up: a short bounded poll (5 s at most).
    for ((i = 0; i < 100; i++)); do
        kill -0 "$server_pid" 2>/dev/null || break
        if ping_redis "$HOST" "$port" && kill -0 "$server_pid" 2>/dev/null; then
            started_port=$port
            break 2
        fi
        sleep 0.05
    done
    stop_server
done

if [[ -z $started_port ]]; then
    die "could not start redis-server ($redis_server) on a free port; its last log lines:
$(tail -n 20 "$workdir/redis.out" "$workdir/redis.log" 2>/dev/null)"
fi

export "$URL_ENV=redis://$HOST:$started_port/0"
say "started redis-server (pid $server_pid) at ${!URL_ENV}"

# Not exec: the EXIT trap must outlive CMD to stop the server.
status=0
"$@" || status=$?
exit "$status"

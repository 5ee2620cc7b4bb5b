#!/usr/bin/env bash
# The Jepsen-style run for CI (called from .ci/run, as root): installs what
# the runner needs (it refuses to start without them: see "What a run
# needs" in jepsen/README.md), removes leftovers of an interrupted run,
# then runs 5 real nodes for 60 s under every nemesis kind. Exits non-zero
# on any anomaly, on a cluster that does not converge, on a nemesis action
# that failed or a kind that injected no fault, or if the runner cannot
# set up or tear down.
set -euo pipefail
cd "$(dirname "$0")/.."

multiarch="$(uname -m)-linux-gnu"
if ! command -v ip >/dev/null 2>&1 \
  || ! command -v iptables >/dev/null 2>&1 \
  || ! command -v nft >/dev/null 2>&1 \
  || ! command -v mount >/dev/null 2>&1 \
  || [ ! -e "/usr/lib/$multiarch/faketime/libfaketimeMT.so.1" ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq iproute2 iptables nftables mount faketime >/dev/null
fi

cargo build --release -p sluice-cli --bin sluice -p sluice-jepsen
cargo run --release -p sluice-jepsen -- cleanup
cargo run --release -p sluice-jepsen -- \
  --nodes 5 --time-limit 60 --seed "${SLUICE_JEPSEN_SEED:-1}" --nemesis all
# Teardown left nothing: no namespace, no mount.
if ip netns list | grep -q '^sluice-jepsen-' || grep -q '^sluice-jepsen ' /proc/mounts; then
  echo "the Jepsen run left namespaces or mounts behind" >&2
  exit 1
fi

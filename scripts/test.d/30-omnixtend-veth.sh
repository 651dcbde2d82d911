#!/usr/bin/env bash
# OmniXtend over a real veth pair between two network namespaces: `oxio memory-node` in one,
# `oxio omnixtend probe --verify` (the pipelined requester over AF_PACKET) in the other; data is
# written and read back and compared. Also MTU 9000 with the spec lane order, the C-compatible
# requester mode, UDP across the namespaces, and a node restart under load (the requester
# reconnects).
# Needs root (CI runs as root); skips otherwise.
set -euo pipefail
cd "$(dirname "$0")/../.."

if [ "$(id -u)" != 0 ]; then
    echo "SKIP: needs root for network namespaces and raw sockets"
    exit 0
fi
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
cargo build --locked -q -p oxio --bin oxio
OXIO=$CARGO_TARGET_DIR/debug/oxio

NA=oxtest-req-$$
NB=oxtest-node-$$
NODE_PID=
LOG=$(mktemp -d)
cleanup() {
    [ -n "$NODE_PID" ] && kill "$NODE_PID" 2>/dev/null && wait "$NODE_PID" 2>/dev/null
    ip netns del "$NA" 2>/dev/null || true
    ip netns del "$NB" 2>/dev/null || true
    rm -rf "$LOG"
}
trap cleanup EXIT INT TERM

ip netns add "$NA"
ip netns add "$NB"
ip link add va netns "$NA" type veth peer name vb netns "$NB"
ip -n "$NA" addr add 10.77.0.1/24 dev va
ip -n "$NB" addr add 10.77.0.2/24 dev vb
ip -n "$NA" link set va up
ip -n "$NB" link set vb up
ip -n "$NA" link set lo up
ip -n "$NB" link set lo up
NODE_MAC=04:00:00:00:00:00

start_node() { # args: extra memory-node flags
    ip netns exec "$NB" "$OXIO" memory-node --netdev vb --mac $NODE_MAC --size 64M --stats-interval 0 "$@" \
        >>"$LOG/node.log" 2>&1 &
    NODE_PID=$!
    sleep 0.3
}
stop_node() {
    kill -TERM "$NODE_PID"
    wait "$NODE_PID"
    NODE_PID=
}
probe() { # args: extra probe flags
    ip netns exec "$NA" timeout 120 "$OXIO" omnixtend probe --netdev va --mac $NODE_MAC "$@"
}
fail() {
    echo "FAILED: $*"
    echo "--- node log"; tail -20 "$LOG/node.log"
    exit 1
}

echo "== AF_PACKET, MTU 1500, raw lanes: 16 MiB written and verified (1 KiB transfers)"
start_node
probe --size 16M --block 64K --depth 16 --verify || fail "verify at MTU 1500"
echo "== unaligned pieces and PutPartialData edges"
probe --size 3M --block 1000 --depth 64 --verify || fail "verify with odd pieces"
echo "== C-driver-compatible requester against the C-tolerant node"
stop_node
start_node --compat c
probe --size 4M --block 4K --depth 32 --c-compat --verify || fail "verify in C-compatible mode"
stop_node

echo "== MTU 9000, raw and spec lane orders (8 KiB transfers)"
ip -n "$NA" link set va mtu 9000
ip -n "$NB" link set vb mtu 9000
start_node
# Raw lanes: 8 KiB reads leave the node straight from its memory and 8 KiB writes leave the
# requester straight from the request's buffer (one iovec each, no copy into the frame).
probe --size 16M --block 64K --depth 16 --verify || fail "verify at MTU 9000 (raw lanes)"
probe --size 3M --block 9000 --depth 64 --verify || fail "verify at MTU 9000 with odd pieces"
stop_node
start_node --lane-order spec
probe --size 16M --block 64K --depth 16 --lane-order spec --verify || fail "verify at MTU 9000"
echo "== a misconfigured range is denied, not corrupted"
if probe --size 128M --base 0 --block 1M --depth 4 --lane-order spec --verify 2>"$LOG/deny.log"; then
    fail "reading beyond the node's 64 MiB succeeded"
fi
grep -q "denied" "$LOG/deny.log" || { cat "$LOG/deny.log"; fail "no denied error reported"; }
stop_node

echo "== UDP encapsulation across the namespaces"
ip netns exec "$NB" "$OXIO" memory-node --udp 10.77.0.2:7700 --mac $NODE_MAC --size 16M --stats-interval 0 \
    >>"$LOG/node.log" 2>&1 &
NODE_PID=$!
sleep 0.3
ip netns exec "$NA" timeout 120 "$OXIO" omnixtend probe --udp 10.77.0.2:7700 --mac $NODE_MAC --size 8M \
    --block 64K --depth 16 --verify || fail "verify over UDP"
stop_node

echo "== timed probe (smoke): latency percentiles and throughput are reported"
ip -n "$NA" link set va mtu 1500
ip -n "$NB" link set vb mtu 1500
start_node
probe --size 16M --block 4K --depth 32 --seconds 1 || fail "timed probe"
stop_node

echo "== the link goes down for half a second under load: nothing fails, the link replays"
start_node
probe --size 16M --block 4K --depth 32 --seconds 3 --mode write >"$LOG/flap.out" 2>&1 &
PROBE_PID=$!
sleep 1
ip -n "$NA" link set va down
sleep 0.5
ip -n "$NA" link set va up
wait "$PROBE_PID" || { cat "$LOG/flap.out"; fail "probe failed across a link flap"; }
stop_node

echo "== the node restarts (file-backed) under load: the requester reconnects and finishes"
start_node --file "$LOG/mem.img"
probe --size 16M --block 4K --depth 32 --seconds 4 --mode write >"$LOG/probe.out" 2>&1 &
PROBE_PID=$!
sleep 1.5
stop_node
start_node --file "$LOG/mem.img"
wait "$PROBE_PID" || { cat "$LOG/probe.out"; fail "probe failed across a node restart"; }
sed 's/\x1b\[[0-9;]*m//g' "$LOG/probe.out" | grep -Eq "reconnects=[1-9]" || { cat "$LOG/probe.out"; fail "no reconnection seen"; }
stop_node
echo "ok: omnixtend veth suite"

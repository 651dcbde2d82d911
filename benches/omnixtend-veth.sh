#!/usr/bin/env bash
# OmniXtend on a veth pair between two network namespaces (root): read and write throughput
# and latency percentiles of the pipelined requester (`oxio omnixtend probe`) against
# `oxio memory-node`, with 1 KiB transfers at MTU 1500 and 8 KiB transfers at MTU 9000,
# compared in the same run with
#   (a) the ceiling: a raw AF_PACKET blaster and echo (crates/omnixtend/examples/raw_ceiling.rs)
#       moving frames of the same sizes in the same pattern through the same batched socket
#       code, with no protocol work; and
#   (b) one request outstanding at a time (the seed oxmem-nbd's original design): --depth 1.
# Prints a Markdown table of MB/s and ratios. Usage: benches/omnixtend-veth.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "needs root"; exit 1; }
SECS=${1:-3}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
cargo build --release -q -p oxio --bin oxio
cargo build --release -q -p oxio-omnixtend --example raw_ceiling
OXIO=$CARGO_TARGET_DIR/release/oxio
RAW=$CARGO_TARGET_DIR/release/examples/raw_ceiling
NA=oxbench-req-$$
NB=oxbench-node-$$
BG=
cleanup() {
    [ -n "$BG" ] && kill "$BG" 2>/dev/null && wait "$BG" 2>/dev/null
    ip netns del "$NA" 2>/dev/null || true
    ip netns del "$NB" 2>/dev/null || true
}
trap cleanup EXIT INT TERM
ip netns add "$NA"
ip netns add "$NB"
ip link add va netns "$NA" type veth peer name vb netns "$NB"
ip -n "$NA" link set va up
ip -n "$NB" link set vb up
NODE_MAC=04:00:00:00:00:00
ip -n "$NB" link set vb address $NODE_MAC
# Foreground only: a background function call would leave its child running on `kill`.
A() { ip netns exec "$NA" "$@"; }
json() { python3 -c "import json,sys; d=json.loads(sys.stdin.readline()); print($1)"; }
field() { grep "\"phase\":\"$1\"" | json "$2"; }

echo "| MTU | transfer | direction | ceiling MB/s | oxio pipelined MB/s (depth) | % of ceiling | one-outstanding MB/s | ratio to one-outstanding | oxio p50/p99 µs | one-outstanding p50/p99 µs |"
echo "|---|---|---|---|---|---|---|---|---|---|"
for cfg in "1500 1024" "9000 8192"; do
    set -- $cfg
    MTU=$1 XFER=$2
    ip -n "$NA" link set va mtu "$MTU"
    ip -n "$NB" link set vb mtu "$MTU"
    PUT=$((14 + 8 + 16 + XFER + 8))   # one PutFullData per frame
    ACKDATA=$((14 + 8 + 8 + XFER + 8)) # one AccessAckData per frame
    ip netns exec "$NB" "$RAW" echo vb & BG=$!
    sleep 0.3
    # Writes: a PutFullData-sized frame out, a small ack frame back.
    CW=$(A "$RAW" blast va $NODE_MAC $PUT 70 1 64 "$SECS" 1 | json 'd["payload_mb_per_s"]')
    # Reads: a small frame of coalesced Gets out (16 per frame), 16 AccessAckData frames back.
    CR=$(A "$RAW" blast va $NODE_MAC 302 $ACKDATA 16 8 "$SECS" 0 | json 'd["payload_mb_per_s"]')
    kill "$BG"; wait "$BG" 2>/dev/null || true; BG=
    ip netns exec "$NB" "$OXIO" memory-node --netdev vb --size 256M --stats-interval 0 2>/dev/null & BG=$!
    sleep 0.3
    P=$(A "$OXIO" omnixtend probe --netdev va --mac $NODE_MAC --size 256M --block "$XFER" --depth 128 \
        --seconds "$SECS" --json 2>/dev/null)
    S=$(A "$OXIO" omnixtend probe --netdev va --mac $NODE_MAC --size 256M --block "$XFER" --depth 1 \
        --seconds "$SECS" --json 2>/dev/null)
    kill "$BG"; wait "$BG" 2>/dev/null || true; BG=
    for dir in write read; do
        C=$CW; [ $dir = read ] && C=$CR
        PM=$(echo "$P" | field $dir 'd["mb_per_s"]')
        SM=$(echo "$S" | field $dir 'd["mb_per_s"]')
        PL=$(echo "$P" | field $dir '"%.0f/%.0f" % (d["lat_us"]["p50"], d["lat_us"]["p99"])')
        SL=$(echo "$S" | field $dir '"%.0f/%.0f" % (d["lat_us"]["p50"], d["lat_us"]["p99"])')
        PCT=$(python3 -c "print('%.0f %%' % (100*$PM/$C))")
        RB=$(python3 -c "print('%.1fx' % ($PM/$SM))")
        echo "| $MTU | $XFER B | $dir | $C | $PM (128) | $PCT | $SM | $RB | $PL | $SL |"
    done
done

#!/usr/bin/env bash
# OmniXtend on a veth pair between two network namespaces (root): read and write throughput
# and latency percentiles of the pipelined requester (`oxio omnixtend probe`) against
# `oxio memory-node`, with 1 KiB transfers at MTU 1500 and 8 KiB transfers at MTU 9000,
# compared in the same run with
#   (a) the ceiling: a raw AF_PACKET blaster and echo (the better of DEPTH and 128 in flight) (crates/omnixtend/examples/raw_ceiling.rs)
#       moving frames of the same sizes in the same pattern through the same batched socket
#       code, with no protocol work; and
#   (b) one request outstanding at a time (the seed oxmem-nbd's original design): --depth 1.
# The probe keeps --depth requests in flight by issuing the next one from each completion
# callback on the requester's I/O thread (`--resubmit callback`, its default); the node and the
# probe log their link counters (frames, ACK_only, replays, timeouts) with RUST_LOG=info.
# The node runs with --prefault (memory allocated and faulted in at start, as a hardware node's
# DRAM is always there), so write runs do not pay first-touch page faults the ceiling never pays.
# Each measurement is repeated ROUNDS times, interleaved, and the median is reported (the
# machine is shared). Prints a Markdown table of MB/s and ratios; raw values go to stderr.
# DEPTH (default 256) is the number of requests in flight for oxio AND for the ceiling (write:
# DEPTH frames in flight; read: DEPTH/16 frames of 16 Gets), so both get the same window.
# A second table gives the CPU time each process spent per operation (per data frame for the
# ceiling): the node's and the echo's from /proc/PID/stat, the probe's and the blaster's from
# their rusage; on a shared machine these are steadier evidence than throughput.
# CASES (default "1500:1024 9000:8192", MTU:transfer pairs) and DIRS (default "write read")
# select what runs, e.g. `CASES=1500:1024 DIRS=read` for the 1 KiB read row alone (reads then
# find the node's pre-faulted, never-written memory). SPAN (default 256M) is how much of the
# node's 256 MiB the probe's random offsets cover; a smaller span is a diagnostic only (e.g.
# SPAN=4M keeps every page in the TLB and shows what the node's random memory reads cost).
# PATTERN (default random) is the probe's --pattern: `sequential` sends each request to the
# block after the previous one (wrapping at SPAN), so the node's memory reads stream instead of
# each missing the cache and the TLB; the table then says so.
# Usage: [DEPTH=256] [CASES=..] [DIRS=..] [SPAN=256M] [PATTERN=random] benches/omnixtend-veth.sh [SECONDS_PER_MEASUREMENT=2] [ROUNDS=3]
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/steal.sh
steal_start
[ "$(id -u)" = 0 ] || { echo "needs root"; exit 1; }
SECS=${1:-2}
ROUNDS=${2:-3}
DEPTH=${DEPTH:-256}
CASES=${CASES:-1500:1024 9000:8192}
DIRS=${DIRS:-write read}
SPAN=${SPAN:-256M}
PATTERN=${PATTERN:-random}
[ $((DEPTH % 16)) = 0 ] || { echo "DEPTH must be a multiple of 16"; exit 1; }
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
    rm -f "$CPUF"
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

best() { python3 -c "import sys; print(max(float(x) for x in sys.argv[1:]))" "$@"; }
median() { python3 -c "import statistics,sys; print('%.1f' % statistics.median(float(x) for x in sys.argv[1:]))" "$@"; }
start_bg() { ip netns exec "$NB" "$@" 2>/dev/null & BG=$!; sleep 0.3; }
# CPU ticks (utime + stime) of the background process.
bg_ticks() { awk '{print $14 + $15}' "/proc/$BG/stat"; }
TICK=$(getconf CLK_TCK)
CPUF=$(mktemp)
# Runs a command in the requester's namespace; prints its stdout; its CPU seconds go to $CPUF.
A_cpu() {
    ip netns exec "$NA" python3 -c '
import resource, subprocess, sys
p = subprocess.run(sys.argv[2:], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
r = resource.getrusage(resource.RUSAGE_CHILDREN)
open(sys.argv[1], "w").write("%f" % (r.ru_utime + r.ru_stime))
sys.stdout.write(p.stdout.decode())
sys.exit(p.returncode)
' "$CPUF" "$@"
}
# Microseconds per unit: per_us TICKS_OR_SECONDS(ticks|s) VALUE COUNT
per_us() { python3 -c "import sys; v=float('$2')/($TICK if '$1'=='ticks' else 1); print('%.2f' % (v*1e6/max(1,float('$3'))))"; }
declare -A CPU=()
stop_bg() { kill "$BG"; wait "$BG" 2>/dev/null || true; BG=; }

want() { [[ " $DIRS " == *" $1 "* ]]; }
# Ceiling, writes: a PutFullData-sized frame out, a small ack frame back, $1 in flight.
ceiling_write() {
    T0=$(bg_ticks)
    OUT=$(A_cpu "$RAW" blast va $NODE_MAC $PUT 70 1 "$1" "$SECS" 1)
    N=$(echo "$OUT" | json 'd["sent"]')
    V[cw$1]+=" $(echo "$OUT" | json 'd["payload_mb_per_s"]')"
    if [ "$1" = "$DEPTH" ]; then
        CPU[$MTU,echo,write]+=" $(per_us ticks $(($(bg_ticks) - T0)) "$N")"
        CPU[$MTU,blast,write]+=" $(per_us s "$(cat "$CPUF")" "$N")"
    fi
}
# Ceiling, reads: a small frame of coalesced Gets out (16 per frame), 16 AccessAckData frames
# back, $1 / 16 request frames in flight.
ceiling_read() {
    T0=$(bg_ticks)
    OUT=$(A_cpu "$RAW" blast va $NODE_MAC 302 $ACKDATA 16 $(($1 / 16)) "$SECS" 0)
    N=$(echo "$OUT" | json 'd["received"]')
    V[cr$1]+=" $(echo "$OUT" | json 'd["payload_mb_per_s"]')"
    if [ "$1" = "$DEPTH" ]; then
        CPU[$MTU,echo,read]+=" $(per_us ticks $(($(bg_ticks) - T0)) "$N")"
        CPU[$MTU,blast,read]+=" $(per_us s "$(cat "$CPUF")" "$N")"
    fi
}

echo "Median of $ROUNDS interleaved rounds of $SECS s per measurement; load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
[ "$SPAN" = 256M ] || echo "Diagnostic run: the probe's offsets cover only $SPAN of the node's 256 MiB"
[ "$PATTERN" = random ] || echo "Offsets: $PATTERN (each request at the block after the previous one)"
echo
echo "| MTU | transfer | direction | ceiling MB/s | oxio pipelined MB/s (depth $DEPTH) | % of ceiling | one-outstanding MB/s | pipelined / one-outstanding | oxio p50/p99 µs | one-outstanding p50/p99 µs |"
echo "|---|---|---|---|---|---|---|---|---|---|"
for cfg in $CASES; do
    set -- ${cfg/:/ }
    MTU=$1 XFER=$2
    ip -n "$NA" link set va mtu "$MTU"
    ip -n "$NB" link set vb mtu "$MTU"
    PUT=$((14 + 8 + 16 + XFER + 8))   # one PutFullData per frame
    ACKDATA=$((14 + 8 + 8 + XFER + 8)) # one AccessAckData per frame
    declare -A V=()
    for r in $(seq "$ROUNDS"); do
        start_bg "$RAW" echo vb
        # The ceiling is measured at DEPTH and at 128 in flight; the better median counts, so a
        # window that suits the blaster less never lowers the bar.
        for cd in $(printf '%s\n' "$DEPTH" 128 | sort -un); do
            want write && ceiling_write "$cd"
            want read && ceiling_read "$cd"
        done
        stop_bg
        start_bg "$OXIO" memory-node --netdev vb --size 256M --prefault --stats-interval 0
        for depth in "$DEPTH" 1; do
            # One probe per direction (writes first, so reads find data), each timed for CPU.
            for dir in $DIRS; do
                T0=$(bg_ticks)
                OUT=$(A_cpu "$OXIO" omnixtend probe --netdev va --mac $NODE_MAC --size "$SPAN" \
                    --pattern "$PATTERN" --block "$XFER" --depth $depth --seconds "$SECS" --mode $dir --json)
                V[$dir$depth]+=" $(echo "$OUT" | field $dir 'd["mb_per_s"]')"
                V[${dir}lat$depth]+=" $(echo "$OUT" | field $dir '"%.0f/%.0f" % (d["lat_us"]["p50"], d["lat_us"]["p99"])')"
                if [ "$depth" = "$DEPTH" ]; then
                    N=$(echo "$OUT" | field $dir 'd["ops"]')
                    CPU[$MTU,node,$dir]+=" $(per_us ticks $(($(bg_ticks) - T0)) "$N")"
                    CPU[$MTU,req,$dir]+=" $(per_us s "$(cat "$CPUF")" "$N")"
                fi
            done
        done
        stop_bg
    done
    for dir in $DIRS; do
        k=cw; [ $dir = read ] && k=cr
        C=$(best "$(median ${V[$k$DEPTH]})" "$(median ${V[${k}128]})")
        PM=$(median ${V[${dir}$DEPTH]})
        SM=$(median ${V[${dir}1]})
        PL=$(echo ${V[${dir}lat$DEPTH]} | tr ' ' '\n' | sort -t/ -n -k1 | sed -n "$(( (ROUNDS + 1) / 2 ))p")
        SL=$(echo ${V[${dir}lat1]} | tr ' ' '\n' | sort -t/ -n -k1 | sed -n "$(( (ROUNDS + 1) / 2 ))p")
        PCT=$(python3 -c "print('%.0f %%' % (100*$PM/$C))")
        RB=$(python3 -c "print('%.1fx' % ($PM/$SM))")
        echo "| $MTU | $XFER B | $dir | $C | $PM | $PCT | $SM | $RB | $PL | $SL |"
    done
    echo "raw values MTU $MTU: ceiling write (depth $DEPTH)${V[cw$DEPTH]:-}, (128)${V[cw128]:-}; ceiling read (depth $DEPTH)${V[cr$DEPTH]:-}, (128)${V[cr128]:-}; write$DEPTH${V[write$DEPTH]:-}; read$DEPTH${V[read$DEPTH]:-}; write1${V[write1]:-}; read1${V[read1]:-}" >&2
    unset V
done
echo
echo "CPU time per operation (µs; per data frame for the ceiling), medians, depth $DEPTH:"
echo
echo "| MTU | direction | echo | blaster | memory node | requester (probe) |"
echo "|---|---|---|---|---|---|"
for cfg in $CASES; do
    MTU=${cfg%%:*}
    for dir in $DIRS; do
        echo "| $MTU | $dir | $(median ${CPU[$MTU,echo,$dir]}) | $(median ${CPU[$MTU,blast,$dir]}) | $(median ${CPU[$MTU,node,$dir]}) | $(median ${CPU[$MTU,req,$dir]}) |"
    done
done
for k in "${!CPU[@]}"; do echo "cpu $k:${CPU[$k]}" >&2; done
echo
steal_report

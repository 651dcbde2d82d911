#!/usr/bin/env bash
# NBD server benchmark: fio's nbd engine (libnbd, one connection per job) against
#   oxio serve   -b memory:1G                          (sparse RAM)
#   qemu-nbd     raw image on /dev/shm, --aio=io_uring  (RAM-backed file, its fastest setup)
#   nbdkit       memory 1G                             (sparse RAM, default allocator)
#   nbdkit       null 1G     (stores nothing, reads zeros: not a disk. With one job, where fio
#                             is the bottleneck, it shows what fio reaches when the server does
#                             no storage work; with two, nbdkit's own cost per request shows)
# all on a Unix socket, in one run, same workloads in the same order:
#   1 MiB sequential write and read at QD8, then 4 KiB random write and read at QD32,
# over a 256 MiB region (prefilled before the read and random-write runs). Prints medians of
# IOPS, MiB/s, oxio's ratio to each peer and to the null server, and the server's and fio's
# CPU time per request.
#
# Usage: [OXIO_BIN=path] [ONLY=randwrite-4k] [JOBS="1 2"] benches/nbd-fio.sh [SECONDS per run,
#        default 6] [ROUNDS, default 3]
# ONLY runs the workloads whose name contains it. JOBS lists fio numjobs values, one table each
# (default "1 2"): that many clients, each its own connection at the given queue depth (every
# server here allows several connections). With one job the client can be the bottleneck (on
# 2 CPUs fio needs one full CPU at 4 KiB, and nbdkit's null plugin, which stores nothing, is no
# faster than a real server); with two jobs the servers' own speed shows. The last line reports how much CPU time the
# hypervisor stole during the run (benches/steal.sh): rounds are only comparable when it is low.
# Needs: fio, nbdkit, qemu-nbd (scripts/setup.d/40-nbd.sh). Client and server share the
# machine's CPUs, so figures are only comparable within one run.
set -euo pipefail
cd "$(dirname "$0")/.."
runtime=${1:-6}
jobs_list=${JOBS:-1 2}
rounds=${2:-3}
. benches/steal.sh
# The machine is shared: as root, raise this script's priority (inherited by every server and
# fio) so other work on the box disturbs the comparison less. All three servers get the same.
if [ "$(id -u)" = 0 ]; then
    renice -n -15 $$ >/dev/null
fi

# OXIO_BIN=path skips the build (to benchmark a given binary).
if [ -z "${OXIO_BIN:-}" ]; then
    cargo build --quiet --release -p oxio --bin oxio
fi
OXIO=${OXIO_BIN:-${CARGO_TARGET_DIR:-$PWD/target}/release/oxio}

work=$(mktemp -d /tmp/oxio-nbd-bench.XXXXXX)
shm=$(mktemp -d /dev/shm/oxio-nbd-bench.XXXXXX)
pid=""
cleanup() {
    [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    rm -rf "$work" "$shm"
}
trap cleanup EXIT

wait_socket() {
    for _ in $(seq 100); do [ -S "$1" ] && return 0; sleep 0.1; done
    echo "server did not create $1" >&2
    return 1
}

start() { # start NAME: launches the server, sets $pid and $uri
    local sock=$work/$1.sock
    rm -f "$sock" # a previous server's socket file must not look ready
    case $1 in
    oxio)
        "$OXIO" serve --unix "$sock" -b memory:1G >"$work/oxio.log" 2>&1 &
        uri="nbd+unix:///oxio?socket=$sock" ;;
    qemu-nbd)
        truncate -s 1G "$shm/qemu.img"
        qemu-nbd -f raw --aio=io_uring --cache=writeback -e 8 -t --socket="$sock" "$shm/qemu.img" >"$work/qemu.log" 2>&1 &
        uri="nbd+unix:///?socket=$sock" ;;
    nbdkit)
        nbdkit -f -U "$sock" memory 1G >"$work/nbdkit.log" 2>&1 &
        uri="nbd+unix:///?socket=$sock" ;;
    nbdkit-null)
        nbdkit -f -U "$sock" null 1G >"$work/nbdkit-null.log" 2>&1 &
        uri="nbd+unix:///?socket=$sock" ;;
    esac
    pid=$!
    wait_socket "$sock"
}

stop() {
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    pid=""
    rm -f "$shm/qemu.img"
}

workloads=(
    "seqwrite-1M write 1M 8"
    "seqread-1M read 1M 8"
    "randwrite-4k randwrite 4k 32"
    "randread-4k randread 4k 32"
)
if [ -n "${ONLY:-}" ]; then
    for i in "${!workloads[@]}"; do
        [[ ${workloads[$i]} == *"$ONLY"* ]] || unset 'workloads[i]'
    done
    workloads=("${workloads[@]}")
fi

cpu_ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }

run_fio() { # run_fio SERVER NAME RW BS QD: prints IOPS, MiB/s, server and client CPU µs per request
    local out=$work/$1-$2.json
    local t0; t0=$(cpu_ticks)
    fio --name="$2" --ioengine=nbd --uri="$uri" --rw="$3" --bs="$4" --iodepth="$5" \
        --numjobs="$jobs" --size=256M --time_based --runtime="$runtime" --ramp_time=1 --group_reporting \
        --output-format=json --output="$out" >/dev/null
    local t1; t1=$(cpu_ticks)
    python3 - "$out" "$3" "$((t1 - t0))" "$(getconf CLK_TCK)" "$jobs" <<'EOF'
import json, sys
job = json.load(open(sys.argv[1]))["jobs"][0]
side = job["write" if "write" in sys.argv[2] else "read"]
# CPU covers the 1 s ramp too; count its requests at the measured rate. With group reporting
# job_runtime is the sum over the jobs, and usr_cpu/sys_cpu their average.
per_job_ms = job["job_runtime"] / int(sys.argv[5])
total = side["total_ios"] * (1 + 1000 / max(per_job_ms, 1))
cpu_us = int(sys.argv[3]) / int(sys.argv[4]) * 1e6
# fio's own CPU (user + system, percent of its run time): what the client pays per request.
client_us = (job["usr_cpu"] + job["sys_cpu"]) / 100 * job["job_runtime"] * 1000 / max(side["total_ios"], 1)
print(f'{side["iops"]:.0f} {side["bw_bytes"] / 2**20:.1f} {cpu_us / max(total, 1):.2f} {client_us:.2f}')
EOF
}

median() { tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }

# Rounds: in each, every workload runs on every server (a fresh server per run, prefilled for
# the read and random-write workloads), in a rotating server order so that whatever else the
# machine does at a given moment does not always hit the same server. The table reports the
# median of the rounds.
#
# bench_jobs: every round of every workload on every server with $jobs fio jobs, then its table.
bench_jobs() {
    declare -A iops mibs cpu ccpu
    servers=(oxio qemu-nbd nbdkit nbdkit-null)
    local n=${#servers[@]}
    for round in $(seq "$rounds"); do
        order=("${servers[@]:$(( (round - 1) % n ))}" "${servers[@]:0:$(( (round - 1) % n ))}")
        for w in "${workloads[@]}"; do
            read -r name rw bs qd <<<"$w"
            for s in "${order[@]}"; do
                start "$s"
                if [ "$rw" != write ]; then
                    fio --name=prefill --ioengine=nbd --uri="$uri" --rw=write --bs=1M --iodepth=8 \
                        --size=256M --output-format=json --output="$work/prefill.json" >/dev/null
                fi
                read -r i m c cc < <(run_fio "$s" "$name" "$rw" "$bs" "$qd")
                iops[$s,$name]+="$i "
                mibs[$s,$name]+="$m "
                cpu[$s,$name]+="$c "
                ccpu[$s,$name]+="$cc "
                echo "jobs $jobs round $round $s $name: $i IOPS, $m MiB/s, server CPU $c us/request, client (fio) CPU $cc us/request" >&2
                stop
            done
        done
    done

    echo
    echo "fio ioengine=nbd, numjobs=$jobs (one connection each), ${runtime} s per run, median of $rounds rounds, Unix socket, RAM-backed, $(nproc) CPUs shared by client and server"
    echo
    echo "| workload | oxio IOPS (MiB/s) | qemu-nbd IOPS (MiB/s) | nbdkit memory IOPS (MiB/s) | oxio / qemu-nbd | oxio / nbdkit | nbdkit null (stores nothing) IOPS (oxio / null) | server CPU µs/request: oxio / qemu-nbd / nbdkit / null | client (fio) CPU µs/request: oxio / qemu-nbd / nbdkit / null |"
    echo "|---|---|---|---|---|---|---|---|---|"
    for w in "${workloads[@]}"; do
        read -r name _ <<<"$w"
        args=("$name")
        for s in "${servers[@]}"; do
            args+=("$(median <<<"${iops[$s,$name]}")" "$(median <<<"${mibs[$s,$name]}")")
        done
        for s in "${servers[@]}"; do
            args+=("$(median <<<"${cpu[$s,$name]}")")
        done
        for s in "${servers[@]}"; do
            args+=("$(median <<<"${ccpu[$s,$name]}")")
        done
        python3 - "${args[@]}" <<'EOF'
import sys
n, oi, om, qi, qm, ki, km, ni, nm, oc, qc, kc, nc, ocl, qcl, kcl, ncl = sys.argv[1], *map(float, sys.argv[2:])
print(f"| {n} | {oi:.0f} ({om:.0f}) | {qi:.0f} ({qm:.0f}) | {ki:.0f} ({km:.0f}) | {oi / qi:.2f}x | {oi / ki:.2f}x | {ni:.0f} ({oi / ni:.2f}x) | {oc:.1f} / {qc:.1f} / {kc:.1f} / {nc:.1f} | {ocl:.1f} / {qcl:.1f} / {kcl:.1f} / {ncl:.1f} |")
EOF
    done
}

steal_start
for jobs in $jobs_list; do
    bench_jobs
done
echo
steal_report

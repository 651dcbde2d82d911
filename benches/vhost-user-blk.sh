#!/usr/bin/env bash
# virtio-blk over vhost-user: fio in a QEMU TCG guest (libaio, O_DIRECT, 1 vCPU, 1 queue)
# against `oxio vhost-user blk` and against qemu-storage-daemon's vhost-user-blk export, on
# the same 256 MiB file in /dev/shm, in one run, same workloads in the same order:
#   1 MiB sequential write and read at QD8, 4 KiB random write and read at QD32.
# The file is written in full first; ROUNDS rounds alternate which daemon goes first. Prints
# a markdown table of medians with oxio's IOPS ratio to the peer (and the ratio per round).
# Then the same workloads side by side: one guest with both daemons' disks, fio on both at
# once (two jobs sharing the guest's vCPU), which cancels the host-load drift that swings the
# sequential rounds (see tests/vhost_user_blk_side_by_side.rs). Last, the 4 KiB workloads
# side by side against qemu-storage-daemon serving a null-co disk (no I/O at all): the
# guest's own ceiling, to tell "the daemon is slow" from "the guest cannot go faster"
# (OXIO_BENCH_CEILING=0 skips it; it runs only when comparing with qemu-storage-daemon).
#
# Usage: [OXIO_BENCH_ONLY=rand-write] benches/vhost-user-blk.sh [SECONDS per workload, default 5]
#        [ROUNDS, default 2]
# Needs the guest setup (scripts/setup.d/20-guest.sh) and fio on the host (copied into the
# guest with its libraries). Under TCG the guest's CPU is the bottleneck, so this shows
# whether the daemon holds the guest back, not the daemon's own ceiling (see the device-side
# bench of oxio-virtio for that).
set -euo pipefail
cd "$(dirname "$0")/.."
export OXIO_BENCH_SECONDS=${1:-5}
export OXIO_BENCH_ROUNDS=${2:-2}
. benches/steal.sh
steal_start
cargo test --release --locked -p oxio-guest-harness --test vhost_user_blk_bench \
    --test vhost_user_blk_side_by_side -- \
    --ignored --nocapture --test-threads=1
if [ "${OXIO_BENCH_CEILING:-1}" != 0 ] && [ -z "${OXIO_BENCH_PEER:-}" ]; then
    OXIO_BENCH_PEER=qsd-null OXIO_BENCH_ONLY=${OXIO_BENCH_ONLY:-rand} \
        cargo test --release --locked -p oxio-guest-harness --test vhost_user_blk_side_by_side -- \
        --ignored --nocapture --test-threads=1
fi
echo
steal_report

#!/usr/bin/env bash
# Instructions per chain (pop + walk + add_used, batches of 256 one-descriptor chains,
# publish once per batch) for oxio and rust-vmm virtio-queue, counted by callgrind: exact
# and unaffected by other load on the machine. Prints both and the ratio.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || apt-get install -y -qq valgrind >/dev/null
cargo build -q --release -p oxio-virtio --features test-utils --example qcount
bin=${CARGO_TARGET_DIR:-target}/release/examples/qcount
count() { valgrind --tool=callgrind --callgrind-out-file=/dev/null "$bin" "$1" "$2" 2>&1 | sed -n 's/.*Collected : //p'; }
per_chain() { echo $(( ($(count "$1" 110) - $(count "$1" 10)) / (100 * 256) )); }
ours=$(per_chain oxio)
theirs=$(per_chain vq)
echo "instructions per chain: oxio $ours, virtio-queue $theirs, ratio $(awk "BEGIN{printf \"%.2f\", $theirs/$ours}")"

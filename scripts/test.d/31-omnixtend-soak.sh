#!/usr/bin/env bash
# The full OmniXtend fault-injection soak: 1 GiB of random writes and read-backs between the
# requester and the memory node with 1 % loss, duplication and reordering and 0.1 % FCS drops
# on both directions (deterministic, virtual time; see crates/omnixtend/tests/soak.rs). The
# normal test run uses 8 MiB; this runs the full size in release mode, with raw lanes at MTU 1500
# (1 KiB transfers) and at MTU 9000 (8 KiB transfers, read data sent straight from memory).
set -euo pipefail
cd "$(dirname "$0")/../.."
OXIO_SOAK_BYTES=${OXIO_SOAK_BYTES:-1073741824} cargo test --locked --release -q -p oxio-omnixtend \
    --test soak soak_raw_lanes -- --nocapture 2>&1 | grep -E "soak seed|test result|panicked|FAILED"

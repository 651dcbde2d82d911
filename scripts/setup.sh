#!/usr/bin/env bash
# Installs everything oxio's tests and benchmarks need on a fresh Debian machine.
# Each area of the project adds its own step as scripts/setup.d/NN-name.sh; they run in order.
# Idempotent: a step checks before it installs.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
for step in scripts/setup.d/*.sh; do
    [ -e "$step" ] || continue
    echo "== setup: $step"
    bash "$step"
done

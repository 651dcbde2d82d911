#!/usr/bin/env bash
# Runs every oxio test on a fresh machine: installs what the tests need, then runs the
# workspace's lints and unit/integration tests and each area's real-peer test suite
# (scripts/test.d/NN-name.sh). Needs root for namespaces, taps, loop devices and QEMU guests.
#
# Usage: scripts/test.sh [--no-setup]
set -euo pipefail
cd "$(dirname "$0")/.."
[ "${1:-}" = "--no-setup" ] || bash scripts/setup.sh

failed=()
run() {
    local name=$1; shift
    echo
    echo "== test: $name"
    local start=$SECONDS
    if "$@"; then
        echo "== ok: $name ($((SECONDS - start)) s)"
    else
        echo "== FAILED: $name ($((SECONDS - start)) s)"
        failed+=("$name")
    fi
}

run fmt cargo fmt --all -- --check
run clippy cargo clippy --workspace --all-targets --all-features --locked -- -D warnings
run cargo-test cargo nextest run --workspace --all-features --locked --no-fail-fast
run doc-test cargo test --workspace --all-features --locked --doc
for suite in scripts/test.d/*.sh; do
    [ -e "$suite" ] || continue
    run "$(basename "$suite" .sh)" bash "$suite"
done

echo
if [ ${#failed[@]} -eq 0 ]; then
    echo "all test suites passed"
else
    echo "failed suites: ${failed[*]}"
    exit 1
fi

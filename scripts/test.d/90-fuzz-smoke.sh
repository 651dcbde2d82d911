#!/usr/bin/env bash
# Fuzz smoke test: builds every cargo-fuzz target in fuzz/Cargo.toml and runs each briefly from
# its seed corpus (written by the crates' own tests, which scripts/test.sh ran before this),
# so a target that stops building or crashes on its seeds fails CI. Long campaigns are run by
# hand (fuzz/README.md); their counts are recorded in docs/performance.md.
#
# FUZZ_RUNS (default 20000) sets the executions per target.
set -euo pipefail
cd "$(dirname "$0")/../../fuzz"
export RUSTC_BOOTSTRAP=1
# Fuzz builds (sanitizer flags, their own workspace) always go to fuzz/target, whatever the
# caller set for the main workspace.
export CARGO_TARGET_DIR=$PWD/target
runs=${FUZZ_RUNS:-20000}
targets=$(sed -n '/^\[\[bin\]\]/,/^name/ s/^name = "\(.*\)"/\1/p' Cargo.toml)
# Targets run without a sanitizer here: the engines' unsafe code touches mmap'd guest memory,
# which AddressSanitizer does not track; Rust's own checks stay on.
for t in $targets; do
    cargo fuzz build -O -s none "$t" 2>&1 | tail -1
done
bin=target/x86_64-unknown-linux-gnu/release
failed=0
for t in $targets; do
    mkdir -p "corpus/$t"
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    cp -r "corpus/$t/." "$work/" 2>/dev/null || true
    if "$bin/$t" "$work" -runs="$runs" -max_len=1024 -artifact_prefix="$work/" >"$work.log" 2>&1; then
        echo "ok: $t ($(grep -c . "$work.log") log lines, $runs runs)"
    else
        echo "FAILED: $t"; tail -30 "$work.log"; failed=1
    fi
    rm -rf "$work" "$work.log"
done
exit $failed

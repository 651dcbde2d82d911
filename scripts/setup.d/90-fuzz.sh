#!/usr/bin/env bash
# cargo-fuzz, for the fuzz smoke suite (the toolchain is stable: targets build with
# RUSTC_BOOTSTRAP=1).
set -euo pipefail
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz

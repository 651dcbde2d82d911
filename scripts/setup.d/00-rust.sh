#!/usr/bin/env bash
# Rust tools: rustfmt, clippy and cargo-nextest. The machine's toolchain is the only one.
set -euo pipefail
rustup component add rustfmt clippy >/dev/null 2>&1 || true
command -v cargo-nextest >/dev/null || cargo install --locked cargo-nextest

#!/usr/bin/env bash
# Bounded fuzz run of every target (CI step; README "Fuzzing" has the longer run).
#
# Works on stable Rust: cargo-fuzz with `--sanitizer none` passes only stable rustc flags
# (SanitizerCoverage through -Cpasses/-Cllvm-args), and libFuzzer itself is built by
# libfuzzer-sys from crates.io with the system C++ compiler. Debug assertions and overflow
# checks stay on, so an arithmetic overflow is a crash, not a wrapped number.
#
# A smoke run: unoptimised (`--dev`, ~40 % less build CPU than release, ~4x fewer execs/s) and
# in the workspace's target dir, so the build scripts and proc-macros the lint and test steps
# already built are reused. FUZZ_SECONDS (default 10) bounds each target's run; FUZZ_TARGETS
# overrides the list; FUZZ_PROFILE=--release builds optimised.
# A crash fails the script and leaves the input in fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")"
seconds="${FUZZ_SECONDS:-10}"
profile="${FUZZ_PROFILE:---dev}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/../target}"
targets="${FUZZ_TARGETS:-event_decode chunk_decode request_convert rating}"
cargo_fuzz_version="0.13.2"

if ! cargo fuzz --version 2>/dev/null | grep -q "$cargo_fuzz_version"; then
    echo "== installing cargo-fuzz $cargo_fuzz_version"
    cargo install cargo-fuzz --locked --version "$cargo_fuzz_version"
fi
echo "== building fuzz targets (stable, sanitizer none, $profile, debug assertions on)"
cargo fuzz build --sanitizer none "$profile" --debug-assertions
for target in $targets; do
    echo "== fuzzing $target for ${seconds}s"
    mkdir -p "corpus/$target"
    cargo fuzz run --sanitizer none "$profile" --debug-assertions "$target" "corpus/$target" -- \
        -max_total_time="$seconds" -max_len=4096 -rss_limit_mb=2048 -timeout=10 -print_final_stats=1
done
echo "fuzz: ${seconds}s per target, no crash"

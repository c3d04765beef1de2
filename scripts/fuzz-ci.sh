#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ a fixed number of times, starting from its seeds
# (fuzz/seeds/<target>/): CI's bounded fuzzing. A crash fails the script, its input left in
# fuzz/artifacts/<target>/. Installs cargo-fuzz when it is missing.
#
#   scripts/fuzz-ci.sh            # 20000 runs a target
#   FUZZ_RUNS=200000 scripts/fuzz-ci.sh
set -euo pipefail

runs="${FUZZ_RUNS:-20000}"
cd "$(dirname "$0")/../fuzz"

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi
# cargo-fuzz passes nightly-only flags (-Zsanitizer); this lets a stable toolchain take them.
export RUSTC_BOOTSTRAP=1

cargo fuzz build
for target in $(cargo fuzz list); do
    corpus="$(mktemp -d)"
    trap 'rm -rf "$corpus"' EXIT
    echo "== $target: $runs runs"
    # The seeds are read, new inputs go to a scratch corpus; max_total_time is a backstop.
    cargo fuzz run "$target" "$corpus" "seeds/$target" -- \
        -runs="$runs" -max_total_time=600 -print_final_stats=1
    rm -rf "$corpus"
    trap - EXIT
done

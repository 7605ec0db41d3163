#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 30).
# Usage: bash fuzz/run-all.sh [SECONDS]
# Uses the nightly toolchain when there is one, else RUSTC_BOOTSTRAP=1 on
# the default toolchain. A crash stops the script with a non-zero status;
# the reproducer is in fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
SECONDS_EACH="${1:-30}"

if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    FUZZ=(cargo +nightly fuzz)
else
    export RUSTC_BOOTSTRAP=1
    FUZZ=(cargo fuzz)
fi

# The codec targets run under AddressSanitizer (zstd is C) with a malloc
# cap; the engine targets spawn threads per run, which ASan makes ~20x
# slower, and are safe Rust, so they run without a sanitizer.
run() {
    local target=$1 sanitizer=$2
    shift 2
    echo "fuzz: $target for ${SECONDS_EACH}s (sanitizer: $sanitizer)"
    "${FUZZ[@]}" run -s "$sanitizer" --target-dir "target/$sanitizer" "$target" -- \
        -max_total_time="$SECONDS_EACH" -rss_limit_mb=2048 "$@"
}

run record_decode address -malloc_limit_mb=1024
run codec address -malloc_limit_mb=1024
run import_lines none
run ops_model none -max_len=4096
run wal_decode none
echo "fuzz: every target ran ${SECONDS_EACH}s without a finding"

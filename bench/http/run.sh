#!/bin/sh
# Runs the HTTP benchmarks against a build directory and prints their ratios, then one
# "summary:" line with all of them (bench/run-all.sh shows that line).
# usage: sh bench/http/run.sh [BUILD_DIR]
set -u
build=${1:-build}
b="$build/bench/http"
d="$build/src/daemon/larderd"
out=$(mktemp)
trap 'rm -f "$out"' EXIT INT TERM
status=0
for prog in bench_startup bench_cold_ocr bench_warm bench_listing; do
    if ! "$b/$prog" "$d" | tee -a "$out"; then
        echo "$prog failed" >&2
        status=1
    fi
done
ratio() { grep "^ratio $1" "$out" | head -1 | sed -e 's/^ratio [^:]*: *//' -e 's/ .*//'; }
echo "summary: start-up $(ratio startup_ms/target)x of 50 ms, $(ratio startup_rss/target)x of 10 MiB;" \
    "cold OCR $(ratio cold_ocr)x standalone (<= 1.10);" \
    "warm $(ratio warm_rps)x nginx (>= 0.5);" \
    "listing $(ratio listing_time)x nginx (<= 10), RSS $(ratio listing_rss)x after 100 (<= 1.1)"
exit $status

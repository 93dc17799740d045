#!/bin/sh
# Runs every benchmark in bench/ against a build directory and prints one summary table.
#
#   sh bench/run-all.sh [BUILD_DIR]        (make bench runs it with BUILD_DIR = build)
#
# Each bench/NAME/ directory is one benchmark. If bench/NAME/run.sh exists it is run as
# `sh bench/NAME/run.sh BUILD_DIR`; otherwise every executable built in BUILD_DIR/bench/NAME/
# is run without arguments. A benchmark with nothing built is skipped with a message.
# Full output goes to bench/out/NAME.log (and on to the terminal). In the table, each
# program is summed up by the last line of its output that starts with "summary:", or
# else by its last non-empty line.
#
# Environment: BENCH_TIMEOUT (seconds per program, default 900), BENCH_ONLY (space-separated
# names to run, default all).
set -u

build=${1:-build}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root" || exit 1
case $build in /*) ;; *) build="$root/$build" ;; esac
out="$root/bench/out"
mkdir -p "$out"
limit=${BENCH_TIMEOUT:-900}
table=$(mktemp)
trap 'rm -f "$table"' EXIT INT TERM
failed=0

now() { date +%s.%N; }

# row NAME PROGRAM STATUS SECONDS SUMMARY
row() { printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5" >>"$table"; }

# The line that sums up a log: its last "summary:" line, else its last non-empty line.
summary_of() {
    s=$(grep '^summary:' "$1" | tail -n 1 | sed 's/^summary: *//')
    [ -n "$s" ] || s=$(grep -v '^[[:space:]]*$' "$1" | tail -n 1)
    printf '%s' "$s" | tr '\t' ' ' | cut -c 1-110
}

# run NAME LABEL LOG COMMAND...
run() {
    name=$1 label=$2 log=$3
    shift 3
    echo "==> $name: $*"
    t0=$(now)
    if command -v timeout >/dev/null 2>&1; then
        timeout "$limit" "$@" >"$log" 2>&1
    else
        "$@" >"$log" 2>&1
    fi
    rc=$?
    t1=$(now)
    cat "$log"
    secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
    if [ "$rc" -eq 0 ]; then status=ok
    elif [ "$rc" -eq 124 ]; then status=timeout; failed=1
    else status="failed($rc)"; failed=1
    fi
    row "$name" "$label" "$status" "$secs" "$(summary_of "$log")"
}

# Executables directly under a build directory of one benchmark.
programs() {
    for f in "$1"/*; do
        [ -f "$f" ] && [ -x "$f" ] && printf '%s\n' "$f"
    done
}

bench_one() {
    name=$1
    if [ -f "bench/$name/run.sh" ]; then
        run "$name" run.sh "$out/$name.log" sh "bench/$name/run.sh" "$build"
        return
    fi
    if [ ! -d "$build/bench/$name" ]; then
        echo "==> $name: skipped: $build/bench/$name does not exist (not configured?)"
        row "$name" - skipped - "not built: no $build/bench/$name"
        return
    fi
    found=$(programs "$build/bench/$name")
    if [ -z "$found" ]; then
        echo "==> $name: skipped: nothing built in $build/bench/$name"
        row "$name" - skipped - "not built: no program in $build/bench/$name"
        return
    fi
    for prog in $found; do
        base=$(basename "$prog")
        log="$out/$name.log"
        [ "$(printf '%s\n' "$found" | wc -l)" -gt 1 ] && log="$out/$name-$base.log"
        run "$name" "$base" "$log" "$prog"
    done
}

if [ ! -d "$build" ]; then
    echo "run-all: no build directory $build (run: meson setup $build && ninja -C $build)" >&2
    exit 1
fi

names=${BENCH_ONLY:-}
if [ -z "$names" ]; then
    for d in bench/*/; do
        [ -f "$d/meson.build" ] || [ -f "$d/run.sh" ] || continue
        names="$names $(basename "$d")"
    done
fi
for name in $names; do
    bench_one "$name"
done

echo
echo "benchmark summary ($build)"
awk -F '\t' '
    { n++; for (i = 1; i <= 5; i++) { v[n, i] = $i; if (length($i) > w[i]) w[i] = length($i) } }
    END {
        h[1] = "benchmark"; h[2] = "program"; h[3] = "status"; h[4] = "seconds"; h[5] = "summary"
        for (i = 1; i <= 4; i++) if (length(h[i]) > w[i]) w[i] = length(h[i])
        fmt = "%-" w[1] "s  %-" w[2] "s  %-" w[3] "s  %" w[4] "s  %s\n"
        printf fmt, h[1], h[2], h[3], h[4], h[5]
        for (r = 1; r <= n; r++) printf fmt, v[r, 1], v[r, 2], v[r, 3], v[r, 4], v[r, 5]
    }' "$table"
exit "$failed"

#!/bin/sh
# Runs larder's libFuzzer harnesses (tests/fuzz) for a while each.
#   sh scripts/fuzz.sh [SECONDS] [NAME...]     (default 30 s each, every harness)
# Environment: FUZZ_BUILD (build directory, default build-fuzz), FUZZ_ARGS (more
# libFuzzer flags, e.g. "-jobs=2 -workers=2").
#
# Configures FUZZ_BUILD with clang, ASan+UBSan and -Dfuzz=true when it has no build.ninja,
# builds only the fuzz programs, then runs each with its seed corpus tests/fuzz/corpus/NAME
# (read only) and a working corpus FUZZ_BUILD/fuzz-corpus/NAME (kept between runs, so
# later runs start where earlier ones stopped). A crash, leak, sanitizer report, failed
# check or hung input leaves its input in FUZZ_BUILD/fuzz-crashes/ and makes this exit
# 1; copy it to tests/fuzz/corpus/NAME/ (as regress-WHAT) once fixed, so that every
# `make check` replays it.
set -u
SECONDS_EACH=${1:-30}
[ $# -gt 0 ] && shift
ALL="config tokens http image wav rows"
NAMES=${*:-$ALL}
B=${FUZZ_BUILD:-build-fuzz}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT" || exit 1

if [ ! -f "$B/build.ninja" ]; then
    CC=${FUZZ_CC:-clang} meson setup "$B" -Dfuzz=true -Db_sanitize=address,undefined \
        -Db_lundef=false --buildtype=debug ||
        { echo "fuzz: cannot configure $B (clang and libclang-rt-dev needed)"; exit 1; }
fi
targets=""
for n in $NAMES; do targets="$targets tests/fuzz/fuzz-$n"; done
# shellcheck disable=SC2086
ninja -C "$B" $targets || exit 1

mkdir -p "$B/fuzz-crashes"
export OMP_THREAD_LIMIT=1
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}"
failed=""
summary=""
for n in $NAMES; do
    work="$B/fuzz-corpus/$n"
    mkdir -p "$work"
    log="$B/fuzz-$n.log"
    echo "fuzz-$n: ${SECONDS_EACH}s (log $log)"
    extra=""
    # libpng and libjpeg write a warning per bad image on stderr; sanitizer and
    # libFuzzer reports still come through
    [ "$n" = image ] && extra="-close_fd_mask=2"
    [ -f "tests/fuzz/$n.dict" ] && extra="$extra -dict=tests/fuzz/$n.dict"
    # shellcheck disable=SC2086
    "$B/tests/fuzz/fuzz-$n" -max_total_time="$SECONDS_EACH" -timeout=10 -rss_limit_mb=2048 \
        -max_len=65536 -print_final_stats=1 -artifact_prefix="$B/fuzz-crashes/$n-" \
        $extra ${FUZZ_ARGS:-} "$work" "tests/fuzz/corpus/$n" >"$log" 2>&1
    rc=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    speed=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1)
    ft=$(grep -o 'ft: [0-9]*' "$log" | tail -1)
    corp=$(grep -o 'corp: [0-9]*' "$log" | tail -1)
    line="fuzz-$n: rc=$rc execs=${execs:-?} exec/s=${speed:-?} ${cov:-cov: ?} ${ft:-} ${corp:-}"
    echo "$line"
    summary="$summary$line
"
    if [ "$rc" -ne 0 ]; then
        failed="$failed $n"
        grep -E 'ERROR|SUMMARY|fuzz check failed|Test unit written' "$log" | head -20
    fi
done
printf '\n%s' "$summary"
if [ -n "$failed" ]; then
    echo "fuzz: FAILED:$failed (inputs in $B/fuzz-crashes/, logs in $B/fuzz-NAME.log)"
    exit 1
fi
echo "fuzz: no crash in$(echo " $NAMES" | tr -s ' ')"

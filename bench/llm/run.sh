#!/bin/sh
# Builds bench_llm, its two models (4 blocks, 512 dimensions, 32k vocabulary, Q8_0, about
# 47 MB each: written only for this benchmark) and the llama plugin, then runs it.
# usage: sh bench/llm/run.sh [BUILD_DIR] [bench_llm options: -t THREADS -n TOKENS -r ROUNDS]
set -u
build=${1:-build}
[ $# -gt 0 ] && shift
ninja -C "$build" bench/llm/bench_llm tools/bench-q8_0.gguf tools/bench-b-q8_0.gguf \
    backends/larder-llama.so src/daemon/larderd >/dev/null || {
    echo "bench/llm: the build failed" >&2
    exit 1
}
exec "$build/bench/llm/bench_llm" "$@"

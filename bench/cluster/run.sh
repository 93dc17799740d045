#!/bin/sh
# Runs bench_cluster against a build directory (HAProxy from $HAPROXY, else PATH, else
# /usr/sbin/haproxy). usage: sh bench/cluster/run.sh [BUILD_DIR]
set -u
build=${1:-build}
haproxy=${HAPROXY:-$(command -v haproxy || echo /usr/sbin/haproxy)}
exec "$build/bench/cluster/bench_cluster" "$build/src/daemon/larderd" "$haproxy"

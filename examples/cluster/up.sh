#!/bin/sh
# Stands up the example cluster on one machine, by hand: three larderd nodes on the
# loopback addresses 127.0.0.11-13 (port 8377) and HAProxy on 127.0.0.1:8380, configured
# by `larder cluster haproxy`. Ctrl-C stops them all. docs/scale-out.md explains it.
#
#   sh examples/cluster/up.sh [BUILD_DIR]
set -eu
here=$(cd "$(dirname "$0")" && pwd)
build=${1:-$here/../../build}
larderd="$build/src/daemon/larderd"
larder="$build/src/cli/larder"
export LARDER_BACKEND_DIR=${LARDER_BACKEND_DIR:-$build/backends}
work=$(mktemp -d /tmp/larder-cluster-XXXXXX)
pids=""
stop() {
    for p in $pids; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap stop EXIT INT TERM
nodes=""
for i in 0 1 2; do
    addr=127.0.0.1$((i + 1)):8377
    sed -e "s/^listen = .*/listen = $addr/" -e "s/^node_name = .*/node_name = n$i/" \
        -e "s|^path = \.\./|path = $here/../|" "$here/node.ini" >"$work/n$i.ini"
    "$larderd" --config "$work/n$i.ini" >"$work/n$i.log" 2>&1 &
    pids="$pids $!"
    nodes="$nodes n$i=$addr"
done
"$larder" cluster haproxy --bind 127.0.0.1:8380 $nodes >"$work/haproxy.cfg"
for i in 0 1 2; do
    until curl -sf "http://127.0.0.1$((i + 1)):8377/health" >/dev/null; do sleep 0.2; done
done
haproxy -db -f "$work/haproxy.cfg" >"$work/haproxy.log" 2>&1 &
pids="$pids $!"
echo "cluster up: HAProxy on http://127.0.0.1:8380, logs in $work"
echo "  curl -s --data-binary @$here/../ocr.png -H 'Content-Type: image/png' \\"
echo "       http://127.0.0.1:8380/v1/models/ocr-eng/infer"
echo "  $larder ps --all --url 127.0.0.11:8377 --url 127.0.0.12:8377 --url 127.0.0.13:8377"
wait

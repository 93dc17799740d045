#!/bin/sh
# The installed layout: `meson install` into a staging DESTDIR, then the staged larder and
# larderd run from there with no LD_LIBRARY_PATH and no LARDER_BACKEND_DIR, while the build
# tree still exists. They must find the staged liblarder through their runpath and the
# staged plugins, never the build tree's.
#
# usage: test_install.sh MESON BUILD_ROOT VERSION BINDIR LIBDIR BACKEND_DIR
# (the last three absolute, as configured, under the prefix)
set -eu
meson=$1 build=$2 version=$3 bindir=$4 libdir=$5 backend_dir=$6

fail() {
    echo "FAIL: $*" >&2
    if [ -n "${log:-}" ] && [ -f "$log" ]; then
        echo "--- larderd's log:" >&2
        cat "$log" >&2
    fi
    exit 1
}

tmp=$(mktemp -d "${TMPDIR:-/tmp}/larder-install.XXXXXX")
tmp=$(realpath "$tmp")
pid=
cleanup() {
    if [ -n "$pid" ]; then
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT
case $tmp/ in "$(realpath "$build")"/*) fail "staging dir $tmp is inside the build tree" ;; esac

"$meson" install -C "$build" --no-rebuild --quiet --destdir "$tmp/stage" >"$tmp/install.log" 2>&1 ||
    { cat "$tmp/install.log" >&2; fail "meson install --destdir failed"; }
stage=$tmp/stage
larder=$stage$bindir/larder
larderd=$stage$bindir/larderd
for f in "$larder" "$larderd" "$stage$backend_dir/larder-synthetic.so"; do
    [ -f "$f" ] || fail "not installed: $f"
done
unset LD_LIBRARY_PATH LARDER_BACKEND_DIR LARDER_URL LARDER_TOKEN

# liblarder through a runpath relative to the binary, and from the staged libdir
for bin in "$larder" "$larderd"; do
    readelf -d "$bin" | grep -q 'RUNPATH.*\[\$ORIGIN/' ||
        fail "$bin has no \$ORIGIN-relative RUNPATH: $(readelf -d "$bin" | grep -i path)"
    lib=$(ldd "$bin" | sed -n 's/^[[:space:]]*liblarder\.so[^ ]* => \([^ ]*\) .*/\1/p')
    [ "$(realpath "$lib")" = "$(realpath "$stage$libdir")/$(basename "$(realpath "$lib")")" ] ||
        fail "$bin links liblarder from '$lib', not from $stage$libdir"
done

out=$("$larder" --version) || fail "installed larder --version exited $?"
[ "$out" = "larder $version" ] || fail "larder --version printed '$out'"
out=$("$larderd" --version) || fail "installed larderd --version exited $?"
[ "$out" = "larderd $version" ] || fail "larderd --version printed '$out'"

# the staged plugins, not the build tree's
printf '%s\n' "test-install-token-0123456789" >"$tmp/admin.tokens"
conf=$tmp/larder.ini
cat >"$conf" <<EOF
[server]
listen = 127.0.0.1:0
admin_tokens = admin.tokens
[memory]
budget = 64MiB
[model.tiny]
backend = synthetic
size = 1MiB
EOF
out=$("$larder" check "$conf") || fail "installed larder check failed: $out"
echo "$out" | grep -qx "backends: $(realpath "$stage$backend_dir")" ||
    fail "installed larder check does not use the staged plugins: $out"

log=$tmp/larderd.log
"$larderd" --config "$conf" >"$log" 2>&1 &
pid=$!
port=
for _ in $(seq 200); do
    port=$(sed -n 's/.*listening.*port=\([0-9]*\).*/\1/p' "$log" | head -n 1)
    [ -n "$port" ] && break
    kill -0 "$pid" 2>/dev/null || fail "installed larderd exited at start-up"
    sleep 0.05
done
[ -n "$port" ] || fail "installed larderd did not listen"
url=http://127.0.0.1:$port
out=$("$larder" load tiny --url "$url" --token test-install-token-0123456789 2>&1) ||
    fail "installed larder load failed: $out"
maps=$(cat "/proc/$pid/maps")
echo "$maps" | grep -q "$(realpath "$stage$backend_dir")/larder-synthetic.so" ||
    fail "installed larderd did not map the staged synthetic plugin"
echo "$maps" | grep -q "$(realpath "$stage$libdir")/liblarder.so" ||
    fail "installed larderd did not map the staged liblarder"
if echo "$maps" | grep -q "$(realpath "$build")/"; then
    fail "installed larderd maps files of the build tree: $(echo "$maps" | grep "$(realpath "$build")/")"
fi
out=$("$larder" ps --url "$url") || fail "installed larder ps failed: $out"
echo "$out" | grep -q '^tiny  *ready' || fail "larder ps does not show tiny ready: $out"
kill "$pid"
wait "$pid" || fail "installed larderd exited with status $? on SIGTERM"
pid=
echo "ok: installed under $stage, runpath and plugins of the staged tree"

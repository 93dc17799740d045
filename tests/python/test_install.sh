#!/bin/sh
# The installed module: `meson install` into a staging DESTDIR, then the staged module is
# imported from there (no build tree on the path, no LD_LIBRARY_PATH): it must find the
# staged liblarder through its runpath, and its type stub must lie beside it.
#
# usage: test_install.sh MESON BUILD_ROOT PYTHON PYTHON_INSTALL_DIR
set -eu
meson=$1 build=$2 python=$3 pydir=$4
tmp=$(mktemp -d "${TMPDIR:-/tmp}/larder-pyinstall.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
"$meson" install -C "$build" --no-rebuild --quiet --destdir "$tmp/stage" >"$tmp/install.log" 2>&1 ||
    { cat "$tmp/install.log" >&2; echo "FAIL: meson install --destdir failed" >&2; exit 1; }
site=$tmp/stage$pydir
ls "$site"/larder*.so >/dev/null 2>&1 || { echo "FAIL: no larder module in $site" >&2; exit 1; }
[ -f "$site/larder.pyi" ] || { echo "FAIL: no larder.pyi in $site" >&2; exit 1; }
cd "$tmp"
env -u LD_LIBRARY_PATH PYTHONPATH="$site" "$python" -c '
import sys, larder
assert larder.__file__.startswith(sys.argv[1]), larder.__file__
with larder.Manager(budget="16MiB") as m:
    m.define("a", lambda: "A", memory="1MiB")
    with m.acquire("a") as v:
        assert v == "A"
print("imported", larder.__file__)
' "$site"
echo "ok"

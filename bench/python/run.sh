#!/bin/sh
# bench/python: the larder module (built in BUILD_DIR/python) against hand-written Python
# managers, with the interpreter the module was built for (-Dpython, /usr/bin/python3).
#   sh bench/python/run.sh BUILD_DIR
set -eu
build=${1:-build}
here=$(dirname "$0")
python=${LARDER_PYTHON:-/usr/bin/python3}
if ! ls "$build"/python/larder*.so >/dev/null 2>&1; then
    echo "summary: skipped: the Python module is not built in $build/python"
    exit 0
fi
PYTHONPATH="$build/python" exec "$python" "$here/bench_python.py"

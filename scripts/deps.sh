#!/bin/sh
# Installs the Debian packages listed in scripts/packages.txt (or in the lists given as
# arguments) that are missing. Needs root or sudo; otherwise prints the exact command
# and fails.
set -eu
here=$(dirname "$0")
[ $# -gt 0 ] || set -- "$here/packages.txt"
want=$(cat "$@" | sed -e 's/#.*//' | tr -s ' \n' ' ')
missing=""
for p in $want; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
        missing="$missing $p"
    fi
done
[ -z "$missing" ] && exit 0
cmd="apt-get install -y --no-install-recommends$missing"
if [ "$(id -u)" = 0 ]; then sudo=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo="sudo"
else
    echo "larder: missing Debian packages. Run as root:" >&2
    echo "  apt-get update && $cmd" >&2
    exit 1
fi
echo "larder: installing$missing"
export DEBIAN_FRONTEND=noninteractive
if ! $sudo $cmd; then
    $sudo apt-get update
    $sudo $cmd
fi

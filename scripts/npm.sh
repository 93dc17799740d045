#!/bin/sh
# Installs what larder takes from the npm registry into the build tree, pinned by
# npm/package-lock.json, and extracts llama.cpp's headers from the pinned node-llama-cpp
# release (its tarball carries a git bundle of the llama.cpp tree). Nothing lands outside
# DEST. Re-running is cheap: each step is skipped while its stamp matches its input.
#   sh scripts/npm.sh DEST    (DEST: e.g. build/npm)
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
dest=${1:?usage: npm.sh DEST}
mkdir -p "$dest"
dest=$(cd "$dest" && pwd)

# node-llama-cpp's tarball: only its llama.cpp bundle is used (headers), so it is fetched
# with `npm pack` and checked against this integrity instead of being installed.
LLAMA_PKG=node-llama-cpp@3.22.1
LLAMA_TGZ=node-llama-cpp-3.22.1.tgz
LLAMA_SHA512=bltIipuWmc123H7tMIgDGKSsSrhmhlQYeVUC48XTjVW7XGJJiJJyCdlTMzQ/LiWoPkGDpcL4FviDpgw7qfTiDw==

if ! command -v npm >/dev/null 2>&1; then
    sh "$here/scripts/deps.sh" "$here/scripts/npm-packages.txt"
fi

# 1. the locked dependencies
if ! cmp -s "$here/npm/package-lock.json" "$dest/.lock-stamp" 2>/dev/null; then
    cp "$here/npm/package.json" "$here/npm/package-lock.json" "$dest/"
    (cd "$dest" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
    cp "$here/npm/package-lock.json" "$dest/.lock-stamp"
fi

# 2. llama.cpp's headers, from the pinned release
if [ "$(cat "$dest/.llama-stamp" 2>/dev/null)" != "$LLAMA_SHA512" ]; then
    tmp=$(mktemp -d "$dest/.llama.XXXXXX")
    trap 'rm -rf "$tmp"' EXIT
    (cd "$tmp" && npm pack "$LLAMA_PKG" --silent >/dev/null)
    got=$(sha512sum "$tmp/$LLAMA_TGZ" | cut -d' ' -f1 | xxd -r -p | base64 -w0)
    if [ "$got" != "$LLAMA_SHA512" ]; then
        echo "larder: $LLAMA_TGZ integrity mismatch: got sha512-$got" >&2
        exit 1
    fi
    tar -xzf "$tmp/$LLAMA_TGZ" -C "$tmp" package/llama/gitRelease.bundle
    git -c advice.detachedHead=false clone -q "$tmp/package/llama/gitRelease.bundle" "$tmp/src"
    rm -rf "$dest/llama-include"
    mkdir -p "$dest/llama-include"
    cp "$tmp/src/include/llama.h" "$tmp/src/ggml/include/"ggml*.h "$tmp/src/ggml/include/gguf.h" \
        "$dest/llama-include/"
    rm -rf "$tmp"
    trap - EXIT
    echo "$LLAMA_SHA512" >"$dest/.llama-stamp"
fi

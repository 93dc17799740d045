#!/bin/sh
# Checks larder's llama backend on llama.cpp's CUDA build, on a machine with an NVIDIA GPU:
# layers offloaded with gpu_layers = auto under a gpu_budget, the device memory NVML
# measures (nvidia-smi) against the plugin's estimate, and its release on unload.
#
#   sh scripts/cuda-check.sh [-b BUILD_DIR] [-t TARBALL]
#
# The package @node-llama-cpp/linux-x64-cuda@3.22.1 is fetched with `npm pack` into
# BUILD_DIR/cuda-check/ (needs the npm registry). On a machine without network, fetch it
# elsewhere (`npm pack @node-llama-cpp/linux-x64-cuda@3.22.1`, ~143 MB) and pass the .tgz
# with -t (or LARDER_CUDA_TARBALL). Its libggml-cuda.so needs the CUDA 13 runtime
# (libcudart.so.13, libcublas.so.13; not in the package) and the driver's libcuda.so.1:
# install them, or put their directory on LD_LIBRARY_PATH.
#
# Without a GPU it stops at once with status 2 and says why. Its logic can be tried on
# Mesa's lavapipe by standing the Vulkan package in for the CUDA one (a tarball whose
# bins/linux-x64-cuda/ holds the Vulkan libraries, libggml-vulkan.so also as
# libggml-cuda.so), GGML_VK_VISIBLE_DEVICES=0 and an nvidia-smi stand-in on PATH; the
# memory figures are then meaningless.
#
# BUILD_DIR is a configured larder build (meson setup; default: build): the script builds
# larderd and the generated models it needs, and compiles the llama plugin against the
# CUDA package into BUILD_DIR/cuda-check/backends/larder-llama-cuda.so (backend =
# llama-cuda). Exit status: 0 when every check holds, 1 when one does not, 2 when the
# machine cannot run the check (no GPU, no driver, no package, missing CUDA libraries).
set -u

build=build
tarball=${LARDER_CUDA_TARBALL:-}
while getopts b:t: opt; do
    case $opt in
    b) build=$OPTARG ;;
    t) tarball=$OPTARG ;;
    *) echo "usage: sh scripts/cuda-check.sh [-b BUILD_DIR] [-t TARBALL]" >&2; exit 2 ;;
    esac
done
root=$(cd "$(dirname "$0")/.." && pwd)
case $build in /*) ;; *) build="$root/$build" ;; esac
pkg=@node-llama-cpp/linux-x64-cuda@3.22.1
work="$build/cuda-check"
failed=0

cannot() { echo "cuda-check: cannot run: $*" >&2; exit 2; }
bad() { echo "FAIL: $*"; failed=1; }
ok() { echo "ok: $*"; }

# ---- a GPU, first: nothing is fetched or built without one
command -v nvidia-smi >/dev/null 2>&1 ||
    cannot "no nvidia-smi on PATH: this check needs a machine with an NVIDIA GPU and its driver"
gpus=$(nvidia-smi -L 2>&1) || cannot "nvidia-smi -L failed: $gpus"
echo "$gpus" | grep -q '^GPU ' || cannot "nvidia-smi lists no GPU: $gpus"
echo "GPU 0: $(nvidia-smi -i 0 --query-gpu=name,driver_version,memory.total,memory.used \
    --format=csv,noheader)"

# ---- the build tree and the package
[ -f "$build/build.ninja" ] || cannot "$build is not a configured build (meson setup $build)"
ninja -C "$build" src/daemon/larderd tools/bench-q8_0.gguf tools/tiny-generator-f32.gguf \
    >/dev/null || cannot "ninja -C $build failed"
mkdir -p "$work/backends" "$work/run"
if [ -z "$tarball" ]; then
    tarball="$work/node-llama-cpp-linux-x64-cuda-3.22.1.tgz"
    if [ ! -f "$tarball" ]; then
        echo "fetching $pkg (npm pack)"
        (cd "$work" && npm pack "$pkg" >/dev/null) ||
            cannot "npm pack $pkg failed (no network? fetch it elsewhere and pass -t TARBALL)"
    fi
fi
[ -f "$tarball" ] || cannot "no package tarball $tarball"
rm -rf "$work/pkg"
mkdir -p "$work/pkg" || cannot "cannot create $work/pkg"
tar -xzf "$tarball" -C "$work/pkg" || cannot "cannot unpack $tarball"
libdir="$work/pkg/package/bins/linux-x64-cuda"
[ -f "$libdir/libggml-cuda.so" ] || cannot "$tarball has no bins/linux-x64-cuda/libggml-cuda.so"
missing=$(ldd "$libdir/libggml-cuda.so" | awk '/not found/ { print $1 }' | tr '\n' ' ')
[ -z "$missing" ] || cannot "libggml-cuda.so needs $missing(the CUDA 13 runtime and the" \
    "driver's libcuda.so.1: install them or put their directory on LD_LIBRARY_PATH)"
libllama='' libggml=''
for f in "$libdir"/libllama*.so; do
    case $f in *libllama-common*) ;; *) [ -f "$f" ] && libllama=${f##*/} ;; esac
done
for f in "$libdir"/libggml.*.so; do [ -f "$f" ] && libggml=${f##*/}; done
if [ -z "$libllama" ] || [ -z "$libggml" ]; then cannot "no libllama / libggml in $libdir"; fi

# ---- the plugin, against the CUDA build (the same sources as larder-llama.so)
plugin="$work/backends/larder-llama-cuda.so"
jansson=$(pkg-config --cflags --libs jansson) || cannot "pkg-config finds no jansson"
# shellcheck disable=SC2086 # $jansson is a list of flags
${CC:-cc} -std=c11 -O2 -D_GNU_SOURCE -D_FILE_OFFSET_BITS=64 -fPIC -shared -pthread \
    -fvisibility=hidden '-DLARDER_LLAMA_NAME="llama-cuda"' \
    -I"$root/include" -I"$build/npm/llama-include" \
    "$root/backends/llama/llama.c" "$root/backends/llama/gguf-info.c" \
    "$root/backends/common/plugin-util.c" \
    -L"$libdir" "-l:$libllama" "-l:$libggml" -l:libggml-base.so "-Wl,-rpath,$libdir" \
    $jansson -ldl -lm -o "$plugin" ||
    cannot "compiling $plugin failed"
echo "plugin: $plugin ($libllama, $libggml)"

# ---- larderd with three models on GPU 0
model="$build/tools/bench-q8_0.gguf"
tiny="$build/tools/tiny-generator-f32.gguf"
token=cuda-check-token-0123456789abcdef
printf '%s\n' "$token" >"$work/run/admin.tokens"
cat >"$work/run/larder.ini" <<EOF
[server]
listen = 127.0.0.1:0
admin_tokens = admin.tokens
[memory]
watch_pressure = no
; warms the CUDA context up, so that the figures below are the models' alone
[model.warmup]
backend = llama-cuda
path = $tiny
gpu_layers = auto
gpu_budget = 1GiB
ctx = 512
[model.all]
backend = llama-cuda
path = $model
gpu_layers = auto
gpu_budget = 1GiB
ctx = 512
threads = 4
EOF
log="$work/run/larderd.log"
LARDER_BACKEND_DIR="$work/backends" "$build/src/daemon/larderd" --config "$work/run/larder.ini" \
    --log-level debug >"$log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null' EXIT INT TERM
port=
for _ in $(seq 1 300); do
    port=$(sed -n 's/.* listening .*port=\([0-9]*\).*/\1/p' "$log" | head -n 1)
    [ -n "$port" ] && curl -fs "http://127.0.0.1:$port/health" >/dev/null && break
    kill -0 $pid 2>/dev/null || { cat "$log"; cannot "larderd exited"; }
    sleep 0.1
done
[ -n "$port" ] || { cat "$log"; cannot "larderd did not start"; }
url="http://127.0.0.1:$port"

post() { curl -s -H 'Content-Type: application/json' -d "$2" "$url/v1/models/$1/infer"; }
unload() { curl -fs -X POST -H "Authorization: Bearer $token" "$url/v1/models/$1/unload" >/dev/null; }
field() { printf '%s' "$1" | sed -n "s/.*\"$2\": *\([^,}]*\).*/\1/p" | head -n 1 | tr -d '"'; }
# Device MiB larderd's process holds (NVML's per-process figure), or, when nvidia-smi does
# not show the process (another PID namespace), the GPU's whole used memory: pick_method
# chooses once the process has a CUDA context.
pick_method() {
    if nvidia-smi --query-compute-apps=pid --format=csv,noheader | tr -d ' ' | grep -qx "$pid"
    then method="process $pid"
    else method="whole GPU"
    fi
}
used_mib() {
    case $method in
    process*)
        nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader,nounits |
            awk -F', *' -v p="$pid" '$1 == p { s += $2 } END { print s + 0 }' ;;
    *) nvidia-smi -i 0 --query-gpu=memory.used --format=csv,noheader,nounits | head -n 1 ;;
    esac
}
mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }

d=$(post warmup '{"describe": true}')
[ "$(field "$d" gpu_layers)" -gt 0 ] 2>/dev/null ||
    { echo "$d"; cat "$log"; cannot "the warm-up model put no layer on a GPU: is the CUDA backend loaded?"; }
pick_method
unload warmup
base=$(used_mib)
echo "device memory after the warm-up's unload: $base MiB ($method)"

check_model() {
    name=$1
    d=$(post "$name" '{"describe": true}')
    layers=$(field "$d" gpu_layers)
    total=$(($(field "$d" n_layer) + 1))
    planned=$(field "$d" gpu_bytes)
    margin=$(field "$d" gpu_margin)
    reported=$(field "$d" measured_device_bytes)
    [ -n "$layers" ] || { echo "$d"; bad "$name: no describe reply"; return; }
    gen=$(post "$name" '{"prompt": "hello there", "max_tokens": 8, "temperature": 0}')
    case $gen in *'"tokens"'*) ;; *) bad "$name: generation failed: $gen" ;; esac
    now=$(used_mib)
    delta=$((now - base))
    estimate=$(( (planned + margin) / 1048576 ))
    echo "$name: $layers/$total layers on $(field "$d" gpu_device); estimate $(mib "$planned") MiB" \
        "(layers + KV) + $(mib "$margin") MiB margin = $estimate MiB; llama.cpp allocated" \
        "$(mib "$reported") MiB; NVML: +$delta MiB ($method)"
    awk -v n="$delta" -v e="$estimate" 'BEGIN { printf "  NVML / estimate: %.2f\n", e ? n / e : 0 }'
    if [ $((reported / 1048576)) -le "$estimate" ]; then
        ok "$name: the estimate covers what llama.cpp allocated on the device"
    else bad "$name: llama.cpp allocated $(mib "$reported") MiB, more than the estimate"; fi
    if [ "$delta" -le "$estimate" ]; then ok "$name: the estimate covers what NVML measured"
    else bad "$name: NVML measured $delta MiB, more than the estimate $estimate MiB"; fi
    unload "$name"
    after=$(used_mib)
    if [ $((after - base)) -le 16 ]; then ok "$name: released on unload ($after MiB, base $base)"
    else bad "$name: $((after - base)) MiB still held after unload ($after MiB, base $base)"; fi
}

check_model all
if [ "$layers" -eq "$total" ]; then ok "all: every layer offloaded under a 1 GiB budget"
else bad "all: $layers/$total layers under a 1 GiB budget"; fi
# a budget of the compute margin and a third of what every layer took: some blocks on the
# GPU, the rest (and the output layer, the largest) on the CPU; declared by a reload
part_budget=$((margin + planned / 3))
cat >>"$work/run/larder.ini" <<EOF
[model.part]
backend = llama-cuda
path = $model
gpu_layers = auto
gpu_budget = $part_budget
ctx = 512
threads = 4
EOF
curl -fs -X POST -H "Authorization: Bearer $token" "$url/v1/reload" >/dev/null ||
    cannot "the reload that declares [model.part] failed (log: $log)"
check_model part
if [ "$layers" -gt 0 ] && [ "$layers" -lt "$total" ]; then
    ok "part: $layers/$total layers fit $(mib "$part_budget") MiB, the rest on the CPU"
else bad "part: $layers/$total layers under $(mib "$part_budget") MiB (expected some, not all)"; fi

if [ $failed -eq 0 ]; then echo "cuda-check: every check holds"
else echo "cuda-check: some checks failed (log: $log)"; fi
exit $failed

#!/usr/bin/env bash
# Fetch TensorRT's public C++ headers (10.14.1, Apache-2.0) into BUILD_DIR/tensorrt: TensorRT's
# own wheels download from a host these machines cannot reach, but the PyPI wheel kernel-lens
# ships the headers under kernel_lens/include/tensorrt. Nothing is installed. Prints the include
# directory. Idempotent. A TensorRT SDK (TensorRT_ROOT) makes this script unnecessary.
set -euo pipefail

build_dir=${1:?usage: fetch_trt_headers.sh BUILD_DIR [PYTHON]}
python=${2:-python3}
mkdir -p "$build_dir"
root=$(cd "$build_dir" && pwd)/tensorrt
inc="$root/include"
if [ -f "$inc/NvInferRuntime.h" ]; then
    echo "$inc"
    exit 0
fi
mkdir -p "$root/wheel"
"$python" -m pip download -q --no-deps --dest "$root/wheel" kernel-lens==2.0.1 >&2
wheel=$(ls "$root"/wheel/kernel_lens-2.0.1-*.whl | head -n 1)
# A wheel is a zip; Python's zipfile avoids depending on `unzip` being installed.
"$python" - "$wheel" "$inc" <<'PY'
import os, sys, zipfile
wheel, inc = sys.argv[1:]
prefix = "kernel_lens/include/tensorrt/"
os.makedirs(inc, exist_ok=True)
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if name.startswith(prefix) and name.endswith(".h"):
            with open(os.path.join(inc, os.path.basename(name)), "wb") as f:
                f.write(z.read(name))
PY
if [ ! -f "$inc/NvInferRuntime.h" ]; then
    echo "fetch_trt_headers: $wheel did not contain NvInferRuntime.h" >&2
    exit 1
fi
rm -rf "$root/wheel"
echo "$inc"

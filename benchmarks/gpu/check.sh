#!/usr/bin/env bash
# GPU correctness check, one command on a machine with an NVIDIA GPU: builds the CUDA kernels, the
# ONNX Runtime library with its CUDA EP kernel, the TensorRT plugin and the harness for this GPU,
# then runs
#   1. plugins/tests/gpu/test_gpu: core kernels and the plugin's enqueue on device buffers against
#      the scalar reference (every format feature; fp32/fp16/bf16; M = 1, 4, 16, 128, 2048),
#   2. the same harness's quick subset under compute-sanitizer (memcheck), when installed,
#   3. tests/gpu (ONNX Runtime's CUDA EP running VQGemm against its CPU EP), when onnxruntime-gpu
#      is installed (otherwise that step says it is skipped and why).
# Offline machines (the device tool's): TensorRT and ONNX Runtime headers that `make plugins`
# fetched into build/ are used when present; carry build/tensorrt and build/ort along.
# Environment: BUILD_DIR (default build-gpu), CUDA_ARCH (default native), PYTHON (default python3).
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${BUILD_DIR:-build-gpu}
args=(-DVQ2TRT_WITH_CUDA=ON -DVQ2TRT_CUDA_ARCH="${CUDA_ARCH:-native}" -DVQ2TRT_WITH_SAMPLES=OFF)
if [ -z "${TensorRT_ROOT:-}" ] && [ -f build/tensorrt/include/NvInferRuntime.h ]; then
    args+=(-DTensorRT_ROOT="$PWD/build/tensorrt")
fi
if [ -z "${ONNXRUNTIME_ROOT:-}" ] && [ -f build/ort/usr/include/onnxruntime/onnxruntime_cxx_api.h ]; then
    args+=(-DONNXRUNTIME_ROOT="$PWD/build/ort/usr")
fi
cmake -S . -B "$build" "${args[@]}"
cmake --build "$build" -j"$(nproc)"

echo "== 1. kernels and TensorRT plugin enqueue vs the reference"
"$build"/plugins/tests/gpu/test_gpu "$@"

echo "== 2. compute-sanitizer memcheck (quick subset)"
if command -v compute-sanitizer > /dev/null; then
    compute-sanitizer --tool memcheck --error-exitcode 1 "$build"/plugins/tests/gpu/test_gpu --quick
else
    echo "skipped: compute-sanitizer is not on PATH"
fi

echo "== 3. ONNX Runtime CUDA EP vs CPU EP"
python=${PYTHON:-python3}
if "$python" -c "import onnxruntime as o, sys; sys.exit('CUDAExecutionProvider' not in o.get_available_providers())" 2> /dev/null; then
    VQ2TRT_ORT_LIBRARY="$PWD/$build/plugins/onnxruntime/libvq2trt_ort.so" "$python" -m pytest -q tests/gpu
else
    echo "skipped: onnxruntime with the CUDAExecutionProvider (onnxruntime-gpu) is not installed"
fi

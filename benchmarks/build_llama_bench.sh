#!/usr/bin/env bash
# Builds llama.cpp's llama-bench and llama-quantize for the peer rows of benchmarks/cpu_model.py,
# from the sources vendored in the llama-cpp-python sdist (PyPI is reachable where GitHub is
# not), and requantizes the cached SmolLM2 Q4_1 GGUF into the files llama.cpp users pick.
# Nothing it fetches or builds enters the repository: everything goes under DEST.
#
#   benchmarks/build_llama_bench.sh [DEST (default /work/llama)] [GGUF (default the Makefile's cache)]
#
# ~8 minutes on 2 cores. -DGGML_NATIVE=ON: llama.cpp tuned for this CPU, as its users build it,
# so the table must be read with the ISA of the machine it ran on. LLAMA_ISA=avx2 builds the AVX2
# code only (GGML_NATIVE off, AVX-512 off), the peer of a `VQ2TRT_ISA=avx2` run on an AVX-512 CPU;
# LLAMA_ISA=avxvnni the same with AVX-VNNI (Intel's AVX2 cores from Alder Lake on), the peer of
# `VQ2TRT_ISA=avxvnni`; LLAMA_ISA=avx512 builds AVX-512 without AMX (see below).
set -euo pipefail
VERSION=0.3.36
DEST=${1:-/work/llama}
GGUF=${2:-$HOME/.cache/vq2trt/SmolLM2-135M-Instruct.Q4_1.gguf}
PIP=${PIP:-$(dirname "$0")/../.venv/bin/pip}
[ -f "$GGUF" ] || { echo "build_llama_bench: no GGUF at $GGUF (run: make model)" >&2; exit 2; }
mkdir -p "$DEST"
if [ ! -d "$DEST/src" ]; then
  "$PIP" download -q --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$DEST/sdist"
  mkdir -p "$DEST/src"
  tar -xzf "$DEST/sdist/llama_cpp_python-$VERSION.tar.gz" -C "$DEST/src" --strip-components=1
fi
case "${LLAMA_ISA:-native}" in
  native) ISA_FLAGS=(-DGGML_NATIVE=ON) ;;
  avx2) ISA_FLAGS=(-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON
                   -DGGML_AVX512=OFF -DGGML_AVX512_VBMI=OFF -DGGML_AVX512_VNNI=OFF -DGGML_AVX_VNNI=OFF) ;;
  avxvnni) ISA_FLAGS=(-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON
                      -DGGML_AVX512=OFF -DGGML_AVX512_VBMI=OFF -DGGML_AVX512_VNNI=OFF -DGGML_AVX_VNNI=ON) ;;
  # AVX-512 (VBMI, VNNI, BF16) without AMX: a native build on a Sapphire/Emerald Rapids VM
  # turns AMX on, and llama-bench then died with SIGSEGV before its first line here.
  avx512) ISA_FLAGS=(-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON
                     -DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON
                     -DGGML_AVX_VNNI=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF) ;;
  *) echo "build_llama_bench: LLAMA_ISA must be native, avx512, avxvnni or avx2, not '$LLAMA_ISA'" >&2; exit 2 ;;
esac
cmake -S "$DEST/src/vendor/llama.cpp" -B "$DEST/build" -DCMAKE_BUILD_TYPE=Release "${ISA_FLAGS[@]}" \
  -DLLAMA_CURL=OFF -DBUILD_SHARED_LIBS=OFF >/dev/null
cmake --build "$DEST/build" -j"$(nproc)" --target llama-bench llama-quantize >/dev/null
for q in Q4_0 Q8_0 Q2_K; do
  out="$DEST/smollm2-$(echo "$q" | tr 'A-Z' 'a-z').gguf"
  [ -f "$out" ] || "$DEST/build/bin/llama-quantize" --allow-requantize "$GGUF" "$out" "$q" >/dev/null 2>&1
done
echo "llama-bench: $DEST/build/bin/llama-bench"
ls -l "$DEST"/smollm2-*.gguf

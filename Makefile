# The README's two commands: `make demo` and `make test`. Each sets itself up in .venv.
PYTHON   ?= python3
VENV     ?= .venv
BIN      := $(VENV)/bin
CACHE    ?= $(HOME)/.cache/vq2trt
WIKITEXT ?= ../shared/data/wikitext-2
OUT      ?= out
# The demo's model: 2.3 bits all-in, each Linear's format chosen by `--target-bits 2.3` on this
# model (configs/README.md), then 32k tokens of distillation against the float model (README
# "Quality"). DEMO_CONFIG=v4-k256 DEMO_DISTILL=0 gives the plain 2.1-bit VPTQ model of before.
DEMO_CONFIG ?= configs/smollm2-135m-2.3bit.json
DEMO_NAME ?= 2.3bit
DEMO_DISTILL ?= 32768
DEMO_WINDOWS ?= 16
GGUF     := $(CACHE)/SmolLM2-135M-Instruct.Q4_1.gguf
QUANT    := $(OUT)/smollm2-$(DEMO_NAME)
ONNX     := $(QUANT)-onnx
FLOAT_ONNX := $(OUT)/smollm2-float-onnx
THREADS  ?= 2
# CUDA targets of `make plugins` (cmake/cuda.cmake): one architecture keeps CI's compile short;
# `make plugins CUDA_ARCH=datacenter` (or jetson-orin, jetson-thor, native, "90;120") for deployment.
CUDA_ARCH ?= ci

.PHONY: demo test install model lint clean plugins test-arm

# torch first and pinned: an unpinned torch would pull the multi-GB CUDA build. vptq (VPTQ's own layer
# code, for tests/pipeline/test_vptq_interop.py) goes in with --no-deps so it cannot pull a torch either.
$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	$(BIN)/python -m pip install -q --no-deps --only-binary :all: vptq==0.0.5.post1 || echo "no vptq wheel here: its interop tests skip"
	touch $@

install: $(BIN)/.installed

$(GGUF): | $(BIN)/.installed
	$(BIN)/python -m vq2trt.models fetch-smollm2 --cache $(CACHE)

model: $(GGUF)

demo: install model plugins
	$(BIN)/vq2trt quantize $(GGUF) --config $(DEMO_CONFIG) --calib $(WIKITEXT)/wiki.valid.tokens \
	    --samples 64 --seqlen 512 --kmeans-iters 25 --distill-tokens $(DEMO_DISTILL) --threads $(THREADS) \
	    --out $(QUANT) --overwrite
	$(BIN)/vq2trt export $(QUANT) --out $(ONNX) --overwrite
	$(BIN)/vq2trt export $(GGUF) --out $(FLOAT_ONNX) --overwrite
	$(BIN)/vq2trt eval $(QUANT) --baseline $(GGUF) --onnx $(ONNX) --text $(WIKITEXT)/wiki.test.raw \
	    --windows $(DEMO_WINDOWS) --threads $(THREADS)
	$(BIN)/vq2trt run $(ONNX) --prompt "The capital of France is" --max-new-tokens 32 --threads $(THREADS)
	$(BIN)/vq2trt compare $(ONNX) --float-onnx $(FLOAT_ONNX) --threads $(THREADS)
	@echo "TensorRT (export/TENSORRT.md): vq2trt export $(QUANT) --out $(ONNX)-trt --ops basic, then"
	@echo "  vq2trt build-engine $(ONNX)-trt (TensorRT builds from the portable opset-18 graph)"

test: install plugins test-arm
	$(BIN)/python -m pytest -q tests

# The core kernels and their C++ tests cross-compiled for aarch64 and run under qemu-user:
# correctness of the ARM build only (qemu says nothing about speed). Installs Debian's cross
# toolchain when it is missing and this is root on Debian; otherwise says why it skips. The ORT
# op library is compiled for aarch64 too (not run: no aarch64 onnxruntime under qemu here).
ARM_BUILD ?= build-arm
ARM_PKGS  := g++-aarch64-linux-gnu qemu-user
test-arm:
	@if ! command -v aarch64-linux-gnu-g++ >/dev/null || ! command -v qemu-aarch64 >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "test-arm: installing $(ARM_PKGS)"; \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get install -y -q --no-install-recommends $(ARM_PKGS) >/dev/null 2>&1 || \
	      { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends $(ARM_PKGS) >/dev/null; } || \
	      echo "test-arm: could not install $(ARM_PKGS)"; \
	  fi; \
	fi
	@if command -v aarch64-linux-gnu-g++ >/dev/null && command -v qemu-aarch64 >/dev/null; then \
	  cmake -S . -B $(ARM_BUILD) -DCMAKE_TOOLCHAIN_FILE=cmake/aarch64-linux-gnu.cmake -DCMAKE_BUILD_TYPE=Release \
	      -DVQ2TRT_WITH_CUDA=OFF -DVQ2TRT_WITH_SAMPLES=OFF >/dev/null && \
	  cmake --build $(ARM_BUILD) -j2 && (cd $(ARM_BUILD) && ctest --output-on-failure); \
	else \
	  echo "test-arm: SKIPPED: needs $(ARM_PKGS) (Debian: apt-get install $(ARM_PKGS), as root)"; \
	fi

# The C++ side: libvq2trt_ort.so (CPU, plus the CUDA EP kernel when nvcc is found), the TensorRT
# plugin libvq2trt_trt.so (with CUDA), ctest. ORT and TensorRT headers are fetched into build/
# on first configure.
plugins:
	cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DVQ2TRT_CUDA_ARCH='$(CUDA_ARCH)'
	cmake --build build -j2
	cd build && ctest --output-on-failure

lint: install
	$(BIN)/ruff check vq2trt tests benchmarks samples

clean:
	rm -rf $(OUT) build $(ARM_BUILD) *.egg-info

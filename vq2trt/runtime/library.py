"""Where vq2trt's plugin libraries are, and ONNX Runtime SessionOptions with the custom-op library
registered. Two libraries, one lookup:

- libvq2trt_ort.so: registers the ONNX Runtime custom op vq2trt.VQGemm ($VQ2TRT_ORT_LIBRARY);
- libvq2trt_trt.so: the TensorRT IPluginV3 plugin "VQGemm" version "1" ($VQ2TRT_TRT_LIBRARY).

Each is looked up as: its environment variable if set, else the checkout's build/ folder
(`make plugins`), else a copy installed inside this package. Imports onnxruntime only inside
session_options(); nothing here imports tensorrt."""

from __future__ import annotations

import os
from pathlib import Path

LIBRARY_NAME = "libvq2trt_ort.so"
ENV_VAR = "VQ2TRT_ORT_LIBRARY"
TRT_LIBRARY_NAME = "libvq2trt_trt.so"
TRT_ENV_VAR = "VQ2TRT_TRT_LIBRARY"


class LibraryNotFound(FileNotFoundError):
    """A plugin library is not built (or its environment variable points nowhere)."""


def _default_places(build_subdir: str, name: str) -> list[Path]:
    repo = Path(__file__).resolve().parents[2]
    return [repo / "build" / "plugins" / build_subdir / name,    # `make plugins` in a checkout
            Path(__file__).resolve().parent / name]              # a copy installed with the package


def _candidates() -> list[Path]:
    return _default_places("onnxruntime", LIBRARY_NAME)


def _trt_candidates() -> list[Path]:
    return _default_places("tensorrt", TRT_LIBRARY_NAME)


def _find(name: str, env_var: str, candidates: list[Path]) -> Path:
    env = os.environ.get(env_var)
    if env:
        p = Path(env)
        if not p.is_file():
            raise LibraryNotFound(f"{env_var}={env} is not a file; unset it or point it at {name}")
        return p
    for p in candidates:
        if p.is_file():
            return p
    looked = ", ".join(str(p) for p in candidates)
    raise LibraryNotFound(f"{name} not found (looked in {looked}); build it with `make plugins` "
                          f"or set {env_var}")


def get_library_path() -> Path:
    """The ONNX Runtime custom-op library: $VQ2TRT_ORT_LIBRARY if set, else the repository's
    build/ folder, else a copy installed in this package."""
    return _find(LIBRARY_NAME, ENV_VAR, _candidates())


def get_trt_library_path() -> Path:
    """The TensorRT plugin library: $VQ2TRT_TRT_LIBRARY if set, else
    build/plugins/tensorrt/libvq2trt_trt.so in the checkout, else a copy installed in this package.
    `make plugins` builds it where CUDA and TensorRT's headers are found."""
    return _find(TRT_LIBRARY_NAME, TRT_ENV_VAR, _trt_candidates())


def session_options(*, intra_op_threads: int | None = None, sequential: bool = True,
                    graph_optimization: bool = True, library: str | os.PathLike | None = None):
    """onnxruntime.SessionOptions with the VQGemm library registered."""
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise ImportError("VQGemm in ONNX Runtime needs onnxruntime: pip install 'vq2trt[ort]'") from e
    so = ort.SessionOptions()
    so.register_custom_ops_library(str(library or get_library_path()))
    if intra_op_threads:
        so.intra_op_num_threads = intra_op_threads
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL if sequential else ort.ExecutionMode.ORT_PARALLEL
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if graph_optimization
                                   else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    return so

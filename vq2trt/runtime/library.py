"""Where the ONNX Runtime custom-op library (libvq2trt_ort.so, registering vq2trt.VQGemm) is, and
SessionOptions with it registered. Imports onnxruntime only inside session_options()."""

from __future__ import annotations

import os
from pathlib import Path

LIBRARY_NAME = "libvq2trt_ort.so"
ENV_VAR = "VQ2TRT_ORT_LIBRARY"


class LibraryNotFound(FileNotFoundError):
    """The custom-op library is not built (or VQ2TRT_ORT_LIBRARY points nowhere)."""


def _candidates() -> list[Path]:
    repo = Path(__file__).resolve().parents[2]
    return [repo / "build" / "plugins" / "onnxruntime" / LIBRARY_NAME,  # `make plugins` in a checkout
            Path(__file__).resolve().parent / LIBRARY_NAME]              # a copy installed with the package


def get_library_path() -> Path:
    """The library: $VQ2TRT_ORT_LIBRARY if set, else the repository's build/ folder, else a copy
    installed in this package."""
    env = os.environ.get(ENV_VAR)
    if env:
        p = Path(env)
        if not p.is_file():
            raise LibraryNotFound(f"{ENV_VAR}={env} is not a file; unset it or point it at {LIBRARY_NAME}")
        return p
    for p in _candidates():
        if p.is_file():
            return p
    looked = ", ".join(str(p) for p in _candidates())
    raise LibraryNotFound(f"{LIBRARY_NAME} not found (looked in {looked}); build it with `make plugins` "
                          f"or set {ENV_VAR}")


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

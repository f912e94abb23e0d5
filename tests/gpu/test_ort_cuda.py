"""vq2trt.VQGemm on ONNX Runtime's CUDA execution provider against the reference.

Needs onnxruntime-gpu (the CUDAExecutionProvider) and a GPU: skipped otherwise, with the reason.
benchmarks/gpu/check.sh runs it on a GPU machine against the library it builds there.
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from tests.runtime.test_ort_vqgemm import FORMATS, TOL_FP16, TOL_FP32, check, random_weight
from vq2trt.export.op import make_model

ort = pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.gpu
if "CUDAExecutionProvider" not in ort.get_available_providers():
    pytest.skip("onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu on a GPU machine)",
                allow_module_level=True)


def cuda_session(model):
    from vq2trt.runtime.library import session_options
    so = session_options(graph_optimization=False)
    # No silent CPU fallback: a node the CUDA EP does not take must fail the test, not pass on CPU.
    so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CUDAExecutionProvider"])


@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_cuda_ep_matches_reference(fmt, dtype):
    rng = np.random.default_rng(zlib.crc32(f"cuda/{fmt}/{np.dtype(dtype).name}".encode()))
    w = random_weight(rng, **FORMATS[fmt])
    sess = cuda_session(make_model(w, dtype))
    for M in (1, 4, 16, 128):  # decode GEMV and dequantize + GEMM
        x = rng.standard_normal((M, w.in_features)).astype(dtype)
        (y,) = sess.run(None, {"X": x})
        assert y.dtype == dtype and y.shape == (M, w.out_features)
        check(y, x, w, TOL_FP32 * 10 if dtype == np.float32 else TOL_FP16)


def test_cuda_ep_rejects_bad_indices():
    rng = np.random.default_rng(3)
    w = random_weight(rng, v=4, k=5)
    model = make_model(w, np.float32)
    for init in model.graph.initializer:
        if init.name == "indices":
            init.raw_data = b"\xff" * len(init.raw_data)  # every 3-bit index = 7 >= k = 5
    with pytest.raises(Exception, match="index"):
        sess = cuda_session(model)
        sess.run(None, {"X": np.ones((1, w.in_features), np.float32)})

"""Quantization algorithms: Hessian collection, weighted k-means, VPTQ, and the GPTQ / RTN baselines.

Pure torch on the weights' device; nothing here touches I/O, export or runtime code.
"""

from vq2trt.algo.gptq import gptq_quantize, rtn_quantize, scalar_bits_per_weight
from vq2trt.algo.hessian import HessianAccumulator, inverse_cholesky, prepare_hessian, proxy_error
from vq2trt.algo.kmeans import nearest, weighted_kmeans
from vq2trt.algo.vptq import vptq_quantize

__all__ = [
    "HessianAccumulator",
    "gptq_quantize",
    "inverse_cholesky",
    "nearest",
    "prepare_hessian",
    "proxy_error",
    "rtn_quantize",
    "scalar_bits_per_weight",
    "vptq_quantize",
    "weighted_kmeans",
]

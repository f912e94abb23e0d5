"""`torch.ops.vq2trt.vq_gemm`: VQGemm as a torch custom op, so torch.onnx.export emits one
`vq2trt::VQGemm` node per quantized Linear (ONNX translation in onnx_export.py).

The eager kernel is the reference dequant followed by a Linear (exact, slow); the fake kernel
only states the output shape, which is all tracing needs.
"""

from __future__ import annotations

import torch
from torch import nn

from vq2trt.export import op
from vq2trt.format import VQWeight
from vq2trt.reference import dequant_tensors, torch_tensors

# Fixed positional signature: every weight input may be None; attributes are plain ints.
WEIGHT_NAMES = ("indices", "codebook", "perm", "res_indices", "res_codebook", "outlier_indices",
                "outlier_codebook", "col_scale", "col_bias", "bias")
INT_ATTRS = tuple(a["name"] for a in op.schema()["attributes"] if a["type"] == "INT")


@torch.library.custom_op("vq2trt::vq_gemm", mutates_args=())
def vq_gemm(x: torch.Tensor, indices: torch.Tensor, codebook: torch.Tensor, perm: torch.Tensor,
            res_indices: torch.Tensor | None, res_codebook: torch.Tensor | None,
            outlier_indices: torch.Tensor | None, outlier_codebook: torch.Tensor | None,
            col_scale: torch.Tensor | None, col_bias: torch.Tensor | None, bias: torch.Tensor | None,
            attrs: list[int]) -> torch.Tensor:
    a = dict(zip(INT_ATTRS, attrs))
    tensors = dict(zip(WEIGHT_NAMES, (indices, codebook, perm, res_indices, res_codebook, outlier_indices,
                                      outlier_codebook, col_scale, col_bias, bias)))
    w = op.weight_from_node_inputs(
        {**a, "plugin_version": op.PLUGIN_VERSION},
        [tensors[n].cpu().numpy() for n in op.input_names(a)])
    W = dequant_tensors(torch_tensors(w, x.device), N=w.out_features, K=w.in_features,
                        n_out=w.num_outlier_cols, group_size=w.group_size)
    y = nn.functional.linear(x.float(), W)
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)


@vq_gemm.register_fake
def _(x, indices, codebook, perm, res_indices, res_codebook, outlier_indices, outlier_codebook,
      col_scale, col_bias, bias, attrs):
    return x.new_empty((*x.shape[:-1], attrs[INT_ATTRS.index("out_features")]))


class VQGemmLinear(nn.Module):
    """A quantized Linear holding its stored (packed) tensors as buffers; forward = the custom op."""

    def __init__(self, w: VQWeight, accuracy_level: int = 0):
        super().__init__()
        self.attrs = op.attributes(w, accuracy_level)
        self.in_features, self.out_features = w.in_features, w.out_features
        for name in WEIGHT_NAMES:
            t = getattr(w, name)
            self.register_buffer(name, None if t is None else torch.from_numpy(t.copy()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.vq2trt.vq_gemm(x, *(getattr(self, n) for n in WEIGHT_NAMES),
                                        [int(self.attrs[n]) for n in INT_ATTRS])

"""VQLinear: a Linear whose weight is a VQWeight, computed with the reference dequant.

Codebooks (and normalisation scales) are float32 Parameters so layer-wise
fine-tuning can train them; ``to_vqweight()`` rounds them back to the stored
fp16. Indices and the permutation are buffers; only distillation's index step
(vq2trt.index_step) moves main indices.
"""

from __future__ import annotations

import torch
from torch import nn

from vq2trt.config import index_bits
from vq2trt.format import VQWeight, pack_indices
from vq2trt.reference import dequant_tensors, torch_tensors


class _Gather(torch.autograd.Function):
    """table[idx] whose backward sums gradients with index_add_: torch's own backward of an index
    (index_put_ with accumulate) is ~10x slower on CPU and dominated distillation steps."""

    @staticmethod
    def forward(ctx, table, idx):                     # table [k, v], idx [R, c] int64
        ctx.save_for_backward(idx)
        ctx.k = table.shape[0]
        return table[idx]                             # [R, c, v]

    @staticmethod
    def backward(ctx, grad):                          # grad [R, c, v]
        (idx,) = ctx.saved_tensors
        v = grad.shape[-1]
        g = grad.new_zeros(ctx.k, v).index_add_(0, idx.reshape(-1), grad.reshape(-1, v))
        return g, None


def _gather(table, idx):
    return _Gather.apply(table, idx) if table.requires_grad and torch.is_grad_enabled() else table[idx]


_TRAINABLE = ("codebook", "res_codebook", "outlier_codebook", "col_scale", "col_bias")
_INDEX = ("perm", "indices", "res_indices", "outlier_indices")


class VQLinear(nn.Module):
    def __init__(self, w: VQWeight, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.in_features, self.out_features = w.in_features, w.out_features
        self.num_outlier_cols, self.group_size = w.num_outlier_cols, w.group_size
        self._template = w  # packed indices and shapes, reused by to_vqweight()
        t = torch_tensors(w)
        for name in _TRAINABLE:
            p = None if t[name] is None else nn.Parameter(t[name].float(), requires_grad=False)
            self.register_parameter(name, p)
        for name in _INDEX:  # unpacked once: dequant needs int64 indices
            self.register_buffer(name, t[name], persistent=False)
        # A Parameter (frozen unless tuned) so distillation can train it; stored as float32.
        bias = None if w.bias is None else nn.Parameter(torch.from_numpy(w.bias.copy()).float(), requires_grad=False)
        self.register_parameter("bias", bias)
        self._cache: torch.Tensor | None = None
        self._step_weight: torch.Tensor | None = None
        self._dtype = dtype

    def weight_float(self) -> torch.Tensor:
        """Dequantized weight [N, K], float32, exactly reference.dequantize's values."""
        t = {name: getattr(self, name) for name in _TRAINABLE + _INDEX}
        return dequant_tensors(t, N=self.out_features, K=self.in_features, n_out=self.num_outlier_cols,
                               group_size=self.group_size, gather=_gather)

    def begin_step(self) -> None:
        """Dequantize once for a whole optimizer step: forwards use a leaf copy of W whose .grad
        collects every micro-batch's dL/dW, and end_step() pushes that into the codebooks in one
        backward, instead of one dequantization and its backward per micro-batch."""
        self._cache = None  # the step will change what an inference forward must see
        with torch.no_grad():
            self._step_weight = self.weight_float().requires_grad_(True)

    def end_step(self) -> None:
        w, self._step_weight = self._step_weight, None
        if w is not None and w.grad is not None:
            self.weight_float().backward(w.grad)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Inference reuses the dequantized weight; anything that may train recomputes it.
        if self._step_weight is not None:
            W = self._step_weight
        elif self.training or torch.is_grad_enabled():
            self._cache = None
            W = self.weight_float()
        else:
            if self._cache is None or self._cache.device != x.device:
                self._cache = self.weight_float().to(x.device)
            W = self._cache
        y = nn.functional.linear(x.to(W.dtype), W)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.to(x.dtype)

    def set_trainable(self, on: bool) -> list[nn.Parameter]:
        """Codebooks and scales (what layer-wise fine-tuning trains); the bias stays as it is."""
        params = [p for p in (getattr(self, n) for n in _TRAINABLE) if p is not None]
        for p in params:
            p.requires_grad_(on)
        self._cache = None
        return params

    def trainable_named(self) -> list[tuple[str, nn.Parameter]]:
        """Every continuous stored tensor (codebooks, scales, bias), by name, for end-to-end tuning."""
        self._cache = None
        return [(n, getattr(self, n)) for n in _TRAINABLE + ("bias",) if getattr(self, n) is not None]

    def to_vqweight(self) -> VQWeight:
        """The stored form: codebooks and scales rounded to fp16, main indices as they are now
        (distillation's index step may have moved them; the others never change)."""
        base = self._template
        kw = {f: getattr(base, f) for f in VQWeight.TENSOR_FIELDS}
        kw["indices"] = pack_indices(self.indices.cpu().numpy(), index_bits(base.num_centroids))
        for name in _TRAINABLE:
            p = getattr(self, name)
            if p is not None:
                kw[name] = p.detach().cpu().to(torch.float16).numpy()
        if self.bias is not None:
            kw["bias"] = self.bias.detach().cpu().float().numpy()
        w = VQWeight(out_features=base.out_features, in_features=base.in_features,
                     num_outlier_cols=base.num_outlier_cols, **kw)
        w.validate()
        return w

    def extra_repr(self) -> str:
        w = self._template
        return (f"in_features={self.in_features}, out_features={self.out_features}, v={w.vector_len}, "
                f"k={w.num_centroids}, groups={w.num_groups}, outliers={w.num_outlier_cols}, "
                f"residual={w.res_codebook is not None}, bpw={w.bits_per_weight():.3f}")


def replace_linear(root: nn.Module, name: str, new: nn.Module) -> None:
    """Swap the submodule at dotted ``name`` for ``new``."""
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


"""Scalar baselines: round-to-nearest and GPTQ (Frantar et al., 2022) on the same grid.

Grid: per row and per group of ``group_size`` input columns, an asymmetric
``bits``-bit grid with an fp16 scale and a ``bits``-bit integer zero point
(what a GPTQ checkpoint stores). Both return the fake-quantized float weight.
"""

from __future__ import annotations

import time

import torch

from vq2trt.algo.hessian import inverse_cholesky, prepare_hessian, proxy_error


def scalar_bits_per_weight(bits: int, group_size: int) -> float:
    """All-in bits per weight of a scalar grid: the weight plus an fp16 scale and a bits-bit zero per group."""
    return bits + (16 + bits) / group_size


def _grid(x: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Grid of each row of x [N, g] -> (scale [N, 1] fp16-exact float32, zero [N, 1] integer-valued).

    The range is stretched to include 0 (as GPTQ's quantizer does) so that the
    zero point is an integer in [0, 2^bits - 1]. The scale is rounded to fp16
    before the zero point is derived from it, since only the fp16 value is stored.
    """
    maxq = 2**bits - 1
    xmin = x.min(1, keepdim=True).values.clamp(max=0)  # [N, 1]
    xmax = x.max(1, keepdim=True).values.clamp(min=0)  # [N, 1]
    scale = ((xmax - xmin) / maxq).clamp(max=65504.0).half().float()  # [N, 1]
    scale[scale == 0] = 1  # an all-zero row (or one below fp16 range): every weight rounds to the zero point
    zero = torch.round(-xmin / scale).clamp(0, maxq)  # [N, 1]
    return scale, zero


def _fake_quant(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    """Round x onto the grid and back: scale * (clamp(round(x / scale) + zero) - zero)."""
    q = torch.clamp(torch.round(x / scale) + zero, 0, 2**bits - 1)
    return scale * (q - zero)


def _check(W: torch.Tensor, bits: int, group_size: int) -> None:
    if W.ndim != 2:
        raise ValueError(f"scalar quantization: W must be [out_features, in_features], got {tuple(W.shape)}")
    if not 1 <= bits <= 8 or group_size < 1:
        raise ValueError(f"scalar quantization: need 1 <= bits <= 8 and group_size >= 1, got {bits}, {group_size}")


def rtn_quantize(W: torch.Tensor, bits: int, group_size: int) -> torch.Tensor:
    """Round-to-nearest on the grid of each row's group of ``group_size`` inputs (last group may be shorter)."""
    _check(W, bits, group_size)
    W = W.detach().float()  # [N, K]
    out = torch.empty_like(W)
    for lo in range(0, W.shape[1], group_size):
        Wg = W[:, lo:lo + group_size]  # [N, g]
        scale, zero = _grid(Wg, bits)
        out[:, lo:lo + group_size] = _fake_quant(Wg, scale, zero, bits)
    return out


def gptq_quantize(W: torch.Tensor, H: torch.Tensor, bits: int, group_size: int, block_size: int = 128,
                  damp: float = 0.01, act_order: bool = True, static_groups: bool = True
                  ) -> tuple[torch.Tensor, dict]:
    """GPTQ of W [N, K] against H = E[x xᵀ] [K, K]; returns (W_hat [N, K] float32, stats).

    act_order quantizes inputs by decreasing diag(H). With static_groups every
    group's grid is fixed from the original W before the loop, so groups stay
    contiguous in the original input order (what a grouped checkpoint can
    store) even though columns are visited out of order. Without it the grid of
    a group is fitted, as in the paper, to the already-updated weights when the
    loop reaches the group's first column (in visiting order).
    stats: proxy_err (tr(ΔW H ΔWᵀ)/tr(W H Wᵀ)), time_s, damp_retries.
    """
    t0 = time.perf_counter()
    _check(W, bits, group_size)
    N, K = W.shape
    if tuple(H.shape) != (K, K):
        raise ValueError(f"gptq_quantize: H has shape {tuple(H.shape)}, W [{N}, {K}] needs [{K}, {K}]")
    dev = W.device
    W0 = W.detach().float()                                # [N, K]
    H = H.detach().to(device=dev, dtype=torch.float64)     # [K, K]
    Hd, dead = prepare_hessian(H, damp)                    # [K, K], [K]
    W = W0.clone()
    W[:, dead] = 0

    grids = None
    if static_groups:
        grids = [_grid(W[:, lo:lo + group_size], bits) for lo in range(0, K, group_size)]

    if act_order:
        perm = torch.sort(torch.diagonal(H), descending=True, stable=True).indices  # [K]
    else:
        perm = torch.arange(K, device=dev)
    W = W[:, perm].contiguous()                            # [N, K] visiting order
    U, retries = inverse_cholesky(Hd[perm][:, perm], damp)
    U = U.float()                                          # [K, K] upper Cholesky factor of H⁻¹
    perm_l = perm.tolist()

    Q = torch.zeros_like(W)                                # [N, K]
    scale = zero = None
    for i1 in range(0, K, block_size):
        i2 = min(i1 + block_size, K)
        W1 = W[:, i1:i2]                                   # [N, b] view: updates land in W
        Err1 = torch.zeros_like(W1)                        # [N, b]
        for t in range(i2 - i1):
            j = i1 + t
            w = W1[:, t]                                   # [N]
            if static_groups:
                scale, zero = grids[perm_l[j] // group_size]
            elif j % group_size == 0:
                scale, zero = _grid(W[:, j:j + group_size], bits)
            q = _fake_quant(w[:, None], scale, zero, bits)[:, 0]  # [N]
            Q[:, j] = q
            err = (w - q) / U[j, j]                        # [N]
            W1[:, t + 1:] -= err[:, None] * U[j, None, j + 1:i2]
            Err1[:, t] = err
        if i2 < K:
            W[:, i2:] -= Err1 @ U[i1:i2, i2:]

    W_hat = torch.empty_like(Q)
    W_hat[:, perm] = Q
    stats = {"proxy_err": proxy_error(W_hat, W0, H), "time_s": time.perf_counter() - t0, "damp_retries": retries}
    return W_hat, stats

"""A synthetic Linear layer with a correlated Hessian, shared by the quantizer tests."""

from __future__ import annotations

import torch

from vq2trt.algo import HessianAccumulator


def correlated_layer(N: int = 128, K: int = 256, seed: int = 0):
    """W [N, K] and H = E[x xᵀ] of inputs x = z A: strong off-diagonal structure, diagonal spread over ~e^3."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(N, K, generator=g) * 0.05
    A = torch.randn(K, K, generator=g) / K**0.5 * torch.exp(3 * torch.rand(1, K, generator=g))
    acc = HessianAccumulator(K)
    for _ in range(4):
        acc.add_batch(torch.randn(1024, K, generator=g) @ A)
    return W, acc.finalize()

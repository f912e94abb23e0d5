"""The discrete half of distillation: move VQ main indices to codewords that lower the loss.

Distillation's continuous step trains codebooks and scales, a few thousand numbers per layer;
the indices hold nearly all of a layer's bits and stay where k-means and the layer-wise
second-order pass put them, which only knew each layer's own output. PV-tuning (AQLM's
follow-up) showed that revisiting codes against the end loss is what closes most of the
remaining gap at 2 bits. This is its linearised step in its simplest form:

For every vector of every VQLinear, the loss change of replacing its main codeword ``w`` by
``c`` is modelled to second order, ``g·(c - w) + ½ Σ κ (c - w)²``, with ``g`` dL/dW (which the
continuous step computes anyway, summed since the last index step) and ``κ`` a diagonal curvature
``κ_ij = Σ_t g_y,ti² · Σ_t x_tj²`` (the rank-one factorisation of the empirical Fisher
``Σ_t (g_y,ti x_tj)²`` of a Linear, cheap to collect with hooks), scaled up because the
empirical Fisher of a KL underestimates its curvature: its per-token gradients vanish as the
student nears the teacher while the Hessian does not. On SmolLM2 at 2.3 bits, moving a layer's
best 0.05-0.5 % of vectors on one batch, the model's predicted loss change matched the measured
one within 2x at a scale of 100 and overshot by 3-10x (and picked moves that raised the loss)
at 1. Each vector's best codeword is two small matmuls against the codebook. A layer proposes
its ``frac`` best-gaining vectors; how many of all layers' proposals are applied is searched by
the caller (distill._index_step) on the loss of fresh windows.

Only main indices move: residual and outlier codes are a small share of the bits, and a main
code change leaves the residual's contribution as it is, so the model above stays exact in it.
"""

from __future__ import annotations

import torch
from torch import nn

from vq2trt.nn import VQLinear

PREFILTER = 8  # vectors scored per vector that may move


class CurvatureHooks:
    """Σ_t x_tj² per input feature and Σ_t g_y,ti² per output feature of every VQLinear, collected
    in grad mode only (the teacher's and the check's no-grad forwards do not count),
    and dL/dW summed over the steps since the last reset: one step's 2,048 tokens give too noisy a
    gradient to choose codes by."""

    def __init__(self, model: nn.Module):
        self.layers = {name: m for name, m in model.named_modules() if isinstance(m, VQLinear)}
        self.sx: dict[str, torch.Tensor] = {}
        self.sg: dict[str, torch.Tensor] = {}
        self.grad: dict[str, torch.Tensor] = {}
        self._handles = [m.register_forward_hook(self._hook(name)) for name, m in self.layers.items()]

    def _hook(self, name: str):
        def fwd(m: VQLinear, inputs, out):
            if not (torch.is_grad_enabled() and out.requires_grad):
                return
            x = inputs[0].detach().float().reshape(-1, m.in_features)
            sx = (x * x).sum(0)
            self.sx[name] = sx if name not in self.sx else self.sx[name] + sx

            def bwd(g):
                g = g.detach().float().reshape(-1, m.out_features)
                sg = (g * g).sum(0)
                self.sg[name] = sg if name not in self.sg else self.sg[name] + sg
            out.register_hook(bwd)
        return fwd

    def add_gradients(self) -> None:
        """Add this step's dL/dW of every layer (its step weight's .grad, before end_step drops it)."""
        for name, m in self.layers.items():
            W = m._step_weight
            if W is not None and W.grad is not None:
                self.grad[name] = W.grad.detach().clone() if name not in self.grad else self.grad[name] + W.grad

    def reset(self) -> None:
        self.sx.clear()
        self.sg.clear()
        self.grad.clear()

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


@torch.no_grad()
def propose(m: VQLinear, G: torch.Tensor, sx: torch.Tensor, sg: torch.Tensor, frac: float,
            damp: float, curvature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """The ``frac`` share of ``m``'s main vectors whose best other codeword gains most.

    G: dL/dW [N, K] in W's layout; sx [K], sg [N] from CurvatureHooks; the curvature model is
    ``curvature * κ + damp * mean(κ)``.
    Returns (flat positions into m.indices, their new indices, each move's predicted loss change,
    most negative first), or None.
    """
    N, K, n_out, gs = m.out_features, m.in_features, m.num_outlier_cols, m.group_size
    cb_all = m.codebook.detach().float()                              # [G, k, v]
    n_groups, k, v = cb_all.shape
    idx = m.indices                                                   # [R, C]
    R, C = idx.shape
    s = m.col_scale.detach().float() if m.col_scale is not None else torch.ones(K, device=G.device)
    perm = m.perm
    # q (permuted, unscaled columns) is what the codebook reproduces: out[:, perm] = q * s[perm] + b.
    gq = (G.float() * s[None, :])[:, perm]                            # [N, K]
    kq = sg.float()[:, None] * (sx.float() * s * s)[perm][None, :]     # [N, K]
    kq = curvature * kq + damp * kq.mean()
    pad = R * v - N                                                   # rows past N are cut off: no gain, no cost
    gq = nn.functional.pad(gq[:, n_out:], (0, 0, 0, pad))             # [R*v, C]
    kq = nn.functional.pad(kq[:, n_out:], (0, 0, 0, pad))
    gvec = gq.reshape(R, v, C).permute(0, 2, 1).reshape(R * C, v)     # [R*C, v], a vector per row
    kvec = kq.reshape(R, v, C).permute(0, 2, 1).reshape(R * C, v)
    count = int(frac * R * C)
    if count == 0:
        return None
    # No codeword can gain more than the unconstrained optimum Σ g²/2κ of its vector: score only the
    # vectors with the largest such bound (the full [vectors, k] score is most of the step's cost).
    bound = (gvec * gvec / kvec.clamp_min(1e-30)).sum(-1)              # [R*C], 2x the bound
    if PREFILTER * count < bound.numel():
        cand = torch.topk(bound, PREFILTER * count).indices
    else:
        cand = torch.arange(bound.numel(), device=G.device)
    col = cand % C
    group = torch.div(col, gs, rounding_mode="floor")
    flat_idx = idx.reshape(-1)
    best = torch.empty_like(cand)
    gain = torch.empty(cand.shape, dtype=torch.float32, device=G.device)
    chunk = max(1, (1 << 22) // k)                                    # vectors per [chunk, k] score block
    for g in range(n_groups):
        sel = (group == g).nonzero().squeeze(1)
        if sel.numel() == 0:
            continue
        cb, cb2 = cb_all[g], cb_all[g] * cb_all[g]                    # [k, v]
        for a in range(0, sel.numel(), chunk):
            where = sel[a:a + chunk]
            vec = cand[where]
            cur = flat_idx[vec]
            gv, kv = gvec[vec], kvec[vec]
            w = cb[cur]                                               # [n, v]
            # g·(c - w) + ½ κ·(c - w)², dropping the terms without c: (g - κ w)·c + ½ κ·c²
            score = (gv - kv * w) @ cb.T + (0.5 * kv) @ cb2.T         # [n, k]
            here = score.gather(1, cur[:, None]).squeeze(1)
            val, arg = score.min(1)
            best[where], gain[where] = arg, val - here
    count = min(count, int((gain < 0).sum()))
    if count == 0:
        return None
    val, order = torch.topk(gain, count, largest=False)               # most negative first
    return cand[order], best[order], val


def apply(m: VQLinear, pos: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """Write ``new`` main indices at flat ``pos``; returns the old values (for a revert)."""
    flat = m.indices.view(-1)
    old = flat[pos].clone()
    flat[pos] = new
    m._cache = None
    return old

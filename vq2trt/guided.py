"""Output-aware token weights for GuidedQuant-style Hessians (Kim et al., 2025).

For a Linear y = W x, the end-loss increase of a small ΔW is, to second order
(Fisher / Gauss-Newton), Σ_t Σ_i (∂L/∂y_{t,i})² (ΔW_i x_t)². A Hessian shared by
all output rows (what the VPTQ and GPTQ loops take) keeps that form only with
one weight per token, s_t = ||∂L/∂y_t||² summed over the Linear's outputs:
H_g = Σ_t s_t x_t x_tᵀ / Σ_t s_t. This module computes s_t once, on the float
model, for every Linear to be quantized; quantize() then weights the Hessian
of each Linear with its own s_t.

L is the next-token cross-entropy summed (not averaged) over the calibration
window's tokens, so a token's weight does not depend on the batch size or the
window length. The last token of a window predicts nothing: its weight is 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm


def output_gradient_weights(model: nn.Module, calib: torch.Tensor, names, *, batch_size: int = 8,
                            device: str | torch.device | None = None, progress: bool = True) -> dict[str, torch.Tensor]:
    """s_t = ||∂L/∂y_t||² for each Linear named in ``names``: {name: float32 [num_samples, seqlen]} on the CPU.

    calib: int64 token ids [num_samples, seqlen]. Runs forward and backward of
    ``model`` as it is (put it in eval mode first) on ``device`` (default: where
    the model is; the whole model is moved there for the pass and back after),
    ``batch_size`` windows at a time, so at most one chunk's graph is alive.
    No parameter gradient is formed: requires_grad is switched off for the pass
    and restored afterwards; the graph starts at the input embeddings.
    """
    names = list(names)
    modules = dict(model.named_modules())
    bad = [n for n in names if not isinstance(modules.get(n), nn.Linear)]
    if bad:
        raise ValueError(f"output_gradient_weights: not Linear modules of the model: {bad[:4]}")
    if calib.ndim != 2 or calib.shape[1] < 2:
        raise ValueError(f"output_gradient_weights: calibration ids must be [num_samples, seqlen >= 2], "
                         f"got {tuple(calib.shape)}")
    home = next(model.parameters()).device
    device = torch.device(device) if device is not None else home
    embed = model.get_input_embeddings()
    chunk: dict[str, torch.Tensor] = {}  # name -> float32 [B, T] of the chunk being processed
    out: dict[str, list[torch.Tensor]] = {n: [] for n in names}

    def on_forward(name):
        def save_grad(g):  # g: ∂L/∂y [B, T, N]
            if name in chunk:
                raise RuntimeError(f"output_gradient_weights: {name} ran more than once in one forward pass; "
                                   f"its tokens have no single output gradient")
            chunk[name] = g.detach().float().square().sum(-1).cpu()  # [B, T]

        def hook(_m, _args, y):
            y.register_hook(save_grad)
        return hook

    params = list(model.parameters())
    was_trainable = [p.requires_grad for p in params]
    handles = [modules[n].register_forward_hook(on_forward(n)) for n in names]
    try:
        if device != home:
            model.to(device)
        for p in params:
            p.requires_grad_(False)
        starts = range(0, calib.shape[0], batch_size)
        for i in tqdm(starts, desc="output gradients", unit="batch", disable=not progress):
            ids = calib[i:i + batch_size].to(device)                  # [B, T]
            with torch.enable_grad():
                emb = embed(ids).detach().requires_grad_(True)        # [B, T, D]
                logits = model(inputs_embeds=emb, use_cache=False).logits  # [B, T, V]
                V = logits.shape[-1]
                loss = F.cross_entropy(logits[:, :-1].reshape(-1, V).float(), ids[:, 1:].reshape(-1),
                                       reduction="sum")
                loss.backward()
            del emb, logits, loss
            for n in names:
                if n not in chunk:
                    raise RuntimeError(f"output_gradient_weights: {n} received no gradient; it does not "
                                       f"feed the model's logits")
                out[n].append(chunk.pop(n))
    finally:
        for h in handles:
            h.remove()
        for p, t in zip(params, was_trainable):
            p.requires_grad_(t)
        if device != home:
            model.to(home)
    return {n: torch.cat(v) for n, v in out.items()}  # name -> [num_samples, seqlen]

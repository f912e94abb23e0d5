"""Layer-wise fine-tuning: train a decoder layer's codebooks and norm weights
so its outputs match the float layer's on the calibration inputs (MSE).

The VPTQ paper describes this step; its reference code never released it.
Indices stay fixed: only continuous parameters move, so the stored format and
bit rate are unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def finetune_layer(forward: Callable, batches: list, targets: list[torch.Tensor], params: list[torch.nn.Parameter],
                   *, steps: int, lr: float, seed: int = 0) -> dict:
    """Adam on mean-squared error against ``targets``; one calibration batch per step.

    forward(hidden, kwargs) -> output; batches: [(hidden [b, L, d], kwargs)];
    targets: the float layer's outputs for the same batches.
    Returns losses before and after (mean over all batches), and keeps the
    better of the two parameter sets so fine-tuning can never make a layer worse.
    """
    if steps <= 0 or not params:
        return {"loss_before": None, "loss_after": None, "steps": 0}
    gen = torch.Generator().manual_seed(seed)
    start = [p.detach().clone() for p in params]

    def full_loss() -> float:
        with torch.no_grad():
            return float(sum(torch.mean((forward(h, kw).float() - t.float()) ** 2)
                             for (h, kw), t in zip(batches, targets)) / len(batches))

    before = full_loss()
    opt = torch.optim.Adam(params, lr=lr)
    with torch.enable_grad():
        for _ in range(steps):
            b = int(torch.randint(len(batches), (1,), generator=gen))
            h, kw = batches[b]
            loss = torch.mean((forward(h, kw).float() - targets[b].float()) ** 2)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    after = full_loss()
    if after > before:
        with torch.no_grad():
            for p, s in zip(params, start):
                p.copy_(s)
        after = before
    return {"loss_before": before, "loss_after": after, "steps": steps}

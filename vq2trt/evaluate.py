"""Perplexity over non-overlapping windows (the GPTQ / VPTQ papers' protocol) and greedy generation."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm


class EvalError(ValueError):
    """Evaluation inputs that cannot work; the message says what was given and what is needed."""


def _model_device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def perplexity(model, ids: torch.Tensor, ctx: int = 2048, windows: int | None = None, progress: bool = True,
               device=None) -> dict:
    """Perplexity of ``model`` on ``ids`` [1, T] (or [T]).

    The sequence is cut from its start into non-overlapping windows of ``ctx`` tokens (a trailing
    partial window is dropped); each window is a separate forward pass scoring its ctx - 1
    next-token predictions. ppl = exp(mean NLL over all predicted tokens).
    Returns ``{"ppl", "nll" (mean, nats), "tokens" (predictions scored), "windows"}``.
    """
    if ids.dim() == 2 and ids.shape[0] == 1:
        ids = ids[0]
    if ids.dim() != 1:
        raise EvalError(f"perplexity expects token ids of shape [1, T] or [T]; got {tuple(ids.shape)}")
    if ctx < 2:
        raise EvalError(f"context length must be >= 2 to predict anything; got {ctx}")
    T = ids.numel()
    available = T // ctx
    if available == 0:
        raise EvalError(f"text has {T} tokens, fewer than one window of {ctx}; use a shorter context or more text")
    if windows is None:
        windows = available
    elif not 1 <= windows <= available:
        raise EvalError(f"asked for {windows} windows of {ctx} tokens; the text's {T} tokens hold {available}")
    device = torch.device(device) if device is not None else _model_device(model)

    was_training = model.training
    model.eval()
    nll_sum, count = 0.0, 0
    bar = tqdm(range(windows), desc=f"perplexity ctx={ctx}", unit="win", disable=None if progress else True)
    try:
        with torch.inference_mode():
            for w in bar:
                x = ids[w * ctx:(w + 1) * ctx].unsqueeze(0).to(device)            # [1, ctx]
                logits = model(x, use_cache=False).logits[0, :-1].float()         # [ctx-1, V]
                nll_sum += F.cross_entropy(logits, x[0, 1:], reduction="sum").item()
                count += ctx - 1
                bar.set_postfix(ppl=f"{math.exp(nll_sum / count):.3f}")
    finally:
        bar.close()
        model.train(was_training)
    nll = nll_sum / count
    return {"ppl": math.exp(nll), "nll": nll, "tokens": count, "windows": windows}


def generate_greedy(model, tokenizer, prompt: str, max_new_tokens: int = 32) -> str:
    """The greedy continuation of ``prompt`` (new text only, special tokens dropped)."""
    if tokenizer is None:
        raise EvalError("generation needs a tokenizer; the model was loaded without one")
    enc = tokenizer(prompt, return_tensors="pt")
    input_ids = enc["input_ids"].to(_model_device(model))                        # [1, P]
    mask = enc.get("attention_mask")
    kwargs = {"attention_mask": mask.to(input_ids.device)} if mask is not None else {}
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is None:
        pad = getattr(tokenizer, "eos_token_id", None)
    with torch.inference_mode():
        out = model.generate(input_ids, do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=pad,
                             **kwargs)                                            # [1, P + new]
    return tokenizer.decode(out[0, input_ids.shape[1]:], skip_special_tokens=True)

"""Quantizing the output head (lm_head), the stage after the last decoder layer.

On small models the head is the largest matrix (SmolLM2-135M: 49152 x 576, 113 MB in float32
against 27 MB for all its 2-bit decoder Linears) and one decode step reads all of it, so a
float head dominates both the exported folder and the decode time. The head gets its own VQ
format (``modules["lm_head"]``; `vq2trt quantize --head PRESET`), usually more bits than the
decoder Linears: every logit depends on it.

Its Hessian is collected on the final norm's outputs of the already quantized prefix, as for any
other Linear. A tied head (tie_word_embeddings) is untied first: the embedding table stays a float
tensor of its own (the exporter can store it in fp16 or int8, vq2trt.export.embedding), so a
checkpoint with a quantized head says tie_word_embeddings = false.
"""

from __future__ import annotations

import dataclasses
import time

import torch
from torch import nn

from vq2trt.algo import HessianAccumulator, vptq_quantize
from vq2trt.config import PRESETS, ConfigError, QuantConfig
from vq2trt.nn import VQLinear, replace_linear

HEAD = "lm_head"
# The head's seed is derived like a decoder Linear's, from a layer index no decoder layer has.
HEAD_LAYER_INDEX = 1_000_000


def quantizes_head(config: QuantConfig) -> bool:
    """True when the config quantizes lm_head: it has a ``modules`` entry and is not skipped."""
    return HEAD in config.modules and not any(s in HEAD for s in config.skip_modules)


def with_head(config: QuantConfig, preset: str | None) -> QuantConfig:
    """``config`` that also quantizes lm_head in the format of VPTQ preset ``preset`` (None: unchanged)."""
    if preset is None:
        return config
    if preset not in PRESETS or PRESETS[preset].get("method", "vptq") != "vptq":
        vq = sorted(n for n, f in PRESETS.items() if f.get("method", "vptq") == "vptq")
        raise ConfigError(f"head format {preset!r} is not a VPTQ preset; expected one of {vq}")
    if config.method != "vptq":
        raise ConfigError(f"a quantized head needs method 'vptq', the config has {config.method!r}")
    fields = QuantConfig(**PRESETS[preset]).format_fields()
    return dataclasses.replace(config, modules={**config.modules, HEAD: fields},
                               skip_modules=[s for s in config.skip_modules if s not in HEAD])


def untie_head(model: nn.Module) -> None:
    """Give lm_head its own weight so that quantizing it leaves the embedding table alone."""
    head = model.get_submodule(HEAD)
    emb = model.get_input_embeddings()
    if getattr(model.config, "tie_word_embeddings", False) or head.weight is emb.weight:
        head.weight = nn.Parameter(head.weight.detach().clone(), requires_grad=False)
        model.config.tie_word_embeddings = False


def head_inputs(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """What lm_head sees for the last decoder layer's output ``hidden`` [B, T, hidden]."""
    return model.model.norm(hidden)


def quantize_head(model: nn.Module, config: QuantConfig, batches, device) -> tuple[object, float, float]:
    """Replace lm_head with a VQLinear quantized against the final norm's outputs of ``batches``
    (the last decoder layer's outputs, [(hidden, kwargs)]). Returns (VQWeight, proxy error, seconds)."""
    t0 = time.perf_counter()
    untie_head(model)
    head = model.get_submodule(HEAD)
    norm_home = next(model.model.norm.parameters()).device
    model.model.norm.to(device)
    acc = HessianAccumulator(head.in_features, device=device)
    with torch.no_grad():
        for hidden, _ in batches:
            acc.add_batch(head_inputs(model, hidden.to(device)))
    model.model.norm.to(norm_home)
    W = head.weight.detach().float().to(device)
    bias = None if head.bias is None else head.bias.detach().float()
    seed = (config.seed * 1_000_003 + HEAD_LAYER_INDEX * 97) % (2**31 - 1)
    w, stats = vptq_quantize(W, acc.finalize(), config.for_module(HEAD), bias=bias, seed=seed)
    replace_linear(model, HEAD, VQLinear(w, dtype=head.weight.dtype).to(head.weight.device))
    return w, float(stats["proxy_err"]), time.perf_counter() - t0

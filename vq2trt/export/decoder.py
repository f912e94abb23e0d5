"""A LLaMA-family decoder with an explicit KV cache, written for ONNX export.

It reuses the HF model's own modules and parameters (embeddings, RMSNorms, MLPs, projections)
and re-states only what export needs spelled out: rotary embedding from position_ids, past/present
key-value tensors, and a mask built from attention_mask and positions. Tests hold its logits to
the HF model's.

Graph interface (names follow the ONNX Runtime GenAI convention):
  input_ids        int64  [batch, seq]
  attention_mask   int64  [batch, past + seq]    1 = attend, 0 = padding
  position_ids     int64  [batch, seq]
  past_key_values.{i}.key / .value   DT [batch, kv_heads, past, head_dim]
  logits           float32 [batch, seq, vocab]
  present.{i}.key / .value           DT [batch, kv_heads, past + seq, head_dim]

DT is the compute dtype (`dtype`: float32 by default, float16 or bfloat16), so that TensorRT can
build a strongly typed engine from the graph. In DT: hidden states, float weights (embeddings,
norms, unquantized Linears), VQGemm X/Y, rotary cos/sin and the KV cache. RMSNorm's variance
(HF's own module) and the masked softmax compute in float32 and cast back, as HF does; the mask
is float32 and added to float32 scores, so no masked score overflows to -inf. VQGemm weight inputs
keep their stored dtypes (int32 indices, fp16 codebooks, fp32 bias). Logits are always float32
(cast at the end) so that perplexity and sampling downstream are unchanged. With float32 no cast
is emitted: the graph is the one exported before `dtype` existed.
"""

from __future__ import annotations

import torch
from torch import nn


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


# basic: opset-18 ops everywhere (TensorRT, any runtime); fused: opset-23 RMSNormalization,
# RotaryEmbedding and Attention nodes (export/fused.py), ~4x fewer nodes for ONNX Runtime.
OPS = ("basic", "fused")

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """torch dtype of a compute dtype given by name ("float16") or as a torch dtype."""
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"export dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        return DTYPES[dtype]
    if dtype not in DTYPES.values():
        raise ValueError(f"export dtype must be one of {', '.join(DTYPES)}, got {dtype}")
    return dtype


class ExportDecoder(nn.Module):
    """``dtype`` other than float32 casts the float parameters of ``hf_model`` IN PLACE (pass a
    copy, as onnx_export.prepare does); VQGemmLinear buffers are left as stored."""

    def __init__(self, hf_model: nn.Module, dtype: str | torch.dtype = torch.float32, ops: str = "basic"):
        super().__init__()
        if ops not in OPS:
            raise ValueError(f"export ops must be one of {', '.join(OPS)}, got {ops!r}")
        self.dtype, self.ops = resolve_dtype(dtype), ops
        if ops == "fused" and self.dtype != torch.float32:
            # float16/bfloat16 graphs are for TensorRT, which builds from the basic graph; a fused
            # one in a low dtype has no runtime here to be tested against.
            raise ValueError(f"export ops 'fused' is float32 only, got dtype {self.dtype}; use ops 'basic'")
        if self.dtype != torch.float32:
            for p in hf_model.parameters():          # VQGemmLinear holds buffers only: untouched
                if p.is_floating_point():
                    p.data = p.data.to(self.dtype)
        cfg = hf_model.config
        inner = hf_model.model
        self.embed_tokens, self.layers, self.norm = inner.embed_tokens, inner.layers, inner.norm
        self.lm_head = hf_model.lm_head
        self.num_layers = cfg.num_hidden_layers
        self.num_heads, self.num_kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        rotary = inner.rotary_emb
        self.register_buffer("inv_freq", rotary.inv_freq.detach().float().clone(), persistent=False)
        self.attention_scaling = float(rotary.attention_scaling)

    # names of the graph's inputs and outputs, in order
    def input_names(self) -> list[str]:
        kv = [f"past_key_values.{i}.{t}" for i in range(self.num_layers) for t in ("key", "value")]
        return ["input_ids", "attention_mask", "position_ids", *kv]

    def output_names(self) -> list[str]:
        kv = [f"present.{i}.{t}" for i in range(self.num_layers) for t in ("key", "value")]
        return ["logits", *kv]

    def _norm(self, norm: nn.Module, h):
        if self.ops == "basic":
            return norm(h)
        return nn.functional.rms_norm(h, (h.shape[-1],), norm.weight, norm.variance_epsilon)

    def _fused_attention(self, attn: nn.Module, h, cos, sin, mask, past_k, past_v):
        from vq2trt.export.fused import attention, rotary

        q = rotary(attn.q_proj(h), cos, sin, self.num_heads)
        k = rotary(attn.k_proj(h), cos, sin, self.num_kv_heads)
        y, k, v = attention(q, k, attn.v_proj(h), mask, past_k, past_v, self.num_heads, self.num_kv_heads,
                            self.head_dim ** -0.5)
        return attn.o_proj(y), k, v

    def _attention(self, attn: nn.Module, h, cos, sin, mask, past_k, past_v):
        if self.ops == "fused":
            return self._fused_attention(attn, h, cos, sin, mask, past_k, past_v)
        B, S, _ = h.shape                                            # h [B, S, hidden]
        q = attn.q_proj(h).view(B, S, self.num_heads, self.head_dim).transpose(1, 2)     # [B, H, S, d]
        k = attn.k_proj(h).view(B, S, self.num_kv_heads, self.head_dim).transpose(1, 2)  # [B, Hkv, S, d]
        v = attn.v_proj(h).view(B, S, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        k = torch.cat([past_k, k], dim=2)                            # [B, Hkv, T, d]
        v = torch.cat([past_v, v], dim=2)
        rep = self.num_heads // self.num_kv_heads
        kr = k.repeat_interleave(rep, dim=1)                         # [B, H, T, d]
        vr = v.repeat_interleave(rep, dim=1)
        scores = torch.matmul(q, kr.transpose(2, 3)) * (self.head_dim ** -0.5)           # [B, H, S, T]
        if self.dtype == torch.float32:
            probs = torch.softmax(scores + mask, dim=-1)
        else:   # mask and softmax in float32 (finite masked scores, HF's softmax precision)
            probs = torch.softmax(scores.float() + mask, dim=-1).to(self.dtype)
        out = torch.matmul(probs, vr).transpose(1, 2).reshape(B, S, self.num_heads * self.head_dim)
        return attn.o_proj(out), k, v

    def forward(self, input_ids, attention_mask, position_ids, *past):
        h = self.embed_tokens(input_ids)                             # [B, S, hidden]
        S, T = input_ids.shape[1], attention_mask.shape[1]
        freqs = position_ids[..., None].float() * self.inv_freq      # [B, S, d/2]
        if self.ops == "fused":                                      # RotaryEmbedding takes the half
            cos, sin = freqs.cos() * self.attention_scaling, freqs.sin() * self.attention_scaling
        else:
            emb = torch.cat([freqs, freqs], dim=-1)
            cos = (emb.cos() * self.attention_scaling)[:, None]      # [B, 1, S, d]
            sin = (emb.sin() * self.attention_scaling)[:, None]
        if self.dtype != torch.float32:
            cos, sin = cos.to(self.dtype), sin.to(self.dtype)
        # query i sits at absolute index T - S + i; it may see key j <= that index if unmasked
        q_idx = torch.arange(S, device=h.device)[:, None] + (T - S)
        causal = torch.arange(T, device=h.device)[None, :] <= q_idx                  # [S, T]
        allowed = causal[None, None] & (attention_mask[:, None, None, :] > 0)        # [B, 1, S, T]
        mask = torch.where(allowed, 0.0, torch.finfo(torch.float32).min)
        presents = []
        for i, layer in enumerate(self.layers):
            a, k, v = self._attention(layer.self_attn, self._norm(layer.input_layernorm, h), cos, sin, mask,
                                      past[2 * i], past[2 * i + 1])
            h = h + a
            h = h + layer.mlp(self._norm(layer.post_attention_layernorm, h))
            presents += [k, v]
        logits = self.lm_head(self._norm(self.norm, h))
        if self.dtype != torch.float32:
            logits = logits.float()
        return (logits, *presents)

    def empty_past(self, batch: int, length: int = 0, dtype=None) -> list[torch.Tensor]:
        """Zero key/values in the compute dtype (or ``dtype``)."""
        shape = (batch, self.num_kv_heads, length, self.head_dim)
        dtype = self.dtype if dtype is None else dtype
        return [torch.zeros(shape, dtype=dtype) for _ in range(2 * self.num_layers)]

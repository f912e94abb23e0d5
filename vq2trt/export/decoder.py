"""A LLaMA-family decoder with an explicit KV cache, written for ONNX export.

It reuses the HF model's own modules and parameters (embeddings, RMSNorms, MLPs, projections)
and re-states only what export needs spelled out: rotary embedding from position_ids, past/present
key-value tensors, and a mask built from attention_mask and positions (a sliding window per layer
where the family has one: the whole KV cache is kept and the window is a mask). What the supported
architectures change (vq2trt.families: q/k/v bias, fused qkv, q/k norms, Gemma's offset norms,
scaled embedding, soft-capping, sandwich norms, per-layer-type rotary) is read from the family.
Tests hold its logits to the HF model's.

Graph interface (names follow the ONNX Runtime GenAI convention):
  input_ids        int64  [batch, seq]
  attention_mask   int64  [batch, past + seq]    1 = attend, 0 = padding
  position_ids     int64  [batch, seq]
  past_key_values.{i}.key / .value   DT [batch, kv_heads, past, head_dim]
  logits           float32 [batch, seq, vocab]; with logits="last" [batch, 1, vocab]
  present.{i}.key / .value           DT [batch, kv_heads, past + seq, head_dim]

DT is the compute dtype (`dtype`: float32 by default, float16 or bfloat16), so that TensorRT can
build a strongly typed engine from the graph. In DT: hidden states, float weights (embeddings,
norms, unquantized Linears), VQGemm X/Y, rotary cos/sin and the KV cache. RMSNorm's variance
(HF's own module) and the masked softmax compute in float32 and cast back, as HF does; the mask
is float32 and added to float32 scores, so no masked score overflows to -inf. VQGemm weight inputs
keep their stored dtypes (int32 indices, fp16 codebooks, fp32 bias). Logits are always float32
(cast at the end) so that perplexity and sampling downstream are unchanged. With float32 no cast
is emitted: the graph is the one exported before `dtype` existed.

``logits="last"`` applies the final norm and lm_head to the last position only: generation reads
nothing else, and for a 128-token prompt the head over every position was a quarter of prefill
(SmolLM2: 49152 x 576 per token, as much as 7 decoder layers). Perplexity needs every position,
so "all" stays the default; llama.cpp's prompt processing computes the last position's only.
"""

from __future__ import annotations

import torch
from torch import nn

from vq2trt import families


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


# basic: opset-18 ops everywhere (TensorRT, any runtime); fused: opset-23 RMSNormalization,
# RotaryEmbedding and Attention nodes (export/fused.py), ~4x fewer nodes for ONNX Runtime; ort: the
# fused graph with ONNX Runtime's contrib ops (export/ort_contrib.py: GroupQueryAttention, whose KV
# cache can be one buffer shared by past and present, and SkipSimplifiedLayerNormalization).
# PyTorch computes ort exports as fused ones.
OPS = ("basic", "fused", "ort")

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

LOGITS = ("all", "last")


def check_logits(logits: str) -> str:
    if logits not in LOGITS:
        raise ValueError(f"export logits must be one of {', '.join(LOGITS)}, got {logits!r}")
    return logits


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """torch dtype of a compute dtype given by name ("float16") or as a torch dtype."""
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"export dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        return DTYPES[dtype]
    if dtype not in DTYPES.values():
        raise ValueError(f"export dtype must be one of {', '.join(DTYPES)}, got {dtype}")
    return dtype


class _Lookup(nn.Module):
    """A plain row lookup over the HF embedding's own Parameter (so a tied head stays tied): the
    family's embedding scale is applied by the decoder, also after compact_embedding swaps this."""

    def __init__(self, emb: nn.Embedding):
        super().__init__()
        self.weight = emb.weight
        self.num_embeddings, self.embedding_dim = emb.num_embeddings, emb.embedding_dim

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return nn.functional.embedding(ids, self.weight)


def _eps(norm: nn.Module) -> float:
    return float(norm.variance_epsilon if hasattr(norm, "variance_epsilon") else norm.eps)


class ExportDecoder(nn.Module):
    """``dtype`` other than float32 casts the float parameters of ``hf_model`` IN PLACE (pass a
    copy, as onnx_export.prepare does); VQGemmLinear buffers are left as stored. What differs
    between architectures comes from vq2trt.families; an unsupported one raises UnsupportedModelError."""

    def __init__(self, hf_model: nn.Module, dtype: str | torch.dtype = torch.float32, ops: str = "basic",
                 logits: str = "all"):
        super().__init__()
        if ops not in OPS:
            raise ValueError(f"export ops must be one of {', '.join(OPS)}, got {ops!r}")
        self.dtype, self.ops, self.logits = resolve_dtype(dtype), ops, check_logits(logits)
        if ops != "basic" and self.dtype != torch.float32:
            # float16/bfloat16 graphs are for TensorRT, which builds from the basic graph; a fused
            # one in a low dtype has no runtime here to be tested against.
            raise ValueError(f"export ops '{ops}' is float32 only, got dtype {self.dtype}; use ops 'basic'")
        cfg = hf_model.config
        self.family = fam = families.check_config(cfg)
        if self.dtype != torch.float32:
            for p in hf_model.parameters():          # VQGemmLinear holds buffers only: untouched
                if p.is_floating_point():
                    p.data = p.data.to(self.dtype)
        inner = hf_model.model
        self.embed_tokens, self.layers, self.norm = inner.embed_tokens, inner.layers, inner.norm
        self.embed_scale = None
        if fam.scaled_embedding:
            # HF multiplies by embed_scale.to(weight dtype): sqrt(hidden) rounded to the compute dtype
            self.embed_scale = float(inner.embed_tokens.embed_scale.to(self.dtype))
            self.embed_tokens = _Lookup(inner.embed_tokens)
        self.lm_head = hf_model.lm_head
        self.num_layers = cfg.num_hidden_layers
        self.max_positions = getattr(cfg, "max_position_embeddings", None)     # ort: rotary table length
        self.num_heads, self.num_kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.windows = families.sliding_windows(cfg)
        self.scaling = [float(layer.self_attn.scaling) for layer in self.layers]   # Gemma: query_pre_attn_scalar
        self.attn_softcap = float(getattr(cfg, "attn_logit_softcapping", None) or 0) if fam.attn_softcap else 0.0
        self.final_softcap = float(getattr(cfg, "final_logit_softcapping", None) or 0) if fam.final_softcap else 0.0
        self._rope_keys = families.layer_types(cfg)
        rotary = inner.rotary_emb
        self.attention_scaling: dict[str | None, float] = {}
        for key in dict.fromkeys(self._rope_keys):
            prefix = f"{key}_" if key else ""
            inv_freq = getattr(rotary, f"{prefix}inv_freq").detach().float().clone()
            if 2 * inv_freq.numel() != self.head_dim:
                raise families.UnsupportedModelError(
                    f"{fam.name}: partial rotary embedding (rotary dim {2 * inv_freq.numel()} of head_dim "
                    f"{self.head_dim}) is not supported")
            self.register_buffer(self._rope_buffer(key), inv_freq, persistent=False)
            self.attention_scaling[key] = float(getattr(rotary, f"{prefix}attention_scaling"))

    @staticmethod
    def _rope_buffer(key: str | None) -> str:
        return f"{key}_inv_freq" if key else "inv_freq"

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
        # RMSNormalization takes the scale as given: Gemma's (1 + w) is folded into a constant
        w = norm.weight + 1.0 if self.family.offset_norm else norm.weight
        return nn.functional.rms_norm(h, (h.shape[-1],), w, _eps(norm))

    def _qkv(self, attn: nn.Module, h):
        """q [B, S, H*d], k and v [B, S, Hkv*d], q/k normalised per head where the family does so."""
        if len(self.family.qkv) == 1:                                # Phi-3: one [q; k; v] Linear
            qkv = getattr(attn, self.family.qkv[0])(h)
            nq, nk = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
            q, k, v = qkv[..., :nq], qkv[..., nq:nq + nk], qkv[..., nq + nk:]
        else:
            q, k, v = (getattr(attn, n)(h) for n in self.family.qkv)
        if self.family.qk_norm:
            B, S, _ = h.shape
            q = self._norm(attn.q_norm, q.view(B, S, self.num_heads, self.head_dim)).reshape(B, S, -1)
            k = self._norm(attn.k_norm, k.view(B, S, self.num_kv_heads, self.head_dim)).reshape(B, S, -1)
        return q, k, v

    def _fused_attention(self, attn: nn.Module, h, cos, sin, mask, past_k, past_v, scale):
        from vq2trt.export.fused import attention, rotary

        q, k, v = self._qkv(attn, h)
        q = rotary(q, cos, sin, self.num_heads)
        k = rotary(k, cos, sin, self.num_kv_heads)
        y, k, v = attention(q, k, v, mask, past_k, past_v, self.num_heads, self.num_kv_heads, scale,
                            self.attn_softcap)
        return attn.o_proj(y), k, v

    def _attention(self, attn: nn.Module, h, cos, sin, mask, past_k, past_v, scale):
        if self.ops != "basic":
            return self._fused_attention(attn, h, cos, sin, mask, past_k, past_v, scale)
        B, S, _ = h.shape                                            # h [B, S, hidden]
        q, k, v = self._qkv(attn, h)
        q = q.view(B, S, self.num_heads, self.head_dim).transpose(1, 2)     # [B, H, S, d]
        k = k.view(B, S, self.num_kv_heads, self.head_dim).transpose(1, 2)  # [B, Hkv, S, d]
        v = v.view(B, S, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        k = torch.cat([past_k, k], dim=2)                            # [B, Hkv, T, d]
        v = torch.cat([past_v, v], dim=2)
        rep = self.num_heads // self.num_kv_heads
        kr = k.repeat_interleave(rep, dim=1)                         # [B, H, T, d]
        vr = v.repeat_interleave(rep, dim=1)
        scores = torch.matmul(q, kr.transpose(2, 3)) * scale         # [B, H, S, T]
        if self.attn_softcap:                                        # before the mask, as HF and ONNX do
            scores = torch.tanh(scores / self.attn_softcap) * self.attn_softcap
        if self.dtype == torch.float32:
            probs = torch.softmax(scores + mask, dim=-1)
        else:   # mask and softmax in float32 (finite masked scores, HF's softmax precision)
            probs = torch.softmax(scores.float() + mask, dim=-1).to(self.dtype)
        out = torch.matmul(probs, vr).transpose(1, 2).reshape(B, S, self.num_heads * self.head_dim)
        return attn.o_proj(out), k, v

    def _rope(self, position_ids, key):
        freqs = position_ids[..., None].float() * getattr(self, self._rope_buffer(key))    # [B, S, d/2]
        scaling = self.attention_scaling[key]
        if self.ops != "basic":                                      # RotaryEmbedding takes the half
            cos, sin = freqs.cos() * scaling, freqs.sin() * scaling
        else:
            emb = torch.cat([freqs, freqs], dim=-1)
            cos, sin = (emb.cos() * scaling)[:, None], (emb.sin() * scaling)[:, None]      # [B, 1, S, d]
        if self.dtype != torch.float32:
            cos, sin = cos.to(self.dtype), sin.to(self.dtype)
        return cos, sin

    def _masks(self, attention_mask, S: int, device) -> dict[int | None, torch.Tensor]:
        """Additive float32 masks [B, 1, S, T] by sliding window (None: full causal)."""
        T = attention_mask.shape[1]
        # query i sits at absolute index T - S + i; it may see key j <= that index if unmasked
        q_idx = torch.arange(S, device=device)[:, None] + (T - S)
        k_idx = torch.arange(T, device=device)[None, :]
        pad = attention_mask[:, None, None, :] > 0                   # [B, 1, 1, T]
        masks = {}
        for w in dict.fromkeys(self.windows):
            allowed = k_idx <= q_idx                                 # [S, T]
            if w is not None:                                        # HF: kv_idx > q_idx - window
                allowed = allowed & (k_idx > q_idx - w)
            masks[w] = torch.where(allowed[None, None] & pad, 0.0, torch.finfo(torch.float32).min)
        return masks

    def forward(self, input_ids, attention_mask, position_ids, *past):
        h = self.embed_tokens(input_ids)                             # [B, S, hidden]
        if self.embed_scale is not None:
            h = h * self.embed_scale
        ropes = {key: self._rope(position_ids, key) for key in dict.fromkeys(self._rope_keys)}
        masks = self._masks(attention_mask, input_ids.shape[1], h.device)
        presents = []
        for i, layer in enumerate(self.layers):
            cos, sin = ropes[self._rope_keys[i]]
            a, k, v = self._attention(layer.self_attn, self._norm(layer.input_layernorm, h), cos, sin,
                                      masks[self.windows[i]], past[2 * i], past[2 * i + 1], self.scaling[i])
            if self.family.sandwich_norm:
                h = h + self._norm(layer.post_attention_layernorm, a)
                m = layer.mlp(self._norm(layer.pre_feedforward_layernorm, h))
                h = h + self._norm(layer.post_feedforward_layernorm, m)
            else:
                h = h + a
                h = h + layer.mlp(self._norm(layer.post_attention_layernorm, h))
            presents += [k, v]
        if self.logits == "last":
            h = h[:, -1:]
        logits = self.lm_head(self._norm(self.norm, h))
        if self.final_softcap:                                       # in the compute dtype, as HF
            logits = torch.tanh(logits / self.final_softcap) * self.final_softcap
        if self.dtype != torch.float32:
            logits = logits.float()
        return (logits, *presents)

    def empty_past(self, batch: int, length: int = 0, dtype=None) -> list[torch.Tensor]:
        """Zero key/values in the compute dtype (or ``dtype``)."""
        shape = (batch, self.num_kv_heads, length, self.head_dim)
        dtype = self.dtype if dtype is None else dtype
        return [torch.zeros(shape, dtype=dtype) for _ in range(2 * self.num_layers)]

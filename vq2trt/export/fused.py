"""Attention and rotary embedding as single ONNX opset-23 nodes (``ops="fused"`` exports).

The portable graph (opset 18) spells attention, rotary and RMSNorm out in ~60 small nodes per
decoder layer (views, shape arithmetic, repeat_interleave, Slice/Neg/Concat for rotate_half). At
decode time ONNX Runtime pays a few microseconds per node whatever its size, so on SmolLM2 those
~2,000 nodes cost more than all VQGemm nodes together. Opset 23 has one standard op for each:

  RMSNormalization   from F.rms_norm (torch's own opset-23 translation)
  RotaryEmbedding    X [B, S, n*d] (3-D with num_heads), cos/sin [B, S, d/2], interleaved=0
                     (HF's rotate_half convention)
  Attention          Q/K/V 3-D with q_num_heads/kv_num_heads (GQA without repeat_interleave),
                     the additive mask, past_key/past_value in and present_key/present_value out
                     (the KV concat happens inside the op), softcap for Gemma 2's tanh capping

Here they are torch custom ops whose eager kernels are the same math as decoder.py, so the
PyTorch decoder stays the reference the ONNX graph is compared with, and whose onnxscript
translations emit the single nodes.
"""

from __future__ import annotations

import torch

OPSET = 23


def _heads(x: torch.Tensor, n: int) -> torch.Tensor:
    B, S, _ = x.shape
    return x.view(B, S, n, -1).transpose(1, 2)                   # [B, n, S, d]


@torch.library.custom_op("vq2trt::rotary", mutates_args=())
def rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, num_heads: int) -> torch.Tensor:
    """x [B, S, n*d]; cos/sin [B, S, d/2] (attention scaling folded in); rotate_half convention."""
    B, S, _ = x.shape
    h = x.view(B, S, num_heads, -1)
    half = h.shape[-1] // 2
    x1, x2 = h[..., :half], h[..., half:]
    c, s = cos[:, :, None], sin[:, :, None]
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1).reshape(B, S, -1)


@rotary.register_fake
def _(x, cos, sin, num_heads):
    return torch.empty_like(x)


@torch.library.custom_op("vq2trt::attention", mutates_args=())
def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, past_k: torch.Tensor,
              past_v: torch.Tensor, num_heads: int, kv_heads: int, scale: float,
              softcap: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q [B, S, H*d], k/v [B, S, Hkv*d], mask [B, 1, S, T] additive (in q's dtype), past [B, Hkv, P, d].
    softcap > 0: scores become softcap * tanh(scores / softcap) before the mask (Gemma 2; ONNX's order).
    Returns (y [B, S, H*d], present_k, present_v [B, Hkv, P+S, d]); softmax in float32."""
    B, S, _ = q.shape
    kf = torch.cat([past_k, _heads(k, kv_heads)], dim=2)
    vf = torch.cat([past_v, _heads(v, kv_heads)], dim=2)
    rep = num_heads // kv_heads
    scores = torch.matmul(_heads(q, num_heads), kf.repeat_interleave(rep, dim=1).transpose(2, 3)) * scale
    if softcap > 0:
        scores = torch.tanh(scores / softcap) * softcap
    probs = torch.softmax(scores.float() + mask.float(), dim=-1).to(q.dtype)
    y = torch.matmul(probs, vf.repeat_interleave(rep, dim=1)).transpose(1, 2).reshape(B, S, -1)
    return y, kf, vf


@attention.register_fake
def _(q, k, v, mask, past_k, past_v, num_heads, kv_heads, scale, softcap=0.0):
    B, S, _ = q.shape
    T = past_k.shape[2] + S
    kv = past_k.new_empty((B, kv_heads, T, past_k.shape[3]))
    return torch.empty_like(q), kv, kv.clone()


def translations() -> dict:
    """onnxscript functions emitting one opset-23 node per custom op."""
    from onnxscript import opset23 as op23

    def rotary_onnx(x, cos, sin, num_heads):
        return op23.RotaryEmbedding(x, cos, sin, interleaved=0, num_heads=num_heads)

    def attention_onnx(q, k, v, mask, past_k, past_v, num_heads, kv_heads, scale, softcap=0.0):
        capped = {"softcap": softcap} if softcap > 0 else {}
        y, present_k, present_v, _ = op23.Attention(q, k, v, mask, past_k, past_v, q_num_heads=num_heads,
                                                    kv_num_heads=kv_heads, scale=scale, **capped)
        return y, present_k, present_v

    return {torch.ops.vq2trt.rotary.default: rotary_onnx, torch.ops.vq2trt.attention.default: attention_onnx}

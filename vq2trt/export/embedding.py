"""The token embedding table in a compact stored form for export: float16, or int8 rows.

With a float head the table is shared with (or as large as) lm_head; once the head is quantized
(vq2trt.head) the float32 table is most of an exported folder (SmolLM2-135M: 113 of ~140 MB),
while a decode step reads only one row of it per token. So the export may store it as
  float16: Gather, then Cast to the compute dtype;
  int8:    per-row symmetric int8 (scale = max|row| / 127) and a float32 scale per row: Gather
           both, Cast, Mul. Gathering first keeps the work per token at one row.
Both are plain ONNX ops. The PyTorch module computes exactly what the graph computes, so the
export is compared against a model holding the same rounded table. With a tied float head, int8
on a fused-ops export stores one table for the embedding and the head (vq2trt.export.tied_int8).
"""

from __future__ import annotations

import torch
from torch import nn

MODES = ("float32", "float16", "int8")


class EmbeddingError(ValueError):
    """An embedding mode that cannot be applied; the message names it and what is expected."""


def quantize_rows_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 rows, float32 scales [rows]) with weight ≈ q · scale; round half to even."""
    w = weight.detach().float()
    amax = w.abs().amax(dim=1)
    scale = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
    q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scale


class CompactEmbedding(nn.Module):
    """nn.Embedding's forward over a float16 or int8 table, output in ``dtype``."""

    def __init__(self, weight: torch.Tensor, mode: str, dtype: torch.dtype = torch.float32):
        super().__init__()
        if mode not in ("float16", "int8"):
            raise EmbeddingError(f"embedding mode {mode!r}: expected float16 or int8")
        self.mode, self.dtype = mode, dtype
        self.num_embeddings, self.embedding_dim = weight.shape
        if mode == "float16":
            self.register_buffer("weight", weight.detach().to(torch.float16).clone())
            self.scale = None
        else:
            q, s = quantize_rows_int8(weight)
            self.register_buffer("weight", q)
            self.register_buffer("scale", s)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = self.weight[ids]
        if self.scale is None:
            return rows.to(self.dtype)
        return (rows.to(torch.float32) * self.scale[ids][..., None]).to(self.dtype)

    def dequantized(self) -> torch.Tensor:
        """The float32 table this module looks up, [num_embeddings, dim]."""
        w = self.weight.to(torch.float32)
        return w if self.scale is None else w * self.scale[:, None]


def compact_embedding(decoder: nn.Module, mode: str) -> None:
    """Swap ``decoder.embed_tokens`` for a CompactEmbedding in ``mode`` (float32: unchanged); with
    a tied float head, int8 on a fused-ops decoder swaps both for one int8 table."""
    if mode not in MODES:
        raise EmbeddingError(f"embedding mode {mode!r}: expected one of {', '.join(MODES)}")
    if mode == "float32":
        return
    emb = decoder.embed_tokens
    head_w = getattr(decoder.lm_head, "weight", None)
    if isinstance(head_w, torch.Tensor) and head_w.data_ptr() == emb.weight.data_ptr():
        if mode == "int8" and getattr(decoder, "ops", "basic") != "basic":  # vq2trt.export.tied_int8
            from vq2trt.export.tied_int8 import Int8Table, TiedInt8Embedding, TiedInt8Head

            table = Int8Table(emb.weight)
            decoder.embed_tokens = TiedInt8Embedding(table, decoder.dtype)
            decoder.lm_head = TiedInt8Head(table)
            return
        raise EmbeddingError(f"--embedding {mode}: the model's lm_head is the embedding table (tied, float), so "
                             "the float table stays in the export anyway; use --embedding int8 with --ops fused "
                             "(one int8 table for both, ONNX Runtime), quantize the head (`vq2trt quantize "
                             "--head PRESET`) or export with --embedding float32")
    decoder.embed_tokens = CompactEmbedding(emb.weight, mode, decoder.dtype)

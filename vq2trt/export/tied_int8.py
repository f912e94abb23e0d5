"""A tied lm_head and the token embedding as one int8 table (export --embedding int8 --ops fused
on a model whose head is the embedding, float).

Stored once, in ONNX Runtime's MatMulNBits layout: ``b`` uint8 [vocab, blocks, 64] (8-bit
weights with the default zero point 128, the hidden size zero-padded to whole blocks of 64) and a
float32 scale per row and block (symmetric, max|block| / 127). The head is one com.microsoft
MatMulNBits node (bits 8) over it, the embedding Gathers the same rows and scales. A folder then
holds a quarter of the float table and no separate head: on SmolLM2 this decoded faster than the
3-bit VQ head at the float head's perplexity (RESULTS.md). ONNX Runtime only: TensorRT has no
MatMulNBits (the basic-ops export keeps asking for a quantized or float head). Standard ONNX
(DequantizeLinear -> MatMul) was tried: ORT fuses it into the same MatMulNBits only while the
table has no other reader, and the Gather is one, so it dequantized 28 M weights every step.
"""

from __future__ import annotations

import torch
from torch import nn

from vq2trt.export import op

BLOCK = 64          # MatMulNBits' block_size: a power of two >= 16
ZERO = 128          # its default zero point for 8 bits
HEAD_ATTRS = ("K", "N", "block_size", "accuracy_level")


def quantize_blocks_int8(weight: torch.Tensor, block: int = BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 [rows, blocks, block] = q + 128, float32 scales [rows, blocks]) with weight ≈ q · scale
    per block of ``block`` columns (the last zero-padded); round half to even."""
    w = weight.detach().float()
    rows, cols = w.shape
    blocks = -(-cols // block)
    w = nn.functional.pad(w, (0, blocks * block - cols)).reshape(rows, blocks, block)
    amax = w.abs().amax(dim=-1)
    scale = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
    q = torch.round(w / scale[..., None]).clamp_(-127, 127)
    return (q + ZERO).to(torch.uint8), scale


def dequantize_blocks(b: torch.Tensor, scale: torch.Tensor, cols: int) -> torch.Tensor:
    """float32 [rows, cols] of quantize_blocks_int8's output."""
    return ((b.to(torch.float32) - ZERO) * scale[..., None]).reshape(b.shape[0], -1)[:, :cols]


@torch.library.custom_op("vq2trt::int8_head", mutates_args=())
def int8_head(x: torch.Tensor, b: torch.Tensor, scale: torch.Tensor, attrs: list[int]) -> torch.Tensor:
    """x [..., K] float32 @ W^T with W = the dequantized table [N, K] (eager: exact float32 of the
    rounded table; MatMulNBits at accuracy level 4 also rounds x to int8 per block)."""
    a = dict(zip(HEAD_ATTRS, attrs))
    return x.float() @ dequantize_blocks(b, scale, a["K"]).t()


@int8_head.register_fake
def _(x, b, scale, attrs):
    return x.new_empty((*x.shape[:-1], b.shape[0]), dtype=torch.float32)


def register_matmulnbits_schema() -> None:
    """com.microsoft MatMulNBits with onnx.defs (once per process; onnx ships no contrib schemas),
    as far as this export uses it: inputs A, B, scales; attributes K, N, bits, block_size,
    accuracy_level; Y = A's shape with the last dimension N."""
    import onnx.defs as defs

    if defs.has("MatMulNBits", "com.microsoft"):
        return
    S = defs.OpSchema
    schema = S(
        "MatMulNBits", "com.microsoft", 1, "Y = A @ dequantize(B)^T, B blockwise quantized (ONNX Runtime contrib op)",
        inputs=[S.FormalParameter("A", "T1", "[..., K]"),
                S.FormalParameter("B", "T2", "[N, K / block_size, block_size * bits / 8]"),
                S.FormalParameter("scales", "T1", "[N, K / block_size]")],
        outputs=[S.FormalParameter("Y", "T1", "[..., N]")],
        type_constraints=[("T1", ["tensor(float)", "tensor(float16)"], "activations and scales"),
                          ("T2", ["tensor(uint8)"], "packed weights")],
        attributes=[S.Attribute(n, S.AttrType.INT, n) for n in ("K", "N", "bits", "block_size", "accuracy_level")])

    schema.set_type_and_shape_inference_function(op.infer_last_dim("N"))
    defs.register_schema(schema)


def translations() -> dict:
    """The onnxscript translation of vq2trt::int8_head: one com.microsoft MatMulNBits (8 bits)."""
    from onnxscript.values import Opset

    register_matmulnbits_schema()
    msft = Opset("com.microsoft", 1)

    def head(x, b, scale, attrs):
        a = dict(zip(HEAD_ATTRS, (int(v) for v in attrs)))
        return msft.MatMulNBits(x, b, scale, K=a["K"], N=a["N"], bits=8, block_size=a["block_size"],
                                accuracy_level=a["accuracy_level"])

    return {torch.ops.vq2trt.int8_head.default: head}


class Int8Table(nn.Module):
    """The shared table: ``b`` uint8 [vocab, blocks, BLOCK] and ``scale`` float32 [vocab, blocks]."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.num_embeddings, self.embedding_dim = weight.shape
        b, s = quantize_blocks_int8(weight)
        self.register_buffer("b", b)
        self.register_buffer("scale", s)

    def dequantized(self) -> torch.Tensor:
        """The float32 table both read, [vocab, hidden]."""
        return dequantize_blocks(self.b, self.scale, self.embedding_dim)


class TiedInt8Embedding(nn.Module):
    """nn.Embedding's forward over the shared table: Gather of rows and scales, then dequantize."""

    mode = "int8"

    def __init__(self, table: Int8Table, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.table, self.dtype = table, dtype
        self.num_embeddings, self.embedding_dim = table.num_embeddings, table.embedding_dim

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        flat = ids.reshape(-1)                               # index_select: one Gather (b[ids]: GatherND)
        rows = torch.index_select(self.table.b, 0, flat).to(torch.float32) - ZERO
        rows = rows * torch.index_select(self.table.scale, 0, flat)[..., None]
        return rows.reshape(*ids.shape, -1)[..., :self.embedding_dim].to(self.dtype)

    def dequantized(self) -> torch.Tensor:
        return self.table.dequantized()


class TiedInt8Head(nn.Module):
    """The lm_head over the shared table; float32 logits cast to the input's dtype. MatMulNBits
    runs at accuracy_level 4 (activations to int8 per block) at every export level: its float
    path for 8-bit weights took 218 ms per SmolLM2 head call against 3.3 ms (ORT 1.32, AVX2)."""

    mode = "int8-tied"

    def __init__(self, table: Int8Table):
        super().__init__()
        self.table = table
        self.attrs = [table.embedding_dim, table.num_embeddings, BLOCK, 4]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return int8_head(x.float(), self.table.b, self.table.scale, self.attrs).to(x.dtype)

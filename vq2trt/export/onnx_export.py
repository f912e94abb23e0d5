"""Export a (quantized or float) LLaMA-family model to an ONNX decoder with KV cache.

Quantized Linears (VQLinear) become VQGemm nodes through the `vq2trt::vq_gemm` custom op and an
onnxscript translation; everything else is standard ONNX. The result goes through graph checks
(graph.py) and `onnx.checker` with full shape inference before anything is written.

``dtype`` (float32 default, float16, bfloat16) is the graph's compute dtype (decoder.py says what
runs in it); it is recorded in vq2trt_onnx.json as "dtype".
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from vq2trt.export import cached_attention, fused, multi_weight, op, ort_contrib, tied_int8
from vq2trt.export.decoder import OPS, ExportDecoder, check_logits, resolve_dtype
from vq2trt.export.embedding import MODES as EMBEDDING_MODES
from vq2trt.export.embedding import EmbeddingError, compact_embedding
from vq2trt.export.fold_layer_ops import fold_layer_ops as fold_layer_ops_into
from vq2trt.export.torch_op import INT_ATTRS, WEIGHT_NAMES, VQGemmLinear
from vq2trt.nn import VQLinear, replace_linear

OPSET = 18


def _translation():
    """onnxscript function emitting one vq2trt::VQGemm node with the schema's attributes."""
    from onnxscript.values import Opset

    op.register_onnx_schema()
    vq = Opset(op.DOMAIN, op.OP_VERSION)

    def vq_gemm(x, indices, codebook, perm, res_indices, res_codebook, outlier_indices, outlier_codebook,
                col_scale, col_bias, bias, attrs):
        a = dict(zip(INT_ATTRS, (int(v) for v in attrs)))
        given = dict(zip(WEIGHT_NAMES, (indices, codebook, perm, res_indices, res_codebook, outlier_indices,
                                        outlier_codebook, col_scale, col_bias, bias)))
        inputs = [given[n] for n in op.input_names(a)]
        return vq.VQGemm(x, *inputs, **a, plugin_version=op.PLUGIN_VERSION)

    return {torch.ops.vq2trt.vq_gemm.default: vq_gemm}


def resolve_ops(ops: str, dtype: str | torch.dtype = "float32") -> str:
    """"fused", "ort" or "basic" for an ``ops`` choice (see export_onnx); a clear error for anything else."""
    if ops == "auto":
        return "fused" if resolve_dtype(dtype) == torch.float32 else "basic"
    if ops not in OPS:
        raise ValueError(f"export ops must be auto, {', '.join(OPS)}, got {ops!r}")
    return ops                  # ExportDecoder refuses fused with a dtype other than float32


def prepare(model: nn.Module, accuracy_level: int = 0, dtype: str | torch.dtype = "float32",
            embedding: str = "float32", ops: str = "basic", logits: str = "all") -> ExportDecoder:
    """A copy of ``model`` with every VQLinear swapped for its export twin, in the KV-cache decoder
    computing in ``dtype`` (the copy's float parameters cast; the caller's model is untouched),
    its embedding table stored as ``embedding`` (vq2trt.export.embedding)."""
    model = copy.deepcopy(model)
    for name, mod in list(model.named_modules()):
        if isinstance(mod, VQLinear):
            replace_linear(model, name, VQGemmLinear(mod.to_vqweight(), accuracy_level))
    dec = ExportDecoder(model, dtype, ops, logits).eval()
    compact_embedding(dec, embedding)
    return dec


def _sample_inputs(dec: ExportDecoder, batch: int = 2, seq: int = 3, past: int = 4):
    ids = torch.randint(0, dec.embed_tokens.num_embeddings, (batch, seq))
    mask = torch.ones(batch, past + seq, dtype=torch.int64)
    pos = torch.arange(past, past + seq)[None].repeat(batch, 1)
    return (ids, mask, pos, *dec.empty_past(batch, past))


def _dynamic_shapes(dec: ExportDecoder):
    from torch.export import Dim

    batch, seq, total = Dim("batch"), Dim("seq"), Dim("total_seq")
    past = Dim("past_seq")
    kv = {0: batch, 2: past}
    # *past is one positional varargs tuple to torch.export
    return ({0: batch, 1: seq}, {0: batch, 1: total}, {0: batch, 1: seq},
            tuple([kv] * (2 * dec.num_layers)))


class _TorchvisionNotice(logging.Filter):
    """torch.onnx registers torchvision's detection ops and logs one warning per op when
    torchvision is absent; a decoder has none of them, so the warning only alarms users."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("torchvision is not installed")


@contextlib.contextmanager
def _without_torchvision_notice():
    log = logging.getLogger("torch.onnx._internal.exporter._registration")
    notice = _TorchvisionNotice()
    log.addFilter(notice)
    try:
        yield
    finally:
        log.removeFilter(notice)


def export_onnx(model: nn.Module, out_dir: str | os.PathLike, *, accuracy_level: int = 0,
                overwrite: bool = False, tokenizer=None, source: str | os.PathLike | None = None,
                dtype: str = "float32", embedding: str = "float32", ops: str = "auto", logits: str = "all",
                fuse_projections: bool = False, fold_layer_ops: bool = True) -> Path:
    """Write out_dir/model.onnx (+ model.onnx.data, vq2trt_onnx.json, tokenizer files).

    ``source``: the checkpoint or model the export came from, recorded for `vq2trt compare`.
    ``dtype``: compute dtype of the graph (float32, float16, bfloat16); logits stay float32.
    ``embedding``: stored form of the embedding table (float32, float16, int8).
    ``ops``: "fused" (opset 23: one RMSNormalization / RotaryEmbedding / Attention node each, for
    ONNX Runtime), "basic" (opset 18, the portable graph TensorRT builds from) or "auto": fused
    for float32, basic for float16/bfloat16 (the TensorRT dtypes); "ort": fused with ONNX Runtime's
    contrib ops (export/ort_contrib.py: GroupQueryAttention with a KV cache ORT GenAI shares between
    past and present, SkipSimplifiedLayerNormalization).
    ``logits``: "all" positions (perplexity, comparisons) or the "last" only (generation; decoder.py).
    ``fuse_projections``: the VQGemm weights that read one X (q/k/v, gate/up) as one VQGemmMulti node
    each (export/multi_weight.py; ONNX Runtime's CPU EP only, so fused or ort ops only).
    ``fold_layer_ops`` (with fuse_projections): the RMS normalisations before those nodes and SwiGLU
    after gate/up folded into them (export/fold_layer_ops.py), and GroupQueryAttention replaced by
    vq2trt.CachedAttention (export/cached_attention.py); both equal up to float rounding."""
    from vq2trt.export.graph import finalize, write_folder

    resolve_dtype(dtype)                                   # a bad name fails before any work
    ops = resolve_ops(ops, dtype)
    check_logits(logits)
    if embedding not in EMBEDDING_MODES:
        raise EmbeddingError(f"embedding mode {embedding!r}: expected one of {', '.join(EMBEDDING_MODES)}")
    if fuse_projections and ops == "basic":
        raise multi_weight.MultiWeightError("fuse_projections makes VQGemmMulti nodes, which only ONNX Runtime's CPU "
                                            "EP runs; it needs ops 'fused' or 'ort', not the basic (TensorRT) graph")
    dec = prepare(model, accuracy_level, dtype, embedding, ops, logits)
    if ops == "ort":
        ort_contrib.check_model(dec)
    args = _sample_inputs(dec)
    table = _translation()
    table.update(tied_int8.translations())
    if ops != "basic":
        table.update(fused.translations())
    with torch.no_grad(), warnings.catch_warnings(), _without_torchvision_notice():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            dec, args, dynamo=True, opset_version=OPSET if ops == "basic" else fused.OPSET,
            input_names=dec.input_names(),
            output_names=dec.output_names(), dynamic_shapes=_dynamic_shapes(dec),
            custom_translation_table=table, optimize=True, verbose=False)
    proto = program.model_proto
    if ops == "ort":
        proto = ort_contrib.use_contrib_ops(proto, dec)
    if fuse_projections:
        proto = multi_weight.fuse_projections(proto)
        if fold_layer_ops:
            proto = cached_attention.use_cached_attention(fold_layer_ops_into(proto))
    proto = finalize(proto, dec)
    return write_folder(proto, Path(out_dir), model=model, decoder=dec, overwrite=overwrite, tokenizer=tokenizer,
                        accuracy_level=accuracy_level, source=None if source is None else str(Path(source).resolve()))

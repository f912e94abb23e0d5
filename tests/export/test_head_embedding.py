"""A quantized lm_head (vq2trt.head) and a compact embedding table (export --embedding):
the checkpoint round-trips, a tied head is untied without touching the embedding, and ONNX
Runtime computes what the PyTorch model holding the same rounded table computes."""

from __future__ import annotations

import copy
import json

import numpy as np
import onnx
import pytest
import torch

from .conftest import calib_ids, check_prefill_then_decode, make_tiny_llama, sample_batch

ATOL = 1e-4


def _head_config(**kw):
    from vq2trt.config import QuantConfig
    from vq2trt.head import with_head

    return with_head(QuantConfig(vector_len=4, num_centroids=16, kmeans_iters=3, **kw), "v4-k256")


@pytest.fixture(scope="module")
def head_ckpt(tmp_path_factory):
    """(float model, quantized model with a VQ head, checkpoint folder, QuantizeResult)."""
    from vq2trt.io import save_quantized
    from vq2trt.quantize import quantize

    float_model = make_tiny_llama()
    model = copy.deepcopy(float_model)
    cfg = _head_config()
    result = quantize(model, cfg, calib_ids(), device="cpu", progress=False)
    ckpt = save_quantized(model, cfg, tmp_path_factory.mktemp("head") / "ckpt")
    return float_model, model, ckpt, result


def test_head_is_quantized_and_untied(head_ckpt):
    from vq2trt.nn import VQLinear

    float_model, model, ckpt, result = head_ckpt
    assert isinstance(model.lm_head, VQLinear)
    assert model.config.tie_word_embeddings is False
    # the embedding table is the float model's, bit for bit: only the head was quantized
    assert torch.equal(model.model.embed_tokens.weight, float_model.model.embed_tokens.weight)
    w = model.lm_head.to_vqweight()
    assert (w.out_features, w.in_features, w.vector_len, w.num_centroids) == (256, 64, 4, 256)
    # the decoder Linears keep their own format and the head is counted apart
    assert result.head is not None and result.head_bits_per_weight == pytest.approx(w.bits_per_weight())
    assert "lm_head" not in result.weights
    cfg = json.loads((ckpt / "config.json").read_text())
    assert cfg["tie_word_embeddings"] is False
    assert cfg["quantization_config"]["modules"]["lm_head"]["num_centroids"] == 256
    assert "lm_head" not in cfg["quantization_config"]["skip_modules"]
    # the head's error is what 2 bits give a Gaussian matrix (~0.3 relative), not garbage
    W = float_model.lm_head.weight.detach()
    rel = (model.lm_head.weight_float() - W).norm() / W.norm()
    assert rel < 0.45


def test_checkpoint_with_head_round_trips(head_ckpt):
    from vq2trt.io import load_quantized
    from vq2trt.nn import VQLinear

    _, model, ckpt, _ = head_ckpt
    loaded = load_quantized(ckpt)
    assert isinstance(loaded.lm_head, VQLinear)
    assert loaded.lm_head.weight_float().data_ptr() != loaded.model.embed_tokens.weight.data_ptr()
    ids = sample_batch(seed=4)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)


def test_resumed_run_reuses_the_saved_head(tmp_path):
    from vq2trt.io import checkpoint_tensors
    from vq2trt.quantize import quantize

    cfg = _head_config()
    a, b = make_tiny_llama(), make_tiny_llama()
    quantize(a, cfg, calib_ids(), work_dir=tmp_path / "work", device="cpu", progress=False)
    assert (tmp_path / "work" / "lm_head.safetensors").exists()
    quantize(b, cfg, calib_ids(), work_dir=tmp_path / "work", device="cpu", progress=False)  # all from disk
    ta, tb = checkpoint_tensors(a), checkpoint_tensors(b)
    assert ta.keys() == tb.keys() and all(np.array_equal(ta[k], tb[k]) for k in ta)


def test_bad_head_preset_is_refused():
    from vq2trt.config import ConfigError, QuantConfig
    from vq2trt.head import with_head

    with pytest.raises(ConfigError, match="not a VPTQ preset"):
        with_head(QuantConfig(), "gptq-w2g128")
    with pytest.raises(ConfigError, match="not a VPTQ preset"):
        with_head(QuantConfig(), "v4-k999")


def test_int8_rows_round_trip():
    from vq2trt.export.embedding import quantize_rows_int8

    w = torch.randn(50, 33) * torch.linspace(0.01, 3, 50)[:, None]
    w[7] = 0.0                                               # an all-zero row keeps a finite scale
    q, s = quantize_rows_int8(w)
    assert q.dtype == torch.int8 and s.shape == (50,)
    err = (q.float() * s[:, None] - w).abs()
    assert torch.all(err <= s[:, None] / 2 + 1e-7)           # within half a step of every row's own grid
    assert torch.all(q[7] == 0) and torch.isfinite(s).all()


@pytest.mark.parametrize("mode", ["int8", "float16"])
def test_compact_embedding_export_matches_ort(head_ckpt, tmp_path, mode):
    from vq2trt.export.embedding import CompactEmbedding
    from vq2trt.export.onnx_export import export_onnx
    from vq2trt.runtime.session import OnnxDecoder

    pytest.importorskip("onnxruntime")
    _, model, _, _ = head_ckpt
    out = export_onnx(model, tmp_path / mode, embedding=mode)
    proto = onnx.load(str(out / "model.onnx"), load_external_data=False)
    want = onnx.TensorProto.INT8 if mode == "int8" else onnx.TensorProto.FLOAT16
    tables = [t for t in proto.graph.initializer if tuple(t.dims) == (256, 64)]
    assert [t.data_type for t in tables] == [want]           # one table, stored compactly; no float copy
    assert json.loads((out / "vq2trt_onnx.json").read_text())["embedding"] == mode
    # the reference: the same model looking up the same rounded table
    ref_model = copy.deepcopy(model)
    table = CompactEmbedding(model.model.embed_tokens.weight, mode).dequantized()
    ref_model.model.embed_tokens.weight.data.copy_(table)
    ids = sample_batch(seed=5, seq=7)
    with torch.no_grad():
        ref = ref_model(ids).logits.numpy()
    check_prefill_then_decode(OnnxDecoder(out), ref, ids, 4, ATOL)


def test_compact_embedding_needs_an_untied_head(tmp_path):
    from vq2trt.export.embedding import EmbeddingError
    from vq2trt.export.onnx_export import export_onnx

    with pytest.raises(EmbeddingError, match="quantize the head"):
        export_onnx(make_tiny_llama(), tmp_path / "x", embedding="float16")
    with pytest.raises(EmbeddingError, match="expected one of"):
        export_onnx(make_tiny_llama(), tmp_path / "y", embedding="int4")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


@pytest.mark.parametrize("level", [0, 4])
def test_tied_head_shares_one_int8_table(tmp_path, level):
    """A tied float head with --embedding int8 (fused ops): one int8 table read by the embedding's
    Gather and by the head's MatMulNBits, logits as the PyTorch model holding the same rounded
    table (as embedding and as head) computes them, at either export level."""
    from vq2trt.export.onnx_export import export_onnx
    from vq2trt.export.tied_int8 import Int8Table
    from vq2trt.runtime.session import OnnxDecoder

    pytest.importorskip("onnxruntime")
    model = make_tiny_llama()
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    out = export_onnx(model, tmp_path / str(level), embedding="int8", ops="fused", accuracy_level=level)
    proto = onnx.load(str(out / "model.onnx"), load_external_data=False)
    vocab, hidden = model.model.embed_tokens.weight.shape
    big = [t for t in proto.graph.initializer if t.dims and t.dims[0] == vocab]
    assert sorted((tuple(t.dims), t.data_type) for t in big) == [
        ((vocab, 1), onnx.TensorProto.FLOAT), ((vocab, 1, 64), onnx.TensorProto.UINT8)]   # 64 columns: one block
    readers = {t.name: sorted(n.op_type for n in proto.graph.node if t.name in n.input) for t in big}
    assert all(r == ["Gather", "MatMulNBits"] for r in readers.values()), readers   # the one table, read twice
    info = json.loads((out / "vq2trt_onnx.json").read_text())
    assert (info["embedding"], info["lm_head"]) == ("int8", "int8-tied")
    ref_model = copy.deepcopy(model)                                 # still tied: one table for both
    ref_model.model.embed_tokens.weight.data.copy_(Int8Table(model.model.embed_tokens.weight).dequantized())
    ids = sample_batch(seed=6, seq=7)
    with torch.no_grad():
        ref = ref_model(ids).logits.numpy()
        base = model(ids).logits.numpy()
    # the head rounds its activations to int8 per block of 64 (MatMulNBits accuracy_level 4) at
    # every export level: within that grid (1/254 of a block's largest, here ~4 % of the std)
    check_prefill_then_decode(OnnxDecoder(out), ref, ids, 4, 0.06 * np.abs(ref).std())
    assert np.abs(ref - base).max() < 0.05 * np.abs(base).std()       # the int8 grid, nothing coarser


def test_tied_int8_blocks_round_trip():
    from vq2trt.export.tied_int8 import dequantize_blocks, quantize_blocks_int8

    w = torch.randn(40, 150) * torch.linspace(0.01, 3, 150)          # 150 columns: 3 blocks, the last padded
    w[5] = 0.0
    b, s = quantize_blocks_int8(w)
    assert b.shape == (40, 3, 64) and s.shape == (40, 3) and b.dtype == torch.uint8
    assert torch.all(b.reshape(40, -1)[:, 150:] == 128)               # padding is weight 0
    err = (dequantize_blocks(b, s, 150) - w).abs().reshape(40, -1)
    step = s.repeat_interleave(64, dim=1)[:, :150]
    assert torch.all(err <= step / 2 + 1e-7) and torch.all(b[5] == 128)


def test_tied_int8_needs_fused_ops(tmp_path):
    from vq2trt.export.embedding import EmbeddingError
    from vq2trt.export.onnx_export import export_onnx

    with pytest.raises(EmbeddingError, match="--ops fused"):
        export_onnx(make_tiny_llama(), tmp_path / "x", embedding="int8", ops="basic")
    assert not (tmp_path / "x").exists()

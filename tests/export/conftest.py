"""Tiny quantized models exported once per session: one in the default format, one using every
format feature (residual, outlier columns, groups, normalisation, Linear bias)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxscript")


def make_tiny_llama(seed: int = 0, **overrides):
    from transformers import LlamaConfig, LlamaForCausalLM

    kw = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True)
    kw.update(overrides)
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(**kw)).eval()


def calib_ids(n: int = 4, seqlen: int = 32, vocab: int = 256, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (n, seqlen), generator=torch.Generator().manual_seed(seed))

FEATURES = dict(vector_len=4, num_centroids=16, num_res_centroids=4, outlier_frac=0.1, outlier_vector_len=2,
                outlier_num_centroids=8, num_groups=2, enable_norm=True, kmeans_iters=5)
DEFAULT = dict(vector_len=4, num_centroids=256, kmeans_iters=5)


def _quantized(cfg_fields: dict, **model_kw):
    from vq2trt.config import QuantConfig
    from vq2trt.quantize import quantize

    model = make_tiny_llama(**model_kw)
    quantize(model, QuantConfig(**cfg_fields), calib_ids(n=4, seqlen=32, vocab=256), progress=False)
    return model.eval()


def _export(kind: str, ops: str, tmp_path_factory):
    from vq2trt.export.onnx_export import export_onnx

    model = _quantized(DEFAULT) if kind == "default" else _quantized(FEATURES, attention_bias=True)
    out = tmp_path_factory.mktemp(f"onnx-{kind}-{ops}") / "model"
    export_onnx(model, out, ops=ops)
    return model, out


@pytest.fixture(scope="session", params=["default", "features"])
def exported(request, tmp_path_factory):
    """(torch model with VQLinear layers, folder written by export_onnx with its default ops)."""
    return _export(request.param, "auto", tmp_path_factory)


@pytest.fixture(scope="session", params=["default", "features"])
def exported_basic(request, tmp_path_factory):
    """As `exported`, with --ops basic: the portable opset-18 graph TensorRT builds from."""
    return _export(request.param, "basic", tmp_path_factory)


@pytest.fixture(scope="session")
def exported_float(tmp_path_factory):
    from vq2trt.export.onnx_export import export_onnx

    model = make_tiny_llama()
    out = tmp_path_factory.mktemp("onnx-float") / "model"
    export_onnx(model, out)
    return model, out


def sample_batch(seed: int = 0, batch: int = 2, seq: int = 6):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 256, (batch, seq), generator=g)
    return ids


def check_prefill_then_decode(dec, ref, ids, prefill: int, atol: float):
    """ORT decoder logits equal ``ref`` [B, T, V]: ``prefill`` tokens at once, then one token a step.
    Returns the last KV cache."""
    import numpy as np

    B, T = ids.shape
    logits, past = dec.step(ids[:, :prefill].numpy(), np.ones((B, prefill)), np.tile(np.arange(prefill), (B, 1)),
                            dec.empty_past(B))
    np.testing.assert_allclose(logits, ref[:, :prefill], atol=atol)
    for t in range(prefill, T):
        logits, past = dec.step(ids[:, t:t + 1].numpy(), np.ones((B, t + 1)), np.full((B, 1), t), past)
        np.testing.assert_allclose(logits[:, 0], ref[:, t], atol=atol)
    return past

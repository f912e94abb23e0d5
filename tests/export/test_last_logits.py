"""export --logits last: the head runs on the last position only. ONNX Runtime's prefill then
returns [B, 1, V] equal to the last row of the full model's logits (the HF model as reference),
decode steps and KV caches are unchanged, generation is the same, and what needs every position
(perplexity) says so instead of computing on a single row."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from .conftest import DEFAULT, _quantized, sample_batch

pytest.importorskip("onnxruntime")
ATOL = 1e-4


@pytest.fixture(scope="module")
def model():
    return _quantized(DEFAULT)


@pytest.fixture(scope="module", params=["fused", "basic"])
def exports(request, model, tmp_path_factory):
    from vq2trt.export.onnx_export import export_onnx

    root = tmp_path_factory.mktemp(f"logits-{request.param}")
    return {mode: export_onnx(model, root / mode, ops=request.param, logits=mode) for mode in ("all", "last")}


def test_prefill_returns_the_last_row_and_decode_is_unchanged(model, exports):
    from vq2trt.runtime.session import OnnxDecoder, read_info

    assert read_info(exports["last"])["logits"] == "last"
    assert read_info(exports["all"])["logits"] == "all"
    last, full = OnnxDecoder(exports["last"], threads=1), OnnxDecoder(exports["all"], threads=1)
    ids = sample_batch(seed=3, batch=2, seq=9)
    with torch.no_grad():
        ref = model(ids).logits.numpy()                       # the HF model, every position
    B, P = 2, 6
    feeds = (ids[:, :P].numpy(), np.ones((B, P)), np.tile(np.arange(P), (B, 1)))
    lo, past_l = last.step(*feeds, last.empty_past(B))
    fo, past_f = full.step(*feeds, full.empty_past(B))
    assert lo.shape == (B, 1, ref.shape[-1]) and fo.shape == (B, P, ref.shape[-1])
    np.testing.assert_allclose(lo[:, 0], ref[:, P - 1], atol=ATOL)
    np.testing.assert_allclose(lo, fo[:, -1:], atol=1e-5)
    for a, b in zip(past_l, past_f):
        np.testing.assert_allclose(a, b, atol=1e-5)
    for t in range(P, ids.shape[1]):                          # decode: seq 1, the same either way
        step = (ids[:, t:t + 1].numpy(), np.ones((B, t + 1)), np.full((B, 1), t))
        lo, past_l = last.step(*step, past_l)
        np.testing.assert_allclose(lo[:, 0], ref[:, t], atol=ATOL)


def test_generation_is_the_same(exports):
    from vq2trt.runtime.session import OnnxDecoder

    prompt = [5, 17, 99, 3, 250]
    a = OnnxDecoder(exports["last"], threads=1).generate(prompt, max_new_tokens=8)
    b = OnnxDecoder(exports["all"], threads=1).generate(prompt, max_new_tokens=8)
    assert a.tokens == b.tokens and len(a.tokens) == 8


def test_perplexity_of_a_last_only_export_is_refused(exports):
    from vq2trt.runtime.session import OnnxDecoder, RunError

    dec = OnnxDecoder(exports["last"], threads=1)
    with pytest.raises(RunError, match="--logits all"):
        dec.perplexity(np.arange(64) % 256, ctx=32)


def test_bad_logits_mode_is_named(model, tmp_path):
    from vq2trt.export.onnx_export import export_onnx

    with pytest.raises(ValueError, match="logits must be one of all, last, got 'first'"):
        export_onnx(model, tmp_path / "x", logits="first")
    assert not (tmp_path / "x").exists()

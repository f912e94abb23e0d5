"""`export --ops ort`: the fused graph with ONNX Runtime's contrib ops (GroupQueryAttention with the
rotary embedding inside, SkipSimplifiedLayerNormalization for residual add + RMSNorm). PyTorch's
logits in ONNX Runtime (prefill, decode, a right-padded batch row), the same greedy ids and logits
in ORT GenAI with its KV cache shared between past and present (the config turns that on), and a
clear refusal for sliding-window models, whose window GroupQueryAttention would drop."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch

from .conftest import _export, check_prefill_then_decode, make_tiny_llama, sample_batch

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

ATOL = 1e-4     # as test_fused_ops: float32 on both sides, summation order differs


@pytest.fixture(scope="module", params=["default", "features"])
def exported_ort(request, tmp_path_factory):
    return _export(request.param, "ort", tmp_path_factory)


def test_contrib_nodes_replace_attention_rotary_and_residual_norms(exported_ort, exported):
    model, out = exported_ort
    proto = onnx.load(str(out / "model.onnx"), load_external_data=False)
    ops = Counter(n.op_type for n in proto.graph.node)
    fused = Counter(n.op_type for n in onnx.load(str(exported[1] / "model.onnx"), load_external_data=False).graph.node)
    L = model.config.num_hidden_layers
    assert ops["GroupQueryAttention"] == L and ops["Attention"] == ops["RotaryEmbedding"] == 0
    # each layer's two norms after a residual add (the first layer's input norm has none), and the final one
    assert ops["SkipSimplifiedLayerNormalization"] == 2 * L and ops["RMSNormalization"] == 1
    assert ops["VQGemm"] == fused["VQGemm"] and sum(ops.values()) < sum(fused.values()) - 3 * L
    gqa = [n for n in proto.graph.node if n.op_type == "GroupQueryAttention"]
    assert {n.domain for n in gqa} == {"com.microsoft"}
    assert all(n.input[3].startswith("past_key_values.") and n.output[1].startswith("present.") for n in gqa)
    assert all(n.input[9] == "position_ids" for n in gqa)
    assert ops["Where"] == 0                         # the additive mask is gone with the Attention nodes
    assert json.loads((out / "vq2trt_onnx.json").read_text())["ops"] == "ort"
    assert json.loads((out / "genai_config.json").read_text())["search"]["past_present_share_buffer"] is True


def test_logits_match_torch(exported_ort):
    from vq2trt.runtime.session import OnnxDecoder

    model, out = exported_ort
    ids = sample_batch(seed=11, seq=9)
    with torch.no_grad():
        ref = model(ids).logits.numpy()
    check_prefill_then_decode(OnnxDecoder(out), ref, ids, 4, ATOL)


def test_positions_are_the_position_ids_input(exported_ort):
    """The rotary tables are indexed by position_ids, as the fused graph's cos/sin are computed
    from them: the same tokens at positions shifted by 5 give other logits, equal to torch's."""
    from vq2trt.runtime.session import OnnxDecoder

    model, out = exported_ort
    dec = OnnxDecoder(out)
    ids = sample_batch(seed=3, batch=1, seq=5)
    pos = torch.arange(5, 10)[None]
    with torch.no_grad():
        ref = model(ids, position_ids=pos).logits.numpy()
    got, _ = dec.step(ids.numpy(), np.ones((1, 5), np.int64), pos.numpy(), dec.empty_past(1))
    np.testing.assert_allclose(got, ref, atol=ATOL)


def test_right_padded_row_gets_its_unpadded_logits(exported_ort):
    """GroupQueryAttention reads the mask as lengths: a row padded on the right is the row alone."""
    from vq2trt.runtime.session import OnnxDecoder

    dec = OnnxDecoder(exported_ort[1])
    a, b = sample_batch(seed=6, batch=1, seq=6)[0].numpy(), sample_batch(seed=7, batch=1, seq=4)[0].numpy()
    ids = np.stack([a, np.concatenate([b, [0, 0]])])
    mask = np.array([[1] * 6, [1, 1, 1, 1, 0, 0]])
    got, _ = dec.step(ids, mask, np.tile(np.arange(6), (2, 1)), dec.empty_past(2))
    alone, _ = dec.step(b[None], np.ones((1, 4), np.int64), np.arange(4)[None], dec.empty_past(1))
    np.testing.assert_allclose(got[1, :4], alone[0], atol=ATOL)
    first, _ = dec.step(a[None], np.ones((1, 6), np.int64), np.arange(6)[None], dec.empty_past(1))
    np.testing.assert_allclose(got[0], first[0], atol=ATOL)


def test_genai_with_a_shared_cache_gives_the_ids_and_logits_of_run(exported_ort):
    from .test_genai import check_same_as_run

    check_same_as_run(exported_ort[1])


def test_sliding_window_model_is_refused_before_anything_is_written(tmp_path):
    import transformers as T

    from vq2trt.export.onnx_export import export_onnx
    from vq2trt.export.ort_contrib import OrtContribError

    torch.manual_seed(0)
    model = T.MistralForCausalLM(T.MistralConfig(
        vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, sliding_window=4)).eval()
    with pytest.raises(OrtContribError, match="sliding-window.*--ops fused"):
        export_onnx(model, tmp_path / "m", ops="ort")
    assert not (tmp_path / "m").exists()
    export_onnx(make_tiny_llama(), tmp_path / "llama", ops="ort")          # a model without windows exports
    assert (tmp_path / "llama" / "model.onnx").is_file()


def test_shared_cache_steps_equal_the_copying_steps_and_generate_uses_it(exported_ort, exported, monkeypatch):
    """`vq2trt run`'s loop on an ort export binds one KV buffer as past and present (SharedCache):
    the same logits as the step API, which copies the cache; a full cache and a fused export are
    refused with the reason."""
    from vq2trt.runtime.session import OnnxDecoder, RunError, SharedCache

    dec = OnnxDecoder(exported_ort[1])
    ids = sample_batch(seed=4, batch=1, seq=8)[0].numpy()
    cache = SharedCache(dec, 8)
    got = [cache.step(ids[:5])[0, -1]] + [cache.step(ids[t:t + 1])[0, -1] for t in range(5, 8)]
    logits, past = dec.step(ids[None, :5], np.ones((1, 5)), np.arange(5)[None], dec.empty_past(1))
    want = [logits[0, -1]]
    for t in range(5, 8):
        logits, past = dec.step(ids[None, t:t + 1], np.ones((1, t + 1)), np.array([[t]]), past)
        want.append(logits[0, -1])
    np.testing.assert_allclose(np.stack(got), np.stack(want), atol=ATOL)
    with pytest.raises(RunError, match="full"):
        cache.step(ids[:1])
    with pytest.raises(RunError, match="--ops ort"):
        SharedCache(OnnxDecoder(exported[1]), 8)
    # generate() takes it: the same tokens as a loop over step()
    made, init = [], SharedCache.__init__
    monkeypatch.setattr(SharedCache, "__init__", lambda self, *a: (made.append(1), init(self, *a))[1])
    tokens = dec.generate(list(ids[:4]), 5).tokens
    assert made == [1]
    seq, past, ref = ids[None, :4], dec.empty_past(1), []
    logits, past = dec.step(seq, np.ones((1, 4)), np.arange(4)[None], past)
    for n in range(5):
        ref.append(int(np.argmax(logits[0, -1])))
        logits, past = dec.step(np.array([[ref[-1]]]), np.ones((1, 5 + n)), np.array([[4 + n]]), past)
    assert tokens == ref[:len(tokens)] and len(tokens) >= 1

"""`export --ops gqa`: the fused graph with ONNX Runtime's GroupQueryAttention for each Attention
node. PyTorch's logits in ONNX Runtime (prefill, decode, a right-padded batch row), the same greedy
ids and logits in ORT GenAI with its KV cache shared between past and present (the config turns
that on), and a clear refusal for sliding-window models, whose window GroupQueryAttention would drop."""

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
def exported_gqa(request, tmp_path_factory):
    return _export(request.param, "gqa", tmp_path_factory)


def test_one_group_query_attention_per_layer_and_a_shared_cache_for_genai(exported_gqa):
    model, out = exported_gqa
    proto = onnx.load(str(out / "model.onnx"), load_external_data=False)
    ops = Counter(n.op_type for n in proto.graph.node)
    L = model.config.num_hidden_layers
    assert ops["GroupQueryAttention"] == L and ops["Attention"] == 0 and ops["RotaryEmbedding"] == 2 * L
    gqa = [n for n in proto.graph.node if n.op_type == "GroupQueryAttention"]
    assert {n.domain for n in gqa} == {"com.microsoft"}
    assert all(n.input[3].startswith("past_key_values.") and n.output[1].startswith("present.") for n in gqa)
    assert ops["Where"] == 0                         # the additive mask is gone with the Attention nodes
    assert json.loads((out / "vq2trt_onnx.json").read_text())["ops"] == "gqa"
    assert json.loads((out / "genai_config.json").read_text())["search"]["past_present_share_buffer"] is True


def test_logits_match_torch(exported_gqa):
    from vq2trt.runtime.session import OnnxDecoder

    model, out = exported_gqa
    ids = sample_batch(seed=11, seq=9)
    with torch.no_grad():
        ref = model(ids).logits.numpy()
    check_prefill_then_decode(OnnxDecoder(out), ref, ids, 4, ATOL)


def test_right_padded_row_gets_its_unpadded_logits(exported_gqa):
    """GroupQueryAttention reads the mask as lengths: a row padded on the right is the row alone."""
    from vq2trt.runtime.session import OnnxDecoder

    dec = OnnxDecoder(exported_gqa[1])
    a, b = sample_batch(seed=6, batch=1, seq=6)[0].numpy(), sample_batch(seed=7, batch=1, seq=4)[0].numpy()
    ids = np.stack([a, np.concatenate([b, [0, 0]])])
    mask = np.array([[1] * 6, [1, 1, 1, 1, 0, 0]])
    got, _ = dec.step(ids, mask, np.tile(np.arange(6), (2, 1)), dec.empty_past(2))
    alone, _ = dec.step(b[None], np.ones((1, 4), np.int64), np.arange(4)[None], dec.empty_past(1))
    np.testing.assert_allclose(got[1, :4], alone[0], atol=ATOL)
    first, _ = dec.step(a[None], np.ones((1, 6), np.int64), np.arange(6)[None], dec.empty_past(1))
    np.testing.assert_allclose(got[0], first[0], atol=ATOL)


def test_genai_with_a_shared_cache_gives_the_ids_and_logits_of_run(exported_gqa):
    from .test_genai import check_same_as_run

    check_same_as_run(exported_gqa[1])


def test_sliding_window_model_is_refused_before_anything_is_written(tmp_path):
    import transformers as T

    from vq2trt.export.gqa import GqaError
    from vq2trt.export.onnx_export import export_onnx

    torch.manual_seed(0)
    model = T.MistralForCausalLM(T.MistralConfig(
        vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, sliding_window=4)).eval()
    with pytest.raises(GqaError, match="sliding-window.*--ops fused"):
        export_onnx(model, tmp_path / "m", ops="gqa")
    assert not (tmp_path / "m").exists()
    export_onnx(make_tiny_llama(), tmp_path / "llama", ops="gqa")          # a model without windows exports
    assert (tmp_path / "llama" / "model.onnx").is_file()

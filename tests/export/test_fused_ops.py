"""`export --ops fused` (the float32 default): attention, rotary embedding and RMSNorm as single
opset-23 nodes. The graph is a fraction of the portable one's size, gives PyTorch's logits in ONNX
Runtime (prefill, decode, a left-padded batch) like the portable graph does, and TensorRT's
builder refuses it with the way out named."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch

from vq2trt.export.decoder import ExportDecoder

from .conftest import check_prefill_then_decode, sample_batch

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

ATOL = 1e-4     # as test_ort_model: float32 on both sides, summation order differs
FUSED = {"RMSNormalization", "RotaryEmbedding", "Attention"}


def _ops(folder) -> Counter:
    proto = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    return Counter(n.op_type for n in proto.graph.node)


@pytest.fixture(params=["fused", "basic"])
def graph(request, exported, exported_basic):
    return exported if request.param == "fused" else exported_basic


def test_fused_graph_has_one_node_per_norm_rotary_and_attention(exported, exported_basic):
    model, out = exported
    L = model.config.num_hidden_layers
    fused, basic = _ops(out), _ops(exported_basic[1])
    assert fused["Attention"] == L and fused["RotaryEmbedding"] == 2 * L and fused["RMSNormalization"] == 2 * L + 1
    assert not FUSED & set(basic)
    assert fused["VQGemm"] == basic["VQGemm"] > 0
    assert sum(fused.values()) * 2 < sum(basic.values())
    assert json.loads((out / "vq2trt_onnx.json").read_text())["ops"] == "fused"
    assert json.loads((exported_basic[1] / "vq2trt_onnx.json").read_text())["ops"] == "basic"
    proto = onnx.load(str(out / "model.onnx"), load_external_data=False)
    assert {o.domain: o.version for o in proto.opset_import}[""] == 23


def test_logits_match_torch_for_both_graphs(graph):
    from vq2trt.runtime.session import OnnxDecoder

    model, out = graph
    ids = sample_batch(seed=11, seq=9)
    with torch.no_grad():
        ref = model(ids).logits.numpy()
    check_prefill_then_decode(OnnxDecoder(out), ref, ids, 4, ATOL)


def test_left_padded_row_gets_its_unpadded_logits(graph):
    """Padding keys are masked (finite scores, no NaN from fully masked padding queries) in the
    Attention node as in the spelled-out softmax."""
    from vq2trt.runtime.session import OnnxDecoder

    _, out = graph
    dec = OnnxDecoder(out)
    a, b = sample_batch(seed=6, batch=1, seq=6)[0].numpy(), sample_batch(seed=7, batch=1, seq=4)[0].numpy()
    ids = np.stack([a, np.concatenate([[0, 0], b])])
    mask = np.array([[1] * 6, [0, 0, 1, 1, 1, 1]])
    pos = np.array([np.arange(6), [0, 0, 0, 1, 2, 3]])
    got, past = dec.step(ids, mask, pos, dec.empty_past(2))
    alone, past1 = dec.step(b[None], np.ones((1, 4), np.int64), np.arange(4)[None], dec.empty_past(1))
    np.testing.assert_allclose(got[1, 2:], alone[0], atol=ATOL)
    assert np.isfinite(got).all()
    # one decode step on top of the padded cache
    nxt = np.array([[7], [7]])
    got2, _ = dec.step(nxt, np.concatenate([mask, [[1], [1]]], axis=1), np.array([[6], [4]]), past)
    alone2, _ = dec.step(nxt[1:], np.ones((1, 5), np.int64), np.array([[4]]), past1)
    np.testing.assert_allclose(got2[1], alone2[0], atol=ATOL)


def test_tensorrt_build_refuses_a_fused_export_and_names_the_fix(exported, exported_basic, capsys):
    from vq2trt.cli import main
    from vq2trt.runtime import trt

    with pytest.raises(trt.TrtError, match="--ops basic"):
        trt.load_layout(exported[1])
    assert trt.load_layout(exported_basic[1]).num_layers == 2
    assert main(["build-engine", str(exported[1]), "--print-command"]) == 2
    assert "--ops basic" in capsys.readouterr().err


def test_unknown_ops_value_is_refused_before_anything_is_written(exported, tmp_path):
    from vq2trt.export.onnx_export import export_onnx

    with pytest.raises(ValueError, match="auto, basic, fused, ort"):
        export_onnx(exported[0], tmp_path / "x", ops="fast")
    assert not (tmp_path / "x").exists()
    with pytest.raises(ValueError, match="basic, fused, ort"):
        ExportDecoder(exported[0], ops="fast")
    with pytest.raises(ValueError, match="float32 only"):
        export_onnx(exported[0], tmp_path / "y", ops="fused", dtype="float16")
    assert not (tmp_path / "y").exists()

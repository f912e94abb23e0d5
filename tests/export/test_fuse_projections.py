"""`export --fuse-projections`: q/k/v and gate/up as one VQGemmMulti node each (GroupQueryAttention
reading q/k/v packed, with no Split). With the layer ops kept as nodes the graph's logits must be
the unfused export's, bit for bit (each weight's slice is the bytes its VQGemm node gives), in
ONNX Runtime's step API, `vq2trt run`'s shared-cache loop and ORT GenAI; with the norms and SwiGLU
folded in and GroupQueryAttention replaced by vq2trt.CachedAttention (the default) they must match
up to float rounding and leave no norm, SwiGLU or GroupQueryAttention node.
The basic (TensorRT) graph refuses the option before anything is written."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from .conftest import DEFAULT, FEATURES, _quantized, sample_batch

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module", params=["default", "features"])
def pair(request, tmp_path_factory):
    """(model, unfused ort export, fused ort export with the layer ops kept, fused and folded)."""
    from vq2trt.export.onnx_export import export_onnx

    model = _quantized(DEFAULT) if request.param == "default" else _quantized(FEATURES, attention_bias=True)
    base = tmp_path_factory.mktemp(f"fuse-{request.param}")
    export_onnx(model, base / "plain", ops="ort")
    export_onnx(model, base / "fused", ops="ort", fuse_projections=True, fold_layer_ops=False)
    export_onnx(model, base / "folded", ops="ort", fuse_projections=True)
    return model, base / "plain", base / "fused", base / "folded"


def test_one_node_per_shared_input(pair):
    model, plain, fused, _ = pair
    ops = Counter(n.op_type for n in onnx.load(str(fused / "model.onnx"), load_external_data=False).graph.node)
    before = Counter(n.op_type for n in onnx.load(str(plain / "model.onnx"), load_external_data=False).graph.node)
    L = model.config.num_hidden_layers
    assert ops["VQGemmMulti"] == 2 * L                # q/k/v and gate/up
    assert ops["VQGemm"] == 2 * L                     # o_proj and down_proj read inputs of their own
    assert ops["Split"] == before["Split"]             # gate/up: an output each; GQA reads q/k/v packed
    proto = onnx.load(str(fused / "model.onnx"), load_external_data=False)
    multi = {n.output[0] for n in proto.graph.node if n.op_type == "VQGemmMulti"}
    gqa = [n for n in proto.graph.node if n.op_type == "GroupQueryAttention"]
    assert len(gqa) == L and all(n.input[0] in multi and n.input[1] == n.input[2] == "" for n in gqa)
    widths = sorted(len(a.ints) for n in proto.graph.node if n.op_type == "VQGemmMulti"
                    for a in n.attribute if a.name == "out_features")
    assert widths == [2] * L + [3] * L
    assert ops["VQGemm"] + sum(widths) == before["VQGemm"]


def test_logits_are_the_unfused_exports(pair):
    from vq2trt.runtime.session import OnnxDecoder

    _, plain, fused, _ = pair
    a, b = OnnxDecoder(plain), OnnxDecoder(fused)
    ids = sample_batch(seed=5, batch=2, seq=7).numpy()
    mask, pos = np.ones_like(ids), np.tile(np.arange(7), (2, 1))
    la, pa = a.step(ids, mask, pos, a.empty_past(2))
    lb, pb = b.step(ids, mask, pos, b.empty_past(2))
    assert np.array_equal(la, lb)
    nxt = np.array([[3], [9]])
    la, _ = a.step(nxt, np.ones((2, 8)), np.array([[7], [7]]), pa)
    lb, _ = b.step(nxt, np.ones((2, 8)), np.array([[7], [7]]), pb)
    assert np.array_equal(la, lb)
    prompt = list(ids[0, :5])
    assert a.generate(prompt, 6).tokens == b.generate(prompt, 6).tokens      # SharedCache loop


def test_folded_layer_ops(pair):
    """Every layer's two norms and its SwiGLU live in the multi nodes; the logits are the unfused
    export's up to float rounding, at level 0, in a prefill and a decode step."""
    from vq2trt.runtime.session import OnnxDecoder

    model, plain, _, folded = pair
    proto = onnx.load(str(folded / "model.onnx"), load_external_data=False)
    ops = Counter(n.op_type for n in proto.graph.node)
    L = model.config.num_hidden_layers
    assert ops["SkipSimplifiedLayerNormalization"] == 1                 # the final norm, before lm_head
    assert ops["Sigmoid"] == 0 and ops["VQGemmMulti"] == 2 * L
    assert ops["GroupQueryAttention"] == 0 and ops["CachedAttention"] == L        # export/cached_attention.py
    multi = [{a.name: onnx.helper.get_attribute_value(a) for a in n.attribute} for n in proto.graph.node
             if n.op_type == "VQGemmMulti"]
    # Layer 0's input norm reads the embedding (RMSNormalization: prenorm 1), every other one the
    # residual stream and the last projection (SkipSimplifiedLayerNormalization: prenorm 2).
    assert [m.get("prenorm") for m in multi] == [1] + [2] * (2 * L - 1)
    assert [m.get("activation") for m in multi] == [None, b"swiglu"] * L
    a, b = OnnxDecoder(plain), OnnxDecoder(folded)
    ids = sample_batch(seed=6, batch=2, seq=7).numpy()
    mask, pos = np.ones_like(ids), np.tile(np.arange(7), (2, 1))
    la, pa = a.step(ids, mask, pos, a.empty_past(2))
    lb, pb = b.step(ids, mask, pos, b.empty_past(2))
    scale = np.abs(la).max()
    assert np.abs(la - lb).max() < 1e-4 * scale
    nxt = np.array([[3], [9]])
    la, _ = a.step(nxt, np.ones((2, 8)), np.array([[7], [7]]), pa)
    lb, _ = b.step(nxt, np.ones((2, 8)), np.array([[7], [7]]), pb)
    assert np.abs(la - lb).max() < 1e-4 * scale


@pytest.mark.parametrize("which", [2, 3], ids=["kept", "folded"])
def test_genai_runs_the_fused_export(pair, which):
    from .test_genai import check_same_as_run

    check_same_as_run(pair[which])


def test_basic_graph_refuses_before_writing(tmp_path):
    from vq2trt.export.multi_weight import MultiWeightError
    from vq2trt.export.onnx_export import export_onnx

    with pytest.raises(MultiWeightError, match="ONNX Runtime's CPU EP.*fused.*ort"):
        export_onnx(_quantized(DEFAULT), tmp_path / "m", ops="basic", fuse_projections=True)
    assert not (tmp_path / "m").exists()


def test_cli_refusals_are_one_line(tmp_path, capsys):
    """`vq2trt export --fuse-projections --ops basic`, and --ops ort on a sliding-window model, end
    with the reason on one line (exit 2), no traceback."""
    import transformers as T

    from tests.pipeline.tiny import save_tiny
    from vq2trt.cli import main

    model = save_tiny(tmp_path / "model")
    assert main(["export", str(model), "--out", str(tmp_path / "a"), "--ops", "basic", "--fuse-projections"]) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("vq2trt: error: ") and "ONNX Runtime's CPU EP" in last and "Traceback" not in err
    mistral = T.MistralForCausalLM(T.MistralConfig(
        vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, sliding_window=4)).eval()
    mistral.save_pretrained(tmp_path / "mistral")
    assert main(["export", str(tmp_path / "mistral"), "--out", str(tmp_path / "b"), "--ops", "ort"]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith("vq2trt: error: ") and "sliding-window" in err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()

"""A checkpoint mixing VQ formats across its Linears goes through `vq2trt export` and ONNX Runtime
with libvq2trt_ort.so: every VQGemm node carries its own Linear's format, and ORT's logits equal
the PyTorch model's."""

from __future__ import annotations

import onnx
import pytest
import torch

from vq2trt.export import op

from .conftest import calib_ids, check_prefill_then_decode, make_tiny_llama, sample_batch

ort = pytest.importorskip("onnxruntime")

ATOL = 1e-4   # as in test_ort_model: same weights, float32 on both sides, only summation order differs

OVERRIDES = {
    # v2-k16 with 10 % outlier columns in a v2-k8 codebook
    "model.layers.0.self_attn.q_proj": dict(vector_len=2, outlier_frac=0.1, outlier_vector_len=2,
                                            outlier_num_centroids=8),
    # v3-k32 with a 4-entry residual, no normalisation
    "model.layers.0.mlp.down_proj": dict(vector_len=3, num_centroids=32, num_res_centroids=4, enable_norm=False),
    # v4-k8 in two column groups
    "model.layers.1.self_attn.o_proj": dict(num_centroids=8, num_groups=2),
}


@pytest.fixture(scope="module")
def mixed_export(tmp_path_factory):
    """(checkpoint folder, export folder) of a tiny model: v4-k16 everywhere but OVERRIDES."""
    from vq2trt.cli import main
    from vq2trt.config import QuantConfig
    from vq2trt.io import save_quantized
    from vq2trt.quantize import quantize

    cfg = QuantConfig(vector_len=4, num_centroids=16, kmeans_iters=3, modules=OVERRIDES)
    model = make_tiny_llama(attention_bias=True)           # biases too: the has_bias input group varies
    quantize(model, cfg, calib_ids(), device="cpu", progress=False)
    root = tmp_path_factory.mktemp("mixed")
    ckpt = save_quantized(model, cfg, root / "ckpt")
    assert main(["export", str(ckpt), "--out", str(root / "onnx")]) == 0
    return ckpt, root / "onnx"


@pytest.fixture(scope="module")
def library():
    from vq2trt.runtime.library import get_library_path
    return get_library_path()


def _node_linear(node) -> str:
    """The Linear a VQGemm node computes, from its indices initializer (named after the module)."""
    return "model." + node.input[1].removesuffix(".indices")


def test_each_node_carries_its_own_format(mixed_export):
    from vq2trt.io import load_quantized
    from vq2trt.nn import VQLinear

    ckpt, out = mixed_export
    model = load_quantized(ckpt)
    weights = {n: m.to_vqweight() for n, m in model.named_modules() if isinstance(m, VQLinear)}
    proto = onnx.load(str(out / "model.onnx"), load_external_data=False)
    nodes = {_node_linear(n): n for n in proto.graph.node if n.op_type == op.OP_TYPE}
    assert set(nodes) == set(weights)
    formats = set()
    for name, node in nodes.items():
        got = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        want = op.attributes(weights[name])
        assert {k: got[k] for k in want if k != "plugin_version"} == \
            {k: v for k, v in want.items() if k != "plugin_version"}, name
        assert len(node.input) == 1 + len(op.input_names(want)), name
        formats.add((got["vector_len"], got["num_centroids"], got["num_res_centroids"], got["num_outlier_cols"],
                     got["num_groups"], got["normalized"]))
    assert len(formats) == 4                                 # the base format and three overrides
    q = {a.name: onnx.helper.get_attribute_value(a) for a in nodes["model.layers.0.self_attn.q_proj"].attribute}
    assert (q["vector_len"], q["num_centroids"], q["num_outlier_cols"], q["num_outlier_centroids"]) == (2, 16, 7, 8)


def test_ort_logits_match_torch(mixed_export, library):
    from vq2trt.io import load_quantized
    from vq2trt.runtime.session import OnnxDecoder

    ckpt, out = mixed_export
    model = load_quantized(ckpt)
    dec = OnnxDecoder(out)
    ids = sample_batch(seed=7, seq=7)
    with torch.no_grad():
        ref = model(ids).logits.numpy()
    check_prefill_then_decode(dec, ref, ids, 5, ATOL)

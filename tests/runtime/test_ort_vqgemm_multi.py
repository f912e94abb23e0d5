"""vq2trt.VQGemmMulti in ONNX Runtime against the VQGemm nodes it replaces.

Each weight's slice of the multi-weight output must be the bytes its own VQGemm node gives (same
kernels, same order of sums), at both accuracy levels, float32 and float16 X, decode and prefill
row counts, Dense4 on and off; bad nodes fail session creation with a message naming the weight.
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from vq2trt.export import multi_weight, op

from .test_ort_vqgemm import random_weight, session

ort = pytest.importorskip("onnxruntime")


def graph_of(weights, dtype, level, rank=2):
    """One VQGemm node per weight, all reading X; outputs Y0, Y1, ..."""
    from onnx import TensorProto, helper, numpy_helper

    elem = TensorProto.FLOAT if dtype == np.float32 else TensorProto.FLOAT16
    lead = [f"d{i}" for i in range(rank - 1)]
    nodes, inits, outs = [], [], []
    for i, w in enumerate(weights):
        ts = [numpy_helper.from_array(np.ascontiguousarray(a), f"w{i}.{n}") for n, a in op.weight_inputs(w).items()]
        inits += ts
        nodes.append(helper.make_node(op.OP_TYPE, ["X", *(t.name for t in ts)], [f"Y{i}"], name=f"vq{i}",
                                      domain=op.DOMAIN, **op.attributes(w, level)))
        outs.append(helper.make_tensor_value_info(f"Y{i}", elem, [*lead, w.out_features]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("X", elem, [*lead, weights[0].in_features])],
                              outs, initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18),
                                                   helper.make_opsetid(op.DOMAIN, op.OP_VERSION)])


SETS = {
    "qkv": [dict(N=96, K=64), dict(N=32, K=64), dict(N=32, K=64)],
    "gate-up": [dict(N=200, K=96, norm=True), dict(N=200, K=96, norm=True, bias=True)],
    "mixed-formats": [dict(N=48, K=90, v=3, k=32, G=2, k_r=256, n_out=3, v_o=4, k_o=16, norm=True),
                      dict(N=37, K=90, v=2, k=16), dict(N=40, K=90, v=4, k=256, k_r=16)],
}


def concatenated(fused, weights, dtype):
    """The fused node with one output, Y = [Y0 | Y1 | ...], as GroupQueryAttention reads q/k/v."""
    from onnx import TensorProto, helper

    m = type(fused)()
    m.CopyFrom(fused)
    node = m.graph.node[0]
    del node.output[:]
    node.output.append("Y")
    del m.graph.output[:]
    elem = TensorProto.FLOAT if dtype == np.float32 else TensorProto.FLOAT16
    m.graph.output.append(helper.make_tensor_value_info("Y", elem, ["d0", "d1", sum(w.out_features for w in weights)]))
    return m


@pytest.mark.parametrize("outputs", ["separate", "concatenated"])
@pytest.mark.parametrize("dense4", [False, True], ids=["lookup", "dense4"])
@pytest.mark.parametrize("level", [0, 4])
@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("name", list(SETS))
def test_same_bytes_as_separate_nodes(library, name, dtype, level, dense4, outputs, monkeypatch):
    if dense4:
        monkeypatch.setenv("VQ2TRT_DENSE4", "1")       # read at session creation
    rng = np.random.default_rng(zlib.crc32(f"{name}/{level}".encode()))
    weights = [random_weight(rng, **kw) for kw in SETS[name]]
    model = graph_of(weights, dtype, level, rank=3)     # [batch, seq, K] with symbolic dims, as a decoder's
    fused = multi_weight.fuse_projections(model)
    assert [n.op_type for n in fused.graph.node] == ["VQGemmMulti"]
    assert list(fused.graph.node[0].output) == [f"Y{i}" for i in range(len(weights))]
    if outputs == "concatenated":
        fused = concatenated(fused, weights, dtype)
    plain, multi = session(model, library), session(fused, library)
    for B, M in ((1, 1), (3, 1), (1, 40), (2, 7)):
        x = rng.standard_normal((B, M, weights[0].in_features)).astype(dtype)
        want, got = plain.run(None, {"X": x}), multi.run(None, {"X": x})
        if outputs == "concatenated":
            want = [np.concatenate(want, axis=-1)]
        for i, (a, b) in enumerate(zip(want, got)):
            assert b.dtype == dtype and b.shape == a.shape
            assert np.array_equal(a.view(np.uint16 if dtype == np.float16 else np.uint32),
                                  b.view(np.uint16 if dtype == np.float16 else np.uint32)), f"weight {i}, M={M}"


def test_only_shared_inputs_fuse():
    """Nodes with different X (or accuracy level) stay apart; one node alone is not rewritten."""
    from onnx import helper

    rng = np.random.default_rng(1)
    w = [random_weight(rng, N=16, K=32) for _ in range(3)]
    model = graph_of(w, np.float32, 0)
    node = model.graph.node[2]
    node.input[0] = "X2"
    model.graph.input.append(helper.make_tensor_value_info("X2", 1, ["d0", 32]))
    fused = multi_weight.fuse_projections(model)
    assert [n.op_type for n in fused.graph.node] == ["VQGemmMulti", "VQGemm"]
    assert multi_weight.fuse_projections(graph_of(w[:1], np.float32, 0)).graph.node[0].op_type == "VQGemm"


def test_bad_nodes_fail_session_creation(library):
    from onnx import helper

    rng = np.random.default_rng(2)
    w = [random_weight(rng, N=16, K=32), random_weight(rng, N=8, K=32)]
    fused = multi_weight.fuse_projections(graph_of(w, np.float32, 0))
    node = fused.graph.node[0]

    def with_attr(name, value):
        m = type(fused)()
        m.CopyFrom(fused)
        n = m.graph.node[0]
        for a in n.attribute:
            if a.name == name:
                n.attribute.remove(a)
                break
        n.attribute.append(helper.make_attribute(name, value))
        return m

    with pytest.raises(Exception, match="num_centroids.*1 entries.*one per weight"):
        session(with_attr("num_centroids", [256]), library)
    with pytest.raises(Exception, match="weight 1.*in_features 48 differs"):
        session(with_attr("in_features", [32, 48]), library)
    with pytest.raises(Exception, match='plugin_version must be "1", got "2"'):
        session(with_attr("plugin_version", "2"), library)
    m = type(fused)()
    m.CopyFrom(fused)
    del m.graph.node[0].input[-1]                      # weight 1's perm
    with pytest.raises(Exception, match="VQGemmMulti.*inputs"):
        session(m, library)
    m = type(fused)()
    m.CopyFrom(fused)
    m.graph.node[0].output.append("Y9")                # 3 outputs for 2 weights
    m.graph.output.append(helper.make_tensor_value_info("Y9", 1, None))
    with pytest.raises(Exception, match="3 outputs; expected 1.*or 2"):
        session(m, library)
    assert node.op_type == "VQGemmMulti"

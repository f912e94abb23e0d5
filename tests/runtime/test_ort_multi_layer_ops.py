"""VQGemmMulti with the layer's norm and SwiGLU folded in (export/fold_layer_ops.py) against the
nodes it replaces, run by ONNX Runtime itself: SkipSimplifiedLayerNormalization (or ONNX
RMSNormalization), the projections as VQGemm nodes, Sigmoid / Mul / Mul. Level 0 only differs by
float rounding (the norm's sum order, the AVX2 exp; test_layer_ops checks both against float64):
bounded here relative to the outputs' scale; the residual sum is the same bytes. Bad layer
attributes and inputs fail session creation with a message naming them."""

from __future__ import annotations

import numpy as np
import pytest

from vq2trt.export import fold_layer_ops, multi_weight, op

from .test_ort_vqgemm import random_weight, session

ort = pytest.importorskip("onnxruntime")


def layer_graph(weights, dtype, level, norm="skip", swiglu=False):
    """X (and skip) -> norm -> one VQGemm node per weight (-> silu(Y0) * Y1); outputs the weights'
    outputs (or the SwiGLU product), then the residual sum where the norm has a skip."""
    from onnx import TensorProto, helper, numpy_helper

    elem = TensorProto.FLOAT if dtype == np.float32 else TensorProto.FLOAT16
    K = weights[0].in_features
    rng = np.random.default_rng(K)
    gamma = numpy_helper.from_array((1 + 0.3 * rng.standard_normal(K)).astype(dtype), "gamma")
    inputs = [helper.make_tensor_value_info("X", elem, ["b", "s", K])]
    if norm == "skip":
        inputs.append(helper.make_tensor_value_info("S", elem, ["b", "s", K]))
        nodes = [helper.make_node("SkipSimplifiedLayerNormalization", ["X", "S", "gamma"], ["N", "", "", "SUM"],
                                  domain="com.microsoft", epsilon=1e-5)]
    else:
        nodes = [helper.make_node("RMSNormalization", ["X", "gamma"], ["N"], epsilon=1e-6, axis=-1)]
    inits, outs = [gamma], []
    for i, w in enumerate(weights):
        ts = [numpy_helper.from_array(np.ascontiguousarray(a), f"w{i}.{n}") for n, a in op.weight_inputs(w).items()]
        inits += ts
        nodes.append(helper.make_node(op.OP_TYPE, ["N", *(t.name for t in ts)], [f"Y{i}"], name=f"vq{i}",
                                      domain=op.DOMAIN, **op.attributes(w, level)))
        outs.append(helper.make_tensor_value_info(f"Y{i}", elem, ["b", "s", w.out_features]))
    if swiglu:
        nodes += [helper.make_node("Sigmoid", ["Y0"], ["sig"]), helper.make_node("Mul", ["Y0", "sig"], ["silu"]),
                  helper.make_node("Mul", ["silu", "Y1"], ["H"])]
        outs = [helper.make_tensor_value_info("H", elem, ["b", "s", weights[0].out_features])]
    if norm == "skip":
        outs.append(helper.make_tensor_value_info("SUM", elem, ["b", "s", K]))
    graph = helper.make_graph(nodes, "g", inputs, outs, initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23), helper.make_opsetid("com.microsoft", 1),
                                                   helper.make_opsetid(op.DOMAIN, op.OP_VERSION)])


def folded(model):
    out = fold_layer_ops.fold_layer_ops(multi_weight.fuse_projections(model))
    assert [n.op_type for n in out.graph.node] == ["VQGemmMulti"]
    return out


CASES = {
    "qkv-skip": ([dict(N=96, K=64), dict(N=32, K=64), dict(N=32, K=64)], "skip", False),
    "qkv-rms": ([dict(N=96, K=64), dict(N=32, K=64), dict(N=32, K=64)], "rms", False),
    "gate-up-skip-swiglu": ([dict(N=200, K=96, norm=True), dict(N=200, K=96, norm=True, bias=True)], "skip", True),
    "gate-up-rms-swiglu": ([dict(N=37, K=90, v=3, k=32, G=2, k_r=256, n_out=3, v_o=4, k_o=16, norm=True),
                            dict(N=37, K=90, v=2, k=16)], "rms", True),
}


@pytest.mark.parametrize("dense4", [False, True], ids=["lookup", "dense4"])
@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("name", list(CASES))
def test_folded_node_matches_the_nodes_it_replaces(library, name, dtype, dense4, monkeypatch):
    if dense4:
        monkeypatch.setenv("VQ2TRT_DENSE4", "1")
    specs, norm, swiglu = CASES[name]
    rng = np.random.default_rng(len(name))
    weights = [random_weight(rng, **kw) for kw in specs]
    model = layer_graph(weights, dtype, 0, norm, swiglu)
    fused = folded(model)
    node = fused.graph.node[0]
    attrs = {a.name for a in node.attribute}
    assert {"prenorm", "epsilon"} <= attrs and (("activation" in attrs) == swiglu)
    plain, multi = session(model, library), session(fused, library)
    K = weights[0].in_features
    # fp16: the norm's output is rounded to fp16 before the weights read it, in both graphs, but
    # a different last bit there moves a product by up to 2^-11 of its size.
    tol = 2e-5 if dtype == np.float32 and not dense4 else 1e-2 if dense4 else 4e-3
    for B, M in ((1, 1), (2, 1), (1, 33)):
        feeds = {"X": (2 * rng.standard_normal((B, M, K))).astype(dtype)}
        if norm == "skip":
            feeds["S"] = rng.standard_normal((B, M, K)).astype(dtype)
        want, got = plain.run(None, feeds), multi.run(None, feeds)
        assert len(want) == len(got)
        for i, (a, b) in enumerate(zip(want, got)):
            assert b.dtype == dtype and b.shape == a.shape
            if norm == "skip" and i == len(want) - 1:
                assert np.array_equal(a, b), "the residual sum X + skip"
                continue
            a32, b32 = a.astype(np.float64), b.astype(np.float64)
            err = np.abs(a32 - b32).max() / (np.abs(a32).max() + 1e-30)
            assert err < tol, f"output {i}, B={B} M={M}: relative error {err:.2e}"


def test_only_sole_readers_fold():
    """A norm whose output something else reads, or SwiGLU whose gate is read elsewhere, stays."""
    from onnx import helper

    rng = np.random.default_rng(3)
    w = [random_weight(rng, N=16, K=32), random_weight(rng, N=16, K=32)]
    model = layer_graph(w, np.float32, 0, "skip", True)
    model.graph.output.append(helper.make_tensor_value_info("N", 1, None))       # the norm's output read
    model.graph.output.append(helper.make_tensor_value_info("Y0", 1, None))      # the gate read
    out = fold_layer_ops.fold_layer_ops(multi_weight.fuse_projections(model))
    assert [n.op_type for n in out.graph.node] == ["SkipSimplifiedLayerNormalization", "VQGemmMulti", "Sigmoid",
                                                   "Mul", "Mul"]


def test_bad_layer_attributes_and_inputs(library):
    from onnx import helper

    rng = np.random.default_rng(4)
    w = [random_weight(rng, N=16, K=32), random_weight(rng, N=8, K=32)]
    base = folded(layer_graph(w, np.float32, 0, "skip", False))

    def edit(fn):
        m = type(base)()
        m.CopyFrom(base)
        fn(m.graph.node[0], m)
        return m

    def set_attr(name, value):
        def fn(n, _m):
            for a in n.attribute:
                if a.name == name:
                    n.attribute.remove(a)
                    break
            n.attribute.append(helper.make_attribute(name, value))
        return fn

    with pytest.raises(Exception, match="'prenorm' must be 0.*got 3"):
        session(edit(set_attr("prenorm", 3)), library)
    with pytest.raises(Exception, match="'epsilon' must be > 0"):
        session(edit(set_attr("epsilon", 0.0)), library)
    with pytest.raises(Exception, match="'activation' must be.*got \"gelu\""):
        session(edit(set_attr("activation", "gelu")), library)
    with pytest.raises(Exception, match="swiglu.*two weights.*out_features 16 and 8"):
        session(edit(set_attr("activation", "swiglu")), library)
    with pytest.raises(Exception, match=r"input 2 \(gamma\) must be X's dtype, shape \[32\]"):
        def short_gamma(_n, m):
            g = next(t for t in m.graph.initializer if t.name == "gamma")
            g.dims[0] = 31
            g.raw_data = g.raw_data[:31 * 4]
        session(edit(short_gamma), library)
    with pytest.raises(Exception, match="4 outputs; expected 1.*or 2.*sum X \\+ skip last"):
        session(edit(lambda n, m: (n.output.append("Y9"), m.graph.output.append(
            helper.make_tensor_value_info("Y9", 1, None)))), library)

"""The normalisation before, and SwiGLU after, a layer's VQGemmMulti nodes, folded into them.

On a 2-core CPU at batch 1, ONNX Runtime spent 10-20 µs on each SkipSimplifiedLayerNormalization
and on each Sigmoid/Mul pair of SwiGLU, mostly node dispatch: with the GroupQueryAttention nodes
that was a quarter of a SmolLM2 decode step outside the projections. A VQGemmMulti node can do
both itself (docs/format.md §10):

- ``prenorm`` 1: ``X`` is normalised (RMS, over the last axis, times ``gamma``) before the weights
  read it; inputs ``X, gamma, <weights>``. ``prenorm`` 2: ``X + skip`` is (the residual add of
  SkipSimplifiedLayerNormalization); inputs ``X, skip, gamma, <weights>``, and the sum is the
  node's last output. ``epsilon`` as the folded node's.
- ``activation`` "swiglu": a gate/up pair gives one output ``silu(gate) · up``.

The values are the folded nodes' up to float rounding (the normalisation's sum order, the exp of
the SwiGLU): not the same bytes, so the fold is an option of its own (``fold_layer_ops``).
"""

from __future__ import annotations

from onnx import helper

from vq2trt.export import multi_weight

CONTRIB = "com.microsoft"


def _attr(node, name, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _norm_fold(norm, x: str, readers: dict, graph_outputs: set):
    """(prenorm, epsilon, inputs before the weights', sum output name or None) when ``norm`` makes
    ``x`` as a foldable RMS normalisation that only the multi node reads; else None."""
    if norm is None or x in graph_outputs or len(readers.get(x, [])) != 1 or norm.output[0] != x:
        return None
    if norm.op_type == "SkipSimplifiedLayerNormalization" and norm.domain == CONTRIB:
        extra = list(norm.output[1:3])
        if (len(norm.input) > 3 and norm.input[3]) or any(extra):   # a bias, or mean / inv_std read
            return None
        total = norm.output[3] if len(norm.output) > 3 and norm.output[3] else None
        return 2, float(_attr(norm, "epsilon", 1e-5)), list(norm.input[:3]), total
    if norm.op_type in ("RMSNormalization", "SimplifiedLayerNormalization") and norm.domain in ("", "ai.onnx"):
        if _attr(norm, "axis", -1) != -1 or _attr(norm, "stash_type", 1) != 1 or any(norm.output[1:]):
            return None
        return 1, float(_attr(norm, "epsilon", 1e-5)), list(norm.input[:2]), None
    return None


def _swiglu_fold(gate: str, up: str, readers: dict, graph_outputs: set):
    """(the three nodes, the product's name) where gate and up are read only as
    Mul(Mul(gate, Sigmoid(gate)), up) (operands in either order); else None."""
    if {gate, up} & graph_outputs:
        return None
    g_readers = [n for n, _ in readers.get(gate, [])]
    sig = next((n for n in g_readers if n.op_type == "Sigmoid"), None)
    mul1 = next((n for n in g_readers if n.op_type == "Mul"), None)
    if len(g_readers) != 2 or sig is None or mul1 is None or sorted(mul1.input) != sorted([gate, sig.output[0]]):
        return None
    if len(readers.get(sig.output[0], [])) != 1 or len(readers.get(mul1.output[0], [])) != 1:
        return None
    mul2 = readers[mul1.output[0]][0][0]
    if (mul2.op_type != "Mul" or sorted(mul2.input) != sorted([mul1.output[0], up])
            or len(readers.get(up, [])) != 1 or {sig.output[0], mul1.output[0]} & graph_outputs):
        return None
    return (sig, mul1, mul2), mul2.output[0]


def fold_layer_ops(proto):
    """The proto with each VQGemmMulti node's producing RMS normalisation (SkipSimplified or plain)
    and a gate/up node's SwiGLU folded into it, where nothing else reads the folded values."""
    import onnx

    multi_weight.register_schema()
    graph = proto.graph
    producer_of = {o: n for n in graph.node for o in n.output if o}
    readers: dict[str, list] = {}
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name:
                readers.setdefault(name, []).append((node, i))
    graph_outputs = {o.name for o in graph.output}
    drop, replace = set(), {}
    for node in graph.node:
        if node.op_type != multi_weight.OP_TYPE or node.domain != multi_weight.op.DOMAIN:
            continue
        if _attr(node, "prenorm", 0) or _attr(node, "activation", b""):
            continue                                                      # folded already
        inputs, outputs, attrs = list(node.input), list(node.output), {}
        norm = producer_of.get(inputs[0])
        fold = _norm_fold(norm, inputs[0], readers, graph_outputs)
        sum_out = None
        if fold is not None:
            prenorm, eps, head, sum_out = fold
            if prenorm == 2 and sum_out is None:
                sum_out = f"{node.name or outputs[0]}/residual"              # unread, but the op gives it
            inputs = head + inputs[1:]
            attrs.update(prenorm=prenorm, epsilon=eps)
            drop.add(norm.output[0])
        if len(outputs) == 2 and len(_attr(node, "out_features")) == 2:
            sw = _swiglu_fold(outputs[0], outputs[1], readers, graph_outputs)
            if sw is not None:
                nodes, product = sw
                outputs = [product]
                attrs["activation"] = "swiglu"
                drop.update(n.output[0] for n in nodes)
        if not attrs:
            continue
        if sum_out is not None:
            outputs.append(sum_out)
        new = helper.make_node(node.op_type, inputs, outputs, name=node.name, domain=node.domain, **attrs)
        new.attribute.extend(node.attribute)
        replace[node.output[0]] = new
    if not replace:
        return proto
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    del out.graph.node[:]
    for node in graph.node:
        key = node.output[0] if node.output else None
        if key in drop:
            continue
        out.graph.node.append(replace.get(key, node))
    return out

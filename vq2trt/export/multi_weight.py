"""One node for the VQGemm weights that read the same activations (``fuse_projections``).

A decoder layer's q, k and v projections read one normalised hidden state, and so do gate and up.
As separate VQGemm nodes each costs a node dispatch and a thread-pool hand-off; on a small model
at batch 1 that fixed cost is a large share of the node (SmolLM2's 192 x 576 k/v projections:
~8 of ~13 µs on a 2-core AVX2 CPU). ``vq2trt.VQGemmMulti`` (docs/format.md §10) takes X and every
member weight's inputs, in VQGemm's order one weight after another, and returns each weight's
outputs (one output per weight, or one with their outputs side by side along the last axis, which
GroupQueryAttention reads as packed q/k/v). Its per-weight
attributes are VQGemm's INT attributes as INTS (one entry per weight), ``accuracy_level`` one INT.

The weights keep their own permutations, codebooks and scales (VPTQ quantizes each on its own), so
each weight's output is the bytes its VQGemm node gives. The op exists in the ONNX Runtime
library's CPU kernel only: TensorRT and ORT's CUDA EP run the unfused graph.
"""

from __future__ import annotations

from collections import OrderedDict

from vq2trt.export import op

OP_TYPE = "VQGemmMulti"


class MultiWeightError(ValueError):
    """A graph or node the multi-weight fusion cannot take."""


def register_schema() -> None:
    """VQGemmMulti with onnx.defs (once per process), so that onnx.checker and shape inference
    take fused graphs."""
    import onnx.defs as defs

    if defs.has(OP_TYPE, op.DOMAIN):
        return
    S = defs.OpSchema
    spec = op.schema()
    kinds = {"INT": S.AttrType.INTS, "STRING": S.AttrType.STRING}
    attrs = [S.Attribute(a["name"], S.AttrType.INT if a["name"] == "accuracy_level" else kinds[a["type"]],
                         "one INT for every weight" if a["name"] == "accuracy_level" else
                         f"per weight: {a.get('doc', a['name'])}") for a in spec["attributes"]]
    attrs += [S.Attribute("prenorm", S.AttrType.INT, "0: none; 1: RMS norm of X; 2: of X + skip (the sum "
                          "is the last output)", required=False),
              S.Attribute("epsilon", S.AttrType.FLOAT, "the norm's epsilon", required=False),
              S.Attribute("activation", S.AttrType.STRING, '"swiglu": one output silu(Y_0) * Y_1', required=False)]
    inputs = [S.FormalParameter("inputs", "V", "X, then each weight's VQGemm inputs (absent groups left out)",
                                param_option=S.FormalParameterOption.Variadic, is_homogeneous=False, min_arity=4)]
    schema_obj = S(
        OP_TYPE, op.DOMAIN, op.OP_VERSION, "Y = concat(VQGemm_w(X) for each weight w, axis=-1)", inputs=inputs,
        outputs=[S.FormalParameter("Y", "T", "one per weight ([..., out_features]), or one [..., sum of "
                                   "out_features]; X's dtype", param_option=S.FormalParameterOption.Variadic,
                                   is_homogeneous=True, min_arity=1)],
        type_constraints=[("T", ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"], "activations"),
                          ("V", ["tensor(float)", "tensor(float16)", "tensor(bfloat16)", "tensor(int32)"],
                           "X, packed indices, fp16 codebooks/scales, fp32 bias")],
        attributes=attrs)
    schema_obj.set_type_and_shape_inference_function(_infer)
    defs.register_schema(schema_obj)


def _infer(ctx) -> None:
    x = ctx.get_input_type(0)
    if x is None or not x.HasField("tensor_type"):
        return
    widths = list(ctx.get_attribute("out_features").ints)
    prenorm, activation = ctx.get_attribute("prenorm"), ctx.get_attribute("activation")
    total = prenorm is not None and prenorm.i == 2                   # X + skip, the last output
    outs = ctx.get_num_outputs() - total
    if activation is not None and activation.s == b"swiglu":
        widths = widths[:1]
    for i in range(outs):
        ctx.set_output_type(i, op.like_x(x, sum(widths) if outs == 1 else widths[i]))
    if total:
        ctx.set_output_type(outs, x)


def member_attrs(attrs: dict) -> list[dict]:
    """A VQGemmMulti node's attributes as one VQGemm attribute dict per weight."""
    names = [a["name"] for a in op.schema()["attributes"]]
    count = len(attrs["out_features"])
    out = []
    for w in range(count):
        a = {}
        for name in names:
            v = attrs[name]
            if name in ("accuracy_level", "plugin_version"):
                a[name] = v
            else:
                if len(v) != count:
                    raise MultiWeightError(f"{OP_TYPE}: attribute {name} has {len(v)} entries, out_features "
                                           f"{count}: one per weight")
                a[name] = int(v[w])
        out.append(a)
    return out


LAYER_ATTRS = ("prenorm", "epsilon", "activation")


def layer_inputs(attrs: dict) -> int:
    """How many inputs sit between X and the first weight's (fold_layer_ops: [skip,] gamma)."""
    return {0: 0, 1: 1, 2: 2}.get(int(attrs.get("prenorm", 0)), 0)


def split_inputs(attrs: dict, weights: list) -> list[tuple[dict, list]]:
    """(VQGemm attributes, weight inputs) per member of a VQGemmMulti node, from its inputs after X
    and the layer ops' (``layer_inputs``)."""
    weights = weights[layer_inputs(attrs):]
    out, at = [], 0
    for a in member_attrs(attrs):
        n = len(op.input_names(a))
        if at + n > len(weights):
            raise MultiWeightError(f"{OP_TYPE}: the attributes call for more weight inputs than the node's "
                                   f"{len(weights)}")
        out.append((a, weights[at:at + n]))
        at += n
    if at != len(weights):
        raise MultiWeightError(f"{OP_TYPE}: the attributes call for {at} weight inputs, the node has {len(weights)}")
    return out


def fuse_projections(proto, min_group: int = 2):
    """The model proto with every set of >= min_group VQGemm nodes that share their X input (and
    accuracy level) replaced by one VQGemmMulti node; returns a new proto. The node has one output
    per weight (the old outputs' names), or one, [q | k | v], where a GroupQueryAttention reads
    exactly those three as its query, key and value: it then takes them packed."""
    import onnx
    from onnx import helper

    register_schema()
    graph = proto.graph
    groups: OrderedDict[tuple, list] = OrderedDict()
    for node in graph.node:
        if node.op_type == op.OP_TYPE and node.domain == op.DOMAIN:
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            groups.setdefault((node.input[0], attrs["accuracy_level"], attrs["in_features"]), []).append((node, attrs))
    # Nodes by their first output's name (unique in a graph): protobuf wrappers are no stable keys.
    group_of = {n.output[0]: k for k, g in groups.items() if len(g) >= min_group for n, _ in g}
    if not group_of:
        return proto
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    del out.graph.node[:]
    consumers: dict[str, list] = {}
    for node in graph.node:
        for i, name in enumerate(node.input):
            consumers.setdefault(name, []).append((node, i))
    graph_outputs = {o.name for o in graph.output}
    packed = {}                           # GroupQueryAttention output name -> the packed q/k/v it reads
    names = [a["name"] for a in op.schema()["attributes"]]
    done = set()
    for node in graph.node:
        key = group_of.get(node.output[0]) if node.output else None
        if key is None:
            out.graph.node.append(node)
            continue
        if key in done:
            continue
        done.add(key)
        members = groups[key]
        x = key[0]
        stem = members[0][0].name or members[0][0].output[0]
        y = f"{stem}/multi_out"
        inputs = [x] + [i for n, _ in members for i in n.input[1:]]
        attrs = {}
        for name in names:
            vals = [a[name] for _, a in members]
            if name == "plugin_version":
                attrs[name] = vals[0].decode() if isinstance(vals[0], bytes) else vals[0]
            elif name == "accuracy_level":
                attrs[name] = int(vals[0])
            else:
                attrs[name] = [int(v) for v in vals]
        gqa = _packed_qkv_reader([n.output[0] for n, _ in members], consumers, graph_outputs)
        if gqa is not None:                               # reads [q | k | v] as one packed input
            packed[gqa.output[0]] = y
            outputs = [y]
        else:                                             # one output per weight, under its old name
            outputs = [n.output[0] for n, _ in members]
        out.graph.node.append(helper.make_node(OP_TYPE, inputs, outputs, name=f"{stem}/multi", domain=op.DOMAIN,
                                               **attrs))
    for node in out.graph.node:
        if node.op_type == "GroupQueryAttention" and node.output[0] in packed:
            node.input[0], node.input[1], node.input[2] = packed[node.output[0]], "", ""
    return out


def _packed_qkv_reader(outputs, consumers, graph_outputs):
    """The GroupQueryAttention node that reads exactly these three outputs as its query, key and
    value (and nothing else reads them), or None. Its packed form takes [q | k | v] as the query
    with key and value left out, which is the VQGemmMulti output as it stands."""
    if len(outputs) != 3 or any(o in graph_outputs for o in outputs):
        return None
    readers = [consumers.get(o, []) for o in outputs]
    if any(len(r) != 1 for r in readers):
        return None
    node = readers[0][0][0]
    if (any(r[0][0].output[0] != node.output[0] for r in readers) or node.op_type != "GroupQueryAttention"
            or [r[0][1] for r in readers] != [0, 1, 2]):
        return None
    return node


def count_weights(graph) -> int:
    """VQGemm weights in an onnx-graphsurgeon graph: VQGemm nodes plus VQGemmMulti members."""
    return sum(len(n.attrs["out_features"]) for n in graph.nodes if n.op == OP_TYPE)

"""ONNX Runtime's contrib ops in the fused graph (``ops="ort"`` exports).

The opset-23 graph (``ops="fused"``) is standard ONNX; ONNX Runtime has fused kernels that go
further, and ORT GenAI's own models use them:

- com.microsoft.GroupQueryAttention for each Attention node and its two RotaryEmbedding nodes
  (``do_rotary``, cos/sin tables up to max_position_embeddings, our position_ids passed through).
  The standard Attention returns present = concat(past, new) as a new tensor every step, so the
  runtime copies the whole KV cache twice a token; GroupQueryAttention writes the new keys and
  values into the cache when past and present are one buffer, which ORT GenAI then allocates once
  (``past_present_share_buffer``, which genai_config.json turns on for these exports).
- com.microsoft.SkipSimplifiedLayerNormalization for a residual Add followed by RMSNormalization:
  one node returns the normalised sum and the sum itself.

SmolLM2's decode graph loses 150 of its ~520 nodes. What changes with it: GroupQueryAttention reads
``attention_mask`` as sequence lengths (seqlens_k = row sum - 1, total_sequence_length = its
width), so batch rows may be padded on the right only (ORT GenAI's convention), and it masks
causally itself, so sliding-window models (whose window is in the additive mask) are refused;
positions stop at max_position_embeddings (the rotary tables' length).
"""

from __future__ import annotations

import numpy as np

DOMAIN = "com.microsoft"


class OrtContribError(ValueError):
    """A model or graph the ONNX Runtime contrib-op export cannot serve."""


def _schema(name: str, doc: str, inputs, outputs, constraints, attributes, infer) -> None:
    import onnx.defs as defs

    if defs.has(name, DOMAIN):
        return
    schema = defs.OpSchema(name, DOMAIN, 1, doc, inputs=inputs, outputs=outputs, type_constraints=constraints,
                           attributes=attributes)
    schema.set_type_and_shape_inference_function(infer)
    defs.register_schema(schema)


def register_schemas() -> None:
    """The two contrib ops with onnx.defs (once per process; onnx ships no contrib schemas), as far
    as this export uses them, so that onnx.checker and shape inference take the graph."""
    import onnx.defs as defs

    S = defs.OpSchema
    opt = S.FormalParameterOption.Optional
    T, L, P = "T", "L", "P"                          # activations, lengths, positions
    _schema(
        "GroupQueryAttention", "causal grouped-query attention with a KV cache (ONNX Runtime contrib op)",
        [S.FormalParameter("query", T, "[B, S, num_heads * d]"),
         S.FormalParameter("key", T, "[B, S, kv_num_heads * d]; absent: query is packed [q | k | v]",
                           param_option=opt),
         S.FormalParameter("value", T, "[B, S, kv_num_heads * d]; absent with key", param_option=opt),
         S.FormalParameter("past_key", T, "[B, kv_num_heads, P, d]"),
         S.FormalParameter("past_value", T, "[B, kv_num_heads, P, d]"),
         S.FormalParameter("seqlens_k", L, "[B]: the last valid key's index"),
         S.FormalParameter("total_sequence_length", L, "scalar"),
         S.FormalParameter("cos_cache", T, "[max positions, d / 2]", param_option=opt),
         S.FormalParameter("sin_cache", T, "[max positions, d / 2]", param_option=opt),
         S.FormalParameter("position_ids", P, "[B, S]", param_option=opt)],
        [S.FormalParameter("output", T, "query's shape"),
         S.FormalParameter("present_key", T, "[B, kv_num_heads, T, d]"),
         S.FormalParameter("present_value", T, "[B, kv_num_heads, T, d]")],
        [(T, ["tensor(float)", "tensor(float16)"], "activations, cache, rotary tables"),
         (L, ["tensor(int32)"], "lengths"), (P, ["tensor(int64)"], "positions")],
        [S.Attribute("num_heads", S.AttrType.INT, "query heads"),
         S.Attribute("kv_num_heads", S.AttrType.INT, "key/value heads"),
         S.Attribute("scale", S.AttrType.FLOAT, "score scale", required=False),
         S.Attribute("softcap", S.AttrType.FLOAT, "tanh soft-capping of the scores", required=False),
         S.Attribute("do_rotary", S.AttrType.INT, "rotate query and key", required=False),
         S.Attribute("rotary_interleaved", S.AttrType.INT, "0: rotate_half halves", required=False)],
        _infer_gqa)
    _schema(
        "SkipSimplifiedLayerNormalization", "RMS normalisation of input + skip (ONNX Runtime contrib op)",
        [S.FormalParameter("input", T, "[..., H]"), S.FormalParameter("skip", T, "input's shape"),
         S.FormalParameter("gamma", T, "[H]")],
        [S.FormalParameter("output", T, "input's shape"),
         S.FormalParameter("mean", "U", "unused", param_option=opt),
         S.FormalParameter("inv_std_var", "U", "unused", param_option=opt),
         S.FormalParameter("input_skip_bias_sum", T, "input + skip", param_option=opt)],
        [(T, ["tensor(float)", "tensor(float16)"], "activations"), ("U", ["tensor(float)"], "statistics")],
        [S.Attribute("epsilon", S.AttrType.FLOAT, "added to the mean square", required=False)],
        _infer_skip_norm)


def _infer_gqa(ctx) -> None:
    import onnx

    q, past = ctx.get_input_type(0), ctx.get_input_type(3)
    if q is not None and q.HasField("tensor_type"):
        out = onnx.TypeProto()
        out.CopyFrom(q)
        packed = not ctx.has_input(1)
        dims = out.tensor_type.shape.dim
        if packed and len(dims) == 3:                     # [q | k | v] in, attention over q's heads out
            heads, d = ctx.get_attribute("num_heads").i, None
            if past is not None and past.HasField("tensor_type") and len(past.tensor_type.shape.dim) == 4:
                pd = past.tensor_type.shape.dim[3]
                d = pd.dim_value if pd.HasField("dim_value") else None
            dims[2].Clear()
            if d:
                dims[2].dim_value = heads * d
        ctx.set_output_type(0, out)
    if past is None or not past.HasField("tensor_type"):
        return
    present = onnx.TypeProto()
    present.tensor_type.elem_type = past.tensor_type.elem_type
    if past.tensor_type.HasField("shape") and len(past.tensor_type.shape.dim) == 4:
        dims = past.tensor_type.shape.dim
        for i in range(4):
            d = present.tensor_type.shape.dim.add()
            if i != 2:                                          # the sequence axis grows
                d.CopyFrom(dims[i])
    ctx.set_output_type(1, present)
    ctx.set_output_type(2, present)


def _infer_skip_norm(ctx) -> None:
    x = ctx.get_input_type(0)
    if x is not None and x.HasField("tensor_type"):
        ctx.set_output_type(0, x)
        ctx.set_output_type(3, x)


def check_model(decoder) -> None:
    """Refuse what GroupQueryAttention cannot express (before any export work)."""
    if any(w is not None for w in decoder.windows):
        raise OrtContribError(f"{decoder.family.name}: sliding-window attention is carried by the additive mask, "
                              "which the GroupQueryAttention export drops; use --ops fused")
    if not getattr(decoder, "max_positions", None):
        raise OrtContribError("the model config has no max_position_embeddings, the length of GroupQueryAttention's "
                              "rotary tables; use --ops fused")


def _rotary_tables(decoder, key) -> tuple[np.ndarray, np.ndarray]:
    """cos/sin [max_positions, d / 2] as the fused graph computes them from position_ids."""
    inv = getattr(decoder, decoder._rope_buffer(key)).detach().float().numpy()
    freqs = np.arange(decoder.max_positions, dtype=np.float32)[:, None] * inv[None]
    scale = np.float32(decoder.attention_scaling[key])
    return (np.cos(freqs) * scale).astype(np.float32), (np.sin(freqs) * scale).astype(np.float32)


def _attr(node, name, default=None):
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def use_contrib_ops(proto, decoder):
    """The fused export's proto with GroupQueryAttention (rotary inside) for every Attention node
    and SkipSimplifiedLayerNormalization for every residual Add + RMSNormalization pair. The mask
    and cos/sin computations they read become dead and go in the clean-up that follows
    (graph.finalize)."""
    from onnx import TensorProto, helper, numpy_helper

    register_schemas()
    g = proto.graph
    producer = {o: n for n in g.node for o in n.output}
    graph_inputs = {x.name for x in g.input}
    consumers: dict[str, int] = {}
    for n in g.node:
        for i in n.input:
            consumers[i] = consumers.get(i, 0) + 1
    lengths = [
        helper.make_node("ReduceSum", ["attention_mask", "ort.axis1"], ["ort.mask_sum"], keepdims=0),
        helper.make_node("Sub", ["ort.mask_sum", "ort.one"], ["ort.last"]),
        helper.make_node("Cast", ["ort.last"], ["ort.seqlens_k"], to=TensorProto.INT32),
        helper.make_node("Shape", ["attention_mask"], ["ort.width1"], start=1, end=2),
        helper.make_node("Squeeze", ["ort.width1"], ["ort.width"]),
        helper.make_node("Cast", ["ort.width"], ["ort.total"], to=TensorProto.INT32),
    ]
    inits = [numpy_helper.from_array(np.array([1], np.int64), "ort.axis1"),
             numpy_helper.from_array(np.array(1, np.int64), "ort.one")]
    tables: dict = {}

    def rotated(name: str):
        """The RotaryEmbedding (full, rotate_half) that makes ``name``, or None."""
        n = producer.get(name)
        if n is None or n.op_type != "RotaryEmbedding":
            return None
        return None if _attr(n, "interleaved", 0) or _attr(n, "rotary_embedding_dim", 0) else n

    skip = set()                                                  # nodes folded into others
    fused_add: dict[str, object] = {}                             # RMSNormalization output -> its Add
    for n in g.node:
        if n.op_type != "RMSNormalization" or _attr(n, "axis", -1) != -1 or _attr(n, "stash_type", 1) != 1:
            continue
        add = producer.get(n.input[0])
        if add is None or add.op_type != "Add" or len(n.input) < 2 or id(add) in skip:
            continue
        if any(producer.get(i) is None and i not in graph_inputs for i in add.input):
            continue                                              # an initializer operand: not a residual
        skip.add(id(add))
        fused_add[n.output[0]] = add

    nodes, layer = [], 0
    for n in g.node:
        if id(n) in skip:
            continue
        if n.op_type == "RMSNormalization" and n.output[0] in fused_add:
            add = fused_add[n.output[0]]
            nodes.append(helper.make_node(
                "SkipSimplifiedLayerNormalization", [add.input[0], add.input[1], n.input[1]],
                [n.output[0], "", "", add.output[0]], name=f"{n.name}_skip", domain=DOMAIN,
                epsilon=float(_attr(n, "epsilon", 1e-5))))
            continue
        if n.op_type != "Attention" or n.domain not in ("", "ai.onnx"):
            nodes.append(n)
            continue
        q, k, v, _mask, past_k, past_v = n.input[:6]
        if len(n.output) > 3 and n.output[3]:
            raise OrtContribError(f"Attention node '{n.name}': its qk output is read; GroupQueryAttention has none")
        rq, rk = rotated(q), rotated(k)
        inputs = [q, k, v, past_k, past_v, "ort.seqlens_k", "ort.total"]
        rotary = {}
        if rq is not None and rk is not None and consumers.get(q) == 1 and consumers.get(k) == 1:
            key = decoder._rope_keys[layer]
            if key not in tables:
                cos, sin = _rotary_tables(decoder, key)
                tables[key] = (f"ort.cos_cache.{key or 'rope'}", f"ort.sin_cache.{key or 'rope'}")
                inits += [numpy_helper.from_array(cos, tables[key][0]), numpy_helper.from_array(sin, tables[key][1])]
            skip.update((id(rq), id(rk)))
            inputs = [rq.input[0], rk.input[0], v, past_k, past_v, "ort.seqlens_k", "ort.total", *tables[key],
                      "position_ids"]
            rotary = {"do_rotary": 1, "rotary_interleaved": 0}
        capped = {"softcap": float(_attr(n, "softcap"))} if _attr(n, "softcap") else {}
        nodes.append(helper.make_node(
            "GroupQueryAttention", inputs, list(n.output[:3]), name=f"{n.name}_gqa", domain=DOMAIN,
            num_heads=int(_attr(n, "q_num_heads")), kv_num_heads=int(_attr(n, "kv_num_heads")),
            scale=float(_attr(n, "scale")), **rotary, **capped))
        layer += 1
    if layer != decoder.num_layers:
        raise OrtContribError(f"the fused export has {layer} Attention nodes, the model {decoder.num_layers} layers")
    # RotaryEmbedding nodes met before their Attention were kept above; drop the folded ones now.
    nodes = [x for x in nodes if id(x) not in skip or x.op_type != "RotaryEmbedding"]
    del g.node[:]
    g.node.extend(lengths + nodes)
    g.initializer.extend(inits)
    if not any(o.domain == DOMAIN for o in proto.opset_import):
        proto.opset_import.append(helper.make_opsetid(DOMAIN, 1))
    return proto

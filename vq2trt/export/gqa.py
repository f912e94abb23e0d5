"""ONNX Runtime's GroupQueryAttention in place of the standard Attention (``ops="gqa"`` exports).

The opset-23 Attention node of a fused export returns present = concat(past, new) as a new
tensor every step, so the runtime copies the whole KV cache twice a token (into the node's output,
then back in as the next past). com.microsoft.GroupQueryAttention writes the new keys and values
into the cache instead when past and present are one buffer, which ONNX Runtime GenAI then
allocates once (its ``past_present_share_buffer``). Measured on SmolLM2 at 2 bits in GenAI's loop:
+5 % decode at a 192-token context (RESULTS.md), more as the context grows.

What changes with it: GroupQueryAttention reads ``attention_mask`` only as sequence lengths (its
row sums: seqlens_k = sum - 1 and total_sequence_length = its width), so batch rows may be padded
on the right only (ORT GenAI's convention), and it masks causally itself. Sliding-window models
are refused: their window lives in the additive mask this export drops.
"""

from __future__ import annotations

import numpy as np

DOMAIN = "com.microsoft"


class GqaError(ValueError):
    """A model or graph the GroupQueryAttention export cannot serve."""


def register_schema() -> None:
    """com.microsoft GroupQueryAttention with onnx.defs (once per process; onnx ships no contrib
    schemas), as far as this export uses it: query/key/value [B, S, heads * d], past_key and
    past_value [B, kv_heads, P, d], seqlens_k int32 [B], total_sequence_length int32 scalar."""
    import onnx.defs as defs

    if defs.has("GroupQueryAttention", DOMAIN):
        return
    S = defs.OpSchema
    T, L = "T", "L"                                   # activations, lengths
    schema = S(
        "GroupQueryAttention", DOMAIN, 1, "causal grouped-query attention with a KV cache (ONNX Runtime contrib op)",
        inputs=[S.FormalParameter("query", T, "[B, S, num_heads * d]"),
                S.FormalParameter("key", T, "[B, S, kv_num_heads * d]"),
                S.FormalParameter("value", T, "[B, S, kv_num_heads * d]"),
                S.FormalParameter("past_key", T, "[B, kv_num_heads, P, d]"),
                S.FormalParameter("past_value", T, "[B, kv_num_heads, P, d]"),
                S.FormalParameter("seqlens_k", L, "[B]: the last valid key's index"),
                S.FormalParameter("total_sequence_length", L, "scalar")],
        outputs=[S.FormalParameter("output", T, "query's shape"),
                 S.FormalParameter("present_key", T, "[B, kv_num_heads, T, d]"),
                 S.FormalParameter("present_value", T, "[B, kv_num_heads, T, d]")],
        type_constraints=[(T, ["tensor(float)", "tensor(float16)"], "activations and cache"),
                          (L, ["tensor(int32)"], "lengths")],
        attributes=[S.Attribute("num_heads", S.AttrType.INT, "query heads"),
                    S.Attribute("kv_num_heads", S.AttrType.INT, "key/value heads"),
                    S.Attribute("scale", S.AttrType.FLOAT, "score scale", required=False),
                    S.Attribute("softcap", S.AttrType.FLOAT, "tanh soft-capping of the scores", required=False)])
    schema.set_type_and_shape_inference_function(_infer)
    defs.register_schema(schema)


def _infer(ctx) -> None:
    import onnx

    q, past = ctx.get_input_type(0), ctx.get_input_type(3)
    if q is not None and q.HasField("tensor_type"):
        ctx.set_output_type(0, q)
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


def check_model(decoder) -> None:
    """Refuse what GroupQueryAttention cannot express (before any export work)."""
    if any(w is not None for w in decoder.windows):
        raise GqaError(f"{decoder.family.name}: sliding-window attention is carried by the additive mask, which "
                       "the GroupQueryAttention export drops; use --ops fused")


def use_group_query_attention(proto):
    """The fused export's proto with every opset-23 Attention node replaced by GroupQueryAttention
    (same Q/K/V after rotary, same past/present names); the mask computation they read becomes
    dead and is removed by the graph clean-up that follows (graph.finalize)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    register_schema()
    g = proto.graph
    lengths = [
        helper.make_node("ReduceSum", ["attention_mask", "gqa.axis1"], ["gqa.mask_sum"], keepdims=0),
        helper.make_node("Sub", ["gqa.mask_sum", "gqa.one"], ["gqa.last"]),
        helper.make_node("Cast", ["gqa.last"], ["gqa.seqlens_k"], to=TensorProto.INT32),
        helper.make_node("Shape", ["attention_mask"], ["gqa.width1"], start=1, end=2),
        helper.make_node("Squeeze", ["gqa.width1"], ["gqa.width"]),
        helper.make_node("Cast", ["gqa.width"], ["gqa.total"], to=TensorProto.INT32),
    ]
    g.initializer.extend([numpy_helper.from_array(np.array([1], np.int64), "gqa.axis1"),
                          numpy_helper.from_array(np.array(1, np.int64), "gqa.one")])
    nodes, replaced = [], 0
    for n in g.node:
        if n.op_type != "Attention" or n.domain not in ("", "ai.onnx"):
            nodes.append(n)
            continue
        a = {x.name: helper.get_attribute_value(x) for x in n.attribute}
        q, k, v, _mask, past_k, past_v = n.input[:6]
        if len(n.output) > 3 and n.output[3]:
            raise GqaError(f"Attention node '{n.name}': its qk output is read; GroupQueryAttention has none")
        capped = {"softcap": float(a["softcap"])} if a.get("softcap") else {}
        nodes.append(helper.make_node(
            "GroupQueryAttention", [q, k, v, past_k, past_v, "gqa.seqlens_k", "gqa.total"], list(n.output[:3]),
            name=f"{n.name}_gqa", domain=DOMAIN, num_heads=int(a["q_num_heads"]), kv_num_heads=int(a["kv_num_heads"]),
            scale=float(a["scale"]), **capped))
        replaced += 1
    if not replaced:
        raise GqaError("the fused export has no Attention node to replace")
    del g.node[:]
    g.node.extend(lengths + nodes)
    if not any(o.domain == DOMAIN for o in proto.opset_import):
        proto.opset_import.append(onnx.helper.make_opsetid(DOMAIN, 1))
    return proto

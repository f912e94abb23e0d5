"""vq2trt.CachedAttention in place of GroupQueryAttention (fused ``--ops ort`` exports).

ONNX Runtime's GroupQueryAttention spent 30-45 µs per layer and decode step on SmolLM2's 9 x 64
heads on a 2-core CPU (per-head GEMM calls, thread-pool hand-offs) for ~0.2 M multiply-adds: about
a tenth of the step. vq2trt.CachedAttention (docs/format.md §11, plugins/onnxruntime/attention_op.h)
keeps its contract as this export uses it: packed q/k/v from the VQGemmMulti node, rotate-half
rotary over the whole head from the same cos/sin tables and position_ids, a KV cache that is either
grown from past (the step API) or shared with it (ORT GenAI's ``past_present_share_buffer``), rows
padded on the right. Only the CPU kernel of libvq2trt_ort.so runs it, so it is part of the fusion
that already needs that library (``fuse_projections``); its values equal GroupQueryAttention's up to
float rounding (tests/runtime/test_ort_cached_attention.py).
"""

from __future__ import annotations

from onnx import helper

from vq2trt.export import op, ort_contrib

OP_TYPE = "CachedAttention"


def register_schema() -> None:
    """The op with onnx.defs (once per process), for onnx.checker and shape inference."""
    import onnx.defs as defs

    if defs.has(OP_TYPE, op.DOMAIN):
        return
    S = defs.OpSchema
    opt = S.FormalParameterOption.Optional
    schema = S(
        OP_TYPE, op.DOMAIN, op.OP_VERSION, "causal attention over a KV cache, GroupQueryAttention's decoder contract",
        inputs=[S.FormalParameter("qkv", "T", "[B, S, (num_heads + 2 kv_num_heads) * d]"),
                S.FormalParameter("past_key", "T", "[B, kv_num_heads, P, d]"),
                S.FormalParameter("past_value", "T", "[B, kv_num_heads, P, d]"),
                S.FormalParameter("seqlens_k", "L", "[B]: each row's valid length - 1 after the call"),
                S.FormalParameter("total_sequence_length", "L", "scalar"),
                S.FormalParameter("cos_cache", "T", "[positions, d / 2]"),
                S.FormalParameter("sin_cache", "T", "[positions, d / 2]"),
                S.FormalParameter("position_ids", "P", "[B, S]", param_option=opt)],
        outputs=[S.FormalParameter("output", "T", "[B, S, num_heads * d]"),
                 S.FormalParameter("present_key", "T", "[B, kv_num_heads, max(total, P), d]"),
                 S.FormalParameter("present_value", "T", "[B, kv_num_heads, max(total, P), d]")],
        type_constraints=[("T", ["tensor(float)"], "activations, cache, rotary tables"),
                          ("L", ["tensor(int32)"], "lengths"), ("P", ["tensor(int64)"], "positions")],
        attributes=[S.Attribute("num_heads", S.AttrType.INT, "query heads"),
                    S.Attribute("kv_num_heads", S.AttrType.INT, "key/value heads"),
                    S.Attribute("scale", S.AttrType.FLOAT, "score scale (0: 1/sqrt(d))", required=False)])
    schema.set_type_and_shape_inference_function(_infer)
    defs.register_schema(schema)


def _infer(ctx) -> None:
    # GroupQueryAttention's packed form has the same shapes (the past key sits at input 1 here).
    import onnx

    q, past = ctx.get_input_type(0), ctx.get_input_type(1)
    if q is not None and q.HasField("tensor_type"):
        out = onnx.TypeProto()
        out.CopyFrom(q)
        dims = out.tensor_type.shape.dim
        if len(dims) == 3:
            dims[2].Clear()
            if past is not None and past.HasField("tensor_type") and len(past.tensor_type.shape.dim) == 4:
                pd = past.tensor_type.shape.dim[3]
                if pd.HasField("dim_value"):
                    dims[2].dim_value = ctx.get_attribute("num_heads").i * pd.dim_value
        ctx.set_output_type(0, out)
    if past is None or not past.HasField("tensor_type"):
        return
    present = onnx.TypeProto()
    present.tensor_type.elem_type = past.tensor_type.elem_type
    if len(past.tensor_type.shape.dim) == 4:
        for i, d in enumerate(past.tensor_type.shape.dim):
            new = present.tensor_type.shape.dim.add()
            if i != 2:
                new.CopyFrom(d)
    ctx.set_output_type(1, present)
    ctx.set_output_type(2, present)


def _attr(node, name, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def replaceable(node) -> bool:
    """A GroupQueryAttention node of the form CachedAttention computes: packed q/k/v, float32
    tables, rotate-half rotary over the whole head, no soft-capping or local window."""
    ins = list(node.input) + [""] * (10 - len(node.input))
    return (node.op_type == "GroupQueryAttention" and node.domain == ort_contrib.DOMAIN and len(node.input) <= 10
            and not ins[1] and not ins[2] and all(ins[i] for i in (0, 3, 4, 5, 6, 7, 8))
            and _attr(node, "do_rotary", 0) == 1 and _attr(node, "rotary_interleaved", 0) == 0
            and not _attr(node, "softcap", 0.0) and _attr(node, "local_window_size", -1) == -1
            and not _attr(node, "smooth_softmax", 0))


def use_cached_attention(proto):
    """The proto (changed in place and returned) with every replaceable GroupQueryAttention node
    as a vq2trt.CachedAttention node of the same inputs (key/value dropped) and outputs."""
    register_schema()
    for i, node in enumerate(proto.graph.node):
        if not replaceable(node):
            continue
        ins = list(node.input) + [""] * (10 - len(node.input))
        attrs = {"num_heads": int(_attr(node, "num_heads")), "kv_num_heads": int(_attr(node, "kv_num_heads"))}
        if _attr(node, "scale") is not None:
            attrs["scale"] = float(_attr(node, "scale"))
        new = helper.make_node(OP_TYPE, [ins[0], *ins[3:9]] + ([ins[9]] if ins[9] else []), list(node.output),
                               name=node.name.replace("_gqa", "") + "_attention", domain=op.DOMAIN, **attrs)
        proto.graph.node[i].CopyFrom(new)
    return proto

"""The VQGemm op contract (export/vqgemm_op.json) on the Python side: a VQWeight's node inputs
and attributes, and a one-node ONNX model for tests and benchmarks. Needs numpy only; `onnx` is
imported by the builder alone."""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np

from vq2trt.format import VQWeight

DOMAIN = "vq2trt"
OP_TYPE = "VQGemm"
OP_VERSION = 1
PLUGIN_VERSION = "1"

# Input groups in node order; a group is passed whole or left out (docs/format.md §9).
INPUT_GROUPS = (
    (None, ("indices", "codebook", "perm")),
    ("num_res_centroids", ("res_indices", "res_codebook")),
    ("num_outlier_cols", ("outlier_indices", "outlier_codebook")),
    ("normalized", ("col_scale", "col_bias")),
    ("has_bias", ("bias",)),
)


def schema_path() -> Path:
    """The schema file (export/vqgemm_op.json, shipped in the package through a symlink)."""
    return Path(str(resources.files("vq2trt.export").joinpath("vqgemm_op.json")))  # -> export/ in a checkout


@lru_cache(maxsize=1)
def schema() -> dict:
    return json.loads(schema_path().read_text())


def attributes(w: VQWeight, accuracy_level: int = 0) -> dict[str, int | str]:
    """VQGemm node attributes for one quantized Linear, in the schema's order."""
    if accuracy_level not in (0, 4):
        raise ValueError(f"accuracy_level must be 0 (float32) or 4 (int8 activations), got {accuracy_level}")
    n_out = w.num_outlier_cols
    return {
        "out_features": w.out_features,
        "in_features": w.in_features,
        "vector_len": w.vector_len,
        "num_centroids": w.num_centroids,
        "num_groups": w.num_groups,
        "num_res_centroids": 0 if w.res_codebook is None else int(w.res_codebook.shape[1]),
        "num_outlier_cols": n_out,
        "outlier_vector_len": int(w.outlier_codebook.shape[1]) if n_out else 0,
        "num_outlier_centroids": int(w.outlier_codebook.shape[0]) if n_out else 0,
        "normalized": int(w.col_scale is not None),
        "has_bias": int(w.bias is not None),
        "accuracy_level": accuracy_level,
        "plugin_version": PLUGIN_VERSION,
    }


def input_names(attrs: dict) -> list[str]:
    """Names of the weight inputs (after X) that a node with these attributes takes, in order."""
    names: list[str] = []
    for flag, group in INPUT_GROUPS:
        if flag is None or attrs[flag]:
            names.extend(group)
    return names


def weight_inputs(w: VQWeight) -> dict[str, np.ndarray]:
    """The VQWeight's tensors for the node's inputs after X, in node order."""
    attrs = attributes(w)
    return {name: getattr(w, name) for name in input_names(attrs)}


def make_model(w: VQWeight, x_dtype=np.float32, *, accuracy_level: int = 0, rank: int = 2,
               opset: int = 17):
    """A one-node ONNX model: Y = VQGemm(X, <w's tensors as initializers>), X of shape [..., K]."""
    from onnx import TensorProto, helper, numpy_helper

    elem = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.float16): TensorProto.FLOAT16}
    try:
        x_elem = elem[np.dtype(x_dtype)]
    except (KeyError, TypeError):
        x_elem = TensorProto.BFLOAT16 if str(x_dtype) == "bfloat16" else None
    if x_elem is None:
        raise ValueError(f"X dtype must be float32, float16 or bfloat16, got {x_dtype}")
    lead = [f"d{i}" for i in range(rank - 1)]
    inits = [numpy_helper.from_array(np.ascontiguousarray(a), name) for name, a in weight_inputs(w).items()]
    attrs = attributes(w, accuracy_level)
    node = helper.make_node(OP_TYPE, ["X", *(t.name for t in inits)], ["Y"], domain=DOMAIN, **attrs)
    graph = helper.make_graph(
        [node], "vqgemm",
        [helper.make_tensor_value_info("X", x_elem, [*lead, w.in_features])],
        [helper.make_tensor_value_info("Y", x_elem, [*lead, w.out_features])],
        initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset),
                                                   helper.make_opsetid(DOMAIN, OP_VERSION)])


def weight_from_node_inputs(attrs: dict, tensors: list[np.ndarray]) -> VQWeight:
    """Rebuild (and validate) the VQWeight of a node from its attributes and weight inputs."""
    names = input_names(attrs)
    if len(tensors) != len(names):
        raise ValueError(f"VQGemm: attributes call for {len(names)} weight inputs ({', '.join(names)}), "
                         f"the node has {len(tensors)}")
    t = dict(zip(names, tensors))
    w = VQWeight(out_features=int(attrs["out_features"]), in_features=int(attrs["in_features"]),
                 num_outlier_cols=int(attrs["num_outlier_cols"]),
                 **{n: t.get(n) for n in VQWeight.TENSOR_FIELDS})
    w.validate("VQGemm")
    derived = attributes(w, int(attrs.get("accuracy_level", 0)))
    for key, want in derived.items():
        if key in attrs and attrs[key] != want:
            raise ValueError(f"VQGemm attribute {key}={attrs[key]} disagrees with its inputs' shapes ({want})")
    return w


def register_onnx_schema() -> None:
    """Register VQGemm with onnx.defs (once per process), built from the schema file, so that
    onnxscript can call it and onnx.checker validates the nodes' inputs and attributes."""
    import onnx.defs as defs

    if defs.has(OP_TYPE, DOMAIN):
        return
    S = defs.OpSchema
    spec = schema()
    # One heterogeneous variadic: the optional groups are compacted (docs/format.md §9), so
    # positions and types vary and the attributes say which are present. (onnxscript binds a
    # fixed parameter placed before a variadic twice, so X is part of it too.)
    names = ", ".join(i["name"] for i in spec["inputs"])
    inputs = [S.FormalParameter("inputs", "V", f"in this order, absent groups left out: {names}",
                                param_option=S.FormalParameterOption.Variadic, is_homogeneous=False,
                                min_arity=4)]
    kinds = {"INT": S.AttrType.INT, "STRING": S.AttrType.STRING}
    attrs = [S.Attribute(a["name"], kinds[a["type"]], a.get("doc", "")) for a in spec["attributes"]]
    schema_obj = S(
        OP_TYPE, DOMAIN, OP_VERSION, spec["semantics"], inputs=inputs,
        outputs=[S.FormalParameter("Y", "T", "[..., N], X's dtype")],
        type_constraints=[("T", ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"], "activations"),
                          ("V", ["tensor(float)", "tensor(float16)", "tensor(bfloat16)", "tensor(int32)"],
                           "X, packed indices, fp16 codebooks/scales, fp32 bias")],
        attributes=attrs)
    schema_obj.set_type_and_shape_inference_function(infer_last_dim("out_features"))
    defs.register_schema(schema_obj)


def like_x(x, last: int):
    """An ONNX TypeProto: x's element type and shape with the last dimension set to ``last``."""
    import onnx

    y = onnx.TypeProto()
    y.tensor_type.elem_type = x.tensor_type.elem_type
    if x.tensor_type.HasField("shape") and len(x.tensor_type.shape.dim):
        y.tensor_type.shape.CopyFrom(x.tensor_type.shape)
        dim = y.tensor_type.shape.dim[len(y.tensor_type.shape.dim) - 1]
        dim.Clear()
        dim.dim_value = int(last)
    return y


def infer_last_dim(attr: str):
    """An ONNX shape inference function: Y gets input 0's element type and shape with the last
    dimension replaced by the int attribute ``attr``."""

    def infer(ctx) -> None:
        x = ctx.get_input_type(0)
        if x is None or not x.HasField("tensor_type"):
            return
        ctx.set_output_type(0, like_x(x, ctx.get_attribute(attr).i))

    return infer

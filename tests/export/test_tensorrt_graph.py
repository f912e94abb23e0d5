"""The exported graphs against what TensorRT's ONNX parser (10.3, JetPack 6, and later) imports,
checked statically since TensorRT cannot run here (FACTS.md, "ONNX and TensorRT's ONNX parser"):
only operators the parser has importers for, VQGemm found as plugin (VQGemm, "1", ""), no ONNX
local functions (a function named VQGemm would shadow the plugin), no empty optional inputs, and
only tensor types TensorRT has (no DOUBLE, STRING or UINT8 initializers, int32 plugin indices)."""

from __future__ import annotations

import pytest

from tests.export.test_export_dtype import _low
from vq2trt.export import op

onnx = pytest.importorskip("onnx")

# Standard ops the onnx-tensorrt parser imports in every 10.x release (docs/operators.md there);
# a superset of what the exporter emits today, so a new op in the export fails here first.
TENSORRT_ONNX_OPS = {
    "Abs", "Add", "And", "ArgMax", "Cast", "Ceil", "Clip", "Concat", "Constant", "ConstantOfShape", "Cos",
    "CumSum", "Div", "Equal", "Erf", "Exp", "Expand", "Flatten", "Floor", "Gather", "GatherElements", "Gemm",
    "Greater", "GreaterOrEqual", "Identity", "Less", "LessOrEqual", "Log", "MatMul", "Max", "Min", "Mul",
    "Neg", "Not", "Or", "Pow", "Range", "Reciprocal", "ReduceMax", "ReduceMean", "ReduceSum", "Relu",
    "Reshape", "ScatterND", "Shape", "Sigmoid", "Sin", "Slice", "Softmax", "Split", "Sqrt", "Squeeze", "Sub",
    "Tanh", "Tile", "Transpose", "Trilu", "Unsqueeze", "Where",
}
# TensorProto types TensorRT 10 tensors can have.
TENSORRT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.INT32,
                  onnx.TensorProto.INT64, onnx.TensorProto.INT8, onnx.TensorProto.BOOL}


def check_tensorrt_graph(folder) -> None:
    proto = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    assert not proto.functions, "ONNX local functions: TensorRT would import them instead of the plugin"
    unknown = {(n.domain, n.op_type) for n in proto.graph.node
               if not (n.domain in ("", "ai.onnx") and n.op_type in TENSORRT_ONNX_OPS)
               and not (n.domain == op.DOMAIN and n.op_type == op.OP_TYPE)}
    assert not unknown, f"ops TensorRT's ONNX parser has no importer for: {sorted(unknown)}"
    n_vq = 0
    for n in proto.graph.node:
        if n.op_type != op.OP_TYPE:
            continue
        n_vq += 1
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        assert attrs["plugin_version"] == b"1"                  # the parser's plugin lookup key
        assert attrs.get("plugin_namespace", b"") == b""        # 10.3 looks in namespace "" only
        assert all(n.input), "an empty optional input cannot become a plugin input"
    assert n_vq > 0
    inits = {t.name: t.data_type for t in proto.graph.initializer}
    bad = {name: t for name, t in inits.items() if t not in TENSORRT_TYPES}
    assert not bad, f"initializers with types TensorRT does not have: {bad}"
    for n in proto.graph.node:
        if n.op_type == op.OP_TYPE:
            for name in n.input[1:]:
                if name.endswith(("indices", "perm")):
                    assert inits[name] == onnx.TensorProto.INT32
    io = list(proto.graph.input) + list(proto.graph.output)
    assert all(v.type.tensor_type.elem_type in TENSORRT_TYPES for v in io)


def test_quantized_export_is_tensorrt_parsable(exported_basic):
    check_tensorrt_graph(exported_basic[1])


def test_float16_export_is_tensorrt_parsable(exported, tmp_path_factory):
    _, _, out16 = _low(exported, tmp_path_factory, "float16")
    check_tensorrt_graph(out16)


def test_checker_catches_a_local_function_and_an_unknown_op(exported_basic, tmp_path):
    """The check itself can fail: a graph with an op TensorRT lacks, or with a local function."""
    import shutil

    src = exported_basic[1]
    for f in ("model.onnx", "model.onnx.data"):
        shutil.copy(src / f, tmp_path / f)
    proto = onnx.load(str(tmp_path / "model.onnx"), load_external_data=False)
    proto.graph.node[0].op_type = "Einsum"
    onnx.save(proto, str(tmp_path / "model.onnx"))
    with pytest.raises(AssertionError, match="no importer"):
        check_tensorrt_graph(tmp_path)
    proto.graph.node[0].op_type = onnx.load(str(src / "model.onnx"), load_external_data=False).graph.node[0].op_type
    proto.functions.add().name = op.OP_TYPE
    onnx.save(proto, str(tmp_path / "model.onnx"))
    with pytest.raises(AssertionError, match="local functions"):
        check_tensorrt_graph(tmp_path)

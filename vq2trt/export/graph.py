"""Checks and clean-ups of an exported graph, and writing the ONNX folder.

Every VQGemm node is checked against export/vqgemm_op.json (domain, attributes, input count and
dtypes); the graph is cleaned and sorted with onnx-graphsurgeon, then `onnx.checker` runs with
full shape inference, and the element types are checked against the decoder's compute dtype (every
VQGemm X/Y, past/present key-values; logits float32). Only a graph that passes is written, into a
folder that appears whole.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from vq2trt.export import op
from vq2trt.runtime.session import DATA_FILE, INFO_FILE, MODEL_FILE

_DTYPES = {"int32": np.int32, "float16": np.float16, "float32": np.float32}


class ExportError(RuntimeError):
    """The exported graph breaks the op contract or the ONNX checker."""


def check_vqgemm_nodes(graph) -> int:
    """Validate every VQGemm node (and each weight of a VQGemmMulti node) of an onnx-graphsurgeon
    graph; returns how many weights there are."""
    import onnx_graphsurgeon as gs

    from vq2trt.export import multi_weight

    schema = op.schema()
    attr_names = [a["name"] for a in schema["attributes"]]
    spec = {i["name"]: i for i in schema["inputs"]}

    def check_weight(where, attrs, inputs):
        names = op.input_names(attrs)
        if len(inputs) != len(names):
            raise ExportError(f"{where}: {len(inputs)} weight inputs {[t.name for t in inputs]}, "
                              f"its attributes call for {len(names)}")
        for name, t in zip(names, inputs):
            if not isinstance(t, gs.Constant):
                raise ExportError(f"{where}: weight input '{name}' is not an initializer ({t.name})")
            want = [_DTYPES[d] for d in spec[name]["dtypes"]]
            if t.values.dtype not in want:
                raise ExportError(f"{where}: input '{name}' is {t.values.dtype}, the schema wants {want}")
        op.weight_from_node_inputs(attrs, [t.values for t in inputs])

    count = 0
    for node in graph.nodes:
        if node.op not in (op.OP_TYPE, multi_weight.OP_TYPE):
            continue
        where = f"{node.op} node '{node.name}'"
        if node.domain != op.DOMAIN:
            raise ExportError(f"{where}: domain '{node.domain}', expected '{op.DOMAIN}'")
        layer = [a for a in multi_weight.LAYER_ATTRS if a in node.attrs] if node.op == multi_weight.OP_TYPE else []
        if sorted(a for a in node.attrs if a not in layer) != sorted(attr_names):
            raise ExportError(f"{where}: attributes {sorted(node.attrs)}, the schema has {sorted(attr_names)}")
        if node.attrs["plugin_version"] != op.PLUGIN_VERSION:
            raise ExportError(f"{where}: plugin_version {node.attrs['plugin_version']!r}, expected '1'")
        if node.op == op.OP_TYPE:
            check_weight(where, node.attrs, node.inputs[1:])
            count += 1
            continue
        try:
            members = multi_weight.split_inputs(node.attrs, node.inputs[1:])
        except multi_weight.MultiWeightError as e:
            raise ExportError(f"{where}: {e}") from e
        mains = len(node.outputs) - (node.attrs.get("prenorm", 0) == 2)   # then X + skip
        if mains not in ((1,) if node.attrs.get("activation") == "swiglu" else (1, len(members))):
            raise ExportError(f"{where}: {len(node.outputs)} outputs; expected 1 or {len(members)} (one per weight)")
        for w, (attrs, inputs) in enumerate(members):
            check_weight(f"{where}, weight {w}", attrs, inputs)
        count += len(members)
    return count


def finalize(proto, decoder, *, expect_vqgemm: int | None = None):
    """Clean, check and return the model proto: dead nodes removed, sorted, contract and checker passed."""
    import onnx
    import onnx_graphsurgeon as gs

    graph = gs.import_onnx(proto)
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    n = check_vqgemm_nodes(graph)
    if expect_vqgemm is not None and n != expect_vqgemm:
        raise ExportError(f"exported graph has {n} VQGemm nodes, the model has {expect_vqgemm} quantized Linears")
    if [t.name for t in graph.inputs] != decoder.input_names():
        raise ExportError(f"graph inputs {[t.name for t in graph.inputs][:4]}... do not match the decoder's")
    if [t.name for t in graph.outputs] != decoder.output_names():
        raise ExportError(f"graph outputs {[t.name for t in graph.outputs][:4]}... do not match the decoder's")
    out = gs.export_onnx(graph)
    opsets = {o.domain: o.version for o in out.opset_import}
    if n and opsets.get(op.DOMAIN) != op.OP_VERSION:
        del out.opset_import[:]
        out.opset_import.extend([onnx.helper.make_opsetid(d, v) for d, v in opsets.items() if d != op.DOMAIN]
                                + [onnx.helper.make_opsetid(op.DOMAIN, op.OP_VERSION)])
    out.ir_version = proto.ir_version
    try:
        out = onnx.shape_inference.infer_shapes(out, check_type=True, data_prop=True)
        onnx.checker.check_model(out, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise ExportError(f"exported graph fails the ONNX checker: {e}") from e
    check_dtypes(out, decoder)
    return out


def dtype_name(decoder) -> str:
    """The decoder's compute dtype by name ("float32", "float16", "bfloat16")."""
    return str(decoder.dtype).removeprefix("torch.")


def check_dtypes(proto, decoder) -> None:
    """Element types of a shape-inferred proto: VQGemm X and Y, past_key_values.* and present.* in
    the decoder's compute dtype, logits float32 (a strongly typed TensorRT build takes them as is)."""
    import onnx

    T = onnx.TensorProto
    want = {"float32": T.FLOAT, "float16": T.FLOAT16, "bfloat16": T.BFLOAT16}[dtype_name(decoder)]
    g = proto.graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*g.input, *g.value_info, *g.output]}
    label = onnx.TensorProto.DataType.Name

    def expect(name: str, elem: int, what: str) -> None:
        got = types.get(name)
        if got != elem:
            raise ExportError(f"{what} '{name}' is {label(got) if got else 'untyped'}, expected {label(elem)}")

    expect("logits", T.FLOAT, "output")
    for name in decoder.input_names()[3:]:
        expect(name, want, "input")
    for name in decoder.output_names()[1:]:
        expect(name, want, "output")
    for node in g.node:
        if node.op_type == op.OP_TYPE and node.domain == op.DOMAIN:
            expect(node.input[0], want, f"VQGemm node '{node.name}': X")
            expect(node.output[0], want, f"VQGemm node '{node.name}': Y")


def model_info(model, decoder, *, quantized: bool, accuracy_level: int, source: str | None) -> dict:
    cfg = model.config
    eos = getattr(cfg, "eos_token_id", None)
    return {
        "format": "vq2trt-onnx", "version": 1, "model_type": cfg.model_type, "quantized": quantized,
        "accuracy_level": accuracy_level, "dtype": dtype_name(decoder),
        "embedding": getattr(decoder.embed_tokens, "mode", "float32"),
        "lm_head": getattr(decoder.lm_head, "mode", "vqgemm" if hasattr(decoder.lm_head, "attrs") else "float"),
        "ops": decoder.ops,
        "logits": decoder.logits,
        "num_layers": decoder.num_layers,
        "num_key_value_heads": decoder.num_kv_heads, "head_dim": decoder.head_dim,
        "vocab_size": cfg.vocab_size, "eos_token_id": eos, "bos_token_id": getattr(cfg, "bos_token_id", None),
        "source": source, "inputs": decoder.input_names(), "outputs": decoder.output_names(),
    }


def write_folder(proto, out_dir: Path, *, model, decoder, overwrite: bool, tokenizer, accuracy_level: int,
                 source: str | None = None) -> Path:
    import onnx

    from vq2trt.export.genai import write_genai
    from vq2trt.io import _atomic_dir

    quantized = any(n.op_type == op.OP_TYPE for n in proto.graph.node)
    with _atomic_dir(out_dir, overwrite) as tmp:
        onnx.save_model(proto, str(tmp / MODEL_FILE), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=DATA_FILE, size_threshold=1024)
        info = model_info(model, decoder, quantized=quantized, accuracy_level=accuracy_level, source=source)
        (tmp / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
        write_genai(tmp, info, model.config)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
    return out_dir

"""`export_onnx(..., dtype=)` / `vq2trt export --dtype`: a graph computing in float16 or bfloat16
(KV cache in that dtype, logits float32) whose logits agree with the float32 export's, and a
float32 default that is the graph exported before the option existed.

Runtimes: ONNX Runtime CPU (+ libvq2trt_ort.so) runs float16 exports, but its CPU EP has no float16
kernels for Mul, Add, Neg, MatMul (and its fusions), so it inserts Casts and runs those in float32;
onnx.reference.ReferenceEvaluator runs every op in the graph's own dtype, so it checks both float16
and bfloat16 arithmetic. ONNX Runtime CPU cannot run bfloat16 exports at all (no bfloat16 Mul).
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import ml_dtypes
import numpy as np
import onnx
import pytest
import torch

from vq2trt.export import op
from vq2trt.export.decoder import ExportDecoder

from .conftest import sample_batch

NP = {"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}
ELEM = {"float32": onnx.TensorProto.FLOAT, "float16": onnx.TensorProto.FLOAT16,
        "bfloat16": onnx.TensorProto.BFLOAT16}
# Logits of the tiny models are O(1). Allowed error: 4 units of the dtype's epsilon at the largest
# logit (max |logit| ~1.2-1.3 here: bound 4.6e-3-5.1e-3 for float16, 3.7e-2-4.1e-2 for bfloat16).
# Measured on these models (prefill 5 + 3 decode steps, float32 export as reference): float16
# 2.6e-4-2.9e-4 (ORT) / 5.3e-4-7.0e-4 (ReferenceEvaluator), bfloat16 3.3e-3-3.9e-3: ~7-10x inside.
ULPS = 4


def _tol(dtype: str, ref: np.ndarray) -> float:
    return ULPS * float(ml_dtypes.finfo(NP[dtype]).eps) * max(1.0, float(np.abs(ref).max()))


def _export(model, tmp_path_factory, dtype: str, tag: str):
    from vq2trt.export.onnx_export import export_onnx

    out = tmp_path_factory.mktemp(f"onnx-{tag}-{dtype}") / "model"
    export_onnx(model, out, dtype=dtype)
    return out


_EXPORTS: dict = {}


def _low(exported, tmp_path_factory, dtype: str):
    """(model, float32 folder, ``dtype`` folder) of a quantized fixture, each exported once."""
    model, out32 = exported
    key = (str(out32), dtype)
    if key not in _EXPORTS:
        _EXPORTS[key] = _export(model, tmp_path_factory, dtype, out32.parent.name)
    return model, out32, _EXPORTS[key]


@pytest.fixture
def fp16(exported, tmp_path_factory):
    return _low(exported, tmp_path_factory, "float16")


def _feeds(names, ids, mask, pos, past):
    f = {"input_ids": np.asarray(ids, np.int64), "attention_mask": np.asarray(mask, np.int64),
         "position_ids": np.asarray(pos, np.int64)}
    f.update(zip(names[3:], past))
    return f


def _empty(info: dict, batch: int, dtype: str):
    return [np.zeros((batch, info["num_key_value_heads"], 0, info["head_dim"]), NP[dtype])] * (2 * info["num_layers"])


def _prefill_and_decode(run, names, info, dtype: str, ids: np.ndarray, split: int = 5) -> np.ndarray:
    """Logits [B, T, V] from a prefill of ``split`` tokens and one-token decode steps after it."""
    B, T = ids.shape
    out = run(_feeds(names, ids[:, :split], np.ones((B, split)), np.tile(np.arange(split), (B, 1)),
                     _empty(info, B, dtype)))
    logits = [out[0]]
    for t in range(split, T):
        assert out[1].dtype == NP[dtype] and out[1].shape[2] == t
        out = run(_feeds(names, ids[:, t:t + 1], np.ones((B, t + 1)), np.full((B, 1), t), out[1:]))
        logits.append(out[0])
    return np.concatenate(logits, axis=1)


def _types(path) -> dict[str, int]:
    g = onnx.load(str(path / "model.onnx"), load_external_data=False).graph
    return {v.name: v.type.tensor_type.elem_type for v in [*g.input, *g.output]}


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_graph_types_checker_and_info(exported, tmp_path_factory, dtype):
    model, out32, out = _low(exported, tmp_path_factory, dtype)
    types = _types(out)
    info = json.loads((out / "vq2trt_onnx.json").read_text())
    assert info["dtype"] == dtype and json.loads((out32 / "vq2trt_onnx.json").read_text())["dtype"] == "float32"
    assert set(json.loads((out32 / "vq2trt_onnx.json").read_text())) == set(info)     # no key lost
    assert types["logits"] == onnx.TensorProto.FLOAT
    kv = [n for n in types if n.startswith(("past_key_values.", "present."))]
    assert len(kv) == 4 * info["num_layers"] and all(types[n] == ELEM[dtype] for n in kv)
    assert all(types[n] == onnx.TensorProto.INT64 for n in ("input_ids", "attention_mask", "position_ids"))

    proto = onnx.load(str(out / "model.onnx"))
    onnx.checker.check_model(proto, full_check=True)
    inferred = onnx.shape_inference.infer_shapes(proto)
    vt = {v.name: v.type.tensor_type.elem_type for v in [*inferred.graph.value_info, *inferred.graph.input]}
    inits = {t.name: t for t in proto.graph.initializer}
    vq = [n for n in proto.graph.node if n.op_type == op.OP_TYPE]
    assert len(vq) == 14
    for n in vq:   # X/Y in the compute dtype, weight inputs as stored (int32, fp16 codebooks, fp32 bias)
        assert vt[n.input[0]] == ELEM[dtype] and vt[n.output[0]] == ELEM[dtype]
        a = {x.name: onnx.helper.get_attribute_value(x) for x in n.attribute}
        spec = {i["name"]: i["dtypes"] for i in op.schema()["inputs"]}
        for name, t in zip(op.input_names(a), n.input[1:]):
            assert onnx.helper.tensor_dtype_to_np_dtype(inits[t].data_type).name in spec[name]
    # float weights outside VQGemm (embeddings, norms) are in the compute dtype
    assert any(t.data_type == ELEM[dtype] and len(t.dims) == 2 for t in proto.graph.initializer)
    assert not any(t.data_type == onnx.TensorProto.FLOAT and t.name.endswith("weight") for t in proto.graph.initializer)
    assert all(p.dtype == torch.float32 for p in model.parameters())     # the caller's model is untouched


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_reference_evaluator_logits_match_float32_export(exported, tmp_path_factory, dtype):
    from onnx.reference import ReferenceEvaluator

    from vq2trt.export.reference_op import VQGemm

    _, out32, out = _low(exported, tmp_path_factory, dtype)
    info = json.loads((out / "vq2trt_onnx.json").read_text())
    ids = sample_batch(seed=8, seq=8).numpy()
    got = {}
    for d, folder in (("float32", out32), (dtype, out)):
        sess = ReferenceEvaluator(str(folder / "model.onnx"), new_ops=[VQGemm])
        got[d] = _prefill_and_decode(lambda f, s=sess: s.run(None, f), sess.input_names, info, d, ids)
    ref, low = got["float32"], got[dtype]
    assert low.dtype == np.float32
    err = float(np.abs(low - ref).max())
    assert 0 < err <= _tol(dtype, ref), (err, _tol(dtype, ref))       # > 0: it really computes in the dtype
    assert (low.argmax(-1) == ref.argmax(-1)).mean() >= 0.95


def test_onnxruntime_float16_logits_and_greedy_tokens(fp16):
    pytest.importorskip("onnxruntime")
    from vq2trt.runtime.library import get_library_path
    from vq2trt.runtime.session import OnnxDecoder

    get_library_path()      # fails (not skips) with "run make plugins" when the library is missing
    _, out32, out = fp16
    d32, d16 = OnnxDecoder(out32), OnnxDecoder(out)
    assert d16.kv_dtype == np.float16 and d16.empty_past(1)[0].dtype == np.float16
    assert d16.session.get_inputs()[3].type == "tensor(float16)"
    ids = sample_batch(seed=9, seq=8).numpy()
    names = [i.name for i in d16.session.get_inputs()]
    ref = _prefill_and_decode(lambda f: d32.session.run(None, f), names, d32.info, "float32", ids)
    low = _prefill_and_decode(lambda f: d16.session.run(None, f), names, d16.info, "float16", ids)
    assert low.dtype == np.float32
    assert np.abs(low - ref).max() <= _tol("float16", ref)
    prompt = [5, 17, 99, 3, 42]
    g16 = d16.generate(prompt, 12)
    assert g16.tokens == d32.generate(prompt, 12).tokens and len(g16.tokens) == 12


def test_float_model_float16_export_runs_in_onnxruntime(exported_float, tmp_path_factory):
    pytest.importorskip("onnxruntime")
    from vq2trt.runtime.session import OnnxDecoder

    model, out32 = exported_float
    out = _export(model, tmp_path_factory, "float16", "float")
    assert _types(out)["present.0.value"] == onnx.TensorProto.FLOAT16
    ids = sample_batch(seed=10, seq=6).numpy()
    ref, low = OnnxDecoder(out32).logits(ids), OnnxDecoder(out).logits(ids)
    assert low.dtype == np.float32 and np.abs(low - ref).max() <= _tol("float16", ref)


def test_float32_default_is_the_graph_without_the_option(exported, tmp_path):
    """dtype="float32" given explicitly writes the same graph and weight bytes as the default
    export (the fixture), and the graph has no Cast around softmax, rotary or logits."""
    from vq2trt.export.onnx_export import export_onnx

    model, out = exported
    explicit = export_onnx(model, tmp_path / "f32", dtype="float32")
    a = onnx.load(str(out / "model.onnx"), load_external_data=False)
    b = onnx.load(str(explicit / "model.onnx"), load_external_data=False)
    assert [n.op_type for n in a.graph.node] == [n.op_type for n in b.graph.node]
    assert a.graph.SerializeToString() == b.graph.SerializeToString()
    assert (out / "model.onnx.data").read_bytes() == (explicit / "model.onnx.data").read_bytes()
    types = _types(out)
    assert all(t == onnx.TensorProto.FLOAT for n, t in types.items() if n not in
               ("input_ids", "attention_mask", "position_ids"))


def test_dtype_checks_reject_a_mismatch(fp16):
    from vq2trt.export.graph import ExportError, check_dtypes

    model, _, out = fp16
    proto = onnx.shape_inference.infer_shapes(onnx.load(str(out / "model.onnx"), load_external_data=False))
    dec = ExportDecoder(model)        # float32, names only: the graph is float16
    with pytest.raises(ExportError, match="expected FLOAT"):
        check_dtypes(proto, dec)
    check_dtypes(proto, SimpleNamespace(dtype=torch.float16, input_names=dec.input_names,
                                        output_names=dec.output_names))


def test_bad_dtype_is_refused(exported_float, tmp_path):
    from vq2trt.export.onnx_export import export_onnx

    with pytest.raises(ValueError, match="float16"):
        export_onnx(exported_float[0], tmp_path / "x", dtype="int8")
    assert not (tmp_path / "x").exists()


def test_cli_export_dtype(tmp_path, capsys):
    from tests.pipeline.tiny import save_tiny
    from vq2trt.cli import build_parser, main

    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["export", "ckpt", "--out", "o", "--dtype", "int8"])
    assert e.value.code == 2 and "invalid choice" in capsys.readouterr().err
    assert build_parser().parse_args(["export", "ckpt", "--out", "o"]).dtype == "float32"

    model = save_tiny(tmp_path / "model")
    assert main(["export", str(model), "--out", str(tmp_path / "onnx"), "--dtype", "float16"]) == 0
    assert "float16" in capsys.readouterr().out
    assert json.loads((tmp_path / "onnx" / "vq2trt_onnx.json").read_text())["dtype"] == "float16"
    assert _types(tmp_path / "onnx")["past_key_values.0.key"] == onnx.TensorProto.FLOAT16
    pytest.importorskip("onnxruntime")
    assert main(["run", str(tmp_path / "onnx"), "--prompt", "the quick", "--max-new-tokens", "4"]) == 0
    assert capsys.readouterr().out.startswith("the quick")

"""The exported decoder: graph contract, and logits equal to PyTorch's in onnx.reference (no
compiled code) for a prefill and for decode steps with the KV cache."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vq2trt.export import op
from vq2trt.export.decoder import ExportDecoder
from vq2trt.nn import VQLinear

from .conftest import make_tiny_llama, sample_batch

# Logits of the tiny models are O(1); both sides compute in float32 with the same dequantized
# weights, differing only in summation order: 1e-4 absolute is ~100x the float32 noise seen.
ATOL = 1e-4


def _feeds(dec_names, ids, mask, pos, past):
    feeds = {"input_ids": ids, "attention_mask": mask, "position_ids": pos}
    feeds.update({n: p for n, p in zip(dec_names[3:], past)})
    return {k: np.ascontiguousarray(np.asarray(v)) for k, v in feeds.items()}


def test_export_decoder_matches_hf_model_prefill_and_decode():
    hf = make_tiny_llama(seed=3)
    dec = ExportDecoder(hf)
    ids = sample_batch(seed=1, seq=9)
    mask = torch.ones_like(ids)
    pos = torch.arange(9)[None].repeat(2, 1)
    with torch.no_grad():
        ref = hf(ids).logits
        full = dec(ids, mask, pos, *dec.empty_past(2))[0]
        first = dec(ids[:, :5], mask[:, :5], pos[:, :5], *dec.empty_past(2))
        rest = dec(ids[:, 5:], mask, pos[:, 5:], *first[1:])[0]
    assert torch.allclose(full, ref, atol=ATOL)
    assert torch.allclose(rest, ref[:, 5:], atol=ATOL)


def test_graph_follows_the_op_contract(exported):
    import onnx

    model, out = exported
    proto = onnx.load(str(out / "model.onnx"), load_external_data=False)
    nodes = [n for n in proto.graph.node if n.op_type == op.OP_TYPE]
    n_vq = sum(isinstance(m, VQLinear) for m in model.modules())
    assert len(nodes) == n_vq == 14
    schema_attrs = [a["name"] for a in op.schema()["attributes"]]
    for n in nodes:
        assert n.domain == op.DOMAIN
        assert sorted(a.name for a in n.attribute) == sorted(schema_attrs)
        assert all(n.input)                      # no empty (skipped) inputs: TensorRT cannot map them
    assert {o.domain: o.version for o in proto.opset_import}[op.DOMAIN] == op.OP_VERSION
    assert all(t.data_type not in (onnx.TensorProto.UINT8, onnx.TensorProto.INT64)
               for t in proto.graph.initializer if t.name.endswith(("indices", "perm")))
    assert (out / "model.onnx.data").stat().st_size > 0
    info = json.loads((out / "vq2trt_onnx.json").read_text())
    assert info["quantized"] and info["num_layers"] == 2


def test_reference_evaluator_matches_torch(exported):
    from onnx.reference import ReferenceEvaluator

    from vq2trt.export.reference_op import VQGemm

    model, out = exported
    dec = ExportDecoder(model)
    names = dec.input_names()
    sess = ReferenceEvaluator(str(out / "model.onnx"), new_ops=[VQGemm])
    ids = sample_batch(seed=2, seq=7)
    mask = torch.ones_like(ids)
    pos = torch.arange(7)[None].repeat(2, 1)
    with torch.no_grad():
        ref = dec(ids, mask, pos, *dec.empty_past(2))[0].numpy()
        past = [p.numpy() for p in dec.empty_past(2)]
    # prefill 4 tokens, then 3 decode steps of one token each, carrying the present key/values
    got = sess.run(None, _feeds(names, ids[:, :4].numpy(), mask[:, :4].numpy(), pos[:, :4].numpy(), past))
    np.testing.assert_allclose(got[0], ref[:, :4], atol=ATOL)
    for t in range(4, 7):
        got = sess.run(None, _feeds(names, ids[:, t:t + 1].numpy(), mask[:, :t + 1].numpy(),
                                    pos[:, t:t + 1].numpy(), got[1:]))
        np.testing.assert_allclose(got[0][:, 0], ref[:, t], atol=ATOL)
        assert got[1].shape[2] == t + 1


def test_float_export_runs_in_onnxruntime(exported_float):
    ort = pytest.importorskip("onnxruntime")
    model, out = exported_float
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    dec = ExportDecoder(model)
    ids = sample_batch(seed=4, seq=5)
    mask, pos = torch.ones_like(ids), torch.arange(5)[None].repeat(2, 1)
    with torch.no_grad():
        ref = model(ids).logits.numpy()
    got = sess.run(None, _feeds(dec.input_names(), ids.numpy(), mask.numpy(), pos.numpy(),
                                [p.numpy() for p in dec.empty_past(2)]))
    np.testing.assert_allclose(got[0], ref, atol=ATOL)


def test_export_refuses_an_existing_folder(exported_float, tmp_path):
    from vq2trt.export.onnx_export import export_onnx
    from vq2trt.io import CheckpointError

    model, _ = exported_float
    (tmp_path / "x").mkdir()
    with pytest.raises(CheckpointError, match="already exists"):
        export_onnx(model, tmp_path / "x")


def test_left_padded_batch_matches_unpadded_rows(exported_float):
    """A batch whose shorter row is left-padded (attention_mask 0, positions restarting at the
    first real token) gives that row the logits it gets alone, in ONNX Runtime."""
    ort = pytest.importorskip("onnxruntime")
    model, out = exported_float
    names = ExportDecoder(model).input_names()
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    a, b = sample_batch(seed=6, batch=1, seq=6)[0].numpy(), sample_batch(seed=7, batch=1, seq=4)[0].numpy()
    ids = np.stack([a, np.concatenate([[0, 0], b])])
    mask = np.array([[1] * 6, [0, 0, 1, 1, 1, 1]])
    pos = np.array([np.arange(6), [0, 0, 0, 1, 2, 3]])
    empty = [np.zeros((2, 2, 0, 16), np.float32)] * 4
    got = sess.run(None, _feeds(names, ids, mask, pos, empty))[0]
    alone = sess.run(None, _feeds(names, b[None], np.ones((1, 4), np.int64), np.arange(4)[None],
                                  [e[:1] for e in empty]))[0]
    np.testing.assert_allclose(got[1, 2:], alone[0], atol=ATOL)
    assert np.isfinite(got).all()

"""The exported quantized decoder in ONNX Runtime with libvq2trt_ort.so: logits equal PyTorch's for
a prefill and decode steps, greedy generation gives the same tokens, the polygraphy comparison
passes, and the schema file, the exporter's nodes and the library agree."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from vq2trt.export import op
from vq2trt.export.decoder import ExportDecoder

from .conftest import check_prefill_then_decode, sample_batch

ort = pytest.importorskip("onnxruntime")

# Same weights and float32 arithmetic on both sides; only summation order differs (see
# test_export.ATOL). The library's kernel at accuracy_level 0 keeps float32 activations.
ATOL = 1e-4


@pytest.fixture(scope="module")
def library():
    from vq2trt.runtime.library import get_library_path
    return get_library_path()   # fails (not skips) with "run make plugins" when the library is missing


def test_logits_prefill_and_decode_match_torch(exported, library):
    from vq2trt.runtime.session import OnnxDecoder

    model, out = exported
    dec_t = ExportDecoder(model)
    dec = OnnxDecoder(out)
    ids = sample_batch(seed=5, seq=8)
    with torch.no_grad():
        ref = model(ids).logits.numpy()
    B = ids.shape[0]
    past = check_prefill_then_decode(dec, ref, ids, 5, ATOL)
    assert past[0].shape == (B, dec_t.num_kv_heads, 8, dec_t.head_dim)


def test_greedy_generation_same_tokens_as_torch(exported, library):
    from vq2trt.runtime.session import OnnxDecoder

    model, out = exported
    prompt = [5, 17, 99, 3, 42]
    with torch.no_grad():
        hf = model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=12, min_new_tokens=12,
                            pad_token_id=0)[0, len(prompt):].tolist()
    g = OnnxDecoder(out).generate(prompt, 12)
    assert g.tokens == hf


def test_sampling_is_seeded(exported, library):
    from vq2trt.runtime.session import OnnxDecoder

    _, out = exported
    dec = OnnxDecoder(out)
    a = dec.generate([5, 6, 7], 8, temperature=1.0, top_k=20, top_p=0.9, seed=3).tokens
    b = dec.generate([5, 6, 7], 8, temperature=1.0, top_k=20, top_p=0.9, seed=3).tokens
    assert a == b and len(a) == 8


def test_polygraphy_comparison_passes(exported, exported_float, library, tmp_path):
    pytest.importorskip("polygraphy")
    from vq2trt.io import save_quantized
    from vq2trt.runtime.compare import compare

    model, out = exported
    ckpt = tmp_path / "ckpt"
    save_quantized(model, model_config(model), ckpt)
    rows = compare(out, checkpoint=ckpt, float_onnx=exported_float[1])
    assert rows[0].b == "pytorch-reference" and rows[0].passed and rows[0].max_abs < 1e-3
    assert rows[1].passed is None and rows[1].max_abs > rows[0].max_abs  # quantization error is visible


def model_config(model):
    from vq2trt.config import QuantConfig
    return getattr(model, "vq2trt_config", None) or QuantConfig()


def test_schema_exporter_and_library_agree(exported, library, tmp_path):
    """One test, three sources: the schema file's attributes and inputs, the attributes the
    exporter wrote, and what the library accepts (a node missing any schema attribute, or with
    an input too many, is refused)."""
    schema = op.schema()
    attr_names = [a["name"] for a in schema["attributes"]]
    _, out = exported
    proto = onnx.load(str(out / "model.onnx"), load_external_data=False)
    node = next(n for n in proto.graph.node if n.op_type == op.OP_TYPE)
    assert [a.name for a in node.attribute] == attr_names or sorted(a.name for a in node.attribute) == sorted(
        attr_names)
    assert len(node.input) == 1 + len(op.input_names({a.name: onnx.helper.get_attribute_value(a)
                                                      for a in node.attribute}))

    from vq2trt.format import VQWeight
    rng = np.random.default_rng(0)
    w = VQWeight.from_unpacked(out_features=8, in_features=16, perm=rng.permutation(16),
                               indices=rng.integers(0, 16, (4, 16)), codebook=rng.normal(size=(1, 16, 2)))
    x = rng.standard_normal((3, 16)).astype(np.float32)

    def run(model):
        so = ort.SessionOptions()
        so.register_custom_ops_library(str(library))
        s = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        return s.run(None, {"X": x})[0]

    good = op.make_model(w)
    from vq2trt.reference import vq_gemm
    np.testing.assert_allclose(run(good), vq_gemm(x, w), atol=1e-5)
    for name in attr_names:
        if name == "plugin_version":
            continue    # TensorRT's parser reads it; the ORT op has no use for it
        bad = op.make_model(w)
        attrs = bad.graph.node[0].attribute
        del attrs[[a.name for a in attrs].index(name)]
        with pytest.raises(Exception, match=name):
            run(bad)
    extra = op.make_model(w)
    extra.graph.node[0].input.append("perm")
    with pytest.raises(Exception, match="input"):  # noqa: B017 (ORT raises its own Fail/InvalidArgument types)
        run(extra)

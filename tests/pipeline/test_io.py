"""Checkpoint save -> load round trip, and every way a checkpoint can be damaged."""

import json

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file

import vq2trt.io as vio
from vq2trt.config import QuantConfig
from vq2trt.format import pack_indices
from vq2trt.io import CheckpointError, load_quantized, save_quantized
from vq2trt.nn import VQLinear
from vq2trt.quantize import quantize
from vq2trt.reference import dequantize

from .tiny import calib_ids, tiny_model, tiny_tokenizer

CONFIG = QuantConfig(vector_len=4, num_centroids=16, num_res_centroids=4, outlier_frac=0.05, outlier_vector_len=2,
                     outlier_num_centroids=8, num_groups=2, kmeans_iters=5, block_size=32)


@pytest.fixture(scope="module")
def quantized():
    model = tiny_model()
    result = quantize(model, CONFIG, calib_ids(), device="cpu", progress=False)
    return model, result


@pytest.fixture
def ckpt(quantized, tmp_path):
    model, _ = quantized
    return save_quantized(model, CONFIG, tmp_path / "ckpt", tokenizer=tiny_tokenizer())


def test_round_trip_bit_exact(quantized, ckpt):
    model, result = quantized
    loaded, tok = load_quantized(ckpt, with_tokenizer=True)
    assert tok is not None and loaded.vq2trt_config == CONFIG
    for name, w in result.weights.items():
        m = loaded.get_submodule(name)
        assert isinstance(m, VQLinear) and m.to_vqweight() == w
    ids = calib_ids(2, 24, seed=3)
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, loaded(input_ids=ids).logits)


def test_vqlinear_output_is_exactly_the_reference_weight(quantized):
    model, result = quantized
    name, w = next(iter(result.weights.items()))
    x = torch.randn(3, w.in_features)
    with torch.no_grad():
        y = model.get_submodule(name)(x)
    expected = torch.nn.functional.linear(x, torch.from_numpy(dequantize(w)))
    assert torch.equal(y, expected)


def test_existing_output_is_refused_and_untouched(quantized, ckpt):
    before = (ckpt / "model.safetensors").read_bytes()
    with pytest.raises(CheckpointError, match="already exists"):
        save_quantized(quantized[0], CONFIG, ckpt)
    assert (ckpt / "model.safetensors").read_bytes() == before


def test_failed_save_leaves_nothing(quantized, tmp_path, monkeypatch):
    def boom(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(vio, "checkpoint_tensors", boom)
    with pytest.raises(OSError):
        save_quantized(quantized[0], CONFIG, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_truncated_weights(ckpt):
    f = ckpt / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="model.safetensors is corrupt or truncated"):
        load_quantized(ckpt)


def test_garbage_header(ckpt):
    (ckpt / "model.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_quantized(ckpt)


def _rewrite(ckpt, mutate):
    f = ckpt / "model.safetensors"
    t = load_file(str(f))
    mutate(t)
    save_file(t, str(f))


def test_index_exceeding_k(ckpt):
    key = "model.layers.0.mlp.down_proj.indices"  # k=16, 4-bit indices can't exceed; use the outliers (k=8, 3 bits)

    def set_bad(t):
        name = "model.layers.0.mlp.down_proj"
        dims = t[name + ".vq_dims"]
        idx = np.zeros((t[name + ".indices"].shape[0], dims[1] - dims[2]), np.int64)
        t[name + ".res_indices"] = pack_indices(idx + 3, 2)
        cb = t[name + ".res_codebook"]
        t[name + ".res_codebook"] = cb[:, :3]  # 3 entries: index 3 is now out of range
    _rewrite(ckpt, set_bad)
    with pytest.raises(CheckpointError, match=r"down_proj.res_indices: index 3 .* out of range"):
        load_quantized(ckpt)
    assert key


def test_missing_tensor(ckpt):
    _rewrite(ckpt, lambda t: t.pop("model.layers.1.self_attn.v_proj.codebook"))
    with pytest.raises(CheckpointError, match="v_proj: missing tensor 'codebook'"):
        load_quantized(ckpt)


def test_missing_float_tensor(ckpt):
    _rewrite(ckpt, lambda t: t.pop("model.norm.weight"))
    with pytest.raises(CheckpointError, match="missing.*model.norm.weight"):
        load_quantized(ckpt)


@pytest.mark.parametrize("edit, message", [
    (lambda c: c.pop("quantization_config"), "no quantization_config"),
    (lambda c: c["quantization_config"].update(format_version=99), "format_version 99 is not supported"),
    (lambda c: c["quantization_config"].update(num_centroids=1), "num_centroids=1"),
])
def test_bad_config(ckpt, edit, message):
    p = ckpt / "config.json"
    c = json.loads(p.read_text())
    edit(c)
    p.write_text(json.dumps(c))
    with pytest.raises(CheckpointError, match=message):
        load_quantized(ckpt)


def test_missing_folder_and_files(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_quantized(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="config.json is missing"):
        load_quantized(tmp_path / "empty")


def test_safetensors_header_is_the_same_in_every_process(tmp_path):
    """safetensors 0.8 orders the metadata by a per-process random hash, so the same checkpoint
    had different bytes from run to run; save_tensors sorts it. Six processes, one digest."""
    import hashlib
    import subprocess
    import sys

    code = ("import sys, numpy as np; from pathlib import Path; from vq2trt.io import save_tensors; "
            "save_tensors({'b': np.arange(6, dtype=np.float32), 'a': np.ones(3, np.int32)}, Path(sys.argv[1]), "
            "{'format': 'pt', 'vq2trt_format_version': '1', 'z': 'x'})")
    digests = set()
    for i in range(6):
        path = tmp_path / f"{i}.safetensors"
        subprocess.run([sys.executable, "-c", code, str(path)], check=True)
        digests.add(hashlib.sha256(path.read_bytes()).hexdigest())
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as f:
            assert f.metadata() == {"format": "pt", "vq2trt_format_version": "1", "z": "x"}
        got = load_file(str(path))
        np.testing.assert_array_equal(got["b"], np.arange(6, dtype=np.float32))
        np.testing.assert_array_equal(got["a"], np.ones(3, np.int32))
    assert len(digests) == 1

"""SafetensorsWriter: tensor by tensor, the same bytes as io.save_tensors (safetensors.save_file)."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.numpy import load_file

from vq2trt.io import save_tensors
from vq2trt.tensor_file import SafetensorsWriter

DTYPES = [np.float64, np.float32, np.float16, np.int64, np.int32, np.int16, np.int8, np.uint8, np.uint16,
          np.uint32, np.uint64, np.bool_]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_same_bytes_as_save_file(tmp_path, seed):
    rng = np.random.default_rng(seed)
    tensors = {}
    for i in range(40):
        dt = DTYPES[rng.integers(len(DTYPES))]
        shape = tuple(int(s) for s in rng.integers(0, 5, size=rng.integers(0, 4)))
        tensors[f"model.layers.{rng.integers(12)}.t{i}"] = np.asarray(rng.standard_normal(shape) * 100).astype(dt)
    meta = {"format": "pt", "vq2trt_format_version": "1", "zeta": "last", "alpha": "x" * int(rng.integers(9))}
    save_tensors(tensors, tmp_path / "ref.safetensors", meta)
    w = SafetensorsWriter(tmp_path / "new.safetensors")
    for name in rng.permutation(sorted(tensors)):          # any order of production
        w.add(str(name), tensors[name])
    w.finish(meta)
    assert (tmp_path / "new.safetensors").read_bytes() == (tmp_path / "ref.safetensors").read_bytes()
    assert not (tmp_path / "new.safetensors.spool").exists()
    back = load_file(str(tmp_path / "new.safetensors"))
    assert all(np.array_equal(back[k], v) for k, v in tensors.items())


def test_refuses_a_name_twice_and_unknown_dtypes(tmp_path):
    w = SafetensorsWriter(tmp_path / "x.safetensors")
    w.add("a", np.zeros(2, np.float32))
    with pytest.raises(ValueError, match="'a' was already written"):
        w.add("a", np.zeros(2, np.float32))
    with pytest.raises(ValueError, match="complex128"):
        w.add("c", np.zeros(2, np.complex128))
    w.abort()
    assert list(tmp_path.iterdir()) == []

"""samples/cpp's vq2trt_generate (ONNX Runtime C++ API + libvq2trt_ort.so) generates exactly the
ids OnnxDecoder.generate does, on a tiny quantized export. Skipped when the sample is not built
(`make plugins` builds it once .venv holds the onnxruntime wheel); $VQ2TRT_GENERATE overrides the
binary's path."""

import json
import os
import subprocess
from pathlib import Path

import pytest

from vq2trt.cli import main

from .tiny import TEXT, save_tiny

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

REPO = Path(__file__).resolve().parents[2]
BINARY = Path(os.environ.get("VQ2TRT_GENERATE", REPO / "build" / "samples" / "cpp" / "vq2trt_generate"))
PROMPT = [1, 5, 7, 9, 11]

pytestmark = pytest.mark.skipif(not BINARY.is_file(), reason=f"{BINARY} not built (make plugins after make install)")


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    root = tmp_path_factory.mktemp("cpp")
    model = save_tiny(root / "model")
    (root / "calib.txt").write_text(TEXT)
    assert main(["quantize", str(model), "--calib", str(root / "calib.txt"), "--out", str(root / "q"), "--samples",
                 "4", "--seqlen", "32", "--kmeans-iters", "4", "--quiet", "--device", "cpu", "--config",
                 "v4-k256"]) == 0
    assert main(["export", str(root / "q"), "--out", str(root / "onnx")]) == 0
    return root / "onnx"


def generate(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(BINARY), *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def library() -> str:
    from vq2trt.runtime.library import get_library_path
    return str(get_library_path())


def test_greedy_ids_match_onnx_decoder(export):
    from vq2trt.runtime.session import OnnxDecoder

    r = generate(str(export), *map(str, PROMPT), "--new-tokens", "8", "--ignore-eos", "--library", library())
    assert r.returncode == 0, r.stderr
    expected = OnnxDecoder(export).generate(PROMPT, 8).tokens
    assert [int(t) for t in r.stdout.split()] == expected
    assert "tokens/s" in r.stderr

    # EOS from vq2trt_onnx.json ends generation (the EOS id included), as generate(eos_token_id=...) does;
    # the library may come from $VQ2TRT_ORT_LIBRARY and the prompt may be comma-separated.
    eos = json.loads((export / "vq2trt_onnx.json").read_text())["eos_token_id"]
    r = generate(str(export), ",".join(map(str, PROMPT)), "--new-tokens", "8",
                 env={"VQ2TRT_ORT_LIBRARY": library()})
    assert r.returncode == 0, r.stderr
    assert [int(t) for t in r.stdout.split()] == OnnxDecoder(export).generate(PROMPT, 8, eos_token_id=eos).tokens


def test_clear_errors(export, tmp_path):
    r = generate(str(tmp_path / "nope"), "1")
    assert r.returncode == 2 and "nope: no such folder" in r.stderr
    r = generate(str(tmp_path), "1")
    assert r.returncode == 2 and "no model.onnx" in r.stderr
    r = generate(str(export), "1", "--library", str(tmp_path / "missing.so"))
    assert r.returncode == 2 and "missing.so: no such file" in r.stderr
    r = generate(str(export), "1", env={"VQ2TRT_ORT_LIBRARY": str(tmp_path / "gone.so")})
    assert r.returncode == 2 and "VQ2TRT_ORT_LIBRARY" in r.stderr and "gone.so" in r.stderr
    r = generate(str(export))
    assert r.returncode == 2 and "no prompt token ids" in r.stderr

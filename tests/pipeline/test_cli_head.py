"""`vq2trt quantize --head` then `vq2trt export --embedding int8` on a tiny tied model: the
folder holds no float copy of the table, runs in ONNX Runtime, and bad flags fail before work;
without --head, --embedding int8 stores one table for the embedding and the tied head."""

import json

import pytest

from vq2trt.cli import main

from .test_cli import _args, _fails


def test_head_and_int8_embedding_end_to_end(model_dir, calib, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"vector_len": 4, "num_centroids": 16}))
    out = tmp_path / "q"
    assert main(_args(model_dir, calib, out, "--config", str(cfg), "--head", "v4-k256")) == 0
    assert "lm_head" in capsys.readouterr().out
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is False
    assert main(["info", str(out)]) == 0
    assert "(decoder layers; lm_head " in capsys.readouterr().out  # the head is counted apart
    onnx_dir = tmp_path / "onnx"
    assert main(["export", str(out), "--out", str(onnx_dir), "--embedding", "int8"]) == 0
    float_dir = tmp_path / "onnx-f32"
    assert main(["export", str(out), "--out", str(float_dir)]) == 0
    size = lambda d: sum(f.stat().st_size for f in d.iterdir())  # noqa: E731
    # the table is 128 x 64: 32 KiB in float32, 8 KiB + scales in int8
    assert size(float_dir) - size(onnx_dir) > 0.7 * 128 * 64 * 4
    capsys.readouterr()
    assert main(["run", str(onnx_dir), "--prompt", "the quick", "--max-new-tokens", "4"]) == 0
    assert capsys.readouterr().out.strip()


def test_bad_head_preset_fails_before_work(model_dir, calib, tmp_path, capsys):
    out = tmp_path / "q"
    _fails(_args(model_dir, calib, out, "--head", "gptq-w2g128"), capsys, "not a VPTQ preset", "gptq-w2g128")
    assert not out.exists() and not (tmp_path / ".q.partial").exists()


def test_int8_embedding_of_a_tied_float_head_is_one_table(model_dir, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    onnx_dir = tmp_path / "o"
    assert main(["export", str(model_dir), "--out", str(onnx_dir), "--embedding", "int8"]) == 0
    info = json.loads((onnx_dir / "vq2trt_onnx.json").read_text())
    assert (info["embedding"], info["lm_head"], info["ops"]) == ("int8", "int8-tied", "fused")
    capsys.readouterr()
    assert main(["run", str(onnx_dir), "--prompt", "the quick", "--max-new-tokens", "4"]) == 0
    assert capsys.readouterr().out.strip()


def test_compact_embedding_of_a_tied_float_head_is_refused(model_dir, tmp_path, capsys):
    # TensorRT's basic-ops graph has no MatMulNBits, and a float16 table would stay beside the head
    _fails(["export", str(model_dir), "--out", str(tmp_path / "o"), "--embedding", "int8", "--ops", "basic"],
           capsys, "--ops fused")
    _fails(["export", str(model_dir), "--out", str(tmp_path / "p"), "--embedding", "float16"], capsys,
           "quantize the head")
    assert not (tmp_path / "o").exists() and not (tmp_path / "p").exists()

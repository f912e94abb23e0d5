"""The CLI end to end on a tiny model, and its answers to bad input (exit 2, named input, nothing written)."""

import json

import pytest

from vq2trt.cli import main

from .tiny import TEXT


def _args(model_dir, calib, out, *extra):
    return ["quantize", str(model_dir), "--calib", str(calib), "--out", str(out), "--samples", "4", "--seqlen", "32",
            "--kmeans-iters", "4", "--quiet", "--device", "cpu", *extra]


def test_quantize_eval_info(model_dir, calib, tmp_path, capsys):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"vector_len": 4, "num_centroids": 16, "block_size": 32}))
    out = tmp_path / "q"
    assert main(_args(model_dir, calib, out, "--config", str(cfg))) == 0
    assert (out / "model.safetensors").exists() and not (tmp_path / ".q.partial").exists()
    assert main(["eval", str(out), "--baseline", str(model_dir), "--text", str(calib), "--ctx", "64", "--windows", "2",
                 "--quiet",
                 "--max-new-tokens", "3", "--prompt", "the quick"]) == 0
    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "all-in bits per weight" in text and "perplexity" in text and "greedy" in text and "q_proj" in text
    assert "| quantized  |" in text and "| float      |" in text


def _fails(argv, capsys, *needles):
    assert main(argv) == 2
    err = capsys.readouterr().err
    for n in needles:
        assert n in err, err
    return err


def test_missing_calibration_file(model_dir, tmp_path, capsys):
    _fails(_args(model_dir, tmp_path / "nope.txt", tmp_path / "out"), capsys, "nope.txt")
    assert not (tmp_path / "out").exists()


def test_empty_calibration_file(model_dir, tmp_path, capsys):
    (tmp_path / "empty.txt").write_text("  \n")
    _fails(_args(model_dir, tmp_path / "empty.txt", tmp_path / "out"), capsys, "empty.txt")
    assert not (tmp_path / "out").exists()


def test_folder_without_weights(calib, tmp_path, capsys):
    d = tmp_path / "noweights"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "llama"}))
    _fails(_args(d, calib, tmp_path / "out"), capsys, str(d))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("fields, needle", [
    ({"num_centroids": 1}, "num_centroids=1"),
    ({"vector_len": 0}, "vector_len=0"),
    ({"outlier_frac": 1.2}, "outlier_frac=1.2"),
    ({"num_centroids": 131072}, "index bits <= 16"),
])
def test_impossible_config(model_dir, calib, tmp_path, capsys, fields, needle):
    cfg = tmp_path / "bad.json"
    cfg.write_text(json.dumps(fields))
    _fails(_args(model_dir, calib, tmp_path / "out", "--config", str(cfg)), capsys, needle)
    assert not (tmp_path / "out").exists()


def test_existing_output_refused(model_dir, calib, tmp_path, capsys):
    (tmp_path / "out").mkdir()
    _fails(_args(model_dir, calib, tmp_path / "out"), capsys, "already exists")


def test_eval_of_damaged_checkpoint(tmp_path, capsys):
    d = tmp_path / "ck"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"quantization_config": {"quant_method": "vq2trt", "format_version": 1}}))
    (d / "model.safetensors").write_bytes(b"junk")
    (tmp_path / "t.txt").write_text(TEXT)
    _fails(["eval", str(d), "--text", str(tmp_path / "t.txt")], capsys, "model.safetensors")


def test_scalar_baseline_writes_a_loadable_float_folder(model_dir, calib, tmp_path, capsys):
    out = tmp_path / "rtn"
    assert main(_args(model_dir, calib, out, "--config", "rtn-w2g128")) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["vq2trt_simulated_quantization"]["method"] == "rtn"
    assert main(["eval", str(out), "--text", str(calib), "--ctx", "64", "--windows", "1", "--quiet",
                 "--max-new-tokens", "0"]) == 0
    assert "| float      |" in capsys.readouterr().out

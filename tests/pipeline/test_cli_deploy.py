"""quantize -> export -> run / eval --onnx / compare through the CLI on a tiny model, and the
deployment commands' answers to bad input."""

import pytest

from vq2trt.cli import main

from .tiny import TEXT, save_tiny

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    root = tmp_path_factory.mktemp("deploy")
    model = save_tiny(root / "model")
    (root / "calib.txt").write_text(TEXT)
    q = root / "q"
    assert main(["quantize", str(model), "--calib", str(root / "calib.txt"), "--out", str(q), "--samples", "4",
                 "--seqlen", "32", "--kmeans-iters", "4", "--quiet", "--device", "cpu", "--config", "v4-k256"]) == 0
    assert main(["export", str(q), "--out", str(root / "onnx")]) == 0
    assert main(["export", str(model), "--out", str(root / "onnx-float")]) == 0
    return root


def test_export_run_eval_compare(pipeline, capsys):
    root = pipeline
    assert (root / "onnx" / "tokenizer.json").exists()
    assert main(["run", str(root / "onnx"), "--prompt", "the quick", "--max-new-tokens", "4"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("the quick") and "tokens/s" in out and "greedy" in out
    assert main(["run", str(root / "onnx"), "--prompt", "the quick", "--max-new-tokens", "4", "--temperature",
                 "0.8", "--top-k", "5"]) == 0
    assert "sampled" in capsys.readouterr().out
    assert main(["eval", str(root / "q"), "--onnx", str(root / "onnx"), "--text", str(root / "calib.txt"), "--ctx",
                 "64", "--windows", "2", "--quiet", "--max-new-tokens", "0"]) == 0
    out = capsys.readouterr().out
    assert "ORT VQGemm" in out and "ONNX Runtime perplexity" in out
    assert main(["compare", str(root / "onnx"), "--float-onnx", str(root / "onnx-float")]) == 0
    out = capsys.readouterr().out
    assert "PASS" in out and "pytorch-reference" in out and "onnxruntime-float" in out
    # quiet by default: the table and its header, not polygraphy's per-output log ("[I] ..." lines)
    assert not [ln for ln in out.splitlines() if ln.startswith("[I]")] and len(out.splitlines()) < 15
    assert main(["compare", str(root / "onnx"), "--verbose"]) == 0
    out = capsys.readouterr().out
    assert len([ln for ln in out.splitlines() if ln.startswith("[I]")]) > 20 and "PASS" in out


def test_last_logits_export_runs_compares_and_refuses_perplexity(pipeline, capsys):
    """export --logits last: generation and the polygraphy comparison (whose PyTorch reference
    takes the same mode) work; perplexity, and a comparison against an export of the other mode,
    are refused by name before any slow work."""
    root = pipeline
    last = root / "onnx-last"
    assert main(["export", str(root / "q"), "--out", str(last), "--logits", "last"]) == 0
    capsys.readouterr()
    assert main(["run", str(last), "--prompt", "the quick", "--max-new-tokens", "4"]) == 0
    assert capsys.readouterr().out.startswith("the quick")
    assert main(["compare", str(last)]) == 0
    assert "PASS" in capsys.readouterr().out
    assert main(["eval", str(root / "q"), "--onnx", str(last), "--text", str(root / "calib.txt"), "--ctx", "64",
                 "--quiet"]) == 2
    assert "--logits last" in capsys.readouterr().err
    assert main(["compare", str(last), "--float-onnx", str(root / "onnx-float")]) == 2
    assert "same --logits" in capsys.readouterr().err


def test_outputs_are_readable_by_other_users(pipeline):
    """A container or service running as another user must be able to read every checkpoint and
    export file (mkstemp/mkdtemp create 0600/0700)."""
    import os
    import stat

    umask = os.umask(0)
    os.umask(umask)                 # what the user asked for is the bound, not 0644 itself
    for folder in ("q", "onnx"):
        paths = [pipeline / folder, *(pipeline / folder).rglob("*")]
        assert len(paths) > 3
        for p in paths:
            mode = p.stat().st_mode
            want = (stat.S_IRGRP | stat.S_IROTH | ((stat.S_IXGRP | stat.S_IXOTH) if p.is_dir() else 0)) & ~umask
            assert mode & want == want, f"{p} has mode {oct(mode & 0o777)}"


def test_run_on_a_folder_without_a_model(tmp_path, capsys):
    assert main(["run", str(tmp_path)]) == 2
    assert "model.onnx" in capsys.readouterr().err


def test_export_of_a_missing_checkpoint(tmp_path, capsys):
    assert main(["export", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "nope" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_python_sample_app_generates_like_vq2trt_run(pipeline, capsys):
    """samples/ort_generate.py (onnxruntime + tokenizers only) continues the prompt exactly as
    `vq2trt run` does: both are greedy over the same graph."""
    import subprocess
    import sys
    from pathlib import Path

    sample = Path(__file__).resolve().parents[2] / "samples" / "ort_generate.py"
    r = subprocess.run([sys.executable, str(sample), str(pipeline / "onnx"), "the quick"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert main(["run", str(pipeline / "onnx"), "--prompt", "the quick", "--max-new-tokens", "24"]) == 0
    ours = capsys.readouterr().out.splitlines()[0]
    assert r.stdout.strip() == ours.strip()


def test_export_prints_no_torchvision_notices(pipeline, tmp_path):
    """torch.onnx logs one warning per torchvision detection op when torchvision is absent; a
    decoder export has no such op, so none of that reaches the user (it did: four lines)."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "vq2trt.cli", "export", str(pipeline / "model"), "--out",
                        str(tmp_path / "o")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "torchvision" not in r.stderr + r.stdout
    assert "wrote" in r.stdout

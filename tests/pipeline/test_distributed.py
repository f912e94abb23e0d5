"""torchrun: `vq2trt quantize` on 2 CPU ranks (gloo) writes the bytes one process writes, and a run
whose rank is killed resumes from the finished layers to the same bytes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from vq2trt.cli import main

from .tiny import TEXT, tiny_tokenizer

pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="this torch build has no gloo backend")


def _folder(path: Path, layers: int, hidden: int = 64, inter: int = 96) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(1)
    cfg = LlamaConfig(vocab_size=128, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    LlamaForCausalLM(cfg).to(torch.bfloat16).save_pretrained(str(path), max_shard_size="40KB")
    tiny_tokenizer().save_pretrained(str(path))
    return path


def _args(model: Path, calib: Path, out: Path, extra: list[str]) -> list[str]:
    return ["quantize", str(model), "--calib", str(calib), "--out", str(out), "--samples", "24", "--seqlen", "32",
            "--threads", "1", "--quiet", *extra]


def _torchrun(args: list[str], **kw) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "vq2trt.cli", *args]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def _bytes(out: Path) -> tuple[bytes, str]:
    return (out / "model.safetensors").read_bytes(), (out / "config.json").read_text()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    calib = root / "calib.txt"
    calib.write_text(TEXT)
    return _folder(root / "model", layers=3), calib


@pytest.mark.parametrize("extra", [
    ["--config", "v2-k16", "--kmeans-iters", "3"],
    ["--config", "v2-k16", "--kmeans-iters", "3", "--stream", "--max-memory", "1400K", "--head", "v2-k16",
     "--finetune-steps", "2"],
    ["--config", "v2-k16", "--kmeans-iters", "2", "--hessian", "output-aware"],
], ids=["whole-model", "streamed-spilled-head-finetune", "output-aware"])
def test_two_ranks_write_the_bytes_of_one_process(setup, tmp_path, extra):
    model, calib = setup
    assert main(_args(model, calib, tmp_path / "one", extra)) == 0
    p = _torchrun(_args(model, calib, tmp_path / "two", extra))
    log, _ = p.communicate(timeout=300)
    assert p.returncode == 0, log
    assert "on 2 ranks" in log and log.count("wrote ") == 1, log            # rank 0 alone writes and reports
    assert _bytes(tmp_path / "two") == _bytes(tmp_path / "one")


def _rank_pids(parent: int) -> dict[int, int]:
    """{RANK: pid} of the worker processes torchrun started (read from their environments)."""
    out = {}
    for child in Path("/proc").iterdir():
        if not child.name.isdigit():
            continue
        try:
            env = (child / "environ").read_bytes().split(b"\0")
            ppid = int((child / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        ranks = [e for e in env if e.startswith(b"RANK=")]
        if ranks and b"TORCHELASTIC_RUN_ID=" in b" ".join(env) and _descends(ppid, parent):
            out[int(ranks[0][5:])] = int(child.name)
    return out


def _descends(pid: int, ancestor: int) -> bool:
    while pid > 1:
        if pid == ancestor:
            return True
        try:
            pid = int((Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return False
    return False


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the ranks through /proc (Linux)")
def test_killed_rank_resumes_to_the_same_bytes(tmp_path):
    calib = tmp_path / "calib.txt"
    calib.write_text(TEXT)
    model = _folder(tmp_path / "model", layers=8, hidden=128, inter=256)
    extra = ["--config", "v4-k256", "--kmeans-iters", "6", "--stream"]
    assert main(_args(model, calib, tmp_path / "one", extra)) == 0

    out = tmp_path / "two"
    work = tmp_path / ".two.partial"
    p = _torchrun(_args(model, calib, out, extra), start_new_session=True)
    deadline = time.monotonic() + 240
    while not (work / "layer_001.safetensors").exists():
        assert p.poll() is None, p.communicate()[0]
        assert time.monotonic() < deadline, "no layer finished in time"
        time.sleep(0.02)
    ranks = _rank_pids(p.pid)
    assert set(ranks) == {0, 1}, ranks
    os.kill(ranks[1], signal.SIGKILL)                                       # one rank dies mid-run
    log, _ = p.communicate(timeout=120)
    assert p.returncode != 0, log
    assert not out.exists()                                                 # nothing half-written
    finished = sorted(f.name for f in work.glob("layer_*.safetensors"))
    assert 2 <= len(finished) < 8, finished

    p = _torchrun(_args(model, calib, out, extra))                          # the same command again
    log, _ = p.communicate(timeout=300)
    assert p.returncode == 0, log
    assert _bytes(out) == _bytes(tmp_path / "one")
    assert not work.exists()

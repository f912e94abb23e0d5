"""quantize --stream: a meta-device model fed one decoder layer at a time from (sharded) safetensors,
activations spilled to files under --max-memory; the checkpoint is byte-identical to quantizing the
model loaded whole."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import vq2trt.quantize as qmod
from vq2trt.activations import parse_size
from vq2trt.cli import main
from vq2trt.config import QuantConfig
from vq2trt.io import load_quantized, save_quantized
from vq2trt.models import load_model
from vq2trt.quantize import QuantizeError, quantize
from vq2trt.streaming import StreamError, load_streamed, save_streamed

from .tiny import TEXT, calib_ids, tiny_model, tiny_tokenizer

CONFIG = dict(vector_len=4, num_centroids=16, kmeans_iters=3, block_size=32)


def _tiny_folder(path, *, shard="12KB", layers=3, tie=True, dtype=torch.bfloat16):
    """A tiny Llama saved as an HF folder of several safetensors shards (bf16, as published models are)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=tie)
    LlamaForCausalLM(cfg).to(dtype).save_pretrained(str(path), max_shard_size=shard)
    tiny_tokenizer().save_pretrained(str(path))
    return path


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    path = _tiny_folder(tmp_path_factory.mktemp("stream") / "model")
    assert (path / "model.safetensors.index.json").is_file() and len(list(path.glob("*.safetensors"))) >= 3
    return path


def _whole(path, config, calib, out, **kw):
    model, tok = load_model(path)
    quantize(model, config, calib, work_dir=out.with_name(out.name + ".work"), device="cpu", progress=False, **kw)
    save_quantized(model, config, out, tokenizer=tok)
    return out


def _streamed(path, config, calib, out, **kw):
    model, tok, stream = load_streamed(path)
    work = out.with_name(out.name + ".work")
    quantize(model, config, calib, work_dir=work, device="cpu", progress=False, stream=stream, **kw)
    save_streamed(model, stream, config, work, out, tokenizer=tok, progress=False)
    return out


def _same_checkpoint(a, b):
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    assert (a / "config.json").read_text() == (b / "config.json").read_text()


@pytest.mark.parametrize("head", [None, "v2-k16"], ids=["decoder", "with-head"])
def test_streamed_checkpoint_has_the_bytes_of_the_whole_model_run(sharded, tmp_path, head):
    from vq2trt.head import with_head

    config = with_head(QuantConfig(**CONFIG), head)
    calib = calib_ids(12, 32)
    whole = _whole(sharded, config, calib, tmp_path / "whole")
    streamed = _streamed(sharded, config, calib, tmp_path / "streamed")
    _same_checkpoint(whole, streamed)
    model = load_quantized(streamed)          # and it loads and runs as any checkpoint
    assert torch.isfinite(model(calib[:1]).logits).all()


def test_only_one_decoder_layer_is_ever_loaded(sharded, tmp_path, monkeypatch):
    model, tok, stream = load_streamed(sharded)
    layers = model.model.layers
    assert all(p.is_meta for p in layers.parameters())            # nothing of the layers before the run
    peak = []
    real_load = type(stream).load

    def load(self, i, device="cpu"):
        out = real_load(self, i, device)
        peak.append(sum(not all(t.is_meta for t in layer.state_dict().values()) for layer in layers))
        return out
    monkeypatch.setattr(type(stream), "load", load)
    quantize(model, QuantConfig(**CONFIG), calib_ids(8, 32), work_dir=tmp_path / "w", device="cpu",
             progress=False, stream=stream)
    assert peak == [1, 1, 1]
    assert all(t.is_meta for t in layers.state_dict().values())   # all freed again
    assert not model.model.embed_tokens.weight.is_meta            # tied: the embedding is the head


def test_activations_spill_to_files_under_max_memory(sharded, tmp_path, monkeypatch):
    from vq2trt.activations import Activations

    config, calib = QuantConfig(**CONFIG), calib_ids(24, 32)
    whole = _whole(sharded, config, calib, tmp_path / "whole")
    logs, files = [], []
    real_put = Activations.put

    def put(self, i, t):
        real_put(self, i, t)
        if self.spilled:
            files.append(len(list(self.folder.iterdir())))
            assert self._mem == [None] * len(self._mem)                # nothing kept in memory
    monkeypatch.setattr(Activations, "put", put)
    streamed = _streamed(sharded, config, calib, tmp_path / "streamed", max_memory=1_400_000, log=logs.append)
    assert any("on disk in" in m for m in logs), logs
    assert files and max(files) >= 3
    _same_checkpoint(whole, streamed)
    # under a budget the layer itself does not fit, the run stops before any work and says why
    model, _, stream = load_streamed(sharded)
    with pytest.raises(QuantizeError, match=r"--max-memory .* less than one decoder layer .* largest Linear"):
        quantize(model, config, calib, device="cpu", progress=False, stream=stream, max_memory=50_000)


def test_killed_streamed_run_resumes_to_the_same_bytes(sharded, tmp_path, monkeypatch):
    config, calib = QuantConfig(**CONFIG), calib_ids(8, 32)
    whole = _whole(sharded, config, calib, tmp_path / "whole")
    real = qmod._quantize_layer

    def dies_on_layer_2(model, layer, i, *a, **kw):
        if i == 2:
            raise KeyboardInterrupt
        return real(model, layer, i, *a, **kw)
    monkeypatch.setattr(qmod, "_quantize_layer", dies_on_layer_2)
    with pytest.raises(KeyboardInterrupt):
        _streamed(sharded, config, calib, tmp_path / "streamed")
    monkeypatch.setattr(qmod, "_quantize_layer", real)
    done = sorted(p.name for p in (tmp_path / "streamed.work").glob("layer_*.safetensors"))
    assert done == ["layer_000.safetensors", "layer_001.safetensors"]
    _same_checkpoint(whole, _streamed(sharded, config, calib, tmp_path / "streamed"))


def test_single_file_and_untied_float32_folders_stream_too(tmp_path):
    path = _tiny_folder(tmp_path / "m", shard="10GB", layers=2, tie=False, dtype=torch.float32)
    assert (path / "model.safetensors").is_file() and not (path / "model.safetensors.index.json").exists()
    config, calib = QuantConfig(**CONFIG), calib_ids(8, 32)
    _same_checkpoint(_whole(path, config, calib, tmp_path / "a"), _streamed(path, config, calib, tmp_path / "b"))
    model, _, stream = load_streamed(path)
    quantize(model, config, calib, device="cpu", progress=False, stream=stream)
    assert model.model.embed_tokens.weight.is_meta                # untied: freed after layer 0's inputs


def test_cli_stream_matches_the_whole_run(sharded, tmp_path, capsys):
    calib = tmp_path / "calib.txt"
    calib.write_text(TEXT)
    args = ["quantize", str(sharded), "--calib", str(calib), "--samples", "24", "--seqlen", "32",
            "--kmeans-iters", "2", "--config", "v2-k16", "--quiet", "--threads", "1"]
    assert main(args + ["--out", str(tmp_path / "a")]) == 0
    assert main(args + ["--out", str(tmp_path / "b"), "--stream", "--max-memory", "1400K"]) == 0
    out = capsys.readouterr().out
    assert "memory: one decoder layer" in out and "on disk" in out and "should take about" in out
    _same_checkpoint(tmp_path / "a", tmp_path / "b")
    assert not (tmp_path / ".b.partial").exists()                 # work folder and spilled files gone


def test_bad_inputs_name_the_file_and_what_was_expected(sharded, tmp_path, capsys):
    import shutil

    # no weights at all
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text((sharded / "config.json").read_text())
    with pytest.raises(StreamError, match="neither model.safetensors nor model.safetensors.index.json"):
        load_streamed(tmp_path / "empty")
    # a shard the index names is missing
    broken = tmp_path / "broken"
    shutil.copytree(sharded, broken)
    shard = sorted(broken.glob("model-*.safetensors"))[1]
    shard.unlink()
    with pytest.raises(StreamError, match=f"shard {shard.name} is missing"):
        load_streamed(broken)
    # a tensor of the wrong shape (config says otherwise)
    bad = tmp_path / "bad"
    shutil.copytree(sharded, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["intermediate_size"] = 80
    (bad / "config.json").write_text(json.dumps(cfg))
    model, _, stream = load_streamed(bad)
    with pytest.raises(StreamError, match=r"mlp.gate_proj.weight has shape \[96, 64\], the model's config expects "
                                          r"\[80, 64\]"):
        stream.load(0)
    # a GGUF (or any file) is not a folder to stream from
    with pytest.raises(StreamError, match="needs an HF model folder"):
        load_streamed(tmp_path / "model.gguf")
    # stages that need the whole model, through the CLI
    calib = tmp_path / "calib.txt"
    calib.write_text(TEXT)
    base = ["quantize", str(sharded), "--calib", str(calib), "--out", str(tmp_path / "o"), "--stream"]
    assert main(base + ["--distill-tokens", "64"]) == 2
    assert "vq2trt finetune" in capsys.readouterr().err
    assert main(base + ["--target-bits", "2.5"]) == 2
    assert "--target-bits allocation is not available with --stream" in capsys.readouterr().err
    assert main(base + ["--max-memory", "lots"]) == 2
    assert "expected a number with an optional K, M, G or T suffix" in capsys.readouterr().err
    model, _, stream = load_streamed(sharded)
    with pytest.raises(QuantizeError, match="output-aware"):
        quantize(model, QuantConfig(**CONFIG, hessian="output-aware"), calib_ids(8, 32), stream=stream, progress=False)
    assert not (tmp_path / "o").exists()


def test_parse_size():
    assert parse_size("24G") == 24 * 2**30 and parse_size("512M") == 512 * 2**20
    assert parse_size("1.5GiB") == int(1.5 * 2**30) and parse_size("1000") == 1000 and parse_size("2k") == 2048
    for bad in ("", "-1G", "0", "12Q"):
        with pytest.raises(ValueError):
            parse_size(bad)


def test_tiny_model_helpers_still_match(tmp_path):
    # whole-model runs are unchanged by the streaming code: a model in memory quantizes as before
    model = tiny_model()
    r = quantize(model, QuantConfig(**CONFIG), calib_ids(8, 32), device="cpu", progress=False)
    assert len(r.weights) == 14 and r.bits_per_weight == pytest.approx(
        sum(w.stored_bits() for w in r.weights.values()) / sum(w.out_features * w.in_features
                                                                for w in r.weights.values()))


def _tiny_gguf(path, layers=2, hidden=64, inter=96, vocab=128, heads=4, kv_heads=2):
    """A LLaMA GGUF with random float32/float16 tensors under llama.cpp's names (no tokenizer)."""
    import numpy as np
    from gguf import GGUFWriter

    rng = np.random.default_rng(0)
    w = GGUFWriter(str(path), "llama")
    w.add_name("tiny")
    w.add_context_length(256)
    w.add_embedding_length(hidden)
    w.add_block_count(layers)
    w.add_feed_forward_length(inter)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_dimension_count(hidden // heads)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_vocab_size(vocab)

    def t(name, shape, dtype=np.float32):
        w.add_tensor(name, (rng.standard_normal(shape) * 0.05).astype(dtype))
    kv = hidden // heads * kv_heads
    t("token_embd.weight", (vocab, hidden))
    for i in range(layers):
        t(f"blk.{i}.attn_norm.weight", (hidden,))
        t(f"blk.{i}.ffn_norm.weight", (hidden,))
        t(f"blk.{i}.attn_q.weight", (hidden, hidden), np.float16)   # q/k: transformers un-permutes them
        t(f"blk.{i}.attn_k.weight", (kv, hidden), np.float16)
        t(f"blk.{i}.attn_v.weight", (kv, hidden))
        t(f"blk.{i}.attn_output.weight", (hidden, hidden))
        t(f"blk.{i}.ffn_gate.weight", (inter, hidden))
        t(f"blk.{i}.ffn_up.weight", (inter, hidden))
        t(f"blk.{i}.ffn_down.weight", (hidden, inter))
    t("output_norm.weight", (hidden,))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_gguf_streams_to_the_bytes_of_transformers_whole_load(tmp_path):
    from transformers import AutoModelForCausalLM

    gguf = _tiny_gguf(tmp_path / "tiny.gguf")
    whole = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=gguf.name, dtype=torch.float32).eval()
    model, tok, stream = load_streamed(gguf)
    assert tok is None                                            # this file has no tokenizer metadata
    ref = whole.state_dict()
    for i in range(2):
        stream.load(i)
    got = {k: v for k, v in model.state_dict().items() if not v.is_meta}
    assert set(got) == set(ref) and all(torch.equal(got[k], ref[k]) for k in ref)
    for i in range(2):
        stream.release(i)
    config, calib = QuantConfig(**CONFIG), calib_ids(8, 32)
    whole.requires_grad_(False)
    quantize(whole, config, calib, device="cpu", progress=False)
    save_quantized(whole, config, tmp_path / "a")
    quantize(model, config, calib, work_dir=tmp_path / "w", device="cpu", progress=False, stream=stream)
    save_streamed(model, stream, config, tmp_path / "w", tmp_path / "b", progress=False)
    _same_checkpoint(tmp_path / "a", tmp_path / "b")


def test_damaged_gguf_is_refused(tmp_path):
    gguf = _tiny_gguf(tmp_path / "tiny.gguf")
    data = gguf.read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(StreamError, match="cut.gguf"):
        load_streamed(cut)


SMOLLM2 = Path.home() / ".cache" / "vq2trt" / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.mark.slow
@pytest.mark.skipif(not SMOLLM2.is_file(), reason=f"needs {SMOLLM2} (make model)")
def test_smollm2_gguf_layers_stream_as_loaded_whole():
    model, tok, stream = load_streamed(SMOLLM2)
    ref = load_model(SMOLLM2)[0].state_dict()
    for i in (0, len(stream.layers) - 1):
        stream.load(i)
    got = {k: v for k, v in model.state_dict().items() if not v.is_meta}
    assert len(got) == 2 * 9 + 3 and all(torch.equal(v, ref[k]) for k, v in got.items())
    assert tok is not None and tok("The capital")["input_ids"]


def test_hessian_memory_in_the_plan_is_what_the_layer_allocates():
    from vq2trt.activations import hessian_bytes

    model = tiny_model()          # q/k/v and gate/up share an input: 64 (qkv), 64 (o), 64 (gate/up), 96 (down)
    assert hessian_bytes(model) == (3 * 64 * 64 + 96 * 96) * 8
    layer = model.model.layers[0]
    batches, _ = qmod._calibration_inputs(model, model.model.layers, calib_ids(2, 8), 2, "cpu")
    acc, _ = qmod._collect_hessians(layer, qmod.quantizable_linears(layer, "model.layers.0", []), batches, "cpu",
                                    keep_targets=False)
    distinct = {id(a): a for a in acc.values()}.values()
    assert sorted(a.in_features for a in distinct) == [64, 64, 64, 96]

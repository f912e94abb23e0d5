"""An export folder runs unchanged in ONNX Runtime GenAI (genai_config.json + the op library copied
beside it): greedy ids equal those of `vq2trt run`'s loop (OnnxDecoder) for the same prompt ids,
per step logits included; the config states the model's shapes; what GenAI on the CPU cannot run
(bfloat16) fails clearly."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from vq2trt.export.genai import GENAI_CONFIG, GENAI_VERSION, genai_config, write_genai
from vq2trt.runtime.library import LIBRARY_NAME
from vq2trt.runtime.session import OnnxDecoder, read_info

PROMPTS = [[5, 17, 42, 99, 3, 8], [200, 1, 77], [250, 13, 40, 41, 7]]
NEW_TOKENS = 8


def _og():
    # a wheel exists for Linux x86_64/aarch64, macOS and Windows; `pip install -e .[dev]` installs it
    return pytest.importorskip("onnxruntime_genai", reason=f"onnxruntime-genai is not installed: "
                               f"pip install onnxruntime-genai=={GENAI_VERSION} (in the dev extra)")


def genai_greedy(folder: Path, prompts: list[list[int]], new_tokens: int, pad: int):
    """GenAI's greedy ids per prompt (one batch, right-padded with ``pad``: GenAI 0.18 masks pad
    tokens only after a row's last real token, then continues each row from there) and the logits
    of each step."""
    og = _og()
    model = og.Model(str(folder))
    params = og.GeneratorParams(model)
    width = max(map(len, prompts))
    params.set_search_options(max_length=width + new_tokens, batch_size=len(prompts))
    gen = og.Generator(model, params)
    gen.append_tokens(np.array([p + [pad] * (width - len(p)) for p in prompts], np.int32))
    ids, logits = [[] for _ in prompts], []
    while not gen.is_done():
        # get_logits runs the pending forward (GenAI computes lazily); [B, V] of the step about to pick
        logits.append(np.asarray(gen.get_logits()).reshape(len(prompts), -1).copy())
        gen.generate_next_token()
        for row, t in zip(ids, gen.get_next_tokens()):
            row.append(int(t))
    return ids, np.stack(logits, 1)                                  # [B, steps, V]


def reference(folder: Path, prompt: list[int], new_tokens: int):
    """`vq2trt run`'s greedy loop: ids and the logits each pick was made from."""
    dec = OnnxDecoder(folder)
    eos = dec.info.get("eos_token_id")
    tokens = dec.generate(prompt, new_tokens, eos_token_id=eos).tokens
    seq = np.array([prompt + tokens[:-1]])
    return tokens, dec.logits(seq)[0, len(prompt) - 1:]              # [steps, V]


def check_same_as_run(folder: Path, prompts=PROMPTS, new_tokens: int = NEW_TOKENS, atol: float = 1e-4):
    info = read_info(folder)
    cfg = json.loads((folder / GENAI_CONFIG).read_text())
    eos = set(np.atleast_1d(info["eos_token_id"]).tolist()) if info["eos_token_id"] is not None else set()
    # GenAI 0.18 runs prompt tokens through its EOS check, `vq2trt run` does not: keep EOS out of prompts
    assert not eos & {t for p in prompts for t in p}
    got, got_logits = genai_greedy(folder, prompts, new_tokens, cfg["model"]["pad_token_id"])
    for b, prompt in enumerate(prompts):
        want, want_logits = reference(folder, prompt, new_tokens)
        assert got[b][:len(want)] == want, f"prompt {b}"
        n = len(want)
        np.testing.assert_allclose(got_logits[b, :n], want_logits[:n], atol=atol, err_msg=f"prompt {b}")


def test_quantized_export_runs_in_genai(exported):
    """Opset-23 fused float32 graph (the default), default and every-format-feature checkpoints."""
    _, folder = exported
    assert (folder / LIBRARY_NAME).is_file()
    check_same_as_run(folder)


def test_basic_export_runs_in_genai(exported_basic):
    _, folder = exported_basic
    check_same_as_run(folder)


def test_float_export_needs_no_library(exported_float):
    _, folder = exported_float
    cfg = json.loads((folder / GENAI_CONFIG).read_text())
    assert "custom_ops_library" not in cfg["model"]["decoder"]["session_options"]
    assert not (folder / LIBRARY_NAME).exists()
    check_same_as_run(folder, prompts=PROMPTS[:1])


@pytest.fixture(scope="module")
def low_export(tmp_path_factory):
    """``low_export(dtype)``: the default tiny checkpoint exported with --ops basic in ``dtype``, once."""
    from vq2trt.export.onnx_export import export_onnx

    from .conftest import DEFAULT, _quantized

    model, folders = _quantized(DEFAULT), {}

    def get(dtype: str) -> Path:
        if dtype not in folders:
            folders[dtype] = tmp_path_factory.mktemp(f"genai-{dtype}") / "model"
            export_onnx(model, folders[dtype], dtype=dtype, ops="basic")
        return folders[dtype]
    return get


def test_float16_export_runs_in_genai(low_export):
    # the graph's KV dtype drives GenAI's cache; logits are float32 in every export
    folder = low_export("float16")
    check_same_as_run(folder, prompts=PROMPTS[:2], atol=1e-3)


def test_bfloat16_export_is_refused_on_the_cpu(low_export):
    """ONNX Runtime's CPU EP has no bfloat16 kernels: GenAI fails as `vq2trt run` does, naming the op."""
    og = _og()
    folder = low_export("bfloat16")
    assert (folder / GENAI_CONFIG).is_file()
    with pytest.raises(Exception, match="Could not find an implementation"):
        og.Model(str(folder))                       # the session is created, and refused, here


def test_config_matches_the_model(exported):
    model, folder = exported
    hf = model.config
    cfg = json.loads((folder / GENAI_CONFIG).read_text())
    m, d = cfg["model"], cfg["model"]["decoder"]
    assert m["type"] == "llama" and m["vocab_size"] == hf.vocab_size
    assert m["context_length"] == hf.max_position_embeddings == cfg["search"]["max_length"]
    assert m["eos_token_id"] == hf.eos_token_id and m["bos_token_id"] == hf.bos_token_id
    assert (d["num_hidden_layers"], d["num_attention_heads"], d["num_key_value_heads"], d["hidden_size"]) == (
        hf.num_hidden_layers, hf.num_attention_heads, hf.num_key_value_heads, hf.hidden_size)
    assert d["head_size"] == hf.hidden_size // hf.num_attention_heads
    assert d["filename"] == "model.onnx" and (folder / d["filename"]).is_file()
    # a bare file name: GenAI looks it up in the model folder first and accepts no ".." and no
    # path (symlinks resolved) outside the folder, the working directory or an EP's folder
    assert d["session_options"]["custom_ops_library"] == LIBRARY_NAME
    assert cfg["search"]["past_present_share_buffer"] is False and cfg["search"]["do_sample"] is False
    info = read_info(folder)
    n = hf.num_hidden_layers
    assert [d["inputs"]["past_key_names"] % i for i in range(n)] == info["inputs"][3::2]
    assert [d["outputs"]["present_value_names"] % i for i in range(n)] == info["outputs"][2::2]


def test_genai_runs_from_another_working_directory(exported, tmp_path, monkeypatch):
    """The library is found in the folder, not through the working directory."""
    og = _og()
    _, folder = exported
    monkeypatch.chdir(tmp_path)
    og.Model(str(folder))


def test_missing_library_warns_and_still_names_it(tmp_path, monkeypatch):
    from types import SimpleNamespace

    info = {"num_layers": 1, "num_key_value_heads": 2, "head_dim": 8, "vocab_size": 32, "eos_token_id": [2, 3],
            "bos_token_id": None, "model_type": "qwen2", "quantized": True,
            "inputs": ["input_ids", "attention_mask", "position_ids", "past_key_values.0.key",
                       "past_key_values.0.value"], "outputs": ["logits", "present.0.key", "present.0.value"]}
    hf = SimpleNamespace(hidden_size=16, num_attention_heads=2, max_position_embeddings=64, pad_token_id=None)
    monkeypatch.setenv("VQ2TRT_ORT_LIBRARY", str(tmp_path / "nowhere.so"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cfg = json.loads(write_genai(tmp_path, info, hf).read_text())
    assert any("copy libvq2trt_ort.so into the export folder" in str(w.message) for w in caught)
    assert cfg["model"]["decoder"]["session_options"]["custom_ops_library"] == LIBRARY_NAME
    assert cfg["model"]["type"] == "qwen2" and cfg["model"]["eos_token_id"] == [2, 3]
    assert cfg["model"]["pad_token_id"] == 2 and cfg["model"]["bos_token_id"] == 1
    with pytest.raises(ValueError, match="interface"):
        genai_config({**info, "inputs": info["inputs"][:3]}, hf, library=None)


SMOLLM2 = Path.home() / ".cache" / "vq2trt" / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.mark.slow
def test_smollm2_export_runs_in_genai(tmp_path_factory):
    """A real tokenizer (GenAI's own, from the folder's tokenizer.json) and SmolLM2 with three of its
    30 layers at 2 bits, coarsely calibrated: this is about the runtime, not quality (all 30 layers
    take ~12 min on 2 busy cores)."""
    if not SMOLLM2.is_file():
        pytest.skip(f"{SMOLLM2} not found: `make model` fetches it")
    og = _og()
    import torch

    from vq2trt.config import QuantConfig
    from vq2trt.export.onnx_export import export_onnx
    from vq2trt.models import load_model
    from vq2trt.quantize import quantize

    model, tok = load_model(SMOLLM2)
    calib = torch.tensor([tok("The capital of France is Paris. The quick brown fox jumps over the lazy dog. " * 4)
                          ["input_ids"][:64]]).repeat(2, 1)
    skip = ["lm_head", "embed_tokens", *(f"model.layers.{i}." for i in range(30) if i not in (0, 15, 29))]
    quantize(model, QuantConfig(vector_len=4, num_centroids=256, kmeans_iters=3, skip_modules=skip), calib,
             device="cpu", progress=False)
    folder = tmp_path_factory.mktemp("genai-smollm2") / "model"
    export_onnx(model, folder, tokenizer=tok)
    prompt = "The capital of France is"
    assert read_info(folder)["quantized"] and (folder / LIBRARY_NAME).is_file()
    gtok = og.Tokenizer(og.Model(str(folder)))
    prompts = [gtok.encode(p).tolist() for p in (prompt, "Once upon a time")]
    assert prompts[0] == tok(prompt)["input_ids"]
    check_same_as_run(folder, prompts=prompts, new_tokens=16, atol=1e-3)

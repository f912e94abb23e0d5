"""A checkpoint whose Linears have different formats: quantize() applies each Linear's own config,
save/load keep the formats and the `modules` overrides, `vq2trt info` shows each layer's own
format, and resume tells different overrides apart."""

import json

import pytest
import torch

from vq2trt.cli import main
from vq2trt.config import QuantConfig
from vq2trt.io import load_quantized, save_quantized
from vq2trt.quantize import QuantizeError, quantize

from .tiny import calib_ids, tiny_model, tiny_tokenizer

Q0, DOWN1, UP1 = "model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj", "model.layers.1.mlp.up_proj"
CONFIG = QuantConfig(vector_len=4, num_centroids=16, kmeans_iters=3, block_size=32, modules={
    Q0: {"vector_len": 2, "outlier_frac": 0.1, "outlier_vector_len": 2, "outlier_num_centroids": 8},
    DOWN1: {"vector_len": 3, "num_centroids": 32, "num_res_centroids": 4, "enable_norm": False},
    UP1: {"num_centroids": 8, "num_groups": 2},
})


def _format(w):
    return (w.vector_len, w.num_centroids, 0 if w.res_codebook is None else w.res_codebook.shape[1],
            w.num_outlier_cols, w.num_groups, w.col_scale is not None)


def _expected(cfg, K):
    return (cfg.vector_len, cfg.num_centroids, cfg.num_res_centroids, cfg.num_outlier_cols(K), cfg.num_groups,
            cfg.enable_norm)


@pytest.fixture(scope="module")
def quantized():
    model = tiny_model()
    return model, quantize(model, CONFIG, calib_ids(), device="cpu", progress=False)


def test_each_linear_gets_its_own_format(quantized):
    _, result = quantized
    for name, w in result.weights.items():
        assert _format(w) == _expected(CONFIG.for_module(name), w.in_features), name
    assert _format(result.weights[Q0])[:2] == (2, 16) and _format(result.weights[DOWN1])[:3] == (3, 32, 4)
    assert _format(result.weights["model.layers.0.mlp.down_proj"])[:2] == (4, 16)


def test_save_load_keeps_formats_and_overrides(quantized, tmp_path):
    model, result = quantized
    ckpt = save_quantized(model, CONFIG, tmp_path / "ckpt", tokenizer=tiny_tokenizer())
    qc = json.loads((ckpt / "config.json").read_text())["quantization_config"]
    assert qc["modules"] == CONFIG.modules
    loaded = load_quantized(ckpt)
    assert loaded.vq2trt_config == CONFIG
    for name, w in result.weights.items():
        assert loaded.get_submodule(name).to_vqweight() == w, name
    ids = calib_ids(2, 16, seed=4)
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, loaded(input_ids=ids).logits)


def test_info_shows_each_layers_format(quantized, tmp_path, capsys):
    model, result = quantized
    ckpt = save_quantized(model, CONFIG, tmp_path / "ckpt")
    capsys.readouterr()
    assert main(["info", str(ckpt)]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.startswith("model.layers.")}
    assert rows[Q0][2:5] == ["2", "16", "0"] and rows[Q0][5] == "7"          # v, k, res k, outlier columns
    assert rows[DOWN1][2:5] == ["3", "32", "4"]
    assert rows[UP1][2:4] == ["4", "8"] and rows[UP1][-2] == "2"           # groups
    assert "3 Linear(s) with their own format" in out
    assert f"{result.bits_per_weight:.3f}" in out.splitlines()[-1]


def test_override_naming_no_linear_fails_before_any_work(tmp_path):
    bad = QuantConfig(vector_len=4, num_centroids=16, modules={"model.layers.7.mlp.down_proj": {"vector_len": 2}})
    with pytest.raises(QuantizeError, match=r"model\.layers\.7\.mlp\.down_proj.*name no quantized Linear"):
        quantize(tiny_model(), bad, calib_ids(), device="cpu", progress=False, work_dir=tmp_path / "w")
    assert not (tmp_path / "w").exists()


def test_resume_with_overrides(quantized, tmp_path):
    _, result = quantized
    work = tmp_path / "work"
    quantize(tiny_model(), CONFIG, calib_ids(), device="cpu", progress=False, work_dir=work)
    resumed = quantize(tiny_model(), CONFIG, calib_ids(), device="cpu", progress=False, work_dir=work)
    assert resumed.weights == result.weights
    other = QuantConfig(**{**CONFIG.to_dict(), "modules": {Q0: {"vector_len": 2}}})
    with pytest.raises(QuantizeError, match="different model, calibration data or config"):
        quantize(tiny_model(), other, calib_ids(), device="cpu", progress=False, work_dir=work)


def test_layerwise_finetuning_keeps_each_format():
    cfg = QuantConfig(**{**CONFIG.to_dict(), "finetune_steps": 2})
    model = tiny_model()
    result = quantize(model, cfg, calib_ids(), device="cpu", progress=False)
    for name, w in result.weights.items():
        assert _format(w) == _expected(cfg.for_module(name), w.in_features), name
        assert model.get_submodule(name).to_vqweight() == w

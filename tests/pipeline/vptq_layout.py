"""microsoft/VPTQ's own code (the vptq 0.0.5.post1 wheel, run on its pure-torch path) for the interop tests:
random VQuantLinear layers packed with their pack_index, their dequant, their checkpoint folders."""

from __future__ import annotations

import json
import math
import sys
import types
from pathlib import Path

import pytest
import torch


def vptq_modules():
    """(vptq.layers.vqlinear, vptq.ops, vptq.utils.pack, vptq.layers.model_base), or skip naming what is missing."""
    try:
        import sentence_transformers  # noqa: F401
    except ImportError:
        # vptq.utils.pack imports it at module level for an isinstance check in pack_model, which
        # these tests never call; a stand-in spares installing it and its dependency tree.
        st = types.ModuleType("sentence_transformers")
        sub = types.ModuleType("sentence_transformers.SentenceTransformer")
        sub.SentenceTransformer = type("SentenceTransformer", (), {})
        st.SentenceTransformer = sub
        sys.modules.setdefault("sentence_transformers", st)
        sys.modules.setdefault("sentence_transformers.SentenceTransformer", sub)
    try:
        from vptq import ops
        from vptq.layers import model_base, vqlinear
        from vptq.utils import pack
    except ImportError as e:
        pytest.skip(f"the vptq wheel is not importable ({e}); `pip install --no-deps vptq==0.0.5.post1`")
    return vqlinear, ops, pack, model_base


def _fp16_values(shape, g, scale=1.0, offset=0.0):
    # float16-representable, so a float32 VQuantLinear holds exactly what vq2trt stores
    return (torch.randn(shape, generator=g) * scale + offset).half().float()


def layer_conf(N, K, *, v=4, k=16, kr=-1, vo=-1, ko=-1, n_out=0, G=1, norm=True, perm=True, bias=False) -> dict:
    """A config_for_layers entry: VQuantLinear's constructor arguments, as VPTQ's packer records them."""
    return {"in_features": K, "out_features": N, "vector_lens": [vo, v], "num_centroids": [ko, k],
            "num_res_centroids": [-1, kr], "group_num": G, "group_size": (K - (n_out if vo > 1 else 0)) // G,
            "outlier_size": n_out, "indices_as_float": False, "enable_norm": norm, "enable_perm": perm,
            "is_indice_packed": True, "bias": bias}


def random_layer(conf: dict, seed: int = 0, dtype=torch.float32):
    """A VQuantLinear of ``conf`` with random codebooks/indices/perm/scales, indices packed by their pack_index."""
    vqlinear, _, pack, _ = vptq_modules()
    g = torch.Generator().manual_seed(seed)
    lin = vqlinear.VQuantLinear(**conf, enable_proxy_error=False, dtype=dtype)
    N, K, G, gs = conf["out_features"], conf["in_features"], conf["group_num"], conf["group_size"]
    (vo, v), (ko, k), kr = conf["vector_lens"], conf["num_centroids"], conf["num_res_centroids"][1]
    R = math.ceil(N / v)
    with torch.no_grad():
        lin.centroids.weight.data = _fp16_values((G, k * v), g).to(dtype)
        main = torch.randint(0, k, (G, R, gs), generator=g).to(torch.uint16)
        res = torch.randint(0, kr, (G, R, gs), generator=g).to(torch.uint16) if kr > 0 else None
        if res is not None:
            lin.res_centroids.weight.data = _fp16_values((G, kr * v), g, 0.1).to(dtype)
        lin.indices.data = pack.pack_index(indice=main, index_bits=int(math.log2(k)), res_indice=res,
                                           res_bits=int(math.log2(kr)) if res is not None else 0,
                                           index_dtype=torch.uint16)
        if lin.enable_outlier:
            lin.outlier_centroids.weight.data = _fp16_values((1, ko * vo), g, 2.0).to(dtype)
            oi = torch.randint(0, ko, (1, math.ceil(N / vo), conf["outlier_size"]), generator=g)
            lin.outlier_indices.data = oi.to(torch.uint16).view(torch.int16)
        if conf["enable_perm"]:
            lin.perm.data = torch.randperm(K, generator=g).to(torch.uint16).view(torch.int16)
        if conf["enable_norm"]:
            lin.weight_scale.data = _fp16_values((K,), g, 0.2, 1.0).to(dtype)
            lin.weight_bias.data = _fp16_values((K,), g, 0.01).to(dtype)
        if lin.bias is not None:
            lin.bias.data = _fp16_values((N,), g).to(dtype)
    return lin.eval()


def their_weight(lin) -> torch.Tensor:
    """W [N, K] by vptq.ops.dequant, with the arguments VQuantLinear.forward's torch path gives it."""
    _, ops, _, _ = vptq_modules()
    G, k, v = lin.num_codebooks, lin.num_centroids, lin.vector_len
    with torch.no_grad():
        return _dequant(ops, lin, G, k, v)


def _dequant(ops, lin, G, k, v):
    return ops.dequant(
        indices=lin.indices, centroids=lin.centroids.weight.view(G, k, v),
        outlier_indices=lin.outlier_indices,
        outlier_centroids=None if not lin.enable_outlier else
        lin.outlier_centroids.weight.view(1, lin.num_outlier_centroids, lin.outlier_vector_len),
        res_indices=lin.res_indices,
        res_centroids=None if not lin.enable_residual else lin.res_centroids.weight.view(G, lin.num_res_centroids, v),
        perm=getattr(lin, "perm", None), weight_scale=lin.weight_scale, weight_bias=lin.weight_bias,
        is_indice_packed=True, enable_outlier=lin.enable_outlier, enable_residual=lin.enable_residual,
        enable_perm=lin.enable_perm, enable_norm=lin.enable_norm, num_centroids=k,
        num_outlier_centroids=lin.num_outlier_centroids, num_res_centroids=lin.num_res_centroids,
        padding=lin.padding, outlier_padding=lin.outlier_padding, num_codebooks=G, group_size=lin.group_size,
        outlier_size=lin.outlier_size, vector_len=v, outlier_vector_len=lin.outlier_vector_len)


def layer_tensors(lin, prefix: str = "") -> dict[str, torch.Tensor]:
    return {prefix + k: t.detach().contiguous() for k, t in lin.state_dict().items()}


def quantize_model(model, confs: dict[str, dict], seed: int = 0):
    """Replace the named Linears of ``model`` by random VQuantLinear layers (in place); returns the model."""
    for i, (name, conf) in enumerate(confs.items()):
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, random_layer(conf, seed + i))
    return model.eval()


def save_vptq_folder(model, path: Path, quantization_config: dict, tokenizer=None) -> Path:
    """A checkpoint folder as VPTQ publishes them: HF config.json + quantization_config, model.safetensors."""
    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    cfg = model.config.to_dict()
    cfg["quantization_config"] = quantization_config
    (path / "config.json").write_text(json.dumps(cfg, indent=2))
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    if tokenizer is not None:
        tokenizer.save_pretrained(str(path))
    return path


def load_vptq_folder(path: Path):
    """A folder in VPTQ's layout loaded the way vptq.AutoModelForCausalLM does (make_quant_linear on the
    model from config.json, then the state dict), on CPU in float32; the config also parses as VptqConfig."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.utils.quantization_config import VptqConfig

    vqlinear, _, _, model_base = vptq_modules()
    cfg = json.loads((path / "config.json").read_text())
    qc = cfg.pop("quantization_config")
    VptqConfig(**{k: v for k, v in qc.items() if k != "quant_method"})     # transformers' own checks
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**cfg), dtype=torch.float32)
    model_base.make_quant_linear(model, qc.get("config_for_layers", {}), qc.get("shared_layer_config", {}),
                                 target_layer=vqlinear.VQuantLinear)
    state = load_file(str(path / "model.safetensors"))
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected, unexpected
    assert set(missing) <= {"lm_head.weight"}, missing
    if model.config.tie_word_embeddings:
        model.tie_weights()
    return model.eval()

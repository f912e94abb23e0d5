"""`vq2trt import` / `vq2trt export-vptq`: whole checkpoint folders in microsoft/VPTQ's layout.

Both directions convert every layer first and write the output folder only at the end, under a
temporary name renamed into place (io._atomic_dir): a layer that cannot be converted leaves no
folder behind.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from pathlib import Path

import numpy as np

from vq2trt.config import PER_MODULE_FIELDS, QuantConfig
from vq2trt.format import FORMAT_VERSION, FormatError, VQWeight
from vq2trt.interop.vptq import InteropError, cuda_kernel_notes, vptq_to_vqweight, vqweight_to_vptq
from vq2trt.io import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    _atomic_dir,
    quantization_config,
    read_checkpoint_config,
    read_tensors,
    save_tensors,
)

VPTQ_METHOD = "vptq"
INDEX_FILE = "model.safetensors.index.json"
# Files besides the weights and config.json that travel with a checkpoint in either direction.
COPIED = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model", "vocab.json",
          "merges.txt", "added_tokens.json", "generation_config.json", "chat_template.jinja", "chat_template.json")
HEAD = "lm_head"


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise InteropError(f"{path.parent}: {path.name} is missing")
    try:
        d = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise InteropError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(d, dict):
        raise InteropError(f"{path}: expected a JSON object")
    return d


def _weight_files(src: Path) -> list[Path]:
    index = src / INDEX_FILE
    if index.is_file():
        wmap = _read_json(index).get("weight_map")
        if not isinstance(wmap, dict):
            raise InteropError(f"{index}: no 'weight_map' object")
        files = [src / f for f in sorted(set(wmap.values()))]
    else:
        files = sorted(src.glob("*.safetensors"))
    if not files:
        raise InteropError(f"{src}: no *.safetensors weights (pytorch_model.bin is not read)")
    for f in files:
        if not f.is_file():
            raise InteropError(f"{src}: weight file {f.name} is missing")
    return files


def _read_foreign_tensors(src: Path) -> dict[str, np.ndarray]:
    """Every tensor of their safetensors files as numpy; bfloat16 widened to float32 (exact)."""
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    out: dict[str, np.ndarray] = {}
    for f in _weight_files(src):
        try:
            part = load_file(str(f))
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise InteropError(f"{f} is corrupt or truncated: {e}") from e
        for name, t in part.items():
            if name in out:
                raise InteropError(f"{f}: tensor {name} is stored twice")
            out[name] = (t.float() if t.dtype == torch.bfloat16 else t).numpy()
    return out


def _meta_model(hf: dict, where: Path):
    """The model of an HF config on the meta device: its Linear shapes and parameter names."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        cfg = AutoConfig.for_model(**hf)
    except (ValueError, KeyError, TypeError) as e:
        raise InteropError(f"{where}: not a model configuration transformers knows ({e})") from e
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(cfg)


def _linear_shape(model, name: str, where: str) -> tuple[int, int]:
    from torch import nn

    try:
        lin = model.get_submodule(name)
    except AttributeError:
        raise InteropError(f"{where}: quantized layer '{name}' does not exist in the model") from None
    if not isinstance(lin, nn.Linear):
        raise InteropError(f"{where}: quantized layer '{name}' is a {type(lin).__name__}, not a Linear")
    return lin.out_features, lin.in_features


def _copy_side_files(src: Path, dst: Path) -> None:
    for name in COPIED:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)


# --- import ---------------------------------------------------------------------------------------
def _format_of(w: VQWeight) -> dict:
    """PER_MODULE_FIELDS describing ``w`` (the config records them; the tensors stay authoritative)."""
    n_out = w.num_outlier_cols
    ko, vo = w.outlier_codebook.shape if n_out else (256, 4)
    return {"vector_len": w.vector_len, "num_centroids": w.num_centroids,
            "num_res_centroids": 0 if w.res_codebook is None else int(w.res_codebook.shape[1]),
            "outlier_frac": n_out / w.in_features, "outlier_vector_len": int(vo), "outlier_num_centroids": int(ko),
            "num_groups": w.num_groups, "enable_norm": w.col_scale is not None,
            "enable_perm": not np.array_equal(w.perm, np.arange(w.in_features))}


def _quant_config(layers: dict[str, VQWeight]) -> QuantConfig:
    """Base format = the most common layer format; every other layer gets its own ``modules`` entry."""
    formats = {n: _format_of(w) for n, w in layers.items()}

    def key(f, n):   # outlier_frac only matters through the outlier column count it gives
        return tuple((k, v) for k, v in f.items() if k != "outlier_frac") + (layers[n].num_outlier_cols > 0,)

    common = Counter(key(f, n) for n, f in formats.items() if n != HEAD).most_common(1)
    base_name = next((n for n, f in formats.items() if common and n != HEAD and key(f, n) == common[0][0]),
                     next(iter(formats)))
    base = QuantConfig(**formats[base_name])
    modules = {}
    for n, f in formats.items():
        eff = base.for_module(n)
        same = all(getattr(eff, k) == v for k, v in f.items() if k != "outlier_frac") and \
            eff.num_outlier_cols(layers[n].in_features) == layers[n].num_outlier_cols
        if n == HEAD or not same:
            modules[n] = {k: v for k, v in f.items() if k in PER_MODULE_FIELDS}
    skip = [s for s in base.skip_modules if not (HEAD in layers and s in HEAD)]
    return QuantConfig(**formats[base_name], modules=modules, skip_modules=skip)


def import_vptq(src: str | os.PathLike, out: str | os.PathLike, *, overwrite: bool = False,
                allow_rounding: bool = False) -> tuple[Path, dict[str, VQWeight]]:
    """Convert a VPTQ checkpoint folder into a vq2trt format-v1 checkpoint; returns (path, layers)."""
    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise InteropError(f"VPTQ checkpoint folder {src} does not exist")
    cfg = _read_json(src / CONFIG_FILE)
    qc = cfg.get("quantization_config")
    if not isinstance(qc, dict) or qc.get("quant_method") != VPTQ_METHOD:
        got = qc.get("quant_method") if isinstance(qc, dict) else None
        raise InteropError(f"{src / CONFIG_FILE}: quantization_config.quant_method is {got!r}, expected "
                           f"'{VPTQ_METHOD}' (a microsoft/VPTQ checkpoint)")
    per_layer, shared = qc.get("config_for_layers") or {}, qc.get("shared_layer_config") or {}
    if not isinstance(per_layer, dict) or not isinstance(shared, dict):
        raise InteropError(f"{src / CONFIG_FILE}: config_for_layers and shared_layer_config must be objects")
    tensors = _read_foreign_tensors(src)
    hf = {k: v for k, v in cfg.items() if k != "quantization_config"}
    model = _meta_model(hf, src / CONFIG_FILE)

    names = sorted(k[: -len(".centroids.weight")] for k in tensors if k.endswith(".centroids.weight"))
    for n in per_layer:
        if n not in names:
            raise InteropError(f"{src}: config_for_layers names layer '{n}' but tensor '{n}.centroids.weight' "
                               f"is missing")
    if not names:
        raise InteropError(f"{src}: no quantized layer (no '*.centroids.weight' tensor) in the weights")
    layers: dict[str, VQWeight] = {}
    for n in names:
        # vptq's own loader (layers/model_base.py make_quant_linear): full name first, then the last name part
        conf = per_layer.get(n) or shared.get(n.rsplit(".", 1)[-1])
        if not isinstance(conf, dict):
            raise InteropError(f"{src / CONFIG_FILE}: layer '{n}' has tensors but no entry in config_for_layers "
                               f"or shared_layer_config")
        N, K = _linear_shape(model, n, str(src))
        own = {k[len(n) + 1:]: tensors.pop(k) for k in list(tensors) if k.startswith(n + ".")}
        layers[n] = vptq_to_vqweight(conf, own, N, K, where=n, allow_rounding=allow_rounding)

    if HEAD in layers:
        hf["tie_word_embeddings"] = False     # docs/format.md §7: a quantized head is its own tensor
    tied = bool(hf.get("tie_word_embeddings", getattr(model.config, "tie_word_embeddings", False)))
    if tied:
        tensors.pop("lm_head.weight", None)
    prefixes = tuple(n + "." for n in layers)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.startswith(prefixes)}
    if tied:
        expected.pop("lm_head.weight", None)
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise InteropError(f"{src}: float tensors do not match the model: missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}")
    for k, shape in expected.items():
        if tuple(tensors[k].shape) != shape:
            raise InteropError(f"{src}: tensor {k} has shape {list(tensors[k].shape)}, the model expects {list(shape)}")
    floats = {k: (v.astype(np.float32) if np.issubdtype(v.dtype, np.floating) else v) for k, v in tensors.items()}

    config = _quant_config(layers)

    with _atomic_dir(out, overwrite) as tmp:
        hf["quantization_config"] = quantization_config(config)
        hf["vq2trt_imported_from"] = {"format": "microsoft/VPTQ", "path": str(src)}
        (tmp / CONFIG_FILE).write_text(json.dumps(hf, indent=2, sort_keys=True))
        stored = dict(floats)
        for n, w in layers.items():
            stored.update({f"{n}.{k}": v for k, v in w.tensors().items()})
        save_tensors(stored, tmp / WEIGHTS_FILE, {"format": "pt", "vq2trt_format_version": str(FORMAT_VERSION)})
        _copy_side_files(src, tmp)
    return out, layers


# --- export ---------------------------------------------------------------------------------------
def export_vptq(ckpt: str | os.PathLike, out: str | os.PathLike, *, overwrite: bool = False) \
        -> tuple[Path, list[str]]:
    """Write a vq2trt checkpoint in VPTQ's layout; returns (path, notes about VPTQ's CUDA kernels)."""
    from torch import nn

    ckpt, out = Path(ckpt), Path(out)
    if not ckpt.is_dir():
        raise InteropError(f"checkpoint folder {ckpt} does not exist")
    cfg, _ = read_checkpoint_config(ckpt)
    tensors = read_tensors(ckpt)
    hf = {k: v for k, v in cfg.items() if k not in ("quantization_config", "vq2trt_imported_from")}
    model = _meta_model(hf, ckpt / CONFIG_FILE)
    names = sorted(k[: -len(".vq_dims")] for k in tensors if k.endswith(".vq_dims"))
    if not names:
        raise InteropError(f"{ckpt / WEIGHTS_FILE}: no quantized layer (no '*.vq_dims' tensor)")
    per_layer, stored, notes = {}, {}, []
    for n in names:
        own = {k[len(n) + 1:]: tensors.pop(k) for k in list(tensors) if k.startswith(n + ".")}
        try:
            w = VQWeight.from_tensors(own, where=f"{ckpt / WEIGHTS_FILE}:{n}")
        except FormatError as e:
            raise InteropError(str(e)) from e
        if (w.out_features, w.in_features) != _linear_shape(model, n, str(ckpt)):
            raise InteropError(f"{ckpt}: layer '{n}' stores [{w.out_features}, {w.in_features}], the model's "
                               f"Linear is {list(_linear_shape(model, n, str(ckpt)))}")
        per_layer[n], t = vqweight_to_vptq(w, where=n)
        stored.update({f"{n}.{k}": v for k, v in t.items()})
        notes += cuda_kernel_notes(w, n)
    stored.update(tensors)
    # transformers (integrations/vptq.py) replaces every Linear not listed here and needs a config for each
    float_linears = sorted(n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n not in per_layer)
    from safetensors.numpy import save_file

    with _atomic_dir(out, overwrite) as tmp:
        hf["quantization_config"] = {"quant_method": VPTQ_METHOD, "config_for_layers": per_layer,
                                     "shared_layer_config": {}, "modules_to_not_convert": float_linears}
        (tmp / CONFIG_FILE).write_text(json.dumps(hf, indent=2, sort_keys=True))
        save_file(stored, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        _copy_side_files(ckpt, tmp)
    return out, notes

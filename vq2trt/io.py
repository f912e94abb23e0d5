"""Checkpoint I/O: model.safetensors + HF-style config.json with a flat quantization_config.

A checkpoint folder is written under a temporary name and renamed into place,
so it is either complete or absent. Everything read back is validated
against docs/format.md before use: a damaged file gives CheckpointError
naming the file and tensor, never a model with garbage weights.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import struct
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vq2trt.config import ConfigError, QuantConfig
from vq2trt.format import FORMAT_VERSION, FormatError, VQWeight
from vq2trt.nn import VQLinear, replace_linear

QUANT_METHOD = "vq2trt"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or written; the message names the file."""


def quantization_config(config: QuantConfig) -> dict:
    return {"quant_method": QUANT_METHOD, "format_version": FORMAT_VERSION, **config.to_dict()}


def _vq_modules(model: nn.Module) -> dict[str, VQLinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, VQLinear)}


def checkpoint_tensors(model: nn.Module, include=None) -> dict[str, np.ndarray]:
    """Every tensor a checkpoint stores: VQ layers in their stored form, the rest as the model holds them.

    include(name) -> bool: only the tensors so named (a streamed save writes one decoder layer at a
    time; the others are on the meta device and are not touched)."""
    keep = include or (lambda _name: True)
    vq = {n: m for n, m in _vq_modules(model).items() if keep(n + ".")}
    out: dict[str, np.ndarray] = {}
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    for name, t in model.state_dict().items():
        if not keep(name) or any(name.startswith(m + ".") for m in vq):
            continue
        if tied and name == "lm_head.weight":
            continue
        out[name] = t.detach().cpu().contiguous().numpy() if t.dtype != torch.bfloat16 else \
            t.detach().cpu().float().numpy()
    for name, m in vq.items():
        out.update({f"{name}.{k}": v for k, v in m.to_vqweight().tensors().items()})
    return out


@contextlib.contextmanager
def _atomic_dir(out_dir: Path, overwrite: bool):
    """A temporary sibling folder that replaces ``out_dir`` only if the body finishes."""
    if out_dir.exists() and not overwrite:
        raise CheckpointError(f"output folder {out_dir} already exists; choose another or pass --overwrite")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's 0700 would hide the output from other users
    try:
        yield tmp
        _readable(tmp, umask)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _readable(root: Path, umask: int) -> None:
    """Give every file the mode a plain open() would have: writers that go through mkstemp
    (safetensors >= 0.7 among them) leave 0600, which hides a checkpoint from a container or
    service running as another user."""
    for p in root.rglob("*"):
        if p.is_file() and not p.is_symlink():
            exe = p.stat().st_mode & 0o100
            os.chmod(p, (0o777 if exe else 0o666) & ~umask)


def save_tensors(tensors: dict[str, np.ndarray], path: Path, metadata: dict[str, str]) -> None:
    """safetensors' save_file with a reproducible header: safetensors 0.8 writes the metadata from a
    Rust HashMap, so its key order (and the file's bytes) changed from run to run. The header is
    rewritten in place with the metadata sorted; same length, so no data offset moves."""
    from safetensors.numpy import save_file

    save_file(tensors, str(path), metadata=metadata)
    with open(path, "r+b") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        meta = header.pop("__metadata__", None)
        canon = ({"__metadata__": dict(sorted(meta.items()))} if meta else {}) | header
        out = json.dumps(canon, separators=(",", ":")).encode()
        if len(out) > n:                      # cannot happen for a reordering; keep the file as written
            return
        f.seek(8)
        f.write(out + b" " * (n - len(out)))


WEIGHTS_METADATA = {"format": "pt", "vq2trt_format_version": str(FORMAT_VERSION)}


def save_quantized(model: nn.Module, config: QuantConfig, out_dir: str | os.PathLike, *, tokenizer=None,
                   overwrite: bool = False, write_tensors=None) -> Path:
    """Write ``model`` (VQLinear layers in place) as a checkpoint folder; returns its path.

    write_tensors(path): writes model.safetensors instead of taking every tensor from ``model`` (a
    streamed model's layers are on the meta device: vq2trt.streaming.save_streamed)."""
    out_dir = Path(out_dir)
    if write_tensors is None and not _vq_modules(model):
        raise CheckpointError("the model has no VQLinear layers: quantize it with method 'vptq' first")
    with _atomic_dir(out_dir, overwrite) as tmp:
        cfg = model.config.to_dict()
        cfg["quantization_config"] = quantization_config(config)
        (tmp / CONFIG_FILE).write_text(json.dumps(cfg, indent=2, sort_keys=True))
        if write_tensors is None:
            save_tensors(checkpoint_tensors(model), tmp / WEIGHTS_FILE, WEIGHTS_METADATA)
        else:
            write_tensors(tmp / WEIGHTS_FILE)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
    return out_dir


def save_simulated(model: nn.Module, config: QuantConfig, out_dir: str | os.PathLike, *, tokenizer=None,
                   overwrite: bool = False) -> Path:
    """Scalar baselines (gptq/rtn) hold fake-quantized float weights: saved as a plain HF folder."""
    out_dir = Path(out_dir)
    with _atomic_dir(out_dir, overwrite) as tmp:
        # Written by hand: transformers refuses save_pretrained() on models it loaded from GGUF.
        from safetensors.torch import save_file as save_torch

        cfg = model.config.to_dict()
        cfg["vq2trt_simulated_quantization"] = config.to_dict()
        (tmp / CONFIG_FILE).write_text(json.dumps(cfg, indent=2, sort_keys=True))
        tied = bool(getattr(model.config, "tie_word_embeddings", False))
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()
                 if not (tied and k == "lm_head.weight")}
        save_torch(state, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
    return out_dir


def is_quantized_checkpoint(path: str | os.PathLike) -> bool:
    p = Path(path) / CONFIG_FILE
    if not p.is_file():
        return False
    try:
        return json.loads(p.read_text()).get("quantization_config", {}).get("quant_method") == QUANT_METHOD
    except (OSError, json.JSONDecodeError, AttributeError):
        return False


def read_checkpoint_config(path: Path) -> tuple[dict, QuantConfig]:
    cfg_path = path / CONFIG_FILE
    if not cfg_path.is_file():
        raise CheckpointError(f"{path} is not a vq2trt checkpoint: {CONFIG_FILE} is missing")
    try:
        cfg = json.loads(cfg_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{cfg_path} is not valid JSON: {e}") from e
    qc = cfg.get("quantization_config") if isinstance(cfg, dict) else None
    if not isinstance(qc, dict) or qc.get("quant_method") != QUANT_METHOD:
        raise CheckpointError(f"{cfg_path} has no quantization_config with quant_method '{QUANT_METHOD}'")
    if qc.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{cfg_path}: format_version {qc.get('format_version')!r} is not supported "
                              f"(this vq2trt reads version {FORMAT_VERSION})")
    try:
        return cfg, QuantConfig.from_dict(qc)
    except ConfigError as e:
        raise CheckpointError(f"{cfg_path}: {e}") from e


def read_tensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    f = path / WEIGHTS_FILE
    if not f.is_file():
        raise CheckpointError(f"{path}: {WEIGHTS_FILE} is missing")
    try:
        return load_file(str(f))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{f} is corrupt or truncated: {e}") from e


def load_quantized(path: str | os.PathLike, *, device: str | torch.device = "cpu",
                   dtype: torch.dtype = torch.float32, with_tokenizer: bool = False):
    """Model whose quantized Linears are VQLinear (reference dequant); optionally its tokenizer too."""
    from transformers import AutoConfig, AutoModelForCausalLM

    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint folder {path} does not exist")
    cfg, qconfig = read_checkpoint_config(path)
    tensors = read_tensors(path)
    hf = {k: v for k, v in cfg.items() if k != "quantization_config"}
    try:
        hf_config = AutoConfig.for_model(**hf)
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path / CONFIG_FILE}: not a model configuration transformers knows ({e})") from e
    torch.manual_seed(0)  # the random init is overwritten, but keep construction reproducible
    model = AutoModelForCausalLM.from_config(hf_config, dtype=dtype)

    vq_names = sorted(k[: -len(".vq_dims")] for k in tensors if k.endswith(".vq_dims"))
    if not vq_names:
        raise CheckpointError(f"{path / WEIGHTS_FILE}: no quantized layer (no '*.vq_dims' tensor) in the file")
    for name in vq_names:
        try:
            lin = model.get_submodule(name)
        except AttributeError:
            raise CheckpointError(f"{path / WEIGHTS_FILE}: quantized layer '{name}' does not exist in the model") \
                from None
        own = {k[len(name) + 1:]: tensors.pop(k) for k in list(tensors) if k.startswith(name + ".")}
        try:
            w = VQWeight.from_tensors(own, where=f"{path / WEIGHTS_FILE}:{name}")
        except FormatError as e:
            raise CheckpointError(str(e)) from e
        if not isinstance(lin, nn.Linear) or (w.out_features, w.in_features) != (lin.out_features, lin.in_features):
            raise CheckpointError(f"{path / WEIGHTS_FILE}:{name}: stored shape [{w.out_features}, {w.in_features}] "
                                  f"does not match the model's layer {lin}")
        replace_linear(model, name, VQLinear(w, dtype=dtype))

    sd = model.state_dict()
    vq_prefixes = tuple(n + "." for n in vq_names)
    expected = {k for k in sd if not k.startswith(vq_prefixes)}
    tied = bool(getattr(hf_config, "tie_word_embeddings", False))
    if tied:
        expected.discard("lm_head.weight")
    missing, unexpected = expected - set(tensors), set(tensors) - expected
    if missing or unexpected:
        raise CheckpointError(f"{path / WEIGHTS_FILE}: tensors do not match the model: missing {sorted(missing)[:5]}, "
                              f"unexpected {sorted(unexpected)[:5]}")
    state = {}
    for k, v in tensors.items():
        if tuple(v.shape) != tuple(sd[k].shape):
            raise CheckpointError(f"{path / WEIGHTS_FILE}:{k}: shape {list(v.shape)}, expected {list(sd[k].shape)}")
        state[k] = torch.from_numpy(v.copy()).to(sd[k].dtype)
    model.load_state_dict(state, strict=False)
    if tied:
        model.tie_weights()
    model.to(device).eval()
    model.vq2trt_config = qconfig
    if not with_tokenizer:
        return model
    return model, _load_tokenizer(path)


def _load_tokenizer(path: Path):
    try:
        from transformers import AutoTokenizer
        return AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError):
        return None

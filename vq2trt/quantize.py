"""quantize(model, config, calib): decoder layer by decoder layer, resumable.

For each decoder layer: run the (already quantized) prefix's outputs through
the float layer with hooks collecting one Hessian per distinct Linear input,
quantize every Linear of the layer, optionally fine-tune the layer's
codebooks and norms against the float layer's outputs, then run the
quantized layer to get the next layer's inputs. Each finished layer is
written to ``work_dir`` at once, so a killed run continues where it stopped
and, being deterministic, ends with the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from vq2trt.algo import HessianAccumulator, gptq_quantize, rtn_quantize, scalar_bits_per_weight, vptq_quantize
from vq2trt.algo.finetune import finetune_layer
from vq2trt.config import QuantConfig
from vq2trt.format import FORMAT_VERSION, FormatError, VQWeight
from vq2trt.guided import output_gradient_weights
from vq2trt.head import HEAD, quantize_head, quantizes_head, untie_head
from vq2trt.layer_inputs import (  # noqa: F401 (tests reach _capture_* here)
    _calibration_inputs,
    _capture_inputs,
    _capture_layer0_inputs,
    _with_kwargs,
)
from vq2trt.nn import VQLinear, replace_linear

STATE_FILE = "state.json"


class QuantizeError(RuntimeError):
    """A quantization run that cannot go on; the message says why and what to do."""


@dataclass
class LayerReport:
    name: str
    shape: tuple[int, int]
    bits_per_weight: float
    proxy_err: float
    seconds: float


@dataclass
class QuantizeResult:
    config: QuantConfig
    weights: dict[str, VQWeight] = field(default_factory=dict)     # vptq: stored form per Linear
    head: VQWeight | None = None                                    # a quantized lm_head (vq2trt.head)
    reports: list[LayerReport] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def bits_per_weight(self) -> float:
        """All-in bits per weight over the decoder's quantized Linears (indices, codebooks, scales,
        perm); a quantized head is counted apart (head_bits_per_weight), as papers report it."""
        if self.config.method != "vptq":
            return scalar_bits_per_weight(self.config.bits, self.config.group_size)
        bits = sum(w.stored_bits() for w in self.weights.values())
        n = sum(w.out_features * w.in_features for w in self.weights.values())
        return bits / max(n, 1)

    @property
    def head_bits_per_weight(self) -> float | None:
        return None if self.head is None else self.head.bits_per_weight()


def _check_family(model: nn.Module) -> None:
    from vq2trt.families import UnsupportedModelError, check_config

    try:
        check_config(model.config)
    except UnsupportedModelError as e:
        raise QuantizeError(f"{type(model).__name__}: {e}") from e


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
        raise QuantizeError(f"{type(model).__name__} has no model.layers: only LLaMA-family decoders are supported")
    return layers


def quantizable_linears(layer: nn.Module, prefix: str, skip: list[str]) -> dict[str, nn.Linear]:
    return {f"{prefix}.{n}": m for n, m in layer.named_modules()
            if isinstance(m, nn.Linear) and not any(s in f"{prefix}.{n}" for s in skip)}


def _run_layer(layer, hidden, kwargs):
    out = layer(hidden, **kwargs)
    return out[0] if isinstance(out, tuple) else out


def _fingerprint(model, config: QuantConfig, calib: torch.Tensor) -> dict:
    h = hashlib.sha256()
    h.update(calib.cpu().numpy().astype(np.int64).tobytes())
    # A few weights identify the model without hashing all of it.
    for name, p in list(model.named_parameters())[:4]:
        h.update(name.encode())
        h.update(p.detach().float().cpu().numpy().tobytes()[:4096])
    return {"format_version": FORMAT_VERSION, "config": config.to_dict(), "inputs_sha256": h.hexdigest()}


class _WorkDir:
    """Per-layer results of an unfinished run (safetensors written atomically)."""

    def __init__(self, path: Path | None, fingerprint: dict):
        self.path = path
        if path is None:
            return
        path.mkdir(parents=True, exist_ok=True)
        state = path / STATE_FILE
        if state.exists():
            try:
                old = json.loads(state.read_text())
            except (OSError, json.JSONDecodeError) as e:
                raise QuantizeError(f"resume state {state} is unreadable ({e}); delete {path} to start over") from e
            if old != fingerprint:
                raise QuantizeError(f"{path} holds a run with a different model, calibration data or config; "
                                    f"delete it or choose another output folder")
        else:
            _atomic_write_text(state, json.dumps(fingerprint, indent=2, sort_keys=True))

    def file(self, i: int | str) -> Path:
        return self.path / (f"layer_{i:03d}.safetensors" if isinstance(i, int) else f"{i}.safetensors")

    def done(self, i: int | str) -> bool:
        return self.path is not None and self.file(i).exists()

    def load(self, i: int | str) -> tuple[dict[str, np.ndarray], dict] | None:
        if self.path is None or not self.file(i).exists():
            return None
        from safetensors import safe_open
        try:
            tensors = load_file(str(self.file(i)))
            with safe_open(str(self.file(i)), framework="numpy") as f:
                meta = json.loads(f.metadata()["reports"])
        except Exception as e:  # a torn file cannot happen (atomic rename) but a disk error can
            raise QuantizeError(f"cannot read finished layer {self.file(i)} ({e}); delete it to redo that layer") from e
        return tensors, meta

    def save(self, i: int | str, tensors: dict[str, np.ndarray], reports: list[LayerReport]) -> None:
        if self.path is None:
            return
        tmp = self.file(i).with_suffix(".tmp")
        meta = {"reports": json.dumps([r.__dict__ for r in reports])}
        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(tmp), metadata=meta)
        os.replace(tmp, self.file(i))


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _layer_seed(config: QuantConfig, layer_idx: int, j: int) -> int:
    return (config.seed * 1_000_003 + layer_idx * 97 + j) % (2**31 - 1)


def _collect_hessians(layer, linears, batches, device, token_weights=None):
    """One HessianAccumulator per distinct Linear input (q/k/v share one, gate/up share one).

    token_weights: {name: float32 [num_samples, seqlen]} output-aware weights s_t
    (vq2trt.guided) for the calibration windows, in the order the batches hold
    them. Then every Linear gets its own accumulator weighted by its own s_t, as
    GuidedQuant does: tr(ΔW H_g ΔWᵀ) is q's end-loss increase only with q's
    output gradient; summing q/k/v's s_t into one shared H would weight q's
    error by how much v's output matters.
    """
    acc: dict[str, HessianAccumulator] = {}
    owner: dict[str, str] = {}
    # Same tensor object in = same Hessian. The first batch's inputs are kept alive in
    # seen_inputs so a freed input's address cannot be reused and mistaken for a shared one.
    seen_inputs: dict[tuple, tuple[str, torch.Tensor]] = {}
    first_batch = [True]
    rows = [0]  # first calibration window of the running batch

    def hook(name):
        def f(_m, args):
            x = args[0]  # [B, T, K]
            if first_batch[0]:
                if token_weights is None:
                    key = (x.data_ptr(), tuple(x.shape), x.dtype)
                    owner[name] = seen_inputs.setdefault(key, (name, x))[0]
                else:
                    owner[name] = name
                if owner[name] == name:
                    acc[name] = HessianAccumulator(x.shape[-1], device=device)
            if owner[name] == name:
                w = None if token_weights is None else token_weights[name][rows[0]:rows[0] + x.shape[0]]  # [B, T]
                acc[name].add_batch(x.detach(), w)
        return f

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in linears.items()]
    targets = []
    try:
        with torch.no_grad():
            for hidden, kw in batches:
                targets.append(_run_layer(layer, hidden, kw))
                first_batch[0] = False
                seen_inputs.clear()
                rows[0] += hidden.shape[0]
    finally:
        for h in handles:
            h.remove()
    return {n: acc[owner[n]] for n in linears}, targets


def quantize(model: nn.Module, config: QuantConfig, calib: torch.Tensor, *, work_dir: str | os.PathLike | None = None,
             device: str | torch.device | None = None, batch_size: int = 8, progress: bool = True) -> QuantizeResult:
    """Quantize every Linear of ``model``'s decoder layers in place.

    calib: int64 token ids [num_samples, seqlen]. With ``work_dir``, finished
    layers are saved there and reused by a later call with the same inputs.
    vptq replaces Linears with VQLinear; gptq/rtn write fake-quantized weights.
    """
    config.validate()
    if calib.ndim != 2 or calib.shape[0] < 1:
        raise QuantizeError(f"calibration ids must be [num_samples, seqlen], got {tuple(calib.shape)}")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    layers = decoder_layers(model)
    _check_family(model)
    _check_module_overrides(layers, config)
    work = _WorkDir(Path(work_dir) if work_dir else None, _fingerprint(model, config, calib))
    result = QuantizeResult(config=config)
    t_start = time.perf_counter()

    model.eval()
    # Output-aware weights come from the float model, so before any layer is replaced; only
    # the layers a resumed run still has to quantize need them.
    token_weights = None
    if config.hessian == "output-aware":
        todo = [n for i, layer in enumerate(layers) if not work.done(i)
                for n in quantizable_linears(layer, f"model.layers.{i}", config.skip_modules)]
        if todo:
            token_weights = output_gradient_weights(model, calib, todo, batch_size=batch_size, device=device,
                                                    progress=progress)
    batches, layer_kwargs = _calibration_inputs(model, layers, calib, batch_size, device)

    bar = tqdm(range(len(layers)), desc=f"quantize ({config.method})", unit="layer", disable=not progress)
    for i in bar:
        layer = layers[i]
        home = next(layer.parameters()).device
        layer.to(device)
        batches = _with_kwargs(batches, layer_kwargs[i])
        linears = quantizable_linears(layer, f"model.layers.{i}", config.skip_modules)
        done = work.load(i)
        if done is not None:
            reports = _apply_saved(model, layer, linears, done, config, result, i)
        else:
            reports = _quantize_layer(model, layer, i, linears, batches, config, result, device, work,
                                      token_weights=token_weights)
        result.reports.extend(reports)
        with torch.no_grad():
            batches = [(_run_layer(layer, h, kw), kw) for h, kw in batches]
        layer.to(home)
        bar.set_postfix(bpw=f"{result.bits_per_weight:.3f}",
                        err=f"{np.mean([r.proxy_err for r in reports]) if reports else 0:.4f}")
    if config.method == "vptq" and quantizes_head(config):
        _head_stage(model, config, batches, device, work, result)
    result.seconds = time.perf_counter() - t_start
    return result


def _head_stage(model, config, batches, device, work, result) -> None:
    done = work.load(HEAD)
    if done is not None:
        untie_head(model)
        head = model.get_submodule(HEAD)
        own = {k[len(HEAD) + 1:]: v for k, v in done[0].items() if k.startswith(HEAD + ".")}
        try:
            w = VQWeight.from_tensors(own, where=HEAD)
        except FormatError as e:
            raise QuantizeError(f"saved head {work.file(HEAD)} is damaged: {e}; delete it to redo the head") from e
        replace_linear(model, HEAD, VQLinear(w, dtype=head.weight.dtype).to(head.weight.device))
        r = done[1][0]
        report = LayerReport(r["name"], tuple(r["shape"]), r["bits_per_weight"], r["proxy_err"], r["seconds"])
    else:
        w, err, secs = quantize_head(model, config, batches, device)
        report = LayerReport(HEAD, (w.out_features, w.in_features), w.bits_per_weight(), err, secs)
        work.save(HEAD, {f"{HEAD}.{k}": v for k, v in w.tensors().items()}, [report])
    result.head = w
    result.reports.append(report)


def all_quantizable_linears(layers: nn.ModuleList, skip: list[str]) -> dict[str, nn.Linear]:
    """Every Linear quantize() replaces, by full module name, in layer order."""
    out: dict[str, nn.Linear] = {}
    for i, layer in enumerate(layers):
        out.update(quantizable_linears(layer, f"model.layers.{i}", skip))
    return out


def _check_module_overrides(layers, config: QuantConfig) -> None:
    """A per-module override that names no quantized Linear is a typo: fail before any work."""
    if not config.modules:
        return
    names = all_quantizable_linears(layers, config.skip_modules)
    unknown = sorted(set(config.modules) - set(names) - ({HEAD} if quantizes_head(config) else set()))
    if unknown:
        raise QuantizeError(f"quantization config: modules {unknown[:5]} name no quantized Linear of this model; "
                            f"expected full names such as {next(iter(names), 'model.layers.0.mlp.down_proj')!r} "
                            f"(not in skip_modules {config.skip_modules})")


def _quantize_layer(model, layer, i, linears, batches, config, result, device, work,
                    token_weights=None) -> list[LayerReport]:
    hessians, targets = _collect_hessians(layer, linears, batches, device, token_weights)
    reports, saved = [], {}
    for j, (name, lin) in enumerate(linears.items()):
        t0 = time.perf_counter()
        W = lin.weight.detach().float().clone()                          # [N, K]; the layer is overwritten below
        H = hessians[name].finalize()                                    # [K, K]
        seed = _layer_seed(config, i, j)
        if config.method == "vptq":
            bias = None if lin.bias is None else lin.bias.detach().float()
            w, stats = vptq_quantize(W, H, config.for_module(name), bias=bias, seed=seed)
            replace_linear(model, name, VQLinear(w, dtype=lin.weight.dtype).to(device))
            result.weights[name] = w
            bpw, err = w.bits_per_weight(), float(stats["proxy_err"])
        else:
            if config.method == "gptq":
                W_hat, stats = gptq_quantize(W, H, config.bits, config.group_size, block_size=config.block_size,
                                             damp=config.damp)
            else:
                W_hat = rtn_quantize(W, config.bits, config.group_size)
            with torch.no_grad():
                lin.weight.copy_(W_hat.to(lin.weight.dtype))
            saved[f"{name}.weight"] = W_hat.float().cpu().numpy()
            bpw = scalar_bits_per_weight(config.bits, config.group_size)
            err = _proxy_err(W, W_hat.float(), H)
        reports.append(LayerReport(name, tuple(W.shape), bpw, err, time.perf_counter() - t0))
    del hessians
    if config.method == "vptq" and config.finetune_steps > 0:
        _finetune(model, layer, i, linears, batches, targets, config, result)
    for name in linears:
        if name in result.weights:
            saved.update({f"{name}.{k}": v for k, v in result.weights[name].tensors().items()})
    if config.method == "vptq" and config.finetune_steps > 0:
        saved.update({f"model.layers.{i}.{n}": p.detach().float().cpu().numpy()
                      for n, p in layer.named_parameters() if _is_norm_param(n)})
    work.save(i, saved, reports)
    return reports


def _is_norm_param(name: str) -> bool:
    return name.endswith("norm.weight")


def _finetune(model, layer, i, linears, batches, targets, config, result) -> None:
    vq = [layer.get_submodule(n.removeprefix(f"model.layers.{i}.")) for n in linears]
    params = [p for m in vq for p in m.set_trainable(True)]
    norms = [p for n, p in layer.named_parameters() if _is_norm_param(n)]
    for p in norms:
        p.requires_grad_(True)
    finetune_layer(lambda h, kw: _run_layer(layer, h, kw), batches, targets, params + norms,
                   steps=config.finetune_steps, lr=config.finetune_lr, seed=config.seed + i)
    for p in norms:
        p.requires_grad_(False)
    for name, m in zip(linears, vq):
        m.set_trainable(False)
        result.weights[name] = m.to_vqweight()
        # Fine-tuned fp32 codebooks are rounded on save; the model must run what is saved.
        replace_linear(model, name, VQLinear(result.weights[name], dtype=m._dtype).to(m.codebook.device))


def _apply_saved(model, layer, linears, done, config, result, i) -> list[LayerReport]:
    tensors, meta = done
    for name, lin in linears.items():
        if config.method == "vptq":
            own = {k[len(name) + 1:]: v for k, v in tensors.items() if k.startswith(name + ".")}
            try:
                w = VQWeight.from_tensors(own, where=name)
            except FormatError as e:
                raise QuantizeError(f"saved layer {i} is damaged: {e}; delete it to redo that layer") from e
            replace_linear(model, name, VQLinear(w, dtype=lin.weight.dtype).to(lin.weight.device))
            result.weights[name] = w
        else:
            with torch.no_grad():
                lin.weight.copy_(torch.from_numpy(tensors[f"{name}.weight"]).to(lin.weight))
    prefix = f"model.layers.{i}."
    with torch.no_grad():
        for n, p in layer.named_parameters():
            if prefix + n in tensors and _is_norm_param(n):
                p.copy_(torch.from_numpy(tensors[prefix + n]).to(p))
    return [LayerReport(r["name"], tuple(r["shape"]), r["bits_per_weight"], r["proxy_err"], r["seconds"])
            for r in meta]


def _proxy_err(W: torch.Tensor, W_hat: torch.Tensor, H: torch.Tensor) -> float:
    """tr(ΔW H ΔWᵀ) / tr(W H Wᵀ): the layer-output error the quantizers minimise."""
    H = H.to(W.device, torch.float64)
    dW = (W - W_hat).double()
    return float(torch.trace(dW @ H @ dW.T) / torch.trace(W.double() @ H @ W.double().T).clamp_min(1e-30))

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

from vq2trt.activations import Activations, MemoryBudgetError, plan_memory
from vq2trt.algo import HessianAccumulator, gptq_quantize, rtn_quantize, scalar_bits_per_weight, vptq_quantize
from vq2trt.algo.finetune import finetune_layer
from vq2trt.config import QuantConfig
from vq2trt.distributed import Dist, gather_batches
from vq2trt.format import FORMAT_VERSION, FormatError, VQWeight
from vq2trt.guided import output_gradient_weights
from vq2trt.head import HEAD, quantize_head, quantizes_head, untie_head
from vq2trt.layer_inputs import (  # noqa: F401 (tests reach _capture_* here)
    _calibration_inputs,
    _capture_inputs,
    _capture_layer0_inputs,
    _with_kwargs,
    calibration_store,
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
    keep_weights: bool = True      # False: a streamed run keeps each Linear's size, not its tensors
    sizes: dict[str, tuple[int, int]] = field(default_factory=dict)  # name: (stored bits, weights)

    def record(self, name: str, w: VQWeight) -> None:
        if self.keep_weights:
            self.weights[name] = w
        self.sizes[name] = (w.stored_bits(), w.out_features * w.in_features)

    @property
    def bits_per_weight(self) -> float:
        """All-in bits per weight over the decoder's quantized Linears (indices, codebooks, scales,
        perm); a quantized head is counted apart (head_bits_per_weight), as papers report it."""
        if self.config.method != "vptq":
            return scalar_bits_per_weight(self.config.bits, self.config.group_size)
        return sum(b for b, _ in self.sizes.values()) / max(sum(n for _, n in self.sizes.values()), 1)

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


def _fingerprint(model, config: QuantConfig, calib: torch.Tensor, stream=None) -> dict:
    h = hashlib.sha256()
    h.update(calib.cpu().numpy().astype(np.int64).tobytes())
    # A few weights identify the model without hashing all of it (a streamed model's are read from
    # its files, so a run resumes whether it streams or not).
    for name, p in list(model.named_parameters())[:4]:
        if p.is_meta:
            p = stream.source.get(name).to(stream.dtype)
        h.update(name.encode())
        h.update(p.detach().float().cpu().numpy().tobytes()[:4096])
    return {"format_version": FORMAT_VERSION, "config": config.to_dict(), "inputs_sha256": h.hexdigest()}


class _WorkDir:
    """Per-layer results of an unfinished run (safetensors written atomically)."""

    def __init__(self, path: Path | None, fingerprint: dict, writer: bool = True):
        self.path, self.writer = path, writer
        if path is None:
            return
        path.mkdir(parents=True, exist_ok=True)
        state = path / STATE_FILE
        if state.exists():
            try:
                old = json.loads(state.read_text())
            except (OSError, json.JSONDecodeError) as e:
                raise QuantizeError(f"resume state {state} is unreadable ({e}); delete {path} to start over") from e
            if fingerprint is not None and old != fingerprint:
                raise QuantizeError(f"{path} holds a run with a different model, calibration data or config; "
                                    f"delete it or choose another output folder")
        elif writer:
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
        if self.path is None or not self.writer:
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


def _collect_hessians(layer, linears, batches, device, token_weights=None, *, rows=None, owned=None,
                      keep_targets=True):
    """One HessianAccumulator per distinct Linear input (q/k/v share one, gate/up share one), and the
    layer's outputs for ``batches`` (a list, or an Activations store) when ``keep_targets``.

    token_weights: {name: float32 [num_samples, seqlen]} output-aware weights s_t
    (vq2trt.guided) for the calibration windows; rows[k] is the first window of batch k (default:
    consecutive). Then every Linear gets its own accumulator weighted by its own s_t, as
    GuidedQuant does: tr(ΔW H_g ΔWᵀ) is q's end-loss increase only with q's output gradient;
    summing q/k/v's s_t into one shared H would weight q's error by how much v's output matters.
    owned: which batches this process adds (a distributed rank); the others only run, and the
    first of them fixes the integer grid when this rank does not hold batch 0.
    """
    acc: dict[str, HessianAccumulator] = {}
    owner: dict[str, str] = {}
    # Same tensor object in = same Hessian. The first batch's inputs are kept alive in
    # seen_inputs so a freed input's address cannot be reused and mistaken for a shared one.
    seen_inputs: dict[tuple, tuple[str, torch.Tensor]] = {}
    state = {"first": True, "row": 0, "adds": True}

    def hook(name):
        def f(_m, args):
            x = args[0]  # [B, T, K]
            if state["first"]:
                if token_weights is None:
                    key = (x.data_ptr(), tuple(x.shape), x.dtype)
                    owner[name] = seen_inputs.setdefault(key, (name, x))[0]
                else:
                    owner[name] = name
                if owner[name] == name:
                    acc[name] = HessianAccumulator(x.shape[-1], device=device)
            if owner[name] == name:
                r = state["row"]
                w = None if token_weights is None else token_weights[name][r:r + x.shape[0]]  # [B, T]
                if state["adds"]:
                    acc[name].add_batch(x.detach(), w)
                else:
                    acc[name].set_grid_from(x.detach(), w)
        return f

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in linears.items()]
    store = isinstance(batches, Activations)
    targets = batches.like() if store else []
    try:
        with torch.no_grad():
            row = 0
            for k, (hidden, kw) in enumerate(batches):
                state["row"] = row if rows is None else rows[k]
                state["adds"] = owned is None or k in owned
                out = _run_layer(layer, hidden, kw)
                if keep_targets:
                    targets.put(k, out) if store else targets.append(out)
                state["first"] = False
                seen_inputs.clear()
                row += hidden.shape[0]
    finally:
        for h in handles:
            h.remove()
    return {n: acc[owner[n]] for n in linears}, targets


def quantize(model: nn.Module, config: QuantConfig, calib: torch.Tensor, *, work_dir: str | os.PathLike | None = None,
             device: str | torch.device | None = None, batch_size: int = 8, progress: bool = True,
             stream=None, dist: Dist | None = None, max_memory: int | None = None, log=None) -> QuantizeResult:
    """Quantize every Linear of ``model``'s decoder layers in place.

    calib: int64 token ids [num_samples, seqlen]. With ``work_dir``, finished
    layers are saved there and reused by a later call with the same inputs.
    vptq replaces Linears with VQLinear; gptq/rtn write fake-quantized weights.
    stream: a vq2trt.streaming.LayerStream for a model whose decoder layers are on the meta device
    (each is loaded when reached and freed after). dist: the torchrun process group
    (vq2trt.distributed), splitting batches and Linears between ranks. max_memory: bytes the
    activations and one layer may take; above it the activations go to files in ``work_dir``.
    log: a callable for the memory plan and the time estimate (None: silent).
    """
    config.validate()
    if calib.ndim != 2 or calib.shape[0] < 1:
        raise QuantizeError(f"calibration ids must be [num_samples, seqlen], got {tuple(calib.shape)}")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dist = dist or Dist()
    log = log or (lambda _msg: None)
    layers = decoder_layers(model)
    _check_family(model)
    _check_module_overrides(layers, config)
    if stream is not None and config.hessian == "output-aware":
        raise QuantizeError("hessian 'output-aware' backpropagates through the whole float model, which a "
                            "streamed run never holds; use hessian 'input' or load the model whole")
    work = _open_work(work_dir, _fingerprint(model, config, calib, stream), dist)
    result = QuantizeResult(config=config, keep_weights=stream is None)
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
                                                    progress=progress and dist.is_main)
    n_batches = -(-calib.shape[0] // batch_size)
    owned_ids = dist.own_batches(n_batches)
    # Fine-tuning needs every batch on every rank; otherwise a rank holds its own and batch 0 (the grid).
    ids = list(range(n_batches)) if config.finetune_steps > 0 else sorted({0, *owned_ids})
    owned = {k for k, b in enumerate(ids) if b in owned_ids}
    try:
        spill = plan_memory(model, config, calib, batch_size, len(ids), stream, dist, max_memory, work.path, log)
    except MemoryBudgetError as e:
        raise QuantizeError(str(e)) from None
    batches, layer_kwargs = calibration_store(model, layers, calib, batch_size, device, ids, spill)
    if stream is not None:
        stream.release_embeddings()

    bar = tqdm(range(len(layers)), desc=f"quantize ({config.method})", unit="layer",
               disable=not progress or not dist.is_main)
    timed = False
    for i in bar:
        t_layer = time.perf_counter()
        if stream is not None:
            layer, home = stream.load(i, device), None
        else:
            layer = layers[i]
            home = next(layer.parameters()).device
            layer.to(device)
        batches = batches.with_kwargs([layer_kwargs[i][b] for b in batches.ids])
        linears = quantizable_linears(layer, f"model.layers.{i}", config.skip_modules)
        done = work.load(i) if dist.broadcast_object(work.done(i)) else None
        if done is not None:
            reports = _apply_saved(model, layer, linears, done, config, result, i)
        else:
            reports = _quantize_layer(model, layer, i, linears, batches, config, result, device, work,
                                      token_weights=token_weights, dist=dist, owned=owned, batch_size=batch_size)
        result.reports.extend(reports)
        with torch.no_grad():
            nxt = batches.map(lambda h, kw, layer=layer: _run_layer(layer, h, kw))
        batches.free()
        batches = nxt
        if stream is not None:
            stream.release(i)
        else:
            layer.to(home)
        bar.set_postfix(bpw=f"{result.bits_per_weight:.3f}",
                        err=f"{np.mean([r.proxy_err for r in reports]) if reports else 0:.4f}")
        if done is None and not timed:
            timed = True
            left = sum(not work.done(j) for j in range(i + 1, len(layers)))
            secs = time.perf_counter() - t_layer
            log(f"layer {i} took {secs:.1f} s; the {left} layer(s) left should take about "
                f"{_hms(secs * left)}{'' if dist.world == 1 else f' on {dist.world} ranks'}")
    if config.method == "vptq" and quantizes_head(config):
        batches = gather_batches(dist, batches, n_batches)
        if dist.is_main:
            if stream is not None:
                stream.load_rest(device)
            _head_stage(model, config, batches, device, work, result)
    batches.free()
    dist.barrier()
    result.seconds = time.perf_counter() - t_start
    return result


def _hms(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}"


def _open_work(work_dir, fingerprint, dist: Dist) -> _WorkDir:
    """Rank 0 creates (or checks) the folder first; the others then only read it."""
    path = Path(work_dir) if work_dir else None
    work = _WorkDir(path, fingerprint) if dist.is_main else None
    dist.barrier()
    return work if work is not None else _WorkDir(path, fingerprint, writer=False)


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


def _quantize_layer(model, layer, i, linears, batches, config, result, device, work, token_weights=None, *,
                    dist: Dist | None = None, owned=None, batch_size: int = 8) -> list[LayerReport]:
    """Hessians of the layer's Linears (summed over ranks), each Linear quantized by the rank the
    cost split gives it, the results exchanged, applied on every rank exactly as a resumed run
    applies a saved layer, optionally fine-tuned, and saved (rank 0)."""
    dist = dist or Dist()
    rows = [b * batch_size for b in batches.ids] if isinstance(batches, Activations) else None
    tune = config.method == "vptq" and config.finetune_steps > 0
    hessians, targets = _collect_hessians(layer, linears, batches, device, token_weights, rows=rows,
                                          owned=owned if dist.active else None, keep_targets=tune)
    if dist.active:
        for acc in {id(a): a for a in hessians.values()}.values():
            acc.all_reduce(dist)
    owner = dist.assign([lin.out_features * lin.in_features for lin in linears.values()])
    tensors, reports = {}, {}
    for j, (name, lin) in enumerate(linears.items()):
        if owner[j] != dist.rank:
            continue
        t0 = time.perf_counter()
        W = lin.weight.detach().float().clone()                          # [N, K]
        H = hessians[name].finalize()                                    # [K, K]
        seed = _layer_seed(config, i, j)
        if config.method == "vptq":
            bias = None if lin.bias is None else lin.bias.detach().float()
            w, stats = vptq_quantize(W, H, config.for_module(name), bias=bias, seed=seed)
            tensors.update({f"{name}.{k}": v for k, v in w.tensors().items()})
            bpw, err = w.bits_per_weight(), float(stats["proxy_err"])
        else:
            if config.method == "gptq":
                W_hat, stats = gptq_quantize(W, H, config.bits, config.group_size, block_size=config.block_size,
                                             damp=config.damp)
            else:
                W_hat = rtn_quantize(W, config.bits, config.group_size)
            tensors[f"{name}.weight"] = W_hat.float().cpu().numpy()
            bpw = scalar_bits_per_weight(config.bits, config.group_size)
            err = _proxy_err(W, W_hat.float(), H)
        reports[name] = LayerReport(name, tuple(W.shape), bpw, err, time.perf_counter() - t0)
    del hessians
    if dist.active:
        parts = dist.all_gather_object((tensors, reports))
        tensors = {k: v for part, _ in parts for k, v in part.items()}
        reports = {n: r for _, rep in parts for n, r in rep.items()}
    ordered = [reports[n] for n in linears]
    _apply_saved(model, layer, linears, (tensors, [r.__dict__ for r in ordered]), config, result, i)
    if tune:
        _finetune(model, layer, i, linears, batches, targets, config, result)
        tensors = {f"{name}.{k}": v for name in linears
                   for k, v in layer.get_submodule(name.removeprefix(f"model.layers.{i}.")).to_vqweight()
                   .tensors().items()}
        tensors.update({f"model.layers.{i}.{n}": p.detach().float().cpu().numpy()
                        for n, p in layer.named_parameters() if _is_norm_param(n)})
    if isinstance(targets, Activations):
        targets.free()
    work.save(i, tensors, ordered)
    return ordered


def _is_norm_param(name: str) -> bool:
    return name.endswith("norm.weight")


def _finetune(model, layer, i, linears, batches, targets, config, result) -> None:
    vq = [layer.get_submodule(n.removeprefix(f"model.layers.{i}.")) for n in linears]
    params = [p for m in vq for p in m.set_trainable(True)]
    norms = [p for n, p in layer.named_parameters() if _is_norm_param(n)]
    for p in norms:
        p.requires_grad_(True)
    finetune_layer(lambda h, kw: _run_layer(layer, h, kw), batches,
                   targets.hiddens() if isinstance(targets, Activations) else targets, params + norms,
                   steps=config.finetune_steps, lr=config.finetune_lr, seed=config.seed + i)
    for p in norms:
        p.requires_grad_(False)
    for name, m in zip(linears, vq):
        m.set_trainable(False)
        w = m.to_vqweight()
        result.record(name, w)
        # Fine-tuned fp32 codebooks are rounded on save; the model must run what is saved.
        replace_linear(model, name, VQLinear(w, dtype=m._dtype).to(m.codebook.device))


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
            result.record(name, w)
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

"""allocate(): one VQ format per Linear so that the model meets an average bit budget.

Sensitivity: every candidate format quantizes every Linear once against H collected on the
FLOAT model's inputs (one pass, no error propagation, the seed quantize() will use), and the
absolute proxy tr(ΔW H ΔWᵀ) estimates the squared error that choice adds at the Linear's
output. That compares errors where each Linear writes them, not where the loss sees them: an
early layer's error passes through every later layer, so at ~3.3 bits the proxy starved the
first layers (RESULTS.md). sensitivity="loss" keeps the quantization against the input H and
measures the error with the output-aware H_g (vq2trt.guided): tr(ΔW H_g ΔWᵀ) estimates the
increase of the next-token loss that the choice adds, comparable across layers. The output-aware
Hessian as the quantization Hessian (config hessian="output-aware"), a custom ``hessian_fn`` or
per-Linear ``weights`` change the estimate too. Bits are each
format's exact stored bits for the Linear's shape (format.planned_stored_bits), so the budget
holds for the checkpoint quantize() then writes.

The multiple-choice knapsack is solved greedily on each Linear's lower convex hull of
(bits, error): from the cheapest format everywhere, repeatedly take the hull step that removes
the most error per added bit while the budget allows.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from vq2trt.algo import vptq_quantize
from vq2trt.config import PRESETS, ConfigError, QuantConfig
from vq2trt.format import FormatError, planned_stored_bits
from vq2trt.guided import output_gradient_weights
from vq2trt.layer_inputs import _calibration_inputs, _with_kwargs
from vq2trt.quantize import (
    _collect_hessians,
    _layer_seed,
    all_quantizable_linears,
    decoder_layers,
    quantizable_linears,
)
from vq2trt.reference import dequantize_torch

# Small models (hidden <= 2048): 2, ~2.06, ~2.5 and ~3 bits, each with a small codebook.
DEFAULT_CANDIDATES = ("v4-k256", "v4-k256-o1", "v4-k256-r4", "v3-k512-o1")
# How a candidate's error is measured: "proxy" at the Linear's output, "loss" by the end loss.
SENSITIVITIES = ("proxy", "loss")

HessianFn = Callable[[str, torch.Tensor], torch.Tensor]


class AllocateError(ConfigError):
    """A bit allocation that cannot be made; the message names the input and what was expected."""


@dataclass
class Allocation:
    """The chosen format of every quantized Linear, and what the choice rests on."""

    config: QuantConfig                                   # base format + ``modules`` overrides
    target_bits: float
    choices: dict[str, str]                               # Linear -> candidate label
    bits: dict[str, dict[str, int]]                       # Linear -> label -> exact stored bits
    errors: dict[str, dict[str, float]] = field(default_factory=dict)  # Linear -> label -> weighted proxy
    num_weights: dict[str, int] = field(default_factory=dict)          # Linear -> N * K

    @property
    def bits_per_weight(self) -> float:
        """All-in bits per weight of the chosen formats, counted as QuantizeResult.bits_per_weight does."""
        total = sum(self.bits[n][c] for n, c in self.choices.items())
        return total / max(sum(self.num_weights.values()), 1)

    def counts_by_type(self) -> dict[str, Counter]:
        """Module type (q, k, v, o, gate, up, down: the name's last part) -> candidate label -> Linears."""
        out: dict[str, Counter] = {}
        for name, label in self.choices.items():
            kind = name.rsplit(".", 1)[-1].removesuffix("_proj")
            out.setdefault(kind, Counter())[label] += 1
        return out

    def to_dict(self) -> dict:
        return {"config": self.config.to_dict(), "target_bits": self.target_bits, "choices": self.choices,
                "bits": self.bits, "errors": self.errors, "num_weights": self.num_weights}

    @classmethod
    def from_dict(cls, d: dict) -> Allocation:
        return cls(config=QuantConfig.from_dict(d["config"]), **{k: d[k] for k in (
            "target_bits", "choices", "bits", "errors", "num_weights")})


def candidate_label(cfg: QuantConfig) -> str:
    """The preset name of cfg's format, else a name built the same way (v4-k256-r4-o1-g2)."""
    fmt = cfg.format_fields()
    for name, fields in PRESETS.items():
        p = QuantConfig(**fields)
        if p.method == "vptq" and p.format_fields() == fmt:
            return name
    parts = [f"v{cfg.vector_len}", f"k{cfg.num_centroids}"]
    if cfg.num_res_centroids:
        parts.append(f"r{cfg.num_res_centroids}")
    if cfg.outlier_frac:
        parts.append(f"o{100 * cfg.outlier_frac:g}(v{cfg.outlier_vector_len}k{cfg.outlier_num_centroids})")
    if cfg.num_groups > 1:
        parts.append(f"g{cfg.num_groups}")
    parts += [] if cfg.enable_norm else ["nonorm"]
    parts += [] if cfg.enable_perm else ["noperm"]
    return "-".join(parts)


def resolve_candidates(candidates: Sequence[str | QuantConfig], base: QuantConfig) -> dict[str, QuantConfig]:
    """Label -> ``base`` with the candidate's format fields; only the format comes from a candidate."""
    out: dict[str, QuantConfig] = {}
    for c in candidates:
        if isinstance(c, str):
            if c not in PRESETS:
                raise AllocateError(f"candidate {c!r} is not a preset; expected one of {sorted(PRESETS)}")
            cfg = QuantConfig(**PRESETS[c])
        elif isinstance(c, QuantConfig):
            cfg = c
        else:
            raise AllocateError(f"candidate {c!r}: expected a preset name or a QuantConfig")
        if cfg.method != "vptq" or cfg.modules:
            raise AllocateError(f"candidate {c if isinstance(c, str) else candidate_label(cfg)!r}: expected one "
                                f"VPTQ format (method 'vptq', no per-module overrides), got method {cfg.method!r}")
        full = dataclasses.replace(base, **cfg.format_fields())
        if all(full.format_fields() != o.format_fields() for o in out.values()):
            out[c if isinstance(c, str) else candidate_label(cfg)] = full
    if not out:
        raise AllocateError("no candidate formats given; expected at least one preset name or QuantConfig")
    return out


# --- the knapsack ---------------------------------------------------------------
def _lower_hull(bits: Sequence[int], errs: Sequence[float]) -> list[int]:
    """Option indices on the lower convex hull of (bits, err), bits rising and err strictly falling."""
    order = sorted(range(len(bits)), key=lambda j: (bits[j], errs[j], j))
    pareto: list[int] = []
    for j in order:
        if not pareto or (bits[j] > bits[pareto[-1]] and errs[j] < errs[pareto[-1]]):
            pareto.append(j)
    hull: list[int] = []
    for j in pareto:
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            # b lies on or above the chord a-j: going straight from a to j is at least as good per bit
            if (bits[b] - bits[a]) * (errs[j] - errs[a]) - (errs[b] - errs[a]) * (bits[j] - bits[a]) <= 0:
                hull.pop()
            else:
                break
        hull.append(j)
    return hull


def cheapest_bits_per_weight(bits: Sequence[Sequence[int]], num_weights: int) -> float:
    return sum(min(b) for b in bits) / num_weights


def solve(bits: Sequence[Sequence[int]], errs: Sequence[Sequence[float]], target_bits: float,
          num_weights: int) -> list[int]:
    """Option index per item minimising sum(errs) subject to sum(bits) / num_weights <= target_bits.

    Greedy on each item's lower convex hull by error removed per added bit; a step that no longer
    fits ends that item's upgrades (its later steps need it), the others go on filling the budget.
    Ties go to the earlier item, so the answer is deterministic.
    """
    if sum(min(b) for b in bits) / num_weights > target_bits:
        raise AllocateError(f"target_bits={target_bits} is below the cheapest achievable "
                            f"{cheapest_bits_per_weight(bits, num_weights):.4f} bits per weight")
    hulls = [_lower_hull(b, e) for b, e in zip(bits, errs)]
    pick = [h[0] for h in hulls]
    total = sum(b[p] for b, p in zip(bits, pick))

    def step(i: int, s: int):
        a, b = hulls[i][s], hulls[i][s + 1]
        return (-(errs[i][a] - errs[i][b]) / (bits[i][b] - bits[i][a]), i, s)

    heap = [step(i, 0) for i, h in enumerate(hulls) if len(h) > 1]
    heapq.heapify(heap)
    while heap:
        _, i, s = heapq.heappop(heap)
        new = hulls[i][s + 1]
        extra = bits[i][new] - bits[i][pick[i]]
        if (total + extra) / num_weights <= target_bits:
            total += extra
            pick[i] = new
            if s + 2 < len(hulls[i]):
                heapq.heappush(heap, step(i, s + 1))
    return pick


# --- sensitivities ----------------------------------------------------------------
def absolute_proxy_error(W: torch.Tensor, W_hat: torch.Tensor, H: torch.Tensor) -> float:
    """tr(ΔW H ΔWᵀ) in float64: with H = E[x xᵀ], the mean squared output error per token."""
    dW = W_hat.detach().double() - W.detach().double()      # [N, K]
    return float(((dW @ H.to(dW.device, torch.float64)) * dW).sum())


def _weight_of(weights, name: str) -> float:
    if weights is None:
        return 1.0
    w = weights(name) if callable(weights) else weights.get(name, 1.0)
    if not (isinstance(w, (int, float)) and math.isfinite(w) and w >= 0):
        raise AllocateError(f"weights[{name!r}] = {w!r}; expected a finite number >= 0")
    return float(w)


def _sensitivities(model, layers, calib, cands, base, hessian_fn, weights, device, batch_size, progress,
                   expected_bits, sensitivity) -> dict[str, dict[str, float]]:
    errors: dict[str, dict[str, float]] = {}
    token_weights = None
    if base.hessian == "output-aware" or sensitivity == "loss":
        token_weights = output_gradient_weights(model, calib, list(expected_bits), batch_size=batch_size,
                                                device=device, progress=progress)
    batches, layer_kwargs = _calibration_inputs(model, layers, calib, batch_size, device)
    bar = tqdm(total=len(expected_bits), desc=f"allocate ({len(cands)} formats)", unit="linear",
               disable=not progress)
    for i, layer in enumerate(layers):
        home = next(layer.parameters()).device
        layer.to(device)
        batches = _with_kwargs(batches, layer_kwargs[i])     # its attention type's mask and rotary
        linears = quantizable_linears(layer, f"model.layers.{i}", base.skip_modules)
        guided = None
        if token_weights is None:
            hessians, outputs = _collect_hessians(layer, linears, batches, device)
        elif base.hessian == "output-aware":
            hessians, outputs = _collect_hessians(layer, linears, batches, device, token_weights)
            guided = hessians
        else:  # quantize against the input H, measure with H_g
            hessians, outputs = _collect_hessians(layer, linears, batches, device)
            guided, _ = _collect_hessians(layer, linears, batches, device, token_weights)
        batches = [(h, kw) for h, (_, kw) in zip(outputs, batches)]  # the float layer's outputs feed the next
        for j, (name, lin) in enumerate(linears.items()):
            W = lin.weight.detach().float()                          # [N, K]
            H = hessians[name].finalize()                            # [K, K]
            # finalize() divides by Σ s_t; the mean s_t puts it back, so that across Linears
            # tr(ΔW H_g ΔWᵀ) estimates Σ_t s_t ||ΔW x_t||² / T, the loss increase per token.
            scale = 1.0 if guided is None else guided[name].weight_sum / guided[name].count
            if hessian_fn is not None:
                H = hessian_fn(name, H)
                if tuple(H.shape) != (W.shape[1],) * 2:
                    raise AllocateError(f"hessian_fn({name!r}) returned shape {tuple(H.shape)}; "
                                        f"expected [{W.shape[1]}, {W.shape[1]}]")
            # the error's own H_g only when the quantization used the input H (sensitivity="loss")
            H_err = guided[name].finalize() if guided is not None and guided is not hessians else H
            scale *= _weight_of(weights, name)
            errors[name] = {}
            for label, cfg in cands.items():
                w, _ = vptq_quantize(W, H, cfg, seed=_layer_seed(base, i, j))
                assert w.stored_bits() == expected_bits[name][label], (name, label)  # planned == stored
                errors[name][label] = scale * absolute_proxy_error(W, dequantize_torch(w, device=W.device), H_err)
            bar.update()
        del hessians
        layer.to(home)
    bar.close()
    return errors


def _as_config(base: QuantConfig, cands: dict[str, QuantConfig], choices: dict[str, str]) -> QuantConfig:
    """The most chosen format (first candidate on ties) as the base; every other Linear an override."""
    count = Counter(choices.values())
    top = max(cands, key=lambda label: count[label])
    fmt = cands[top].format_fields()
    modules = {}
    for name, label in choices.items():
        diff = {k: v for k, v in cands[label].format_fields().items() if v != fmt[k]}
        if diff:
            modules[name] = diff
    return dataclasses.replace(base, **fmt, modules=modules)


def allocate_plan(model: nn.Module, calib: torch.Tensor, candidates: Sequence[str | QuantConfig],
                  target_bits: float, *, base: QuantConfig | None = None, hessian_fn: HessianFn | None = None,
                  weights: Mapping[str, float] | Callable[[str], float] | None = None,
                  device: str | torch.device | None = None, batch_size: int = 8,
                  progress: bool = True, sensitivity: str = "proxy") -> Allocation:
    """allocate(), returning the whole Allocation (choices, bits, errors) rather than only the config.

    base: every non-format field (seed, k-means, calibration, fine-tuning, skip_modules); a
    candidate contributes only its format fields. hessian_fn(name, H) -> H' replaces the float
    input Hessian [K, K] of Linear ``name`` for its quantization and its error (e.g. an
    output-aware one); weights (dict or callable of the name, default 1) scales its error.
    sensitivity: "proxy" (the error at the Linear's output) or "loss" (by the end loss; the
    module docstring says why), at the cost of one backward pass over ``calib``.
    """
    if sensitivity not in SENSITIVITIES:
        raise AllocateError(f"sensitivity={sensitivity!r}; expected one of {list(SENSITIVITIES)}")
    base = QuantConfig() if base is None else base
    if base.method != "vptq" or base.modules:
        raise AllocateError(f"base config: expected method 'vptq' without per-module overrides, got method "
                            f"{base.method!r} and {len(base.modules)} override(s)")
    if not (isinstance(target_bits, (int, float)) and math.isfinite(target_bits) and target_bits > 0):
        raise AllocateError(f"target_bits={target_bits!r}; expected a positive number of bits per weight")
    if calib.ndim != 2 or calib.shape[0] < 1:
        raise AllocateError(f"calibration ids must be [num_samples, seqlen], got {tuple(calib.shape)}")
    cands = resolve_candidates(candidates, base)
    layers = decoder_layers(model)
    linears = all_quantizable_linears(layers, base.skip_modules)
    if not linears:
        raise AllocateError(f"the model has no Linear to quantize outside skip_modules {base.skip_modules}")

    # Bits come from shapes alone: an impossible target fails here, before any Hessian.
    bits: dict[str, dict[str, int]] = {}
    for name, lin in linears.items():
        try:
            bits[name] = {label: planned_stored_bits(cfg, lin.out_features, lin.in_features)
                          for label, cfg in cands.items()}
        except FormatError as e:
            raise AllocateError(f"{name}: a candidate cannot quantize it: {e}") from None
    sizes = {name: lin.out_features * lin.in_features for name, lin in linears.items()}
    n = sum(sizes.values())
    labels = list(cands)
    table = [[bits[name][label] for label in labels] for name in linears]
    cheapest = cheapest_bits_per_weight(table, n)
    if cheapest > target_bits:
        per = {label: sum(bits[name][label] for name in linears) / n for label in labels}
        raise AllocateError(f"target_bits={target_bits} is below the cheapest achievable {cheapest:.4f} bits per "
                            f"weight for this model's Linears (all-in, per candidate: "
                            f"{', '.join(f'{k} {v:.4f}' for k, v in per.items())}); raise the target or add a "
                            f"cheaper candidate")

    model.eval()
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    errors = _sensitivities(model, layers, calib, cands, base, hessian_fn, weights, dev, batch_size, progress, bits,
                            sensitivity)
    pick = solve(table, [[errors[name][label] for label in labels] for name in linears], target_bits, n)
    choices = {name: labels[p] for name, p in zip(linears, pick)}
    try:
        config = _as_config(base, cands, choices)
    except ConfigError as e:  # cannot happen for valid candidates; say where if it does
        raise AllocateError(f"the allocated config is invalid: {e}") from e
    return Allocation(config=config, target_bits=float(target_bits), choices=choices, bits=bits, errors=errors,
                      num_weights=sizes)


def allocate(model: nn.Module, calib: torch.Tensor, candidates: Sequence[str | QuantConfig], target_bits: float,
             **kw) -> QuantConfig:
    """A QuantConfig (base format + ``modules`` overrides) whose all-in bits per weight over the
    quantized Linears are <= ``target_bits``, choosing among ``candidates`` (preset names or
    QuantConfigs) to minimise the summed estimated error. Keywords: see allocate_plan()."""
    return allocate_plan(model, calib, candidates, target_bits, **kw).config

"""Quantization configuration: one versioned dataclass with a JSON round trip.

The same fields appear, flat, as ``quantization_config`` in a checkpoint's
config.json, so a checkpoint says exactly how every layer was built; ``modules``
holds per-Linear format overrides (mixed formats in one checkpoint).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

CONFIG_VERSION = 1
METHODS = ("vptq", "gptq", "rtn")
HESSIANS = ("input", "output-aware")
# The fields that fix one Linear's stored VQ format: the only ones ``modules`` may override.
PER_MODULE_FIELDS = ("vector_len", "num_centroids", "num_res_centroids", "outlier_frac", "outlier_vector_len",
                     "outlier_num_centroids", "num_groups", "enable_norm", "enable_perm")
MAX_INDEX_BITS = 16


class ConfigError(ValueError):
    """A configuration that cannot be quantized; the message names the field."""


def index_bits(num_centroids: int) -> int:
    """Bits of one packed index for a codebook of ``num_centroids`` entries."""
    return max(1, math.ceil(math.log2(num_centroids)))


@dataclass
class QuantConfig:
    """How to quantize every Linear of a model (``modules``: per-Linear format overrides).

    VPTQ fields (method="vptq"): vectors of ``vector_len`` run along the output
    dimension; ``num_centroids`` entries per codebook; an optional residual
    codebook; an optional share of input columns (the most salient by diag(H))
    with their own outlier codebook; the remaining columns split into
    ``num_groups`` groups with a codebook each.

    Scalar baselines (method="gptq" or "rtn"): ``bits`` per weight with one
    fp16 scale and a ``bits``-bit zero point per ``group_size`` inputs of a row.
    """

    method: str = "vptq"
    vector_len: int = 4
    num_centroids: int = 256
    num_res_centroids: int = 0
    outlier_frac: float = 0.0
    outlier_vector_len: int = 4
    outlier_num_centroids: int = 256
    num_groups: int = 1
    enable_norm: bool = True
    enable_perm: bool = True
    kmeans_iters: int = 100
    kmeans_tol: float = 1e-5
    # k-means fits centroids on at most this many vectors (seeded sample; 0 = all). 64 Ki vectors
    # give k=256 centroids ~256 points each, and every vector is still assigned by the VPTQ loop.
    kmeans_max_vectors: int = 65536
    block_size: int = 128
    damp: float = 1e-2
    # Hessian of each Linear: "input" = E[x xᵀ]; "output-aware" = GuidedQuant's Σ s_t x xᵀ / Σ s_t with
    # s_t = ||∂L/∂y_t||², the float model's end-loss gradient at the Linear's output (vq2trt.guided).
    hessian: str = "input"
    finetune_steps: int = 0
    finetune_lr: float = 1e-4
    # End-to-end distillation against the float model after the last layer (vq2trt.distill); 0 = off.
    distill_tokens: int = 0
    distill_lr: float = 1e-3
    bits: int = 2
    group_size: int = 128
    seed: int = 0
    calib_samples: int = 128
    calib_seqlen: int = 512
    skip_modules: list[str] = field(default_factory=lambda: ["lm_head", "embed_tokens"])
    # Full module name (e.g. "model.layers.3.mlp.down_proj") -> overrides of PER_MODULE_FIELDS
    # for that Linear; see for_module(). Empty: every Linear has the fields above.
    modules: dict[str, dict[str, Any]] = field(default_factory=dict)
    version: int = CONFIG_VERSION

    def __post_init__(self) -> None:
        self.validate()

    # --- validation -------------------------------------------------------
    def validate(self) -> None:
        def need(ok: bool, name: str, expected: str) -> None:
            if not ok:
                raise ConfigError(
                    f"quantization config: {name}={getattr(self, name)!r} is invalid; expected {expected}"
                )

        need(self.version == CONFIG_VERSION, "version", f"{CONFIG_VERSION}")
        need(self.method in METHODS, "method", f"one of {METHODS}")
        need(isinstance(self.vector_len, int) and self.vector_len >= 1, "vector_len", "an integer >= 1")
        need(isinstance(self.num_centroids, int) and self.num_centroids >= 2, "num_centroids", "an integer >= 2")
        need(index_bits(self.num_centroids) <= MAX_INDEX_BITS, "num_centroids",
             f"at most 2**{MAX_INDEX_BITS} (index bits <= {MAX_INDEX_BITS})")
        need(isinstance(self.num_res_centroids, int) and (self.num_res_centroids == 0 or self.num_res_centroids >= 2),
             "num_res_centroids", "0 (no residual) or an integer >= 2")
        need(self.num_res_centroids == 0 or index_bits(self.num_res_centroids) <= MAX_INDEX_BITS,
             "num_res_centroids", f"at most 2**{MAX_INDEX_BITS}")
        need(0.0 <= float(self.outlier_frac) < 1.0, "outlier_frac", "a fraction in [0, 1) of the input columns")
        need(isinstance(self.outlier_vector_len, int) and self.outlier_vector_len >= 1, "outlier_vector_len",
             "an integer >= 1")
        need(isinstance(self.outlier_num_centroids, int) and self.outlier_num_centroids >= 2,
             "outlier_num_centroids", "an integer >= 2")
        need(index_bits(self.outlier_num_centroids) <= MAX_INDEX_BITS, "outlier_num_centroids",
             f"at most 2**{MAX_INDEX_BITS}")
        need(isinstance(self.num_groups, int) and self.num_groups >= 1, "num_groups", "an integer >= 1")
        need(isinstance(self.kmeans_iters, int) and self.kmeans_iters >= 1, "kmeans_iters", "an integer >= 1")
        need(self.kmeans_tol >= 0, "kmeans_tol", "a number >= 0")
        need(isinstance(self.kmeans_max_vectors, int) and self.kmeans_max_vectors >= 0, "kmeans_max_vectors",
             "an integer >= 0 (0 = fit on every vector)")
        need(isinstance(self.block_size, int) and self.block_size >= 1, "block_size", "an integer >= 1")
        need(self.damp > 0, "damp", "a number > 0")
        need(self.hessian in HESSIANS, "hessian", f"one of {HESSIANS}")
        need(isinstance(self.finetune_steps, int) and self.finetune_steps >= 0, "finetune_steps", "an integer >= 0")
        need(self.finetune_lr > 0, "finetune_lr", "a number > 0")
        need(isinstance(self.distill_tokens, int) and self.distill_tokens >= 0, "distill_tokens",
             "an integer >= 0 (0 = no distillation)")
        need(self.distill_lr > 0, "distill_lr", "a number > 0")
        need(isinstance(self.bits, int) and 1 <= self.bits <= 8, "bits", "an integer in [1, 8]")
        need(isinstance(self.group_size, int) and self.group_size >= 1, "group_size", "an integer >= 1")
        need(isinstance(self.calib_samples, int) and self.calib_samples >= 1, "calib_samples", "an integer >= 1")
        need(isinstance(self.calib_seqlen, int) and self.calib_seqlen >= 2, "calib_seqlen", "an integer >= 2")
        need(isinstance(self.skip_modules, list), "skip_modules", "a list of module-name substrings")
        need(isinstance(self.enable_norm, bool), "enable_norm", "true or false")
        need(isinstance(self.enable_perm, bool), "enable_perm", "true or false")
        need(isinstance(self.modules, dict), "modules", "an object mapping module names to field overrides")
        need(not self.modules or self.method == "vptq", "modules",
             "no per-module overrides: they set VPTQ formats and method is not 'vptq'")
        for name in self.modules:
            self.for_module(name)

    def for_module(self, name: str) -> QuantConfig:
        """The effective config of Linear ``name``: these fields with its ``modules`` overrides applied."""
        over = self.modules.get(name, {})
        where = f"quantization config: modules[{name!r}]"
        if not isinstance(name, str):
            raise ConfigError(f"{where}: module names must be strings, got {type(name).__name__}")
        if not isinstance(over, dict):
            raise ConfigError(f"{where} must be an object of field overrides, got {type(over).__name__}")
        bad = sorted(set(over) - set(PER_MODULE_FIELDS))
        if bad:
            raise ConfigError(f"{where}: field(s) {bad} cannot be set per module; expected some of "
                              f"{list(PER_MODULE_FIELDS)}")
        try:
            return dataclasses.replace(self, modules={}, **over)
        except ConfigError as e:
            raise ConfigError(f"{where}: {str(e).removeprefix('quantization config: ')}") from None
        except (TypeError, ValueError) as e:  # a value of the wrong type reaching validate()'s comparisons
            raise ConfigError(f"{where}: {e}") from None

    def format_fields(self) -> dict[str, Any]:
        """This config's PER_MODULE_FIELDS: everything that fixes a Linear's stored format."""
        return {f: getattr(self, f) for f in PER_MODULE_FIELDS}

    # --- derived quantities ----------------------------------------------
    def num_outlier_cols(self, in_features: int) -> int:
        """Outlier columns of a layer: ceil(outlier_frac * K), in exact decimal arithmetic."""
        if self.outlier_frac <= 0:
            return 0
        n = math.ceil(round(self.outlier_frac * in_features, 9))
        return min(n, in_features - 1)

    def index_bits_per_weight(self) -> float:
        """Index bits per weight of the regular columns, codebooks not counted."""
        if self.method != "vptq":
            return float(self.bits)
        b = index_bits(self.num_centroids)
        if self.num_res_centroids:
            b += index_bits(self.num_res_centroids)
        return b / self.vector_len

    # --- JSON round trip --------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> QuantConfig:
        if not isinstance(d, dict):
            raise ConfigError(f"quantization config must be a JSON object, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        extra = set(d) - known - {"quant_method", "format_version"}
        if extra:
            raise ConfigError(f"quantization config: unknown field(s) {sorted(extra)}; known fields: {sorted(known)}")
        try:
            return cls(**{k: v for k, v in d.items() if k in known})
        except TypeError as e:  # wrong types reach comparisons in validate()
            raise ConfigError(f"quantization config: {e}") from e

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> QuantConfig:
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"quantization config is not valid JSON: {e}") from e
        return cls.from_dict(d)

    @classmethod
    def load(cls, path: str) -> QuantConfig:
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            raise ConfigError(f"cannot read quantization config {path}: {e.strerror}") from e
        return cls.from_json(text)


# Named presets; CLI `--config NAME` takes one of these or a JSON file.
PRESETS: dict[str, dict[str, Any]] = {
    # ~2 bits/weight all-in on small models (hidden <= 2048): 8-bit indices per 4 weights,
    # a 2 KiB codebook per layer, so the codebook costs little even on 576x192 layers.
    "v4-k256": dict(vector_len=4, num_centroids=256),
    # ~3 bits: 9-bit indices per 3 weights; the 1 % most salient input columns (by diag(H)) get
    # their own v2-k256 codebook. On SmolLM2 a single codebook fails on down_proj, whose few
    # huge-activation channels dominate the Hessian-weighted k-means; the outlier codebook fixes it.
    "v3-k512-o1": dict(vector_len=3, num_centroids=512, outlier_frac=0.01, outlier_vector_len=2,
                       outlier_num_centroids=256),
    # v4-k256 plus the 1 % most salient input columns in a v2-k256 outlier codebook: 2.02 index bits,
    # the cheapest fix for down_proj-like layers when bits are allocated per Linear.
    "v4-k256-o1": dict(vector_len=4, num_centroids=256, outlier_frac=0.01, outlier_vector_len=2,
                       outlier_num_centroids=256),
    # ~2.5 bits: the 2-bit main codebook plus a 4-entry residual (2 bits per 4 weights); the step
    # between 2 and 3 bits for --target-bits, with a codebook that stays small on small layers.
    "v4-k256-r4": dict(vector_len=4, num_centroids=256, num_res_centroids=4),
    # ~3 bits with a residual: the 2-bit main codebook plus a 16-entry residual (4 bits per 4 weights).
    "v4-k256-r16": dict(vector_len=4, num_centroids=256, num_res_centroids=16),
    # ~4 bits: 8-bit indices per 2 weights plus the outlier codebook; the step above 3 bits for
    # --target-bits 3.3, where down_proj and the first layers are worth a whole extra bit.
    "v2-k256-o1": dict(vector_len=2, num_centroids=256, outlier_frac=0.01, outlier_vector_len=2,
                       outlier_num_centroids=256),
    # ~2 bits, the fastest format on AVX2: 4-bit indices per 2 weights, so the int8 route looks
    # up 32 weights with one vpshufb. On SmolLM2 its quality is far worse than v4-k256's
    # (RESULTS.md), so it is a speed reference, not a default.
    "v2-k16": dict(vector_len=2, num_centroids=16),
    # ~2 bits as two 16-entry codebooks of 4-vectors (main + residual, 4 + 4 index bits per 4
    # weights): an additive 256-point codebook that the int8 route reads with vpshufb, not a
    # gather. Between v2-k16 and v4-k256 in quality on SmolLM2 (RESULTS.md).
    "v4-k16-r16": dict(vector_len=4, num_centroids=16, num_res_centroids=16),
    # Its steps up for --target-bits (candidates of the same 16-entry family): + 1 % outlier
    # columns (v2-k256), and 4 + 4 bits per 3 weights (2.67 bits) with them.
    "v4-k16-r16-o1": dict(vector_len=4, num_centroids=16, num_res_centroids=16, outlier_frac=0.01,
                          outlier_vector_len=2, outlier_num_centroids=256),
    "v3-k16-r16-o1": dict(vector_len=3, num_centroids=16, num_res_centroids=16, outlier_frac=0.01,
                          outlier_vector_len=2, outlier_num_centroids=256),
    # Paper's 2-bit settings for 7B+ models (1 MiB codebook per layer pays off only there).
    "v8-k65536": dict(vector_len=8, num_centroids=65536, outlier_frac=0.01, outlier_vector_len=4,
                      outlier_num_centroids=4096),
    "v6-k4096": dict(vector_len=6, num_centroids=4096),
    "gptq-w2g128": dict(method="gptq", bits=2, group_size=128),
    "gptq-w2g64": dict(method="gptq", bits=2, group_size=64),
    "gptq-w3g128": dict(method="gptq", bits=3, group_size=128),
    "gptq-w3g64": dict(method="gptq", bits=3, group_size=64),
    "rtn-w2g128": dict(method="rtn", bits=2, group_size=128),
    "rtn-w3g128": dict(method="rtn", bits=3, group_size=128),
}


def resolve_config(spec: str | None, **overrides: Any) -> QuantConfig:
    """A preset name or a JSON file path, then keyword overrides."""
    if spec is None:
        base: dict[str, Any] = dict(PRESETS["v4-k256"])
    elif spec in PRESETS:
        base = dict(PRESETS[spec])
    else:
        base = QuantConfig.load(spec).to_dict()
    base.update({k: v for k, v in overrides.items() if v is not None})
    return QuantConfig.from_dict(base)

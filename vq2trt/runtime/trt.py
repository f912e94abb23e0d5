"""TensorRT engines from an exported decoder: optimization profiles, the exact trtexec and polygraphy
command lines, and a builder through TensorRT's Python API.

No torch, and `tensorrt` is imported only inside build_engine(): without it everything here still
works except the build itself, which then raises TensorRTNotFound carrying the trtexec command
that does the same job on a machine that has TensorRT.

Two optimization profiles per engine (export/TENSORRT.md explains the choice):

  profile 0 "prefill": seq 1..max_seq, past 0 (an empty cache; TensorRT accepts 0 in a profile:
                       IOptimizationProfile::setDimensions requires 0 <= min <= opt <= max)
  profile 1 "decode":  seq 1, past 1..max_context-1

every input's batch 1..max_batch. The input names and the cache's [kv_heads, head_dim] come
from the export's vq2trt_onnx.json.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from vq2trt.runtime import session
from vq2trt.runtime.session import INFO_FILE, MODEL_FILE, RunError, read_info

TARGETS = ("datacenter", "jetson-orin", "jetson-thor")
PRECISIONS = ("fp16", "bf16", "fp32")
PROFILE_NAMES = ("prefill", "decode")
_PRECISION_DTYPE = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}


class TrtError(RunError):
    """An engine request vq2trt cannot satisfy (bad sizes, not an export, a failed build)."""


class TensorRTNotFound(TrtError):
    """`import tensorrt` failed. ``command`` is the trtexec argv that builds the same engine."""

    def __init__(self, command: list[str], reason: str = ""):
        self.command = command
        super().__init__("TensorRT's Python package is not importable"
                         + (f" ({reason})" if reason else "")
                         + "; install TensorRT (pip install 'vq2trt[tensorrt]', or JetPack's python3-libnvinfer) "
                         + "or run: " + shlex.join(command))


@dataclass(frozen=True)
class TargetDefaults:
    max_batch: int
    max_seq: int
    max_context: int
    opt_seq: int
    opt_context: int
    workspace_mib: int
    note: str


# Engine sizes per target. Every max shape costs activation memory (attention scores grow with
# batch * heads * seq * context), and Jetson shares one DRAM between CPU and GPU: Orin Nano has
# 8 GB for everything, so its defaults stay small. Override any of them per build.
TARGET_DEFAULTS = {
    "datacenter": TargetDefaults(8, 2048, 4096, 256, 1024, 4096,
                                 "A100/H100/H200/B200-class GPU (sm_80..sm_120)"),
    "jetson-orin": TargetDefaults(1, 1024, 2048, 128, 512, 1024,
                                  "Jetson Orin (sm_87), JetPack 6.1/6.2: CUDA 12.6 + TensorRT 10.3"),
    "jetson-thor": TargetDefaults(4, 2048, 4096, 256, 1024, 4096,
                                  "Jetson Thor (sm_110), JetPack 7: CUDA 13.0 + TensorRT 10.13"),
}


@dataclass(frozen=True)
class EngineShapes:
    """The sizes an engine serves. ``max_seq``: tokens in one prefill; ``max_context``: past +
    new tokens (the attention_mask length). ``opt_*``: the shapes TensorRT tunes kernels for
    (None: derived from the maxima)."""

    max_batch: int = 1
    max_seq: int = 512
    max_context: int = 2048
    opt_batch: int = 1
    opt_seq: int | None = None
    opt_context: int | None = None

    def __post_init__(self):
        for name in ("max_batch", "max_seq", "max_context", "opt_batch", "opt_seq", "opt_context"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                raise TrtError(f"{name} must be a positive integer, got {v!r}")
        if self.max_context < 2:
            raise TrtError(f"max_context must be >= 2 (a decode step sees at least one past token), "
                           f"got {self.max_context}")
        if self.max_seq > self.max_context:
            raise TrtError(f"max_seq ({self.max_seq}) must not exceed max_context ({self.max_context}): "
                           f"a prefill of max_seq tokens is itself context")
        if self.opt_batch > self.max_batch:
            raise TrtError(f"opt_batch ({self.opt_batch}) exceeds max_batch ({self.max_batch})")
        if self.opt_seq is not None and self.opt_seq > self.max_seq:
            raise TrtError(f"opt_seq ({self.opt_seq}) exceeds max_seq ({self.max_seq})")
        if self.opt_context is not None and not 2 <= self.opt_context <= self.max_context:
            raise TrtError(f"opt_context ({self.opt_context}) must lie in [2, max_context={self.max_context}]")

    @property
    def seq_opt(self) -> int:
        return self.opt_seq if self.opt_seq is not None else min(256, self.max_seq)

    @property
    def context_opt(self) -> int:
        return self.opt_context if self.opt_context is not None else max(2, self.max_context // 2)

    @classmethod
    def for_target(cls, target: str = "datacenter", **overrides) -> EngineShapes:
        """The target's defaults (TARGET_DEFAULTS) with ``overrides`` (None values ignored). An opt
        value is kept only while it fits the (possibly overridden) maxima."""
        d = _target(target)
        kw = dict(max_batch=d.max_batch, max_seq=d.max_seq, max_context=d.max_context, opt_batch=1)
        kw.update({k: v for k, v in overrides.items() if v is not None})
        if "opt_seq" not in kw and isinstance(kw["max_seq"], int) and d.opt_seq <= kw["max_seq"]:
            kw["opt_seq"] = d.opt_seq
        if "opt_context" not in kw and isinstance(kw["max_context"], int) and 2 <= d.opt_context <= kw["max_context"]:
            kw["opt_context"] = d.opt_context
        return cls(**kw)


Shape = tuple[int, ...]
Profile = dict[str, tuple[Shape, Shape, Shape]]     # input name -> (min, opt, max)


def _target(target: str) -> TargetDefaults:
    if target not in TARGET_DEFAULTS:
        raise TrtError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")
    return TARGET_DEFAULTS[target]


# ---------------------------------------------------------------------------------------------
# what an export folder records


@dataclass(frozen=True)
class ExportLayout:
    """What the profiles need from vq2trt_onnx.json."""

    inputs: tuple[str, ...]
    num_layers: int
    kv_heads: int
    head_dim: int
    vocab_size: int
    dtype: str = "float32"                  # activations and KV cache: float32, float16 or bfloat16
    quantized: bool = True
    extra: dict = field(default_factory=dict, compare=False, repr=False)


def layout(info: dict, where: str = INFO_FILE) -> ExportLayout:
    """Checks an export's info (the dict of vq2trt_onnx.json) and returns what engines need."""
    fmt = info.get("format") if isinstance(info, dict) else None
    if fmt != "vq2trt-onnx":
        raise TrtError(f"{where}: not a vq2trt ONNX export (format {fmt!r}); write one with `vq2trt export`")
    missing = [k for k in ("inputs", "num_layers", "num_key_value_heads", "head_dim", "vocab_size") if k not in info]
    if missing:
        raise TrtError(f"{where}: missing {', '.join(missing)}; re-export the model with this vq2trt")
    if info.get("ops", "basic") != "basic":
        raise TrtError(f"{where}: exported with --ops {info['ops']} (opset-23 RMSNormalization, RotaryEmbedding "
                       "and Attention nodes, for ONNX Runtime); TensorRT engines are built from the portable "
                       "graph: re-export with `vq2trt export CHECKPOINT --ops basic`")
    L, H, D = int(info["num_layers"]), int(info["num_key_value_heads"]), int(info["head_dim"])
    inputs = tuple(info["inputs"])
    want = ["input_ids", "attention_mask", "position_ids",
            *[f"past_key_values.{i}.{t}" for i in range(L) for t in ("key", "value")]]
    if sorted(inputs) != sorted(want):
        raise TrtError(f"{where}: graph inputs {list(inputs)[:5]}... are not the decoder's "
                       f"(input_ids, attention_mask, position_ids, past_key_values.0..{L - 1}.key/value)")
    return ExportLayout(inputs=inputs, num_layers=L, kv_heads=H, head_dim=D, vocab_size=int(info["vocab_size"]),
                        dtype=graph_dtype(info, where), quantized=bool(info.get("quantized", True)), extra=info)


def graph_dtype(info: dict, where: str = INFO_FILE) -> str:
    """The dtype of the graph's float inputs and outputs (session.graph_dtype), as a TrtError."""
    try:
        return session.graph_dtype(info, where)
    except RunError as e:
        raise TrtError(str(e)) from None


def load_layout(onnx_dir: str | os.PathLike) -> ExportLayout:
    """The export folder's layout; a clear TrtError/RunError on a folder that is not an export."""
    d = Path(onnx_dir)
    if not d.is_dir():
        raise TrtError(f"{d}: no such folder; pass a folder written by `vq2trt export`")
    return layout(read_info(d), str(d / INFO_FILE))


def _as_layout(info) -> ExportLayout:
    return info if isinstance(info, ExportLayout) else layout(info)


# ---------------------------------------------------------------------------------------------
# optimization profiles


def profiles(info: dict | ExportLayout, shapes: EngineShapes) -> dict[str, Profile]:
    """{"prefill": profile 0, "decode": profile 1}; each maps every graph input to (min, opt, max).

    prefill: input_ids / position_ids [b, 1..max_seq], attention_mask [b, 1..max_seq] (no past),
             past [b, H, 0, D];
    decode:  input_ids / position_ids [b, 1], attention_mask [b, 2..max_context],
             past [b, H, 1..max_context-1, D];
    b = 1..max_batch. Opt: opt_batch, opt_seq tokens (prefill), opt_context total (decode).
    """
    lay = _as_layout(info)
    B, ob = shapes.max_batch, shapes.opt_batch
    S, os_ = shapes.max_seq, shapes.seq_opt
    C, oc = shapes.max_context, shapes.context_opt
    H, D = lay.kv_heads, lay.head_dim

    def kv(p_min, p_opt, p_max):
        return (1, H, p_min, D), (ob, H, p_opt, D), (B, H, p_max, D)

    tokens = ((1, 1), (ob, os_), (B, S))
    prefill = {"input_ids": tokens, "attention_mask": tokens, "position_ids": tokens}
    one = ((1, 1), (ob, 1), (B, 1))
    decode = {"input_ids": one, "attention_mask": ((1, 2), (ob, oc), (B, C)), "position_ids": one}
    out = {"prefill": {}, "decode": {}}
    for name in lay.inputs:                                   # graph order
        if name.startswith("past_key_values."):
            out["prefill"][name] = kv(0, 0, 0)
            out["decode"][name] = kv(1, oc - 1, C - 1)
        else:
            out["prefill"][name] = prefill[name]
            out["decode"][name] = decode[name]
    return out


def check_profile(profile: Profile) -> None:
    """min <= opt <= max elementwise, same rank, no negative extent (TensorRT's own rule)."""
    for name, (lo, opt, hi) in profile.items():
        if not len(lo) == len(opt) == len(hi):
            raise TrtError(f"profile of {name}: ranks differ {lo} {opt} {hi}")
        if not all(0 <= a <= b <= c for a, b, c in zip(lo, opt, hi)):
            raise TrtError(f"profile of {name}: needs 0 <= min <= opt <= max, got {lo} {opt} {hi}")


# ---------------------------------------------------------------------------------------------
# precision


@dataclass(frozen=True)
class Precision:
    strongly_typed: bool
    flags: tuple[str, ...]          # trtexec precision flags
    builder_flags: tuple[str, ...]  # trt.BuilderFlag names to set
    no_tf32: bool


def default_precision(info: dict | ExportLayout) -> str:
    """fp16 for float32 and float16 exports, bf16 for bfloat16 ones."""
    return "bf16" if _as_layout(info).dtype == "bfloat16" else "fp16"


def resolve_precision(graph: str, precision: str, strongly_typed: bool | None) -> Precision:
    """How to get ``precision`` out of a graph typed ``graph``.

    Strongly typed (TensorRT >= 10; the only mode of TensorRT 11): every tensor keeps the graph's
    type, so the precision IS the graph's dtype and no --fp16/--bf16 may be given. Weakly typed
    (TensorRT 10 only): a float32 graph plus --fp16/--bf16 lets TensorRT pick lower precision per
    layer. ``strongly_typed=None`` picks strongly typed whenever the graph already has the
    requested dtype. fp32 turns TF32 off (exact float32 matmuls, for comparisons).
    """
    if precision not in PRECISIONS:
        raise TrtError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    want = _PRECISION_DTYPE[precision]
    if strongly_typed is None:
        strongly_typed = want == graph
    if strongly_typed and want != graph:
        hint = ("re-export with `vq2trt export --dtype float16`" if want == "float16"
                else f"re-export in {want}" if want != "float32" else "re-export in float32")
        raise TrtError(f"a strongly typed engine runs in the graph's own dtype ({graph}), not {precision}: "
                       f"{hint}, or build weakly typed (--no-strongly-typed) from a float32 graph")
    if not strongly_typed and graph != "float32" and want != graph:
        raise TrtError(f"the graph is {graph}; a {precision} engine needs a float32 or {want} export")
    no_tf32 = want == "float32"
    if strongly_typed:
        return Precision(True, ("--stronglyTyped",), (), no_tf32)
    flags = {"float16": ("--fp16",), "bfloat16": ("--bf16",), "float32": ()}[want]
    builder = {"float16": ("FP16",), "bfloat16": ("BF16",), "float32": ()}[want]
    return Precision(False, flags, builder, no_tf32)


# ---------------------------------------------------------------------------------------------
# command lines


def _dims(shape: Shape, sep: str = "x") -> str:
    return sep.join(str(d) for d in shape)


PAST_WILDCARD = "past_key_values.*"


def _collapse_past(shapes: dict) -> dict:
    """The cache inputs all share one shape: trtexec (TensorRT >= 10.3) takes one name with a '*'
    wildcard for them, which keeps a 30-layer command short."""
    past = {v for k, v in shapes.items() if k.startswith("past_key_values.")}
    if len(past) != 1:
        return dict(shapes)
    out = {k: v for k, v in shapes.items() if not k.startswith("past_key_values.")}
    out[PAST_WILDCARD] = past.pop()
    return out


def _trtexec_shapes(profile: Profile, which: int) -> str:
    # trtexec splits a spec on ',' and a name from its dims at the last ':', so dotted names
    # (past_key_values.0.key) need no quoting.
    return ",".join(f"{name}:{_dims(s[which])}" for name, s in _collapse_past(profile).items())


def trtexec_command(onnx_dir: str | os.PathLike, engine: str | os.PathLike, *, plugin_library: str | os.PathLike,
                    target: str = "datacenter", precision: str = "fp16", strongly_typed: bool | None = None,
                    shapes: EngineShapes | None = None, dynamic_plugins: bool = False,
                    workspace_mib: int | None = None, builder_optimization_level: int | None = None,
                    skip_inference: bool = True, info: dict | ExportLayout | None = None,
                    trtexec: str = "trtexec") -> list[str]:
    """The trtexec argv that builds the engine build_engine() builds (TensorRT 10.x flags).

    Static plugins (default): --staticPlugins loads the library, whose creators register
    themselves at load. dynamic_plugins: --dynamicPlugins (the library's getCreators) plus
    --setPluginsToSerialize, which writes the library into the engine; TensorRT loads an embedded
    library only for version-compatible engines, so load it at run time either way.
    """
    lay = _as_layout(info) if info is not None else load_layout(onnx_dir)
    shapes = shapes or EngineShapes.for_target(target)
    d = _target(target)
    prec = resolve_precision(lay.dtype, precision, strongly_typed)
    lib = str(plugin_library)
    cmd = [trtexec, f"--onnx={Path(onnx_dir) / MODEL_FILE}", f"--saveEngine={engine}"]
    if dynamic_plugins:
        cmd += [f"--dynamicPlugins={lib}", f"--setPluginsToSerialize={lib}"]
    else:
        cmd += [f"--staticPlugins={lib}"]
    cmd += list(prec.flags)
    if prec.no_tf32:
        cmd.append("--noTF32")
    if workspace_mib is not None and workspace_mib < 1:
        raise TrtError(f"workspace must be at least 1 MiB, got {workspace_mib}")
    cmd.append(f"--memPoolSize=workspace:{workspace_mib or d.workspace_mib}M")
    if builder_optimization_level is not None:
        if not 0 <= builder_optimization_level <= 5:
            raise TrtError(f"builder optimization level must be 0..5, got {builder_optimization_level}")
        cmd.append(f"--builderOptimizationLevel={builder_optimization_level}")
    # --profile=N must be followed directly by that profile's three shape flags.
    for i, prof in enumerate(profiles(lay, shapes).values()):
        check_profile(prof)
        cmd += [f"--profile={i}", f"--minShapes={_trtexec_shapes(prof, 0)}",
                f"--optShapes={_trtexec_shapes(prof, 1)}", f"--maxShapes={_trtexec_shapes(prof, 2)}"]
    if skip_inference:
        cmd.append("--skipInference")
    return cmd


def format_command(argv: list[str]) -> str:
    """A shell command with one option (and its values) per line, backslash continuations, every
    word quoted as shlex.join quotes it: what export/TENSORRT.md shows and a user pastes."""
    lines, cur = [], []
    for word in argv:
        if word.startswith("--") and cur:
            lines.append(cur)
            cur = []
        cur.append(word)
    lines.append(cur)
    return " \\\n    ".join(shlex.join(line) for line in lines)


def step_shapes(info: dict | ExportLayout, *, batch: int = 1, seq: int = 1, past: int = 0) -> dict[str, Shape]:
    """Every input's shape for one forward of ``seq`` new tokens after ``past`` cached ones."""
    lay = _as_layout(info)
    out = {}
    for name in lay.inputs:
        if name.startswith("past_key_values."):
            out[name] = (batch, lay.kv_heads, past, lay.head_dim)
        else:
            out[name] = (batch, past + seq) if name == "attention_mask" else (batch, seq)
    return out


def trtexec_run_command(engine: str | os.PathLike, info: dict | ExportLayout, *, plugin_library: str | os.PathLike,
                        batch: int = 1, seq: int = 1, past: int = 0, trtexec: str = "trtexec") -> list[str]:
    """trtexec argv that loads an engine and times one step: a prefill of ``seq`` tokens when
    ``past`` is 0 (profile 0), else a decode step (seq 1, profile 1)."""
    profile = 0 if past == 0 else 1
    if profile == 1 and seq != 1:
        raise TrtError(f"a step with past {past} is a decode step: seq must be 1, got {seq}")
    step = _collapse_past(step_shapes(info, batch=batch, seq=seq, past=past))
    spec = ",".join(f"{n}:{_dims(s)}" for n, s in step.items())
    return [trtexec, f"--loadEngine={engine}", f"--staticPlugins={plugin_library}", f"--useProfile={profile}",
            f"--shapes={spec}"]


def polygraphy_command(onnx_dir: str | os.PathLike, *, plugin_library: str | os.PathLike, target: str = "datacenter",
                       precision: str = "fp16", strongly_typed: bool | None = None,
                       shapes: EngineShapes | None = None, engine: str | os.PathLike | None = None,
                       workspace_mib: int | None = None, info: dict | ExportLayout | None = None) -> list[str]:
    """`polygraphy run` argv: builds the same two-profile engine through polygraphy (plugin library
    loaded with --plugins) and runs one prefill of opt_seq tokens on random data.

    Only TensorRT runs here: polygraphy's --onnxrt backend cannot load the VQGemm custom-op library,
    so TensorRT against ONNX Runtime and PyTorch is `vq2trt compare --trt` (Python API)."""
    lay = _as_layout(info) if info is not None else load_layout(onnx_dir)
    shapes = shapes or EngineShapes.for_target(target)
    d = _target(target)
    prec = resolve_precision(lay.dtype, precision, strongly_typed)
    cmd = ["polygraphy", "run", str(Path(onnx_dir) / MODEL_FILE), "--trt", "--plugins", str(plugin_library)]
    if prec.strongly_typed:
        cmd.append("--strongly-typed")
    cmd += [f for f in prec.flags if f != "--stronglyTyped"]             # --fp16 / --bf16: same names
    # polygraphy leaves TF32 off unless --tf32 is given, which matches trtexec --noTF32 for fp32
    cmd += ["--pool-limit", f"workspace:{workspace_mib or d.workspace_mib}M"]
    for prof in profiles(lay, shapes).values():
        for flag, which in (("--trt-min-shapes", 0), ("--trt-opt-shapes", 1), ("--trt-max-shapes", 2)):
            cmd += [flag, *[f"{n}:[{_dims(s[which], ',')}]" for n, s in prof.items()]]
    step = step_shapes(lay, batch=1, seq=shapes.seq_opt, past=0)
    cmd += ["--input-shapes", *[f"{n}:[{_dims(s, ',')}]" for n, s in step.items()]]
    cmd += ["--val-range", f"input_ids:[0,{lay.vocab_size - 1}]", "attention_mask:[1,1]",
            f"position_ids:[0,{shapes.seq_opt - 1}]"]
    if engine is not None:
        cmd += ["--save-engine", str(engine)]
    return cmd


# ---------------------------------------------------------------------------------------------
# building with TensorRT's Python API


def import_tensorrt():
    """The tensorrt module, or ImportError naming what to install."""
    try:
        import tensorrt
    except (ImportError, OSError) as e:           # OSError: the package is there, libnvinfer is not
        raise ImportError("building TensorRT engines needs TensorRT's Python package: pip install 'vq2trt[tensorrt]' "
                          "(x86_64/SBSA with CUDA 12/13), or on Jetson the python3-libnvinfer package of "
                          "JetPack") from e
    return tensorrt


def plugin_identity() -> tuple[str, str, str]:
    """(name, version, namespace) the parser looks the VQGemm plugin up by (export/vqgemm_op.json)."""
    from vq2trt.export.op import schema

    s = schema()
    return s["name"], s["plugin_version"], s["plugin_namespace"]


def load_plugin_library(trt, library: str | os.PathLike, *, dynamic: bool = False):
    """Makes the VQGemm creator visible in TensorRT's plugin registry and returns it.

    static: dlopen the library (RTLD_GLOBAL); its creators register themselves at load.
    dynamic: IPluginRegistry.load_library, which calls the library's getCreators."""
    import ctypes

    registry = trt.get_plugin_registry()
    name, version, namespace = plugin_identity()
    if dynamic:
        if registry.load_library(str(library)) is None:
            raise TrtError(f"TensorRT could not load the plugin library {library} (does it export getCreators?)")
    else:
        ctypes.CDLL(str(library), mode=ctypes.RTLD_GLOBAL)
    creator = registry.get_creator(name, version, namespace)
    if creator is None:
        raise TrtError(f"{library} loaded, but TensorRT's registry has no plugin {name!r} version {version!r} "
                       f"namespace {namespace!r}; was the library built against this TensorRT?")
    return creator


def _parser_errors(parser) -> str:
    lines = []
    for i in range(parser.num_errors):
        e = parser.get_error(i)
        where = e.node_name() or (f"node #{e.node()}" if e.node() >= 0 else "graph")
        op = e.node_operator()
        lines.append(f"  {where}{f' ({op})' if op else ''}: {e.desc()}")
    return "\n".join(lines)


def build_engine(onnx_dir: str | os.PathLike, engine: str | os.PathLike | None = None, *,
                 plugin_library: str | os.PathLike | None = None, target: str = "datacenter",
                 precision: str = "fp16", strongly_typed: bool | None = None, shapes: EngineShapes | None = None,
                 dynamic_plugins: bool = False, workspace_mib: int | None = None,
                 builder_optimization_level: int | None = None, log=print) -> Path:
    """Builds the two-profile engine and writes it atomically (temp file + rename).

    Checks the export and the plugin library first; without `tensorrt` raises TensorRTNotFound
    whose ``command`` is the equivalent trtexec argv."""
    from vq2trt.runtime.library import LibraryNotFound, get_trt_library_path

    onnx_dir = Path(onnx_dir)
    lay = load_layout(onnx_dir)
    engine = Path(engine) if engine is not None else default_engine_path(onnx_dir, target, precision)
    if plugin_library is None:
        lib = get_trt_library_path()
    else:
        lib = Path(plugin_library)
        if not lib.is_file():
            raise LibraryNotFound(f"plugin library {lib} is not a file; build it with `make plugins`")
    shapes = shapes or EngineShapes.for_target(target)
    prec = resolve_precision(lay.dtype, precision, strongly_typed)
    cmd = trtexec_command(onnx_dir, engine, plugin_library=lib, target=target, precision=precision,
                          strongly_typed=prec.strongly_typed, shapes=shapes, dynamic_plugins=dynamic_plugins,
                          workspace_mib=workspace_mib, builder_optimization_level=builder_optimization_level,
                          info=lay)
    try:
        trt = import_tensorrt()
    except ImportError as e:
        raise TensorRTNotFound(cmd, str(e.__cause__ or e)) from e

    logger = trt.Logger(trt.Logger.WARNING)
    load_plugin_library(trt, lib, dynamic=dynamic_plugins)
    log(f"TensorRT {trt.__version__}: plugin library {lib}")
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if prec.strongly_typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    log(f"parsing {onnx_dir / MODEL_FILE}")
    if not parser.parse_from_file(str(onnx_dir / MODEL_FILE)):     # from a file: finds model.onnx.data
        raise TrtError(f"TensorRT's ONNX parser rejected {onnx_dir / MODEL_FILE}:\n{_parser_errors(parser)}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, (workspace_mib or _target(target).workspace_mib) << 20)
    for f in prec.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, f))
    if prec.no_tf32:
        config.clear_flag(trt.BuilderFlag.TF32)
    if builder_optimization_level is not None:
        config.builder_optimization_level = builder_optimization_level
    if dynamic_plugins:
        config.plugins_to_serialize = [str(lib)]
    for name, prof in profiles(lay, shapes).items():
        p = builder.create_optimization_profile()
        for tensor, (lo, opt, hi) in prof.items():
            p.set_shape(tensor, lo, opt, hi)
        index = config.add_optimization_profile(p)
        log(f"profile {index} ({name}): " + ", ".join(f"{t} {lo}..{hi}" for t, (lo, _, hi) in list(prof.items())[:4])
            + ", ...")
    log(f"building ({precision}, {'strongly' if prec.strongly_typed else 'weakly'} typed); this takes minutes")
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise TrtError("TensorRT failed to build the engine; the messages above say why")
    engine.parent.mkdir(parents=True, exist_ok=True)
    tmp = engine.with_name(f".{engine.name}.{os.getpid()}.partial")
    try:
        with open(tmp, "wb") as f:
            f.write(memoryview(plan))
        os.replace(tmp, engine)
    finally:
        tmp.unlink(missing_ok=True)
    log(f"wrote {engine} ({engine.stat().st_size / 2**20:.1f} MiB)")
    return engine


def default_engine_path(onnx_dir: str | os.PathLike, target: str, precision: str) -> Path:
    return Path(onnx_dir) / f"model.{target}.{precision}.engine"

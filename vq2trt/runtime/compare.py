"""Polygraphy accuracy comparison of an exported model: ONNX Runtime (VQGemm library loaded)
against the PyTorch reference model and, for information, against the float export.

Polygraphy's `--onnxrt` command line cannot load a custom-op library (FACTS.md), so the ORT
session is built here and handed to `OnnxrtRunner`. torch is imported only by the PyTorch runner.
With ``trt`` a TensorRT engine (libvq2trt_trt.so loaded through polygraphy's `LoadPlugins`, the
prefill and decode profiles of vq2trt.runtime.trt) joins the comparison; tensorrt is imported only then.
"""

from __future__ import annotations

import contextlib
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vq2trt.runtime.session import MODEL_FILE, RunError, create_session, log_softmax, logits_mode, read_info

# accuracy_level 0: ORT's VQGemm and the PyTorch reference use the same fp16 codebooks and float32
# arithmetic and differ only in summation order (~1e-6 relative per dot product); over 30 layers
# that grows to ~1e-4 of the output's scale, and lands anywhere, near-zero logits included
# (SmolLM2, `make demo`: max |err| 2.2e-3 on logits whose largest is ~14, i.e. 1.6e-4 of it; an
# older kernel build 5.6e-3). A fixed atol would pass or fail on where that noise lands, so each
# output's atol is SCALE_ATOL times its largest reference magnitude (over all feeds), and rtol
# covers the large elements. A real defect (a wrong index, scale or codebook row) moves logits by
# the quantization error's order (max |err| ~7 against the float export), thousands of times more.
TOLERANCES = {0: dict(scale_atol=1e-3, rtol=2e-3)}
# accuracy_level 4 rounds activations to int8 (per 256 columns after a float32 head of the 64
# most salient): single elements move by up to a few units where rounding hits a large key, so an
# elementwise bound says little. It is judged by what generation sees: the mean KL divergence of
# the next-token distributions. SmolLM2 at 2 bits measures 0.005 nats/token on real text and
# 0.04 on these feeds (random past keys/values); its quantization error against float is ~7.
KL_LIMIT = 0.1


def feeds_for(info: dict, prompt_ids: list[int], decode_steps: int = 2) -> list[OrderedDict]:
    """A prefill of the prompt and then decode steps with a past of the prompt's length (zeros:
    the comparison needs a fixed past, not a meaningful one)."""
    P = len(prompt_ids)
    L, H, D = int(info["num_layers"]), int(info["num_key_value_heads"]), int(info["head_dim"])
    rng = np.random.default_rng(0)
    feeds = []
    for past_len, ids in [(0, prompt_ids)] + [(P + s, [prompt_ids[s % P]]) for s in range(decode_steps)]:
        S = len(ids)
        f = OrderedDict(input_ids=np.array([ids], np.int64),
                        attention_mask=np.ones((1, past_len + S), np.int64),
                        position_ids=np.arange(past_len, past_len + S, dtype=np.int64)[None])
        for i in range(L):
            for t in ("key", "value"):
                f[f"past_key_values.{i}.{t}"] = rng.standard_normal((1, H, past_len, D)).astype(np.float32)
        feeds.append(f)
    return feeds


def torch_runner(checkpoint: str | Path, info: dict):
    """A polygraphy runner over the PyTorch model (VQLinear reference path) in the export's decoder."""
    from polygraphy.backend.base import BaseRunner
    from polygraphy.common import TensorMetadata

    class TorchRunner(BaseRunner):
        def __init__(self):
            super().__init__(name="pytorch-reference", prefix="pytorch-runner")

        def activate_impl(self):
            from vq2trt.export.decoder import ExportDecoder
            from vq2trt.io import is_quantized_checkpoint, load_quantized
            from vq2trt.models import load_model

            if is_quantized_checkpoint(checkpoint):
                model = load_quantized(checkpoint)
            else:
                model, _ = load_model(str(checkpoint))
            self.decoder = ExportDecoder(model, logits=logits_mode(info)).eval()

        def get_input_metadata_impl(self):
            meta = TensorMetadata()
            kv = ("batch", int(info["num_key_value_heads"]), "past", int(info["head_dim"]))
            for name in info["inputs"]:
                if name.startswith("past_key_values"):
                    meta.add(name, np.float32, kv)
                else:
                    meta.add(name, np.int64, ("batch", "total" if name == "attention_mask" else "seq"))
            return meta

        def infer_impl(self, feed_dict):
            import torch

            args = [torch.from_numpy(np.ascontiguousarray(feed_dict[n])) for n in info["inputs"]]
            t = time.perf_counter()
            with torch.no_grad():
                outs = self.decoder(*args)
            self.inference_time = time.perf_counter() - t
            return OrderedDict((n, o.numpy()) for n, o in zip(info["outputs"], outs))

        def deactivate_impl(self):
            del self.decoder

    return TorchRunner()


@dataclass
class PairResult:
    a: str
    b: str
    max_abs: float
    mean_abs: float
    max_rel: float
    kl: float                # mean KL(reference || runner) of next-token distributions, nats
    top1: float              # share of positions whose most likely next token agrees
    passed: bool | None      # None: informational (quantized vs float)


def _errors(ra, rb, outputs) -> tuple[float, float, float]:
    mx, mean, rel = 0.0, [], 0.0
    for fa, fb in zip(ra, rb):
        for n in outputs:
            a, b = np.asarray(fa[n], np.float64), np.asarray(fb[n], np.float64)
            d = np.abs(a - b)
            if d.size:
                mx, rel = max(mx, float(d.max())), max(rel, float(d.max() / (np.abs(b).max() + 1e-12)))
                mean.append(float(d.mean()))
    return mx, float(np.mean(mean)) if mean else 0.0, rel


def scaled_atol(reference: list[dict], outputs: list[str], scale: float) -> dict[str, float]:
    """Per output: ``scale`` times its largest magnitude in the reference over all feeds (a
    floor of 1e-30 so an all-zero output still demands equality, up to denormals)."""
    return {n: scale * max([float(np.abs(np.asarray(f[n])).max()) for f in reference if np.asarray(f[n]).size]
                           + [1e-30 / scale]) for n in outputs}


def _distribution_gap(ra, rb) -> tuple[float, float]:
    """(mean KL(b || a) over all positions, top-1 agreement) of the logits."""
    kls, agree = [], []
    for fa, fb in zip(ra, rb):
        la = log_softmax(np.asarray(fa["logits"], np.float64).reshape(-1, fa["logits"].shape[-1]))
        lb = log_softmax(np.asarray(fb["logits"], np.float64).reshape(-1, fb["logits"].shape[-1]))
        kls.extend((np.exp(lb) * (lb - la)).sum(axis=-1).tolist())
        agree.extend((la.argmax(-1) == lb.argmax(-1)).tolist())
    return float(np.mean(kls)), float(np.mean(agree))


TRT_NAME = "tensorrt+vq2trt"


def _require_tensorrt():
    """tensorrt and polygraphy's TensorRT backend, or a RunError saying what to install."""
    from vq2trt.runtime.trt import TrtError

    try:
        import tensorrt  # noqa: F401
        from polygraphy.backend.trt import TrtRunner  # noqa: F401
    except (ImportError, OSError) as e:               # OSError: the package is there, libnvinfer is not
        raise TrtError(f"`compare --trt` needs TensorRT's Python package and polygraphy ({e}): "
                       "pip install 'vq2trt[tensorrt]' (on Jetson: JetPack's python3-libnvinfer)") from e


def trt_runner(onnx_dir: str | Path, info: dict, engine: str | Path | None, *, max_seq: int, max_context: int,
               precision: str = "fp32", plugin_library: str | Path | None = None):
    """A polygraphy TrtRunner over the two-profile engine (``engine``: a file to load, or None to
    build one sized for the comparison's feeds). It switches to the decode profile whenever the
    feed carries a past."""
    _require_tensorrt()
    from polygraphy.backend.common import BytesFromPath
    from polygraphy.backend.trt import (
        CreateConfig,
        EngineFromBytes,
        EngineFromNetwork,
        LoadPlugins,
        NetworkFromOnnxPath,
        Profile,
        TrtRunner,
    )

    from vq2trt.runtime.library import get_trt_library_path
    from vq2trt.runtime.trt import EngineShapes, layout, profiles, resolve_precision

    lib = str(plugin_library or get_trt_library_path())
    lay = layout(info)
    if engine is not None:
        load = LoadPlugins(plugins=[lib], obj=EngineFromBytes(BytesFromPath(str(engine))))
    else:
        prec = resolve_precision(lay.dtype, precision, None)
        shapes = EngineShapes(max_batch=1, max_seq=max_seq, max_context=max_context, opt_seq=max_seq)
        trt_profiles = []
        for prof in profiles(lay, shapes).values():
            p = Profile()
            for name, (lo, opt, hi) in prof.items():
                p.add(name, lo, opt, hi)
            trt_profiles.append(p)
        network = LoadPlugins(plugins=[lib], obj=NetworkFromOnnxPath(str(Path(onnx_dir) / MODEL_FILE),
                                                                     strongly_typed=prec.strongly_typed))
        config = CreateConfig(profiles=trt_profiles, tf32=False, fp16="FP16" in prec.builder_flags,
                              bf16="BF16" in prec.builder_flags)
        load = EngineFromNetwork(network, config=config)
    first_past = next(n for n in lay.inputs if n.startswith("past_key_values."))

    class TwoProfileRunner(TrtRunner):
        def infer(self, feed_dict, *args, **kwargs):
            self.set_profile(0 if feed_dict[first_past].shape[2] == 0 else 1)   # prefill : decode
            return super().infer(feed_dict, *args, **kwargs)

    return TwoProfileRunner(load, name=TRT_NAME)


def compare(onnx_dir: str | Path, *, checkpoint: str | Path | None = None, float_onnx: str | Path | None = None,
            prompt_ids: list[int] | None = None, decode_steps: int = 2, threads: int | None = None,
            trt: bool | str | Path = False, trt_precision: str = "fp32", verbose: bool = False) -> list[PairResult]:
    """``trt``: False (no TensorRT), True or "build" (build an engine for these feeds), or an
    engine file built by `vq2trt build-engine` (prefill profile 0, decode profile 1).
    ``verbose``: polygraphy's own log (per-output statistics, ~1,700 lines for SmolLM2); by default
    only its warnings and errors, since the caller prints the table that matters."""
    info = read_info(onnx_dir)
    if float_onnx and logits_mode(read_info(float_onnx)) != logits_mode(info):
        raise RunError(f"{float_onnx} has logits {logits_mode(read_info(float_onnx))!r} and {onnx_dir} "
                       f"{logits_mode(info)!r}: export both with the same --logits")
    if trt:
        _require_tensorrt()                       # before any slow work
    from polygraphy.logger import G_LOGGER

    with contextlib.nullcontext() if verbose else G_LOGGER.verbosity(G_LOGGER.WARNING):
        return _compare(onnx_dir, info, checkpoint, float_onnx, prompt_ids, decode_steps, threads, trt, trt_precision)


def _compare(onnx_dir, info, checkpoint, float_onnx, prompt_ids, decode_steps, threads, trt,
             trt_precision) -> list[PairResult]:
    from polygraphy.backend.onnxrt import OnnxrtRunner
    from polygraphy.comparator import Comparator, CompareFunc

    level = int(info.get("accuracy_level", 0))
    prompt_ids = prompt_ids or [int(i) % int(info["vocab_size"]) for i in (1, 504, 3458, 282, 4649, 314)]
    feeds = feeds_for(info, prompt_ids, decode_steps)
    runners = [OnnxrtRunner(create_session(onnx_dir, threads=threads), name="onnxruntime+vq2trt")]
    ckpt = checkpoint or info.get("source")
    if ckpt:
        runners.append(torch_runner(ckpt, info))
    if float_onnx:
        runners.append(OnnxrtRunner(create_session(float_onnx, threads=threads), name="onnxruntime-float"))
    if trt:
        engine = None if trt is True or trt == "build" else trt
        runners.append(trt_runner(onnx_dir, info, engine, max_seq=len(prompt_ids),
                                  max_context=len(prompt_ids) + decode_steps + 1, precision=trt_precision))
    results = Comparator.run(runners, data_loader=feeds)
    by_name = {name: [dict(f) for f in outs] for name, outs in results}
    outputs = ["logits"] + [n for n in info["outputs"] if n.startswith("present")]
    rows = []
    if ckpt:
        a, b = by_name["onnxruntime+vq2trt"], by_name["pytorch-reference"]
        kl, top1 = _distribution_gap(a, b)
        if level in TOLERANCES:
            tol = TOLERANCES[level]
            func = CompareFunc.simple(atol=scaled_atol(b, outputs, tol["scale_atol"]), rtol=tol["rtol"])
            ok = bool(Comparator.compare_accuracy(results, compare_func=func, comparisons=[(0, 1)]))
        else:
            ok = kl <= KL_LIMIT
        rows.append(PairResult("onnxruntime+vq2trt", "pytorch-reference", *_errors(a, b, outputs), kl, top1, ok))
    if float_onnx:
        a, b = by_name["onnxruntime+vq2trt"], by_name["onnxruntime-float"]
        rows.append(PairResult("onnxruntime+vq2trt", "onnxruntime-float", *_errors(a, b, ["logits"]),
                               *_distribution_gap(a, b), None))
    if trt:
        names = [name for name, _ in results]
        t = names.index(TRT_NAME)
        # judged against the PyTorch reference when there is one, else against ORT
        for ref in (["pytorch-reference"] if ckpt else []) + ["onnxruntime+vq2trt"]:
            a, b = by_name[TRT_NAME], by_name[ref]
            kl, top1 = _distribution_gap(a, b)
            judged = ref == ("pytorch-reference" if ckpt else "onnxruntime+vq2trt")
            if not judged:
                ok = None
            elif trt_precision == "fp32" and level in TOLERANCES:
                tol = TOLERANCES[level]
                func = CompareFunc.simple(atol=scaled_atol(b, outputs, tol["scale_atol"]), rtol=tol["rtol"])
                ok = bool(Comparator.compare_accuracy(results, compare_func=func, comparisons=[(t, names.index(ref))]))
            else:
                ok = kl <= KL_LIMIT          # fp16/bf16 engines: judged by what generation sees
            rows.append(PairResult(TRT_NAME, ref, *_errors(a, b, outputs), kl, top1, ok))
    return rows

"""vq2trt command line: thin; parses, calls the package, prints."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from vq2trt.config import PRESETS, ConfigError

EXIT_USAGE = 2


def _user_errors() -> tuple[type[Exception], ...]:
    from vq2trt.data import DataError
    from vq2trt.evaluate import EvalError
    from vq2trt.format import FormatError
    from vq2trt.io import CheckpointError
    from vq2trt.models import ModelLoadError
    from vq2trt.quantize import QuantizeError
    return ConfigError, FormatError, CheckpointError, ModelLoadError, DataError, EvalError, QuantizeError, \
        FileNotFoundError


def _work_dir(out: Path) -> Path:
    return out.parent / f".{out.name}.partial"


def cmd_quantize(a: argparse.Namespace) -> int:
    import shutil

    import torch

    from vq2trt.config import resolve_config
    from vq2trt.data import calibration_batch, read_text
    from vq2trt.io import save_quantized, save_simulated
    from vq2trt.models import load_model
    from vq2trt.quantize import quantize

    out = Path(a.out)
    if out.exists() and not a.overwrite:
        raise ConfigError(f"output folder {out} already exists; choose another or pass --overwrite")
    config = resolve_config(a.config, seed=a.seed, calib_samples=a.samples, calib_seqlen=a.seqlen,
                            finetune_steps=a.finetune_steps, kmeans_iters=a.kmeans_iters)
    text = read_text(a.calib)                   # fail on bad calibration data before any work
    if a.threads:
        torch.set_num_threads(a.threads)
    model, tokenizer = load_model(a.model)
    if tokenizer is None:
        raise ConfigError(f"{a.model} has no tokenizer; calibration text cannot be tokenized")
    calib = calibration_batch(tokenizer, text, config.calib_samples, config.calib_seqlen, config.seed)
    work = _work_dir(out)
    if a.no_resume and work.exists():
        shutil.rmtree(work)
    result = quantize(model, config, calib, work_dir=work, device=a.device, progress=not a.quiet)
    save = save_quantized if config.method == "vptq" else save_simulated
    save(model, config, out, tokenizer=tokenizer, overwrite=a.overwrite)
    shutil.rmtree(work, ignore_errors=True)
    n = len(result.reports)
    print(f"quantized {n} Linear layers with {config.method} in {result.seconds:.1f} s")
    print(f"all-in bits per weight over quantized Linears: {result.bits_per_weight:.3f}")
    print(f"mean proxy error tr(dW H dW^T)/tr(W H W^T): {sum(r.proxy_err for r in result.reports) / max(n, 1):.4f}")
    print(f"wrote {out}")
    return 0


def _load_any(path: str, device: str | None):
    from vq2trt.io import is_quantized_checkpoint, load_quantized
    from vq2trt.models import load_model

    if is_quantized_checkpoint(path):
        model, tok = load_quantized(path, device=device or "cpu", with_tokenizer=True)
        return model, tok, True
    model, tok = load_model(path, device=device or "cpu")
    return model, tok, False


def size_summary(model) -> str:
    """Bytes of the Linear weights that quantization replaces, quantized vs fp16."""
    from torch import nn

    from vq2trt.nn import VQLinear

    vq = [m for m in model.modules() if isinstance(m, VQLinear)]
    if vq:
        ws = [m.to_vqweight() for m in vq]
        bits = sum(w.stored_bits() for w in ws)
        n = sum(w.out_features * w.in_features for w in ws)
        return (f"quantized Linears: {bits / 8 / 2**20:.2f} MiB for {n / 1e6:.1f} M weights "
                f"({bits / n:.3f} bits/weight all-in; fp16 would be {n * 2 / 2**20:.2f} MiB)")
    n = sum(m.weight.numel() for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and "lm_head" not in name)
    return f"float Linears (lm_head excluded): {n / 1e6:.1f} M weights, {n * 2 / 2**20:.2f} MiB at fp16"


def cmd_eval(a: argparse.Namespace) -> int:
    import torch

    from vq2trt.data import read_text, tokenize_for_eval, wikitext_file
    from vq2trt.evaluate import generate_greedy, perplexity

    text_path = a.text or wikitext_file("test")
    text = read_text(text_path)
    if a.threads:
        torch.set_num_threads(a.threads)
    model, tok, quantized = _load_any(a.model, a.device)
    if tok is None:
        raise ConfigError(f"{a.model} has no tokenizer; cannot evaluate on text")
    ids = tokenize_for_eval(tok, text)
    t0 = time.perf_counter()
    r = perplexity(model, ids, ctx=a.ctx, windows=a.windows, progress=not a.quiet)
    kind = "quantized" if quantized else "float"
    print(f"{kind} model {a.model}")
    print(f"perplexity {r['ppl']:.3f} on {Path(text_path).name}: {r['windows']} windows of {a.ctx} tokens "
          f"({r['tokens']} predicted tokens, {time.perf_counter() - t0:.1f} s)")
    print(size_summary(model))
    if a.max_new_tokens > 0:
        print(f"greedy: {a.prompt!r} -> {generate_greedy(model, tok, a.prompt, a.max_new_tokens)!r}")
    return 0


def cmd_info(a: argparse.Namespace) -> int:
    from vq2trt.format import VQWeight
    from vq2trt.io import read_checkpoint_config, read_tensors

    path = Path(a.checkpoint)
    _, qc = read_checkpoint_config(path)
    tensors = read_tensors(path)
    print(f"{path}: method {qc.method}, v={qc.vector_len}, k={qc.num_centroids}, residual k={qc.num_res_centroids}, "
          f"outliers {qc.outlier_frac:.2%}, groups {qc.num_groups}, norm {qc.enable_norm}")
    print(f"{'layer':48s} {'shape':>12s} {'bpw':>6s}")
    for name in sorted(k[:-8] for k in tensors if k.endswith(".vq_dims")):
        w = VQWeight.from_tensors({k[len(name) + 1:]: v for k, v in tensors.items() if k.startswith(name + ".")},
                                  where=name)
        print(f"{name:48s} {w.out_features:>5d}x{w.in_features:<6d} {w.bits_per_weight():6.3f}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vq2trt", description="~2-bit vector-quantized LLMs for TensorRT and ONNX Runtime")
    sub = p.add_subparsers(dest="command", required=True)

    q = sub.add_parser("quantize", help="quantize a Hugging Face causal LM (folder or GGUF file)")
    q.add_argument("model", help="HF model folder or .gguf file")
    q.add_argument("--config", default="v4-k256",
                   help=f"preset ({', '.join(PRESETS)}) or a JSON file of QuantConfig fields (default v4-k256)")
    q.add_argument("--calib", required=True, help="calibration text file (e.g. wiki.valid.tokens)")
    q.add_argument("--out", required=True, help="checkpoint folder to write (must not exist)")
    q.add_argument("--samples", type=int, help="calibration sequences (overrides the config)")
    q.add_argument("--seqlen", type=int, help="tokens per calibration sequence")
    q.add_argument("--seed", type=int)
    q.add_argument("--kmeans-iters", type=int)
    q.add_argument("--finetune-steps", type=int, help="layer-wise fine-tuning steps (0 = off)")
    q.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    q.add_argument("--threads", type=int, help="torch CPU threads")
    q.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    q.add_argument("--no-resume", action="store_true", help="discard finished layers of an interrupted run")
    q.add_argument("--quiet", action="store_true", help="no progress bars")
    q.set_defaults(func=cmd_quantize)

    e = sub.add_parser("eval", help="perplexity and a greedy generation (quantized checkpoint or float model)")
    e.add_argument("model", help="vq2trt checkpoint, HF folder or .gguf file")
    e.add_argument("--text", help="evaluation text (default: WikiText-2 raw test)")
    e.add_argument("--ctx", type=int, default=2048, help="tokens per window (default 2048)")
    e.add_argument("--windows", type=int, default=16, help="windows from the start (default 16; 0 = all)")
    e.add_argument("--prompt", default="The capital of France is")
    e.add_argument("--max-new-tokens", type=int, default=24)
    e.add_argument("--device")
    e.add_argument("--threads", type=int)
    e.add_argument("--quiet", action="store_true")
    e.set_defaults(func=cmd_eval)

    i = sub.add_parser("info", help="per-layer format and bits of a checkpoint")
    i.add_argument("checkpoint")
    i.set_defaults(func=cmd_info)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "windows", None) == 0:
        args.windows = None
    try:
        return args.func(args)
    except _user_errors() as e:
        print(f"vq2trt: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("vq2trt: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

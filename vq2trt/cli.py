"""vq2trt command line: thin; parses, calls the package, prints."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from vq2trt.config import HESSIANS, PRESETS, ConfigError

EXIT_USAGE = 2


def _user_errors() -> tuple[type[Exception], ...]:
    from vq2trt.data import DataError
    from vq2trt.distill import DistillError
    from vq2trt.distributed import DistError
    from vq2trt.evaluate import EvalError
    from vq2trt.export.embedding import EmbeddingError
    from vq2trt.export.graph import ExportError
    from vq2trt.export.multi_weight import MultiWeightError
    from vq2trt.export.ort_contrib import OrtContribError
    from vq2trt.families import UnsupportedModelError
    from vq2trt.format import FormatError
    from vq2trt.io import CheckpointError
    from vq2trt.models import ModelLoadError
    from vq2trt.quantize import QuantizeError
    from vq2trt.runtime.session import RunError
    from vq2trt.streaming import StreamError
    return ConfigError, FormatError, CheckpointError, ModelLoadError, DataError, EvalError, QuantizeError, \
        ExportError, EmbeddingError, RunError, DistillError, UnsupportedModelError, FileNotFoundError, \
        StreamError, DistError, OrtContribError, MultiWeightError


def _work_dir(out: Path) -> Path:
    return out.parent / f".{out.name}.partial"


def cmd_quantize(a: argparse.Namespace) -> int:
    import copy
    import shutil

    import torch

    from vq2trt.activations import parse_size
    from vq2trt.config import resolve_config
    from vq2trt.data import calibration_batch, read_text
    from vq2trt.distributed import Dist
    from vq2trt.head import with_head
    from vq2trt.io import save_quantized, save_simulated
    from vq2trt.models import load_model
    from vq2trt.quantize import quantize

    out = Path(a.out)
    if out.exists() and not a.overwrite:
        raise ConfigError(f"output folder {out} already exists; choose another or pass --overwrite")
    config = resolve_config(a.config, seed=a.seed, calib_samples=a.samples, calib_seqlen=a.seqlen,
                            finetune_steps=a.finetune_steps, kmeans_iters=a.kmeans_iters, hessian=a.hessian,
                            distill_tokens=a.distill_tokens or None, distill_lr=a.distill_lr)
    with_head(config, a.head)                   # a bad head preset fails before any work
    try:
        max_memory = None if a.max_memory is None else parse_size(a.max_memory)
    except ValueError as e:
        raise ConfigError(f"--max-memory: {e}") from None
    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dist = Dist.from_env(device)
    if dist.active:
        device = dist.device                    # this rank's GPU under torchrun
    _check_scaled_run(a, config, dist)
    text = read_text(a.calib)                   # fail on bad calibration data before any work
    if a.threads:
        torch.set_num_threads(a.threads)
    stream = None
    if a.stream:
        from vq2trt.streaming import load_streamed
        model, tokenizer, stream = load_streamed(a.model)
    else:
        model, tokenizer = load_model(a.model)
    if tokenizer is None:
        raise ConfigError(f"{a.model} has no tokenizer; calibration text cannot be tokenized")
    calib = calibration_batch(tokenizer, text, config.calib_samples, config.calib_seqlen, config.seed)
    distill = None
    if config.distill_tokens:
        from vq2trt.cli_tune import distill_config
        if config.method != "vptq":
            raise ConfigError(f"distillation tunes VQ codebooks; method {config.method!r} has none")
        distill = distill_config(a, config.distill_tokens, config.distill_lr)
        teacher = copy.deepcopy(model)          # the float model, before quantize() replaces its layers
    work = _work_dir(out)
    if a.no_resume and work.exists() and dist.is_main:
        shutil.rmtree(work)
    dist.barrier()
    if a.target_bits is not None or a.candidates or a.sensitivity != "proxy":
        from vq2trt.cli_allocate import allocated_config
        config = allocated_config(model, calib, config, work, a)
    config = with_head(config, a.head)
    log = print if dist.is_main else None
    result = quantize(model, config, calib, work_dir=work, device=device, progress=not a.quiet, stream=stream,
                      dist=dist, max_memory=max_memory, log=log)
    if not dist.is_main:                        # rank 0 writes the checkpoint
        dist.close()
        return 0
    if distill is not None:
        from vq2trt.cli_tune import run_distill
        run_distill(model, teacher, tokenizer, text, distill, work, a)
    if stream is not None:
        from vq2trt.streaming import save_streamed
        save_streamed(model, stream, config, work, out, tokenizer=tokenizer, overwrite=a.overwrite,
                      progress=not a.quiet)
    else:
        save = save_quantized if config.method == "vptq" else save_simulated
        save(model, config, out, tokenizer=tokenizer, overwrite=a.overwrite)
    shutil.rmtree(work, ignore_errors=True)
    dist.close()
    n = len(result.reports)
    print(f"quantized {n} Linear layers with {config.method} in {result.seconds:.1f} s"
          + ("" if dist.world == 1 else f" on {dist.world} ranks"))
    print(f"all-in bits per weight over quantized Linears: {result.bits_per_weight:.3f}"
          + ("" if result.head is None else f" (decoder layers; lm_head {result.head_bits_per_weight:.3f})"))
    print(f"mean proxy error tr(dW H dW^T)/tr(W H W^T): {sum(r.proxy_err for r in result.reports) / max(n, 1):.4f}")
    print(f"wrote {out}")
    return 0


def _check_scaled_run(a: argparse.Namespace, config, dist) -> None:
    """Stages that need the whole model in one process are refused for streamed and torchrun runs."""
    how = [w for w, on in (("--stream", a.stream), (f"torchrun ({dist.world} ranks)", dist.active)) if on]
    if not how:
        return
    how = " and ".join(how)
    if config.distill_tokens:
        raise ConfigError(f"distillation trains the whole model in one process, which {how} does not hold; "
                          "quantize without --distill-tokens, then run `vq2trt finetune` on the checkpoint")
    if a.target_bits is not None or a.candidates:
        raise ConfigError(f"--target-bits allocation is not available with {how}; allocate once without it "
                          "and pass the written config (configs/README.md) with --config")
    if a.stream and config.method != "vptq":
        raise ConfigError(f"--stream writes VQ checkpoints; method {config.method!r} is saved as a float model, "
                          "which needs it whole")


def _load_any(path: str, device: str | None):
    from vq2trt.io import is_quantized_checkpoint, load_quantized
    from vq2trt.models import load_model

    if is_quantized_checkpoint(path):
        model, tok = load_quantized(path, device=device or "cpu", with_tokenizer=True)
        return model, tok, True
    model, tok = load_model(path, device=device or "cpu")
    return model, tok, False


def linear_size(model) -> tuple[float, float]:
    """(MiB, bits per weight) of the Linear weights that quantization replaces (lm_head excluded).

    Float models are counted at fp16, the usual deployment precision.
    """
    from torch import nn

    from vq2trt.nn import VQLinear

    bits, n = 0, 0
    for name, m in model.named_modules():
        if "lm_head" in name:
            continue
        if isinstance(m, VQLinear):
            w = m.to_vqweight()
            bits, n = bits + w.stored_bits(), n + w.out_features * w.in_features
        elif isinstance(m, nn.Linear):
            bits, n = bits + 16 * m.weight.numel(), n + m.weight.numel()
    return bits / 8 / 2**20, bits / max(n, 1)


def _evaluate(path: str, ids_for, a: argparse.Namespace) -> dict:
    from vq2trt.evaluate import generate_greedy, perplexity

    model, tok, quantized = _load_any(path, a.device)
    if tok is None:
        raise ConfigError(f"{path} has no tokenizer; cannot evaluate on text")
    t0 = time.perf_counter()
    ids = ids_for(tok)
    r = perplexity(model, ids, ctx=a.ctx, windows=a.windows, progress=not a.quiet)
    mib, bpw = linear_size(model)
    sample = generate_greedy(model, tok, a.prompt, a.max_new_tokens) if a.max_new_tokens > 0 else None
    return dict(path=path, quantized=quantized, ppl=r["ppl"], windows=r["windows"], tokens=r["tokens"],
                seconds=time.perf_counter() - t0, mib=mib, bpw=bpw, sample=sample, ids=ids)


def _evaluate_onnx(onnx_dir: str, torch_row: dict, a: argparse.Namespace) -> dict:
    """Perplexity of an exported model in ONNX Runtime on the same token ids as the PyTorch row."""
    from vq2trt.runtime.session import OnnxDecoder

    dec = OnnxDecoder(onnx_dir, threads=a.threads)
    r = dec.perplexity(torch_row["ids"].numpy(), ctx=a.ctx, windows=a.windows, progress=not a.quiet)
    rel = r["ppl"] / torch_row["ppl"] - 1
    print(f"ONNX Runtime perplexity {r['ppl']:.3f} vs PyTorch {torch_row['ppl']:.3f}: {rel:+.3%}")
    return dict(torch_row, path=onnx_dir, ppl=r["ppl"], sample=None,
                kind="ORT " + ("VQGemm" if dec.info.get("quantized") else "float"))


def cmd_eval(a: argparse.Namespace) -> int:
    import torch

    from vq2trt.data import read_text, tokenize_for_eval, wikitext_file

    text_path = a.text or wikitext_file("test")
    text = read_text(text_path)
    if a.onnx:   # before the PyTorch rows, which take minutes
        from vq2trt.runtime.session import read_info, require_all_logits

        require_all_logits(a.onnx, read_info(a.onnx))
    if a.threads:
        torch.set_num_threads(a.threads)
    ids_for = lambda tok: tokenize_for_eval(tok, text)
    rows = [_evaluate(p, ids_for, a) for p in ([a.baseline] if a.baseline else []) + [a.model]]
    r0 = rows[-1]
    if a.onnx:
        rows.append(_evaluate_onnx(a.onnx, r0, a))
    print(f"\nperplexity on {Path(text_path).name}: {r0['windows']} windows of {a.ctx} tokens "
          f"({r0['tokens']} predicted tokens)")
    print(f"| {'model':40s} | {'kind':10s} | {'perplexity':>10s} | {'Linear weights':>14s} | {'bits/weight':>11s} |")
    print(f"|{'-' * 42}|{'-' * 12}|{'-' * 12}|{'-' * 16}|{'-' * 13}|")
    for r in rows:
        kind = r.get("kind") or ("quantized" if r["quantized"] else "float")
        size = f"{r['mib']:.1f} MiB"
        print(f"| {Path(r['path']).name[:40]:40s} | {kind:10s} | {r['ppl']:10.3f} | {size:>14s} | {r['bpw']:11.3f} |")
    print("(Linear weights exclude embeddings and lm_head; float models counted at fp16)")
    for r in rows:
        if r["sample"] is not None:
            print(f"greedy ({Path(r['path']).name}): {a.prompt!r} -> {r['sample']!r}")
    return 0


def cmd_info(a: argparse.Namespace) -> int:
    from vq2trt.format import VQWeight
    from vq2trt.io import read_checkpoint_config, read_tensors

    path = Path(a.checkpoint)
    _, qc = read_checkpoint_config(path)
    tensors = read_tensors(path)
    print(f"{path}: method {qc.method}, v={qc.vector_len}, k={qc.num_centroids}, residual k={qc.num_res_centroids}, "
          f"outliers {qc.outlier_frac:.2%}, groups {qc.num_groups}, norm {qc.enable_norm}"
          + (f"; {len(qc.modules)} Linear(s) with their own format" if qc.modules else ""))
    # Each layer's format as stored (the tensors are authoritative), so mixed checkpoints read right.
    print(f"{'layer':48s} {'shape':>12s} {'v':>2s} {'k':>6s} {'res k':>5s} {'outliers':>13s} {'G':>3s} {'bpw':>6s}")
    bits = n = 0
    head = None
    for name in sorted(k[:-8] for k in tensors if k.endswith(".vq_dims")):
        w = VQWeight.from_tensors({k[len(name) + 1:]: v for k, v in tensors.items() if k.startswith(name + ".")},
                                  where=name)
        kr = 0 if w.res_codebook is None else w.res_codebook.shape[1]
        out = "-" if not w.num_outlier_cols else \
            f"{w.num_outlier_cols} v{w.outlier_codebook.shape[1]}-k{w.outlier_codebook.shape[0]}"
        print(f"{name:48s} {w.out_features:>5d}x{w.in_features:<6d} {w.vector_len:>2d} {w.num_centroids:>6d} "
              f"{kr:>5d} {out:>13s} {w.num_groups:>3d} {w.bits_per_weight():6.3f}")
        if name == "lm_head":               # counted apart, as quantize reports it
            head = w
            continue
        bits, n = bits + w.stored_bits(), n + w.out_features * w.in_features
    print(f"all-in bits per weight over quantized Linears: {bits / max(n, 1):.3f}"
          + ("" if head is None else f" (decoder layers; lm_head {head.bits_per_weight():.3f})"))
    return 0


def add_run_arguments(p: argparse.ArgumentParser, no_resume_help: str) -> None:
    """Flags every long-running, resumable command that writes a folder takes."""
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.add_argument("--no-resume", action="store_true", help=no_resume_help)
    p.add_argument("--quiet", action="store_true", help="no progress bars")


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
    q.add_argument("--hessian", choices=HESSIANS,
                   help="input: H = E[x xᵀ]; output-aware: tokens weighted by the float model's end-loss "
                        "gradient at each Linear's output (GuidedQuant; one extra backward pass)")
    q.add_argument("--head", metavar="PRESET",
                   help="also quantize lm_head in this VPTQ format (e.g. v2-k256-o1, ~4 bits); a tied head "
                        "is untied and the embedding stays float (export --embedding int8 stores it compactly)")
    q.add_argument("--distill-tokens", type=int,
                   help="then distil end to end against the float model on this many calibration tokens (0 = off)")
    from vq2trt.cli_tune import add_distill_arguments
    add_distill_arguments(q)
    from vq2trt.cli_allocate import add_allocate_arguments
    add_allocate_arguments(q)
    q.add_argument("--stream", action="store_true",
                   help="build the model without weights and load one decoder layer at a time from the folder's "
                        "(sharded) safetensors or the .gguf file: peak memory ~ one layer + the calibration "
                        "activations")
    q.add_argument("--max-memory", metavar="SIZE",
                   help="budget for one layer (or the whole model), its Hessians, quantizing its largest Linear "
                        "and the calibration activations, e.g. 24G; above it the activations are kept in files in "
                        "the run's work folder (a planning budget: the interpreter and embeddings come on top)")
    add_run_arguments(q, "discard finished layers of an interrupted run")
    q.set_defaults(func=cmd_quantize)

    e = sub.add_parser("eval", help="perplexity and a greedy generation (quantized checkpoint or float model)")
    e.add_argument("model", help="vq2trt checkpoint, HF folder or .gguf file")
    e.add_argument("--baseline", help="also evaluate this model (e.g. the float original) and print both")
    e.add_argument("--text", help="evaluation text (default: WikiText-2 raw test)")
    e.add_argument("--ctx", type=int, default=2048, help="tokens per window (default 2048)")
    e.add_argument("--windows", type=int, default=16, help="windows from the start (default 16; 0 = all)")
    e.add_argument("--onnx", help="also compute the perplexity of this ONNX export in ONNX Runtime (same ids)")
    e.add_argument("--prompt", default="The capital of France is")
    e.add_argument("--max-new-tokens", type=int, default=24)
    e.add_argument("--device")
    e.add_argument("--threads", type=int)
    e.add_argument("--quiet", action="store_true")
    e.set_defaults(func=cmd_eval)

    i = sub.add_parser("info", help="per-layer format and bits of a checkpoint")
    i.add_argument("checkpoint")
    i.set_defaults(func=cmd_info)

    from vq2trt.cli_deploy import add_parsers
    add_parsers(sub)
    from vq2trt import cli_tune
    cli_tune.add_parsers(sub)
    from vq2trt import cli_interop
    cli_interop.add_parsers(sub)
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

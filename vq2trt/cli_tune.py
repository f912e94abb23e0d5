"""The tuning half of the CLI: `finetune` (end-to-end distillation of a checkpoint; registered by
cli.build_parser), and the distillation stage `quantize --distill-tokens` shares."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

DEFAULT_LR = 1e-3


def distill_config(a: argparse.Namespace, tokens: int, lr: float):
    from vq2trt.distill import DistillConfig

    cfg = DistillConfig(tokens=tokens, seqlen=a.distill_seqlen, batch_size=a.distill_batch,
                        grad_accum=a.distill_accum, lr=lr, seed=a.seed or 0,
                        checkpoint_activations=a.checkpoint_activations, index_every=a.index_every,
                        index_frac=a.index_frac)
    cfg.validate()
    return cfg


def run_distill(student, teacher, tokenizer, text: str, cfg, work: Path, a: argparse.Namespace):
    """Distil in place, record what was done in the model's config, print a summary."""
    from vq2trt.data import token_ids
    from vq2trt.distill import distill

    ids = token_ids(tokenizer, text)
    r = distill(student, teacher, ids, cfg, work_dir=work, device=a.device, progress=not a.quiet)
    student.config.vq2trt_distillation = {"tokens": r.tokens, "steps": r.steps, "seqlen": cfg.seqlen,
                                          "lr": cfg.lr, "seed": cfg.seed, "kl_first": r.loss_first,
                                          "kl_last": r.loss_last, "index_every": cfg.index_every,
                                          "indices_changed": r.indices_changed}
    print(f"distilled {r.steps} steps ({r.tokens} tokens) in {r.seconds:.0f} s: KL(teacher||student) per token "
          f"{r.loss_first:.4f} -> {r.loss_last:.4f} (first and last step)"
          + (f"; index step kept {r.index_kept} of {r.index_steps} times, {r.indices_changed} indices moved"
             if cfg.index_every else ""))
    return r


def cmd_finetune(a: argparse.Namespace) -> int:
    import torch

    from vq2trt.cli import _work_dir
    from vq2trt.config import ConfigError
    from vq2trt.data import read_text
    from vq2trt.distill import check_teacher
    from vq2trt.io import CheckpointError, is_quantized_checkpoint, load_quantized, save_quantized
    from vq2trt.models import load_model

    out = Path(a.out)
    if out.exists() and not a.overwrite:
        raise ConfigError(f"output folder {out} already exists; choose another or pass --overwrite")
    cfg = distill_config(a, a.tokens, a.distill_lr or DEFAULT_LR)  # bad settings fail before any loading
    if not is_quantized_checkpoint(a.checkpoint):
        raise CheckpointError(f"{a.checkpoint} is not a vq2trt quantized checkpoint (no config.json with a "
                              "vq2trt quantization_config); quantize the model first with `vq2trt quantize`")
    text = read_text(a.calib)
    if a.threads:
        torch.set_num_threads(a.threads)
    student, tokenizer = load_quantized(a.checkpoint, with_tokenizer=True)
    if tokenizer is None:
        raise CheckpointError(f"{a.checkpoint} has no tokenizer; calibration text cannot be tokenized")
    teacher, _ = load_model(a.teacher)
    check_teacher(student, teacher)
    work = _work_dir(out)
    if a.no_resume and work.exists():
        shutil.rmtree(work)
    run_distill(student, teacher, tokenizer, text, cfg, work, a)
    save_quantized(student, student.vq2trt_config, out, tokenizer=tokenizer, overwrite=a.overwrite)
    shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {out}")
    return 0


def add_distill_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--distill-seqlen", type=int, default=512, help="tokens per training window (default 512)")
    p.add_argument("--distill-batch", type=int, default=1, help="windows per forward pass (default 1)")
    p.add_argument("--distill-accum", type=int, default=4,
                   help="forward passes per optimizer step, gradient accumulation (default 4)")
    p.add_argument("--distill-lr", type=float, help=f"peak AdamW learning rate (default {DEFAULT_LR})")
    p.add_argument("--index-every", type=int, default=0,
                   help="every N optimizer steps also move main indices to codewords that lower the loss "
                        "(PV-tuning style; 0 = indices stay fixed, the default)")
    p.add_argument("--index-frac", type=float, default=0.005,
                   help="share of each layer's vectors one index step may move (default 0.005)")
    p.add_argument("--checkpoint-activations", action=argparse.BooleanOptionalAction, default=None,
                   help="recompute each decoder layer's activations in backward (default: on above 1B parameters)")


def add_parsers(sub) -> None:
    f = sub.add_parser("finetune", help="end-to-end distillation of a quantized checkpoint against its float model")
    f.add_argument("checkpoint", help="vq2trt quantized checkpoint folder")
    f.add_argument("--teacher", required=True, help="the float model it was quantized from (HF folder or .gguf)")
    f.add_argument("--calib", required=True, help="training text (e.g. wiki.valid.tokens; never the test set)")
    f.add_argument("--tokens", type=int, required=True, help="training tokens (e.g. 100000 on a CPU)")
    f.add_argument("--out", required=True, help="checkpoint folder to write")
    add_distill_arguments(f)
    f.add_argument("--seed", type=int, default=0)
    from vq2trt.cli import add_run_arguments
    add_run_arguments(f, "discard the state of an interrupted run")
    f.set_defaults(func=cmd_finetune)

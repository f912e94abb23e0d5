"""Quality table: float vs RTN vs GPTQ vs VPTQ at ~2 and ~3 all-in bits per weight.

Every row quantizes a fresh copy of the same float model with the same calibration tokens and is
evaluated on the same WikiText-2 windows in this one run, so rows compare directly.

    python benchmarks/quality.py                          # SmolLM2-135M, first 16 windows of 2048
    python benchmarks/quality.py --windows 0              # the full test set
    python benchmarks/quality.py --rows float,vptq-2      # a subset
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import sys
import time
from pathlib import Path

import torch

from vq2trt.config import resolve_config
from vq2trt.data import calibration_batch, read_text, tokenize_for_eval, wikitext_file
from vq2trt.evaluate import perplexity
from vq2trt.models import fetch_smollm2, load_model
from vq2trt.quantize import quantize

# (row name, preset, target rate): scalar baselines at group 128 against VQ at the same all-in rate.
ROWS = [
    ("float", None, "-"),
    ("rtn-2", "rtn-w2g128", "~2"),
    ("gptq-2", "gptq-w2g128", "~2"),
    ("vptq-2", "v4-k256", "~2"),
    ("rtn-3", "rtn-w3g128", "~3"),
    ("gptq-3", "gptq-w3g128", "~3"),
    ("gptq-3-g64", "gptq-w3g64", "~3"),
    ("vptq-3", "v3-k512-o1", "~3"),
    ("vptq-3-res", "v4-k256-r16", "~3"),
]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="HF folder or .gguf (default: SmolLM2-135M from the cache)")
    p.add_argument("--cache", default=os.path.expanduser("~/.cache/vq2trt"))
    p.add_argument("--calib", help="calibration text (default: WikiText-2 valid)")
    p.add_argument("--text", help="evaluation text (default: WikiText-2 raw test)")
    p.add_argument("--ctx", type=int, default=2048)
    p.add_argument("--windows", type=int, default=16, help="0 = the whole test set")
    p.add_argument("--samples", type=int, default=128)
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--kmeans-iters", type=int, default=100)
    p.add_argument("--finetune-steps", type=int, default=0)
    p.add_argument("--rows", default=",".join(r[0] for r in ROWS))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = p.parse_args(argv)

    model_path = a.model or str(fetch_smollm2(a.cache))
    base, tok = load_model(model_path)
    calib_text = read_text(a.calib or wikitext_file("valid"))
    eval_ids = tokenize_for_eval(tok, read_text(a.text or wikitext_file("test")))
    windows = a.windows or None
    wanted = set(a.rows.split(","))
    unknown = wanted - {r[0] for r in ROWS}
    if unknown:
        p.error(f"unknown rows {sorted(unknown)}")

    results = []
    for name, preset, target in ROWS:
        if name not in wanted:
            continue
        model = copy.deepcopy(base)
        bpw, secs = 16.0, 0.0
        if preset:
            config = resolve_config(preset, calib_samples=a.samples, calib_seqlen=a.seqlen,
                                    kmeans_iters=a.kmeans_iters, finetune_steps=a.finetune_steps)
            calib = calibration_batch(tok, calib_text, config.calib_samples, config.calib_seqlen, config.seed)
            res = quantize(model, config, calib, device=a.device, progress=True)
            bpw, secs = res.bits_per_weight, res.seconds
        ppl = perplexity(model, eval_ids, ctx=a.ctx, windows=windows, progress=True)
        results.append((name, preset or "fp16 (dequantized Q4_1 GGUF)", target, bpw, ppl["ppl"], secs, ppl["windows"]))
        print(f"{name}: ppl {ppl['ppl']:.3f}, {bpw:.3f} bits/weight, {secs:.0f} s", file=sys.stderr, flush=True)
        del model

    print(f"\nSmolLM2-135M ({Path(model_path).name}), WikiText-2 raw test, ctx {a.ctx}, "
          f"{results[0][6] if results else '?'} windows; calibration {a.samples} x {a.seqlen} tokens of WikiText-2 "
          f"valid; k-means {a.kmeans_iters} iterations; fine-tuning {a.finetune_steps} steps; "
          f"{a.device} ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)\n")
    print("| method | config | target | all-in bits/weight | perplexity | quantization wall time (s) |")
    print("|---|---|---|---|---|---|")
    for name, preset, target, bpw, ppl, secs, _ in results:
        print(f"| {name} | {preset} | {target} | {bpw:.3f} | {ppl:.2f} | {secs:.0f} |")
    return 0


if __name__ == "__main__":
    t0 = time.perf_counter()
    rc = main()
    print(f"\n(total {time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    sys.exit(rc)

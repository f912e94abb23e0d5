"""Decode-step and prefill A/B of export folders through ONNX Runtime GenAI's generator, in one process.

On a machine whose speed drifts by 1.5x within minutes, separate runs (and even rounds of
cpu_model.py / decode_peers.py, a row at a time) compare states of the machine as much as models.
Here every model stays loaded and they take turns every STEPS decode steps: per round each one
prefills PROMPT tokens and times STEPS single-token steps, the order reversed every other round;
the step times of all rounds are pooled per model. Prints each model's median step time, the mean
of its faster half, and the ratio to the first folder; then the same for the prefills (one per
round and model, the prompt's append_tokens). VQ2TRT_DENSE4 / VQ2TRT_ISA apply to all
(each folder loads the op library beside it, so folders may carry different builds of it).

    .venv/bin/python benchmarks/genai_ab.py out/a-ort out/b-ort [more] [--rounds 40] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np


def main() -> None:
    import onnxruntime_genai as og

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folders", nargs="+", type=Path)
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    models = []
    for f in args.folders:
        cfg = og.Config(str(f))
        cfg.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": args.threads}}}}))
        models.append(og.Model(cfg))
    vocab = json.loads((args.folders[0] / "genai_config.json").read_text())["model"]["vocab_size"]
    ids = np.random.default_rng(0).integers(3, vocab, args.prompt).astype(np.int32)
    steps = {f: [] for f in args.folders}
    prefills = {f: [] for f in args.folders}
    for r in range(args.rounds):
        order = list(zip(args.folders, models))
        if r % 2:
            order.reverse()
        for f, model in order:
            params = og.GeneratorParams(model)
            length = args.prompt + args.steps + 1
            params.set_search_options(max_length=length, min_length=length, do_sample=False)
            gen = og.Generator(model, params)
            t0 = time.perf_counter()
            gen.append_tokens(ids)
            prefills[f].append(time.perf_counter() - t0)
            gen.generate_next_token()                        # the first step reads the prompt's logits
            for _ in range(args.steps):
                t0 = time.perf_counter()
                gen.generate_next_token()
                steps[f].append(time.perf_counter() - t0)
            del gen, params
    print(f"{args.rounds} rounds x {args.steps} steps after a {args.prompt}-token prompt, {args.threads} threads")
    table(args.folders, steps, "step", 1)
    print()
    table(args.folders, prefills, f"{args.prompt}-token prefill", args.prompt)


def table(folders: list[Path], times: dict[Path, list[float]], what: str, tokens: int) -> None:
    print(f"| folder | median {what} ms | tokens/s | faster half, mean ms | ratio to the first |")
    print("|---|---|---|---|---|")
    base = None
    for f in folders:
        t = sorted(times[f])
        med, fast = statistics.median(t), statistics.mean(t[: max(1, len(t) // 2)])
        base = base or med
        print(f"| {f.name} | {1e3 * med:.3f} | {tokens / med:.1f} | {1e3 * fast:.3f} | {med / base:.3f} |")


if __name__ == "__main__":
    main()

"""Decode-step accuracy of exported ONNX folders (e.g. accuracy_level 0 against 4).

Feeds the first TOKENS tokens of a text one at a time through each model's decode path (batch 1,
KV cache, teacher forced: M = 1 per VQGemm call, which is what accuracy_level 4's int8 route
serves) and once as a whole prompt (prefill, > 8 rows: always the float32 path). Per folder it
prints the accuracy_level from vq2trt_onnx.json, the decode-step and prefill perplexities and,
against the first folder's decode steps, the mean KL divergence of the next-token distributions
and the largest logit difference. On a heavily quantized small model the perplexity moves by
several per cent under tiny perturbations of either sign; the KL is the steadier measure of how
far a kernel is from the reference arithmetic.

    .venv/bin/python benchmarks/decode_accuracy.py out/smollm2-v4-k256-onnx out/smollm2-v4-k256-onnx4 \\
        [--tokens 512] [--text ../shared/data/wikitext-2/wiki.test.raw] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
from machine import environment

from vq2trt.runtime.session import OnnxDecoder, load_tokenizer


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    m = x.max(-1, keepdims=True)
    return x - (m + np.log(np.exp(x - m).sum(-1, keepdims=True)))


def decode_logits(dec: OnnxDecoder, ids: list[int]) -> np.ndarray:
    """Logits [T - 1, V] of teacher-forced single-token decode steps."""
    past, out = dec.empty_past(1), []
    for t in range(len(ids) - 1):
        logits, past = dec.step(np.array([[ids[t]]]), np.ones((1, t + 1)), np.array([[t]]), past)
        out.append(logits[0, -1].astype(np.float32))
    return np.stack(out)


def nll(logp: np.ndarray, targets: np.ndarray) -> float:
    return float(-logp[np.arange(len(targets)), targets].mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("onnx", nargs="+", help="exported ONNX folders; the first is the reference for KL")
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--text", default="../shared/data/wikitext-2/wiki.test.raw")
    ap.add_argument("--chars", type=int, default=20000, help="characters of the text to tokenize")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dense4", action="store_true",
                    help="also run each accuracy_level-4 folder with VQ2TRT_DENSE4=1 (the opt-in 4-bit decode form)")
    args = ap.parse_args()

    tok = load_tokenizer(args.onnx[0])
    text = Path(args.text).read_text(encoding="utf-8")[: args.chars]
    ids = tok.encode(text).ids[: args.tokens]
    if len(ids) < 2:
        ap.error(f"{args.text}: fewer than 2 tokens")
    targets = np.array(ids[1:])

    rows, ref, ref_raw = [], None, None
    runs = []
    for folder in args.onnx:
        info = json.loads((Path(folder) / "vq2trt_onnx.json").read_text())
        runs.append((folder, info, {}))
        if args.dense4 and info.get("quantized") and info.get("accuracy_level", 0) >= 4:
            runs.append((folder, info, {"VQ2TRT_DENSE4": "1"}))
    for folder, info, env in runs:
        with environment(env):
            dec = OnnxDecoder(folder, threads=args.threads)
        t0 = time.time()
        raw = decode_logits(dec, ids)
        lp = log_softmax(raw)
        lp_prefill = log_softmax(dec.logits(np.array([ids]))[0, :-1])
        label = folder + "".join(f", {k}={v}" for k, v in env.items())
        row = {"folder": label, "level": info.get("accuracy_level", "-") if info.get("quantized") else "float",
               "decode": math.exp(nll(lp, targets)), "prefill": math.exp(nll(lp_prefill, targets))}
        if ref is None:
            ref, ref_raw = lp, raw
        else:
            row["kl"] = float((np.exp(ref) * (ref - lp)).sum(-1).mean())
            row["dlogit"] = float(np.abs(raw - ref_raw).max())
        row["s"] = time.time() - t0
        rows.append(row)
        print(f"{folder}: done in {row['s']:.1f} s", flush=True)

    print(f"\n{len(ids)} tokens of {args.text}, {args.threads} threads; KL and max |Δ logit| against "
          f"{args.onnx[0]} (decode steps)\n")
    print("| ONNX folder | accuracy_level | decode-step ppl | prefill ppl | KL (nats/token) | max abs Δ logit |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        kl = f"{r['kl']:.5f}" if "kl" in r else "-"
        dl = f"{r['dlogit']:.3f}" if "dlogit" in r else "-"
        print(f"| {r['folder']} | {r['level']} | {r['decode']:.3f} | {r['prefill']:.3f} | {kl} | {dl} |")


if __name__ == "__main__":
    main()

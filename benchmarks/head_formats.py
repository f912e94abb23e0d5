"""Which format for lm_head: a quantized checkpoint's head re-quantized in each candidate format.

Takes a vq2trt checkpoint (float head), collects the head's Hessian on the final norm's outputs
over calibration windows of WikiText-2 *valid* (as `quantize --head` does), quantizes the head in
each preset and scores WikiText-2 *test* (ctx 2048, first 16 windows) and the Python docs text.
Prints one table: head format, its bits per weight, the head's and the int8 embedding's MiB, and
the perplexities next to the float head's.

    .venv/bin/python benchmarks/head_formats.py CKPT [--formats v4-k256,v4-k256-r16,v2-k256-o1] [--threads 2]
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import time

import torch


def main(argv=None) -> int:
    from vq2trt.config import resolve_config
    from vq2trt.data import calibration_batch, python_docs_text, read_text, tokenize_for_eval, wikitext_file
    from vq2trt.evaluate import perplexity
    from vq2trt.head import quantize_head, with_head
    from vq2trt.io import load_quantized

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("--formats", default="v4-k256,v4-k256-r16,v3-k512-o1,v2-k256-o1")
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--windows", type=int, default=16)
    p.add_argument("--windows2", type=int, default=8)
    p.add_argument("--threads", type=int)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)

    base, tok = load_quantized(a.checkpoint, with_tokenizer=True)
    evals = [tokenize_for_eval(tok, read_text(wikitext_file("test"))), tokenize_for_eval(tok, python_docs_text())]
    calib = calibration_batch(tok, read_text(wikitext_file("valid")), a.samples, a.seqlen, 0)

    # the final norm's inputs (the last decoder layer's outputs) for the calibration windows
    batches = []
    hook = base.model.norm.register_forward_pre_hook(lambda _m, args: batches.append((args[0].detach(), {})))
    with torch.no_grad():
        for i in range(0, calib.shape[0], 8):
            base.model(input_ids=calib[i:i + 8])
    hook.remove()

    def score(model):
        return [perplexity(model, ids, ctx=2048, windows=w, progress=False)["ppl"]
                for ids, w in zip(evals, (a.windows, a.windows2))]

    head = base.lm_head.weight
    rows = [("float32 (tied, as exported today)", 32.0, head.numel() * 4 / 2**20, 0.0, *score(base))]
    for preset in a.formats.split(","):
        model = copy.deepcopy(base)
        cfg = with_head(resolve_config(None, kmeans_iters=25), preset)
        t0 = time.perf_counter()
        w, _, _ = quantize_head(model, cfg, batches, "cpu")
        secs = time.perf_counter() - t0
        rows.append((preset, w.bits_per_weight(), w.stored_bits() / 8 / 2**20, secs, *score(model)))
        print(rows[-1], flush=True)

    emb_int8 = (head.numel() + head.shape[0] * 4) / 2**20
    print(f"\n{os.path.basename(os.path.normpath(a.checkpoint))}: head {tuple(head.shape)}; "
          f"{platform.machine()}, {torch.get_num_threads()} threads; embedding as int8 rows: {emb_int8:.1f} MiB\n")
    print("| lm_head | bits/weight | head MiB | quantize s | WikiText-2 test ppl | Python docs ppl |")
    print("|---|---|---|---|---|---|")
    for name, bpw, mib, secs, wiki, docs in rows:
        print(f"| {name} | {bpw:.3f} | {mib:.1f} | {secs:.0f} | {wiki:.2f} | {docs:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

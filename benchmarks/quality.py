"""Quality ablation on SmolLM2-135M: VPTQ as it was, then each lever added, with GPTQ at the same bits.

Every row quantizes the same float model with the same calibration tokens (WikiText-2 *valid*)
and is scored on text nothing was tuned on: WikiText-2 raw *test* (ctx 2048, the first 16
windows; --full for all) and the Python reference manual's topic pages (pydoc_data, a second
domain, first 8 windows of 2048), so an overfit to WikiText shows as a gap between the columns.

Rows are cached under --work (checkpoints, ONNX exports, results): rerun with other --rows and
the table prints every finished row; a row is rebuilt only when its settings change.

    python benchmarks/quality.py                                  # the CPU rows (hours on 2 cores)
    python benchmarks/quality.py --rows float,vptq-2,vptq-2.3      # a subset
    python benchmarks/quality.py --table                          # print finished rows only
    python benchmarks/quality.py --device cuda --distill-scale 30  # GPU: 30x the distillation tokens
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

SECOND_TEXT = "Python docs (pydoc_data.topics)"


@dataclass
class Row:
    name: str
    preset: str | None                                  # None: the float model
    target: str
    overrides: dict = field(default_factory=dict)       # QuantConfig fields
    target_bits: float | None = None                    # bit allocation over the candidates
    distill_tokens: int = 0
    lever: str = ""
    candidates: str | None = None                       # None: --candidates
    distill_opts: dict = field(default_factory=dict)    # DistillConfig fields (the index step)
    sensitivity: str = "proxy"                          # allocation's error measure (vq2trt.allocate)

    def quant_key(self, a) -> dict:
        key = {"preset": self.preset, "overrides": self.overrides, "target_bits": self.target_bits,
               "candidates": (self.candidates or a.candidates) if self.target_bits else None,
               "samples": a.samples, "seqlen": a.seqlen, "kmeans_iters": a.kmeans_iters}
        if self.sensitivity != "proxy":  # absent for the default: rows cached before it keep their keys
            key["sensitivity"] = self.sensitivity
        return key


# Token budgets scale with --distill-scale (1 on a 2-core CPU).
D_SMALL, D_LARGE, D_XL = 32_768, 131_072, 262_144
# Around 3.3 bits the allocation steps from ~2 to ~3 to ~4 index bits.
C_33 = "v4-k256-o1,v3-k512-o1,v2-k256-o1"
# The 16-entry family (two 16-entry codebooks per vector: the AVX2 vpshufb route) at ~2.3 bits.
C_R16 = "v4-k16-r16,v4-k16-r16-o1,v3-k16-r16-o1"
# 8x the default 64 x 512 calibration tokens (Hessians and allocation sensitivities).
CAL_128x2048 = {"calib_samples": 128, "calib_seqlen": 2048}
# Distillation's discrete step (vq2trt.index_step): every 2 optimizer steps, up to 0.5 % of each layer's vectors.
IDX = {"index_every": 2, "index_frac": 0.005}
ROWS = [
    Row("float", None, "-", lever="fp16 (dequantized Q4_1 GGUF)"),
    Row("gptq-2", "gptq-w2g128", "~2", lever="GPTQ"),
    Row("vptq-2", "v4-k256", "~2", lever="VPTQ as before this issue"),
    Row("vptq-2+lft", "v4-k256", "~2", {"finetune_steps": 50}, lever="+ layer-wise FT (50 steps)"),
    Row("vptq-2+oah", "v4-k256", "~2", {"hessian": "output-aware"}, lever="+ output-aware Hessians"),
    Row("vptq-2+cal", "v4-k256", "~2", CAL_128x2048,
        lever="+ calibration 128 x 2048 tokens"),
    Row("vptq-2+d-s", "v4-k256", "~2", distill_tokens=D_SMALL, lever="+ distillation (small)"),
    Row("vptq-2-k16", "v2-k16", "~2", lever="VPTQ, the AVX2-friendly format"),
    Row("vptq-2-k16+d-s", "v2-k16", "~2", distill_tokens=D_SMALL, lever="+ distillation (small)"),
    Row("vptq-2-r16", "v4-k16-r16", "~2", lever="VPTQ, 16 + 16 additive codebooks (vpshufb on AVX2)"),
    Row("vptq-2.3-r16", "v4-k16-r16", "~2.3", target_bits=2.3, candidates=C_R16,
        lever="+ bit allocation, 16 + 16 family"),
    Row("vptq-2.3-r16+d-s", "v4-k16-r16", "~2.3", target_bits=2.3, candidates=C_R16, distill_tokens=D_SMALL,
        lever="+ distillation (small)"),
    Row("gptq-2.3", "gptq-w2g64", "~2.3", lever="GPTQ"),
    Row("vptq-2.3", "v4-k256", "~2.3", target_bits=2.3, lever="+ bit allocation"),
    Row("vptq-2.3+d-s", "v4-k256", "~2.3", target_bits=2.3, distill_tokens=D_SMALL, lever="+ distillation (small)"),
    Row("vptq-2.3L", "v4-k256", "~2.3", target_bits=2.3, sensitivity="loss",
        lever="+ bit allocation by loss sensitivity"),
    Row("vptq-2.3L+d-s", "v4-k256", "~2.3", target_bits=2.3, sensitivity="loss", distill_tokens=D_SMALL,
        lever="+ distillation (small)"),
    Row("vptq-2.3+d-l", "v4-k256", "~2.3", target_bits=2.3, distill_tokens=D_LARGE, lever="+ distillation (large)"),
    Row("vptq-2.3+d-s+idx", "v4-k256", "~2.3", target_bits=2.3, distill_tokens=D_SMALL, distill_opts=IDX,
        lever="+ index step in distillation (small)"),
    Row("vptq-2.3+d-l+idx", "v4-k256", "~2.3", target_bits=2.3, distill_tokens=D_LARGE, distill_opts=IDX,
        lever="+ index step in distillation (large)"),
    Row("vptq-2.3+d-xl", "v4-k256", "~2.3", target_bits=2.3, distill_tokens=D_XL,
        lever="+ distillation (2x large)"),
    Row("vptq-2.3+cal", "v4-k256", "~2.3", CAL_128x2048, target_bits=2.3,
        lever="+ bit allocation, calibration 128 x 2048"),
    Row("vptq-2.3+cal+d-l", "v4-k256", "~2.3", CAL_128x2048, target_bits=2.3, distill_tokens=D_LARGE,
        lever="+ distillation (large)"),
    Row("gptq-3", "gptq-w3g128", "~3", lever="GPTQ"),
    Row("vptq-3", "v3-k512-o1", "~3", lever="VPTQ as before this issue"),
    Row("vptq-3+d-s", "v3-k512-o1", "~3", distill_tokens=D_SMALL, lever="+ distillation (small)"),
    Row("vptq-3+d-l", "v3-k512-o1", "~3", distill_tokens=D_LARGE, lever="+ distillation (large)"),
    Row("vptq-3+d-xl", "v3-k512-o1", "~3", distill_tokens=D_XL, lever="+ distillation (2x large)"),
    Row("vptq-3+d-l+idx", "v3-k512-o1", "~3", distill_tokens=D_LARGE, distill_opts=IDX,
        lever="+ index step in distillation (large)"),
    Row("vptq-3+cal", "v3-k512-o1", "~3", CAL_128x2048, lever="+ calibration 128 x 2048 tokens"),
    Row("vptq-3+cal+d-l", "v3-k512-o1", "~3", CAL_128x2048, distill_tokens=D_LARGE, lever="+ distillation (large)"),
    Row("vptq-3.3", "v3-k512-o1", "~3.3", target_bits=3.3, candidates=C_33, lever="+ bit allocation"),
    Row("vptq-3.3+d-l", "v3-k512-o1", "~3.3", target_bits=3.3, candidates=C_33, distill_tokens=D_LARGE,
        lever="+ distillation (large)"),
    Row("vptq-3.3L", "v3-k512-o1", "~3.3", target_bits=3.3, candidates=C_33, sensitivity="loss",
        lever="+ bit allocation by loss sensitivity"),
    Row("vptq-3.3L+d-l", "v3-k512-o1", "~3.3", target_bits=3.3, candidates=C_33, sensitivity="loss",
        distill_tokens=D_LARGE, lever="+ distillation (large)"),
    Row("vptq-3.3L+d-l+idx", "v3-k512-o1", "~3.3", target_bits=3.3, candidates=C_33, sensitivity="loss",
        distill_tokens=D_LARGE, distill_opts=IDX, lever="+ index step in distillation (large)"),
]


def _key(d: dict) -> str:
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


def _fields(obj) -> dict:
    """asdict() without the index-step fields while the step is off, so rows and distillations
    cached before those fields existed keep their keys."""
    d = asdict(obj)
    if not d.get("distill_opts", True):
        d.pop("distill_opts")
    if not d.get("index_every", 1):
        for k in [k for k in d if k.startswith("index_")]:
            d.pop(k)
    return d


def _folder_mib(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


class Bench:
    def __init__(self, a):
        from vq2trt.data import python_docs_text, read_text, tokenize_for_eval, wikitext_file
        from vq2trt.models import fetch_smollm2, load_model

        self.a = a
        self.model_path = a.model or str(fetch_smollm2(a.cache))
        self.load_model = lambda: load_model(self.model_path)
        _, self.tok = self.load_model()
        self.calib_text = read_text(a.calib or wikitext_file("valid"))
        self.evals = [("wiki", tokenize_for_eval(self.tok, read_text(a.text or wikitext_file("test"))),
                       None if a.full else a.windows),
                      ("docs", tokenize_for_eval(self.tok, python_docs_text()), a.windows2)]
        self.work = Path(a.work)

    # --- building a row's checkpoint -----------------------------------------------------------
    def quantized(self, row: Row) -> tuple[Path, dict]:
        from vq2trt.config import resolve_config
        from vq2trt.data import calibration_batch
        from vq2trt.io import save_quantized, save_simulated
        from vq2trt.quantize import quantize

        key = row.quant_key(self.a)
        folder = self.work / f"q-{_key(key)}"
        if (folder / "meta.json").exists():
            return folder / "ckpt", json.loads((folder / "meta.json").read_text())
        model, tok = self.load_model()
        config = resolve_config(row.preset, **{"calib_samples": self.a.samples, "calib_seqlen": self.a.seqlen,
                                               "kmeans_iters": self.a.kmeans_iters, **row.overrides})
        calib = calibration_batch(tok, self.calib_text, config.calib_samples, config.calib_seqlen, config.seed)
        t0 = time.perf_counter()
        if row.target_bits:
            from vq2trt.allocate import allocate
            config = allocate(model, calib, (row.candidates or self.a.candidates).split(","), row.target_bits,
                              base=config, device=self.a.device, sensitivity=row.sensitivity)
        res = quantize(model, config, calib, device=self.a.device, progress=True)
        secs = time.perf_counter() - t0
        save = save_quantized if config.method == "vptq" else save_simulated
        save(model, config, folder / "ckpt", tokenizer=tok, overwrite=True)
        meta = {"key": key, "bpw": res.bits_per_weight, "seconds": secs, "method": config.method}
        (folder / "meta.json").write_text(json.dumps(meta, indent=2))
        return folder / "ckpt", meta

    def distilled(self, row: Row, base: Path) -> tuple[Path, float]:
        from vq2trt.data import token_ids
        from vq2trt.distill import DistillConfig, distill
        from vq2trt.io import load_quantized, save_quantized

        tokens = int(row.distill_tokens * self.a.distill_scale)
        cfg = DistillConfig(tokens=tokens, lr=self.a.distill_lr, **row.distill_opts)
        folder = self.work / f"d-{_key({'base': str(base), 'cfg': _fields(cfg)})}"
        if (folder / "meta.json").exists():
            return folder / "ckpt", json.loads((folder / "meta.json").read_text())["seconds"]
        student, tok = load_quantized(base, with_tokenizer=True)
        teacher, _ = self.load_model()
        r = distill(student, teacher, token_ids(tok, self.calib_text), cfg, work_dir=folder / "state",
                    device=self.a.device)
        save_quantized(student, student.vq2trt_config, folder / "ckpt", tokenizer=tok, overwrite=True)
        shutil.rmtree(folder / "state", ignore_errors=True)
        (folder / "meta.json").write_text(json.dumps({"seconds": r.seconds, "kl_first": r.loss_first,
                                                      "kl_last": r.loss_last, "tokens": r.tokens,
                                                      "indices_changed": r.indices_changed,
                                                      "index_kept": r.index_kept, "index_steps": r.index_steps}))
        return folder / "ckpt", r.seconds

    # --- scoring --------------------------------------------------------------------------------
    def score(self, path: Path | None, quantized: bool) -> dict:
        from vq2trt.cli import linear_size
        from vq2trt.evaluate import generate_greedy, perplexity
        from vq2trt.io import load_quantized
        from vq2trt.models import load_model

        if path is None:
            model, tok = self.load_model()
        else:
            model, tok = (load_quantized(path, with_tokenizer=True) if quantized else load_model(path))
        out = {}
        for name, ids, windows in self.evals:
            r = perplexity(model, ids, ctx=self.a.ctx, windows=windows, progress=True)
            out[name], out[f"{name}_windows"] = r["ppl"], r["windows"]
        out["mib"], out["bpw"] = linear_size(model)
        out["sample"] = generate_greedy(model, tok, "The capital of France is", 16)
        if quantized and not self.a.no_export:
            from vq2trt.export.onnx_export import export_onnx
            onnx_dir = path.parent / "onnx"
            export_onnx(model, onnx_dir, overwrite=True, tokenizer=tok, source=str(path))
            out["onnx_mib"] = _folder_mib(onnx_dir)
            shutil.rmtree(onnx_dir)  # only its size is reported; it is rebuilt from the checkpoint in a minute
        return out

    def run(self, row: Row) -> dict:
        result_file = self.work / "rows" / f"{row.name}-{_key(self.settings(row))}.json"
        if result_file.exists():
            return json.loads(result_file.read_text())
        t0 = time.perf_counter()
        if row.preset is None:
            res, secs, bpw_q = self.score(None, False), 0.0, None
        else:
            ckpt, meta = self.quantized(row)
            secs = meta["seconds"]
            if row.distill_tokens:
                ckpt, d_secs = self.distilled(row, ckpt)
                secs += d_secs
            res = self.score(ckpt, meta["method"] == "vptq")
            bpw_q = meta["bpw"]
        res.update(name=row.name, target=row.target, lever=row.lever, preset=row.preset or "-", seconds=secs,
                   bpw_quant=bpw_q, wall=time.perf_counter() - t0, settings=self.settings(row))
        result_file.parent.mkdir(parents=True, exist_ok=True)
        result_file.write_text(json.dumps(res, indent=2))
        return res

    def settings(self, row: Row) -> dict:
        s = {**_fields(row), **row.quant_key(self.a), "ctx": self.a.ctx, "full": self.a.full,
             "windows": self.a.windows, "windows2": self.a.windows2, "model": Path(self.model_path).name}
        if row.distill_tokens:
            s.update(distill_scale=self.a.distill_scale, distill_lr=self.a.distill_lr)
        return s


def print_table(results: list[dict], a) -> None:
    cpu = platform.processor() or platform.machine()
    print(f"\nSmolLM2-135M, calibration {a.samples} x {a.seqlen} tokens of WikiText-2 valid, k-means "
          f"{a.kmeans_iters} iterations; {a.device} ({cpu}, {torch.get_num_threads()} threads, ISA "
          f"{os.environ.get('VQ2TRT_ISA', 'auto')}); Python {platform.python_version()} docs text\n")
    print("| row | lever | target | all-in bits (quantized Linears) | WikiText-2 test ppl | "
          f"{SECOND_TEXT} ppl | ONNX folder MiB | build wall time (s) | greedy: The capital of France is |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        bpw = "16 (fp16)" if r["bpw_quant"] is None else f"{r['bpw_quant']:.3f}"
        onnx = f"{r['onnx_mib']:.1f}" if "onnx_mib" in r else "-"
        sample = r["sample"].replace("\n", " ").replace("|", "/")[:60]
        print(f"| {r['name']} | {r['lever']} | {r['target']} | {bpw} | {r['wiki']:.2f} | {r['docs']:.2f} | {onnx} | "
              f"{r['seconds']:.0f} | {sample!r} |")
    w = results[0] if results else {}
    print(f"\n(wiki: {w.get('wiki_windows')} windows of {a.ctx}; docs: {w.get('docs_windows')} windows of {a.ctx}. "
          "GPTQ rows are simulated (fake-quantized float weights), so they have no ONNX folder.)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="HF folder or .gguf (default: SmolLM2-135M from the cache)")
    p.add_argument("--cache", default=os.path.expanduser("~/.cache/vq2trt"))
    p.add_argument("--work", default=os.path.expanduser("~/.cache/vq2trt/quality"), help="row cache folder")
    p.add_argument("--calib", help="calibration text (default: WikiText-2 valid)")
    p.add_argument("--text", help="evaluation text (default: WikiText-2 raw test)")
    p.add_argument("--ctx", type=int, default=2048)
    p.add_argument("--windows", type=int, default=16, help="WikiText-2 test windows (default 16)")
    p.add_argument("--full", action="store_true", help="the whole WikiText-2 test set")
    p.add_argument("--windows2", type=int, default=8, help="windows of the second text (default 8)")
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--kmeans-iters", type=int, default=25)
    p.add_argument("--candidates", default="v4-k256,v4-k256-o1,v3-k512-o1", help="presets bit allocation picks from")
    p.add_argument("--distill-scale", type=float, default=1.0, help="multiplies every distillation token budget")
    p.add_argument("--distill-lr", type=float, default=1e-3)
    p.add_argument("--rows", default=",".join(r.name for r in ROWS))
    p.add_argument("--table", action="store_true", help="only print the rows already finished")
    p.add_argument("--no-export", action="store_true", help="skip the ONNX export (no folder size)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    wanted = a.rows.split(",")
    unknown = set(wanted) - {r.name for r in ROWS}
    if unknown:
        p.error(f"unknown rows {sorted(unknown)}; known: {[r.name for r in ROWS]}")

    bench = Bench(a)
    results = []
    for row in ROWS:
        if row.name not in wanted:
            continue
        f = bench.work / "rows" / f"{row.name}-{_key(bench.settings(row))}.json"
        if a.table and not f.exists():
            continue
        r = bench.run(row)
        print(f"{row.name}: wiki {r['wiki']:.2f}, docs {r['docs']:.2f}, {r['bpw']:.3f} bits, {r['seconds']:.0f} s",
              file=sys.stderr, flush=True)
        results.append(r)
    print_table(results, a)
    return 0


if __name__ == "__main__":
    sys.exit(main())

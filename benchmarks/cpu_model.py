"""Whole-model CPU speed: exported decoders side by side in ONNX Runtime, optionally with llama.cpp.

For each export folder: one prefill of --prompt tokens (pp), then --gen single-token decode steps
(tg) with the KV cache, as `llama-bench -p PP -n TG` measures; --reps repetitions, medians
reported. One run prints one table, so the rows share the machine's state. ``VQ2TRT_ISA`` caps
the kernels' instruction set (the ISA column says which ran). With --llama-bench BIN and
--gguf FILES, llama.cpp runs the same pp/tg in the same run.

    .venv/bin/python benchmarks/cpu_model.py out/float-onnx out/v4-onnx [--threads 2] [--reps 3]
        [--rounds N]      # all rows N times in turn, medians (a machine whose speed drifts)
        [--dense4]        # also each quantized folder with VQ2TRT_DENSE4=1
        [--profile DIR]   # also ORT profiles of a prefill and a decode step per folder: ms per op type
        [--genai DIRS]    # also through onnxruntime_genai's generator, e.g. the int4 model of
                          # python -m onnxruntime_genai.models.builder -i HF_DIR -o DIR -p int4 -e cpu
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from machine import environment


def cpu_isa() -> str:
    flags = set()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    auto = "avx512" if {"avx512vbmi", "avx512_vnni"} <= flags else "avxvnni" if "avx_vnni" in flags else \
        "avx2" if "avx2" in flags else \
        "neon" if platform.machine() in ("aarch64", "arm64") else "scalar"
    cap = os.environ.get("VQ2TRT_ISA")
    return f"{auto} (capped: {cap})" if cap else auto


def folder_mib(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def time_onnx(folder: Path, pp: int, tg: int, reps: int, threads: int) -> tuple[float, float]:
    from vq2trt.runtime.session import OnnxDecoder, SharedCache

    dec = OnnxDecoder(folder, threads=threads)
    vocab = int(dec.info["vocab_size"])
    ids = np.random.default_rng(0).integers(0, vocab, (1, pp + tg))
    pre, dec_tps = [], []
    for _ in range(reps + 1):                                 # the first repetition warms up
        if dec.info.get("ops") == "ort":                      # `vq2trt run`'s loop for these: one KV cache
            cache = SharedCache(dec, pp + tg)
            t0 = time.perf_counter()
            cache.step(ids[0, :pp])
            t1 = time.perf_counter()
            for t in range(pp, pp + tg):
                cache.step(ids[0, t:t + 1])
            t2 = time.perf_counter()
            pre.append(pp / (t1 - t0))
            dec_tps.append(tg / (t2 - t1))
            continue
        t0 = time.perf_counter()
        _, past = dec.step(ids[:, :pp], np.ones((1, pp)), np.arange(pp)[None], dec.empty_past(1))
        t1 = time.perf_counter()
        for t in range(pp, pp + tg):
            _, past = dec.step(ids[:, t:t + 1], np.ones((1, t + 1)), np.array([[t]]), past)
        t2 = time.perf_counter()
        pre.append(pp / (t1 - t0))
        dec_tps.append(tg / (t2 - t1))
    return statistics.median(pre[1:]), statistics.median(dec_tps[1:])


def _per_op(events, runs) -> dict[str, float]:
    """ms per op type, the median over ``runs``: one preempted run must not decide a row."""
    per_run: list[dict[str, float]] = [defaultdict(float) for _ in runs]
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            for i, r in enumerate(runs):
                if r["ts"] <= e["ts"] < r["ts"] + r["dur"]:
                    per_run[i][e["args"]["op_name"]] += e["dur"] / 1000
    per_op = {k: statistics.median(d.get(k, 0.0) for d in per_run) for k in set().union(*per_run)}
    per_op["(whole run)"] = statistics.median(r["dur"] for r in runs) / 1000
    return per_op


def profile(folder: Path, threads: int, out_dir: Path, pp: int) -> tuple[dict[str, float], dict[str, float]]:
    """ms per op type of a pp-token prefill and of one decode step after it (ORT's profiler;
    three prefills and eight steps after warm-up, medians)."""
    import onnxruntime as ort

    from vq2trt.runtime.library import session_options
    from vq2trt.runtime.session import MODEL_FILE, OnnxDecoder, SharedCache, read_info

    info = read_info(folder)
    so = session_options(intra_op_threads=threads) if info.get("quantized") else ort.SessionOptions()
    if not info.get("quantized"):
        so.intra_op_num_threads = threads
    so.enable_profiling = True
    so.profile_file_prefix = str(out_dir / folder.name)
    sess = ort.InferenceSession(str(folder / MODEL_FILE), so, providers=["CPUExecutionProvider"])
    dec = OnnxDecoder(folder, session=sess)
    ids = np.arange(pp + 12)[None] % int(info["vocab_size"])
    if info.get("ops") == "ort":
        # The loop time_onnx times: one KV buffer bound as past and present. Handing the cache in
        # and taking a longer copy back (below) put ~40 µs a layer into the attention's profile
        # that the timed loop does not spend (17th session).
        for _ in range(4):                                    # one warm-up prefill, three profiled
            cache = SharedCache(dec, pp + 12)
            cache.step(ids[0, :pp])
        for t in range(pp, pp + 12):                          # twelve steps; the last eight are profiled
            cache.step(ids[0, t:t + 1])
    else:
        for _ in range(4):
            _, past = dec.step(ids[:, :pp], np.ones((1, pp)), np.arange(pp)[None], dec.empty_past(1))
        for t in range(pp, pp + 12):
            _, past = dec.step(ids[:, t:t + 1], np.ones((1, t + 1)), np.array([[t]]), past)
    events = json.loads(Path(sess.end_profiling()).read_text())
    runs = [e for e in events if e.get("name") == "model_run"]
    return _per_op(events, runs[1:4]), _per_op(events, runs[-8:])


def time_genai(folder: Path, pp: int, tg: int, reps: int, threads: int) -> tuple[float, float]:
    """pp / tg through ONNX Runtime GenAI's own loop (its KV cache handling: a buffer shared
    between past and present where the model allows it): append_tokens of the prompt, then tg
    generate_next_token calls (greedy, EOS held off by min_length)."""
    import onnxruntime_genai as og

    cfg = og.Config(str(folder))
    cfg.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": threads}}}}))
    model = og.Model(cfg)
    vocab = json.loads((folder / "genai_config.json").read_text())["model"]["vocab_size"]
    ids = np.random.default_rng(0).integers(3, vocab, pp).astype(np.int32)
    pre, dec = [], []
    for _ in range(reps + 1):                                 # the first repetition warms up
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=pp + tg + 1, min_length=pp + tg + 1, do_sample=False)
        gen = og.Generator(model, params)
        t0 = time.perf_counter()
        gen.append_tokens(ids)
        t1 = time.perf_counter()
        for _ in range(tg):
            gen.generate_next_token()
        t2 = time.perf_counter()
        pre.append(pp / (t1 - t0))
        dec.append(tg / (t2 - t1))
    return statistics.median(pre[1:]), statistics.median(dec[1:])


def time_llama(bench: str, gguf: Path, pp: int, tg: int, reps: int, threads: int,
               after_prompt: bool = False) -> tuple[float, float]:
    """llama-bench's pp and tg. Its tg starts from an empty KV cache, where the ONNX rows decode
    after their pp-token prompt; after_prompt: tg after pp tokens of context (`-d pp`), as they do."""
    cmd = [bench, "-m", str(gguf), "-p", str(pp), "-n", str(tg), "-r", str(reps), "-t", str(threads), "-o", "json"]
    depth = pp if after_prompt else 0
    res = json.loads(subprocess.run(cmd + (["-d", f"0,{depth}"] if depth else []), check=True, capture_output=True,
                                    text=True).stdout)
    pre = [r["avg_ts"] for r in res if r["n_prompt"] and r.get("n_depth", 0) == 0]
    dec = [r["avg_ts"] for r in res if r["n_gen"] and r.get("n_depth", 0) == depth]
    return pre[0], dec[0]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folders", nargs="*", type=Path, help="vq2trt export folders")
    p.add_argument("--prompt", type=int, default=128, help="prefill tokens (default 128)")
    p.add_argument("--gen", type=int, default=64, help="decode steps (default 64)")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--llama-bench", help="llama-bench binary, to time --gguf files in the same run")
    p.add_argument("--gguf", nargs="*", type=Path, default=[])
    p.add_argument("--llama-after-prompt", action="store_true",
                   help="also each --gguf with its decode timed after the prompt (llama-bench -d PP), as the "
                        "ONNX rows decode; plain llama-bench tg starts from an empty cache")
    p.add_argument("--genai", nargs="*", type=Path, default=[],
                   help="folders to time through onnxruntime_genai's generator: its own int4 models "
                        "(models.builder -p int4) or vq2trt exports (libvq2trt_ort.so copied in)")
    p.add_argument("--profile", type=Path, help="write ORT profiles here and print ms per op type of a decode step")
    p.add_argument("--rounds", type=int, default=1,
                   help="time all rows this many times in turn and report each row's median (drifting machines)")
    p.add_argument("--dense4", action="store_true",
                   help="also time each quantized folder with VQ2TRT_DENSE4=1 (the opt-in 4-bit decode form)")
    a = p.parse_args(argv)

    def variants(f: Path):
        """The folder's rows: as is, and with VQ2TRT_DENSE4=1 for a quantized export under --dense4."""
        yield "", {}
        info = f / "vq2trt_onnx.json"
        if a.dense4 and info.is_file() and json.loads(info.read_text()).get("quantized"):
            yield ", VQ2TRT_DENSE4=1", {"VQ2TRT_DENSE4": "1"}

    jobs = []                                                 # (row name, MiB, () -> (pp, tg))
    for f in a.folders:
        info = json.loads((f / "vq2trt_onnx.json").read_text())
        kind = f"accuracy_level {info.get('accuracy_level', 0)}" if info.get("quantized") else "float"
        forms = f"embedding {info.get('embedding', 'float32')}, lm_head {info.get('lm_head', '?')}"
        for label, values in variants(f):
            jobs.append((f"vq2trt {f.name} ({kind}, {forms}{label})", folder_mib(f), values,
                         lambda f=f: time_onnx(f, a.prompt, a.gen, a.reps, a.threads)))
    for f in a.genai:
        for label, values in variants(f):
            jobs.append((f"ORT GenAI {f.name}{label}", folder_mib(f), values,
                         lambda f=f: time_genai(f, a.prompt, a.gen, a.reps, a.threads)))
    for g in a.gguf:
        jobs.append((f"llama.cpp {g.name}", g.stat().st_size / 2**20, {},
                     lambda g=g: time_llama(a.llama_bench, g, a.prompt, a.gen, a.reps, a.threads)))
        if a.llama_after_prompt:
            jobs.append((f"llama.cpp {g.name}, decode after the prompt (-d {a.prompt})", g.stat().st_size / 2**20, {},
                         lambda g=g: time_llama(a.llama_bench, g, a.prompt, a.gen, a.reps, a.threads, True)))
    # Rounds take every row in turn, so that a machine whose speed drifts (a shared VM) slows all
    # rows alike; each row reports its median over the rounds.
    results: dict[str, list[tuple[float, float]]] = {name: [] for name, _, _, _ in jobs}
    for r in range(a.rounds):
        for name, _, values, run in jobs:
            with environment(values):
                results[name].append(run())
            print(f"round {r + 1}: {name}: {results[name][-1]}", flush=True)
    rows = [(name, mib, statistics.median(p for p, _ in results[name]), statistics.median(t for _, t in results[name]))
            for name, mib, _, _ in jobs]
    print(f"\n{platform.processor() or platform.machine()}, ISA {cpu_isa()}, {a.threads} threads, "
          f"pp{a.prompt} / tg{a.gen}, median of {a.reps}" + (f", then of {a.rounds} rounds" if a.rounds > 1 else "")
          + "\n")
    print(f"| runtime, model | MiB | prefill tokens/s (pp{a.prompt}) | decode tokens/s (tg{a.gen}) |")
    print("|---|---|---|---|")
    for name, mib, pre, dec in rows:
        print(f"| {name} | {mib:.1f} | {pre:.0f} | {dec:.1f} |")
    if a.profile:
        a.profile.mkdir(parents=True, exist_ok=True)
        for f in a.folders:
            for what, per_op in zip((f"prefill of {a.prompt} tokens", "one decode step"),
                                    profile(f, a.threads, a.profile, a.prompt)):
                whole = per_op.pop("(whole run)")
                print(f"\n{f.name}, {what}: {whole:.2f} ms; ms per op type (sum over its nodes)")
                for name, ms in sorted(per_op.items(), key=lambda kv: -kv[1])[:8]:
                    print(f"  {name:24s} {ms:8.3f}  ({100 * ms / whole:4.1f} %)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""CPU cost of quantizing one LLaMA-3-70B decoder layer: vptq_quantize per Linear shape and
HessianAccumulator.add_batch per calibration batch, measured on shapes this machine can hold and
extrapolated to the 70B shapes.

LLaMA-3-70B (hidden 8192, intermediate 28672, 64 query / 8 KV heads of 128, 80 layers) has per
decoder layer the Linears [N out, K in]: q_proj and o_proj 8192x8192, k_proj and v_proj
1024x8192, gate_proj and up_proj 28672x8192, down_proj 8192x28672. quantize() collects one
Hessian per distinct Linear input (q/k/v share one, gate/up share one: four per layer, three of
K = 8192 and down_proj's of K = 28672) and calls vptq_quantize(W [N, K] float32, H [K, K] float64,
config, seed) on every Linear (vq2trt/quantize.py `_quantize_layer`).

What is measured (one process, --threads torch threads, default 1):
  * HessianAccumulator(K).add_batch(X [--batch-tokens, K]) for K in --k-values (default 8 x 2048 =
    16384 tokens, quantize()'s batch of 8 sequences of 2048), one random float32 X with per-channel
    scales; its finalize() is the H every vptq_quantize call of that K gets (rank K as tokens >= K).
  * vptq_quantize(W, H, QuantConfig(**PRESETS[--config], kmeans_iters=--kmeans-iters), seed=0)
    with W = 0.02 * randn [N, K], for the (K, N) pairs of --plan; also each call's peak RSS above
    the level before it (polled every 20 ms).

How it is extrapolated (assumptions, printed with the table):
  * At fixed K, vptq_quantize costs a(K) + b(K) N: per-column work (nearest centroid for N/v
    vectors, the GPTQ-style error feedback, the proxy error's N x K x K products) is linear in N;
    the K x K Hessian work (permutation, damping, Cholesky, inverse) and k-means (capped at
    kmeans_max_vectors sampled vectors) do not depend on N. a and b of a measured K come from its
    two largest N (the marginal cost per row where W no longer fits in cache); checked by fitting
    the two smallest N and predicting the largest, printed for every K with three N.
  * Over K: a(K) = A K^3 + B K + C (dense Cholesky/inverse; per-column overhead; k-means) and
    b(K) = D K + E K^2 (nearest search and feedback; the N x K x K products), coefficients
    non-negative, fitted on the --fit-k values and checked against the --check-k measurement.
    K = 28672 (down_proj) is not run: its H is 6 GiB of float64 and vptq_quantize holds several
    such matrices at once (the peak column), far more than this machine has.
  * add_batch costs c K^2 at a fixed token count (an n x K x K matrix product plus K x K integer
    work); c from the largest K measured.
  * Per decoder layer: the 7 vptq_quantize calls plus --calib-batches add_batch calls on each of
    the four accumulators (default 16 = 128 x 2048 calibration tokens in batches of 8). The decoder
    layer's own forward passes (two per batch: collecting Hessians, then the next layer's inputs)
    are estimated from a measured float32 matmul rate, not timed. Layer-wise fine-tuning,
    distillation, I/O and the memory limits are not counted. All numbers are for --threads threads
    of this CPU, and the machine may be shared (see RESULTS.md): treat them as an order of magnitude.

    .venv/bin/python benchmarks/layer_cost.py                         # ~10 min on 1 thread
    .venv/bin/python benchmarks/layer_cost.py --kmeans-iters 100 --threads 2
    .venv/bin/python benchmarks/layer_cost.py --plan 2048:1024,2048 --fit-k 2048 --check-k 0   # smoke test
"""

from __future__ import annotations

import argparse
import itertools
import sys
import threading
import time

import numpy as np
import torch
from machine import cpu_label  # benchmarks/machine.py: scripts run as benchmarks/NAME.py

LLAMA3_70B = dict(hidden=8192, intermediate=28672, q_out=8192, kv_out=1024, layers=80)
DEFAULT_PLAN = "2048:1024,2048,4096;4096:1024,2048,4096;8192:1024,2048,4096;12288:1024"


class PeakRSS:
    """Largest VmRSS of this process between reset() and peak(), polled in a thread (Linux)."""

    def __init__(self, every: float = 0.02):
        self._peak, self._every = 0, every
        threading.Thread(target=self._run, daemon=True).start()

    @staticmethod
    def now() -> int:
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def _run(self):
        while True:
            self._peak = max(self._peak, self.now())
            time.sleep(self._every)

    def reset(self) -> int:
        self._peak = base = self.now()
        return base

    def peak(self) -> int:
        time.sleep(2 * self._every)
        return max(self._peak, self.now())


def parse_plan(text: str) -> dict[int, list[int]]:
    plan = {}
    for part in filter(None, text.split(";")):
        k, ns = part.split(":")
        plan[int(k)] = [int(n) for n in ns.split(",")]
    return plan


def nnls_fit(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least squares in relative error with coefficients >= 0 (best of the column subsets)."""
    w = 1.0 / y
    best, best_r = np.zeros(X.shape[1]), np.inf
    for r in range(1, X.shape[1] + 1):
        for cols in itertools.combinations(range(X.shape[1]), r):
            c, *_ = np.linalg.lstsq(X[:, cols] * w[:, None], y * w, rcond=None)
            if (c < 0).any():
                continue
            full = np.zeros(X.shape[1])
            full[list(cols)] = c
            res = float(np.sum(((X @ full) * w - 1) ** 2))
            if res < best_r - 1e-12:
                best, best_r = full, res
    return best


def fmt_s(s: float) -> str:
    if s >= 3600:
        return f"{s / 3600:.1f} h"
    if s >= 120:
        return f"{s / 60:.1f} min"
    return f"{s:.1f} s"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="v4-k256", help="vq2trt preset (default v4-k256)")
    ap.add_argument("--kmeans-iters", type=int, default=25, help="k-means iterations (default 25, as `make demo`)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--plan", default=DEFAULT_PLAN, help=f"K:N,N;K:N... shapes to time (default {DEFAULT_PLAN!r})")
    ap.add_argument("--fit-k", default="2048,4096,8192", help="K values the over-K model is fitted on")
    ap.add_argument("--check-k", type=int, default=12288, help="K the over-K model is checked on (0: none)")
    ap.add_argument("--batch-tokens", type=int, default=8 * 2048, help="tokens per add_batch (default 16384)")
    ap.add_argument("--calib-batches", type=int, default=16,
                    help="calibration batches per layer (default 16: 128 x 2048 tokens in batches of 8)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()

    torch.set_num_threads(a.threads)
    from vq2trt.algo import HessianAccumulator, vptq_quantize
    from vq2trt.config import PRESETS, QuantConfig

    cfg = QuantConfig(**PRESETS[a.config], kmeans_iters=a.kmeans_iters)
    plan = parse_plan(a.plan)
    fit_k = [int(k) for k in a.fit_k.split(",") if k]
    rss = PeakRSS()
    g = torch.Generator().manual_seed(a.seed)
    t_all = time.perf_counter()

    # A float32 matmul rate for the forward-pass estimate: [2048, 8192] @ [8192, 8192].
    A, B = torch.randn(2048, 8192, generator=g), torch.randn(8192, 8192, generator=g)
    A @ B
    t0 = time.perf_counter()
    A @ B
    gflops = 2 * 2048 * 8192 * 8192 / (time.perf_counter() - t0) / 1e9
    del A, B
    print(f"float32 matmul: {gflops:.0f} GFLOP/s on {a.threads} thread(s)", flush=True)

    hess: dict[int, float] = {}
    vptq: dict[tuple[int, int], dict] = {}
    for K in sorted(plan):
        scale = torch.exp(0.5 * torch.randn(K, generator=g))              # [K] channel magnitudes vary
        X = torch.randn(a.batch_tokens, K, generator=g) * scale           # [n, K]
        acc = HessianAccumulator(K)
        t0 = time.perf_counter()
        acc.add_batch(X)
        hess[K] = time.perf_counter() - t0
        del X
        H = acc.finalize()                                                 # [K, K] float64
        del acc
        print(f"K={K}: add_batch [{a.batch_tokens}, {K}] {hess[K]:.2f} s", flush=True)
        for N in plan[K]:
            W = torch.randn(N, K, generator=g) * 0.02                      # [N, K]
            base = rss.reset()
            t0 = time.perf_counter()
            _, stats = vptq_quantize(W, H, cfg, seed=0)
            dt = time.perf_counter() - t0
            r = vptq[(K, N)] = dict(s=dt, km=stats["kmeans_time_s"], peak=rss.peak() - base, err=stats["proxy_err"])
            print(f"  vptq_quantize {N}x{K}: {dt:.1f} s (k-means {r['km']:.1f} s), +{r['peak'] / 2**20:.0f} MiB peak",
                  flush=True)
            del W
        del H

    # ---- fits
    def ab(K, ns=None):
        ns = sorted(n for k, n in vptq if k == K)[-2:] if ns is None else ns
        if len(ns) < 2:
            return None
        X = np.array([[1.0, n] for n in ns])
        y = np.array([vptq[(K, n)]["s"] for n in ns])
        return nnls_fit(X, y)                                              # [a, b]

    lin_checks = []
    for lin_k in sorted(k for k in plan if len(plan[k]) >= 3):
        ns = sorted(plan[lin_k])
        c = ab(lin_k, ns[:2])
        pred = c[0] + c[1] * ns[-1]
        per_row = [(vptq[(lin_k, n1)]["s"] - vptq[(lin_k, n0)]["s"]) / (n1 - n0) for n0, n1 in zip(ns, ns[1:])]
        lin_checks.append((lin_k, ns, pred, vptq[(lin_k, ns[-1])]["s"], per_row))
    coef = {k: ab(k) for k in plan if ab(k) is not None}
    fk = [k for k in fit_k if k in coef]
    if not fk:
        print("no K with two N values to fit; nothing to extrapolate")
        return 1
    Ks = np.array(fk, dtype=float)
    a_fit = nnls_fit(np.stack([Ks ** 3, Ks, np.ones_like(Ks)], 1), np.array([coef[k][0] for k in fk]))
    b_fit = nnls_fit(np.stack([Ks, Ks ** 2], 1), np.array([coef[k][1] for k in fk]))

    def model(N, K):
        if K in coef:                                                     # measured K: its own a + b N
            return coef[K][0] + coef[K][1] * N
        return a_fit @ [K ** 3, K, 1] + b_fit @ [K, K ** 2] * N

    def model_k(N, K):                                                    # the over-K model only
        return a_fit @ [K ** 3, K, 1] + b_fit @ [K, K ** 2] * N

    kh = max(hess)
    c_h = hess[kh] / kh ** 2

    def hess_s(K):
        return hess[K] if K in hess else c_h * K ** 2

    # ---- the 70B layer
    d, f, kv = LLAMA3_70B["hidden"], LLAMA3_70B["intermediate"], LLAMA3_70B["kv_out"]
    linears = [("q_proj", d, d), ("k_proj", kv, d), ("v_proj", kv, d), ("o_proj", d, d),
               ("gate_proj", f, d), ("up_proj", f, d), ("down_proj", d, f)]

    def how(N, K):
        if (K, N) in vptq:
            return "measured"
        if K in coef:
            ns = sorted(n for k, n in vptq if k == K)[-2:]
            return f"a + b*N through N={','.join(map(str, ns))} at K={K}"
        return f"over-K model fitted at K={','.join(map(str, fk))}"

    per_layer_vptq = sum(model(N, K) for _, N, K in linears)
    accs = [("q/k/v (shared)", d), ("o_proj", d), ("gate/up (shared)", d), ("down_proj", f)]
    per_batch_h = sum(hess_s(K) for _, K in accs)
    per_layer_h = a.calib_batches * per_batch_h
    params = sum(N * K for _, N, K in linears)
    fwd = 2 * a.calib_batches * 2 * a.batch_tokens * params / (gflops * 1e9)
    total = per_layer_vptq + per_layer_h + fwd

    print()
    print(f"CPU: {cpu_label()}; torch {torch.__version__}; {a.threads} thread(s); config {a.config} "
          f"(v={cfg.vector_len}, k={cfg.num_centroids}), kmeans_iters {cfg.kmeans_iters}, kmeans_max_vectors "
          f"{cfg.kmeans_max_vectors}; float32 matmul {gflops:.0f} GFLOP/s")
    print()
    print("Measured:")
    print()
    print("| call | shape | seconds | k-means s | peak RSS above start | peak / (K x K x 8 bytes) |")
    print("|---|---|---:|---:|---:|---:|")
    for K in sorted(hess):
        print(f"| HessianAccumulator.add_batch | [{a.batch_tokens}, {K}] | {hess[K]:.2f} | | | |")
    for (K, N), r in sorted(vptq.items()):
        print(f"| vptq_quantize | {N} x {K} | {r['s']:.1f} | {r['km']:.1f} | {r['peak'] / 2**20:,.0f} MiB | "
              f"{r['peak'] / (K * K * 8):.1f} |")
    print()
    for k, ns, pred, got, per_row in lin_checks:
        steps = ", ".join(f"{n0}->{n1}: {r * 1e3:.2f}" for n0, n1, r in zip(ns, ns[1:], per_row))
        print(f"linearity in N at K={k}: a + b*N through N={ns[0]},{ns[1]} predicts {pred:.1f} s at N={ns[-1]}, "
              f"measured {got:.1f} s ({pred / got - 1:+.0%}); ms per extra row {steps}")
    print(f"over-K fit: a(K) = {a_fit[0]:.3e} K^3 + {a_fit[1]:.3e} K + {a_fit[2]:.2f} s; "
          f"b(K) = {b_fit[0]:.3e} K + {b_fit[1]:.3e} K^2 s per row")
    for k in sorted(coef):
        print(f"  K={k}: a = {coef[k][0]:.2f} s, b = {coef[k][1] * 1e3:.3f} ms/row; over-K model "
              f"a = {a_fit @ [k ** 3, k, 1]:.2f}, b = {b_fit @ [k, k ** 2] * 1e3:.3f}")
    if a.check_k and any(k == a.check_k for k, _ in vptq):
        for (k, n), r in sorted(vptq.items()):
            if k == a.check_k:
                p = model_k(n, k)
                print(f"over-K check at {n} x {k}: model {p:.1f} s, measured {r['s']:.1f} s ({p / r['s'] - 1:+.0%})")
    print(f"add_batch: {c_h * 1e9:.3f} ns x K^2 per batch of {a.batch_tokens} tokens (from K={kh})"
          + "".join(f"; K={k} measured {hess[k]:.2f} s vs K^2 model {c_h * k * k:.2f} s" for k in sorted(hess)
                    if k != kh))
    print()
    print(f"LLaMA-3-70B, one decoder layer ({params / 1e6:.0f} M Linear weights), {a.threads} thread(s):")
    print()
    print("| step | shape [N, K] | count | seconds each | seconds per layer | how |")
    print("|---|---|---:|---:|---:|---|")
    for name, N, K in linears:
        s = model(N, K)
        print(f"| vptq_quantize {name} | {N} x {K} | 1 | {s:,.0f} | {s:,.0f} | {how(N, K)} |")
    for name, K in accs:
        s = hess_s(K)
        src = "measured" if K in hess else f"c K^2, c from K={kh}"
        print(f"| add_batch {name} | [{a.batch_tokens}, {K}] | {a.calib_batches} | {s:,.1f} | "
              f"{s * a.calib_batches:,.0f} | {src} |")
    print(f"| layer forward, 2 passes per batch | {a.batch_tokens} tokens | {2 * a.calib_batches} | "
          f"{fwd / (2 * a.calib_batches):,.1f} | {fwd:,.0f} | estimate: 2 x tokens x weights / matmul rate |")
    print(f"| **one decoder layer** | | | | **{total:,.0f}** ({fmt_s(total)}) | |")
    print(f"| **80 decoder layers** | | | | **{80 * total:,.0f}** ({fmt_s(80 * total)}) | VPTQ "
          f"{fmt_s(80 * per_layer_vptq)}, Hessians {fmt_s(80 * per_layer_h)}, forward {fmt_s(80 * fwd)} |")
    print()
    print("Assumptions: vptq_quantize = a(K) + b(K) N (linear in rows at fixed K, slope from the two largest N "
          "measured); over K, a = A K^3 + B K + C and "
          "b = D K + E K^2 (non-negative fit), used only for down_proj's K = 28672; add_batch = c K^2 at "
          f"{a.batch_tokens} tokens; {a.calib_batches} calibration batches per layer; forward estimated, not timed; "
          "no fine-tuning, distillation or I/O; single process on this CPU.")
    k_top = max(k for k, _ in vptq)
    ratio = max(r["peak"] / (k * k * 8) for (k, _), r in vptq.items() if k == k_top)
    print(f"down_proj's K = {f}: H alone is {f * f * 8 / 2**30:.1f} GiB float64 (the accumulator's int64 sum as "
          f"much); at the peak ratio measured at K={k_top} ({ratio:.1f} x K x K x 8 bytes above the level before the "
          f"call) vptq_quantize would need ~{ratio * f * f * 8 / 2**30:.0f} GiB more.")
    print(f"benchmark wall time {time.perf_counter() - t_all:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

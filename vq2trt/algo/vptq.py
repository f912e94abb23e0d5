"""VPTQ (Liu et al., 2024): vector post-training quantization of one Linear.

Vectors of length v run down the output dimension: column j of W [N, K] (one
input channel) becomes R = ceil(N / v) vectors. Codebooks come from k-means
weighted by diag(H); indices are then chosen column by column in a GPTQ loop
that pushes each column's error into the columns not yet quantized, so the
layer-output proxy tr(ΔW H ΔWᵀ) is minimised rather than the plain weight error.
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F

from vq2trt.algo.hessian import inverse_cholesky, prepare_hessian, proxy_error
from vq2trt.algo.kmeans import nearest, weighted_kmeans
from vq2trt.config import QuantConfig
from vq2trt.format import VQWeight
from vq2trt.reference import dequantize_torch

_MAIN, _OUTLIER, _RESIDUAL = 0, 1, 2


def _sub_seed(seed: int, tag: int, g: int) -> int:
    """Seed of one k-means run: fixed arithmetic (not hash()), so it is the same in every process."""
    return (int(seed) * 1_000_003 + tag * 7_919 + g) % (2**63 - 1)


def _vectors(Wc: torch.Tensor, v: int) -> torch.Tensor:
    """Columns Wc [N, c] -> their vectors [c * R, v], column-major, rows zero-padded to R * v."""
    N, c = Wc.shape
    R = math.ceil(N / v)
    return F.pad(Wc.T, (0, R * v - N)).reshape(c * R, v)


def _fit_codebook(Wc: torch.Tensor, col_w: torch.Tensor, k: int, v: int, cfg: QuantConfig, seed: int):
    """Hessian-weighted k-means on the vectors of Wc [N, c]; each vector weighs diag(H') of its column.

    Centroids are rounded to fp16 at once, so the loop uses exactly what is stored.
    """
    R = math.ceil(Wc.shape[0] / v)
    X = _vectors(Wc, v)                      # [c * R, v]
    wts = col_w.repeat_interleave(R)         # [c * R]
    m = cfg.kmeans_max_vectors
    if m and X.shape[0] > max(m, k):
        # A seeded uniform sample keeps the weighted objective unbiased at a fraction of the cost.
        g = torch.Generator().manual_seed(_sub_seed(seed, 99, 0))
        pick = torch.randperm(X.shape[0], generator=g)[:max(m, k)].sort().values.to(X.device)
        X, wts = X[pick], wts[pick]
    C, _, hist = weighted_kmeans(X, wts, k, cfg.kmeans_iters, cfg.kmeans_tol, seed)
    return C.half().float(), len(hist)       # [k, v]


def _nearest_padded(x: torch.Tensor, C: torch.Tensor, last_valid: int) -> torch.Tensor:
    """nearest() for vectors x [R, v] whose last one holds only ``last_valid`` real entries (the rest is padding)."""
    if last_valid == x.shape[1]:
        return nearest(x, C)
    return torch.cat([nearest(x[:-1], C), nearest(x[-1:, :last_valid], C[:, :last_valid])])


def _quant_column(w: torch.Tensor, C: torch.Tensor, Cr: torch.Tensor | None):
    """One column w [N] -> (q [N], idx [R], ridx [R] or None): main centroid, then residual centroid."""
    N, v = w.shape[0], C.shape[1]
    R = math.ceil(N / v)
    valid = N - (R - 1) * v                   # real entries of the last vector
    x = F.pad(w, (0, R * v - N)).reshape(R, v)  # [R, v]
    idx = _nearest_padded(x, C, valid)         # [R]
    qv = C[idx]                                # [R, v]
    ridx = None
    if Cr is not None:
        ridx = _nearest_padded(x - qv, Cr, valid)
        qv = qv + Cr[ridx]                     # float32 sum, the same arithmetic as reference.dequantize
    return qv.reshape(-1)[:N], idx, ridx


class _Books:
    """The codebooks of one pass and the index matrices it fills: which codebook quantizes permuted column j."""

    def __init__(self, N: int, K: int, n_out: int, gs: int, main, res=None, outlier=None):
        self.n_out, self.gs = n_out, gs
        self.main, self.res, self.outlier = main, res, outlier  # per group [k, v]; per group [k_r, v]; [k_o, v_o]
        dev = main[0].device
        R = math.ceil(N / main[0].shape[1])
        self.idx = torch.zeros(R, K - n_out, dtype=torch.int64, device=dev)          # [R, C]
        self.ridx = None if res is None else torch.zeros_like(self.idx)               # [R, C]
        self.oidx = None
        if n_out:
            R_o = math.ceil(N / outlier.shape[1])
            self.oidx = torch.zeros(R_o, n_out, dtype=torch.int64, device=dev)        # [R_o, n_out]

    def quantize(self, j: int, w: torch.Tensor) -> torch.Tensor:
        if j < self.n_out:
            q, self.oidx[:, j], _ = _quant_column(w, self.outlier, None)
            return q
        c = j - self.n_out
        g = c // self.gs
        q, self.idx[:, c], ridx = _quant_column(w, self.main[g], None if self.res is None else self.res[g])
        if ridx is not None:
            self.ridx[:, c] = ridx
        return q


def _vq_pass(W: torch.Tensor, U: torch.Tensor | None, books: _Books, block_size: int):
    """Quantize W [N, K] (permuted, normalised) column by column.

    U is the upper Cholesky factor of H'⁻¹: quantizing column j with error e
    is compensated optimally by subtracting e / U[j, j] * U[j, l] from every
    later column l (GPTQ). U = None quantizes every column on its own (no
    feedback), the baseline the feedback has to beat.
    Returns (Q [N, K], E [N, K]) with E the error left in each column when it was quantized.
    """
    N, K = W.shape
    W = W.clone()                  # [N, K] columns not yet quantized absorb the feedback
    Q = torch.zeros_like(W)        # [N, K]
    E = torch.zeros_like(W)        # [N, K]
    for i1 in range(0, K, block_size):
        i2 = min(i1 + block_size, K)
        W1 = W[:, i1:i2]               # [N, b] view: updates land in W
        Err1 = torch.zeros_like(W1)    # [N, b]
        for t in range(i2 - i1):
            w = W1[:, t]               # [N]
            q = books.quantize(i1 + t, w)
            Q[:, i1 + t] = q
            E[:, i1 + t] = w - q
            if U is not None:
                err = (w - q) / U[i1 + t, i1 + t]                   # [N]
                W1[:, t + 1:] -= err[:, None] * U[i1 + t, None, i1 + t + 1:i2]
                Err1[:, t] = err
        if U is not None and i2 < K:
            # one matrix product carries the whole block's error into the later blocks
            W[:, i2:] -= Err1 @ U[i1:i2, i2:]
    return Q, E


def vptq_quantize(W: torch.Tensor, H: torch.Tensor, cfg: QuantConfig, *, bias=None,
                  seed: int | None = None) -> tuple[VQWeight, dict]:
    """Quantize W [N, K] with VPTQ against H = E[x xᵀ] [K, K] (raw, from HessianAccumulator).

    Returns the stored VQWeight and stats: proxy_err (tr(ΔW H ΔWᵀ)/tr(W H Wᵀ) of
    the dequantized weight), proxy_err_nearest (same codebooks, every vector
    just takes its nearest centroid), time_s, kmeans_time_s, kmeans_iters
    (Lloyd iterations over all codebooks), damp_retries.
    """
    t_start = time.perf_counter()
    seed = cfg.seed if seed is None else int(seed)
    if W.ndim != 2:
        raise ValueError(f"vptq_quantize: W must be [out_features, in_features], got shape {tuple(W.shape)}")
    N, K = W.shape
    if tuple(H.shape) != (K, K):
        raise ValueError(f"vptq_quantize: H has shape {tuple(H.shape)}, W [{N}, {K}] needs [{K}, {K}]")
    dev = W.device
    W0 = W.detach().float()                                   # [N, K] original, for the proxy
    H = H.detach().to(device=dev, dtype=torch.float64)        # [K, K]
    if not (torch.isfinite(W0).all() and torch.isfinite(H).all()):
        raise ValueError("vptq_quantize: W or H contains NaN or Inf")
    dead = torch.diagonal(H) <= 0                             # [K] inputs that were always zero
    Wz = W0.clone()
    Wz[:, dead] = 0                                           # their weights are free: make them cheap

    # Normalisation: quantize Wn = (W - b) / s; ΔW = ΔWn S, so the objective for Wn uses H' = S H S.
    col_scale = col_bias = None
    if cfg.enable_norm:
        lo, hi = Wz.min(0).values, Wz.max(0).values          # [K]
        col_scale = (hi - lo).clamp(max=65504.0).half()       # [K] fp16, what is stored
        col_scale[col_scale == 0] = 1
        col_bias = lo.clamp(min=-65504.0).half()              # [K] fp16
        s = col_scale.float()
        Wn = (Wz - col_bias.float()) / s                      # [N, K]
        Hs = H * (s.double()[:, None] * s.double()[None, :])  # [K, K] = S H S
    else:
        Wn, Hs = Wz, H

    # Permutation: most salient inputs (largest diag H') first, so they are quantized before
    # they can absorb error, and the outlier codebook gets them.
    d = torch.diagonal(Hs).clamp(min=0)                       # [K]
    if cfg.enable_perm:
        perm = torch.sort(d, descending=True, stable=True).indices  # [K]
    else:
        perm = torch.arange(K, device=dev)
    Wp = Wn[:, perm].contiguous()                              # [N, K] permuted
    col_w = d[perm]                                           # [K] k-means weight of each column
    Hp, _ = prepare_hessian(Hs[perm][:, perm], cfg.damp)      # [K, K]
    U, retries = inverse_cholesky(Hp, cfg.damp)
    U = U.float()                                             # [K, K] upper Cholesky factor of H'⁻¹

    # Codebooks: one for the outlier columns, one per group of the regular columns.
    n_out = cfg.num_outlier_cols(K)
    C_reg = K - n_out
    G = cfg.num_groups
    if G > C_reg:
        raise ValueError(f"vptq_quantize: num_groups={G} exceeds the {C_reg} regular input columns of this layer")
    gs = math.ceil(C_reg / G)
    v, k = cfg.vector_len, cfg.num_centroids
    t_km = time.perf_counter()
    iters = 0

    def fit_groups(Wsrc: torch.Tensor, kk: int, tag: int) -> list[torch.Tensor]:
        """One codebook [kk, v] per group, fitted to the group's columns of Wsrc [N, K]."""
        nonlocal iters
        books = []
        for g in range(G):
            lo, hi = n_out + g * gs, min(n_out + (g + 1) * gs, K)
            if lo >= hi:  # ceil-sized groups can leave trailing groups empty; they still need a stored codebook
                books.append(torch.zeros(kk, v, device=dev))
                continue
            C, it = _fit_codebook(Wsrc[:, lo:hi], col_w[lo:hi], kk, v, cfg, _sub_seed(seed, tag, g))
            books.append(C)
            iters += it
        return books

    outlier = None
    if n_out:
        outlier, iters = _fit_codebook(Wp[:, :n_out], col_w[:n_out], cfg.outlier_num_centroids,
                                       cfg.outlier_vector_len, cfg, _sub_seed(seed, _OUTLIER, 0))
    main = fit_groups(Wp, k, _MAIN)
    t_km = time.perf_counter() - t_km
    books = _Books(N, K, n_out, gs, main, None, outlier)
    _, E = _vq_pass(Wp, U, books, cfg.block_size)

    if cfg.num_res_centroids:
        # Residual codebooks fit the error the first pass left in each column (what the residual
        # has to express); a second pass then picks main + residual centroid with feedback.
        t0 = time.perf_counter()
        res = fit_groups(E, cfg.num_res_centroids, _RESIDUAL)
        t_km += time.perf_counter() - t0
        books = _Books(N, K, n_out, gs, main, res, outlier)
        _vq_pass(Wp, U, books, cfg.block_size)

    vq = VQWeight.from_unpacked(
        out_features=N, in_features=K, perm=perm, indices=books.idx, codebook=torch.stack(main),
        res_indices=books.ridx, res_codebook=None if books.res is None else torch.stack(books.res),
        outlier_indices=books.oidx if n_out else None, outlier_codebook=outlier,
        col_scale=col_scale, col_bias=col_bias, bias=bias)

    # Baseline with the same codebooks: each vector takes its nearest centroid, no error feedback.
    Qn, _ = _vq_pass(Wp, None, _Books(N, K, n_out, gs, main, books.res, outlier), cfg.block_size)
    Wn_hat = torch.empty_like(Qn)
    Wn_hat[:, perm] = Qn
    if cfg.enable_norm:
        Wn_hat = Wn_hat * col_scale.float() + col_bias.float()

    W_hat = dequantize_torch(vq, device=dev)                  # [N, K] ground-truth dequantization
    stats = {
        "proxy_err": proxy_error(W_hat, W0, H),
        "proxy_err_nearest": proxy_error(Wn_hat, W0, H),
        "time_s": time.perf_counter() - t_start,
        "kmeans_time_s": t_km,
        "kmeans_iters": iters,
        "damp_retries": retries,
        "dead_cols": int(dead.sum()),
        "bits_per_weight": vq.bits_per_weight(),
    }
    return vq, stats

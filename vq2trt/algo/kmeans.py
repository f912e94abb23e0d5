"""Weighted k-means (Lloyd) with a seeded k-means++ start, deterministic on every device.

VPTQ initialises its codebooks with k-means on the weight vectors, each vector
weighted by diag(H) of its input channel. Everything here runs on the data's
device; only the random draws come from a CPU torch.Generator so that a seed
means the same thing everywhere.
"""

from __future__ import annotations

import torch

_SEED_POINTS_PER_CENTROID = 32


def _chunk_rows(X: torch.Tensor, k: int) -> int:
    """Rows per distance chunk: a cache-sized [m, k] block on CPU, ~128 MB on accelerators."""
    budget = 2**20 if X.device.type == "cpu" else 2**25  # elements of the [m, k] block
    return max(1, budget // max(k, 1))


def _assign(X: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
    """Index of the nearest centroid (L2) for every row of X [n, v] among C [k, v] -> int64 [n]."""
    n, k = X.shape[0], C.shape[0]
    mu = C.mean(0)       # [v]; centring leaves distances alone and shrinks the terms that cancel below
    X, C = X - mu, C - mu
    cn = (C * C).sum(1)  # [k]; ||x||² is the same for every centroid, so it is left out
    out = torch.empty(n, dtype=torch.int64, device=X.device)  # [n]
    m = _chunk_rows(X, k)
    for s in range(0, n, m):
        d = torch.addmm(cn, X[s:s + m], C.T, alpha=-2)  # [m, k]
        out[s:s + m] = d.argmin(1)
    return out


def _assign_bounded(X: torch.Tensor, C: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest centroid of every row of X [n, v] and a lower bound on the distance to any other centroid.

    Returns (assign int64 [n], lower float32 [n]). The bound is the second-smallest
    distance, shrunk by the round-off of the ||x||² - 2x·c + ||c||² expansion so
    that it stays a true lower bound.
    """
    n, k = X.shape[0], C.shape[0]
    mu = C.mean(0)                          # [v]; centring shrinks the terms that cancel below
    X, C = X - mu, C - mu
    cn = (C * C).sum(1)                     # [k]
    xn = (X * X).sum(1)                     # [n]
    slack = 1e-6 * (xn + cn.max())          # [n] bound on the expansion's error in a squared distance
    assign = torch.empty(n, dtype=torch.int64, device=X.device)  # [n]
    lower = torch.full((n,), float("inf"), device=X.device)        # [n]; k = 1: no other centroid
    m = _chunk_rows(X, k)
    for s in range(0, n, m):
        d = torch.addmm(cn, X[s:s + m], C.T, alpha=-2)  # [m, k] = ||x - c||² - ||x||²
        if k == 1:
            assign[s:s + m] = 0
            continue
        vals, idx = d.topk(2, 1, largest=False)          # [m, 2]
        assign[s:s + m] = idx[:, 0]
        lower[s:s + m] = (vals[:, 1] + xn[s:s + m] - slack[s:s + m]).clamp(min=0).sqrt()
    return assign, lower


def nearest(X: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
    """Nearest centroid (L2) of every row: X [n, v], C [k, v] -> int64 [n], computed in float32 chunks."""
    if X.ndim != 2 or C.ndim != 2 or X.shape[1] != C.shape[1]:
        raise ValueError(f"nearest: need X [n, v] and C [k, v], got {tuple(X.shape)} and {tuple(C.shape)}")
    return _assign(X.float(), C.to(device=X.device, dtype=torch.float32))


def _objective(X: torch.Tensor, w: torch.Tensor, C: torch.Tensor, assign: torch.Tensor) -> float:
    """sum_i w_i ||x_i - c_assign(i)||², from explicit differences (no cancellation), in float64."""
    d = ((X - C[assign]) ** 2).sum(1)  # [n]
    return float((w * d.double()).sum())


def _fixed_point(x: torch.Tensor, total: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 x -> int64 with a power-of-two resolution chosen so that sums up to |total| fit in 62 bits.

    Integer addition is exact, so sums and prefix sums of the result are the same
    in any order: atomics on CUDA cannot change a single bit.
    """
    # a power of two, so rescaling is exact; the floor on total keeps it finite when everything is 0
    scale = torch.exp2(60 - torch.ceil(torch.log2(total.clamp(min=2.0**-900))))
    return torch.floor(x * scale).to(torch.int64), scale


def _cluster_sums(X: torch.Tensor, w: torch.Tensor, assign: torch.Tensor, k: int):
    """Weighted sums sum_{i in c} w_i x_i [k, v] and weights sum_{i in c} w_i [k], float64, order-independent."""
    v = X.shape[1]
    Xw = torch.cat([X.double() * w[:, None], w[:, None]], 1)  # [n, v + 1]
    Xi, scale = _fixed_point(Xw, Xw.abs().sum(0))             # [n, v + 1] int64, [v + 1]
    S = torch.zeros(k, v + 1, dtype=torch.int64, device=X.device).index_add_(0, assign, Xi)  # [k, v + 1]
    S = S.double() / scale
    return S[:, :v], S[:, v]


def _kmeanspp(X: torch.Tensor, w: torch.Tensor, k: int, g: torch.Generator) -> torch.Tensor:
    """Weighted k-means++ seeding: the next centroid is drawn with probability w_i D(x_i)².

    Draws are inverse-CDF lookups of pre-drawn uniforms, so the loop never waits
    on the device. When fewer than k distinct weighted points exist the total
    mass hits 0 and the draw lands on the last point: a duplicate or a
    zero-weight point, which Lloyd leaves as an (empty) cluster keeping its value.
    """
    n, v = X.shape
    u = torch.rand(k, 1, generator=g, dtype=torch.float64).to(X.device)  # [k, 1]
    C = torch.empty(k, v, dtype=X.dtype, device=X.device)                 # [k, v]
    D = torch.ones(n, dtype=X.dtype, device=X.device)                     # [n] squared distance to the nearest centroid
    for c in range(k):
        p = w * D                                                         # [n] float64
        cs = torch.cumsum(_fixed_point(p, p.sum())[0], 0)                 # [n] int64: exact, order-free
        target = torch.floor(cs[-1:].double() * u[c]).to(torch.int64)     # [1]
        i = torch.searchsorted(cs, target, right=True).clamp_(max=n - 1)  # [1]
        C[c] = X.index_select(0, i)[0]
        D = torch.minimum(D, ((X - C[c]) ** 2).sum(1))
    return C


def weighted_kmeans(X: torch.Tensor, weights: torch.Tensor | None, k: int, iters: int = 100, tol: float = 1e-5,
                    seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """Weighted Lloyd k-means of X [n, v] with weights [n] >= 0 into k centroids.

    Returns (centroids float32 [k, v], assign int64 [n], history), where
    history[t] = sum_i w_i ||x_i - c_assign(i)||² after iteration t. Every
    iteration that would raise the objective (possible only through float
    round-off near convergence) is rejected and ends the run, so history never
    increases and the returned pair attains history[-1]. Stops early when the
    relative improvement drops below ``tol``. All-zero weights count as uniform.
    """
    if X.ndim != 2 or X.shape[0] == 0:
        raise ValueError(f"weighted_kmeans: X must be [n >= 1, v], got shape {tuple(X.shape)}")
    if k < 1 or iters < 0:
        raise ValueError(f"weighted_kmeans: need k >= 1 and iters >= 0, got k={k}, iters={iters}")
    X = X.detach().float()  # [n, v]
    n = X.shape[0]
    if weights is None:
        w = torch.ones(n, dtype=torch.float64, device=X.device)  # [n]
    else:
        w = weights.detach().to(device=X.device, dtype=torch.float64).reshape(-1)  # [n]
        if w.shape[0] != n:
            raise ValueError(f"weighted_kmeans: {w.shape[0]} weights for {n} points")
        if (w < 0).any() or not torch.isfinite(w).all():
            raise ValueError("weighted_kmeans: weights must be finite and >= 0")
        if not w.sum() > 0:
            w = torch.ones_like(w)
    if not torch.isfinite(X).all():
        raise ValueError("weighted_kmeans: points contain NaN or Inf")

    g = torch.Generator(device="cpu").manual_seed(int(seed))
    # Seeding is k sequential passes over the points; on a uniform subsample of 32 per centroid it costs
    # a fraction of one Lloyd iteration, and Lloyd on all points removes the difference.
    if n > _SEED_POINTS_PER_CENTROID * k:
        sub = torch.randperm(n, generator=g)[:_SEED_POINTS_PER_CENTROID * k].to(X.device)  # [m]
        C = _kmeanspp(X[sub], w[sub] if w[sub].sum() > 0 else torch.ones_like(w[sub]), k, g)  # [k, v]
    else:
        C = _kmeanspp(X, w, k, g)  # [k, v]
    # Lloyd with Hamerly's bounds: a point whose exact distance to its centroid is below a lower bound
    # on the distance to every other centroid keeps its assignment without a distance pass. After a few
    # iterations most points qualify, which makes an iteration cost O(n) instead of O(n k).
    assign, lower = _assign_bounded(X, C)  # [n], [n]
    obj = _objective(X, w, C, assign)
    history: list[float] = []
    for _ in range(iters):
        S, ws = _cluster_sums(X, w, assign, k)  # [k, v], [k]
        filled = ws > 0                          # [k]; empty clusters keep their centroid
        C_new = C.clone()
        C_new[filled] = (S[filled] / ws[filled, None]).float()
        moved = (C_new - C).norm(dim=1).max()    # no centroid came closer to any point by more than this
        assign_new = assign.clone()
        lower_new = lower - moved                # [n]
        upper = (X - C_new[assign]).norm(dim=1)  # [n] exact distance to the current centroid
        recheck = (upper > lower_new).nonzero().squeeze(1)  # [r]
        if recheck.numel():
            assign_new[recheck], lower_new[recheck] = _assign_bounded(X[recheck], C_new)
        obj_new = _objective(X, w, C_new, assign_new)
        if obj_new > obj:
            break
        improvement = obj - obj_new
        C, assign, lower, obj = C_new, assign_new, lower_new, obj_new
        history.append(obj)
        if improvement <= tol * obj or obj == 0:
            break
    return C, assign, history

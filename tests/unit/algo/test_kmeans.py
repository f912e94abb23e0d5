"""weighted_kmeans and nearest."""

from __future__ import annotations

import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from vq2trt.algo import nearest, weighted_kmeans


def _data(n: int, v: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, v, generator=g) * torch.rand(1, v, generator=g) * 3  # [n, v]
    w = torch.rand(n, generator=g) ** 3                                     # [n] skewed weights
    w[torch.rand(n, generator=g) < 0.2] = 0
    return X, w


def _objective(X, w, C, a) -> float:
    if not w.sum() > 0:  # weighted_kmeans' contract: all-zero weights count as uniform
        w = torch.ones_like(w)
    return float((w.double() * ((X - C[a]) ** 2).sum(1).double()).sum())


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 300), v=st.integers(1, 6), k=st.integers(1, 40), seed=st.integers(0, 2**31 - 1),
       tol=st.sampled_from([0.0, 1e-5, 1e-2]), duplicates=st.booleans())
@example(n=2, v=2, k=1, seed=0, tol=0.0, duplicates=False)  # every weight 0 (found by hypothesis in CI-like run)
def test_objective_never_increases(n, v, k, seed, tol, duplicates):
    X, w = _data(n, v, seed)
    if duplicates:
        X = X.round()  # many coincident points: ties, empty clusters, fewer distinct points than k
    C, a, hist = weighted_kmeans(X, w, k, iters=30, tol=tol, seed=seed)
    assert C.shape == (k, v) and C.dtype == torch.float32 and torch.isfinite(C).all()
    assert a.shape == (n,) and a.dtype == torch.int64 and 0 <= int(a.min()) and int(a.max()) < k
    assert len(hist) <= 30
    assert all(b <= a_ for a_, b in zip(hist, hist[1:], strict=False))
    if hist:
        assert _objective(X, w, C, a) == hist[-1]


def test_assignment_is_nearest_and_history_matches():
    X, w = _data(5000, 4, 1)
    C, a, hist = weighted_kmeans(X, w, 64, iters=50, tol=0, seed=0)
    assert torch.equal(a, nearest(X, C))
    assert len(hist) > 10 and hist[-1] < 0.95 * hist[0]
    assert _objective(X, w, C, a) == hist[-1]


def test_tol_stops_early():
    X, w = _data(3000, 2, 2)
    _, _, loose = weighted_kmeans(X, w, 32, iters=100, tol=1e-2, seed=0)
    _, _, tight = weighted_kmeans(X, w, 32, iters=100, tol=0, seed=0)
    assert len(loose) < len(tight)


def test_same_seed_same_result_other_seed_differs():
    X, w = _data(4000, 4, 3)
    C1, a1, h1 = weighted_kmeans(X, w, 32, iters=20, tol=0, seed=7)
    C2, a2, h2 = weighted_kmeans(X, w, 32, iters=20, tol=0, seed=7)
    assert torch.equal(C1, C2) and torch.equal(a1, a2) and h1 == h2
    C3, _, _ = weighted_kmeans(X, w, 32, iters=20, tol=0, seed=8)
    assert not torch.equal(C1, C3)


def test_weights_matter():
    g = torch.Generator().manual_seed(4)
    X = torch.randn(2000, 2, generator=g)
    X[0] = torch.tensor([2.5, 2.5])  # an ordinary point on the edge of the cloud...
    w = torch.ones(2000)
    w[0] = 1e4                       # ...that carries most of the weight
    C, a, _ = weighted_kmeans(X, w, 4, iters=50, tol=0, seed=0)
    assert float((C - X[0]).norm(dim=1).min()) < 0.05
    Cu, _, _ = weighted_kmeans(X, None, 4, iters=50, tol=0, seed=0)
    assert float((Cu - X[0]).norm(dim=1).min()) > 0.5


def test_fewer_points_than_centroids():
    X = torch.tensor([[0.0, 1.0], [2.0, 3.0], [2.0, 3.0], [5.0, -1.0]])
    C, a, hist = weighted_kmeans(X, torch.ones(4), 8, iters=10, tol=0, seed=0)
    assert C.shape == (8, 2)
    assert torch.equal(C[a], X)  # every point is a centroid
    assert not hist or hist[-1] == 0
    C, a, _ = weighted_kmeans(X[:1], None, 3, iters=5, seed=1)
    assert torch.equal(C, X[:1].expand(3, 2)) and a.tolist() == [0]


def test_zero_weights_count_as_uniform():
    X, _ = _data(500, 3, 5)
    C0, a0, _ = weighted_kmeans(X, torch.zeros(500), 8, iters=20, tol=0, seed=0)
    C1, a1, _ = weighted_kmeans(X, torch.ones(500), 8, iters=20, tol=0, seed=0)
    assert torch.equal(C0, C1) and torch.equal(a0, a1)


def test_nearest_matches_brute_force():
    g = torch.Generator().manual_seed(6)
    X = torch.randn(3000, 8, generator=g)
    C = torch.randn(300, 8, generator=g)
    expected = torch.cdist(X.double(), C.double()).argmin(1)
    got = nearest(X, C)
    d = torch.cdist(X.double(), C.double())
    # equal up to float32 near-ties
    assert torch.allclose(d.gather(1, got[:, None]), d.gather(1, expected[:, None]), rtol=1e-5, atol=1e-6)
    assert (got == expected).float().mean() > 0.999

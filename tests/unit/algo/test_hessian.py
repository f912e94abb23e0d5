"""HessianAccumulator, prepare_hessian, inverse_cholesky, proxy_error."""

from __future__ import annotations

import pytest
import torch

from vq2trt.algo import HessianAccumulator, inverse_cholesky, prepare_hessian, proxy_error


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_streamed_batches_equal_full_second_moment():
    K = 24
    g = _gen()
    batches = [torch.randn(n, K, generator=g) * 3 + 1 for n in (1, 7, 64, 5)]
    batches.append(torch.randn(2, 3, K, generator=g))  # [batch, seq, K]: every leading index is a token
    acc = HessianAccumulator(K)
    for x in batches:
        acc.add_batch(x)
    X = torch.cat([x.reshape(-1, K) for x in batches]).double()  # [n, K]
    expected = X.T @ X / X.shape[0]
    assert acc.count == X.shape[0]
    H = acc.finalize()
    assert H.dtype == torch.float64 and H.shape == (K, K)
    torch.testing.assert_close(H, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(acc.H, H, rtol=0, atol=0)


def test_low_precision_inputs_and_empty_batches():
    K = 8
    x = torch.randn(33, K, generator=_gen(1)).to(torch.bfloat16)
    acc = HessianAccumulator(K)
    acc.add_batch(x)
    acc.add_batch(torch.zeros(0, K, dtype=torch.float16))  # no tokens: nothing changes
    X = x.double()
    torch.testing.assert_close(acc.H, X.T @ X / 33, rtol=1e-5, atol=1e-6)
    assert acc.count == 33


def test_errors():
    acc = HessianAccumulator(6)
    with pytest.raises(ValueError, match="no calibration batch"):
        acc.finalize()
    with pytest.raises(ValueError, match="in_features=6"):
        acc.add_batch(torch.zeros(3, 5))
    acc.add_batch(torch.full((2, 6), float("nan")))
    with pytest.raises(ValueError, match="NaN"):
        acc.finalize()
    with pytest.raises(ValueError):
        HessianAccumulator(0)


def test_prepare_hessian_normalises_marks_dead_and_damps():
    K = 6
    x = torch.randn(50, K, generator=_gen(2), dtype=torch.float64) * 5
    x[:, 2] = 0
    H = x.T @ x / 50
    Hd, dead = prepare_hessian(H, 0.01)
    assert dead.tolist() == [False, False, True, False, False, False]
    mean = torch.diagonal(H).mean()
    alive = ~dead
    torch.testing.assert_close(Hd[alive][:, alive], H[alive][:, alive] / mean + 0.01 * torch.eye(K - 1,
                                                                                                 dtype=H.dtype))
    assert Hd[2, 2] == 1.01 and (Hd[2, [0, 1, 3, 4, 5]] == 0).all() and (Hd[[0, 1, 3, 4, 5], 2] == 0).all()
    assert torch.equal(H, x.T @ x / 50)  # input untouched


def test_inverse_cholesky_and_retry():
    K = 10
    A = torch.randn(K, K, generator=_gen(3), dtype=torch.float64)
    H, _ = prepare_hessian(A @ A.T + 0.1 * torch.eye(K, dtype=torch.float64), 0.01)
    U, retries = inverse_cholesky(H, 0.01)
    assert retries == 0
    torch.testing.assert_close(U.T @ U, torch.linalg.inv(H), rtol=1e-8, atol=1e-8)
    assert torch.equal(U, torch.triu(U))
    # smallest eigenvalue -0.05: fails as given and with +0.01, succeeds with +0.1
    bad = H - (torch.linalg.eigvalsh(H).min() + 0.05) * torch.eye(K, dtype=torch.float64)
    U, retries = inverse_cholesky(bad, 0.01)
    assert retries == 2 and torch.isfinite(U).all()
    torch.testing.assert_close(U.T @ U, torch.linalg.inv(bad + 0.1 * torch.eye(K, dtype=torch.float64)))


def test_proxy_error():
    W = torch.randn(5, 4, generator=_gen(4))
    H = torch.eye(4, dtype=torch.float64)
    assert proxy_error(W, W, H) == 0
    assert proxy_error(torch.zeros_like(W), W, H) == pytest.approx(1.0)
    assert proxy_error(torch.zeros(5, 4), torch.zeros(5, 4), H) == 0


def test_weighted_batches_equal_hand_computed_weighted_moment():
    K = 12
    g = _gen(5)
    xs = [torch.randn(9, K, generator=g), torch.randn(2, 5, K, generator=g)]  # [n, K] and [batch, seq, K]
    ws = [torch.rand(9, generator=g), torch.rand(2, 5, generator=g) * 10]
    ws[0][3] = 0                                                           # a token that does not matter
    acc = HessianAccumulator(K)
    for x, w in zip(xs, ws):
        acc.add_batch(x, w)
    X = torch.cat([x.reshape(-1, K) for x in xs]).double()                # [n, K]
    w = torch.cat([w.reshape(-1) for w in ws]).double()                   # [n]
    torch.testing.assert_close(acc.finalize(), (X.T * w) @ X / w.sum(), rtol=1e-5, atol=1e-7)
    assert acc.count == 19 and acc.weight_sum == pytest.approx(float(w.sum()))
    # Not the unweighted moment: the weights change H.
    assert not torch.allclose(acc.finalize(), X.T @ X / X.shape[0], rtol=1e-2)


def test_unit_weights_give_exactly_the_unweighted_hessian():
    K = 16
    g = _gen(6)
    batches = [torch.randn(n, 3, K, generator=g) for n in (1, 4, 7)]
    plain, ones = HessianAccumulator(K), HessianAccumulator(K)
    for x in batches:
        plain.add_batch(x)
        ones.add_batch(x, torch.ones(x.shape[:-1]))
    assert torch.equal(plain.finalize(), ones.finalize())
    assert plain.weight_sum == ones.weight_sum == plain.count == 36


def test_weight_errors():
    acc = HessianAccumulator(4)
    with pytest.raises(ValueError, match="leading shape"):
        acc.add_batch(torch.zeros(3, 4), torch.ones(4))
    with pytest.raises(ValueError, match="non-negative"):
        acc.add_batch(torch.zeros(2, 4), torch.tensor([1.0, -1.0]))
    with pytest.raises(ValueError, match="non-negative"):
        acc.add_batch(torch.zeros(2, 4), torch.tensor([1.0, float("nan")]))
    acc.add_batch(torch.ones(2, 4), torch.zeros(2))
    with pytest.raises(ValueError, match="weight 0"):
        acc.finalize()

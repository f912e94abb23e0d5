"""HessianAccumulator, prepare_hessian, inverse_cholesky, proxy_error."""

from __future__ import annotations

import math

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
    with pytest.raises(ValueError, match="NaN"):
        acc.add_batch(torch.full((2, 6), float("nan")))
    with pytest.raises(ValueError, match="no calibration batch"):
        acc.finalize()                      # the bad batch was not added
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


class _Pair:
    """Two processes' accumulators summed as Dist.all_reduce_sum would: exactly, as integers."""

    def __init__(self, other):
        self.other = other

    def all_reduce_sum(self, t):
        return t + self.other._sum

    def all_gather_sum(self, values):
        return [a + b for a, b in zip(values, [self.other.count, self.other._bound])]

    def all_gather_lists(self, values):
        return values + self.other._weights


@pytest.mark.parametrize("weighted", [False, True])
def test_sum_is_exact_whatever_the_order_or_split_of_batches(weighted):
    # Scales that make a float64 running sum depend on the order: tiny and huge batches mixed.
    g = _gen(7)
    xs = [torch.randn(40, 16, generator=g) * s for s in (1.0, 1e3, 1e-3, 30.0, 1e2)]
    ws = [torch.rand(40, generator=g) + 0.1 if weighted else None for _ in xs]

    def acc_of(order, grid_from=None):
        a = HessianAccumulator(16)
        if grid_from is not None:
            a.set_grid_from(xs[grid_from], ws[grid_from])
        for i in order:
            a.add_batch(xs[i], ws[i])
        return a

    one = acc_of(range(5))
    H = one.finalize()
    # a different order, after fixing the grid from batch 0 as every rank does
    assert torch.equal(acc_of([4, 2, 0, 3, 1], grid_from=0).finalize(), H)
    # two ranks: 0, 2, 4 and 1, 3 (the second fixes its grid from batch 0 without adding it)
    r0, r1 = acc_of([0, 2, 4]), acc_of([1, 3], grid_from=0)
    r0.all_reduce(_Pair(r1))
    assert torch.equal(r0.finalize(), H) and r0.count == one.count
    assert r0.weight_sum == one.weight_sum
    # The grid costs nothing that matters: against the float32 products summed in float64, each
    # batch is off by at most half a grid step, 2^-41 of batch 0's largest entry, besides
    # float64's rounding of the total.
    prods = torch.stack([_product(x, w).double() for x, w in zip(xs, ws)]).reshape(5, -1)  # [batches, K*K]
    ref = torch.tensor([math.fsum(col) for col in prods.T.tolist()], dtype=torch.float64)  # exact sums, rounded
    err = (one._sum.double().reshape(-1) * one.grid - ref).abs()
    assert (err <= 5 * one.grid / 2 + ref.abs() * 2.0 ** -52).all()   # grid steps + float64's own rounding
    assert one.grid <= float(torch.diagonal(_product(xs[0], ws[0])).max()) * 2.0 ** -39


def _product(x, w):
    xw = x if w is None else x * w.sqrt()[:, None]
    return xw.T @ xw

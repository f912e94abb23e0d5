"""vptq_quantize: error feedback, codebook features, stored form, determinism."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vq2trt import reference
from vq2trt.algo import nearest, proxy_error, rtn_quantize, vptq_quantize
from vq2trt.config import QuantConfig
from vq2trt.format import VQWeight

from .layers import correlated_layer


@pytest.fixture(scope="module")
def layer():
    return correlated_layer()


def cfg(**kw) -> QuantConfig:
    base = dict(vector_len=4, num_centroids=256, kmeans_iters=20)
    base.update(kw)
    return QuantConfig(**base)


def ref_proxy(w: VQWeight, W, H) -> float:
    return proxy_error(torch.from_numpy(reference.dequantize(w)), W, H)


def nearest_only(w: VQWeight, W) -> VQWeight:
    """Same codebook and normalisation, every vector its nearest centroid: VPTQ without error feedback."""
    N, K = W.shape
    v, k = w.vector_len, w.num_centroids
    Wn = W.double()
    if w.col_scale is not None:
        Wn = (Wn - torch.from_numpy(w.col_bias.astype(np.float64))) / torch.from_numpy(w.col_scale.astype(np.float64))
    Wp = Wn[:, torch.from_numpy(w.perm.astype(np.int64))].float()  # [N, K] permuted
    R = math.ceil(N / v)
    cb = torch.from_numpy(w.codebook.astype(np.float32))           # [1, k, v]
    X = torch.nn.functional.pad(Wp.T, (0, R * v - N)).reshape(K, R, v)
    idx = torch.stack([nearest(X[c], cb[0]) for c in range(K)], 1)  # [R, K]
    assert idx.max() < k
    return VQWeight.from_unpacked(out_features=N, in_features=K, perm=w.perm, indices=idx, codebook=cb,
                                  col_scale=w.col_scale, col_bias=w.col_bias)


def test_feedback_beats_nearest_and_rtn(layer):
    W, H = layer
    w, stats = vptq_quantize(W, H, cfg())
    assert stats["proxy_err"] == pytest.approx(ref_proxy(w, W, H), rel=1e-9)
    plain = ref_proxy(nearest_only(w, W), W, H)
    assert stats["proxy_err_nearest"] == pytest.approx(plain, rel=1e-6)
    rtn = proxy_error(rtn_quantize(W, 2, 128), W, H)  # 2 index bits per weight both
    assert stats["proxy_err"] < 0.7 * plain, (stats, plain)
    assert stats["proxy_err"] < 0.5 * rtn, (stats, rtn)
    assert stats["kmeans_iters"] >= 1 and stats["damp_retries"] == 0 and stats["time_s"] > 0


def test_residual_lowers_error(layer):
    W, H = layer
    base, s0 = vptq_quantize(W, H, cfg())
    res, s1 = vptq_quantize(W, H, cfg(num_res_centroids=16))
    assert res.res_codebook.shape == (1, 16, 4) and res.residual_indices().shape == (32, 256)
    assert np.array_equal(res.codebook, base.codebook)  # same main codebook, the residual only adds
    assert s1["proxy_err"] < 0.6 * s0["proxy_err"], (s0, s1)
    assert s1["proxy_err"] == pytest.approx(ref_proxy(res, W, H), rel=1e-9)


@pytest.mark.parametrize("kw", [
    dict(enable_norm=False, enable_perm=False),
    dict(enable_norm=True, enable_perm=False),
    dict(enable_norm=False, enable_perm=True),
    dict(outlier_frac=0.05, outlier_vector_len=2, outlier_num_centroids=64),
    dict(num_groups=3, num_centroids=64),
    dict(num_groups=2, num_res_centroids=8, outlier_frac=0.02, outlier_num_centroids=32),
    dict(vector_len=4, num_centroids=32, num_res_centroids=4, outlier_frac=0.03, outlier_vector_len=8,
         outlier_num_centroids=16),  # N = 126: the last vector of every column is partial
], ids=["plain", "norm", "perm", "outliers", "groups", "all", "partial"])
def test_features_store_what_the_loop_used(kw):
    W, H = correlated_layer(126, 100, seed=1)
    N, K = W.shape
    c = cfg(**kw)
    w, stats = vptq_quantize(W, H, c, bias=torch.arange(N, dtype=torch.float32))
    w.validate()
    VQWeight.from_tensors(w.tensors(), "roundtrip")
    n_out = c.num_outlier_cols(K)
    assert w.num_outlier_cols == n_out and w.num_groups == c.num_groups
    assert w.codebook.shape == (c.num_groups, c.num_centroids, c.vector_len)
    assert w.rows == math.ceil(N / c.vector_len) and w.main_indices().shape == (w.rows, K - n_out)
    if n_out:
        assert w.outlier_codebook.shape == (c.outlier_num_centroids, c.outlier_vector_len)
        assert w.outlier_index_matrix().shape == (math.ceil(N / c.outlier_vector_len), n_out)
    assert (w.col_scale is not None) == c.enable_norm and (w.col_bias is not None) == c.enable_norm
    diag = torch.diagonal(H)
    if c.enable_norm:
        diag = diag * torch.from_numpy(w.col_scale.astype(np.float64)) ** 2
    if c.enable_perm:
        assert (diag[torch.from_numpy(w.perm.astype(np.int64))].diff() <= 0).all()
    else:
        assert np.array_equal(w.perm, np.arange(K))
    assert np.array_equal(w.bias, np.arange(N, dtype=np.float32))
    # the loop's own weight is the stored one: its proxy equals the ground-truth dequantization's
    assert stats["proxy_err"] == pytest.approx(ref_proxy(w, W, H), rel=1e-9)
    assert stats["proxy_err"] < stats["proxy_err_nearest"]
    Wd = reference.dequantize(w)
    torch.testing.assert_close(reference.dequantize_torch(w), torch.from_numpy(Wd), rtol=0, atol=0)


def test_norm_stores_fp16_minmax():
    W, H = correlated_layer(64, 32, seed=2)
    w, _ = vptq_quantize(W, H, cfg(num_centroids=16))
    lo, hi = W.min(0).values, W.max(0).values
    assert w.col_scale.dtype == np.float16 and w.col_bias.dtype == np.float16
    np.testing.assert_array_equal(w.col_scale, (hi - lo).half().numpy())
    np.testing.assert_array_equal(w.col_bias, lo.half().numpy())


def test_empty_trailing_group():
    # 10 regular columns in 6 groups of ceil(10/6) = 2: the sixth group is empty but still stored
    W, H = correlated_layer(16, 10, seed=3)
    w, stats = vptq_quantize(W, H, cfg(num_centroids=4, num_groups=6))
    assert w.codebook.shape == (6, 4, 4)
    assert stats["proxy_err"] == pytest.approx(ref_proxy(w, W, H), rel=1e-9)


def test_dead_columns():
    W, H = correlated_layer(64, 48, seed=4)
    dead = [3, 17]
    H[dead, :] = 0
    H[:, dead] = 0
    w, stats = vptq_quantize(W, H, cfg(num_centroids=32, num_res_centroids=4))
    assert math.isfinite(stats["proxy_err"]) and stats["dead_cols"] == 2
    assert np.isfinite(reference.dequantize(w)).all()
    W2 = W.clone()
    W2[:, dead] = 1e3  # the weights of always-zero inputs change nothing
    w2, stats2 = vptq_quantize(W2, H, cfg(num_centroids=32, num_res_centroids=4))
    t1, t2 = w.tensors(), w2.tensors()
    assert t1.keys() == t2.keys() and all(np.array_equal(t1[n], t2[n]) for n in t1)
    assert stats2["proxy_err"] == pytest.approx(stats["proxy_err"], rel=1e-12)


def test_determinism(layer):
    W, H = layer
    W, H = W[:64, :128], H[:128, :128]
    c = cfg(num_centroids=64, num_res_centroids=4, outlier_frac=0.05, outlier_num_centroids=16)
    a, _ = vptq_quantize(W, H, c)
    b, _ = vptq_quantize(W.clone(), H.clone(), c)
    ta, tb = a.tensors(), b.tensors()
    assert ta.keys() == tb.keys()
    for n in ta:
        assert ta[n].dtype == tb[n].dtype and ta[n].tobytes() == tb[n].tobytes(), n
    d, _ = vptq_quantize(W, H, c, seed=c.seed + 1)
    assert not np.array_equal(d.codebook, a.codebook)


def test_damping_retry(layer):
    W, H = layer
    W, H = W[:32, :64], H[:64, :64].clone()
    lam = torch.linalg.eigvalsh(H / torch.diagonal(H).mean()).min()
    H -= (lam + 0.05) * torch.diagonal(H).mean() * torch.eye(64, dtype=H.dtype)  # indefinite
    H.diagonal().clamp_(min=1e-3)  # still no dead columns
    w, stats = vptq_quantize(W, H, cfg(num_centroids=16, enable_norm=False))
    assert stats["damp_retries"] > 0
    w.validate()


def test_errors(layer):
    W, H = layer
    with pytest.raises(ValueError, match="H has shape"):
        vptq_quantize(W, H[:10, :10], cfg())
    with pytest.raises(ValueError, match="num_groups"):
        vptq_quantize(W[:, :4], H[:4, :4], cfg(num_groups=5))
    Wn = W.clone()
    Wn[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        vptq_quantize(Wn, H, cfg())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu_and_is_deterministic(layer):
    W, H = layer
    c = cfg(num_res_centroids=16, outlier_frac=0.02, outlier_num_centroids=64, num_groups=2)
    a, sa = vptq_quantize(W.cuda(), H.cuda(), c)
    b, _ = vptq_quantize(W.cuda(), H.cuda(), c)
    ta, tb = a.tensors(), b.tensors()
    assert all(ta[n].tobytes() == tb[n].tobytes() for n in ta)
    _, s_cpu = vptq_quantize(W, H, c)
    assert sa["proxy_err"] == pytest.approx(s_cpu["proxy_err"], rel=0.1)
    assert sa["proxy_err"] == pytest.approx(ref_proxy(a, W, H), rel=1e-6)

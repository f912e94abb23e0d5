"""docs/format.md §5: dequantization known answers computed by hand, numpy == torch."""

import numpy as np
import pytest
import torch

from vq2trt.format import VQWeight
from vq2trt.reference import dequantize, dequantize_torch, vq_gemm, vq_gemm_torch


def test_dequant_known_answer_by_hand():
    # N=3 rows, K=3 channels, v=2 -> R=2 (last vector padded), one outlier column with v_o=3,
    # 2 groups of 1 regular column each, a residual, normalisation and a permutation.
    cb = np.array([[[1, 2], [3, 4]],          # group 0: entries 0, 1
                   [[10, 20], [30, 40]]])     # group 1
    rcb = np.array([[[0.5, 0.5], [0, 0]], [[0, 1], [1, 0]]])
    ocb = np.array([[7, 8, 9], [-1, -2, -3]])
    w = VQWeight.from_unpacked(
        out_features=3, in_features=3, perm=[2, 0, 1],
        indices=[[1, 0], [0, 1]],              # [R=2, C=2]
        codebook=cb, res_indices=[[0, 1], [1, 0]], res_codebook=rcb,
        outlier_indices=[[1]], outlier_codebook=ocb,
        col_scale=[2, 1, 0.5], col_bias=[0, 1, -1])
    # permuted position 0 -> channel 2 (outlier): ocb[1] = [-1, -2, -3], then *0.5 - 1
    # position 1 -> channel 0 (group 0): rows 0-1: cb0[1]+rcb0[0] = [3.5, 4.5]; row 2: cb0[0][0]+rcb0[1][0] = 1
    #   then *2 + 0
    # position 2 -> channel 1 (group 1): rows 0-1: cb1[0]+rcb1[1] = [11, 20]; row 2: cb1[1][0]+rcb1[0][0] = 30
    #   then *1 + 1
    expected = np.array([[7.0, 12.0, -1.5],
                         [9.0, 21.0, -2.0],
                         [2.0, 31.0, -2.5]], np.float32)
    np.testing.assert_array_equal(dequantize(w), expected)
    np.testing.assert_array_equal(dequantize_torch(w).numpy(), expected)
    x = np.array([[1.0, 0.0, 2.0]], np.float32)
    np.testing.assert_allclose(vq_gemm(x, w), x @ expected.T)


@pytest.mark.parametrize("seed", range(5))
def test_numpy_and_torch_agree_bit_exactly(seed):
    rng = np.random.default_rng(seed)
    N, K = int(rng.integers(5, 40)), int(rng.integers(8, 40))
    G, n_out = int(rng.integers(1, 4)), int(rng.integers(0, 3))
    v, k, vo = int(rng.integers(1, 6)), int(rng.integers(2, 300)), int(rng.integers(1, 5))
    R = -(-N // v)
    kw = {}
    if n_out:
        kw.update(outlier_indices=rng.integers(0, 5, (-(-N // vo), n_out)), outlier_codebook=rng.normal(size=(5, vo)))
    w = VQWeight.from_unpacked(out_features=N, in_features=K, perm=rng.permutation(K),
                               indices=rng.integers(0, k, (R, K - n_out)), codebook=rng.normal(size=(G, k, v)),
                               res_indices=rng.integers(0, 3, (R, K - n_out)), res_codebook=rng.normal(size=(G, 3, v)),
                               col_scale=rng.random(K), col_bias=rng.normal(size=K), bias=rng.normal(size=N), **kw)
    np.testing.assert_array_equal(dequantize(w), dequantize_torch(w).numpy())
    x = rng.normal(size=(3, K)).astype(np.float32)
    np.testing.assert_allclose(vq_gemm_torch(torch.from_numpy(x), w).numpy(), vq_gemm(x, w), rtol=1e-5, atol=1e-4)


def test_vq_gemm_rejects_wrong_k():
    w = VQWeight.from_unpacked(out_features=2, in_features=3, perm=[0, 1, 2], indices=[[0, 1, 1]],
                               codebook=np.ones((1, 2, 2)))
    with pytest.raises(ValueError, match="K=3"):
        vq_gemm(np.zeros((1, 4), np.float32), w)

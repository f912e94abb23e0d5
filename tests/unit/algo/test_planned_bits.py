"""format.planned_stored_bits: the bits a config will store for a shape equal what VPTQ then stores."""

import pytest
import torch

from vq2trt.algo import vptq_quantize
from vq2trt.config import PRESETS, QuantConfig
from vq2trt.format import FormatError, planned_stored_bits

from .layers import correlated_layer


@pytest.mark.parametrize("fields", [
    dict(vector_len=4, num_centroids=16),
    dict(vector_len=3, num_centroids=32, outlier_frac=0.05, outlier_vector_len=2, outlier_num_centroids=8),
    dict(vector_len=4, num_centroids=16, num_res_centroids=4, num_groups=3),
    dict(vector_len=5, num_centroids=8, enable_norm=False, outlier_frac=0.1, outlier_vector_len=3,
         outlier_num_centroids=4),
    PRESETS["v4-k256-r4"],
])
@pytest.mark.parametrize("shape", [(37, 50), (64, 96)])   # 37 rows: the last vector is padded
def test_planned_bits_equal_stored_bits(fields, shape):
    W, H = correlated_layer(N=shape[0], K=shape[1])
    cfg = QuantConfig(kmeans_iters=2, **fields)
    w, _ = vptq_quantize(W, H, cfg, bias=torch.zeros(shape[0]))   # the Linear bias is not counted
    assert planned_stored_bits(cfg, *shape) == w.stored_bits()


def test_too_many_groups_is_refused_with_the_shape():
    with pytest.raises(FormatError, match=r"num_groups=20 exceeds the 10 regular input columns of a \[8, 10\]"):
        planned_stored_bits(QuantConfig(num_groups=20), 8, 10)

"""The comparison's distribution metrics against hand-computed answers."""

import math

import numpy as np

from vq2trt.runtime.compare import _distribution_gap


def test_kl_and_top1_known_answers():
    ref = {"logits": np.log(np.array([[[0.5, 0.25, 0.25]]]))}
    same = {"logits": ref["logits"] + 3.0}            # a constant shift leaves softmax unchanged
    flip = {"logits": np.log(np.array([[[0.25, 0.5, 0.25]]]))}
    assert _distribution_gap([same], [ref]) == (0.0, 1.0) or abs(_distribution_gap([same], [ref])[0]) < 1e-12
    kl, top1 = _distribution_gap([flip], [ref])
    # KL(ref || flip) = 0.5 ln(0.5/0.25) + 0.25 ln(0.25/0.5) + 0 = 0.25 ln 2
    assert math.isclose(kl, 0.25 * math.log(2), rel_tol=1e-9) and top1 == 0.0

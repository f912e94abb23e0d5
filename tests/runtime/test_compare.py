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


def test_level0_rule_scales_with_the_output_and_still_catches_defects():
    """The level-0 rule through polygraphy's own comparator: summation-order noise of 2e-4 of the
    output's scale passes wherever it lands (a near-zero element included, where a fixed atol of
    2e-3 failed `make demo`), an error of 1 % of the scale on one element fails."""
    from polygraphy.comparator import CompareFunc
    from polygraphy.comparator.struct import IterationResult, RunResults

    from vq2trt.runtime.compare import TOLERANCES, scaled_atol

    rng = np.random.default_rng(0)
    ref = {"logits": np.clip(rng.standard_normal((1, 4, 64)) * 4, -12, 12).astype(np.float32)}
    ref["logits"][0, 0, 0] = 14.0
    ref["logits"][0, 1, 1] = 1e-4                                # near zero: rtol cannot cover it
    tol = TOLERANCES[0]
    atol = scaled_atol([ref], ["logits"], tol["scale_atol"])
    assert math.isclose(atol["logits"], 14.0 * tol["scale_atol"], rel_tol=1e-6)

    def judged(delta):
        other = {"logits": ref["logits"] + delta.astype(np.float32)}
        results = RunResults([("a", [IterationResult(other, runner_name="a")]),
                              ("ref", [IterationResult(ref, runner_name="ref")])])
        from polygraphy.comparator import Comparator
        func = CompareFunc.simple(atol=atol, rtol=tol["rtol"])
        return bool(Comparator.compare_accuracy(results, compare_func=func, comparisons=[(0, 1)]))

    noise = np.zeros_like(ref["logits"])
    noise[0, 1, 1] = 2.2e-3                                      # the demo's failing element, relatively
    assert judged(noise)
    assert judged(rng.standard_normal(ref["logits"].shape) * 14.0 * 2e-4)
    defect = np.zeros_like(ref["logits"])
    defect[0, 2, 5] = 0.14
    assert not judged(defect)

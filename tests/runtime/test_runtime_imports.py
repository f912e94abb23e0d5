"""vq2trt.runtime must run where torch is not installed (a Jetson app, a slim container)."""

import subprocess
import sys


def test_runtime_imports_neither_torch_nor_optional_packages():
    # tensorrt blocked: runtime.trt must import without it (it is imported only to build engines)
    code = ("import sys; sys.modules['tensorrt'] = None; "
            "import vq2trt.runtime.session, vq2trt.runtime.compare, vq2trt.runtime.library, vq2trt.runtime.trt; "
            "bad = [m for m in ('torch', 'transformers', 'onnxruntime', 'polygraphy', 'onnx') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_sampling_helpers_follow_top_k_and_top_p():
    import numpy as np

    from vq2trt.runtime.session import _pick

    logits = np.array([0.0, 5.0, 4.9, -3.0])
    rng = np.random.default_rng(0)
    assert _pick(logits, 0.0, 0, 1.0, rng) == 1                           # greedy
    picks = {_pick(logits, 1.0, 2, 1.0, rng) for _ in range(200)}
    assert picks == {1, 2}                                                # top-k 2 keeps the two best
    assert {_pick(logits, 1.0, 0, 0.3, rng) for _ in range(50)} == {1}    # top-p below the top mass

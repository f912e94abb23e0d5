"""quantize(): whole-model flow, skip lists, resume after a kill, determinism, baselines."""

import numpy as np
import pytest
import torch

import vq2trt.quantize as qmod
from vq2trt.config import QuantConfig
from vq2trt.io import checkpoint_tensors
from vq2trt.nn import VQLinear
from vq2trt.quantize import QuantizeError, quantize

from .tiny import calib_ids, tiny_model

FAST = dict(vector_len=4, num_centroids=16, kmeans_iters=8, block_size=32)


def _run(config, work_dir=None, seed=0):
    model = tiny_model(seed)
    result = quantize(model, config, calib_ids(), work_dir=work_dir, device="cpu", progress=False)
    return model, result


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_vptq_replaces_every_decoder_linear_and_stays_close():
    float_model = tiny_model()
    model, result = _run(QuantConfig(**FAST))
    vq = {n for n, m in model.named_modules() if isinstance(m, VQLinear)}
    assert len(vq) == 2 * 7 and not any("lm_head" in n for n in vq)
    assert len(result.reports) == 14 and all(0 <= r.proxy_err < 1 for r in result.reports)
    # 4-bit indices per 4 weights on 64-wide layers: codebook and perm add the rest.
    assert 1.0 < result.bits_per_weight < 3.0
    ids = calib_ids(2, 16, seed=5)
    ref, out = _logits(float_model, ids), _logits(model, ids)
    rel = float((out - ref).norm() / ref.norm())
    assert rel < 0.5, f"quantized logits too far from float ({rel:.3f})"


def test_skip_modules_leaves_layers_float():
    model, _ = _run(QuantConfig(**FAST, skip_modules=["lm_head", "embed_tokens", "mlp"]))
    kinds = {n.rsplit(".", 1)[-1]: type(m).__name__ for n, m in model.named_modules() if n.count(".") >= 4}
    assert kinds["gate_proj"] == "Linear" and kinds["q_proj"] == "VQLinear"


def _bytes(model):
    return {k: v.tobytes() for k, v in checkpoint_tensors(model).items()}


def test_same_seed_same_bytes_and_other_seed_differs():
    a, _ = _run(QuantConfig(**FAST, seed=1))
    b, _ = _run(QuantConfig(**FAST, seed=1))
    c, _ = _run(QuantConfig(**FAST, seed=2))
    assert _bytes(a) == _bytes(b)
    assert _bytes(a) != _bytes(c)


def test_resume_after_kill_gives_identical_bytes(tmp_path, monkeypatch):
    config = QuantConfig(**FAST)
    reference, _ = _run(config)

    real = qmod._quantize_layer
    calls = []

    def dies_on_layer_1(model, layer, i, *a, **kw):
        calls.append(i)
        if i == 1:
            raise KeyboardInterrupt  # what Ctrl-C or a kill between layers looks like
        return real(model, layer, i, *a, **kw)

    monkeypatch.setattr(qmod, "_quantize_layer", dies_on_layer_1)
    with pytest.raises(KeyboardInterrupt):
        _run(config, work_dir=tmp_path / "work")
    assert (tmp_path / "work" / "layer_000.safetensors").exists()
    assert not (tmp_path / "work" / "layer_001.safetensors").exists()

    calls.clear()
    monkeypatch.setattr(qmod, "_quantize_layer", lambda *a, **kw: (calls.append(a[2]), real(*a, **kw))[1])
    resumed, result = _run(config, work_dir=tmp_path / "work")
    assert calls == [1], "the finished layer 0 must not be quantized again"
    assert len(result.reports) == 14
    assert _bytes(resumed) == _bytes(reference)


def test_work_dir_of_another_run_is_refused(tmp_path):
    _run(QuantConfig(**FAST), work_dir=tmp_path / "w")
    with pytest.raises(QuantizeError, match="different model, calibration data or config"):
        _run(QuantConfig(**{**FAST, "num_centroids": 8}), work_dir=tmp_path / "w")


@pytest.mark.parametrize("method", ["rtn", "gptq"])
def test_scalar_baselines_put_weights_on_their_grid(method):
    model, result = _run(QuantConfig(method=method, bits=2, group_size=32))
    w = model.model.layers[0].self_attn.q_proj.weight.detach()         # [64, 64]
    groups = w.reshape(64, 2, 32)
    distinct = max(len(torch.unique(groups[r, g])) for r in range(64) for g in range(2))
    assert distinct <= 4
    assert result.bits_per_weight == pytest.approx(2 + 18 / 32)


def test_gptq_beats_rtn_on_layer_error():
    _, rtn = _run(QuantConfig(method="rtn", bits=3, group_size=32))
    _, gptq = _run(QuantConfig(method="gptq", bits=3, group_size=32))
    assert np.mean([r.proxy_err for r in gptq.reports]) < np.mean([r.proxy_err for r in rtn.reports])


def test_finetune_keeps_format_and_does_not_hurt_layer_outputs():
    plain, _ = _run(QuantConfig(**FAST))
    tuned, result = _run(QuantConfig(**FAST, finetune_steps=20, finetune_lr=1e-3))
    assert all(isinstance(m, VQLinear) for n, m in tuned.named_modules() if n.endswith("q_proj"))
    a, b = plain.model.layers[0].self_attn.q_proj, tuned.model.layers[0].self_attn.q_proj
    # Indices are fixed by fine-tuning; only codebooks move.
    assert torch.equal(a.indices, b.indices)
    float_model = tiny_model()
    ids = calib_ids(4, 32, seed=0)
    ref = _logits(float_model, ids)
    assert (_logits(tuned, ids) - ref).norm() <= (_logits(plain, ids) - ref).norm() * 1.05


def test_bad_calibration_shape():
    with pytest.raises(QuantizeError, match="num_samples, seqlen"):
        quantize(tiny_model(), QuantConfig(**FAST), torch.zeros(5, dtype=torch.long), progress=False)


def test_hessians_shared_exactly_by_linears_with_the_same_input():
    model = tiny_model()
    layers = qmod.decoder_layers(model)
    batches = qmod._capture_layer0_inputs(model, layers, calib_ids(4, 16), 2, torch.device("cpu"))
    linears = qmod.quantizable_linears(layers[0], "l", [])
    H, _ = qmod._collect_hessians(layers[0], linears, batches, torch.device("cpu"))
    same = {(a, b) for a in H for b in H if a < b and H[a] is H[b]}
    assert same == {("l.self_attn.k_proj", "l.self_attn.q_proj"), ("l.self_attn.k_proj", "l.self_attn.v_proj"),
                    ("l.self_attn.q_proj", "l.self_attn.v_proj"), ("l.mlp.gate_proj", "l.mlp.up_proj")}
    # The shared Hessian is E[x xᵀ] of the q/k/v input: the input norm's output on the layer input.
    x = torch.cat([layers[0].input_layernorm(h).reshape(-1, 64) for h, _ in batches]).double()
    torch.testing.assert_close(H["l.self_attn.q_proj"].finalize(), x.T @ x / x.shape[0], rtol=1e-4, atol=1e-6)

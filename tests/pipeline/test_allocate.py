"""allocate(): per-Linear formats under an all-in bit budget. The budget holds exactly (also at a
candidate boundary) for the checkpoint quantize() then writes, a Linear made more sensitive gets
more bits, and an impossible target fails before any quantization and writes nothing."""

import random

import pytest
import torch

import vq2trt.allocate as al
from vq2trt.allocate import AllocateError, allocate, allocate_plan, solve
from vq2trt.cli import main
from vq2trt.config import PRESETS, QuantConfig
from vq2trt.format import planned_stored_bits
from vq2trt.quantize import quantize

from .tiny import calib_ids, tiny_model

BASE = QuantConfig(kmeans_iters=3, block_size=32)
CANDIDATES = [QuantConfig(vector_len=4, num_centroids=16),                        # ~2.3 bits on 64-wide layers
              QuantConfig(vector_len=4, num_centroids=16, num_res_centroids=4),   # ~2.8
              QuantConfig(vector_len=2, num_centroids=16)]                        # ~3.1
DOWN = "model.layers.1.mlp.down_proj"


def _all_at(model, cfg) -> float:
    """All-in bits per weight with every Linear in format ``cfg``."""
    lins = [m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and "lm_head" not in n]
    return sum(planned_stored_bits(cfg, m.out_features, m.in_features) for m in lins) / \
        sum(m.weight.numel() for m in lins)


def _plan(target, **kw):
    return allocate_plan(tiny_model(), calib_ids(), CANDIDATES, target, base=BASE, device="cpu", progress=False,
                         **kw)


# --- the solver alone ------------------------------------------------------------
def test_solver_never_exceeds_the_budget_and_spends_it():
    rng = random.Random(0)
    for _ in range(200):
        n_items = rng.randint(1, 6)
        bits = [sorted(rng.sample(range(10, 60), 3)) for _ in range(n_items)]
        errs = [sorted((rng.random() for _ in range(3)), reverse=True) for _ in range(n_items)]
        n = 10
        lo, hi = sum(b[0] for b in bits) / n, sum(b[-1] for b in bits) / n
        target = rng.uniform(lo, hi)
        pick = solve(bits, errs, target, n)
        used = sum(b[p] for b, p in zip(bits, pick))
        assert used / n <= target
        # the budget is spent: every item is at the end of its hull or its next hull step no longer fits
        for b, e, p in zip(bits, errs, pick):
            hull = al._lower_hull(b, e)
            assert p in hull
            if p != hull[-1]:
                assert (used - b[p] + b[hull[hull.index(p) + 1]]) / n > target


def test_solver_walks_the_lower_convex_hull():
    # option 1 lies above the chord 0-2 (not on the hull); option 3 costs more for no gain
    bits, errs = [[10, 20, 30, 40]], [[10.0, 9.5, 0.0, 0.0]]
    assert solve(bits, errs, 25 / 1, 1) == [0]           # option 1 would fit but is never worth a step
    assert solve(bits, errs, 30, 1) == [2]
    assert solve(bits, errs, 100, 1) == [2]
    # the larger error reduction per bit goes first
    bits, errs = [[10, 20], [10, 20]], [[5.0, 4.0], [5.0, 1.0]]
    assert solve(bits, errs, 30, 1) == [0, 1]


# --- on a tiny model ----------------------------------------------------------------
@pytest.mark.parametrize("where", ["cheapest", "between", "boundary", "above"])
def test_allocation_never_exceeds_target(where):
    model = tiny_model()
    at = [_all_at(model, c) for c in CANDIDATES]
    target = {"cheapest": at[0], "between": (at[0] + at[1]) / 2, "boundary": at[1], "above": at[2] + 1}[where]
    plan = _plan(target)
    assert plan.bits_per_weight <= target
    if where == "cheapest":   # exactly at the cheapest candidate's boundary: feasible, and all there
        assert plan.bits_per_weight == target and set(plan.choices.values()) == {"v4-k16"}
    if where == "above":      # room for everything: each Linear takes its lowest-error format
        assert all(plan.choices[n] == min(e, key=e.get) for n, e in plan.errors.items())
    if where == "between":
        assert len(set(plan.choices.values())) > 1 and plan.config.modules


def test_quantized_checkpoint_meets_the_target():
    model = tiny_model()
    target = (_all_at(model, CANDIDATES[0]) + _all_at(model, CANDIDATES[2])) / 2
    config = allocate(model, calib_ids(), CANDIDATES, target, base=BASE, device="cpu", progress=False)
    assert config.modules and config.kmeans_iters == BASE.kmeans_iters
    result = quantize(model, config, calib_ids(), device="cpu", progress=False)
    assert result.bits_per_weight <= target
    for name, w in result.weights.items():
        assert (w.vector_len, w.num_centroids) == (config.for_module(name).vector_len,
                                                   config.for_module(name).num_centroids)


def test_allocation_is_deterministic():
    model = tiny_model()
    target = (_all_at(model, CANDIDATES[0]) + _all_at(model, CANDIDATES[1])) / 2
    assert _plan(target).to_dict() == _plan(target).to_dict()


@pytest.mark.parametrize("hook", ["weights", "hessian_fn"])
def test_a_more_sensitive_linear_gets_more_bits(hook):
    model = tiny_model()
    # a budget a little above the cheapest: room for a few upgrades, not for every Linear
    target = _all_at(model, CANDIDATES[0]) + 0.12
    plain = _plan(target)
    assert plain.choices[DOWN] == "v4-k16"          # down_proj's error is tiny in the random model
    kw = {"weights": {DOWN: 1e6}} if hook == "weights" else \
        {"hessian_fn": lambda name, H: H * 1e6 if name == DOWN else H}
    boosted = _plan(target, **kw)
    assert boosted.bits[DOWN][boosted.choices[DOWN]] > plain.bits[DOWN][plain.choices[DOWN]]
    assert boosted.bits_per_weight <= target


def test_target_below_the_cheapest_fails_before_any_quantization(monkeypatch):
    def never(*a, **k):
        raise AssertionError("quantized although the target was impossible")
    monkeypatch.setattr(al, "vptq_quantize", never)
    monkeypatch.setattr(al, "_collect_hessians", never)
    cheapest = _all_at(tiny_model(), CANDIDATES[0])
    with pytest.raises(AllocateError, match=rf"target_bits=1.5 is below the cheapest achievable {cheapest:.4f}"):
        _plan(1.5)
    with pytest.raises(AllocateError, match="target_bits"):
        _plan(cheapest * (1 - 1e-12))


def test_bad_candidates_are_named():
    with pytest.raises(AllocateError, match="'v9-k1' is not a preset"):
        allocate_plan(tiny_model(), calib_ids(), ["v9-k1"], 3.0, progress=False)
    with pytest.raises(AllocateError, match="gptq-w2g128.*expected one VPTQ format"):
        allocate_plan(tiny_model(), calib_ids(), ["gptq-w2g128"], 3.0, progress=False)


# --- the CLI ------------------------------------------------------------------------
def _args(model_dir, calib, out, *extra):
    return ["quantize", str(model_dir), "--calib", str(calib), "--out", str(out), "--samples", "4", "--seqlen", "32",
            "--kmeans-iters", "3", "--quiet", "--device", "cpu", *extra]


def test_cli_impossible_target_writes_nothing(model_dir, calib, tmp_path, capsys):
    out = tmp_path / "q"
    assert main(_args(model_dir, calib, out, "--target-bits", "0.5")) == 2
    err = capsys.readouterr().err
    assert "target_bits=0.5" in err and "cheapest achievable" in err and "v4-k256" in err
    assert not out.exists() and not (tmp_path / ".q.partial").exists()


def test_cli_target_bits_and_resume(model_dir, calib, tmp_path, capsys, monkeypatch):
    import vq2trt.quantize as vq

    model = tiny_model()
    cands = ["v4-k256", "v4-k256-r4"]
    at = [_all_at(model, QuantConfig(**PRESETS[c])) for c in cands]
    target = (at[0] + at[1]) / 2
    out = tmp_path / "q"
    argv = _args(model_dir, calib, out, "--target-bits", str(target), "--candidates", ",".join(cands))

    real_quantize = vq.quantize
    monkeypatch.setattr(vq, "quantize", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    assert main(argv) == 130                              # killed after the allocation
    assert (tmp_path / ".q.partial" / "allocation.json").exists()
    monkeypatch.setattr(vq, "quantize", real_quantize)
    monkeypatch.setattr(al, "allocate_plan", lambda *a, **k: pytest.fail("the saved allocation was not reused"))
    capsys.readouterr()
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "bit allocation:" in text and f"(target {target})" in text
    rows = [line.split("|")[1].strip() for line in text.splitlines() if line.startswith("| ")]
    assert rows[1:] == ["q", "k", "v", "o", "gate", "up", "down"]
    bits = float(text.split("all-in bits per weight over quantized Linears: ")[1].split()[0])
    assert bits <= target + 5e-4                           # printed to 3 decimals
    assert main(["info", str(out)]) == 0
    info = capsys.readouterr().out
    assert "with their own format" in info


def test_output_aware_hessian_reweights_the_errors():
    model = tiny_model()
    target = (_all_at(model, CANDIDATES[0]) + _all_at(model, CANDIDATES[1])) / 2
    plain = _plan(target)
    guided = allocate_plan(model, calib_ids(), CANDIDATES, target, device="cpu", progress=False,
                           base=QuantConfig(**{**BASE.to_dict(), "hessian": "output-aware"}))
    assert guided.bits_per_weight <= target and guided.config.hessian == "output-aware"
    # the errors are now loss estimates, on another scale than the output errors
    assert guided.errors[DOWN]["v4-k16"] != pytest.approx(plain.errors[DOWN]["v4-k16"], rel=1e-3)


def test_loss_sensitivity_quantizes_as_before_and_measures_by_the_end_loss(monkeypatch):
    """sensitivity="loss": each candidate's ΔW is the one the proxy measures (quantized against the
    input H), and its error is Σ_t s_t ||ΔW x_t||² / T with s_t = ||∂CE/∂y_t||², computed here
    directly with autograd on the float model."""
    seen: dict[tuple, torch.Tensor] = {}
    inner = al.absolute_proxy_error
    calls = []

    def spy(W, W_hat, H):
        calls.append(W_hat.detach().clone())
        return inner(W, W_hat, H)

    monkeypatch.setattr(al, "absolute_proxy_error", spy)
    model = tiny_model()
    target = (_all_at(model, CANDIDATES[0]) + _all_at(model, CANDIDATES[1])) / 2
    plain = _plan(target)
    proxy_w = list(calls)
    calls.clear()
    loss = _plan(target, sensitivity="loss")
    assert loss.bits_per_weight <= target
    names = list(plain.errors)
    labels = list(plain.errors[names[0]])
    assert len(calls) == len(proxy_w) == len(names) * len(labels)
    for a, b in zip(proxy_w, calls):
        assert torch.equal(a, b)                       # same quantization, only the measure differs
    for (name, label), w in zip([(n, lab) for n in names for lab in labels], calls):
        seen[(name, label)] = w

    # the reference: inputs and output gradients of DOWN in the float model, by hooks and autograd
    ids = calib_ids()
    xs, ys = [], []
    mod = dict(model.named_modules())[DOWN]
    def keep(_m, args, y):
        xs.append(args[0].detach())
        ys.append(y)

    h1 = mod.register_forward_hook(keep)
    emb = model.get_input_embeddings()(ids).detach().requires_grad_(True)
    logits = model(inputs_embeds=emb, use_cache=False).logits
    ys[0].retain_grad()
    V = logits.shape[-1]
    torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, V), ids[:, 1:].reshape(-1),
                                      reduction="sum").backward()
    h1.remove()
    x = xs[0].reshape(-1, xs[0].shape[-1]).double()                      # [T, K]
    s = ys[0].grad.square().sum(-1).reshape(-1).double()                  # [T]
    W = mod.weight.detach().double()
    for label in labels:
        dW = seen[(DOWN, label)].double() - W
        ref = float((s * ((x @ dW.T) ** 2).sum(-1)).sum() / x.shape[0])
        assert loss.errors[DOWN][label] == pytest.approx(ref, rel=1e-3)
        assert plain.errors[DOWN][label] == pytest.approx(float(((x @ dW.T) ** 2).sum() / x.shape[0]), rel=1e-3)


def test_bad_sensitivity_is_named():
    with pytest.raises(AllocateError, match="sensitivity='exact'.*'proxy', 'loss'"):
        _plan(3.0, sensitivity="exact")


def test_cli_sensitivity_needs_a_target_and_keys_the_saved_allocation(model_dir, calib, tmp_path, capsys,
                                                                     monkeypatch):
    out = tmp_path / "q"
    assert main(_args(model_dir, calib, out, "--sensitivity", "loss")) == 2
    assert "--sensitivity need --target-bits" in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / ".q.partial").exists()

    model = tiny_model()
    target = sum(_all_at(model, QuantConfig(**PRESETS[c])) for c in ("v4-k256", "v4-k256-r4")) / 2
    argv = _args(model_dir, calib, out, "--target-bits", str(target), "--candidates", "v4-k256,v4-k256-r4")
    seen = []
    real = al.allocate_plan
    monkeypatch.setattr(al, "allocate_plan", lambda *a, **k: seen.append(k["sensitivity"]) or real(*a, **k))
    import vq2trt.quantize as vq
    monkeypatch.setattr(vq, "quantize", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    assert main(argv) == 130                               # the proxy allocation is saved
    assert main([*argv, "--sensitivity", "loss"]) == 130   # another measure: not reused
    assert main([*argv, "--sensitivity", "loss"]) == 130   # the same: reused
    assert seen == ["proxy", "loss"]

"""Distillation's discrete step: its proposals are the known optimum of a quadratic loss, the moved
indices are what gets saved, kept steps lower the check loss, and a killed run resumes to the same bytes."""

import pytest
import torch

import vq2trt.distill as dmod
from vq2trt.cli import main
from vq2trt.config import QuantConfig
from vq2trt.distill import DistillConfig, DistillError, distill, mean_kl
from vq2trt.format import VQWeight
from vq2trt.index_step import apply, propose
from vq2trt.io import load_quantized, save_quantized
from vq2trt.nn import VQLinear
from vq2trt.reference import dequantize

from .test_distill import SHORT, _bytes, _ft, _quantized, _train_ids
from .tiny import COARSE, calib_ids

INDEX = dict(index_every=1, index_frac=0.002)


def _layer(seed=0, N=10, K=24, v=4, k=16, groups=2, n_out=0, residual=False):
    """A VQLinear with permuted, scaled columns, two codebook groups and N not a multiple of v."""
    g = torch.Generator().manual_seed(seed)
    R, C = -(-N // v), K - n_out
    kw = {}
    if residual:
        kw.update(res_indices=torch.randint(0, 4, (R, C), generator=g).numpy(),
                  res_codebook=(0.1 * torch.randn(groups, 4, v, generator=g)).half().numpy())
    if n_out:
        kw.update(outlier_indices=torch.randint(0, 8, (-(-N // 2), n_out), generator=g).numpy(),
                  outlier_codebook=torch.randn(8, 2, generator=g).half().numpy())
    w = VQWeight.from_unpacked(
        out_features=N, in_features=K, perm=torch.randperm(K, generator=g).numpy(),
        indices=torch.randint(0, k, (R, C), generator=g).numpy(),
        codebook=torch.randn(groups, k, v, generator=g).half().numpy(),
        col_scale=(0.5 + torch.rand(K, generator=g)).half().numpy(),
        col_bias=(0.1 * torch.randn(K, generator=g)).half().numpy(), **kw)
    return VQLinear(w)


@pytest.mark.parametrize("features", [{}, {"residual": True}, {"n_out": 4}])
def test_proposals_are_the_optimum_of_a_quadratic_loss(features):
    """L = ½ Σ h_j (W_ij - T_ij)² with T the layer with some indices changed: the model of the
    step is exact for this L (κ_ij = h_j, damping 0), so the proposals must restore T's indices."""
    m = _layer(**features)
    target_idx = m.indices.clone()
    g = torch.Generator().manual_seed(1)
    moved = torch.randperm(target_idx.numel(), generator=g)[:7]
    k = m.codebook.shape[1]
    flat = target_idx.view(-1)
    flat[moved] = (flat[moved] + 1 + torch.randint(0, k - 1, (7,), generator=g)) % k
    T = _layer(**features)
    T.indices.copy_(target_idx)
    h = 0.5 + torch.rand(m.in_features, generator=g)
    G = h[None, :] * (m.weight_float() - T.weight_float())
    pos, new, gain = propose(m, G, sx=h, sg=torch.ones(m.out_features), frac=1.0, damp=0.0)
    # vectors whose rows are all past N have no effect and are never proposed
    assert sorted(pos.tolist()) == sorted(moved.tolist())
    assert torch.equal(new, target_idx.view(-1)[pos])
    loss = lambda W: float(0.5 * (h[None, :] * (W - T.weight_float()) ** 2).sum())
    before = loss(m.weight_float())
    apply(m, pos, new)
    assert loss(m.weight_float()) == pytest.approx(0.0, abs=1e-9)
    assert float(gain.sum()) == pytest.approx(-before, rel=1e-4)
    assert bool((gain[1:] >= gain[:-1]).all()), "best move first"


def test_frac_bounds_the_moves_and_apply_reverts():
    m = _layer(N=64, K=64)
    G = torch.randn(64, 64, generator=torch.Generator().manual_seed(3))
    pos, new, _ = propose(m, G, torch.ones(64), torch.ones(64), frac=0.01, damp=1.0)
    assert len(pos) <= int(0.01 * m.indices.numel()) and len(pos) >= 1
    W = m.weight_float()
    old = apply(m, pos, new)
    assert not torch.equal(m.weight_float(), W)
    apply(m, pos, old)
    assert torch.equal(m.weight_float(), W)


def test_moved_indices_are_what_gets_stored():
    m = _layer(residual=True, n_out=4)
    pos = torch.tensor([0, 5, 9])
    apply(m, pos, (m.indices.view(-1)[pos] + 3) % m.codebook.shape[1])
    assert torch.equal(torch.from_numpy(dequantize(m.to_vqweight())), m.weight_float())


def test_index_step_moves_indices_and_saves_them(tmp_path):
    student, teacher = _quantized()
    before_idx = {n: m.indices.clone() for n, m in student.named_modules() if isinstance(m, VQLinear)}
    r = distill(student, teacher, _train_ids(), DistillConfig(**{**SHORT, **INDEX}), device="cpu", progress=False)
    assert r.index_steps == r.steps and r.index_kept >= 1 and r.indices_changed > 0
    changed = sum(int((m.indices != before_idx[n]).sum()) for n, m in student.named_modules()
                  if isinstance(m, VQLinear))
    assert 0 < changed <= r.indices_changed
    ids = calib_ids(2, 32, seed=5)
    with torch.no_grad():
        evaluated = student(input_ids=ids).logits
    save_quantized(student, QuantConfig(**COARSE), tmp_path / "ck")
    with torch.no_grad():
        assert torch.equal(load_quantized(tmp_path / "ck")(input_ids=ids).logits, evaluated)


def test_kept_steps_lower_the_check_loss(monkeypatch):
    """Every kept step lowered the check KL; a rejected one leaves the indices as they were."""
    student, teacher = _quantized()
    seen = []
    real = dmod._index_step

    def spy(s, t, ids, cfg, step, proposals, counts, device):
        idx = {n: m.indices.clone() for n, (m, *_) in proposals.items()}
        kept = counts["index_kept"]
        starts = dmod._window_starts(cfg.seed + 1_000_000_007, step, cfg.index_check_windows,
                                     ids.numel() - cfg.seqlen)
        x = torch.stack([ids[a:a + cfg.seqlen] for a in starts])
        before = mean_kl(s, t, x, batch_size=x.shape[0])
        s.train()
        real(s, t, ids, cfg, step, proposals, counts, device)
        after = mean_kl(s, t, x, batch_size=x.shape[0])
        s.train()
        unchanged = all(torch.equal(m.indices, idx[n]) for n, (m, *_) in proposals.items())
        seen.append((counts["index_kept"] > kept, before, after, unchanged))

    monkeypatch.setattr(dmod, "_index_step", spy)
    distill(student, teacher, _train_ids(), DistillConfig(**{**SHORT, **INDEX}), device="cpu", progress=False)
    assert seen
    for kept, before, after, unchanged in seen:
        assert (after < before and not unchanged) if kept else (unchanged and after == pytest.approx(before))


def test_resume_with_index_steps_gives_identical_bytes(tmp_path, monkeypatch):
    cfg = DistillConfig(**{**SHORT, **INDEX})
    ref, teacher = _quantized()
    distill(ref, teacher, _train_ids(), cfg, device="cpu", progress=False)

    student, teacher = _quantized()
    calls = []
    real_step = dmod._index_step

    def dies_in_index_step_5(*args):
        calls.append(1)
        if len(calls) == 6:
            raise KeyboardInterrupt
        return real_step(*args)

    monkeypatch.setattr(dmod, "_index_step", dies_in_index_step_5)
    with pytest.raises(KeyboardInterrupt):
        distill(student, teacher, _train_ids(), cfg, work_dir=tmp_path / "w", device="cpu", progress=False)
    assert torch.load(tmp_path / "w" / dmod.STATE_FILE, weights_only=True)["step"] == 4
    monkeypatch.setattr(dmod, "_index_step", real_step)
    student, teacher = _quantized()
    distill(student, teacher, _train_ids(), cfg, work_dir=tmp_path / "w", device="cpu", progress=False)
    assert _bytes(student) == _bytes(ref)


@pytest.mark.parametrize("field,value", [("index_every", -1), ("index_frac", 0.0), ("index_frac", 1.5),
                                         ("index_damp", -1.0), ("index_check_windows", 0)])
def test_bad_index_settings_are_named(field, value):
    student, teacher = _quantized()
    with pytest.raises(DistillError, match=field):
        distill(student, teacher, _train_ids(), DistillConfig(**{**SHORT, field: value}), device="cpu",
                progress=False)


def test_index_step_with_activation_checkpointing_is_refused():
    student, teacher = _quantized()
    with pytest.raises(DistillError, match="checkpointing"):
        distill(student, teacher, _train_ids(), DistillConfig(**{**SHORT, **INDEX, "checkpoint_activations": True}),
                device="cpu", progress=False)


def test_cli_finetune_with_index_step(tiny_dirs, tmp_path, capsys):
    model_dir, q, calib = tiny_dirs
    out = tmp_path / "tuned"
    argv = _ft(q, model_dir, calib, out, "--tokens", "512", "--index-every", "1", "--index-frac", "0.002")
    assert main(argv) == 0
    assert "index step kept" in capsys.readouterr().out
    rec = load_quantized(out).config.vq2trt_distillation
    assert rec["index_every"] == 1 and isinstance(rec["indices_changed"], int)


@pytest.mark.parametrize("flag,value", [("--index-every", "-2"), ("--index-frac", "0")])
def test_cli_bad_index_flags_write_nothing(tiny_dirs, tmp_path, capsys, flag, value):
    model_dir, q, calib = tiny_dirs
    out = tmp_path / "out"
    assert main(_ft(q, model_dir, calib, out, "--tokens", "64", flag, value)) == 2
    assert flag.lstrip("-").replace("-", "_") in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / ".out.partial").exists()

"""End-to-end distillation: it lowers KL to the teacher, the saved checkpoint is the evaluated model,
a killed run resumes to the same bytes, and bad input is refused before anything is written."""

import copy

import pytest
import torch

import vq2trt.distill as dmod
from vq2trt.cli import main
from vq2trt.config import QuantConfig
from vq2trt.distill import DistillConfig, DistillError, distill, lr_at, mean_kl
from vq2trt.io import checkpoint_tensors, load_quantized, save_quantized
from vq2trt.nn import VQLinear
from vq2trt.quantize import quantize

from .tiny import COARSE, calib_ids, tiny_model

CFG = dict(tokens=48 * 4 * 32, seqlen=32, batch_size=2, grad_accum=2, lr=3e-3, save_every=2)
SHORT = {**CFG, "tokens": 8 * 4 * 32}   # for tests of bytes and state, not of quality


def _quantized(seed=0):
    teacher = tiny_model(seed)
    with torch.no_grad():  # a random model is nearly uniform; sharpen it so its distributions carry signal
        for p in teacher.parameters():
            p.mul_(4 if p.ndim == 2 else 1)
    student = copy.deepcopy(teacher)
    quantize(student, QuantConfig(**COARSE), calib_ids(8, 32), device="cpu", progress=False)
    return student, teacher


def _train_ids():
    return calib_ids(1, 2048, seed=11)[0]


def _bytes(model):
    return {k: v.tobytes() for k, v in checkpoint_tensors(model).items()}


def test_lowers_held_out_kl_and_keeps_indices():
    student, teacher = _quantized()
    held_out = calib_ids(4, 32, seed=99)
    before = mean_kl(student, teacher, held_out)
    idx = {n: m.indices.clone() for n, m in student.named_modules() if isinstance(m, VQLinear)}
    norm = student.model.norm.weight.detach().clone()
    r = distill(student, teacher, _train_ids(), DistillConfig(**CFG), device="cpu", progress=False)
    after = mean_kl(student, teacher, held_out)
    assert r.steps == 48 and r.tokens == CFG["tokens"]
    assert after < 0.9 * before, f"held-out KL {before:.4f} -> {after:.4f}"
    for n, m in student.named_modules():
        if isinstance(m, VQLinear):
            assert torch.equal(m.indices, idx[n])
            assert m.codebook.dtype == torch.float32 and torch.equal(m.codebook, m.codebook.half().float())
    assert not torch.equal(student.model.norm.weight, norm), "norm weights are trained too"
    assert not any(p.requires_grad for p in student.parameters())


def test_saved_checkpoint_reproduces_the_evaluated_logits(tmp_path):
    student, teacher = _quantized()
    distill(student, teacher, _train_ids(), DistillConfig(**SHORT), device="cpu", progress=False)
    ids = calib_ids(2, 32, seed=5)
    with torch.no_grad():
        evaluated = student(input_ids=ids).logits
    save_quantized(student, QuantConfig(**COARSE), tmp_path / "ck")
    with torch.no_grad():
        reloaded = load_quantized(tmp_path / "ck")(input_ids=ids).logits
    assert torch.equal(evaluated, reloaded)


def test_resume_after_kill_gives_identical_bytes(tmp_path, monkeypatch):
    ref, teacher = _quantized()
    distill(ref, teacher, _train_ids(), DistillConfig(**SHORT), device="cpu", progress=False)

    student, teacher = _quantized()
    real, calls = dmod.kl_per_token, []

    def dies_in_step_5(s, t):  # 2 forwards per step: the 11th forward is inside step 5 (0-based)
        calls.append(1)
        if len(calls) == 11:
            raise KeyboardInterrupt
        return real(s, t)

    monkeypatch.setattr(dmod, "kl_per_token", dies_in_step_5)
    with pytest.raises(KeyboardInterrupt):
        distill(student, teacher, _train_ids(), DistillConfig(**SHORT), work_dir=tmp_path / "w", device="cpu",
                progress=False)
    assert torch.load(tmp_path / "w" / dmod.STATE_FILE, weights_only=True)["step"] == 4
    monkeypatch.setattr(dmod, "kl_per_token", real)
    student, teacher = _quantized()
    distill(student, teacher, _train_ids(), DistillConfig(**SHORT), work_dir=tmp_path / "w", device="cpu",
            progress=False)
    assert _bytes(student) == _bytes(ref)


def test_state_of_another_run_is_refused(tmp_path):
    student, teacher = _quantized()
    distill(student, teacher, _train_ids(), DistillConfig(**SHORT), work_dir=tmp_path / "w", device="cpu",
            progress=False)
    student, teacher = _quantized()
    with pytest.raises(DistillError, match="another checkpoint, teacher, text or settings"):
        distill(student, teacher, _train_ids(), DistillConfig(**{**SHORT, "lr": 1e-3}), work_dir=tmp_path / "w",
                device="cpu", progress=False)


def test_same_seed_same_bytes():
    a, t = _quantized()
    distill(a, t, _train_ids(), DistillConfig(**SHORT), device="cpu", progress=False)
    b, t = _quantized()
    distill(b, t, _train_ids(), DistillConfig(**SHORT), device="cpu", progress=False)
    assert _bytes(a) == _bytes(b)


def test_activation_checkpointing_gives_the_same_gradients():
    cfg = DistillConfig(**{**SHORT, "tokens": 128})
    a, t = _quantized()
    distill(a, t, _train_ids(), cfg, device="cpu", progress=False)
    b, t = _quantized()
    distill(b, t, _train_ids(), DistillConfig(**{**SHORT, "tokens": 128, "checkpoint_activations": True}),
            device="cpu", progress=False)
    for (n, x), (_, y) in zip(checkpoint_tensors(a).items(), checkpoint_tensors(b).items()):
        assert (x == y).all() or abs(x.astype(float) - y.astype(float)).max() < 1e-3, n


def test_schedule_warms_up_then_decays_to_zero():
    steps = 100
    m = [lr_at(s, steps, 0.1) for s in range(steps)]
    assert m[0] == pytest.approx(0.1) and m[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(m[10:], m[11:])) and m[-1] < 0.01


def test_teacher_with_another_vocabulary_or_architecture():
    student, _ = _quantized()
    with pytest.raises(DistillError, match="vocabulary differs.*vocab_size is 96 in the teacher and 128"):
        distill(student, tiny_model(vocab=96), _train_ids(), DistillConfig(**SHORT), progress=False)
    from transformers import LlamaConfig, LlamaForCausalLM
    other = LlamaForCausalLM(LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2))
    with pytest.raises(DistillError, match="architecture differs.*hidden_size"):
        distill(student, other, _train_ids(), DistillConfig(**SHORT), progress=False)


def test_float_model_is_refused():
    with pytest.raises(DistillError, match="no VQLinear"):
        distill(tiny_model(), tiny_model(), _train_ids(), DistillConfig(**SHORT), progress=False)


# --- CLI -------------------------------------------------------------------------------------------
def _ft(q, teacher, calib, out, *extra):
    return ["finetune", str(q), "--teacher", str(teacher), "--calib", str(calib), "--out", str(out),
            "--distill-seqlen", "32", "--quiet", "--device", "cpu", *extra]


def test_cli_finetune_writes_a_tuned_checkpoint(tiny_dirs, tmp_path, capsys):
    model_dir, q, calib = tiny_dirs
    out = tmp_path / "tuned"
    assert main(_ft(q, model_dir, calib, out, "--tokens", "512", "--distill-lr", "3e-3")) == 0
    text = capsys.readouterr().out
    assert "distilled 4 steps (512 tokens)" in text and "KL(teacher||student)" in text
    assert not (tmp_path / ".tuned.partial").exists()
    tuned = load_quantized(out)
    assert tuned.config.vq2trt_distillation["tokens"] == 512
    assert tuned.vq2trt_config == load_quantized(q).vq2trt_config


def test_quantize_with_distillation_stage(tiny_dirs, tmp_path, capsys):
    model_dir, _, calib = tiny_dirs
    out = tmp_path / "qd"
    argv = ["quantize", str(model_dir), "--calib", str(calib), "--out", str(out), "--samples", "4", "--seqlen", "32",
            "--kmeans-iters", "4", "--quiet", "--device", "cpu", "--distill-tokens", "256", "--distill-seqlen", "32"]
    assert main(argv) == 0
    assert "distilled 2 steps (256 tokens)" in capsys.readouterr().out
    assert load_quantized(out).vq2trt_config.distill_tokens == 256


@pytest.mark.parametrize("case", ["tokens0", "not_quantized", "other_vocab"])
def test_cli_bad_input_writes_nothing(tiny_dirs, tmp_path, capsys, case):
    model_dir, q, calib = tiny_dirs
    out = tmp_path / "out"
    if case == "tokens0":
        argv, needle = _ft(q, model_dir, calib, out, "--tokens", "0"), "tokens=0 is invalid"
    elif case == "not_quantized":
        argv, needle = _ft(model_dir, model_dir, calib, out, "--tokens", "64"), "not a vq2trt quantized checkpoint"
    else:
        other = tmp_path / "other"
        tiny_model(vocab=96).save_pretrained(str(other))
        argv, needle = _ft(q, other, calib, out, "--tokens", "64"), "vocabulary differs"
    assert main(argv) == 2
    assert needle in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / ".out.partial").exists()


def test_quantized_head_is_tuned_and_round_trips(tmp_path):
    """With `quantize --head`, distillation trains the head's codebook too (the embedding, untied,
    stays the float table), and the saved checkpoint is the evaluated model."""
    from vq2trt.head import with_head

    teacher = tiny_model(0)
    with torch.no_grad():
        for p in teacher.parameters():
            p.mul_(4 if p.ndim == 2 else 1)
    student = copy.deepcopy(teacher)
    cfg = with_head(QuantConfig(**COARSE), "v4-k256")
    quantize(student, cfg, calib_ids(8, 32), device="cpu", progress=False)
    head0 = student.lm_head.codebook.detach().clone()
    emb0 = student.model.embed_tokens.weight.detach().clone()
    r = distill(student, teacher, _train_ids(), DistillConfig(**CFG), device="cpu", progress=False)
    assert r.loss_last < r.loss_first
    assert not torch.equal(student.lm_head.codebook, head0)
    assert torch.equal(student.model.embed_tokens.weight, emb0)
    save_quantized(student, cfg, tmp_path / "ckpt")
    loaded = load_quantized(tmp_path / "ckpt")
    ids = calib_ids(2, 16, seed=5)
    with torch.no_grad():
        assert torch.equal(student(ids).logits, loaded(ids).logits)

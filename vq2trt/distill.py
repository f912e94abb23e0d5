"""End-to-end distillation of a quantized model against its float teacher.

Minimises KL(teacher ‖ student) of the next-token distributions over windows of calibration
text. Continuous parameters move: every VQLinear's codebooks (main, residual, outlier),
its col_scale/col_bias and bias, and the decoder's RMSNorm weights. Indices stay fixed unless
``index_every`` turns on the discrete step (vq2trt.index_step, PV-tuning style), which moves
main indices between codewords; either way the format and the bit rate are unchanged.

Teacher logits are computed on the fly, not cached: at these token budgets each window is seen
about once, and a full-vocabulary cache costs seqlen x vocab x 2 bytes per window (50 MB for
SmolLM2 at 512 tokens), while the teacher's forward is only about a quarter of a step.

Determinism and resume: window starts of optimizer step s come from a generator seeded by
(seed, s) alone, and the whole training state (fp32 master parameters, AdamW moments, step) is
written atomically every ``save_every`` steps, so a killed run continues from its last save and
ends with the same bytes as an uninterrupted one (same device, same thread count).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from vq2trt.index_step import CurvatureHooks, apply, propose
from vq2trt.nn import VQLinear, replace_linear

STATE_FILE = "distill_state.pt"
# Models above this many parameters checkpoint activations per decoder layer unless told otherwise:
# below it the activations of a 512-token window fit easily, and recomputing them costs ~30 %.
AUTO_CHECKPOINT_PARAMS = 1_000_000_000
INDEX_SEARCH_START = 64  # moves the index step's search tries first (then 128, 256, ...)


class DistillError(ValueError):
    """Distillation inputs that cannot work; the message names the input and what was expected."""


@dataclass
class DistillConfig:
    """How to distil. ``tokens`` counts student training tokens (windows x seqlen)."""

    tokens: int
    seqlen: int = 512
    batch_size: int = 1          # windows per forward
    grad_accum: int = 4          # forwards per optimizer step
    lr: float = 1e-3             # peak AdamW learning rate (codebooks, scales, norms)
    warmup_frac: float = 0.05    # linear warm-up share of the steps, then cosine to 0
    weight_decay: float = 0.0    # decaying codebooks towards 0 would shrink the weights
    seed: int = 0
    save_every: int = 10         # optimizer steps between resume states
    checkpoint_activations: bool | None = None  # None: on above AUTO_CHECKPOINT_PARAMS
    # Discrete step (vq2trt.index_step): every index_every optimizer steps (0 = never) each layer
    # proposes its index_frac best-gaining vectors and the search in _index_step keeps the best
    # number of the model's best moves, judged by the KL on index_check_windows fresh windows.
    index_every: int = 0
    index_frac: float = 0.005
    index_damp: float = 1.0
    index_curvature: float = 100.0   # scale of the empirical-Fisher curvature (vq2trt.index_step says why)
    index_check_windows: int = 4

    def validate(self) -> None:
        def need(ok: bool, name: str, expected: str) -> None:
            if not ok:
                raise DistillError(f"distillation: {name}={getattr(self, name)!r} is invalid; expected {expected}")

        need(isinstance(self.tokens, int) and self.tokens >= 1, "tokens", "an integer >= 1 (training tokens)")
        need(isinstance(self.seqlen, int) and self.seqlen >= 2, "seqlen", "an integer >= 2")
        need(isinstance(self.batch_size, int) and self.batch_size >= 1, "batch_size", "an integer >= 1")
        need(isinstance(self.grad_accum, int) and self.grad_accum >= 1, "grad_accum", "an integer >= 1")
        need(self.lr > 0, "lr", "a number > 0")
        need(0 <= self.warmup_frac < 1, "warmup_frac", "a fraction in [0, 1)")
        need(self.weight_decay >= 0, "weight_decay", "a number >= 0")
        need(isinstance(self.save_every, int) and self.save_every >= 1, "save_every", "an integer >= 1")
        need(isinstance(self.index_every, int) and self.index_every >= 0, "index_every",
             "an integer >= 0 (0 = indices stay fixed)")
        need(0 < self.index_frac <= 1, "index_frac", "a fraction in (0, 1]")
        need(self.index_damp >= 0, "index_damp", "a number >= 0")
        need(self.index_curvature > 0, "index_curvature", "a number > 0")
        need(isinstance(self.index_check_windows, int) and self.index_check_windows >= 1, "index_check_windows",
             "an integer >= 1")

    @property
    def tokens_per_step(self) -> int:
        return self.seqlen * self.batch_size * self.grad_accum

    @property
    def steps(self) -> int:
        return max(1, math.ceil(self.tokens / self.tokens_per_step))


@dataclass
class DistillResult:
    steps: int
    tokens: int
    loss_first: float     # mean KL (nats/token) over the first step
    loss_last: float      # mean KL over the last step
    seconds: float
    indices_changed: int = 0   # main indices the discrete step moved (and kept)
    index_steps: int = 0       # discrete steps tried
    index_kept: int = 0        # of which kept


def lr_at(step: int, steps: int, warmup_frac: float) -> float:
    """Multiplier of the peak rate at optimizer step ``step`` (0-based): linear warm-up, then cosine to 0."""
    warm = int(round(warmup_frac * steps))
    if step < warm:
        return (step + 1) / warm
    t = (step - warm) / max(1, steps - warm)
    return 0.5 * (1 + math.cos(math.pi * t))


def check_teacher(student: nn.Module, teacher: nn.Module) -> None:
    """The teacher must be the same architecture with the same vocabulary (it is the float original)."""
    s, t = student.config, teacher.config
    for field in ("vocab_size", "model_type", "hidden_size", "num_hidden_layers", "intermediate_size"):
        a, b = getattr(s, field, None), getattr(t, field, None)
        if a != b:
            what = "vocabulary" if field == "vocab_size" else "architecture"
            raise DistillError(f"teacher {what} differs from the quantized model's: {field} is {b!r} in the teacher "
                               f"and {a!r} in the checkpoint; distil against the float model it was quantized from")


def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Everything distillation trains, by name; turns their gradients on and every other one off."""
    model.requires_grad_(False)
    params: dict[str, nn.Parameter] = {}
    for name, m in model.named_modules():
        if isinstance(m, VQLinear):
            for pname, p in m.trainable_named():
                p.requires_grad_(True)
                params[f"{name}.{pname}"] = p
    for name, p in model.named_parameters():
        if name.endswith("norm.weight"):
            p.requires_grad_(True)
            params[name] = p
    if not any(isinstance(m, VQLinear) for m in model.modules()):
        raise DistillError("the model has no VQLinear layers: distillation tunes a quantized checkpoint; "
                           "quantize the model with method 'vptq' first")
    return params


def kl_per_token(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """KL(teacher ‖ student) in nats, averaged over every position of [b, L, V] logits."""
    t = F.log_softmax(teacher_logits.float(), dim=-1)   # [b, L, V]
    s = F.log_softmax(student_logits.float(), dim=-1)   # [b, L, V]
    return (t.exp() * (t - s)).sum(-1).mean()


def _window_starts(seed: int, step: int, count: int, high: int) -> list[int]:
    gen = torch.Generator().manual_seed((seed * 1_000_003 + step) % (2**63 - 1))
    return torch.randint(0, high, (count,), generator=gen).tolist()


def _fingerprint(student: nn.Module, teacher: nn.Module, ids: torch.Tensor, cfg: DistillConfig) -> str:
    h = hashlib.sha256()
    h.update(json.dumps(asdict(cfg), sort_keys=True).encode())
    h.update(ids.numpy().astype("int64").tobytes())
    for model in (student, teacher):
        for name, p in list(model.state_dict().items())[:6]:
            h.update(name.encode())
            h.update(p.detach().float().cpu().numpy().tobytes()[:4096])
    return h.hexdigest()


def _save_state(path: Path, state: dict) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def distill(student: nn.Module, teacher: nn.Module, ids: torch.Tensor, cfg: DistillConfig, *,
            work_dir: str | os.PathLike | None = None, device: str | torch.device | None = None,
            progress: bool = True) -> DistillResult:
    """Tune ``student`` (a model with VQLinear layers) in place towards ``teacher``'s distributions.

    ids: token ids [T] of the calibration text, windows of ``cfg.seqlen`` are drawn from it.
    On return every VQLinear holds exactly its stored (fp16-rounded) values, so the model that is
    evaluated is the model that is saved.
    """
    cfg.validate()
    check_teacher(student, teacher)
    ids = ids.reshape(-1).cpu()
    if ids.numel() < cfg.seqlen + 1:
        raise DistillError(f"calibration text has {ids.numel()} tokens; windows of {cfg.seqlen} need at least "
                           f"{cfg.seqlen + 1}")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    params = trainable_parameters(student)
    teacher.requires_grad_(False).eval().to(device)
    student.to(device)
    n_params = sum(p.numel() for p in student.parameters())
    ckpt = cfg.checkpoint_activations if cfg.checkpoint_activations is not None else n_params > AUTO_CHECKPOINT_PARAMS
    if ckpt:
        if not getattr(student, "supports_gradient_checkpointing", False):
            raise DistillError(f"{type(student).__name__} cannot checkpoint activations; pass "
                               "checkpoint_activations=False")
        # transformers renamed the method and its argument (the old names warn and go in v6)
        if hasattr(student, "activation_checkpointing_enable"):
            student.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            student.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    student.train()  # only switches checkpointing on in HF decoders; LLaMA has no dropout here
    # One dequantized W per step for every Linear is fast but holds all of them (and their
    # gradients) in fp32; with checkpointing on, memory wins: each forward dequantizes its own.
    step_weights = [] if ckpt else [m for m in student.modules() if isinstance(m, VQLinear)]
    if cfg.index_every and ckpt:
        raise DistillError("the index step needs each Linear's whole-step gradient dL/dW, which activation "
                           "checkpointing does not keep; pass checkpoint_activations=False or index_every=0")
    hooks = CurvatureHooks(student) if cfg.index_every else None
    counts = {"indices_changed": 0, "index_steps": 0, "index_kept": 0}

    opt = torch.optim.AdamW(list(params.values()), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay)
    steps, start, first, last = cfg.steps, 0, None, float("nan")
    state_path = Path(work_dir) / STATE_FILE if work_dir else None
    fp = _fingerprint(student, teacher, ids, cfg)
    if state_path is not None:
        state_path.parent.mkdir(parents=True, exist_ok=True)
        if state_path.exists():
            start, first, last = _load_state(state_path, fp, params, opt, hooks, counts)

    t0 = time.perf_counter()
    bar = tqdm(range(start, steps), desc="distill", unit="step", initial=start, total=steps,
               disable=not progress)
    try:
        for step in bar:
            for g in opt.param_groups:
                g["lr"] = cfg.lr * lr_at(step, steps, cfg.warmup_frac)
            starts = _window_starts(cfg.seed, step, cfg.batch_size * cfg.grad_accum, ids.numel() - cfg.seqlen)
            opt.zero_grad(set_to_none=True)
            index_now = bool(cfg.index_every) and (step + 1) % cfg.index_every == 0
            for m in step_weights:
                m.begin_step()
            total = 0.0
            for j in range(cfg.grad_accum):
                chunk = starts[j * cfg.batch_size:(j + 1) * cfg.batch_size]
                x = torch.stack([ids[s:s + cfg.seqlen] for s in chunk]).to(device)    # [b, L]
                with torch.no_grad():
                    t_logits = teacher(input_ids=x, use_cache=False).logits            # [b, L, V]
                loss = kl_per_token(student(input_ids=x, use_cache=False).logits, t_logits) / cfg.grad_accum
                loss.backward()
                total += float(loss.detach())
            if hooks is not None:
                hooks.add_gradients()
            proposals = _propose_all(hooks, cfg) if index_now else {}
            for m in step_weights:
                m.end_step()
            opt.step()
            if index_now:
                _index_step(student, teacher, ids, cfg, step, proposals, counts, device)
            last = total
            first = total if first is None else first
            done = (step + 1 - start) * cfg.tokens_per_step
            post = {"kl": f"{total:.4f}", "tok_s": f"{done / (time.perf_counter() - t0):.0f}"}
            if cfg.index_every:
                post["idx"] = counts["indices_changed"]
            bar.set_postfix(post)
            if state_path is not None and ((step + 1) % cfg.save_every == 0 or step + 1 == steps):
                state = {"fingerprint": fp, "step": step + 1, "first": first, "last": last,
                         "params": {n: p.detach().cpu().clone() for n, p in params.items()},
                         "opt": opt.state_dict()}
                if hooks is not None:
                    state["indices"] = {n: m.indices.to(torch.int32).cpu().clone() for n, m in hooks.layers.items()}
                    state["counts"] = dict(counts)
                _save_state(state_path, state)
    finally:
        if hooks is not None:
            hooks.remove()
        for m in step_weights:
            m._step_weight = None
        bar.close()
        if ckpt:
            disable = getattr(student, "activation_checkpointing_disable", None) or \
                student.gradient_checkpointing_disable
            disable()
        student.eval()
        student.requires_grad_(False)
    round_to_stored(student)
    return DistillResult(steps=steps, tokens=steps * cfg.tokens_per_step, loss_first=float(first),
                         loss_last=float(last), seconds=time.perf_counter() - t0, **counts)


def _propose_all(hooks: CurvatureHooks, cfg: DistillConfig) -> dict:
    """Index proposals of every layer from dL/dW and the curvature summed since the last index step."""
    out = {}
    for name, m in hooks.layers.items():
        if name not in hooks.grad or name not in hooks.sx or name not in hooks.sg:
            continue
        p = propose(m, hooks.grad[name], hooks.sx[name], hooks.sg[name], cfg.index_frac, cfg.index_damp,
                    cfg.index_curvature)
        if p is not None:
            out[name] = (m, *p)
    hooks.reset()
    return out


@torch.no_grad()
def _index_step(student, teacher, ids, cfg: DistillConfig, step: int, proposals: dict, counts: dict,
                device) -> None:
    """Apply the model's best moves, a share of every layer's proposals, in growing numbers
    (64, 128, 256, ...) while the KL on fresh check windows keeps falling; keep the best count.

    Why a search over the count: each layer's moves are predicted well on their own, but every layer
    corrects the same output error, so the moves of all layers together overshoot like a gradient
    step ~30x too long (on SmolLM2 at 2.3 bits, 0.01 % of all vectors moved at once raised the KL by
    0.8 nats while the best ~250 lowered it by 8-10 %, on held-out windows as much as on the step's own).
    """
    if not proposals:
        return
    counts["index_steps"] += 1
    # Check windows come from their own stream, so the choice is judged on text the gradients did not see.
    starts = _window_starts(cfg.seed + 1_000_000_007, step, cfg.index_check_windows, ids.numel() - cfg.seqlen)
    x = torch.stack([ids[s:s + cfg.seqlen] for s in starts]).to(device)
    t_logits = teacher(input_ids=x, use_cache=False).logits

    def kl() -> float:
        return float(kl_per_token(student(input_ids=x, use_cache=False).logits, t_logits))

    names = list(proposals)
    owner = torch.cat([torch.full((len(proposals[n][3]),), i) for i, n in enumerate(names)])
    rank = torch.cat([torch.arange(len(proposals[n][3])) for n in names])
    # Each layer's best moves first, in equal shares of its proposals: ranking by predicted gain
    # across layers crowds the moves into a few layers and did worse (RESULTS.md).
    share = torch.cat([torch.arange(len(proposals[n][3])) / len(proposals[n][3]) for n in names])
    order = torch.sort(share, stable=True).indices
    best_kl, best_n, keep, applied, undo = kl(), 0, 0, 0, []
    n = INDEX_SEARCH_START
    while applied < order.numel():
        chunk = order[applied:min(n, order.numel())]
        moves = []
        for i in torch.unique(owner[chunk]).tolist():
            m, pos, new, _ = proposals[names[i]]
            r = rank[chunk][owner[chunk] == i]
            moves.append((m, pos[r], apply(m, pos[r], new[r])))
        undo.append(moves)
        applied += chunk.numel()
        now = kl()
        if now < best_kl:
            best_kl, best_n, keep = now, applied, len(undo)
        else:
            break
        n *= 2
    for moves in reversed(undo[keep:]):
        for m, pos, old in moves:
            apply(m, pos, old)
    if best_n:
        counts["index_kept"] += 1
        counts["indices_changed"] += best_n


def _load_state(path: Path, fp: str, params: dict[str, nn.Parameter], opt, hooks=None,
                counts=None) -> tuple[int, float, float]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a torn file cannot happen (atomic rename) but a disk error can
        raise DistillError(f"resume state {path} is unreadable ({e}); delete {path.parent} to start over") from e
    if state.get("fingerprint") != fp:
        raise DistillError(f"{path.parent} holds a distillation run with another checkpoint, teacher, text or "
                           f"settings; delete it or choose another output folder")
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(state["params"][n].to(p))
    opt.load_state_dict(state["opt"])
    if hooks is not None:
        for name, m in hooks.layers.items():
            m.indices.copy_(state["indices"][name].to(m.indices))
            m._cache = None
        counts.update(state["counts"])
    return int(state["step"]), float(state["first"]), float(state["last"])


def round_to_stored(model: nn.Module) -> None:
    """Replace every VQLinear by one built from its stored form (fp16 codebooks and scales)."""
    for name, m in list(model.named_modules()):
        if isinstance(m, VQLinear):
            device = m.codebook.device
            replace_linear(model, name, VQLinear(m.to_vqweight(), dtype=m._dtype).to(device))


@torch.no_grad()
def mean_kl(student: nn.Module, teacher: nn.Module, windows: torch.Tensor, batch_size: int = 1) -> float:
    """Mean KL(teacher ‖ student) per token over ``windows`` [n, L] of token ids."""
    student.eval()
    total = 0.0
    for i in range(0, windows.shape[0], batch_size):
        x = windows[i:i + batch_size]
        total += float(kl_per_token(student(input_ids=x, use_cache=False).logits,
                                    teacher(input_ids=x, use_cache=False).logits)) * x.shape[0]
    return total / windows.shape[0]

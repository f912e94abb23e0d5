"""Calibration activations between decoder layers: in memory, or in files when over a budget.

quantize() keeps, for each calibration batch, the hidden states entering the current layer (and,
when layers are fine-tuned, the float layer's outputs as targets). For a 70B model with 128 x 2048
calibration tokens that is 8.6 GB per copy in float32, more than a small machine should hold beside
a decoder layer. ``Activations`` is the list quantize() iterates; with a folder it writes each
batch to its own file and reads it back when the batch is used, so one batch at a time is resident.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn

_counter = itertools.count()


class MemoryBudgetError(ValueError):
    """--max-memory below what one step of the run needs."""


class Activations:
    """[(hidden [b, T, d], kwargs)] per calibration batch; ``ids`` are the batches' global indices."""

    def __init__(self, kwargs: list[dict], ids: list[int], folder: Path | None = None, device=None):
        self._kw, self.ids = list(kwargs), list(ids)
        self.folder, self.device = folder, device
        self._tag = f"a{os.getpid()}_{next(_counter)}"
        self._mem: list[torch.Tensor | None] = [None] * len(self.ids)
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)

    @property
    def spilled(self) -> bool:
        return self.folder is not None

    def __len__(self) -> int:
        return len(self.ids)

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict]:
        return self.hidden(i), self._kw[i]

    def _file(self, i: int) -> Path:
        return self.folder / f"{self._tag}_{i:05d}.pt"

    def hidden(self, i: int) -> torch.Tensor:
        if self.folder is None:
            return self._mem[i]
        return torch.load(self._file(i), weights_only=True).to(self.device or "cpu")

    def put(self, i: int, t: torch.Tensor) -> None:
        if self.folder is None:
            self._mem[i] = t
            return
        tmp = self._file(i).with_suffix(".tmp")
        torch.save(t.detach().cpu(), tmp)
        os.replace(tmp, self._file(i))

    def like(self, kwargs: list[dict] | None = None) -> Activations:
        """An empty store of the same kind, batches and (unless given) kwargs."""
        return Activations(self._kw if kwargs is None else kwargs, self.ids, self.folder, self.device)

    def with_kwargs(self, kwargs: list[dict]) -> Activations:
        """The same hidden states with other kwargs (the next layer's masks and rotary)."""
        out = self.like(kwargs)
        out._mem, out._tag = self._mem, self._tag
        return out

    def map(self, fn) -> Activations:
        """A new store of fn(hidden, kwargs) for every batch."""
        out = self.like()
        for i in range(len(self)):
            h, kw = self[i]
            out.put(i, fn(h, kw))
        return out

    def hiddens(self) -> _Hiddens:
        return _Hiddens(self)

    def free(self) -> None:
        self._mem = [None] * len(self.ids)
        if self.folder is not None:
            for f in self.folder.glob(f"{self._tag}_*"):
                f.unlink(missing_ok=True)


class _Hiddens:
    """The hidden states alone, as the sequence fine-tuning indexes for its targets."""

    def __init__(self, store: Activations):
        self._s = store

    def __len__(self) -> int:
        return len(self._s)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self._s.hidden(i)

    def __iter__(self):
        return (self._s.hidden(i) for i in range(len(self._s)))


def activation_bytes(samples: int, seqlen: int, hidden_size: int, dtype: torch.dtype, copies: int) -> int:
    """Bytes of ``copies`` sets of calibration hidden states [samples, seqlen, hidden_size]."""
    return samples * seqlen * hidden_size * torch.empty((), dtype=dtype).element_size() * copies


def parse_size(text: str) -> int:
    """'24G', '512M', '1.5GiB', '1000000' -> bytes (K/M/G/T are powers of 1024)."""
    s = str(text).strip().upper().removesuffix("IB").removesuffix("B")
    scale = 1
    if s and s[-1] in "KMGT":
        scale, s = 1024 ** ("KMGT".index(s[-1]) + 1), s[:-1]
    try:
        value = float(s)
    except ValueError:
        raise ValueError(f"memory size {text!r}: expected a number with an optional K, M, G or T suffix, "
                         "e.g. 24G") from None
    if value <= 0:
        raise ValueError(f"memory size {text!r} must be positive")
    return int(value * scale)


def gib(n: float) -> str:
    """A byte count for people: GiB, or MiB below one GiB."""
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def plan_memory(model, config, calib, batch_size, n_local, stream, dist, max_memory, work_path, log):
    """Say what the run needs per rank; return the folder to spill activations to (None: memory)."""
    hidden = model.config.hidden_size
    rows = min(n_local * batch_size, calib.shape[0])
    dtype = next(p for p in model.parameters() if not p.is_meta).dtype
    copies = 2 + (config.finetune_steps > 0)   # this layer's inputs, its outputs (, the float targets)
    act = activation_bytes(rows, calib.shape[1], hidden, dtype, copies)
    one_batch = activation_bytes(batch_size, calib.shape[1], hidden, dtype, copies)
    if stream is not None:
        weights, what = stream.layer_bytes(), "one decoder layer"
    else:
        weights = sum(p.numel() * p.element_size() for p in model.parameters())
        what = "the whole model"
    hess = hessian_bytes(model)
    work_set = quantizer_bytes(model)
    rank = "" if dist.world == 1 else f" per rank ({dist.world} ranks)"
    spill = None
    fixed = weights + hess + work_set
    if max_memory is not None and fixed + act > max_memory:
        if fixed + one_batch > max_memory:
            raise MemoryBudgetError(f"--max-memory {gib(max_memory)} is less than {what} ({gib(weights)}) plus its "
                                    f"Hessians ({gib(hess)}), quantizing its largest Linear (about {gib(work_set)}) "
                                    f"and one calibration batch ({gib(one_batch)}); raise it"
                                    + ("" if stream is not None else " or add --stream"))
        base = work_path if work_path is not None else Path(tempfile.mkdtemp(prefix="vq2trt-act-"))
        spill = base / f"activations-rank{dist.rank}"
        if spill.exists():                      # a killed run's files: this run writes its own
            shutil.rmtree(spill)
    where = f"on disk in {spill}" if spill is not None else "in memory"
    log(f"memory{rank}: {what} {gib(weights)} + Hessian sums {gib(hess)} + quantizing the largest Linear "
        f"~{gib(work_set)} + calibration activations {gib(act)} ({rows} x {calib.shape[1]} tokens, {copies} "
        f"copies) {where}")
    return spill


# The VPTQ loop's transient memory on CPU, fitted to the peak RSS above start of vptq_quantize
# (v4-k256, benchmarks/layer_cost.py and RESULTS.md "Quantizing models larger than memory") from
# 1024 x 1024 to 1024 x 12288: about 7 float64 K x K copies of H and its factors (58 B per entry),
# copies of W and its error (up to 40 B per weight). Within -35%..+30% on the shapes measured, and
# some 60 MiB low on the smallest, where fixed costs dominate; residual and outlier codebooks add to it.
_WORK_PER_WEIGHT, _WORK_PER_HESSIAN_ENTRY = 40, 58


def quantizer_bytes(model) -> int:
    """About how much memory quantizing the layer's largest Linear takes beyond its Hessian sum."""
    layer = model.model.layers[0]
    lins = [m for m in layer.modules() if isinstance(m, nn.Linear)]
    return max(_WORK_PER_WEIGHT * m.in_features * m.out_features + _WORK_PER_HESSIAN_ENTRY * m.in_features ** 2
               for m in lins)


def hessian_bytes(model) -> int:
    """Bytes of one layer's Hessian sums: a K x K int64 sum per distinct Linear input (the inputs of
    each block's Linears before its output projection are one; the output projection has its own)."""
    from vq2trt.families import family_for

    layer = model.model.layers[0]
    ks = []
    for block, names in family_for(model.config).projections.items():
        sub = getattr(layer, block)
        lins = [getattr(sub, n) for n in names]
        ks += [lins[0].in_features, lins[-1].in_features] if len(lins) > 1 else [lins[0].in_features]
    return sum(k * k * 8 for k in ks)

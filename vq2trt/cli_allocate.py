"""`vq2trt quantize --target-bits`: per-Linear formats chosen by vq2trt.allocate (hooked in by cli)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from vq2trt.config import ConfigError, QuantConfig

ALLOCATION_FILE = "allocation.json"


def add_allocate_arguments(q: argparse.ArgumentParser) -> None:
    from vq2trt.allocate import DEFAULT_CANDIDATES, SENSITIVITIES

    q.add_argument("--target-bits", type=float,
                   help="choose each Linear's format from --candidates so that the all-in bits per weight over the "
                        "quantized Linears stay <= this (--config then sets only the non-format fields)")
    q.add_argument("--candidates",
                   help=f"comma-separated presets for --target-bits (default {','.join(DEFAULT_CANDIDATES)})")
    q.add_argument("--sensitivity", choices=SENSITIVITIES, default="proxy",
                   help="how --target-bits ranks a Linear's formats: 'proxy', the error at the Linear's output "
                        "(default), or 'loss', the error weighted by the end loss's output gradients (one backward "
                        "pass more; compares early and late layers fairly)")


def allocated_config(model, calib, config: QuantConfig, work: Path, a: argparse.Namespace) -> QuantConfig:
    """The allocated config, kept in the run's work folder so that a resumed run skips the allocation."""
    from vq2trt.allocate import DEFAULT_CANDIDATES, Allocation, allocate_plan, resolve_candidates
    from vq2trt.quantize import _fingerprint

    if a.target_bits is None:
        raise ConfigError("--candidates and --sensitivity need --target-bits")
    names = [c.strip() for c in a.candidates.split(",") if c.strip()] if a.candidates else list(DEFAULT_CANDIDATES)
    cands = resolve_candidates(names, config)      # bad names fail before the model is touched again
    key = {"target_bits": a.target_bits, "candidates": {k: c.format_fields() for k, c in cands.items()},
           "run": _fingerprint(model, config, calib)}
    if a.sensitivity != "proxy":  # absent for the default, so allocations cached before the flag still match
        key["sensitivity"] = a.sensitivity
    cache = work / ALLOCATION_FILE
    plan = _cached(cache, key)
    if plan is None:
        plan = allocate_plan(model, calib, names, a.target_bits, base=config, device=a.device,
                             progress=not a.quiet, sensitivity=a.sensitivity)
        work.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp")
        tmp.write_text(json.dumps({"key": key, "plan": plan.to_dict()}))  # plan order = layer order
        os.replace(tmp, cache)
    else:
        plan = Allocation.from_dict(plan)
    _print_plan(plan, list(cands))
    return plan.config


def _cached(cache: Path, key: dict) -> dict | None:
    try:
        d = json.loads(cache.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    # A JSON round trip of the key compares what was written with what would be written now.
    return d.get("plan") if d.get("key") == json.loads(json.dumps(key)) else None


def _print_plan(plan, labels: list[str]) -> None:
    counts = plan.counts_by_type()
    used = [c for c in labels if any(c in row for row in counts.values())]
    print(f"bit allocation: {plan.bits_per_weight:.4f} all-in bits per weight (target {plan.target_bits}), "
          f"{len(plan.config.modules)} per-module override(s)")
    w = max(len(c) for c in used)
    print(f"| {'Linear':6s} | " + " | ".join(f"{c:>{w}s}" for c in used) + " |")
    print(f"|{'-' * 8}|" + "|".join("-" * (w + 2) for _ in used) + "|")
    for kind, row in counts.items():
        print(f"| {kind:6s} | " + " | ".join(f"{row.get(c, 0):>{w}d}" for c in used) + " |")

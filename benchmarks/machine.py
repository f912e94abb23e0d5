"""What machine a benchmark ran on, for the label every table carries (RESULTS.md: one per ISA)."""

from __future__ import annotations

import contextlib
import os
import platform


def cpu_label() -> str:
    """'<model name>, <ISA>' from /proc/cpuinfo (the widest SIMD level the flags show)."""
    name, flags = platform.processor() or platform.machine(), set()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name") and name in ("", platform.machine(), platform.processor()):
                name = line.split(":", 1)[1].strip()
            elif line.startswith(("flags", "Features")) and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    if {"avx512f", "avx512bw", "avx512vl"} <= flags:
        isa = "AVX-512" + "".join(f"+{x}" for x, f in (("VNNI", "avx512_vnni"), ("VBMI", "avx512vbmi"),
                                                        ("BF16", "avx512_bf16")) if f in flags)
    elif "avx2" in flags:
        isa = "AVX2" + ("+FMA" if "fma" in flags else "")
    elif "asimd" in flags or platform.machine() in ("aarch64", "arm64"):
        isa = "NEON" + ("+dotprod" if "asimddp" in flags else "")
    else:
        isa = "scalar"
    return f"{name}, {isa}, {os.cpu_count()} logical CPUs"


@contextlib.contextmanager
def environment(values: dict[str, str]):
    """os.environ with ``values`` while sessions are created (the kernels read VQ2TRT_* at prepack)."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

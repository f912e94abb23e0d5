"""Peak memory of `vq2trt quantize`: the model loaded whole vs `--stream` (one decoder layer at a time)
vs `--stream --max-memory` (calibration activations spilled to files), on SmolLM2-135M and on a
random LLaMA larger than the memory budget.

What it does (everything under --work, default out/quantize-memory):

1. Converts the SmolLM2-135M GGUF into an HF folder as a real large checkpoint looks: --shards
   safetensors shards plus model.safetensors.index.json (the HF index format
   {"metadata": {"total_size": N}, "weight_map": {tensor: shard}}), config.json (written by hand:
   transformers refuses save_pretrained on GGUF-loaded models) and the tokenizer. With tied
   embeddings lm_head.weight is not written. Tensors are stored in --dtype (bf16 by default: half
   the disk; both load paths cast them to float32, so they quantize the same numbers).
2. Runs `vq2trt quantize FOLDER` as a child process loaded whole, with --stream, and with
   --stream --max-memory --smol-budget, all with the same --args, and compares each streamed run's
   model.safetensors byte for byte with the whole run's. A budget of "auto" is the smallest quantize
   accepts (one layer + its Hessians and quantizer working set as vq2trt.activations estimates
   them + one calibration batch) plus half the rest of the activations: quantize must spill, and can.
3. Writes a random LLaMA (--synth-hidden/--synth-intermediate/--synth-layers, vocab = the SmolLM2
   tokenizer's, tied embeddings; default ~1 GiB as float32) shard by shard, one layer's tensors
   generated at a time from a seeded torch.Generator, so this process never holds the model; then
   quantizes it with
   --stream --max-memory --synth-budget and --synth-args and checks that quantize's `memory:` line
   puts the activations on disk.

Each child's peak RSS is the kernel's own figure for that child (ru_maxrss from os.wait4 on its pid,
which includes file-backed pages such as the memory-mapped safetensors shards it touched); "peak
anon" is the largest RssAnon seen by polling /proc/PID/status every 50 ms (heap only, Linux only,
a lower bound). A first row measures an interpreter that only imports torch, transformers and
vq2trt: that much of every peak is not the model's. --max-memory budgets one decoder layer, its
Hessians and the activations, not the interpreter or the tensors outside the layers (embeddings,
final norm, head), so the peak is expected above it; how far above is what the table shows.

    .venv/bin/python benchmarks/quantize_memory.py --work /tmp/qm        # ~20 min on 2 cores
    .venv/bin/python benchmarks/quantize_memory.py --synth-layers 2      # a quick estimate
    .venv/bin/python benchmarks/quantize_memory.py --skip-synth          # SmolLM2 rows only
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from machine import cpu_label  # benchmarks/machine.py: scripts run as benchmarks/NAME.py

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_GGUF = Path.home() / ".cache" / "vq2trt" / "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_CALIB = (ROOT / ".." / "shared" / "data" / "wikitext-2" / "wiki.valid.tokens").resolve()
SMOL_ARGS = "--config v4-k256 --samples 16 --seqlen 256 --kmeans-iters 2 --quiet"
SYNTH_ARGS = "--config v2-k16 --samples 64 --seqlen 256 --kmeans-iters 1 --quiet"
INDEX_FILE = "model.safetensors.index.json"
WEIGHTS = "model.safetensors"


# --------------------------------------------------------------------------------------------- machine
def mib(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"


def folder_bytes(path: Path, pattern: str = "*.safetensors") -> int:
    return sum(f.stat().st_size for f in path.glob(pattern))


# --------------------------------------------------------------------------------------------- writing
def _dtype(name: str):
    import torch
    return {"bf16": torch.bfloat16, "fp32": torch.float32}[name]


def _write_shards(folder: Path, shards: list[dict] | None, n_shards: int, make_shard=None):
    """Write shard files model-0000i-of-0000n.safetensors and the HF index. ``make_shard(i)`` returns
    shard i's tensors (so only one shard is ever built); total_size counts the tensor bytes."""
    from safetensors.torch import save_file

    weight_map, total = {}, 0
    for i in range(n_shards):
        tensors = make_shard(i) if make_shard else shards[i]
        fname = f"model-{i + 1:05d}-of-{n_shards:05d}.safetensors"
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / fname), metadata={"format": "pt"})
        for k, v in tensors.items():
            weight_map[k] = fname
            total += v.numel() * v.element_size()
        del tensors
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (folder / INDEX_FILE).write_text(json.dumps(index, indent=2))
    return total


def _layer_of(name: str) -> int | None:
    m = re.match(r"model\.layers\.(\d+)\.", name)
    return int(m.group(1)) if m else None


def _shard_of_layer(i: int, n_layers: int, n_shards: int) -> int:
    return min(i * n_shards // n_layers, n_shards - 1)


def _write_config(folder: Path, cfg: dict, dtype: str) -> None:
    cfg = dict(cfg)
    cfg["architectures"] = cfg.get("architectures") or ["LlamaForCausalLM"]
    cfg["dtype"] = "bfloat16" if dtype == "bf16" else "float32"
    cfg.pop("torch_dtype", None)
    (folder / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True, default=str))


def convert_gguf(gguf: Path, folder: Path, n_shards: int, dtype: str) -> dict:
    """SmolLM2 GGUF -> sharded HF folder. Returns facts for the table."""
    from vq2trt.models import load_model

    model, tok = load_model(gguf)
    cfg = model.config
    tied = bool(getattr(cfg, "tie_word_embeddings", False))
    state = {k: v.detach().to(_dtype(dtype)) for k, v in model.state_dict().items()
             if not (tied and k == "lm_head.weight")}
    n_layers = cfg.num_hidden_layers
    shards: list[dict] = [{} for _ in range(n_shards)]
    for k, v in state.items():
        i = _layer_of(k)
        s = _shard_of_layer(i, n_layers, n_shards) if i is not None else (0 if "embed" in k else n_shards - 1)
        shards[s][k] = v
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    total = _write_shards(folder, shards, n_shards)
    _write_config(folder, cfg.to_dict(), dtype)
    tok.save_pretrained(str(folder))
    n_params = sum(v.numel() for v in state.values())
    del model, state, shards
    return dict(params=n_params, disk=total, fp32=n_params * 4, layers=n_layers, tied=tied, vocab=len(tok))


def write_synthetic(folder: Path, tok_folder: Path, hidden: int, intermediate: int, n_layers: int, heads: int,
                    kv_heads: int, n_shards: int, dtype: str, seed: int) -> dict:
    """A random LLaMA written shard by shard: only one shard's layers exist in memory at a time."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig

    tok = AutoTokenizer.from_pretrained(str(tok_folder))
    vocab = len(tok)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate,
                      num_hidden_layers=n_layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                      max_position_embeddings=4096, rms_norm_eps=1e-5, tie_word_embeddings=True,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    hd = hidden // heads
    dt = _dtype(dtype)

    def randn(shape, g, std):
        return (torch.randn(shape, generator=g, dtype=torch.float32) * std).to(dt)

    def layer_tensors(i: int) -> dict:
        g = torch.Generator().manual_seed(seed * 100_003 + i)
        p, s = f"model.layers.{i}.", hidden ** -0.5
        return {
            p + "input_layernorm.weight": torch.ones(hidden, dtype=dt),
            p + "post_attention_layernorm.weight": torch.ones(hidden, dtype=dt),
            p + "self_attn.q_proj.weight": randn((heads * hd, hidden), g, s),
            p + "self_attn.k_proj.weight": randn((kv_heads * hd, hidden), g, s),
            p + "self_attn.v_proj.weight": randn((kv_heads * hd, hidden), g, s),
            p + "self_attn.o_proj.weight": randn((hidden, heads * hd), g, s),
            p + "mlp.gate_proj.weight": randn((intermediate, hidden), g, s),
            p + "mlp.up_proj.weight": randn((intermediate, hidden), g, s),
            p + "mlp.down_proj.weight": randn((hidden, intermediate), g, intermediate ** -0.5),
        }

    def make_shard(s: int) -> dict:
        out = {}
        if s == 0:
            out["model.embed_tokens.weight"] = randn((vocab, hidden), torch.Generator().manual_seed(seed), 0.02)
        for i in range(n_layers):
            if _shard_of_layer(i, n_layers, n_shards) == s:
                out.update(layer_tensors(i))
        if s == n_shards - 1:
            out["model.norm.weight"] = torch.ones(hidden, dtype=dt)
        return out

    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    total = _write_shards(folder, None, n_shards, make_shard)
    _write_config(folder, cfg.to_dict(), dtype)
    tok.save_pretrained(str(folder))
    per_layer = hidden * (heads * hd) * 2 + hidden * (kv_heads * hd) * 2 + 3 * hidden * intermediate + 2 * hidden
    n_params = per_layer * n_layers + vocab * hidden + hidden
    return dict(params=n_params, disk=total, fp32=n_params * 4, layers_fp32=per_layer * n_layers * 4,
                layer_fp32=per_layer * 4, layers=n_layers, tied=True, vocab=vocab)


def auto_budget(folder: Path, args: str) -> tuple[int, str]:
    """Bytes between quantize's refusal (one layer + its Hessians + one batch) and its in-memory plan
    (one layer + Hessians + all activations), computed from the folder's config on a meta model."""
    import torch
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    from vq2trt.activations import activation_bytes
    from vq2trt.config import QuantConfig

    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--samples", type=int, default=QuantConfig().calib_samples)
    p.add_argument("--seqlen", type=int, default=QuantConfig().calib_seqlen)
    known, _ = p.parse_known_args(shlex.split(args))
    cfg = AutoConfig.from_pretrained(folder)
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(cfg)
    layer = sum(t.numel() for t in model.model.layers[0].state_dict().values()) * 4
    # The plan's per-layer terms, as far as this vq2trt has them: Hessian sums, the largest Linear's
    # quantizer working set (vq2trt.activations.plan_memory adds both to the layer).
    import vq2trt.activations as act_mod
    hess = sum(getattr(act_mod, f)(model) for f in ("hessian_bytes", "quantizer_bytes") if hasattr(act_mod, f))
    batch = min(8, known.samples)                            # quantize()'s batch_size
    one = activation_bytes(batch, known.seqlen, cfg.hidden_size, torch.float32, 2)
    act = activation_bytes(known.samples, known.seqlen, cfg.hidden_size, torch.float32, 2)
    if act <= one:
        raise SystemExit(f"auto budget: {known.samples} samples are one batch; nothing to spill (use --samples > 8)")
    budget = layer + hess + (one + act) // 2
    why = (f"auto = layer {mib(layer)} + Hessians and quantizer working set {mib(hess)} + (one batch {mib(one)} "
           f"+ activations {mib(act)}) / 2")
    return budget, why


def resolve_budget(text: str, folder: Path, args: str) -> tuple[str, int, str]:
    from vq2trt.activations import parse_size

    if text == "auto":
        b, why = auto_budget(folder, args)
        return str(b), b, why
    return text, parse_size(text), text


# --------------------------------------------------------------------------------------------- measuring
def _status_kib(pid: int, keys=("RssAnon", "VmRSS")) -> dict[str, int]:
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in keys:
                    out[k] = int(v.split()[0])
    except (OSError, ValueError):
        pass
    return out


def measure(cmd: list[str], log: Path, env: dict) -> dict:
    """Run cmd to completion; its own peak RSS (os.wait4), sampled peak RssAnon, wall time, output."""
    t0 = time.perf_counter()
    with open(log, "w") as f:
        p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
        peak = {"RssAnon": 0}
        done = threading.Event()

        def poll():
            while not done.is_set():
                s = _status_kib(p.pid)
                peak["RssAnon"] = max(peak["RssAnon"], s.get("RssAnon", 0))
                done.wait(0.05)

        th = threading.Thread(target=poll, daemon=True)
        th.start()
        _, status, ru = os.wait4(p.pid, 0)
        done.set()
        th.join()
        p.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    scale = 1 if sys.platform == "darwin" else 1024       # ru_maxrss: bytes on macOS, KiB on Linux
    text = log.read_text(errors="replace")
    return dict(rc=p.returncode, rss=ru.ru_maxrss * scale, anon=peak["RssAnon"] * 1024 or None, wall=wall,
                text=text, memory=next((ln for ln in text.splitlines() if ln.startswith("memory")), None))


def quantize_cmd() -> list[str]:
    exe = Path(sys.executable).parent / "vq2trt"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "vq2trt.cli"]


def run_quantize(model: Path, out: Path, calib: Path, args: str, extra: list[str], threads: int, env: dict) -> dict:
    for p in (out, out.parent / f".{out.name}.partial"):   # never resume a previous run's layers
        if p.exists():
            shutil.rmtree(p)
    cmd = quantize_cmd() + ["quantize", str(model), "--calib", str(calib), "--out", str(out),
                            "--threads", str(threads)] + shlex.split(args) + extra
    print("$ " + " ".join(shlex.quote(c) for c in cmd), flush=True)
    r = measure(cmd, out.parent / f"{out.name}.log", env)
    r["cmd"] = cmd
    if r["rc"] != 0:
        print(f"  FAILED (exit {r['rc']}); last output:\n" + "\n".join(r["text"].splitlines()[-15:]), flush=True)
    else:
        print(f"  peak RSS {mib(r['rss'])}, {r['wall']:.0f} s; {r['memory']}", flush=True)
    return r


def identical(a: Path, b: Path) -> str:
    if not (a.is_file() and b.is_file()):
        return "n/a (missing)"
    return "identical" if filecmp.cmp(a, b, shallow=False) else "DIFFERENT"


# --------------------------------------------------------------------------------------------- main
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=ROOT / "out" / "quantize-memory")
    ap.add_argument("--gguf", type=Path, default=DEFAULT_GGUF)
    ap.add_argument("--calib", type=Path, default=DEFAULT_CALIB)
    ap.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16", help="stored tensor dtype (default bf16)")
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1, help="torch threads of each quantize run (default 1)")
    ap.add_argument("--args", default=SMOL_ARGS, help=f"SmolLM2 quantize settings (default: {SMOL_ARGS!r})")
    ap.add_argument("--smol-budget", default="auto",
                    help="--max-memory of the spilled SmolLM2 row, a size or auto ('' to skip the row; default auto)")
    ap.add_argument("--skip-smollm2", action="store_true")
    ap.add_argument("--skip-synth", action="store_true")
    ap.add_argument("--synth-hidden", type=int, default=1024)
    ap.add_argument("--synth-intermediate", type=int, default=2048)
    ap.add_argument("--synth-layers", type=int, default=24)
    ap.add_argument("--synth-heads", type=int, default=16)
    ap.add_argument("--synth-kv-heads", type=int, default=4)
    ap.add_argument("--synth-budget", default="auto", help="--max-memory of the synthetic run (default auto)")
    ap.add_argument("--synth-args", default=SYNTH_ARGS, help=f"synthetic quantize settings (default: {SYNTH_ARGS!r})")
    ap.add_argument("--synth-in-memory", action="store_true",
                    help="also quantize the synthetic model --stream without --max-memory and compare bytes")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", action="store_true", help="keep the model folders and checkpoints under --work")
    a = ap.parse_args()

    import torch
    torch.set_num_threads(a.threads)

    a.work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), MKL_NUM_THREADS=str(a.threads), HF_HUB_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false")
    rows: list[dict] = []
    notes: list[str] = []
    t_all = time.perf_counter()

    base = measure([sys.executable, "-c", "import torch, transformers, accelerate, safetensors; "
                    "from transformers import AutoModelForCausalLM, LlamaForCausalLM; "
                    "import vq2trt.cli, vq2trt.quantize, vq2trt.streaming"], a.work / "imports.log", env)
    rows.append(dict(run="imports only (torch, transformers, vq2trt)", model="-", size="-", mode="-", budget="-",
                     plan="-", r=base, same="-"))

    smol = a.work / "smollm2-hf"
    synth = a.work / "synthetic-hf"
    smol_facts = None
    if not (a.skip_smollm2 and a.skip_synth):     # the random model takes SmolLM2's tokenizer from here
        t0 = time.perf_counter()
        smol_facts = convert_gguf(a.gguf, smol, a.shards, a.dtype)
        print(f"wrote {smol}: {smol_facts['params'] / 1e6:.1f} M parameters, {mib(smol_facts['disk'])} {a.dtype} "
              f"in {a.shards} shards ({time.perf_counter() - t0:.0f} s)", flush=True)

    def plan(r):
        m = r["memory"] or ""
        if not m:
            return "(no memory: line)"
        m = re.sub(r"^memory(?: per rank \([^)]*\))?: ", "", m)
        return re.sub(r" on disk in \S+", " **on disk**", m)

    if not a.skip_smollm2:
        f = smol_facts
        size = f"{f['params'] / 1e6:.0f} M params: {mib(f['disk'])} {a.dtype} / {mib(f['fp32'])} fp32"
        whole = run_quantize(smol, a.work / "q-smol-whole", a.calib, a.args, [], a.threads, env)
        rows.append(dict(run="SmolLM2 loaded whole", model="SmolLM2-135M", size=size, mode="whole", budget="-",
                         plan=plan(whole), r=whole, same="(reference)"))
        stream = run_quantize(smol, a.work / "q-smol-stream", a.calib, a.args, ["--stream"], a.threads, env)
        rows.append(dict(run="SmolLM2 --stream", model="SmolLM2-135M", size=size, mode="--stream", budget="-",
                         plan=plan(stream), r=stream,
                         same=identical(a.work / "q-smol-whole" / WEIGHTS, a.work / "q-smol-stream" / WEIGHTS)))
        if a.smol_budget:
            arg, nbytes, why = resolve_budget(a.smol_budget, smol, a.args)
            notes.append(f"SmolLM2 budget: {why}")
            spill = run_quantize(smol, a.work / "q-smol-spill", a.calib, a.args,
                                 ["--stream", "--max-memory", arg], a.threads, env)
            rows.append(dict(run=f"SmolLM2 --stream --max-memory {a.smol_budget}", model="SmolLM2-135M", size=size,
                             mode="--stream", budget=mib(nbytes),
                             plan=plan(spill), r=spill,
                             same=identical(a.work / "q-smol-whole" / WEIGHTS, a.work / "q-smol-spill" / WEIGHTS)))

    synth_ok = None
    if not a.skip_synth:
        t0 = time.perf_counter()
        sf = write_synthetic(synth, smol, a.synth_hidden, a.synth_intermediate, a.synth_layers, a.synth_heads,
                             a.synth_kv_heads, a.shards, a.dtype, a.seed)
        print(f"wrote {synth}: {sf['params'] / 1e6:.0f} M parameters, {mib(sf['disk'])} {a.dtype}, "
              f"{mib(sf['fp32'])} as float32 (decoder layers {mib(sf['layers_fp32'])}, one layer "
              f"{mib(sf['layer_fp32'])}) ({time.perf_counter() - t0:.0f} s)", flush=True)
        name = f"random LLaMA h{a.synth_hidden} i{a.synth_intermediate} L{a.synth_layers}"
        size = (f"{sf['params'] / 1e6:.0f} M params: {mib(sf['disk'])} {a.dtype} / {mib(sf['fp32'])} fp32 "
                f"(layers {mib(sf['layers_fp32'])})")
        if a.synth_in_memory:
            mem = run_quantize(synth, a.work / "q-synth-stream", a.calib, a.synth_args, ["--stream"], a.threads, env)
            rows.append(dict(run="random --stream", model=name, size=size, mode="--stream", budget="-",
                             plan=plan(mem), r=mem, same="(reference)"))
        arg, nbytes, why = resolve_budget(a.synth_budget, synth, a.synth_args)
        notes.append(f"random-model budget: {why}")
        sp = run_quantize(synth, a.work / "q-synth-spill", a.calib, a.synth_args,
                          ["--stream", "--max-memory", arg], a.threads, env)
        synth_ok = bool(sp["memory"] and " on disk in " in sp["memory"])
        rows.append(dict(run=f"random --stream --max-memory {a.synth_budget}", model=name, size=size,
                         mode="--stream", budget=f"{mib(nbytes)} ({nbytes / sf['fp32']:.0%} of the fp32 model)",
                         plan=plan(sp), r=sp,
                         same=identical(a.work / "q-synth-stream" / WEIGHTS, a.work / "q-synth-spill" / WEIGHTS)
                         if a.synth_in_memory else "-"))

    # ----------------------------------------------------------------------------------------- table
    print()
    print(f"CPU: {cpu_label()}; torch {torch.__version__}; {a.threads} torch thread(s) per run; "
          f"stored dtype {a.dtype}, {a.shards} shards")
    print(f"SmolLM2 settings: `{a.args}`; random-model settings: `{a.synth_args}`")
    print()
    print("| run | model (params: on disk / as float32) | --max-memory | quantize's `memory:` plan | "
          "peak RSS | peak anon (sampled) | wall s | model.safetensors vs reference |")
    print("|---|---|---|---|---:|---:|---:|---|")
    for row in rows:
        r = row["r"]
        rss = mib(r["rss"]) if r["rc"] == 0 else f"exit {r['rc']}"
        anon = mib(r["anon"]) if r["anon"] else "-"
        print(f"| {row['run']} | {row['model'] if row['model'] != '-' else ''}{': ' if row['model'] != '-' else ''}"
              f"{row['size'] if row['size'] != '-' else '-'} | {row['budget']} | {row['plan']} | {rss} | {anon} | "
              f"{r['wall']:.0f} | {row['same']} |")
    print()
    print("peak RSS: the child's ru_maxrss (os.wait4), which counts file-backed pages too (touched pages of "
          "the memory-mapped shards, shared libraries); peak anon: largest RssAnon polled every 50 ms. "
          "--max-memory budgets one decoder layer + its Hessians + the calibration activations; the interpreter "
          "(first row) and the tensors outside the layers (embedding) come on top.")
    for n in notes:
        print(n)
    if synth_ok is not None:
        print(f"random model: activations {'on disk as the budget requires' if synth_ok else 'NOT on disk'} "
              f"(memory: line {'says on disk' if synth_ok else 'does not say on disk'})")
    print(f"total benchmark time {time.perf_counter() - t_all:.0f} s")
    if not a.keep:
        for p in [smol, synth, *a.work.glob("q-*")]:
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
    bad = [row["run"] for row in rows if row["r"]["rc"] != 0 or row["same"] == "DIFFERENT"] + \
        (["random model did not spill"] if synth_ok is False else [])
    if bad:
        print("problems: " + "; ".join(bad))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

"""vq2trt's exports against the runtimes people decode SmolLM2 with today, in one run, one table.

Rows (alternated over --rounds, each row's median; benchmarks/cpu_model.py does the timing):
- the vq2trt export folders given (each in ONNX Runtime through vq2trt's own loop, and through
  ONNX Runtime GenAI's generator for the folders that have a genai_config.json), with
  ``VQ2TRT_DENSE4=1`` as well under --dense4;
- a float32 export of the same model (--float), the speed a quantized export must beat;
- llama.cpp's llama-bench on Q4_0, Q8_0 and Q2_K (the smallest file its quantize makes for this
  model), built by benchmarks/build_llama_bench.sh from the llama-cpp-python sdist's vendored
  sources when --llama DIR has no build yet (~8 minutes); its tg decodes from an empty KV cache,
  the ONNX rows after their prompt: --llama-after-prompt adds rows timed after the prompt
  (`llama-bench -d PROMPT`), which compare like for like (17-21 % slower after 128 tokens here);
- ONNX Runtime GenAI's own int4 model (MatMulNBits 4-bit, int4 head, GroupQueryAttention), made
  by its builder from the float model when onnxruntime_genai is installed.

Nothing fetched or built enters the repository: llama.cpp goes under --llama, the Hugging Face copy
of the float model and GenAI's int4 model under --work.

    .venv/bin/python benchmarks/decode_peers.py out/smollm2-2.3bit-ort [more exports] \\
        --float out/smollm2-float-onnx [--dense4] [--llama-after-prompt] [--rounds 3] [--threads 2] \\
        [--llama /work/llama] [--work /work/peers] [--gguf ~/.cache/vq2trt/SmolLM2-135M-Instruct.Q4_1.gguf]

The vq2trt exports for the fastest decode: `vq2trt export CKPT --out DIR --accuracy-level 4
--embedding int8 --ops ort --fuse-projections --logits last` (README "CPU decode").
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_GGUF = Path.home() / ".cache/vq2trt/SmolLM2-135M-Instruct.Q4_1.gguf"
LLAMA_QUANTS = ("q4_0", "q8_0", "q2_k")


def llama(dest: Path, gguf: Path) -> tuple[Path, list[Path]]:
    """llama-bench and the GGUFs, built by build_llama_bench.sh unless they are there."""
    bench = dest / "build/bin/llama-bench"
    files = [dest / f"smollm2-{q}.gguf" for q in LLAMA_QUANTS]
    if not bench.is_file() or not all(f.is_file() for f in files):
        print(f"decode_peers: building llama.cpp into {dest} (benchmarks/build_llama_bench.sh, ~8 minutes)",
              flush=True)
        subprocess.run(["bash", str(HERE / "build_llama_bench.sh"), str(dest), str(gguf)], check=True)
    return bench, files


def genai_int4(work: Path, gguf: Path) -> Path | None:
    """GenAI's builder's int4 CPU model of the float model, or None where onnxruntime_genai is missing."""
    try:
        import onnxruntime_genai  # noqa: F401
    except ImportError:
        print("decode_peers: onnxruntime_genai is not installed: no GenAI int4 row", flush=True)
        return None
    out = work / "genai-int4"
    if (out / "genai_config.json").is_file():
        return out
    hf = work / "hf-smollm2"
    if not (hf / "config.json").is_file():
        from vq2trt.models import load_model

        model, tok = load_model(str(gguf), device="cpu")
        # transformers marks a GGUF-loaded model as quantized (its weights are float by now) and
        # refuses to save it ("quantized with gguf and is not serializable", 5.x): unmark it.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(hf)
        tok.save_pretrained(hf)
    print(f"decode_peers: onnxruntime_genai.models.builder -p int4 -e cpu -> {out}", flush=True)
    subprocess.run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf), "-o", str(out),
                    "-p", "int4", "-e", "cpu", "-c", str(work / "builder-cache")], check=True)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("exports", nargs="+", type=Path, help="vq2trt export folders")
    p.add_argument("--float", type=Path, help="a float32 export of the same model")
    p.add_argument("--gguf", type=Path, default=DEFAULT_GGUF, help="the float model (the Makefile's cached GGUF)")
    p.add_argument("--llama", type=Path, default=Path("/work/llama"), help="llama.cpp build folder")
    p.add_argument("--no-llama", action="store_true", help="leave llama.cpp out")
    p.add_argument("--llama-after-prompt", action="store_true",
                   help="also llama.cpp rows whose decode runs after the prompt (llama-bench -d PROMPT), as the "
                        "ONNX rows' does; plain tg starts from an empty cache (the issue's method)")
    p.add_argument("--work", type=Path, default=Path("/work/peers"), help="GenAI's int4 model and its HF source")
    p.add_argument("--no-genai", action="store_true", help="leave ORT GenAI out")
    p.add_argument("--dense4", action="store_true", help="also each export with VQ2TRT_DENSE4=1")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--prompt", type=int, default=128)
    p.add_argument("--gen", type=int, default=64)
    a = p.parse_args(argv)
    for f in a.exports + ([a.float] if a.float else []):
        if not (f / "vq2trt_onnx.json").is_file():
            p.error(f"{f} is not a vq2trt export folder (no vq2trt_onnx.json)")
    if not a.gguf.is_file() and not (a.no_llama and a.no_genai):
        p.error(f"no float model at {a.gguf} (run: make model)")
    args = [str(f) for f in a.exports] + ([str(a.float)] if a.float else [])
    genai = [str(f) for f in a.exports if (f / "genai_config.json").is_file()]
    if not a.no_genai:
        a.work.mkdir(parents=True, exist_ok=True)
        int4 = genai_int4(a.work, a.gguf)
        genai += [str(int4)] if int4 else []
    if genai and not a.no_genai:
        args += ["--genai", *genai]
    if not a.no_llama:
        bench, files = llama(a.llama, a.gguf)
        args += ["--llama-bench", str(bench), "--gguf", *map(str, files)] + \
            (["--llama-after-prompt"] if a.llama_after_prompt else [])
    args += ["--rounds", str(a.rounds), "--reps", str(a.reps), "--threads", str(a.threads),
             "--prompt", str(a.prompt), "--gen", str(a.gen)] + (["--dense4"] if a.dense4 else [])
    sys.path.insert(0, str(HERE))
    import cpu_model

    return cpu_model.main(args)


if __name__ == "__main__":
    sys.exit(main())

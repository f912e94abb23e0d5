"""Models too large to load: a skeleton on the meta device, one decoder layer's weights at a time.

``load_streamed`` builds the model from its config with no weights (accelerate's
init_empty_weights; buffers such as the rotary tables stay real), fills the tensors outside the
decoder layers from the checkpoint, and returns a ``LayerStream`` that loads decoder layer i from the
(sharded) safetensors or the GGUF file when quantize() reaches it and frees it afterwards. GGUF
tensors are dequantized one at a time with transformers' own GGUF name map and per-architecture
processing (e.g. LLaMA's q/k un-permutation), so they equal what transformers loads whole. Peak memory is one
float32 decoder layer, the tensors outside the layers and the calibration activations
(vq2trt.activations spills those to disk above a budget).

Values equal what ``vq2trt.models.load_model`` gives: the checkpoint's tensors cast to the same
dtype, so a streamed run quantizes the same numbers and writes the same bytes.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from torch import nn

from vq2trt.families import UnsupportedModelError, check_config

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
LAYERS = "model.layers."


class StreamError(ValueError):
    """A model that cannot be streamed; the message names the file or tensor and what was expected."""


class SafetensorsSource:
    """The tensors of an HF folder's model.safetensors or its shards (model.safetensors.index.json),
    read one at a time from memory-mapped files."""

    def __init__(self, folder: str | Path):
        from safetensors import safe_open

        self.folder = self.path = Path(folder)
        index = self.folder / INDEX_FILE
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
                assert isinstance(weight_map, dict)
            except (OSError, ValueError, KeyError, TypeError, AssertionError) as e:
                raise StreamError(f"{index} is not a safetensors index (expected a 'weight_map' object): {e}") \
                    from None
            files = sorted(set(weight_map.values()))
        elif (self.folder / SINGLE_FILE).is_file():
            weight_map, files = None, [SINGLE_FILE]
        else:
            raise StreamError(f"{self.folder} has neither {SINGLE_FILE} nor {INDEX_FILE}; streaming reads "
                              "safetensors weights or a .gguf file (.bin weights are loaded whole: drop --stream)")
        keys = {}
        for f in files:
            p = self.folder / f
            if not p.is_file():
                raise StreamError(f"{index}: shard {f} is missing from {self.folder}")
            try:
                with safe_open(str(p), framework="pt") as h:
                    keys[f] = set(h.keys())
            except Exception as e:  # safetensors raises its own error type for a damaged header
                raise StreamError(f"{p} is not a readable safetensors file: {e}") from e
        if weight_map is None:
            weight_map = dict.fromkeys(keys[SINGLE_FILE], SINGLE_FILE)
        else:
            for f, have in keys.items():
                listed = {k for k, v in weight_map.items() if v == f}
                if not listed <= have:
                    raise StreamError(f"{self.folder / f} lacks tensors its index lists, e.g. "
                                      f"{sorted(listed - have)[:3]}")
        self.weight_map: dict[str, str] = weight_map
        self._open: tuple[str, object] | None = None       # (shard, handle) read last

    def __contains__(self, name: str) -> bool:
        return name in self.weight_map

    def get(self, name: str) -> torch.Tensor:
        from safetensors import safe_open

        if name not in self.weight_map:
            raise StreamError(f"{self.folder}: tensor {name!r} is not in the checkpoint")
        f = self.weight_map[name]
        if self._open is None or self._open[0] != f:
            self.drop_pages()
            self._open = (f, safe_open(str(self.folder / f), framework="pt"))
        return self._open[1].get_tensor(name)

    def drop_pages(self) -> None:
        """Unmap the shard read last: its touched pages would otherwise stay in the process's RSS
        until every shard had been read once (the whole checkpoint)."""
        self._open = None


class GGUFSource:
    """The tensors of a GGUF file under their transformers names, dequantized one at a time from the
    memory-mapped file."""

    def __init__(self, path: Path, model: nn.Module):
        from gguf import GGUFReader
        from transformers.modeling_gguf_pytorch_utils import (
            TENSOR_PROCESSORS,
            TensorProcessor,
            get_gguf_hf_weights_map,
            load_gguf_checkpoint,
            read_field,
        )

        self.path = path
        try:
            self.reader = GGUFReader(path)
            self._config = load_gguf_checkpoint(str(path), return_tensors=False)["config"]
        except Exception as e:  # gguf raises ValueError/struct errors/etc. on a damaged file
            raise StreamError(f"{path} is not a readable GGUF file: {type(e).__name__}: {e}") from e
        arch = read_field(self.reader, "general.architecture")[0]
        self.processor = TENSOR_PROCESSORS.get(arch, TensorProcessor)(config=self._config)
        self._key_map = get_gguf_hf_weights_map(model, self.processor)     # gguf name: hf name
        self._tensors = {t.name: t for t in self.reader.tensors}
        self.weight_map = {hf: g for g, hf in self._key_map.items() if g in self._tensors}

    def __contains__(self, name: str) -> bool:
        return name in self.weight_map

    def drop_pages(self) -> None:
        """Give back the pages of the memory-mapped file read so far (they are re-read on demand):
        otherwise every layer read stays in the process's RSS."""
        import mmap

        m = getattr(self.reader.data, "_mmap", None)
        if m is not None and hasattr(m, "madvise"):
            m.madvise(mmap.MADV_DONTNEED)

    def get(self, name: str) -> torch.Tensor:
        import numpy as np
        from gguf import dequantize

        if name not in self.weight_map:
            raise StreamError(f"{self.path}: tensor {name!r} is not in the GGUF file")
        g = self.weight_map[name]
        t = self._tensors[g]
        out = self.processor.process(weights=dequantize(t.data, t.tensor_type), name=g,
                                     tensor_key_mapping=self._key_map,
                                     parsed_parameters={"config": self._config, "tensors": {}})
        if out.name != g:
            raise StreamError(f"{self.path}: {g} is renamed to {out.name} by transformers' GGUF processing; "
                              "streaming supports architectures whose tensors map one to one")
        return torch.from_numpy(np.copy(out.weights))


def load_streamed(path: str | Path, dtype: torch.dtype = torch.float32):
    """``(model, tokenizer, LayerStream)`` for an HF folder of safetensors or a .gguf file: decoder
    layers on the meta device."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from vq2trt.models import _load_tokenizer

    path = Path(path)
    gguf = path.is_file() and path.suffix.lower() == ".gguf"
    if not path.is_dir() and not gguf:
        raise StreamError(f"--stream needs an HF model folder (config.json + safetensors) or a .gguf file; "
                          f"{path} is neither")
    source = None if gguf else SafetensorsSource(path)
    try:
        config = AutoConfig.from_pretrained(path.parent, gguf_file=path.name) if gguf else \
            AutoConfig.from_pretrained(path)
    except Exception as e:  # transformers raises several types for a bad config
        where = path if gguf else path / "config.json"
        raise StreamError(f"{where}: not a model configuration transformers knows ({e})") from e
    try:
        check_config(config)
    except UnsupportedModelError as e:
        raise StreamError(f"{path}: {e}") from e
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.eval()
    model.requires_grad_(False)
    if gguf:
        source = GGUFSource(path, model)
        try:
            tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        except Exception:  # a GGUF without tokenizer metadata: calibration asks for one when it needs it
            tokenizer = None
    else:
        tokenizer = _load_tokenizer(path)
    stream = LayerStream(model, source, dtype)
    stream.load_rest()
    return model, tokenizer, stream


class LayerStream:
    """Loads and frees the decoder layers (and the rest) of a meta-device model from a source."""

    def __init__(self, model: nn.Module, source: SafetensorsSource | GGUFSource, dtype: torch.dtype):
        self.model, self.source, self.dtype = model, source, dtype
        self.layers = model.model.layers
        # A freed layer goes back to its meta skeleton: quantize() replaced its Linears.
        self._skeletons = [copy.deepcopy(layer) for layer in self.layers]

    def _fill(self, module: nn.Module, prefix: str, device) -> None:
        for name, t in module.state_dict(keep_vars=True).items():
            if not t.is_meta:
                continue
            full = prefix + name
            value = self.source.get(full)
            if tuple(value.shape) != tuple(t.shape):
                raise StreamError(f"{self.source.path}: tensor {full} has shape {list(value.shape)}, "
                                  f"the model's config expects {list(t.shape)}")
            value = value.to(device=device, dtype=self.dtype if value.is_floating_point() else value.dtype)
            owner_name, _, attr = name.rpartition(".")
            owner = module.get_submodule(owner_name) if owner_name else module
            if attr in owner._parameters:
                owner._parameters[attr] = nn.Parameter(value, requires_grad=False)
            else:
                owner._buffers[attr] = value

    def load(self, i: int, device="cpu") -> nn.Module:
        self._fill(self.layers[i], f"{LAYERS}{i}.", device)
        return self.layers[i]

    def release(self, i: int) -> None:
        self.layers[i] = copy.deepcopy(self._skeletons[i])
        self.source.drop_pages()
        _trim_heap()

    def load_rest(self, device="cpu") -> None:
        """Every tensor outside the decoder layers (embeddings, final norm, lm_head)."""
        tied = bool(getattr(self.model.config, "tie_word_embeddings", False))
        for name, child in self.model.named_children():
            if name == "model":
                for sub, m in child.named_children():
                    if sub != "layers":
                        self._fill(m, f"model.{sub}.", device)
            elif not (tied and name == "lm_head"):
                self._fill(child, f"{name}.", device)
        if tied:
            self.model.tie_weights()

    def release_embeddings(self) -> None:
        """Drop the input embedding (needed only to capture layer 0's inputs) unless lm_head shares it."""
        emb = self.model.get_input_embeddings()
        head = self.model.get_output_embeddings()
        if head is None or head.weight is not emb.weight:
            emb.weight = nn.Parameter(torch.empty_like(emb.weight, device="meta"), requires_grad=False)

    def layer_bytes(self) -> int:
        """Bytes of the largest decoder layer once loaded (in ``dtype``)."""
        size = torch.empty((), dtype=self.dtype).element_size()
        return max(sum(t.numel() for t in s.state_dict().values()) for s in self._skeletons) * size


def save_streamed(model: nn.Module, stream: LayerStream, config, work_dir: Path, out_dir, *, tokenizer=None,
                  overwrite: bool = False, progress: bool = True) -> Path:
    """Write the checkpoint of a streamed quantize() run: each decoder layer is loaded again, its
    quantized Linears (and tuned norms) applied from ``work_dir`` as a resumed run applies them, its
    tensors written, and the layer freed. Same files, same bytes as io.save_quantized of the model
    quantized in memory."""
    from tqdm.auto import tqdm

    from vq2trt.head import HEAD, quantizes_head
    from vq2trt.io import WEIGHTS_METADATA, checkpoint_tensors, save_quantized
    from vq2trt.nn import VQLinear
    from vq2trt.quantize import QuantizeResult, _apply_saved, _head_stage, _WorkDir, quantizable_linears
    from vq2trt.tensor_file import SafetensorsWriter

    work = _WorkDir(Path(work_dir), None, writer=False)
    stream.load_rest()
    if quantizes_head(config) and not isinstance(model.get_submodule(HEAD), VQLinear):
        # (quantize() replaced it already unless this is a new process); before config.json is
        # written, since it unties a tied head
        if not work.done(HEAD):
            raise StreamError(f"{work.path} has no quantized {HEAD}; the quantize run did not complete")
        _head_stage(model, config, [], "cpu", work, QuantizeResult(config=config, keep_weights=False))

    def write(path: Path) -> None:
        writer = SafetensorsWriter(path)
        try:
            for name, t in checkpoint_tensors(model, lambda n: not n.startswith(LAYERS)).items():
                writer.add(name, t)
            for i in tqdm(range(len(stream.layers)), desc="write", unit="layer", disable=not progress):
                layer = stream.load(i)
                done = work.load(i)
                if done is None:
                    raise StreamError(f"{work.path} has no finished layer {i}; the quantize run did not complete")
                linears = quantizable_linears(layer, f"{LAYERS}{i}", config.skip_modules)
                _apply_saved(model, layer, linears, done, config, QuantizeResult(config=config, keep_weights=False), i)
                for name, t in checkpoint_tensors(model, lambda n, p=f"{LAYERS}{i}.": n.startswith(p)).items():
                    writer.add(name, t)
                stream.release(i)
            writer.finish(WEIGHTS_METADATA)
        except BaseException:
            writer.abort()
            raise

    return save_quantized(model, config, out_dir, tokenizer=tokenizer, overwrite=overwrite, write_tensors=write)


def _trim_heap() -> None:
    """Return the freed heap to the system after a layer. glibc keeps freed blocks below its mmap
    threshold (which grows to 32 MiB as large tensors are freed), so without this a streamed run's
    resident memory stayed at ~2x its baseline after the first layer (measured: 1.2 GiB against
    570 MiB with it, RESULTS.md). Nothing happens where there is no glibc."""
    import ctypes
    import ctypes.util

    global _LIBC
    if _LIBC is None:
        name = ctypes.util.find_library("c")
        try:
            _LIBC = ctypes.CDLL(name) if name else False
        except OSError:
            _LIBC = False
    if _LIBC and hasattr(_LIBC, "malloc_trim"):
        _LIBC.malloc_trim(0)


_LIBC = None

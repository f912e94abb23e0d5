"""An exported decoder in ONNX Runtime (VQGemm library loaded when the model needs it), with a
numpy KV cache. No torch: an app on a Jetson or a laptop runs this with onnxruntime alone."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# An export folder's files; `vq2trt export` writes them under these names.
INFO_FILE = "vq2trt_onnx.json"
MODEL_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"


class RunError(RuntimeError):
    """A model folder or input the runtime cannot use; the message names it."""


_DTYPE_NAMES = {"float32": "float32", "fp32": "float32", "float": "float32",
                "float16": "float16", "fp16": "float16", "half": "float16",
                "bfloat16": "bfloat16", "bf16": "bfloat16"}


def graph_dtype(info: dict, where: str = INFO_FILE) -> str:
    """float32, float16 or bfloat16: the dtype of an export's activations and KV cache (its info
    "dtype"; exports before `vq2trt export --dtype` record none and are float32)."""
    value = info.get("dtype")
    if value is None:
        return "float32"
    name = _DTYPE_NAMES.get(str(value).lower().removeprefix("torch."))
    if name is None:
        raise RunError(f"{where}: dtype {value!r} is not float32, float16 or bfloat16")
    return name


def kv_dtype(info: dict) -> np.dtype:
    """numpy dtype of the KV cache of an export."""
    name = graph_dtype(info)
    if name == "bfloat16":   # numpy has no bfloat16 (and ONNX Runtime's CPU EP no bf16 kernels for most ops)
        try:
            import ml_dtypes
        except ImportError as e:
            raise RunError("a bfloat16 export needs ml_dtypes for its KV cache: pip install ml_dtypes") from e
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def logits_mode(info: dict) -> str:
    """"all" or "last" (export --logits); folders from before the option hold every position."""
    return info.get("logits", "all")


def require_all_logits(onnx_dir: str | Path, info: dict) -> None:
    if logits_mode(info) != "all":
        raise RunError(f"{onnx_dir}: exported with --logits {logits_mode(info)}, so a prefill returns the last "
                       "position's logits only; perplexity needs every position (re-export with --logits all)")


def read_info(onnx_dir: str | Path) -> dict:
    d = Path(onnx_dir)
    if not (d / MODEL_FILE).is_file():
        raise RunError(f"{d}: no {MODEL_FILE}; expected a folder written by `vq2trt export`")
    try:
        return json.loads((d / INFO_FILE).read_text())
    except (OSError, ValueError) as e:
        raise RunError(f"{d / INFO_FILE}: missing or not JSON ({e}); re-export the model") from e


def _ort():
    try:
        import onnxruntime
    except ImportError as e:
        raise RunError("running ONNX models needs onnxruntime: pip install 'vq2trt[ort]'") from e
    return onnxruntime


def create_session(onnx_dir: str | Path, *, threads: int | None = None, library: str | None = None):
    """InferenceSession on the CPU EP; the VQGemm library is registered when the model is quantized
    (or when ``library`` is given)."""
    ort = _ort()
    info = read_info(onnx_dir)
    if library or info.get("quantized"):
        from vq2trt.runtime.library import session_options
        so = session_options(intra_op_threads=threads, library=library)
    else:
        so = ort.SessionOptions()
        if threads:
            so.intra_op_num_threads = threads
    return ort.InferenceSession(str(Path(onnx_dir) / MODEL_FILE), so, providers=["CPUExecutionProvider"])


@dataclass
class Generation:
    tokens: list[int]
    prompt_tokens: int
    prefill_s: float
    decode_s: float
    steps: list[float] = field(default_factory=list)

    @property
    def decode_tokens_per_s(self) -> float:
        n = len(self.tokens)
        return (n - 1) / self.decode_s if n > 1 and self.decode_s > 0 else float("nan")


class SharedCache:
    """Batch-1 steps of an `--ops ort` export with one KV buffer per layer and tensor, bound as both
    past and present (GroupQueryAttention writes each step's keys in place, as in ORT GenAI with
    past_present_share_buffer): no cache is copied per token, where `OnnxDecoder.step` hands the
    whole cache in and gets a longer copy back."""

    def __init__(self, dec: OnnxDecoder, max_length: int):
        ort = _ort()
        if dec.info.get("ops") != "ort":
            raise RunError(f"{dec.dir}: a shared KV cache needs an `--ops ort` export (GroupQueryAttention), "
                           f"this one has ops {dec.info.get('ops', 'basic')!r}")
        self.dec, self.max_length, self.length = dec, int(max_length), 0
        shape = (1, dec.kv_heads, self.max_length, dec.head_dim)
        self._buffers = [np.zeros(shape, dec.kv_dtype) for _ in range(2 * dec.num_layers)]   # kept alive here
        self._io = dec.session.io_binding()
        self._io.bind_output("logits")          # first: get_outputs()[0]
        for i in range(dec.num_layers):
            for j, t in enumerate(("key", "value")):
                v = ort.OrtValue.ortvalue_from_numpy(self._buffers[2 * i + j])
                self._io.bind_ortvalue_input(f"past_key_values.{i}.{t}", v)
                self._io.bind_ortvalue_output(f"present.{i}.{t}", v)

    def step(self, tokens) -> np.ndarray:
        """Logits [1, S or 1, V] of the next S tokens (ids), appended after those already seen."""
        tokens = np.asarray(tokens, np.int64).reshape(1, -1)
        end = self.length + tokens.shape[1]
        if end > self.max_length:
            raise RunError(f"shared KV cache of {self.max_length} positions is full ({self.length} used, "
                           f"{tokens.shape[1]} more asked)")
        self._io.bind_cpu_input("input_ids", tokens)
        self._io.bind_cpu_input("attention_mask", np.ones((1, end), np.int64))
        self._io.bind_cpu_input("position_ids", np.arange(self.length, end, dtype=np.int64)[None])
        self._io.bind_output("logits")          # afresh: after a run the binding holds the last run's shape
        self.dec.session.run_with_iobinding(self._io)
        self.length = end
        return self._io.get_outputs()[0].numpy()


class OnnxDecoder:
    """Prefill / decode steps over an exported decoder (inputs and outputs as graph.py names them)."""

    def __init__(self, onnx_dir: str | Path, *, threads: int | None = None, session=None):
        self.dir = Path(onnx_dir)
        self.info = read_info(onnx_dir)
        self.session = session if session is not None else create_session(onnx_dir, threads=threads)
        self.num_layers = int(self.info["num_layers"])
        self.kv_heads, self.head_dim = int(self.info["num_key_value_heads"]), int(self.info["head_dim"])
        self.kv_dtype = kv_dtype(self.info)      # past/present key-values; logits are float32 always

    def empty_past(self, batch: int) -> list[np.ndarray]:
        z = np.zeros((batch, self.kv_heads, 0, self.head_dim), self.kv_dtype)
        return [z] * (2 * self.num_layers)

    def step(self, input_ids: np.ndarray, attention_mask: np.ndarray, position_ids: np.ndarray,
             past: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        """One forward: logits [B, S, V] and the present key/values (past + S long)."""
        feeds = {"input_ids": input_ids.astype(np.int64), "attention_mask": attention_mask.astype(np.int64),
                 "position_ids": position_ids.astype(np.int64)}
        for i in range(self.num_layers):
            feeds[f"past_key_values.{i}.key"] = np.asarray(past[2 * i], self.kv_dtype)  # no copy if already so
            feeds[f"past_key_values.{i}.value"] = np.asarray(past[2 * i + 1], self.kv_dtype)
        out = self.session.run(None, feeds)
        return out[0], out[1:]

    def logits(self, ids: np.ndarray) -> np.ndarray:
        """Logits [B, T, V] of a full sequence in one prefill."""
        require_all_logits(self.dir, self.info)
        ids = np.atleast_2d(ids)
        B, T = ids.shape
        pos = np.broadcast_to(np.arange(T), (B, T))
        return self.step(ids, np.ones((B, T), np.int64), pos, self.empty_past(B))[0]

    def generate(self, prompt_ids: list[int], max_new_tokens: int = 32, *, temperature: float = 0.0,
                 top_k: int = 0, top_p: float = 1.0, seed: int = 0, eos_token_id=None) -> Generation:
        """Greedy (temperature 0) or sampled continuation with the KV cache; stops at EOS."""
        if not prompt_ids:
            raise RunError("generation needs a non-empty prompt")
        if max_new_tokens < 1:
            raise RunError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        rng = np.random.default_rng(seed)
        eos = set(np.atleast_1d(eos_token_id).tolist()) if eos_token_id is not None else set()
        ids = np.array([prompt_ids], np.int64)
        P = ids.shape[1]
        # `--ops ort` exports keep one cache (SharedCache); others get past + new back every step.
        cache = SharedCache(self, P + max_new_tokens) if self.info.get("ops") == "ort" else None
        t0 = time.perf_counter()
        if cache:
            logits = cache.step(ids)
        else:
            logits, past = self.step(ids, np.ones((1, P), np.int64), np.arange(P)[None], self.empty_past(1))
        prefill = time.perf_counter() - t0
        out, steps = [], []
        nxt = _pick(logits[0, -1], temperature, top_k, top_p, rng)
        for n in range(max_new_tokens):
            out.append(nxt)
            if nxt in eos or n == max_new_tokens - 1:
                break
            t = time.perf_counter()
            L = P + len(out)
            if cache:
                logits = cache.step([nxt])
            else:
                logits, past = self.step(np.array([[nxt]]), np.ones((1, L), np.int64), np.array([[L - 1]]), past)
            steps.append(time.perf_counter() - t)
            nxt = _pick(logits[0, -1], temperature, top_k, top_p, rng)
        return Generation(tokens=out, prompt_tokens=P, prefill_s=prefill, decode_s=float(sum(steps)), steps=steps)

    def perplexity(self, ids: np.ndarray, ctx: int = 2048, windows: int | None = None, progress: bool = True) -> dict:
        """The protocol of vq2trt.evaluate.perplexity (non-overlapping windows from the start)."""
        ids = np.asarray(ids).reshape(-1)
        available = ids.size // ctx
        if available == 0:
            raise RunError(f"text has {ids.size} tokens, fewer than one window of {ctx}")
        windows = available if windows is None else windows
        if not 1 <= windows <= available:
            raise RunError(f"asked for {windows} windows of {ctx} tokens; the text holds {available}")
        from tqdm.auto import tqdm

        nll, count = 0.0, 0
        bar = tqdm(range(windows), desc=f"ORT perplexity ctx={ctx}", unit="win", disable=None if progress else True)
        for w in bar:
            x = ids[w * ctx:(w + 1) * ctx]
            logits = self.logits(x[None])[0, :-1].astype(np.float64)       # [ctx-1, V]
            nll -= float(log_softmax(logits)[np.arange(ctx - 1), x[1:]].sum())
            count += ctx - 1
            bar.set_postfix(ppl=f"{math.exp(nll / count):.3f}")
        bar.close()
        return {"ppl": math.exp(nll / count), "nll": nll / count, "tokens": count, "windows": windows}


def log_softmax(z: np.ndarray) -> np.ndarray:
    """log softmax over the last axis, stable for large logits."""
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def _pick(logits: np.ndarray, temperature: float, top_k: int, top_p: float, rng) -> int:
    if temperature <= 0:
        return int(np.argmax(logits))
    z = logits.astype(np.float64) / temperature
    if top_k > 0:
        kth = np.sort(z)[-min(top_k, z.size)]
        z = np.where(z < kth, -np.inf, z)
    p = np.exp(z - z.max())
    p /= p.sum()
    if top_p < 1.0:
        order = np.argsort(-p)
        keep = np.cumsum(p[order]) - p[order] < top_p
        mask = np.zeros_like(p, bool)
        mask[order[keep]] = True
        p = np.where(mask, p, 0.0)
        p /= p.sum()
    return int(rng.choice(p.size, p=p))


def load_tokenizer(onnx_dir: str | Path):
    """The folder's tokenizer.json through `tokenizers` (no transformers, no torch), or None."""
    f = Path(onnx_dir) / "tokenizer.json"
    if not f.is_file():
        return None
    from tokenizers import Tokenizer
    return Tokenizer.from_file(str(f))

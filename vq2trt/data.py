"""Text for calibration and evaluation: WikiText-2 files, reading, tokenizing, calibration windows.

No WikiText text lives in this repository: it is read from ``../shared/data/wikitext-2`` beside the
repository (or ``$VQ2TRT_WIKITEXT``), else fetched once into a cache folder when online.
"""

from __future__ import annotations

import io
import os
import shutil
import urllib.request
import zipfile
from pathlib import Path

import torch

DEFAULT_WIKITEXT = (Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "wikitext-2").resolve()
WIKITEXT_ENV = "VQ2TRT_WIKITEXT"
# The dataset authors' own mirror of the raw WikiText-2 archive (wikitext-2-raw/wiki.{train,valid,test}.raw).
WIKITEXT_URL = "https://wikitext.smerity.com/wikitext-2-raw-v1.zip"
FETCH_TIMEOUT_S = 20

# Candidates per split, first existing wins; "valid" prefers the raw text when someone provides it.
_SPLIT_FILES = {"test": ("wiki.test.raw",), "valid": ("wiki.valid.raw", "wiki.valid.tokens")}


class DataError(ValueError):
    """Text that cannot be used; the message names the file and what was expected."""


def wikitext_root() -> Path:
    """The WikiText-2 folder: ``$VQ2TRT_WIKITEXT`` if set, else ``DEFAULT_WIKITEXT``."""
    env = os.environ.get(WIKITEXT_ENV)
    return Path(env) if env else DEFAULT_WIKITEXT


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "vq2trt" / "wikitext-2"


def _fetch_wikitext(dest: Path) -> None:
    """Download the raw WikiText-2 archive and unpack its three .raw files into ``dest``."""
    with urllib.request.urlopen(WIKITEXT_URL, timeout=FETCH_TIMEOUT_S) as r:
        blob = r.read()
    dest.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(io.BytesIO(blob)) as zf:
        for name in zf.namelist():
            base = os.path.basename(name)
            if base.endswith(".raw"):
                tmp = dest / f".{base}.partial"
                with zf.open(name) as src, open(tmp, "wb") as out:
                    shutil.copyfileobj(src, out)
                os.replace(tmp, dest / base)


def wikitext_file(split: str, root=None) -> Path:
    """Path of the WikiText-2 ``split`` ("test" or "valid") file, fetching into a cache if needed."""
    if split not in _SPLIT_FILES:
        raise DataError(f"unknown WikiText-2 split {split!r}; expected one of {sorted(_SPLIT_FILES)}")
    root = Path(root) if root is not None else wikitext_root()
    cache = _cache_dir()
    for folder in (root, cache):
        for name in _SPLIT_FILES[split]:
            if (folder / name).is_file():
                return folder / name
    try:
        _fetch_wikitext(cache)
    except Exception as e:  # offline, blocked, bad archive: all end in the same advice
        fetch_err = f"{type(e).__name__}: {e}"
    else:
        for name in _SPLIT_FILES[split]:
            if (cache / name).is_file():
                return cache / name
        fetch_err = f"the archive had no {' or '.join(_SPLIT_FILES[split])}"
    raise DataError(
        f"WikiText-2 {split} file not found: looked for {' or '.join(_SPLIT_FILES[split])} in {root} and {cache}; "
        f"fetching {WIKITEXT_URL} failed ({fetch_err}). Provide the text with --text/--calib FILE, or point "
        f"{WIKITEXT_ENV} at a folder holding it.")


def python_docs_text() -> str:
    """The Python reference manual's topic pages (``pydoc_data.topics``, shipped with every CPython),
    joined in key order: a second evaluation text in another domain than WikiText, which nothing in
    vq2trt calibrates or tunes on (about 120k SmolLM2 tokens; its exact text follows the Python
    version, so quote that with any number measured on it)."""
    try:
        from pydoc_data.topics import topics
    except ImportError as e:  # some distributions strip pydoc_data
        raise DataError("this Python has no pydoc_data.topics (the docs text); pass an evaluation text file") from e
    return "\n\n".join(topics[k] for k in sorted(topics))


def read_text(path) -> str:
    """The text of ``path`` (UTF-8). Newlines are normalised to "\\n" (universal newlines), as the
    published perplexities were measured on LF text and the shared copy of wiki.test.raw is CRLF."""
    path = Path(path)
    if not path.is_file():
        what = "a folder" if path.is_dir() else "missing"
        raise DataError(f"text file {path} is {what}; expected a UTF-8 text file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read text file {path} as UTF-8: {e}") from e
    if not text.strip():
        raise DataError(f"text file {path} is empty or whitespace only; expected text to tokenize")
    return text


def token_ids(tokenizer, text: str) -> torch.Tensor:
    """Token ids [T] of ``text`` with the tokenizer's default special tokens (a leading BOS for
    tokenizers that add one, as in the papers' ``tokenizer(text)``).

    Accepts an HF tokenizer (``tokenizer(text)["input_ids"]``), a ``tokenizers.Tokenizer``
    (``encode(text).ids``) or any object whose ``encode(text)`` returns a list of ints.
    """
    if tokenizer is None:
        raise DataError("no tokenizer: the model folder has none; tokenizing text needs one")
    if callable(tokenizer):
        out = tokenizer(text)
    else:
        out = tokenizer.encode(text)
    if hasattr(out, "ids"):  # tokenizers.Encoding
        out = out.ids
    elif not isinstance(out, (list, tuple, torch.Tensor)) and "input_ids" in out:
        out = out["input_ids"]
    ids = torch.as_tensor(out, dtype=torch.long).reshape(-1)
    return ids


def calibration_batch(tokenizer, text: str, num_samples: int, seqlen: int, seed: int) -> torch.Tensor:
    """``num_samples`` random windows of ``seqlen`` tokens from ``text``: LongTensor [num_samples, seqlen].

    The text is tokenized once; window starts are drawn with a generator seeded by ``seed`` only, so
    the batch is the same on every machine and run.
    """
    if num_samples < 1 or seqlen < 1:
        raise DataError(f"calibration needs num_samples >= 1 and seqlen >= 1; got {num_samples} and {seqlen}")
    ids = token_ids(tokenizer, text)                                        # [T]
    T = ids.numel()
    if T < seqlen + 1:
        raise DataError(f"calibration text has {T} tokens; windows of {seqlen} need at least {seqlen + 1}")
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, T - seqlen, (num_samples,), generator=gen)    # [num_samples], in [0, T-seqlen-1]
    return torch.stack([ids[s:s + seqlen] for s in starts.tolist()])        # [num_samples, seqlen]


def tokenize_for_eval(tokenizer, text: str) -> torch.Tensor:
    """The whole ``text`` as one sequence of ids: LongTensor [1, T]."""
    ids = token_ids(tokenizer, text)
    if ids.numel() == 0:
        raise DataError("evaluation text tokenized to 0 tokens; expected some text")
    return ids.unsqueeze(0)

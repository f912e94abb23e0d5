"""One safetensors file written tensor by tensor, with the bytes io.save_tensors writes.

A streamed run never holds the whole checkpoint: each tensor is appended to a spool file as it is
produced, and ``finish`` writes the real file from the spool in safetensors' own layout (tensors
ordered by dtype, widest first, then by name; a compact JSON header with the metadata first,
space-padded to 8 bytes). Tests pin the output to safetensors.save_file's bytes for the same
tensors, so a streamed checkpoint equals one saved from a model in memory.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np

# safetensors' Dtype enum order; data is laid out from the last (widest) to the first.
_ORDER = ["BOOL", "U8", "I8", "I16", "U16", "F16", "BF16", "I32", "U32", "F32", "F64", "I64", "U64"]
_CODES = {np.dtype(np.bool_): "BOOL", np.dtype(np.uint8): "U8", np.dtype(np.int8): "I8",
          np.dtype(np.int16): "I16", np.dtype(np.uint16): "U16", np.dtype(np.float16): "F16",
          np.dtype(np.int32): "I32", np.dtype(np.uint32): "U32", np.dtype(np.float32): "F32",
          np.dtype(np.float64): "F64", np.dtype(np.int64): "I64", np.dtype(np.uint64): "U64"}
_COPY_CHUNK = 1 << 24


class SafetensorsWriter:
    """``add`` tensors one at a time (each is written to ``path``.spool at once), then ``finish``."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._spool_path = self.path.with_name(self.path.name + ".spool")
        self._spool = open(self._spool_path, "wb")
        self._entries: dict[str, tuple[str, list[int], int, int]] = {}  # name: dtype, shape, spool offset, bytes

    def add(self, name: str, array: np.ndarray) -> None:
        if name in self._entries:
            raise ValueError(f"tensor {name!r} was already written to {self.path}")
        array = np.asarray(array)
        if not array.flags.c_contiguous:
            array = array.copy(order="C")   # (ascontiguousarray would make a 0-d tensor 1-d)
        if array.dtype.byteorder == ">":
            array = array.astype(array.dtype.newbyteorder("<"))
        code = _CODES.get(array.dtype)
        if code is None:
            raise ValueError(f"tensor {name!r}: dtype {array.dtype} has no safetensors code here")
        data = array.tobytes()
        self._entries[name] = (code, list(array.shape), self._spool.tell(), len(data))
        self._spool.write(data)

    def finish(self, metadata: dict[str, str] | None = None) -> Path:
        """Write the file from the spool and remove the spool."""
        self._spool.close()
        order = sorted(self._entries, key=lambda n: (-_ORDER.index(self._entries[n][0]), n))
        header: dict = {"__metadata__": dict(sorted(metadata.items()))} if metadata else {}
        offset = 0
        for n in order:
            code, shape, _, size = self._entries[n]
            header[n] = {"dtype": code, "shape": shape, "data_offsets": [offset, offset + size]}
            offset += size
        text = json.dumps(header, separators=(",", ":")).encode()
        text += b" " * (-len(text) % 8)
        with open(self.path, "wb") as out, open(self._spool_path, "rb") as spool:
            out.write(struct.pack("<Q", len(text)))
            out.write(text)
            for n in order:
                _, _, start, size = self._entries[n]
                spool.seek(start)
                while size:
                    chunk = spool.read(min(size, _COPY_CHUNK))
                    out.write(chunk)
                    size -= len(chunk)
        os.unlink(self._spool_path)
        return self.path

    def abort(self) -> None:
        self._spool.close()
        for p in (self._spool_path, self.path):
            if p.exists():
                p.unlink()

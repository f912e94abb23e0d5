"""The VQ weight container and index packing: the Python side of docs/format.md (version 1).

A quantized Linear W [N, K] is stored as these tensors (suffixes of the module name):

  vq_dims          int32 [3]           N (out_features), K (in_features), n_out (outlier columns)
  perm             int32 [K]           permuted position p holds original input channel perm[p]
  indices          int32 [R, words]    main indices, R = ceil(N / v), one row of K - n_out indices
  codebook         fp16  [G, k, v]     one main codebook per column group
  res_indices      int32 [R, words_r]  optional residual indices
  res_codebook     fp16  [G, k_r, v]   optional residual codebooks
  outlier_indices  int32 [R_o, words_o] optional, R_o = ceil(N / v_o), one row of n_out indices
  outlier_codebook fp16  [k_o, v_o]    optional
  col_scale        fp16  [K]           optional per-input-channel normalisation (original order)
  col_bias         fp16  [K]           optional, present exactly when col_scale is
  bias             fp32  [N]           optional Linear bias

Index rows are bit-packed LSB-first; every row starts at a fresh int32 word.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np

from vq2trt.config import MAX_INDEX_BITS, index_bits

FORMAT_VERSION = 1


class FormatError(ValueError):
    """Stored VQ data that breaks docs/format.md; the message names the tensor."""


# --- packing -----------------------------------------------------------------
def packed_words(count: int, bits: int) -> int:
    """int32 words holding one row of ``count`` indices of ``bits`` bits."""
    return (count * bits + 31) // 32


def pack_indices(idx: np.ndarray, bits: int) -> np.ndarray:
    """[R, C] non-negative integers < 2**bits -> int32 [R, packed_words(C, bits)].

    Index c of a row occupies bits c*bits .. c*bits+bits-1 of the row's bit
    stream; stream bit t is bit (t % 32) of word t // 32 (LSB first).
    """
    idx = np.asarray(idx)
    if idx.ndim != 2:
        raise FormatError(f"indices to pack must be 2-D [rows, count], got shape {idx.shape}")
    if not 1 <= bits <= MAX_INDEX_BITS:
        raise FormatError(f"index bit width {bits} outside 1..{MAX_INDEX_BITS}")
    if idx.size and (idx.min() < 0 or idx.max() >= (1 << bits)):
        raise FormatError(f"index values must lie in [0, {1 << bits}), got [{idx.min()}, {idx.max()}]")
    rows, count = idx.shape
    words = packed_words(count, bits)
    u = idx.astype(np.uint32)
    stream = ((u[:, :, None] >> np.arange(bits, dtype=np.uint32)) & 1).astype(np.uint8)  # [R, C, bits]
    stream = stream.reshape(rows, count * bits)
    stream = np.pad(stream, ((0, 0), (0, words * 32 - count * bits)))
    stream = stream.reshape(rows, words, 32).astype(np.uint32)
    packed = (stream << np.arange(32, dtype=np.uint32)).sum(axis=2, dtype=np.uint64).astype(np.uint32)
    return packed.view(np.int32)


def unpack_indices(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """int32 [R, words] -> int64 [R, count]; the inverse of pack_indices."""
    packed = np.asarray(packed)
    if packed.ndim != 2 or packed.dtype != np.int32:
        raise FormatError(f"packed indices must be int32 [rows, words], got {packed.dtype} {packed.shape}")
    if not 1 <= bits <= MAX_INDEX_BITS:
        raise FormatError(f"index bit width {bits} outside 1..{MAX_INDEX_BITS}")
    words = packed_words(count, bits)
    if packed.shape[1] != words:
        raise FormatError(f"packed indices have {packed.shape[1]} words per row; "
                          f"{count} indices of {bits} bits need {words}")
    rows = packed.shape[0]
    u = packed.view(np.uint32)
    stream = ((u[:, :, None] >> np.arange(32, dtype=np.uint32)) & 1).astype(np.uint8)  # [R, words, 32]
    stream = stream.reshape(rows, words * 32)[:, : count * bits].reshape(rows, count, bits)
    return (stream.astype(np.int64) << np.arange(bits, dtype=np.int64)).sum(axis=2)


# --- container ---------------------------------------------------------------
@dataclass
class VQWeight:
    """One quantized Linear in its stored form (numpy arrays, dtypes as in docs/format.md)."""

    out_features: int
    in_features: int
    num_outlier_cols: int
    perm: np.ndarray                       # int32 [K]
    indices: np.ndarray                    # int32 [R, words]
    codebook: np.ndarray                   # fp16 [G, k, v]
    res_indices: np.ndarray | None = None  # int32 [R, words_r]
    res_codebook: np.ndarray | None = None  # fp16 [G, k_r, v]
    outlier_indices: np.ndarray | None = None  # int32 [R_o, words_o]
    outlier_codebook: np.ndarray | None = None  # fp16 [k_o, v_o]
    col_scale: np.ndarray | None = None    # fp16 [K]
    col_bias: np.ndarray | None = None     # fp16 [K]
    bias: np.ndarray | None = None         # fp32 [N]

    TENSOR_FIELDS = ("perm", "indices", "codebook", "res_indices", "res_codebook", "outlier_indices",
                     "outlier_codebook", "col_scale", "col_bias", "bias")

    # derived sizes
    @property
    def vector_len(self) -> int:
        return int(self.codebook.shape[2])

    @property
    def num_centroids(self) -> int:
        return int(self.codebook.shape[1])

    @property
    def num_groups(self) -> int:
        return int(self.codebook.shape[0])

    @property
    def num_regular_cols(self) -> int:
        return self.in_features - self.num_outlier_cols

    @property
    def rows(self) -> int:
        """R: vectors per column."""
        return math.ceil(self.out_features / self.vector_len)

    @property
    def group_size(self) -> int:
        """Regular columns per group (the last group may be shorter)."""
        return math.ceil(self.num_regular_cols / self.num_groups)

    @classmethod
    def from_unpacked(cls, *, out_features: int, in_features: int, perm, indices, codebook,
                      res_indices=None, res_codebook=None, outlier_indices=None, outlier_codebook=None,
                      col_scale=None, col_bias=None, bias=None) -> VQWeight:
        """Build from unpacked integer index matrices and float codebooks (cast to stored dtypes)."""
        def arr(x, dtype):
            if x is None:
                return None
            if hasattr(x, "detach"):
                x = x.detach().cpu().numpy()
            return np.ascontiguousarray(np.asarray(x).astype(dtype))

        codebook = arr(codebook, np.float16)
        res_codebook = arr(res_codebook, np.float16)
        outlier_codebook = arr(outlier_codebook, np.float16)
        n_out = 0 if outlier_indices is None else int(np.asarray(arr(outlier_indices, np.int64)).shape[1])
        w = cls(
            out_features=int(out_features), in_features=int(in_features), num_outlier_cols=n_out,
            perm=arr(perm, np.int32),
            indices=pack_indices(arr(indices, np.int64), index_bits(codebook.shape[1])),
            codebook=codebook,
            res_indices=None if res_indices is None else pack_indices(arr(res_indices, np.int64),
                                                                      index_bits(res_codebook.shape[1])),
            res_codebook=res_codebook,
            outlier_indices=None if outlier_indices is None else pack_indices(
                arr(outlier_indices, np.int64), index_bits(outlier_codebook.shape[0])),
            outlier_codebook=outlier_codebook,
            col_scale=arr(col_scale, np.float16), col_bias=arr(col_bias, np.float16),
            bias=arr(bias, np.float32),
        )
        w.validate()
        return w

    # unpacked views
    def main_indices(self) -> np.ndarray:
        return unpack_indices(self.indices, index_bits(self.num_centroids), self.num_regular_cols)

    def residual_indices(self) -> np.ndarray | None:
        if self.res_indices is None:
            return None
        return unpack_indices(self.res_indices, index_bits(self.res_codebook.shape[1]), self.num_regular_cols)

    def outlier_index_matrix(self) -> np.ndarray | None:
        if self.outlier_indices is None:
            return None
        return unpack_indices(self.outlier_indices, index_bits(self.outlier_codebook.shape[0]),
                              self.num_outlier_cols)

    # storage
    def tensors(self) -> dict[str, np.ndarray]:
        """Stored tensors by suffix (see module docstring), absent optional ones left out."""
        out = {"vq_dims": np.array([self.out_features, self.in_features, self.num_outlier_cols], np.int32)}
        for name in self.TENSOR_FIELDS:
            t = getattr(self, name)
            if t is not None:
                out[name] = t
        return out

    @classmethod
    def from_tensors(cls, t: dict[str, np.ndarray], where: str = "") -> VQWeight:
        """Inverse of tensors(); validates everything (the data may come from a damaged file)."""
        def miss(name):
            raise FormatError(f"{where}: missing tensor '{name}' required by VQ format v{FORMAT_VERSION}")

        for name in ("vq_dims", "perm", "indices", "codebook"):
            if name not in t:
                miss(name)
        unknown = set(t) - set(cls.TENSOR_FIELDS) - {"vq_dims"}
        if unknown:
            raise FormatError(f"{where}: unknown tensor(s) {sorted(unknown)} in VQ format v{FORMAT_VERSION}")
        dims = np.asarray(t["vq_dims"])
        if dims.dtype != np.int32 or dims.shape != (3,):
            raise FormatError(f"{where}.vq_dims: expected int32 [3] (N, K, n_out), got {dims.dtype} {dims.shape}")
        w = cls(out_features=int(dims[0]), in_features=int(dims[1]), num_outlier_cols=int(dims[2]),
                **{name: (np.asarray(t[name]) if name in t else None) for name in cls.TENSOR_FIELDS})
        w.validate(where)
        return w

    # validation
    def validate(self, where: str = "VQWeight") -> None:
        """Check every shape, dtype and value against docs/format.md; raise FormatError naming the tensor."""
        def fail(name, expected, got):
            raise FormatError(f"{where}.{name}: expected {expected}, got {got}")

        def check(name, arr, dtype, shape):
            if not isinstance(arr, np.ndarray):
                fail(name, f"{np.dtype(dtype).name} {shape}", type(arr).__name__)
            if arr.dtype != dtype or tuple(arr.shape) != tuple(shape):
                fail(name, f"{np.dtype(dtype).name} {list(shape)}", f"{arr.dtype} {list(arr.shape)}")

        N, K, n_out = self.out_features, self.in_features, self.num_outlier_cols
        if N < 1 or K < 1:
            fail("vq_dims", "out_features >= 1 and in_features >= 1", f"N={N}, K={K}")
        if not 0 <= n_out < K:
            fail("vq_dims", f"0 <= outlier columns < in_features={K}", n_out)
        if not isinstance(self.codebook, np.ndarray) or self.codebook.ndim != 3:
            fail("codebook", "fp16 [G, k, v]", getattr(self.codebook, "shape", type(self.codebook).__name__))
        G, k, v = self.codebook.shape
        if G < 1 or k < 2 or v < 1 or index_bits(k) > MAX_INDEX_BITS:
            fail("codebook", f"G >= 1, 2 <= k <= 2**{MAX_INDEX_BITS}, v >= 1", f"G={G}, k={k}, v={v}")
        if G > K - n_out:
            fail("codebook", f"at most {K - n_out} groups (one per regular column)", f"G={G}")
        check("codebook", self.codebook, np.float16, (G, k, v))
        check("perm", self.perm, np.int32, (K,))
        if not np.array_equal(np.sort(self.perm), np.arange(K, dtype=np.int32)):
            fail("perm", f"a permutation of 0..{K - 1}", "repeated or out-of-range channels")
        R, C = self.rows, K - n_out
        self._check_indices("indices", self.indices, R, C, k, where)
        for t in (self.codebook, self.res_codebook, self.outlier_codebook, self.col_scale, self.col_bias):
            if t is not None and isinstance(t, np.ndarray) and not np.isfinite(t.astype(np.float32)).all():
                fail("codebook/scale", "finite fp16 values", "NaN or Inf")
        if (self.res_indices is None) != (self.res_codebook is None):
            fail("res_indices/res_codebook", "both present or both absent", "only one")
        if self.res_codebook is not None:
            if self.res_codebook.ndim != 3 or self.res_codebook.shape[0] != G or self.res_codebook.shape[2] != v:
                fail("res_codebook", f"fp16 [{G}, k_r, {v}]", list(self.res_codebook.shape))
            kr = self.res_codebook.shape[1]
            if kr < 2 or index_bits(kr) > MAX_INDEX_BITS:
                fail("res_codebook", f"2 <= k_r <= 2**{MAX_INDEX_BITS}", kr)
            check("res_codebook", self.res_codebook, np.float16, (G, kr, v))
            self._check_indices("res_indices", self.res_indices, R, C, kr, where)
        if (self.outlier_indices is None) != (self.outlier_codebook is None) or \
                (self.outlier_indices is None) != (n_out == 0):
            fail("outlier_indices/outlier_codebook", "present exactly when vq_dims[2] (outlier columns) > 0",
                 f"n_out={n_out}, indices {'absent' if self.outlier_indices is None else 'present'}, "
                 f"codebook {'absent' if self.outlier_codebook is None else 'present'}")
        if self.outlier_codebook is not None:
            if self.outlier_codebook.ndim != 2:
                fail("outlier_codebook", "fp16 [k_o, v_o]", list(self.outlier_codebook.shape))
            ko, vo = self.outlier_codebook.shape
            if ko < 2 or vo < 1 or index_bits(ko) > MAX_INDEX_BITS:
                fail("outlier_codebook", f"2 <= k_o <= 2**{MAX_INDEX_BITS}, v_o >= 1", f"k_o={ko}, v_o={vo}")
            check("outlier_codebook", self.outlier_codebook, np.float16, (ko, vo))
            self._check_indices("outlier_indices", self.outlier_indices, math.ceil(N / vo), n_out, ko, where)
        if (self.col_scale is None) != (self.col_bias is None):
            fail("col_scale/col_bias", "both present or both absent", "only one")
        if self.col_scale is not None:
            check("col_scale", self.col_scale, np.float16, (K,))
            check("col_bias", self.col_bias, np.float16, (K,))
        if self.bias is not None:
            check("bias", self.bias, np.float32, (N,))

    @staticmethod
    def _check_indices(name, packed, rows, count, k, where):
        bits = index_bits(k)
        shape = (rows, packed_words(count, bits))
        if not isinstance(packed, np.ndarray) or packed.dtype != np.int32 or tuple(packed.shape) != shape:
            got = f"{getattr(packed, 'dtype', type(packed).__name__)} {list(getattr(packed, 'shape', []))}"
            raise FormatError(f"{where}.{name}: expected int32 {list(shape)} ({count} indices of {bits} bits "
                              f"per row), got {got}")
        idx = unpack_indices(packed, bits, count)
        if idx.size and idx.max() >= k:
            r, c = np.unravel_index(int(idx.argmax()), idx.shape)
            raise FormatError(f"{where}.{name}: index {int(idx.max())} at row {r}, column {c} is out of range "
                              f"for a codebook of {k} entries")
        tail = count * bits % 32
        if tail and (packed[:, -1].view(np.uint32) >> np.uint32(tail)).any():
            raise FormatError(f"{where}.{name}: padding bits after the last index of a row must be zero")

    # size accounting
    def stored_bits(self, include_bias: bool = False) -> int:
        """Bits of every stored tensor of this layer (indices, codebooks, perm, scales, dims)."""
        total = 0
        for name, t in self.tensors().items():
            if name == "bias" and not include_bias:
                continue
            total += t.nbytes * 8
        return total

    def bits_per_weight(self) -> float:
        """All-in bits per weight: stored bits (Linear bias excluded) over N*K."""
        return self.stored_bits() / (self.out_features * self.in_features)

    def __eq__(self, other) -> bool:
        if not isinstance(other, VQWeight):
            return NotImplemented
        if (self.out_features, self.in_features, self.num_outlier_cols) != \
                (other.out_features, other.in_features, other.num_outlier_cols):
            return False
        for f in fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
                if a is None or b is None or a.dtype != b.dtype or not np.array_equal(a, b):
                    return False
        return True


def planned_stored_bits(cfg, out_features: int, in_features: int) -> int:
    """VQWeight.stored_bits() of a [out_features, in_features] Linear quantized with VPTQ config ``cfg``,
    from the shapes alone (docs/format.md §6), so bit budgets can be checked before quantizing."""
    N, K = int(out_features), int(in_features)
    n_out = cfg.num_outlier_cols(K)
    C, G, v = K - n_out, cfg.num_groups, cfg.vector_len
    if G > C:
        raise FormatError(f"num_groups={G} exceeds the {C} regular input columns of a [{N}, {K}] Linear")
    R = math.ceil(N / v)
    bits = 32 * 3 + 32 * K                                                   # vq_dims, perm
    bits += 32 * R * packed_words(C, index_bits(cfg.num_centroids)) + 16 * G * cfg.num_centroids * v
    if cfg.num_res_centroids:
        bits += 32 * R * packed_words(C, index_bits(cfg.num_res_centroids)) + 16 * G * cfg.num_res_centroids * v
    if n_out:
        vo, ko = cfg.outlier_vector_len, cfg.outlier_num_centroids
        bits += 32 * math.ceil(N / vo) * packed_words(n_out, index_bits(ko)) + 16 * ko * vo
    if cfg.enable_norm:
        bits += 2 * 16 * K                                                   # col_scale, col_bias
    return bits

"""One Linear in microsoft/VPTQ's published layout <-> our VQWeight (docs/vptq.md has the mapping).

Their layout is the one `vptq.layers.vqlinear.VQuantLinear` holds with ``is_indice_packed=True``
(the only one HF transformers loads), tensors under the Linear's name:

  centroids.weight          [G, k*v]            main codebooks, row-major [G, k, v]
  indices                   int32 [G, R, words] per (group, vector row): gs merged indices
                                                (res << b) | main of b + b_r bits, LSB first
  res_centroids.weight      [G, k_r*v]          residual codebooks (num_res_centroids[1] > 0)
  outlier_centroids.weight  [1, k_o*v_o]        outlier codebook (vector_lens[0] > 1)
  outlier_indices           int16 [1, R_o, n]   unpacked, read as uint16
  perm                      int16 [K]           read as uint16; same meaning as ours
  weight_scale, weight_bias [K]                 per input channel, after the permutation
  bias                      [N]

Everything here is numpy; the folder code (vptq_folder.py) reads and writes the files.
"""

from __future__ import annotations

import math

import numpy as np

from vq2trt.format import FormatError, VQWeight
from vq2trt.io import CheckpointError

# The suffixes VQuantLinear's state_dict has in packed mode; anything else under a layer is refused.
SUFFIXES = ("centroids.weight", "indices", "res_centroids.weight", "outlier_centroids.weight", "outlier_indices",
            "perm", "weight_scale", "weight_bias", "bias")
# Their perm and outlier indices are uint16 stored in int16 tensors.
MAX_UINT16 = 1 << 16

# What VPTQ's CUDA kernels dispatch on (csrc/dequant.cu, csrc/quant_gemv.cu switch statements);
# other values are valid in the format and run on their torch fallback only.
CUDA_VECTOR_LENS = (2, 4, 6, 8, 10, 12, 16)
CUDA_INDEX_BITS = (4, 8, 10, 12, 13, 14, 15, 16)
CUDA_RES_INDEX_BITS = (0, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 15, 16)


class InteropError(CheckpointError):
    """A layer one format cannot express in the other, or a damaged foreign file; names the layer."""


# --- bit packing up to 32 bits (their merged main+residual indices) ------------------------------
def pack_bits(vals: np.ndarray, bits: int) -> np.ndarray:
    """[rows, count] integers < 2**bits -> int32 [rows, ceil(count*bits/32)], LSB first, rows word-aligned.

    docs/format.md §4's packing with widths up to 32 (vq2trt.format.pack_indices stops at 16).
    """
    vals = np.asarray(vals).astype(np.uint64)
    rows, count = vals.shape
    words = (count * bits + 31) // 32
    out = np.zeros((rows, words + 1), np.uint64)
    if count:
        off = np.arange(count, dtype=np.uint64) * np.uint64(bits)
        wi, sh = (off // np.uint64(32)).astype(np.int64), off % np.uint64(32)
        shifted = vals << sh[None, :]                           # < 2**63: bits <= 32, shift <= 31
        starts = np.flatnonzero(np.r_[True, wi[1:] != wi[:-1]])  # wi is non-decreasing
        # Fields never overlap, so a sum of the shifted pieces is their bitwise or.
        out[:, wi[starts]] += np.add.reduceat(shifted & np.uint64(0xFFFFFFFF), starts, axis=1)
        out[:, wi[starts] + 1] += np.add.reduceat(shifted >> np.uint64(32), starts, axis=1)
    return out[:, :words].astype(np.uint32).view(np.int32)


def unpack_bits(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """int32 [rows, words] -> int64 [rows, count]; the inverse of pack_bits (padding bits ignored)."""
    u = np.asarray(packed).view(np.uint32).astype(np.uint64)
    u = np.concatenate([u, np.zeros((u.shape[0], 1), np.uint64)], axis=1)
    off = np.arange(count, dtype=np.uint64) * np.uint64(bits)
    wi, sh = (off // np.uint64(32)).astype(np.int64), off % np.uint64(32)
    both = u[:, wi] | (u[:, wi + 1] << np.uint64(32))
    return ((both >> sh[None, :]) & np.uint64((1 << bits) - 1)).astype(np.int64)


def _bits_of_power_of_two(k: int, what: str, where: str) -> int:
    if not isinstance(k, int) or k < 2 or k & (k - 1):
        raise InteropError(f"{where}: {what}={k!r} is not a power of two >= 2; VPTQ's packed layout sizes "
                           f"indices with int(log2(k)) but decodes them with ceil(log2(k)), so only powers of "
                           f"two mean one thing")
    return k.bit_length() - 1


# --- their layer -> ours --------------------------------------------------------------------------
def _as_uint16(t: np.ndarray, name: str, where: str) -> np.ndarray:
    # indices_as_float layers store the same 16 bits in a float16 tensor
    if t.dtype not in (np.int16, np.uint16, np.float16):
        raise InteropError(f"{where}.{name}: expected int16 (uint16 bits), got {t.dtype}")
    return t.view(np.uint16).astype(np.int64)


def _to_fp16(t: np.ndarray, name: str, where: str, allow_rounding: bool) -> np.ndarray:
    if not np.issubdtype(t.dtype, np.floating):
        raise InteropError(f"{where}.{name}: expected a float tensor, got {t.dtype}")
    wide = t.astype(np.float32)
    if not np.isfinite(wide).all():
        raise InteropError(f"{where}.{name}: holds NaN or Inf")
    h = wide.astype(np.float16)
    if not allow_rounding and not np.array_equal(h.astype(np.float32), wide):
        err = float(np.abs(h.astype(np.float32) - wide).max())
        raise InteropError(f"{where}.{name}: {t.dtype} values that float16 cannot hold exactly (max change {err:.3g}, "
                           f"inf if out of range); vq2trt stores codebooks and scales in float16. Pass "
                           f"--allow-rounding to round them")
    if not np.isfinite(h).all():
        raise InteropError(f"{where}.{name}: values beyond float16's range (|x| > 65504)")
    return h


def _shape(t: np.ndarray, name: str, shape: tuple, where: str) -> None:
    if tuple(t.shape) != tuple(shape):
        raise InteropError(f"{where}.{name}: expected shape {list(shape)}, got {list(t.shape)}")


def _pair(conf: dict, key: str, where: str) -> tuple[int, int]:
    val = conf.get(key)
    if not (isinstance(val, (list, tuple)) and len(val) == 2 and all(isinstance(x, int) for x in val)):
        raise InteropError(f"{where}: layer config '{key}' must be a pair of integers [outlier, main], got {val!r}")
    return int(val[0]), int(val[1])


def _int(conf: dict, key: str, where: str, default=None) -> int:
    val = conf.get(key, default)
    if not isinstance(val, int) or isinstance(val, bool):
        raise InteropError(f"{where}: layer config '{key}' must be an integer, got {val!r}")
    return val


def vptq_to_vqweight(conf: dict, t: dict[str, np.ndarray], out_features: int, in_features: int, *,
                     where: str = "layer", allow_rounding: bool = False) -> VQWeight:
    """Their layer config + tensors (suffix -> array; bfloat16 already widened to float32) -> VQWeight.

    Tensors are authoritative for which parts exist; the config must agree with them.
    """
    N, K = int(out_features), int(in_features)
    unknown = sorted(set(t) - set(SUFFIXES))
    if unknown:
        raise InteropError(f"{where}: unexpected tensor(s) {unknown} (a VPTQ packed layer has {list(SUFFIXES)}; "
                           f"unpacked layers with res_indices are not a published layout)")
    for name in ("centroids.weight", "indices"):
        if name not in t:
            raise InteropError(f"{where}: missing tensor '{where}.{name}'")
    if conf.get("vector_quant_dim", "out") != "out":
        raise InteropError(f"{where}: vector_quant_dim={conf['vector_quant_dim']!r}; only 'out' (vectors along the "
                           f"output dimension, as in vq2trt) exists in VPTQ's code")
    if conf.get("is_indice_packed", True) is not True:
        raise InteropError(f"{where}: is_indice_packed is not true; only the packed layout is published "
                           f"(transformers refuses the other)")
    for key, val in (("in_features", K), ("out_features", N)):
        if key in conf and conf[key] != val:
            raise InteropError(f"{where}: layer config {key}={conf[key]!r}, but the model's Linear has {val}")
    vo, v = _pair(conf, "vector_lens", where)
    ko, k = _pair(conf, "num_centroids", where)
    kro, kr = _pair(conf, "num_res_centroids", where)
    G, gs = _int(conf, "group_num", where), _int(conf, "group_size", where)
    n_out = _int(conf, "outlier_size", where, 0)
    if v < 1 or G < 1 or gs < 1:
        raise InteropError(f"{where}: vector_lens[1]={v}, group_num={G}, group_size={gs} must all be >= 1")
    b = _bits_of_power_of_two(k, "num_centroids[1]", where)
    residual = kr > 0
    br = _bits_of_power_of_two(kr, "num_res_centroids[1]", where) if residual else 0
    outliers = vo > 1 and ko > 0                 # VQuantLinear's own test for an outlier part
    if not outliers:
        n_out = 0
    elif kro != -1:
        raise InteropError(f"{where}: num_res_centroids[0]={kro}: residual outlier codebooks do not exist in "
                           f"VPTQ's code (nor in vq2trt)")
    if n_out < 0 or n_out + G * gs != K:
        raise InteropError(f"{where}: outlier_size {n_out} + group_num {G} x group_size {gs} != in_features {K}; "
                           f"VPTQ's groups are equal and cover every regular column")
    R = math.ceil(N / v)

    cb = t["centroids.weight"]
    _shape(cb, "centroids.weight", (G, k * v), where)
    codebook = _to_fp16(cb, "centroids.weight", where, allow_rounding).reshape(G, k, v)
    packed = t["indices"]
    words = (gs * (b + br) + 31) // 32
    if packed.dtype != np.int32:
        raise InteropError(f"{where}.indices: expected int32 packed words, got {packed.dtype}")
    _shape(packed, "indices", (G, R, words), where)
    merged = unpack_bits(packed.reshape(G * R, words), b + br, gs).reshape(G, R, gs)
    # ours: [R, G*gs], regular column g*gs + c is their group g, column c
    main = (merged & ((1 << b) - 1)).transpose(1, 0, 2).reshape(R, G * gs)
    res_idx = res_cb = None
    if residual:
        if "res_centroids.weight" not in t:
            raise InteropError(f"{where}: num_res_centroids[1]={kr} but tensor '{where}.res_centroids.weight' "
                               f"is missing")
        _shape(t["res_centroids.weight"], "res_centroids.weight", (G, kr * v), where)
        res_cb = _to_fp16(t["res_centroids.weight"], "res_centroids.weight", where, allow_rounding).reshape(G, kr, v)
        res_idx = (merged >> b).transpose(1, 0, 2).reshape(R, G * gs)
    elif "res_centroids.weight" in t:
        raise InteropError(f"{where}: tensor res_centroids.weight present but num_res_centroids[1]={kr} says no "
                           f"residual")

    out_idx = out_cb = None
    if outliers:
        for name in ("outlier_centroids.weight", "outlier_indices"):
            if name not in t:
                raise InteropError(f"{where}: vector_lens[0]={vo} and num_centroids[0]={ko} enable outliers but "
                                   f"tensor '{where}.{name}' is missing")
    if outliers and n_out > 0:      # with outlier_size 0 their (empty) outlier tensors mean nothing
        _shape(t["outlier_centroids.weight"], "outlier_centroids.weight", (1, ko * vo), where)
        out_cb = _to_fp16(t["outlier_centroids.weight"], "outlier_centroids.weight", where,
                          allow_rounding).reshape(ko, vo)
        oi = t["outlier_indices"]
        _shape(oi, "outlier_indices", (1, math.ceil(N / vo), n_out), where)
        out_idx = _as_uint16(oi, "outlier_indices", where)[0]
        if out_idx.size and out_idx.max() >= ko:
            r, c = np.unravel_index(int(out_idx.argmax()), out_idx.shape)
            raise InteropError(f"{where}.outlier_indices: index {int(out_idx.max())} at row {r}, column {c} is out "
                               f"of range for an outlier codebook of {ko} entries")
    elif "outlier_indices" in t or "outlier_centroids.weight" in t:
        raise InteropError(f"{where}: outlier tensors present but vector_lens[0]={vo}, num_centroids[0]={ko}, "
                           f"outlier_size={conf.get('outlier_size')} say there is no outlier part")

    if "perm" in t:
        _shape(t["perm"], "perm", (K,), where)
        perm = _as_uint16(t["perm"], "perm", where)
    elif conf.get("enable_perm", False) is True:
        raise InteropError(f"{where}: enable_perm is true but tensor '{where}.perm' is missing")
    else:
        perm = np.arange(K)
    if not np.array_equal(np.sort(perm), np.arange(K)):
        raise InteropError(f"{where}.perm: not a permutation of 0..{K - 1}")

    scale = shift = None
    if ("weight_scale" in t) != ("weight_bias" in t):
        raise InteropError(f"{where}: weight_scale and weight_bias must both be present or both absent")
    if "weight_scale" in t:
        for name in ("weight_scale", "weight_bias"):
            _shape(t[name], name, (K,), where)
        scale = _to_fp16(t["weight_scale"], "weight_scale", where, allow_rounding)
        shift = _to_fp16(t["weight_bias"], "weight_bias", where, allow_rounding)
    elif conf.get("enable_norm", False) is True:
        raise InteropError(f"{where}: enable_norm is true but tensors weight_scale/weight_bias are missing")

    bias = None
    if "bias" in t:
        _shape(t["bias"], "bias", (N,), where)
        bias = t["bias"].astype(np.float32)    # fp16/bf16/fp32 -> fp32: exact
    if isinstance(conf.get("bias"), bool) and conf["bias"] != ("bias" in t):
        raise InteropError(f"{where}: layer config bias={conf['bias']} but the bias tensor is "
                           f"{'present' if 'bias' in t else 'missing'}")
    try:
        return VQWeight.from_unpacked(out_features=N, in_features=K, perm=perm, indices=main, codebook=codebook,
                                      res_indices=res_idx, res_codebook=res_cb, outlier_indices=out_idx,
                                      outlier_codebook=out_cb, col_scale=scale, col_bias=shift, bias=bias)
    except FormatError as e:
        raise InteropError(f"{where}: not expressible in vq2trt format v1: {e}") from e


# --- ours -> their layer --------------------------------------------------------------------------
def vqweight_to_vptq(w: VQWeight, *, where: str = "layer") -> tuple[dict, dict[str, np.ndarray]]:
    """VQWeight -> (their per-layer config for config_for_layers, their tensors by suffix).

    Raises InteropError for what their layout cannot hold. Codebooks and scales stay float16 and
    the Linear bias float32, so nothing is rounded.
    """
    N, K, n_out = w.out_features, w.in_features, w.num_outlier_cols
    G, k, v = w.codebook.shape
    C = K - n_out
    b = _bits_of_power_of_two(k, "num_centroids (k)", where)
    kr = 0 if w.res_codebook is None else int(w.res_codebook.shape[1])
    br = _bits_of_power_of_two(kr, "num_res_centroids (k_r)", where) if kr else 0
    if C % G:
        raise InteropError(f"{where}: {C} regular columns in {G} groups leave a shorter last group "
                           f"(group size {w.group_size}); VPTQ's groups all have one size")
    gs = C // G
    if br > b:
        raise InteropError(f"{where}: residual indices of {br} bits exceed the main {b} bits; VPTQ's "
                           f"unpack_index_tensor masks the residual with the main index width")
    if gs * (b + br) <= 16:
        raise InteropError(f"{where}: a group of {gs} columns of {b + br}-bit indices fills at most half a word; "
                           f"VPTQ's unpack_index_tensor computes the padding as 32*words mod bits, wrong there")
    if K > MAX_UINT16:
        raise InteropError(f"{where}: in_features {K} > 65536; VPTQ stores perm as uint16")
    if n_out and w.outlier_codebook.shape[1] < 2:
        raise InteropError(f"{where}: outlier vector length 1; VPTQ enables its outlier part only for "
                           f"vector_lens[0] > 1")
    R = w.rows
    main = w.main_indices().reshape(R, G, gs).transpose(1, 0, 2)           # [G, R, gs]
    merged = main.astype(np.uint64)
    if kr:
        merged = merged | (w.residual_indices().reshape(R, G, gs).transpose(1, 0, 2).astype(np.uint64) << b)
    t: dict[str, np.ndarray] = {
        "centroids.weight": np.ascontiguousarray(w.codebook.reshape(G, k * v)),
        "indices": pack_bits(merged.reshape(G * R, gs), b + br).reshape(G, R, -1),
        "perm": w.perm.astype(np.uint16).view(np.int16),
    }
    if kr:
        t["res_centroids.weight"] = np.ascontiguousarray(w.res_codebook.reshape(G, kr * v))
    vo = ko = -1
    if n_out:
        ko, vo = (int(x) for x in w.outlier_codebook.shape)
        t["outlier_centroids.weight"] = np.ascontiguousarray(w.outlier_codebook.reshape(1, ko * vo))
        t["outlier_indices"] = w.outlier_index_matrix().astype(np.uint16).view(np.int16)[None]
    if w.col_scale is not None:
        t["weight_scale"], t["weight_bias"] = w.col_scale, w.col_bias
    if w.bias is not None:
        t["bias"] = w.bias
    conf = {"in_features": K, "out_features": N, "vector_lens": [vo, v], "num_centroids": [ko, k],
            "num_res_centroids": [-1, kr if kr else -1], "group_num": G, "group_size": gs, "outlier_size": n_out,
            "indices_as_float": False, "enable_norm": w.col_scale is not None, "enable_perm": True,
            "is_indice_packed": True, "bias": w.bias is not None}
    return conf, t


def cuda_kernel_notes(w: VQWeight, where: str) -> list[str]:
    """Why VPTQ's CUDA kernels would not dispatch this (format-valid) layer; empty when they would."""
    notes = []
    b = max(1, math.ceil(math.log2(w.num_centroids)))
    br = 0 if w.res_codebook is None else max(1, math.ceil(math.log2(w.res_codebook.shape[1])))
    if w.vector_len not in CUDA_VECTOR_LENS:
        notes.append(f"vector length {w.vector_len} not in {CUDA_VECTOR_LENS}")
    if b not in CUDA_INDEX_BITS:
        notes.append(f"{b}-bit main indices not in {CUDA_INDEX_BITS}")
    if br not in CUDA_RES_INDEX_BITS:
        notes.append(f"{br}-bit residual indices not in {CUDA_RES_INDEX_BITS}")
    return [f"{where}: VPTQ's CUDA kernels take no {n}; their torch fallback still runs it" for n in notes]

"""Ground-truth dequantization and VQGemm, written from docs/format.md alone.

Every other implementation (torch VQLinear fast paths, the ONNX Runtime op, the
TensorRT plugin) is tested against these functions. Arithmetic is float32:
codebook entries are widened from fp16, main + residual added, then
``q * col_scale + col_bias``, exactly in that order.
"""

from __future__ import annotations

import numpy as np

from vq2trt.format import VQWeight


def _columns(codebook: np.ndarray, idx: np.ndarray, v: int) -> np.ndarray:
    """Codebook lookup of an index matrix [R, C] -> weight columns [R * v, C] (float32)."""
    vecs = codebook.astype(np.float32)[idx]          # [R, C, v]
    return vecs.transpose(0, 2, 1).reshape(idx.shape[0] * v, idx.shape[1])


def dequantize(w: VQWeight) -> np.ndarray:
    """W [N, K] float32 in the original input-channel order."""
    N, K, n_out = w.out_features, w.in_features, w.num_outlier_cols
    v, G, gs = w.vector_len, w.num_groups, w.group_size
    q = np.zeros((N, K), np.float32)                  # columns in permuted order
    idx = w.main_indices()                            # [R, K - n_out]
    ridx = w.residual_indices()
    for g in range(G):
        lo, hi = g * gs, min((g + 1) * gs, K - n_out)
        cols = _columns(w.codebook[g], idx[:, lo:hi], v)
        if ridx is not None:
            cols = cols + _columns(w.res_codebook[g], ridx[:, lo:hi], v)
        q[:, n_out + lo:n_out + hi] = cols[:N]
    if n_out:
        vo = w.outlier_codebook.shape[1]
        q[:, :n_out] = _columns(w.outlier_codebook, w.outlier_index_matrix(), vo)[:N]
    out = np.empty_like(q)
    out[:, w.perm] = q
    if w.col_scale is not None:
        out = out * w.col_scale.astype(np.float32)[None, :] + w.col_bias.astype(np.float32)[None, :]
    return out


def vq_gemm(x: np.ndarray, w: VQWeight) -> np.ndarray:
    """Y = X · dequant(W)ᵀ + bias for X [..., K]; computed in float64, returned float32."""
    x = np.asarray(x)
    if x.shape[-1] != w.in_features:
        raise ValueError(f"vq_gemm: X has {x.shape[-1]} features, the weight expects K={w.in_features}")
    y = x.astype(np.float64) @ dequantize(w).astype(np.float64).T
    if w.bias is not None:
        y = y + w.bias.astype(np.float64)
    return y.astype(np.float32)


def dequant_tensors(t: dict, *, N: int, K: int, n_out: int, group_size: int, gather=None):
    """dequantize() on torch tensors, differentiable in the codebooks and scales.

    ``t`` maps the names of docs/format.md to tensors, with indices already
    unpacked to int64: "indices" [R, C], "res_indices" [R, C] or None,
    "outlier_indices" [R_o, n_out] or None, "perm" int64 [K].
    ``gather(table [k, v], idx [R, c]) -> [R, c, v]`` looks codebook rows up
    (default ``table[idx]``); trainers pass one with a faster backward.
    """
    import torch

    if gather is None:
        gather = lambda table, i: table[i]

    cb = t["codebook"].float()                                    # [G, k, v]
    G, _, v = cb.shape
    idx = t["indices"]                                            # [R, C]
    R = idx.shape[0]
    q = torch.zeros(N, K, dtype=torch.float32, device=cb.device)   # columns in permuted order
    for g in range(G):
        lo, hi = g * group_size, min((g + 1) * group_size, K - n_out)
        vec = gather(cb[g], idx[:, lo:hi])                        # [R, c, v]
        if t.get("res_indices") is not None:
            vec = vec + gather(t["res_codebook"][g].float(), t["res_indices"][:, lo:hi])
        q[:, n_out + lo:n_out + hi] = vec.permute(0, 2, 1).reshape(R * v, hi - lo)[:N]
    if n_out:
        ocb = t["outlier_codebook"].float()                       # [k_o, v_o]
        oidx = t["outlier_indices"]                               # [R_o, n_out]
        vo = ocb.shape[1]
        q[:, :n_out] = gather(ocb, oidx).permute(0, 2, 1).reshape(oidx.shape[0] * vo, n_out)[:N]
    out = torch.empty_like(q)
    out[:, t["perm"]] = q
    if t.get("col_scale") is not None:
        out = out * t["col_scale"].float()[None, :] + t["col_bias"].float()[None, :]
    return out


def torch_tensors(w: VQWeight, device=None) -> dict:
    """The tensors dequant_tensors() takes, from a stored VQWeight (indices unpacked)."""
    import torch

    def tt(a):
        return None if a is None else torch.from_numpy(np.ascontiguousarray(a)).to(device)

    return {
        "perm": tt(w.perm.astype(np.int64)), "indices": tt(w.main_indices()), "codebook": tt(w.codebook),
        "res_indices": tt(w.residual_indices()), "res_codebook": tt(w.res_codebook),
        "outlier_indices": tt(w.outlier_index_matrix()), "outlier_codebook": tt(w.outlier_codebook),
        "col_scale": tt(w.col_scale), "col_bias": tt(w.col_bias),
    }


def dequantize_torch(w: VQWeight, device=None):
    """dequantize() in torch: same float32 arithmetic, returns a tensor [N, K]."""
    return dequant_tensors(torch_tensors(w, device), N=w.out_features, K=w.in_features,
                           n_out=w.num_outlier_cols, group_size=w.group_size)


def vq_gemm_torch(x, w: VQWeight):
    """vq_gemm() in torch for X [..., K]; returns X's dtype."""
    import torch

    W = dequantize_torch(w, device=x.device)
    y = torch.nn.functional.linear(x.to(torch.float32), W)
    if w.bias is not None:
        y = y + torch.from_numpy(w.bias).to(x.device)
    return y.to(x.dtype)

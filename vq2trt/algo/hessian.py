"""Layer-input second moments H = E[x xᵀ] and their preparation for GPTQ-style loops.

Every quantizer here minimises the layer-output proxy tr(ΔW H ΔWᵀ); H only ever
enters through ratios, so its overall scale is irrelevant and we keep the plain
mean (not GPTQ's 2/n sum). With per-token weights w_t (GuidedQuant's output-aware
Hessian, w_t = ||∂L/∂y_t||²) it is the weighted mean Σ w_t x_t x_tᵀ / Σ w_t.
"""

from __future__ import annotations

import math

import torch


class HessianAccumulator:
    """Streams calibration inputs of one Linear into sum w x xᵀ without keeping them.

    Each batch is multiplied in float32 (fast on every device) and added into a
    float64 total, so the error does not grow with the number of batches.
    Unweighted batches count every token with weight 1; ``weight_sum`` is the
    total weight (the token count when no batch had weights).
    """

    def __init__(self, in_features: int, device=None):
        if int(in_features) < 1:
            raise ValueError(f"HessianAccumulator: in_features must be >= 1, got {in_features}")
        self.in_features = int(in_features)
        self.device = None if device is None else torch.device(device)
        self._sum = None       # float64 [K, K], allocated on the first batch's device unless given
        self.count = 0         # tokens seen
        self.weight_sum = 0.0  # Σ w_t over tokens seen (float64 accumulation)

    def add_batch(self, x: torch.Tensor, weights: torch.Tensor | None = None) -> None:
        """Add inputs x [..., K] (any float dtype); every leading index is one token.

        weights: optional non-negative per-token weights [...] (x's leading shape).
        """
        K = self.in_features
        if x.ndim == 0 or x.shape[-1] != K:
            raise ValueError(f"HessianAccumulator: input of shape {tuple(x.shape)} has "
                             f"{x.shape[-1] if x.ndim else 0} features, this layer has in_features={K}")
        if weights is not None and tuple(weights.shape) != tuple(x.shape[:-1]):
            raise ValueError(f"HessianAccumulator: weights of shape {tuple(weights.shape)} do not match the "
                             f"inputs' leading shape {tuple(x.shape[:-1])}")
        if weights is not None and (not torch.isfinite(weights).all() or (weights < 0).any()):
            raise ValueError("HessianAccumulator: token weights must be finite and non-negative")
        x = x.detach().reshape(-1, K)  # [n, K]
        if x.shape[0] == 0:
            return
        if self._sum is None:
            dev = self.device if self.device is not None else x.device
            self._sum = torch.zeros(K, K, dtype=torch.float64, device=dev)
        x = x.to(device=self._sum.device, dtype=torch.float32)  # [n, K]
        if weights is None:
            self._sum += (x.T @ x).to(torch.float64)
            self.weight_sum += x.shape[0]
        else:
            w = weights.detach().reshape(-1).to(device=self._sum.device, dtype=torch.float32)  # [n]
            # sqrt(w) on both sides keeps the product a Gram matrix (symmetric PSD to round-off),
            # and sqrt(1) = 1 makes unit weights reproduce the unweighted sum bit for bit.
            xw = x * w.sqrt()[:, None]  # [n, K]
            self._sum += (xw.T @ xw).to(torch.float64)
            self.weight_sum += float(w.double().sum())
        self.count += x.shape[0]

    def finalize(self) -> torch.Tensor:
        """Σ w x xᵀ / Σ w as float64 [K, K] (E[x xᵀ] without weights)."""
        if self._sum is None or self.count == 0:
            raise ValueError("HessianAccumulator: no calibration batch was added; cannot form H = E[x xᵀ]")
        if self.weight_sum <= 0:
            raise ValueError(f"HessianAccumulator: every one of the {self.count} tokens has weight 0; "
                             f"H = Σ w x xᵀ / Σ w is undefined")
        H = self._sum / self.weight_sum  # [K, K]
        if not torch.isfinite(H).all():
            raise ValueError("HessianAccumulator: calibration inputs contain NaN or Inf; H is not finite")
        return H

    @property
    def H(self) -> torch.Tensor:
        return self.finalize()


def prepare_hessian(H: torch.Tensor, damp: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalise H by the mean of its diagonal, mark dead inputs, add ``damp`` to the diagonal.

    Normalising first makes ``damp`` a fraction of the average diagonal, as in
    GPTQ's percdamp and the VPTQ reference. A dead input (diag 0: the channel
    was always zero) gets diagonal 1 so that H stays invertible; its weights
    have no effect on the output and callers zero them.
    Returns (H_damped float64 [K, K], dead bool [K]).
    """
    if H.ndim != 2 or H.shape[0] != H.shape[1]:
        raise ValueError(f"prepare_hessian: H must be square [K, K], got shape {tuple(H.shape)}")
    H = H.to(torch.float64).clone()  # [K, K]
    diag = torch.diagonal(H)         # [K] view into H
    dead = diag <= 0                 # [K]; a negative diagonal can only be round-off of a dead channel
    mean = diag.mean()
    if mean > 0:
        H /= mean
    H[dead, :] = 0
    H[:, dead] = 0
    diag[dead] = 1
    diag += damp
    return H, dead


def inverse_cholesky(H: torch.Tensor, damp: float, max_retries: int = 8) -> tuple[torch.Tensor, int]:
    """Upper Cholesky factor of H⁻¹ (GPTQ's Hinv), float64 [K, K], and how many extra damps it took.

    H is a prepared Hessian (diagonal mean ~1). When a factorisation fails
    (H numerically indefinite), ``damp`` times 10^r is added to the diagonal for
    r = 0, 1, ... -- a fixed schedule, so reruns are identical.
    """
    K = H.shape[0]
    eye = torch.eye(K, dtype=H.dtype, device=H.device)  # [K, K]
    for r in range(max_retries + 1):
        Hr = H if r == 0 else H + (damp * 10.0 ** (r - 1)) * eye  # [K, K]
        L, info = torch.linalg.cholesky_ex(Hr)
        if info.item() != 0:
            continue
        Hinv = torch.cholesky_inverse(L)  # [K, K]
        U, info = torch.linalg.cholesky_ex(Hinv, upper=True)
        if info.item() == 0 and torch.isfinite(U).all():
            return U, r
    raise ValueError(f"Hessian is not positive definite even after adding {damp * 10.0 ** (max_retries - 1)} "
                     f"to its diagonal; the calibration inputs are degenerate or not finite")


def proxy_error(W_hat: torch.Tensor, W: torch.Tensor, H: torch.Tensor) -> float:
    """Relative layer-output error tr(ΔW H ΔWᵀ) / tr(W H Wᵀ) in float64 (0 for a zero W reproduced exactly)."""
    H = H.to(device=W.device, dtype=torch.float64)  # [K, K]
    W = W.detach().double()                          # [N, K]
    dW = W_hat.detach().to(W.device).double() - W     # [N, K]
    num = float(((dW @ H) * dW).sum())
    den = float(((W @ H) * W).sum())
    return num / den if den > 0 else (0.0 if num == 0 else math.inf)

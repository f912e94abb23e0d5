"""Layer-input second moments H = E[x xᵀ] and their preparation for GPTQ-style loops.

Every quantizer here minimises the layer-output proxy tr(ΔW H ΔWᵀ); H only ever
enters through ratios, so its overall scale is irrelevant and we keep the plain
mean (not GPTQ's 2/n sum). With per-token weights w_t (GuidedQuant's output-aware
Hessian, w_t = ||∂L/∂y_t||²) it is the weighted mean Σ w_t x_t x_tᵀ / Σ w_t.
"""

from __future__ import annotations

import math

import torch

# Batch contributions are summed as integers on a grid of 2^GRID_BITS steps per the first batch's
# largest diagonal entry: integer addition is associative, so the total (and every byte quantized
# from it) is the same whichever rank added which batch, in whatever order (vq2trt.distributed).
GRID_BITS = 40
_INT_LIMIT = 2.0 ** 62


class HessianAccumulator:
    """Streams calibration inputs of one Linear into sum w x xᵀ without keeping them.

    Each batch is multiplied in float32 (fast on every device) and its [K, K] product added, as
    int64 multiples of a power-of-two grid step fixed by the first batch (2^-GRID_BITS of its
    largest diagonal entry, far below float32's own rounding of the product), into an exact
    total: the sum does not depend on the order of the batches or on how they were split
    between processes (``all_reduce``). Unweighted batches count every token with weight 1;
    ``weight_sum`` is the total weight (the token count when no batch had weights).
    """

    def __init__(self, in_features: int, device=None):
        if int(in_features) < 1:
            raise ValueError(f"HessianAccumulator: in_features must be >= 1, got {in_features}")
        self.in_features = int(in_features)
        self.device = None if device is None else torch.device(device)
        self._sum = None       # int64 [K, K]: Σ round(x xᵀ / grid), allocated on the first batch's device
        self.grid = None       # float: the grid step, a power of two
        self.count = 0         # tokens seen
        self._weights: list[float] = []  # per-batch Σ w_t (float64); summed exactly (math.fsum)
        self._bound = 0.0      # Σ over batches of max |entry| / grid: keeps the int64 total from overflowing

    @property
    def weight_sum(self) -> float:
        """Σ w_t over tokens seen, exactly rounded whatever the order of the batches."""
        return math.fsum(self._weights)

    def _product(self, x: torch.Tensor, weights: torch.Tensor | None) -> tuple[torch.Tensor, float, int]:
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
        dev = self._sum.device if self._sum is not None else (self.device if self.device is not None else x.device)
        x = x.to(device=dev, dtype=torch.float32)  # [n, K]
        if weights is None:
            xw, wsum = x, float(x.shape[0])
        else:
            w = weights.detach().reshape(-1).to(device=dev, dtype=torch.float32)  # [n]
            # sqrt(w) on both sides keeps the product a Gram matrix (symmetric PSD to round-off),
            # and sqrt(1) = 1 makes unit weights reproduce the unweighted sum bit for bit.
            xw, wsum = x * w.sqrt()[:, None], float(w.double().sum())
        c = xw.T @ xw  # [K, K] float32
        if not torch.isfinite(c).all():
            raise ValueError("HessianAccumulator: calibration inputs contain NaN or Inf; H is not finite")
        return c, wsum, x.shape[0]

    @staticmethod
    def _grid_for(c: torch.Tensor) -> float:
        top = float(torch.diagonal(c).max())  # a Gram matrix's largest entry is on its diagonal
        return math.ldexp(1.0, math.frexp(top)[1] - GRID_BITS) if top > 0 else 1.0

    def set_grid_from(self, x: torch.Tensor, weights: torch.Tensor | None = None) -> None:
        """Fix the grid from batch ``x`` without adding it: how a process that does not own the
        first calibration batch gets the same grid as the one that does."""
        if self.grid is None:
            c, _, n = self._product(x, weights)
            if n:
                self.grid = self._grid_for(c)

    def add_batch(self, x: torch.Tensor, weights: torch.Tensor | None = None) -> None:
        """Add inputs x [..., K] (any float dtype); every leading index is one token.

        weights: optional non-negative per-token weights [...] (x's leading shape).
        """
        c, wsum, n = self._product(x, weights)
        if n == 0:
            return
        if self.grid is None:
            self.grid = self._grid_for(c)
        if self._sum is None:
            self._sum = torch.zeros(c.shape, dtype=torch.int64, device=c.device)
        scaled = c.to(torch.float64) / self.grid  # exact: the grid is a power of two
        self._bound += float(scaled.abs().max())
        if self._bound >= _INT_LIMIT:
            raise ValueError("HessianAccumulator: calibration batches differ in scale by more than 2^21; "
                             "the inputs are degenerate (check them for huge values)")
        self._sum += torch.round(scaled).to(torch.int64)
        self._weights.append(wsum)
        self.count += n

    def all_reduce(self, dist) -> None:
        """Sum this accumulator over the processes of ``dist`` (vq2trt.distributed.Dist), in place:
        each process added its own batches; afterwards every one holds the total of all."""
        K = self.in_features
        if self._sum is None:
            dev = self.device if self.device is not None else torch.device("cpu")
            self._sum = torch.zeros(K, K, dtype=torch.int64, device=dev)
        self._sum = dist.all_reduce_sum(self._sum)
        self.count, self._bound = (int(v) for v in dist.all_gather_sum([self.count, self._bound]))
        self._weights = dist.all_gather_lists(self._weights)

    def finalize(self) -> torch.Tensor:
        """Σ w x xᵀ / Σ w as float64 [K, K] (E[x xᵀ] without weights)."""
        if self._sum is None or self.count == 0:
            raise ValueError("HessianAccumulator: no calibration batch was added; cannot form H = E[x xᵀ]")
        if self.weight_sum <= 0:
            raise ValueError(f"HessianAccumulator: every one of the {self.count} tokens has weight 0; "
                             f"H = Σ w x xᵀ / Σ w is undefined")
        H = self._sum.to(torch.float64) * self.grid / self.weight_sum  # [K, K]
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

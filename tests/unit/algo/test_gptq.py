"""RTN and GPTQ scalar baselines."""

from __future__ import annotations

import pytest
import torch

from vq2trt.algo import gptq_quantize, proxy_error, rtn_quantize, scalar_bits_per_weight

from .layers import correlated_layer


def _on_grid(W_hat, W_ref, bits, group_size):
    """W_hat lies on the fp16-scale / integer-zero grid that RTN fits to W_ref, group by group."""
    maxq = 2**bits - 1
    for lo in range(0, W_ref.shape[1], group_size):
        ref = W_ref[:, lo:lo + group_size]
        xmin, xmax = ref.min(1).values.clamp(max=0), ref.max(1).values.clamp(min=0)
        scale = ((xmax - xmin) / maxq).half().float()
        scale[scale == 0] = 1
        zero = torch.round(-xmin / scale).clamp(0, maxq)
        q = W_hat[:, lo:lo + group_size] / scale[:, None] + zero[:, None]
        if not (torch.allclose(q, q.round(), atol=1e-3) and q.round().min() >= 0 and q.round().max() <= maxq):
            return False
    return True


@pytest.mark.parametrize("bits,group_size", [(2, 32), (3, 128), (4, 100)])
def test_rtn_grid(bits, group_size):
    W, _ = correlated_layer(16, 250)
    W_hat = rtn_quantize(W, bits, group_size)
    assert W_hat.shape == W.shape and W_hat.dtype == torch.float32
    assert _on_grid(W_hat, W, bits, group_size)
    for lo in range(0, 250, group_size):  # at most 2^bits levels per row and group, nearest level chosen
        block = W_hat[:, lo:lo + group_size]
        assert all(len(torch.unique(r)) <= 2**bits for r in block)
        step = (W[:, lo:lo + group_size].max(1).values.clamp(min=0)
                - W[:, lo:lo + group_size].min(1).values.clamp(max=0)) / (2**bits - 1)
        assert ((block - W[:, lo:lo + group_size]).abs() <= step[:, None] * 0.5 * 1.01 + 1e-6).all()


def test_rtn_exact_on_grid_and_zero_rows():
    W = torch.tensor([[0.0, 0.5, 1.0, 1.5], [0.0, 0.0, 0.0, 0.0], [-1.5, -1.0, -0.5, 0.0]])
    torch.testing.assert_close(rtn_quantize(W, 2, 4), W, rtol=0, atol=0)


def test_bits_per_weight():
    assert scalar_bits_per_weight(2, 128) == 2 + 18 / 128
    assert scalar_bits_per_weight(3, 64) == 3 + 19 / 64


# Without act_order, GPTQ at 2 bits can lose to RTN on this layer (grids fitted to drifting weights clip);
# the defaults (act_order with static groups) must win clearly at 2 and 3 bits.
@pytest.mark.parametrize("bits,act_order,static_groups,margin", [
    (2, True, True, 0.5), (3, True, True, 0.5), (2, True, False, 0.6), (3, True, False, 0.6), (3, False, False, 0.8),
    (3, False, True, 0.8)])
def test_gptq_beats_rtn(bits, act_order, static_groups, margin):
    W, H = correlated_layer()
    rtn = proxy_error(rtn_quantize(W, bits, 128), W, H)
    W_hat, stats = gptq_quantize(W, H, bits, 128, act_order=act_order, static_groups=static_groups)
    assert stats["proxy_err"] == pytest.approx(proxy_error(W_hat, W, H))
    assert stats["proxy_err"] < margin * rtn, (stats["proxy_err"], rtn)
    assert stats["damp_retries"] == 0 and stats["time_s"] >= 0


def test_static_groups_stay_on_the_original_grid():
    W, H = correlated_layer()
    W_hat, _ = gptq_quantize(W, H, 3, 64, act_order=True, static_groups=True)
    assert _on_grid(W_hat, W, 3, 64)


def test_gptq_dead_columns_and_determinism():
    W, H = correlated_layer(32, 64)
    H[5, :] = 0
    H[:, 5] = 0
    W_hat, stats = gptq_quantize(W, H, 2, 16, block_size=16)
    assert torch.isfinite(W_hat).all() and stats["proxy_err"] < 1
    W2 = W.clone()
    W2[:, 5] = 100.0  # an input that is always zero: its weights must not change anything else
    W_hat2, _ = gptq_quantize(W2, H, 2, 16, block_size=16)
    keep = torch.arange(64) != 5
    assert torch.equal(W_hat[:, keep], W_hat2[:, keep])
    assert torch.equal(gptq_quantize(W, H, 2, 16, block_size=16)[0], W_hat)


def test_errors():
    W, H = correlated_layer(8, 16)
    with pytest.raises(ValueError, match="H has shape"):
        gptq_quantize(W, H[:8, :8], 2, 8)
    with pytest.raises(ValueError):
        rtn_quantize(W, 0, 8)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    W, H = correlated_layer()
    W_hat, stats = gptq_quantize(W.cuda(), H.cuda(), 3, 128)
    assert W_hat.is_cuda
    _, cpu = gptq_quantize(W, H, 3, 128)
    assert stats["proxy_err"] == pytest.approx(cpu["proxy_err"], rel=0.05)
    torch.testing.assert_close(rtn_quantize(W.cuda(), 3, 128).cpu(), rtn_quantize(W, 3, 128))

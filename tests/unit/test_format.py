"""docs/format.md §3-§4: packing round trips, known answers, validation of damaged data."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vq2trt.format import FormatError, VQWeight, pack_indices, packed_words, unpack_indices


@settings(max_examples=200, deadline=None)
@given(bits=st.integers(1, 16), rows=st.integers(1, 5), count=st.integers(1, 70), seed=st.integers(0, 2**32 - 1))
def test_pack_round_trip_every_width(bits, rows, count, seed):
    idx = np.random.default_rng(seed).integers(0, 1 << bits, (rows, count))
    packed = pack_indices(idx, bits)
    assert packed.dtype == np.int32 and packed.shape == (rows, packed_words(count, bits))
    np.testing.assert_array_equal(unpack_indices(packed, bits, count), idx)


def test_pack_known_answer_from_format_md():
    # docs/format.md §4 example: b=3, [5, 3, 7, 1] -> 5 + (3<<3) + (7<<6) + (1<<9) = 989.
    np.testing.assert_array_equal(pack_indices(np.array([[5, 3, 7, 1]]), 3), [[989]])


def test_pack_straddles_words_lsb_first():
    # Three 12-bit indices: the second spans bits 12..23, the third bits 24..35 (crosses into word 1).
    packed = pack_indices(np.array([[0xABC, 0x123, 0xFED]]), 12).view(np.uint32)
    assert packed[0, 0] == (0xABC | (0x123 << 12) | ((0xFED & 0xFF) << 24))
    assert packed[0, 1] == 0xFED >> 8


def test_pack_uses_all_32_bits_of_a_word():
    packed = pack_indices(np.array([[0xFFFF, 0x8000]]), 16).view(np.uint32)
    assert packed[0, 0] == 0x8000FFFF  # top bit set: stored as a negative int32, read back as uint32


def test_pack_rejects_out_of_range_and_bad_widths():
    with pytest.raises(FormatError, match="index values"):
        pack_indices(np.array([[4]]), 2)
    with pytest.raises(FormatError, match="bit width"):
        pack_indices(np.array([[1]]), 17)
    with pytest.raises(FormatError, match="words per row"):
        unpack_indices(np.zeros((1, 3), np.int32), 8, 4)


def _weight(rng, N=10, K=12, outliers=True, residual=True, norm=True, G=2):
    n_out = 2 if outliers else 0
    kw = {}
    if outliers:
        kw.update(outlier_indices=rng.integers(0, 8, (4, n_out)), outlier_codebook=rng.normal(size=(8, 3)))
    if residual:
        kw.update(res_indices=rng.integers(0, 2, (5, K - n_out)), res_codebook=rng.normal(size=(G, 2, 2)))
    if norm:
        kw.update(col_scale=rng.random(K) + 0.5, col_bias=rng.normal(size=K))
    return VQWeight.from_unpacked(out_features=N, in_features=K, perm=rng.permutation(K),
                                  indices=rng.integers(0, 4, (5, K - n_out)), codebook=rng.normal(size=(G, 4, 2)),
                                  bias=rng.normal(size=N), **kw)


def test_tensors_round_trip_equal():
    w = _weight(np.random.default_rng(0))
    w2 = VQWeight.from_tensors(w.tensors())
    assert w2 == w
    np.testing.assert_array_equal(w2.main_indices(), w.main_indices())


def _damaged(mutate):
    t = _weight(np.random.default_rng(1)).tensors()
    mutate(t)
    with pytest.raises(FormatError) as e:
        VQWeight.from_tensors(t, where="layer.q")
    return str(e.value)


def test_index_beyond_k_is_rejected_with_position():
    # k=3 entries but 2-bit indices can hold 3: the format must check against k, not 2**b.
    rng = np.random.default_rng(2)
    w = VQWeight.from_unpacked(out_features=4, in_features=3, perm=np.arange(3), indices=np.zeros((2, 3), int),
                               codebook=rng.normal(size=(1, 3, 2)))
    t = w.tensors()
    t["indices"] = pack_indices(np.array([[0, 3, 0], [0, 0, 0]]), 2)
    with pytest.raises(FormatError, match=r"layer.q.indices: index 3 at row 0, column 1 is out of range.*3 entries"):
        VQWeight.from_tensors(t, where="layer.q")


@pytest.mark.parametrize("mutate, message", [
    (lambda t: t.pop("codebook"), "missing tensor 'codebook'"),
    (lambda t: t.update(indices=t["indices"][:, :-1]), "layer.q.indices: expected int32"),
    (lambda t: t.update(indices=t["indices"].astype(np.int64)), "layer.q.indices: expected int32"),
    (lambda t: t.update(codebook=t["codebook"].astype(np.float32)), "layer.q.codebook: expected float16"),
    (lambda t: t.update(perm=np.zeros_like(t["perm"])), "layer.q.perm: expected a permutation"),
    (lambda t: t.update(vq_dims=np.array([10, 12, 12], np.int32)), "outlier columns"),
    (lambda t: t.pop("col_bias"), "col_scale/col_bias"),
    (lambda t: t.pop("outlier_codebook"), "outlier"),
    (lambda t: t.update(extra=np.zeros(1)), "unknown tensor"),
    (lambda t: t.update(codebook=np.full_like(t["codebook"], np.nan)), "NaN"),
    (lambda t: t.update(bias=t["bias"][:3]), "layer.q.bias"),
    (lambda t: t.update(res_codebook=t["res_codebook"][:, :, :1]), "res_codebook"),
])
def test_damaged_tensors_name_the_problem(mutate, message):
    assert message in _damaged(mutate)


def test_nonzero_padding_bits_rejected():
    def set_pad(t):
        ix = t["indices"].copy()
        ix.view(np.uint32)[:, -1] |= np.uint32(1 << 31)
        t["indices"] = ix
    assert "padding bits" in _damaged(set_pad)


def test_bits_per_weight_counts_every_stored_byte():
    rng = np.random.default_rng(3)
    N, K = 576, 576
    w = VQWeight.from_unpacked(out_features=N, in_features=K, perm=np.arange(K), indices=rng.integers(0, 256, (144, K)),
                               codebook=rng.normal(size=(1, 256, 4)), col_scale=np.ones(K), col_bias=np.zeros(K))
    # docs/format.md §6: 2 bits of indices, 16*256*4 codebook bits, 32*K perm, 32*K scales, 96 for vq_dims
    expected = (144 * K * 8 + 16 * 256 * 4 + 32 * K + 32 * K + 96) / (N * K)
    assert w.bits_per_weight() == pytest.approx(expected)
    assert 2.15 < w.bits_per_weight() < 2.17

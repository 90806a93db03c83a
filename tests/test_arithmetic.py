"""The quantization arithmetic: qparams, rounding, fixed-point multipliers, requantization."""

import numpy as np
import pytest

from hailopipe.quantization import arithmetic


@pytest.mark.parametrize("bits", [8, 16])
@pytest.mark.parametrize("lo,hi", [(0.0, 4.6), (-23.5, 24.8), (-3.0, -1.0), (2.0, 5.0), (-1e-3, 1e-3)])
def test_zero_is_exact_and_range_is_covered(bits, lo, hi):
    scale, zp = arithmetic.choose_qparams(lo, hi, bits)
    qmin, qmax = arithmetic.qrange(bits)
    assert qmin <= zp <= qmax
    assert arithmetic.dequantize(arithmetic.quantize(np.array([0.0]), scale, zp, bits), scale, zp)[0] == 0.0
    ends = arithmetic.dequantize(np.array([qmin, qmax]), scale, zp)
    assert ends[0] <= min(lo, 0) + scale and ends[1] >= max(hi, 0) - scale


def test_relu_range_puts_zero_point_at_qmin():
    assert arithmetic.choose_qparams(0.0, 5.0, 8)[1] == -128


def test_quantize_rounds_half_to_even_and_saturates():
    q = arithmetic.quantize(np.array([0.5, 1.5, 2.5, -0.5, 1000.0, -1000.0]), 1.0, 0, 8)
    assert q.tolist() == [0, 2, 2, 0, 127, -128]
    assert q.dtype == np.int8


def test_pixels_map_exactly_to_input_integers():
    scale, zp = arithmetic.choose_qparams(0.0, 1.0, 8)
    pixels = np.arange(256, dtype=np.uint8)
    q = arithmetic.quantize(pixels.astype(np.float32) / np.float32(255), np.float32(scale), zp, 8)
    assert (q.astype(int) == pixels.astype(int) - 128).all()
    assert (arithmetic.to_unsigned(q, 8) == pixels).all()


@pytest.mark.parametrize("per_channel", [True, False])
def test_weights_symmetric_restricted_range(per_channel):
    w = np.random.default_rng(0).standard_normal((50, 7)).astype(np.float32)
    q, s = arithmetic.quantize_weights(w, 8, per_channel)
    assert q.dtype == np.int8 and q.min() >= -127 and q.max() <= 127
    assert np.abs(q.astype(np.float32) * s - w).max() <= s.max() / 2 + 1e-7
    if per_channel:
        assert (np.abs(q).max(axis=0) == 127).all()
    else:
        assert len(set(s.tolist())) == 1


@pytest.mark.parametrize("mant_bits", [31, 20])
def test_quantize_multiplier_precision(mant_bits):
    m = np.geomspace(1e-9, 0.99, 500)
    m0, e = arithmetic.quantize_multiplier(m, mant_bits)
    assert (m0 >= 1).all() and (e >= 1).all() and (e <= 62).all()
    normal = m > 2.0 ** (mant_bits - 62)
    assert (m0[normal] >= 2 ** (mant_bits - 1)).all() and (m0[normal] < 2**mant_bits).all()
    rel = np.abs(m0 * 2.0 ** (-e.astype(float)) - m) / m
    assert rel[normal].max() <= 2.0 ** -(mant_bits - 1)


def test_quantize_multiplier_rejects_nonpositive():
    with pytest.raises(ValueError):
        arithmetic.quantize_multiplier(np.array([0.0]))


def test_requantize_matches_python_integers():
    rng = np.random.default_rng(1)
    acc = rng.integers(-(2**31) + 1, 2**31 - 1, 2000)
    m = rng.uniform(1e-6, 0.9, 2000)
    m0, e = arithmetic.quantize_multiplier(m)
    got = arithmetic.requantize(acc, m0, e, 3, -128, 127)
    want = [min(127, max(-128, 3 + ((int(a) * int(k) + (1 << (int(s) - 1))) >> int(s)))) for a, k, s in zip(acc, m0, e)]
    assert got.tolist() == want


def test_requantize_is_round_half_up_of_the_exact_product():
    m0, e = arithmetic.quantize_multiplier(np.array([0.5]))
    assert arithmetic.requantize(np.array([1, 3, -1, -3]), m0, e, 0, -128, 127).tolist() == [1, 2, 0, -1]


def test_fold_zero_point():
    q_w = np.array([[1, -2], [3, 4]], np.int8)
    assert arithmetic.fold_zero_point(np.array([10, 20]), q_w, -128).tolist() == [10 + 128 * 4, 20 + 128 * 2]


def test_multiplier_bits_keeps_products_in_int64():
    q_w = np.full((784, 4), 32767, np.int16)
    bits = arithmetic.multiplier_bits(q_w, np.zeros(4, np.int64), 16)
    bound = 784 * 32767 * 32768
    assert bound * (2**bits) < 2**63
